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

// Last: it takes the shared cluster down and back.
test('busState reports a cluster outage and its end', { skip: noRedis }, async () => {
  const a = await startServer({ redis: { nodes: cluster.seeds } });
  assert.equal(a.ws.stats().busState, 'connected');
  await Promise.all(cluster.nodes.map(n => n.stop()));
  const down = Date.now();
  await until(() => a.ws.stats().busState === 'disconnected', 5000, 'busState disconnected');
  process.stderr.write(`# figure: cluster outage seen by busState after ${Date.now() - down} ms\n`);
  assert.match(a.ws.metrics(), /ignis_ws_bus_connected\{[^}]*bus="redis-cluster"[^}]*\} 0/);
  for (const n of cluster.nodes) await n.start();
  await until(() => a.ws.stats().busState === 'connected', 20_000, 'busState connected again');
  assert.ok(a.ws.stats().busReconnects >= 1);
  await a.ws.shutdown();
});
