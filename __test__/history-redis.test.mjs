// History rooms and recovery across instances sharing a real Redis: one
// sequence per room, recovery on any instance, no gap and no duplicate,
// across a Redis restart and a `kill -9` of the instance a client was on.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';
import { soakServer } from './soak-helpers.mjs';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

let redis;
let dir;
before(async () => {
  if (noRedis) return;
  // Persistence on every write: a restart keeps the history, as it does
  // with a production Redis configured for it.
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-ws-history-'));
  redis = await startRedis(['--appendonly', 'yes', '--appendfsync', 'always'], dir);
});
after(async () => {
  await stopAll();
  await redis?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const rooms = ({ rooms }) => rooms;
const runtime = process.versions.bun ? 'Bun' : 'Node';
const instance = (opts = {}) => startServer({ redis: redis.url, validateRoomFn: rooms, history: { size: 1000 }, ...opts });
let roomSeq = 0;
const freshRoom = () => `room-${process.pid}-${++roomSeq}`;

async function member(url, room, recover) {
  const c = await Client.auth(url);
  c.emit('join', recover ? { rooms: [room], recover } : { rooms: [room] });
  const joined = await c.next(m => m.event === 'joined' && m.data.room === room, 5000);
  return { c, joined: joined.data };
}

/** Every `m` frame a client received so far, in order. */
const received = c => c.frames.filter(m => m.event === 'm');

/** Publishes `{event:'m', data:i}` every `every` ms until stopped. */
function publisher(publish, every = 10) {
  let i = 0;
  const timer = setInterval(() => publish(++i), every);
  return {
    get count() {
      return i;
    },
    stop: () => clearInterval(timer),
  };
}

/**
 * A member of `room` on `from` leaves while `publish` goes on at 100/s,
 * `whileAway()` runs, then it joins again on `to()` asking to recover from
 * the last publication it got. Resolves once it got the last one, with
 * what the room got in the order the client saw it.
 */
async function awayAndBack({ room, from, to, publish, whileAway, leave = c => c.close() }) {
  const { c: first } = await member(from.url, room);
  const pub = publisher(publish);
  await until(() => received(first).length >= 20, 3000, 'live before leaving');
  const before = received(first);
  await leave(first);
  const last = received(first)[received(first).length - 1];
  await whileAway();
  const { c: again, joined } = await member((await to()).url, room, { [room]: { offset: last.offset, epoch: last.epoch } });
  await sleep(300);
  pub.stop();
  const total = pub.count;
  await until(() => received(again).some(m => m.data === total), 8000, 'the last publication');
  await sleep(100);
  again.close();
  const seen = [...received(first), ...received(again)];
  return { joined, total, missed: total - before.length, data: seen.map(m => m.data), offsets: seen.map(m => m.offset) };
}

/** A TCP proxy to Redis whose connections can be cut, new ones refused for `ms`. */
async function cuttableProxy(port) {
  const sockets = new Set();
  let refuseUntil = 0;
  const server = net.createServer(client => {
    if (performance.now() < refuseUntil) return client.destroy();
    const upstream = net.connect(port, '127.0.0.1');
    for (const [x, y] of [
      [client, upstream],
      [upstream, client],
    ]) {
      x.pipe(y);
      x.on('error', () => y.destroy());
      x.on('close', () => y.destroy());
      sockets.add(x);
      x.on('close', () => sockets.delete(x));
    }
  });
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    cut(ms) {
      refuseUntil = performance.now() + ms;
      for (const s of sockets) s.destroy();
    },
    close: () => (server.close(), [...sockets].forEach(s => s.destroy())),
  };
}

const oneToN = n => Array.from({ length: n }, (_, k) => k + 1);

describe('history in Redis', { skip: noRedis }, () => {
  test('one sequence per room across instances and the emitter; each member gets each publication once', async () => {
    const a = await instance();
    const b = await instance();
    const room = freshRoom();
    const { c: a1, joined } = await member(a.url, room);
    const { c: b1, joined: joinedB } = await member(b.url, room);
    assert.equal(joined.offset, 0);
    assert.equal(joinedB.epoch, joined.epoch, 'one epoch for the room');
    const emitter = new lib.WebSocketEmitter({ redis: redis.url, history: true });
    await emitter.configure();
    a.ws.sendToRoom({ room, event: 'm', data: 1 });
    b.ws.sendToRoom({ room, event: 'm', data: 2 });
    a.ws.send({ destination: room, payload: { topic: 'm', data: 3 } });
    await emitter.toRoom({ room, event: 'm', data: 4 });
    b.ws.sendToRoom({ room, event: 'm', data: 5, exclude: [a1.id] });
    await until(() => received(b1).length === 5 && received(a1).length === 4, 3000, 'all delivered');
    await sleep(200);
    // Instances publish independently: which offset each publication gets
    // is not the order of the calls across instances, but a1 misses only
    // the one that excluded it.
    const excluded = received(b1).find(m => m.data === 5).offset;
    for (const c of [a1, b1]) {
      const got = received(c);
      assert.deepEqual(
        got.map(m => m.offset),
        c === a1 ? oneToN(5).filter(o => o !== excluded) : oneToN(5),
      );
      assert.ok(got.every(m => m.epoch === joined.epoch && m.room === room));
    }
    // Publications of one instance arrive in the order made.
    assert.deepEqual(received(b1).map(m => m.data).filter(d => d === 1 || d === 3), [1, 3]);
    await emitter.shutdown();
    a1.close();
    b1.close();
  });

  for (const where of ['the same', 'the other']) {
    test(`a client away for 2 s while its room gets 100 msg/s loses nothing, back on ${where} instance`, async () => {
      const a = await instance();
      const b = await instance();
      const room = freshRoom();
      const r = await awayAndBack({
        room,
        from: a,
        to: () => (where === 'the same' ? a : b),
        // Publications from both instances.
        publish: i => (i % 2 ? a : b).ws.sendToRoom({ room, event: 'm', data: i }),
        whileAway: () => sleep(2000),
      });
      assert.equal(r.joined.recovered, true);
      assert.ok(r.missed >= 190, `missed while away: ${r.missed}`);
      assert.deepEqual(r.offsets, oneToN(r.total), 'every offset once, in order');
      assert.deepEqual(r.data.toSorted((x, y) => x - y), oneToN(r.total), 'every publication once');
      process.stderr.write(`# figure: history (Redis): away 2 s at 100 msg/s, back on ${where} instance: ${r.missed} missed while away, 0 lost, 0 duplicated (${runtime})\n`);
    });
  }

  test('what Redis no longer holds is said (recovered: false), and a flushed history restarts under a new epoch', async () => {
    const a = await instance({ history: { size: 3 } });
    const room = freshRoom();
    const { c, joined } = await member(a.url, room);
    for (let i = 1; i <= 6; i++) a.ws.sendToRoom({ room, event: 'm', data: i });
    await until(() => received(c).length === 6, 3000, 'six');
    const epoch = joined.epoch;
    for (const [recover, why] of [
      [{ offset: 1, epoch }, 'fell out of the last 3'],
      [{ offset: 2, epoch: 'other' }, 'another epoch'],
      [{ offset: 99, epoch }, 'beyond the top'],
      [{ offset: -1, epoch }, 'malformed'],
      ['nope', 'not an object'],
    ]) {
      const { c: d, joined: j } = await member(a.url, room, { [room]: recover });
      assert.equal(j.recovered, false, why);
      assert.equal(j.offset, 6, why);
      assert.ok(await d.nothing('m', 50), why);
      d.close();
    }
    const { c: ok, joined: j } = await member(a.url, room, { [room]: { offset: 3, epoch } });
    assert.equal(j.recovered, true);
    assert.deepEqual(received(ok).map(m => m.data), [4, 5, 6]);
    ok.close();
    redis.cli('FLUSHALL');
    const { c: late, joined: fresh } = await member(a.url, room, { [room]: { offset: 6, epoch } });
    assert.equal(fresh.recovered, false);
    assert.notEqual(fresh.epoch, epoch);
    assert.equal(fresh.offset, 0);
    a.ws.sendToRoom({ room, event: 'm', data: 'after' });
    const m = await late.next('m');
    assert.deepEqual([m.offset, m.epoch], [1, fresh.epoch]);
    // The member that stayed follows the new epoch too.
    await until(() => received(c).length === 7, 3000, 'the stayer');
    assert.equal(received(c)[6].epoch, fresh.epoch);
    c.close();
    late.close();
  });

  test("envelopes from the original's servers and emitter are delivered live, without offset", async () => {
    const a = await instance();
    const room = freshRoom();
    const { c } = await member(a.url, room);
    await sleep(100);
    const envelope = { serverId: 'original-1', type: 'room', target: room, event: 'legacy', data: { x: 1 } };
    redis.cli('PUBLISH', `ws:room:${room}`, JSON.stringify(envelope));
    assert.deepEqual(await c.next('legacy'), { event: 'legacy', data: { x: 1 } });
    c.close();
  });

  test('a Redis restart (with persistence) loses nothing: publications made meanwhile wait and are positioned when it is back', async () => {
    const a = await instance();
    const b = await instance();
    const room = freshRoom();
    const r = await awayAndBack({
      room,
      from: a,
      to: () => a,
      publish: i => b.ws.sendToRoom({ room, event: 'm', data: i }),
      async whileAway() {
        await redis.stop();
        await sleep(800);
        await redis.start();
        await until(() => a.ws.stats().busState === 'connected' && b.ws.stats().busState === 'connected', 8000, 'reconnected');
        await sleep(1000);
      },
    });
    assert.equal(r.joined.recovered, true, JSON.stringify(r.joined));
    assert.deepEqual(r.data, oneToN(r.total), 'every publication once, in order');
    assert.deepEqual(r.offsets, r.data, 'offsets follow the publications');
    assert.equal(b.ws.stats().busPublishDropped, 0);
  });

  test('a recovering join is answered within its bound while Redis does not answer', async () => {
    // A Redis of its own, stopped (SIGSTOP): connected, but silent.
    const own = await startRedis();
    const a = await startServer({ redis: own.url, validateRoomFn: rooms, history: { size: 1000 } });
    const room = freshRoom();
    try {
      const { c: first, joined } = await member(a.url, room);
      first.close();
      await until(() => a.ws.getClientsByRoom({ room }).length === 0, 2000, 'left');
      own.proc.kill('SIGSTOP');
      const c = await Client.auth(a.url);
      const t0 = performance.now();
      c.emit('join', { rooms: [room], recover: { [room]: { offset: joined.offset, epoch: joined.epoch } } });
      const answer = await c.next(m => m.event === 'joined' && m.data.room === room, 10_000);
      const waited = performance.now() - t0;
      assert.equal(answer.data.recovered, false, 'nothing could be read: said so');
      assert.ok(waited < 8000, `answered after ${waited} ms (bound: 5 s after validation)`);
      assert.ok(a.ws.stats().storeErrors >= 1, 'counted');
      process.stderr.write(`# figure: history (Redis) join answered after ${waited} ms with Redis stopped (${runtime})\n`);
      c.close();
    } finally {
      own.proc.kill('SIGCONT');
      await a.ws.shutdown();
      await own.stop();
    }
  });

  test('kill -9 of the instance a client was on: it recovers everything on the other', async () => {
    const dead = await soakServer({ redis: redis.url, history: true }, {}, { sameRuntime: true });
    const b = await instance();
    const room = freshRoom();
    const r = await awayAndBack({
      room,
      from: dead,
      to: () => b,
      publish: i => b.ws.sendToRoom({ room, event: 'm', data: i }),
      async leave(c) {
        dead.child.kill('SIGKILL');
        await c.closed;
      },
      whileAway: () => sleep(1000),
    });
    assert.equal(r.joined.recovered, true);
    assert.deepEqual(r.data, oneToN(r.total));
  });

  test('a member that stays while its instance loses the bus gets what was published meanwhile, once, in order', async () => {
    // Instance a reaches Redis through a proxy that can cut its connections
    // (and refuse new ones for a while), as a network fault would.
    const proxy = await cuttableProxy(redis.port);
    const a = await instance({ redis: `redis://127.0.0.1:${proxy.port}` });
    const room = freshRoom();
    const { c } = await member(a.url, room);
    // The servers' history option: the stream is trimmed to the size of
    // whoever appends.
    const emitter = new lib.WebSocketEmitter({ redis: redis.url, history: { size: 1000 } });
    await emitter.configure();
    let n = 0;
    const next = () => emitter.toRoom({ room, event: 'm', data: ++n });
    const pub = publisher(next);
    await until(() => received(c).length >= 20, 3000, 'live');
    proxy.cut(600);
    // Pub/Sub keeps nothing for a subscriber that is away: only the room's
    // stream can give a what was published meanwhile.
    await Promise.all(Array.from({ length: 200 }, next));
    await until(() => a.ws.stats().busReconnects >= 1, 5000, 'a resubscribed');
    await sleep(300);
    pub.stop();
    await until(() => received(c).some(m => m.data === n), 5000, 'the last publication');
    await sleep(100);
    assert.deepEqual(received(c).map(m => m.offset), oneToN(n), 'every offset once, in order');
    assert.equal(a.ws.stats().historySkipped, 0);
    await emitter.shutdown();
    c.close();
    await a.ws.shutdown();
    proxy.close();
  });

  test('clients joining while their instance catches up on missed publications get each one once', async () => {
    const proxy = await cuttableProxy(redis.port);
    const a = await instance({ redis: `redis://127.0.0.1:${proxy.port}` });
    const room = freshRoom();
    const { c: stayer, joined } = await member(a.url, room);
    const emitter = new lib.WebSocketEmitter({ redis: redis.url, history: { size: 1000 } });
    await emitter.configure();
    let n = 0;
    const next = () => emitter.toRoom({ room, event: 'm', data: ++n });
    await Promise.all(Array.from({ length: 20 }, next));
    await until(() => received(stayer).length === 20, 3000, 'live');
    // a is cut off while 200 more are published; clients join a as soon
    // as it takes connections again, while it reads what it missed and
    // publications go on.
    proxy.cut(600);
    await Promise.all(Array.from({ length: 200 }, next));
    const pub = publisher(next, 5);
    await sleep(450);
    const joiners = await Promise.all(
      Array.from({ length: 8 }, async (_, k) => {
        const c = await Client.auth(a.url, { token: `j${k}` });
        c.emit('join', { rooms: [room], recover: { [room]: { offset: 10, epoch: joined.epoch } } });
        return c;
      }),
    );
    await sleep(800);
    pub.stop();
    await until(() => [stayer, ...joiners].every(c => received(c).some(m => m.data === n)), 8000, 'everyone got the last one');
    await sleep(100);
    assert.deepEqual(received(stayer).map(m => m.offset), oneToN(n), 'the member that stayed');
    for (const c of joiners) {
      const joinedAck = c.frames.find(m => m.event === 'joined');
      assert.equal(joinedAck?.data.recovered, true);
      assert.deepEqual(received(c).map(m => m.offset), oneToN(n).slice(10), 'a joiner: from offset 11, once each, in order');
      c.close();
    }
    await emitter.shutdown();
    stayer.close();
    await a.ws.shutdown();
    proxy.close();
  });

  test('the SDK client rejoins with recover after a reconnection and delivers the missed publications to its listeners', async () => {
    const { WebSocketClient } = await import('../dist/client.js');
    const a = await instance();
    const b = await instance();
    const room = freshRoom();
    const client = new WebSocketClient({ url: a.url, auth: () => ({ token: 'sdk' }), heartbeatInterval: 0, reconnect: { minDelay: 300, maxDelay: 300, jitter: 0 } });
    const got = [];
    const recovered = [];
    client.on('m', d => got.push(d));
    client.on('recovered', r => recovered.push(r));
    await client.connect();
    client.join([room]);
    await until(() => a.ws.getClientsByRoom({ room }).length === 1, 2000, 'joined');
    await sleep(200);
    b.ws.sendToRoom({ room, event: 'm', data: 1 });
    await until(() => got.length === 1, 3000, 'first');
    // The server drops the connection; publications continue meanwhile.
    const id = [...a.ws.getClients().keys()][0];
    a.ws.getClients({ id }).socket.close(4000, 'test');
    for (let i = 2; i <= 20; i++) b.ws.sendToRoom({ room, event: 'm', data: i });
    await until(() => got.length === 20, 5000, 'all after reconnecting');
    assert.deepEqual(got, Array.from({ length: 20 }, (_, k) => k + 1));
    assert.deepEqual(recovered, [{ room, recovered: true }]);
    client.close();
  });
});
