// Scale-out through a real Redis (docs/PROTOCOL.md §10): several instances of this
// project, the emitter, interest-based subscriptions, failures.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';
import { sharedRedis, startRedis, freePort, noRedis } from './redis-helpers.mjs';

let redis;
before(async () => {
  if (noRedis) return;
  redis = await sharedRedis();
});
after(async () => {
  await stopAll();
  await redis?.stop();
});

const instance = (opts = {}) =>
  startServer({ redis: redis.url, validateRoomFn: ({ rooms }) => rooms, ...opts });

async function joined(s, c, rooms) {
  c.emit('join', { rooms });
  await until(() => rooms.every(r => s.ws.getClients({ id: c.id })?.rooms.has(r)), 2000, 'join');
}

/** Waits until the bus of every instance has settled its subscriptions. */
const settle = () => sleep(150);

describe('two and three instances', { skip: noRedis }, () => {
  test('room, user, client and broadcast reach the other instance exactly once', async () => {
    const a = await instance();
    const b = await instance();
    const a1 = await Client.auth(a.url, { token: 'a1', userId: 'shared-user' });
    const b1 = await Client.auth(b.url, { token: 'b1', userId: 'shared-user' });
    const b2 = await Client.auth(b.url, { token: 'b2', userId: 'b2-user' });
    await joined(a, a1, ['news']);
    await joined(b, b1, ['news']);
    await settle();

    a.ws.send({ destination: 'news', payload: { topic: 'room-msg', data: { n: 1 } } });
    assert.deepEqual(await a1.next('room-msg'), { event: 'room-msg', data: { n: 1 } });
    assert.deepEqual(await b1.next('room-msg'), { event: 'room-msg', data: { n: 1 } });

    a.ws.send({ destination: b2.id, payload: { topic: 'to-client', data: 'x' } });
    assert.deepEqual(await b2.next('to-client'), { event: 'to-client', data: 'x' });

    a.ws.send({ payload: { topic: 'everyone', data: true } });
    for (const c of [a1, b1, b2]) await c.next('everyone');

    const emitter = new lib.WebSocketEmitter({ redis: redis.url });
    await emitter.configure();
    await emitter.toUser({ userId: 'shared-user', event: 'to-user', data: 7 });
    await a1.next('to-user');
    await b1.next('to-user');
    await emitter.toRoom({ room: 'news', event: 'emitted-room', data: null, exclude: [b1.id] });
    await a1.next('emitted-room');
    await emitter.broadcast({ event: 'emitted-all', data: [1] });
    for (const c of [a1, b1, b2]) await c.next('emitted-all');
    await emitter.toClient({ clientId: a1.id, event: 'emitted-client' });
    assert.deepEqual(await a1.next('emitted-client'), { event: 'emitted-client' });
    await emitter.shutdown();

    await sleep(200);
    for (const c of [a1, b1, b2]) assert.deepEqual(c.frames, [], `no duplicates or strays for ${c.id}`);
    assert.ok(await b1.nothing('emitted-room', 1), 'exclude honoured across instances');
    for (const c of [a1, b1, b2]) c.close();
  });

  test('exclude is honoured for room and broadcast envelopes', async () => {
    const a = await instance();
    const b = await instance();
    const b1 = await Client.auth(b.url, { token: 'x1' });
    const b2 = await Client.auth(b.url, { token: 'x2' });
    await joined(b, b1, ['ex']);
    await joined(b, b2, ['ex']);
    await settle();
    const emitter = new lib.WebSocketEmitter({ redis: redis.url });
    await emitter.configure();
    await emitter.toRoom({ room: 'ex', event: 'r', data: 1, exclude: [b1.id] });
    await b2.next('r');
    // The original's emitter has no exclude on broadcast; a raw envelope does.
    redis.cli('PUBLISH', 'ws:broadcast', JSON.stringify({ serverId: 'other', type: 'broadcast', event: 'b', data: 2, exclude: [b2.id] }));
    await b1.next('b');
    await sleep(150);
    assert.ok(!b1.frames.some(f => f.event === 'r'));
    assert.ok(!b2.frames.some(f => f.event === 'b'));
    await emitter.shutdown();
    b1.close();
    b2.close();
  });

  test('chat across three instances: an event handled on one fans out to clients on all', async () => {
    const servers = [];
    for (let i = 0; i < 3; i++) {
      const s = await instance({
        messageHandler: ({ userId, message }) => {
          if (message.event === 'chat') {
            s.ws.send({ destination: 'lobby', payload: { topic: 'chat', data: { from: userId, text: message.data.text } } });
          }
        },
      });
      servers.push(s);
    }
    const clients = [];
    for (const [i, s] of servers.entries()) {
      for (let k = 0; k < 2; k++) {
        const c = await Client.auth(s.url, { token: `c${i}${k}`, userId: `u${i}${k}` });
        await joined(s, c, ['lobby']);
        clients.push(c);
      }
    }
    await settle();
    clients[0].emit('chat', { text: 'hello from instance 0' });
    clients[5].emit('chat', { text: 'hello from instance 2' });
    for (const c of clients) {
      const got = [await c.next('chat'), await c.next('chat')].map(m => m.data.text).sort();
      assert.deepEqual(got, ['hello from instance 0', 'hello from instance 2']);
    }
    await sleep(200);
    assert.ok(clients.every(c => c.frames.length === 0), 'each chat line arrives once per client');
    clients.forEach(c => c.close());
  });
});

