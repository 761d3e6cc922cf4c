// History rooms and recovery (option `history`, per instance): positioned
// publications, `joined`, recovery with no gap and no duplicate, what
// cannot be recovered, and the wire unchanged when the option is off.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { WebSocketClient } = require('../dist/client.js');
const runtime = process.versions.bun ? 'Bun' : 'Node';

after(stopAll);

const rooms = ({ rooms }) => rooms;

async function member(url, room, recover) {
  const c = await Client.auth(url);
  c.emit('join', recover ? { rooms: [room], recover } : { rooms: [room] });
  return c;
}

describe('history off (default)', () => {
  test('publications and joins look exactly as in the original', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms });
    const c = await member(url, 'r', { r: { offset: 0, epoch: 'x' } });
    await until(() => ws.getClientsByRoom({ room: 'r' }).length === 1, 2000, 'joined');
    ws.sendToRoom({ room: 'r', event: 'm', data: 1 });
    assert.deepEqual(await c.next('m'), { event: 'm', data: 1 });
    assert.ok(await c.nothing('joined', 200));
    c.close();
  });
});

describe('history rooms', () => {
  test('join answers joined; publications carry room, offset (+1 each) and epoch', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, history: { rooms: ['chat-*'] } });
    const c = await member(url, 'chat-1');
    const joined = await c.next('joined');
    assert.deepEqual(Object.keys(joined.data).sort(), ['epoch', 'offset', 'room']);
    assert.equal(joined.data.room, 'chat-1');
    assert.equal(joined.data.offset, 0);
    const epoch = joined.data.epoch;
    for (let i = 1; i <= 3; i++) ws.sendToRoom({ room: 'chat-1', event: 'm', data: i });
    ws.send({ destination: 'chat-1', payload: { topic: 'm', data: 4 } });
    for (let i = 1; i <= 4; i++) {
      assert.deepEqual(await c.next('m'), { event: 'm', data: i, room: 'chat-1', offset: i, epoch });
    }
    // A room without history: no joined, plain frames.
    c.emit('join', { rooms: ['lobby'] });
    await until(() => ws.getClientsByRoom({ room: 'lobby' }).length === 1, 2000, 'lobby');
    ws.sendToRoom({ room: 'lobby', event: 'p', data: 0 });
    assert.deepEqual(await c.next('p'), { event: 'p', data: 0 });
    assert.ok(await c.nothing('joined', 100));
    c.close();
  });

  test('a client back from a disconnection gets exactly what it missed, in order, then joined recovered: true', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, history: true });
    const a = await member(url, 'r');
    const { epoch } = (await a.next('joined')).data;
    for (let i = 1; i <= 3; i++) ws.sendToRoom({ room: 'r', event: 'm', data: i });
    for (let i = 1; i <= 3; i++) await a.next('m');
    await a.close();
    for (let i = 4; i <= 8; i++) ws.sendToRoom({ room: 'r', event: 'm', data: i });
    const b = await member(url, 'r', { r: { offset: 3, epoch } });
    const got = [];
    for (let i = 4; i <= 8; i++) got.push(await b.next('m'));
    assert.deepEqual(got.map(m => m.offset), [4, 5, 6, 7, 8]);
    assert.deepEqual(got.map(m => m.data), [4, 5, 6, 7, 8]);
    const joined = await b.next('joined');
    assert.deepEqual(joined.data, { room: 'r', offset: 8, epoch, recovered: true });
    ws.sendToRoom({ room: 'r', event: 'm', data: 9 });
    assert.equal((await b.next('m')).offset, 9);
    assert.ok(await b.nothing('m', 150), 'no duplicate');
    b.close();
  });

  test('unrecoverable or malformed recover entries: recovered false, no replay, no error, no close', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, history: { size: 2 } });
    const a = await member(url, 'r');
    const { epoch } = (await a.next('joined')).data;
    for (let i = 1; i <= 5; i++) ws.sendToRoom({ room: 'r', event: 'm', data: i });
    for (const recover of [
      { offset: 1, epoch }, // fell out of the last 2
      { offset: 4, epoch: 'another' },
      { offset: -1, epoch },
      { offset: 1.5, epoch },
      { offset: 2, epoch: 'e'.repeat(65) },
      'not an object',
    ]) {
      const c = await member(url, 'r', { r: recover });
      const joined = await c.next('joined');
      assert.equal(joined.data.recovered, false, JSON.stringify(recover));
      assert.equal(joined.data.offset, 5);
      assert.ok(!c.frames.some(f => f.event === 'm' || f.event === 'error'), JSON.stringify(c.frames));
      assert.equal(c.sock.readyState, 1);
      c.close();
    }
    a.close();
  });

  test('a refused room replays nothing', async () => {
    const { ws, url } = await startServer({ validateRoomFn: () => [], history: true });
    const c = await member(url, 'r', { r: { offset: 0, epoch: 'x' } });
    ws.sendToRoom({ room: 'r', event: 'm', data: 1 });
    assert.ok(await c.nothing(() => true, 300));
    c.close();
  });

  test('history lost after its ttl: a new epoch, offsets restart, recovered false', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, history: { ttl: 150 } });
    const a = await member(url, 'r');
    const { epoch } = (await a.next('joined')).data;
    ws.sendToRoom({ room: 'r', event: 'm', data: 1 });
    await a.next('m');
    await sleep(300);
    const b = await member(url, 'r', { r: { offset: 1, epoch } });
    const joined = await b.next('joined');
    assert.equal(joined.data.recovered, false);
    assert.equal(joined.data.offset, 0);
    assert.notEqual(joined.data.epoch, epoch);
    a.close();
    b.close();
  });

  test('options: validated', () => {
    const base = { authenticateFn: () => null };
    assert.throws(() => new lib.WebSocketServer({ ...base, history: { size: 0 } }), /history\.size/);
    assert.throws(() => new lib.WebSocketServer({ ...base, history: { rooms: 'x' } }), /history\.rooms/);
  });
});

