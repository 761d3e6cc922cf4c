// Presence across instances sharing a real Redis: getPresence lists the
// fleet's members, join/leave events cross instances, and the members of an
// instance killed with -9 vanish within the stated bound.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, startServer, stopAll, sleep, until } from './helpers.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';
import { soakServer } from './soak-helpers.mjs';

let redis;
before(async () => {
  if (noRedis) return;
  redis = await startRedis();
});
after(async () => {
  await stopAll();
  await redis?.stop();
});

const runtime = process.versions.bun ? 'Bun' : 'Node';
const instance = (presence = {}) =>
  startServer({ redis: redis.url, validateRoomFn: ({ rooms }) => rooms, presence: { events: true, ...presence } });

async function member(s, token, room) {
  const c = await Client.auth(s.url, { token, userId: `user-${token}` });
  c.emit('join', { rooms: [room] });
  await until(() => s.ws.getClientsByRoom({ room }).some(m => m.id === c.id), 2000, 'joined');
  return c;
}

const ids = list => list.map(m => m.clientId).sort();

describe('presence in Redis', { skip: noRedis }, () => {
  test('getPresence lists the members of every instance; join and leave events reach them all', async () => {
    const a = await instance();
    const b = await instance();
    const a1 = await member(a, 'a1', 'lobby');
    await sleep(150);
    const b1 = await member(b, 'b1', 'lobby');
    const joinedEvent = await a1.next('presence');
    assert.deepEqual(joinedEvent.data, { room: 'lobby', clientId: b1.id, userId: 'user-b1', state: 'join' });
    await until(async () => (await a.ws.getPresence({ room: 'lobby' })).length === 2, 2000, 'both listed');
    for (const s of [a, b]) {
      const list = await s.ws.getPresence({ room: 'lobby' });
      assert.deepEqual(ids(list), [a1.id, b1.id].sort());
      const entry = list.find(m => m.clientId === b1.id);
      assert.deepEqual(entry, { clientId: b1.id, userId: 'user-b1', metadata: { token: 'b1' } });
    }
    b1.emit('leave', { rooms: ['lobby'] });
    const left = await a1.next(m => m.event === 'presence' && m.data.state === 'leave');
    assert.equal(left.data.clientId, b1.id);
    await until(async () => ids(await a.ws.getPresence({ room: 'lobby' })).join() === a1.id, 2000, 'b1 gone after leave');
    await a1.close();
    await until(async () => (await b.ws.getPresence({ room: 'lobby' })).length === 0, 2000, 'a1 gone after disconnect');
    b1.close();
  });

  test('shutdown() takes the instance\'s members out of presence before it resolves', async () => {
    const b = await instance();
    // Each round: the last writes before the bus stops are the removals.
    for (let round = 0; round < 10; round++) {
      const a = await instance();
      await member(a, `s${round}-1`, 'stop-room');
      await member(a, `s${round}-2`, 'stop-room');
      await until(async () => (await b.ws.getPresence({ room: 'stop-room' })).length === 2, 2000, 'both members listed');
      await a.ws.shutdown();
      assert.deepEqual(await b.ws.getPresence({ room: 'stop-room' }), [], `round ${round}: members left behind`);
    }
  });

  test('the members of an instance killed with -9 vanish within presence.ttl', async () => {
    const ttl = 1500;
    const dead = await soakServer({ redis: redis.url, presence: { ttl } }, {}, { sameRuntime: true });
    const b = await instance({ ttl });
    const doomed = await Client.auth(dead.url, { userId: 'doomed' });
    doomed.emit('join', { rooms: ['crash-room'] });
    const survivor = await member(b, 'survivor', 'crash-room');
    await until(async () => (await b.ws.getPresence({ room: 'crash-room' })).length === 2, 3000, 'both listed');
    // Refreshed while its instance lives: still there after two ttl periods.
    await sleep(2 * ttl);
    assert.equal((await b.ws.getPresence({ room: 'crash-room' })).length, 2, 'refreshed while alive');
    dead.child.kill('SIGKILL');
    const killed = performance.now();
    await until(async () => ids(await b.ws.getPresence({ room: 'crash-room' })).join() === survivor.id, ttl + 2000, 'the dead member vanishes');
    const after = performance.now() - killed;
    assert.ok(after <= ttl + 500, `vanished after ${after} ms (ttl ${ttl})`);
    process.stderr.write(`# figure: presence (Redis): a kill -9'd instance's member vanished after ${after} ms, ttl ${ttl} ms (${runtime})\n`);
    survivor.close();
  });

  test('entries lost with a Redis restart (no persistence) come back with the next refresh', async () => {
    const ttl = 900;
    const a = await instance({ ttl });
    const c = await member(a, 'stays', 'restart-room');
    await until(async () => (await a.ws.getPresence({ room: 'restart-room' })).length === 1, 2000, 'listed');
    await redis.stop();
    await redis.start();
    await until(() => a.ws.stats().busState === 'connected', 8000, 'reconnected');
    await until(async () => ids(await a.ws.getPresence({ room: 'restart-room' })).join() === c.id, ttl + 3000, 'listed again');
    c.close();
  });

  test('getPresence rejects with a clear error while Redis is away, and the server stays up', async () => {
    const a = await instance();
    const c = await member(a, 'x', 'away-room');
    await redis.stop();
    await assert.rejects(a.ws.getPresence({ room: 'away-room' }), /getPresence: cannot read presence from Redis/);
    await redis.start();
    await until(() => a.ws.stats().busState === 'connected', 8000, 'reconnected');
    c.close();
  });
});