describe('subscriptions follow local interest', { skip: noRedis }, () => {
  test('an instance subscribes to a room only while it hosts a member', async () => {
    const a = await instance();
    const b = await instance();
    const a1 = await Client.auth(a.url, { token: 'i1' });
    await joined(a, a1, ['only-on-a']);
    await settle();
    assert.equal(redis.cli('PUBSUB', 'NUMSUB', 'ws:room:only-on-a').split('\n')[1], '1', 'one subscriber: instance a');
    assert.equal(redis.cli('PUBSUB', 'NUMPAT'), '0', 'no pattern subscriptions');

    const before = b.ws.stats().busReceived;
    const emitter = new lib.WebSocketEmitter({ redis: redis.url });
    await emitter.configure();
    for (let i = 0; i < 20; i++) await emitter.toRoom({ room: 'only-on-a', event: 'n', data: i });
    for (let i = 0; i < 20; i++) assert.equal((await a1.next('n')).data, i);
    assert.equal(b.ws.stats().busReceived, before, 'instance b received none of that room traffic');

    a1.emit('leave', { rooms: ['only-on-a'] });
    await until(() => redis.cli('PUBSUB', 'NUMSUB', 'ws:room:only-on-a').split('\n')[1] === '0', 2000, 'unsubscribe');
    await emitter.shutdown();
    a1.close();
  });

  test('a subscribed connection stays up across keep-alive pings (no reconnects, nothing lost)', async () => {
    const a = await instance();
    const a1 = await Client.auth(a.url, { token: 'k1' });
    await joined(a, a1, ['kept']);
    await settle();
    const emitter = new lib.WebSocketEmitter({ redis: redis.url });
    await emitter.configure();
    // The subscriber pings Redis every 5 s; a subscribed connection answers
    // with an array, which once read as a failure and reconnected.
    for (let i = 0; i < 14; i++) {
      await emitter.toRoom({ room: 'kept', event: 'k', data: i });
      assert.equal((await a1.next('k')).data, i);
      await sleep(500);
    }
    assert.equal(a.ws.stats().busReconnects, 0);
    assert.equal(a.ws.stats().busState, 'connected');
    await emitter.shutdown();
    a1.close();
  });

  test('user and client channels come and go with the client', async () => {
    const a = await instance();
    const c = await Client.auth(a.url, { token: 'k', userId: 'user-k' });
    await settle();
    assert.equal(redis.cli('PUBSUB', 'NUMSUB', 'ws:user:user-k').split('\n')[1], '1');
    assert.equal(redis.cli('PUBSUB', 'NUMSUB', `ws:client:${c.id}`).split('\n')[1], '1');
    await c.close();
    await until(() => redis.cli('PUBSUB', 'NUMSUB', 'ws:user:user-k').split('\n')[1] === '0', 2000, 'user unsubscribe');
    await until(() => redis.cli('PUBSUB', 'NUMSUB', `ws:client:${c.id}`).split('\n')[1] === '0', 2000, 'client unsubscribe');
  });
});

