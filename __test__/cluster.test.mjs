// Redis Cluster: a real three-master cluster, classic PUBLISH/SUBSCRIBE
// (compatible with the original) and opt-in sharded SPUBLISH/SSUBSCRIBE.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';
import { startCluster, noRedis } from './redis-helpers.mjs';

let cluster;
before(async () => {
  if (noRedis) return;
  cluster = await startCluster();
});
after(async () => {
  await stopAll();
  await cluster?.stop();
});

async function joined(s, token, rooms) {
  const c = await Client.auth(s.url, { token, userId: 'user-' + token });
  c.emit('join', { rooms });
  await until(() => rooms.every(r => s.ws.getClients({ id: c.id })?.rooms.has(r)), 2000, 'join');
  return c;
}

test('an ioredis Cluster client is read for its startup nodes', { skip: noRedis }, async () => {
  const { default: IORedis } = await import('ioredis');
  const ioCluster = new IORedis.Cluster(cluster.seeds, { lazyConnect: true });
  const a = await startServer({ redis: ioCluster, validateRoomFn: ({ rooms }) => rooms });
  assert.equal(a.ws.stats().bus, 'redis-cluster');
  const c = await joined(a, 'io', ['io-room']);
  await sleep(200);
  const emitter = new lib.WebSocketEmitter({ redis: { nodes: cluster.seeds } });
  await emitter.configure();
  await emitter.toRoom({ room: 'io-room', event: 'x', data: 1 });
  await c.next('x');
  await emitter.shutdown();
  c.close();
  await a.ws.shutdown();
});

for (const sharded of [false, true]) {
  describe(`cluster, ${sharded ? 'sharded' : 'classic'} pub/sub`, { skip: noRedis }, () => {
    test('rooms, users, clients and broadcasts cross instances; the emitter reaches them', async () => {
      const redis = { nodes: cluster.seeds, sharded };
      const a = await startServer({ redis, validateRoomFn: ({ rooms }) => rooms });
      const b = await startServer({ redis, validateRoomFn: ({ rooms }) => rooms });
      assert.equal(a.ws.stats().bus, 'redis-cluster');
      // Room names chosen to land on different slots / masters.
      const rooms = ['alpha', 'bravo', 'charlie', 'delta'];
      const a1 = await joined(a, `a${sharded}`, rooms);
      const b1 = await joined(b, `b${sharded}`, rooms);
      await sleep(300);
      for (const room of rooms) {
        a.ws.send({ destination: room, payload: { topic: 'r', data: room } });
        assert.equal((await b1.next('r')).data, room);
        assert.equal((await a1.next('r')).data, room);
      }
      a.ws.send({ destination: b1.id, payload: { topic: 'c', data: 1 } });
      await b1.next('c');
      a.ws.send({ payload: { topic: 'all', data: 1 } });
      await a1.next('all');
      await b1.next('all');
      const emitter = new lib.WebSocketEmitter({ redis });
      await emitter.configure();
      await emitter.toUser({ userId: `user-a${sharded}`, event: 'u', data: 1 });
      await a1.next('u');
      await emitter.toRoom({ room: 'charlie', event: 'e', data: 2, exclude: [a1.id] });
      await b1.next('e');
      await emitter.shutdown();
      await sleep(200);
      assert.deepEqual(a1.frames, []);
      assert.deepEqual(b1.frames, []);
      a1.close();
      b1.close();
      await a.ws.shutdown();
      await b.ws.shutdown();
    });
  });
}

for (const sharded of [false, true]) {
  test(`history and presence on a ${sharded ? 'sharded' : 'classic'} cluster: one sequence per room, recovery on the other instance, fleet presence`, { skip: noRedis }, async () => {
    const redis = { nodes: cluster.seeds, sharded };
    const opts = { redis, validateRoomFn: ({ rooms }) => rooms, history: { size: 500 }, presence: { events: true } };
    const a = await startServer(opts);
    const b = await startServer(opts);
    const emitter = new lib.WebSocketEmitter({ redis, history: true });
    await emitter.configure();
    // Names on different slots, braces included (they change a channel's slot).
    for (const room of ['hist-alpha', 'hist-bravo', 'a{b}c', 'x}y{'].map(r => `${r}-${sharded}`)) {
      const a1 = await joined(a, `ha${sharded}${room}`, [room]);
      const j = await a1.next('joined');
      assert.equal(j.data.offset, 0);
      const b1 = await joined(b, `hb${sharded}${room}`, [room]);
      await b1.next('joined');
      await sleep(200);
      a.ws.sendToRoom({ room, event: 'm', data: 1 });
      b.ws.sendToRoom({ room, event: 'm', data: 2 });
      await emitter.toRoom({ room, event: 'm', data: 3 });
      for (const c of [a1, b1]) {
        for (let offset = 1; offset <= 3; offset++) {
          const m = await c.next('m');
          assert.deepEqual([m.offset, m.epoch, m.room], [offset, j.data.epoch, room], room);
        }
      }
      const members = await b.ws.getPresence({ room });
      assert.deepEqual(members.map(m => m.clientId).sort(), [a1.id, b1.id].sort(), room);
      // a1 leaves; publications go on; it comes back on b and recovers.
      await a1.close();
      for (let i = 4; i <= 10; i++) a.ws.sendToRoom({ room, event: 'm', data: i });
      await until(() => b1.frames.filter(m => m.event === 'm').length === 7, 3000, 'b1 got them');
      const again = await Client.auth(b.url, { token: `again${sharded}${room}` });
      again.emit('join', { rooms: [room], recover: { [room]: { offset: 3, epoch: j.data.epoch } } });
      const back = await again.next('joined');
      assert.equal(back.data.recovered, true, room);
      const replay = again.frames.filter(m => m.event === 'm').map(m => m.offset);
      assert.deepEqual(replay, [4, 5, 6, 7, 8, 9, 10], room);
      again.close();
      b1.close();
    }
    await emitter.shutdown();
    await a.ws.shutdown();
    await b.ws.shutdown();
  });
}

// Last: it takes the shared cluster down and back.
test('busState reports a cluster outage and its end', { skip: noRedis }, async () => {
  const a = await startServer({ redis: { nodes: cluster.seeds } });
  assert.equal(a.ws.stats().busState, 'connected');
  await Promise.all(cluster.nodes.map(n => n.stop()));
  const down = performance.now();
  await until(() => a.ws.stats().busState === 'disconnected', 5000, 'busState disconnected');
  process.stderr.write(`# figure: cluster outage seen by busState after ${performance.now() - down} ms\n`);
  assert.match(a.ws.metrics(), /ignis_ws_bus_connected\{[^}]*bus="redis-cluster"[^}]*\} 0/);
  for (const n of cluster.nodes) await n.start();
  await until(() => a.ws.stats().busState === 'connected', 20_000, 'busState connected again');
  assert.ok(a.ws.stats().busReconnects >= 1);
  await a.ws.shutdown();
});
