// Presence (option `presence`, per instance): getPresence lists a room's
// members with their user and metadata; with events on, the other members
// hear joins and leaves (join, leave, disconnect, server-side join/leave).
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, lib, startServer, stopAll, until } from './helpers.mjs';

after(stopAll);

const rooms = ({ rooms }) => rooms;

async function member(url, token, room) {
  const c = await Client.auth(url, { token, userId: 'user-' + token });
  c.emit('join', { rooms: [room] });
  return c;
}

describe('presence', () => {
  test('getPresence lists the members of a presence room, with userId and metadata', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, presence: { rooms: ['team-*'] } });
    const a = await member(url, 'a', 'team-1');
    const b = await member(url, 'b', 'team-1');
    await until(() => ws.getClientsByRoom({ room: 'team-1' }).length === 2, 2000, 'both joined');
    const list = (await ws.getPresence({ room: 'team-1' })).sort((x, y) => x.userId.localeCompare(y.userId));
    assert.deepEqual(list, [
      { clientId: a.id, userId: 'user-a', metadata: { token: 'a' } },
      { clientId: b.id, userId: 'user-b', metadata: { token: 'b' } },
    ]);
    assert.deepEqual(await ws.getPresence({ room: 'team-2' }), []);
    await assert.rejects(ws.getPresence({ room: 'lobby' }), /has no presence/);
    a.close();
    b.close();
    await until(async () => (await ws.getPresence({ room: 'team-1' })).length === 0, 2000, 'gone');
  });

  test('events: the other members hear join and leave, explicit or by disconnection', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, presence: { events: true } });
    const a = await member(url, 'a', 'r');
    await until(() => ws.getClientsByRoom({ room: 'r' }).length === 1, 2000, 'a joined');
    const b = await member(url, 'b', 'r');
    assert.deepEqual((await a.next('presence')).data, { room: 'r', clientId: b.id, userId: 'user-b', state: 'join' });
    b.emit('leave', { rooms: ['r'] });
    assert.deepEqual((await a.next('presence')).data, { room: 'r', clientId: b.id, userId: 'user-b', state: 'leave' });
    const c = await member(url, 'c', 'r');
    assert.equal((await a.next('presence')).data.state, 'join');
    await c.close();
    assert.deepEqual((await a.next('presence')).data, { room: 'r', clientId: c.id, userId: 'user-c', state: 'leave' });
    ws.joinRoom({ clientId: b.id, room: 'r' });
    assert.equal((await a.next('presence')).data.clientId, b.id);
    // Joining a room one is in already announces nothing.
    b.emit('join', { rooms: ['r'] });
    ws.joinRoom({ clientId: b.id, room: 'r' });
    assert.ok(await a.nothing('presence', 200));
    assert.ok(!b.frames.some(f => f.event === 'presence' && f.data.clientId === b.id), 'not told of its own join');
    a.close();
    b.close();
  });

  test('without events, or without the option, nobody hears presence frames', async () => {
    for (const presence of [true, undefined]) {
      const { ws, url } = await startServer({ validateRoomFn: rooms, presence });
      const a = await member(url, 'a', 'r');
      await until(() => ws.getClientsByRoom({ room: 'r' }).length === 1, 2000, 'a joined');
      const b = await member(url, 'b', 'r');
      await until(() => ws.getClientsByRoom({ room: 'r' }).length === 2, 2000, 'b joined');
      assert.ok(await a.nothing('presence', 200));
      a.close();
      b.close();
    }
  });

  test('options are validated', () => {
    const base = { authenticateFn: () => null };
    assert.throws(() => new lib.WebSocketServer({ ...base, presence: 'yes' }), /presence/);
    assert.throws(() => new lib.WebSocketServer({ ...base, presence: { rooms: [1] } }), /presence\.rooms/);
    assert.throws(() => new lib.WebSocketServer({ ...base, presence: { events: 'x' } }), /presence\.events/);
    assert.throws(() => new lib.WebSocketServer({ ...base, presence: { ttl: 10 } }), /presence\.ttl/);
  });
});