describe('connections', { skip: noRedis }, () => {
  test('a server shut down leaves none of its Redis connections open, the one for history and presence requests included', async () => {
    const own = await startRedis();
    try {
      for (let round = 0; round < 3; round++) {
        const s = await startServer({ redis: own.url, history: true, presence: true, validateRoomFn: ({ rooms }) => rooms });
        const { ws } = s;
        const c = await Client.auth(s.url);
        await joined(s, c, ['r']);
        // A history request and a presence request: the store's connection is in use.
        ws.sendToRoom({ room: 'r', event: 'x', data: round });
        await c.next('x');
        assert.equal((await ws.getPresence({ room: 'r' })).length, 1);
        assert.ok(own.connections() >= 3, `a running server holds its connections (${own.connections()})`);
        c.close();
        await ws.shutdown();
        await until(() => own.connections() === 0, 3000, `no connection left open after shutdown ${round + 1}`);
      }
    } finally {
      await own.stop();
    }
  });
});

describe('shutdown', { skip: noRedis }, () => {
  test('a publication Redis has not answered yet when shutdown() begins still reaches the other instances', async () => {
    const own = await startRedis();
    try {
      const opts = { redis: own.url, validateRoomFn: ({ rooms }) => rooms };
      const a = await startServer(opts);
      const b = await startServer(opts);
      const member = await Client.auth(b.url, { token: 'm' });
      await joined(b, member, ['last-words']);
      await settle();
      // Redis takes the PUBLISH but holds it for 300 ms: it is written and
      // unanswered when the sending instance starts shutting down.
      own.cli('CLIENT', 'PAUSE', '300', 'WRITE');
      a.ws.send({ destination: 'last-words', payload: { topic: 'bye', data: 1 } });
      await sleep(50);
      await a.ws.shutdown();
      assert.deepEqual(await member.next('bye', 2000), { event: 'bye', data: 1 });
      assert.equal(a.ws.stats().busPublishDropped, 0);
      member.close();
    } finally {
      await own.stop();
    }
  });
});