describe('the client SDK recovers after a reconnection', () => {
  test('away for 2 s while its room gets 100 messages/s: nothing lost, nothing twice, in order', async () => {
    const { ws, url } = await startServer({ validateRoomFn: rooms, history: { size: 1000 } });
    const c = new WebSocketClient({ url, auth: () => ({ token: 'h' }), heartbeatInterval: 0, reconnect: { minDelay: 2000, maxDelay: 2000, jitter: 0 } });
    const got = [];
    const recovered = [];
    c.on('m', d => got.push(d));
    c.on('recovered', r => recovered.push(r));
    await c.connect();
    c.join('live');
    await until(() => ws.getClientsByRoom({ room: 'live' }).length === 1, 2000, 'joined');
    let sent = 0;
    const timer = setInterval(() => ws.sendToRoom({ room: 'live', event: 'm', data: ++sent }), 10);
    await sleep(300);
    // The server drops the connection; the client is away ~2 s.
    const [member] = ws.getClientsByRoom({ room: 'live' });
    ws.getClients({ id: member.id }).socket.close(1011, 'test');
    await until(() => c.state !== 'connected', 2000, 'disconnected');
    const away = performance.now();
    await until(() => c.state === 'connected', 6000, 'back');
    const awayMs = performance.now() - away;
    assert.ok(awayMs >= 1900, `away ${awayMs} ms`);
    await sleep(300);
    clearInterval(timer);
    await until(() => got.length === sent, 3000, `all ${sent} messages (got ${got.length})`);
    assert.deepEqual(got, Array.from({ length: sent }, (_, i) => i + 1));
    assert.deepEqual(recovered, [{ room: 'live', recovered: true }]);
    process.stderr.write(`# figure: history: client away ~2 s at 100 msg/s, ${sent} published, 0 lost, 0 duplicated (${runtime}, no Redis)\n`);
    c.close();
  });
});
