// Mixed fleet: the original Ignis helper (@venizia/ignis-helpers 0.0.7, on
// Bun) and this project on one Redis, messages both ways; the original
// WebSocketEmitter reaches our clients and ours reaches the original's.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const bun = path.join(here, '..', 'node_modules', '.bin', 'bun');
const require = createRequire(import.meta.url);

let redis;
let original;
let originalPort;

before(async () => {
  if (noRedis) return;
  redis = await startRedis();
  original = spawn(bun, [path.join(here, 'fixtures', 'original-server.mjs')], {
    stdio: ['pipe', 'pipe', 'ignore'],
    env: { ...process.env, REDIS_URL: redis.url },
  });
  let out = '';
  original.stdout.on('data', d => (out += d));
  await until(() => /PORT (\d+)/.test(out), 15_000, 'original server on Bun');
  originalPort = Number(/PORT (\d+)/.exec(out)[1]);
});

after(async () => {
  await stopAll();
  if (original && original.exitCode === null) {
    const gone = new Promise(r => original.once('exit', r));
    original.stdin.write('stop\n');
    await Promise.race([gone, sleep(3000)]);
    if (original.exitCode === null) original.kill('SIGKILL');
  }
  await redis?.stop();
});

async function joined(url, token, rooms, isOurs, ws) {
  const c = await Client.auth(url, { token, userId: 'user-' + token });
  c.emit('join', { rooms });
  if (isOurs) await until(() => rooms.every(r => ws.getClients({ id: c.id })?.rooms.has(r)), 2000, 'join');
  else await sleep(150);
  return c;
}

describe('mixed fleet with the original on Bun', { skip: noRedis }, () => {
  test('chat in a room spans both servers, both ways, once each', async () => {
    const ours = await startServer({
      redis: redis.url,
      validateRoomFn: ({ rooms }) => rooms,
      messageHandler: ({ message }) => {
        if (message.event === 'chat') ours.ws.send({ destination: message.data.room, payload: { topic: 'chat', data: message.data } });
      },
    });
    const origUrl = `ws://127.0.0.1:${originalPort}/ws`;
    const o1 = await joined(origUrl, 'o1', ['mixed'], false);
    const n1 = await joined(ours.url, 'n1', ['mixed'], true, ours.ws);
    await sleep(150);

    n1.emit('chat', { room: 'mixed', text: 'from native' });
    assert.equal((await o1.next('chat')).data.text, 'from native');
    assert.equal((await n1.next('chat')).data.text, 'from native');

    o1.emit('chat', { room: 'mixed', text: 'from original' });
    assert.equal((await n1.next('chat')).data.text, 'from original');
    assert.equal((await o1.next('chat')).data.text, 'from original');

    await sleep(200);
    assert.deepEqual(n1.frames, []);
    assert.deepEqual(o1.frames, []);
    o1.close();
    n1.close();
  });

  test("the original's WebSocketEmitter reaches our clients", async () => {
    const { WebSocketEmitter, RedisHelper } = require('@venizia/ignis-helpers');
    const ours = await startServer({ redis: redis.url, validateRoomFn: ({ rooms }) => rooms });
    const n1 = await joined(ours.url, 'e1', ['emit-room'], true, ours.ws);
    await sleep(150);
    const helper = new RedisHelper({ name: 'orig-emitter', host: '127.0.0.1', port: redis.port, autoConnect: false });
    const emitter = new WebSocketEmitter({ redisConnection: helper });
    await emitter.configure();
    try {
      await emitter.toRoom({ room: 'emit-room', event: 'o-room', data: { a: 1 } });
      assert.deepEqual(await n1.next('o-room'), { event: 'o-room', data: { a: 1 } });
      await emitter.toUser({ userId: 'user-e1', event: 'o-user', data: 'u' });
      await n1.next('o-user');
      await emitter.toClient({ clientId: n1.id, event: 'o-client', data: 2 });
      await n1.next('o-client');
      await emitter.broadcast({ event: 'o-all', data: null });
      await n1.next('o-all');
    } finally {
      await emitter.shutdown();
      helper.getClient().disconnect();
    }
    n1.close();
  });

  test("our WebSocketEmitter reaches the original's clients, and accepts an Ignis RedisHelper", async () => {
    const { RedisHelper } = require('@venizia/ignis-helpers');
    const origUrl = `ws://127.0.0.1:${originalPort}/ws`;
    const o1 = await joined(origUrl, 'oe', ['native-emit'], false);
    const helper = new RedisHelper({ name: 'for-native', host: '127.0.0.1', port: redis.port, autoConnect: false });
    const emitter = new lib.WebSocketEmitter({ redisConnection: helper });
    await emitter.configure();
    await emitter.toRoom({ room: 'native-emit', event: 'n-room', data: [1, 2] });
    assert.deepEqual(await o1.next('n-room'), { event: 'n-room', data: [1, 2] });
    await emitter.toUser({ userId: 'user-oe', event: 'n-user', data: 'x' });
    await o1.next('n-user');
    await emitter.toClient({ clientId: o1.id, event: 'n-client', data: 3 });
    await o1.next('n-client');
    await emitter.broadcast({ event: 'n-all', data: true });
    await o1.next('n-all');
    await emitter.shutdown();
    assert.equal(helper.getClient().status, 'wait', 'the helper is read for options; its socket is never used');
    o1.close();
  });
});