describe('redis option forms', { skip: noRedis }, () => {
  test('a URL, an options object, an ioredis client and an Ignis RedisHelper all connect', async () => {
    const { default: IORedis } = await import('ioredis');
    const { RedisHelper } = await import('@venizia/ignis-helpers');
    const port = Number(new URL(redis.url).port || 6379);
    const ioredis = new IORedis({ host: '127.0.0.1', port, lazyConnect: true });
    const helper = new RedisHelper({ name: 'forms', host: '127.0.0.1', port, autoConnect: false });
    const forms = [redis.url, { host: '127.0.0.1', port, db: 0 }, ioredis, helper];
    const servers = [];
    for (const form of forms) servers.push(await startServer({ redis: form }));
    for (const s of servers) assert.equal(s.ws.stats().busState, 'connected');
    const c = await Client.auth(servers[3].url, { token: 'form', userId: 'form-user' });
    await settle();
    servers[0].ws.send({ destination: c.id, payload: { topic: 'via-url', data: 1 } });
    await c.next('via-url');
    assert.equal(ioredis.status, 'wait', 'the ioredis client itself is never connected');
    c.close();
  });

  test('malformed redis options are refused with the option named', () => {
    const auth = () => ({});
    for (const [redisOpt, re] of [
      [42, /redis/],
      ['http://localhost', /redis:\/\//],
      [{ nodes: [] }, /redis\.nodes/],
      [{ url: redis.url, connectTimeout: -1 }, /redis\.connectTimeout/],
    ]) {
      assert.throws(() => new lib.WebSocketServer({ authenticateFn: auth, redis: redisOpt }), re);
    }
    assert.throws(() => new lib.WebSocketEmitter({}), /Invalid redis connection/);
  });
});

describe('bad envelopes', { skip: noRedis }, () => {
  test('non-JSON and wrongly shaped envelopes are logged and ignored; the subscriber keeps going', async () => {
    const lines = [];
    const a = await instance({ logger: { error: l => lines.push(l), warn: () => {}, info: () => {} }, logLevel: 'error' });
    const c = await Client.auth(a.url);
    await settle();
    for (const bad of ['not json', '[]', '{"serverId":1,"event":"x"}', '{"serverId":"s"}', '{"serverId":"s","type":"weird","event":"x"}']) {
      redis.cli('PUBLISH', 'ws:broadcast', bad);
    }
    redis.cli('PUBLISH', 'ws:broadcast', JSON.stringify({ serverId: 'emitter', type: 'broadcast', event: 'still-alive', data: 1 }));
    await c.next('still-alive');
    assert.equal(a.ws.stats().busInvalid, 4);
    assert.ok(lines.some(l => l.includes('Invalid Redis message')));
    c.close();
  });

  test('an instance ignores envelopes carrying its own serverId, never "emitter"', async () => {
    const a = await instance();
    const c = await Client.auth(a.url);
    await settle();
    redis.cli('PUBLISH', 'ws:broadcast', JSON.stringify({ serverId: a.ws.serverId, type: 'broadcast', event: 'self', data: 1 }));
    redis.cli('PUBLISH', 'ws:broadcast', JSON.stringify({ serverId: 'emitter', type: 'broadcast', event: 'emitter', data: 1 }));
    await c.next('emitter');
    assert.ok(await c.nothing('self', 100));
    c.close();
  });
});

describe('Redis failures', { skip: noRedis }, () => {
  test('unreachable at start: configure() rejects after connectTimeout, naming the address', async () => {
    const port = await freePort();
    const ws = new lib.WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      logLevel: 'silent',
      authenticateFn: () => ({}),
      redis: { host: '127.0.0.1', port, connectTimeout: 300 },
    });
    const t0 = performance.now();
    await assert.rejects(ws.configure(), new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.ok(performance.now() - t0 < 3000);
    const emitter = new lib.WebSocketEmitter({ redis: { url: `redis://127.0.0.1:${port}`, connectTimeout: 300 } });
    await assert.rejects(emitter.configure(), new RegExp(`127\\.0\\.0\\.1:${port}`));
  });

  test('killed and restarted mid-traffic: no crash, local delivery continues, Redis delivery resumes', async () => {
    const own = await startRedis();
    const a = await startServer({ redis: { url: own.url, publishBuffer: 1000 }, validateRoomFn: ({ rooms }) => rooms });
    const b = await startServer({ redis: { url: own.url, publishBuffer: 1000 }, validateRoomFn: ({ rooms }) => rooms });
    const a1 = await Client.auth(a.url, { token: 'ka' });
    const b1 = await Client.auth(b.url, { token: 'kb' });
    await joined(a, a1, ['live']);
    await joined(b, b1, ['live']);
    await settle();
    a.ws.send({ destination: 'live', payload: { topic: 'm', data: 'before' } });
    await b1.next('m');
    await a1.next('m');

    await own.stop();
    await until(() => a.ws.stats().busState !== 'connected', 3000, 'outage noticed');
    a.ws.send({ destination: 'live', payload: { topic: 'm', data: 'during' } });
    assert.equal((await a1.next('m')).data, 'during', 'local delivery continues while Redis is down');
    assert.ok(a.ws.stats().busPublishBuffered >= 1, 'publication buffered');

    const restartedAt = performance.now();
    await own.start();
    await until(() => a.ws.stats().busState === 'connected' && b.ws.stats().busState === 'connected', 5000, 'reconnect');
    assert.equal((await b1.next('m', 5000)).data, 'during', 'the buffered publication went out after the outage');
    // Recovery: time from Redis being back to cross-instance delivery working.
    let recovered = 0;
    for (;;) {
      a.ws.send({ destination: 'live', payload: { topic: 'probe', data: Date.now() } });
      const got = await b1.next('probe', 200).catch(() => null);
      if (got) {
        recovered = performance.now() - restartedAt;
        break;
      }
      if (performance.now() - restartedAt > 5000) throw new Error('no recovery within 5 s');
    }
    process.stderr.write(`# redis recovery: ${recovered} ms from restart to cross-instance delivery\n`);
    assert.ok(a.ws.stats().busReconnects >= 1);
    a1.close();
    b1.close();
    await a.ws.shutdown();
    await b.ws.shutdown();
    await own.stop();
  });

  test('a full publish buffer drops the oldest and counts them', async () => {
    const own = await startRedis();
    const a = await startServer({ redis: { url: own.url, publishBuffer: 5 } });
    await own.stop();
    await until(() => a.ws.stats().busState !== 'connected', 3000, 'outage noticed');
    for (let i = 0; i < 20; i++) a.ws.send({ destination: 'nowhere', payload: { topic: 't', data: i } });
    const s = a.ws.stats();
    assert.ok(s.busPublishBuffered <= 5);
    assert.ok(s.busPublishDropped >= 15, `dropped ${s.busPublishDropped}`);
    await a.ws.shutdown();
  });
});
