// The helper's server-side API (docs/PROTOCOL.md §8, §11) and option validation.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
import net from 'node:net';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';

after(stopAll);

async function room(opts = {}) {
  const s = await startServer({ validateRoomFn: ({ rooms }) => rooms, ...opts });
  const join = async (c, rooms) => {
    c.emit('join', { rooms });
    await until(() => rooms.every(r => s.ws.getClients({ id: c.id })?.rooms.has(r)), 2000, 'join');
  };
  return { ...s, join };
}

describe('delivery', () => {
  test('sendToClient, sendToUser, sendToRoom with exclude, broadcast', async () => {
    const { ws, url, join } = await room();
    const a = await Client.auth(url, { token: 'a', userId: 'u1' });
    const b = await Client.auth(url, { token: 'b', userId: 'u1' });
    const c = await Client.auth(url, { token: 'c', userId: 'u2' });
    const anon = await Client.open(url);
    await join(a, ['r']);
    await join(c, ['r']);

    ws.sendToClient({ clientId: b.id, event: 'direct', data: { n: 1 } });
    assert.deepEqual(await b.next('direct'), { event: 'direct', data: { n: 1 } });

    ws.sendToUser({ userId: 'u1', event: 'user', data: 'x' });
    await a.next('user');
    await b.next('user');
    assert.ok(await c.nothing('user', 100));

    ws.sendToRoom({ room: 'r', event: 'room', data: [1], exclude: [c.id] });
    assert.deepEqual(await a.next('room'), { event: 'room', data: [1] });
    assert.ok(await c.nothing('room', 100));
    assert.ok(await b.nothing('room', 1));

    ws.broadcast({ event: 'all', data: null });
    for (const x of [a, b, c]) assert.deepEqual(await x.next('all'), { event: 'all', data: null });
    ws.broadcast({ event: 'all-but', data: 1, exclude: [a.id] });
    await b.next('all-but');
    await c.next('all-but');
    assert.ok(await a.nothing('all-but', 100));
    assert.ok(anon.frames.length === 0, 'unauthenticated clients get no broadcasts');

    ws.sendToClient({ clientId: c.id, event: 'no-data' });
    assert.deepEqual(await c.next('no-data'), { event: 'no-data' });
    for (const x of [a, b, c, anon]) x.close();
  });

  test('sends from a messageHandler keep the order of the calls, whatever else it calls between them', async () => {
    const { ws, url, join } = await room({
      messageHandler: ({ clientId, message }) => {
        if (message.event !== 'go') return;
        const other = message.data.other;
        ws.sendToClient({ clientId, event: 's', data: 1 });
        ws.sendToClient({ clientId: other, event: 's', data: 'o1' });
        ws.sendToRoom({ room: 'r', event: 's', data: 2 });
        ws.sendToClient({ clientId, event: 's', data: 3 });
        ws.getClients({ id: clientId }).socket.send(JSON.stringify({ event: 's', data: 4 }));
        ws.sendToClient({ clientId, event: 's', data: 5 });
        ws.sendToClient({ clientId: 'no\nsuch', event: 's', data: 'lost' });
        ws.sendToClient({ clientId, event: 's', data: 6, doLog: true });
        ws.sendToUser({ userId: 'me', event: 's', data: 7 });
        ws.sendToClient({ clientId: other, event: 's', data: 'o2' });
        ws.sendToClient({ clientId, event: 's', data: 8 });
        ws.getClients({ id: clientId }).socket.close(4000, 'done');
      },
    });
    const a = await Client.auth(url, { token: 'a', userId: 'me' });
    const b = await Client.auth(url, { token: 'b', userId: 'other' });
    await join(a, ['r']);
    a.emit('go', { other: b.id });
    const closed = await a.closed;
    assert.equal(closed.code, 4000);
    const got = a.frames.filter(m => m.event === 's').map(m => m.data);
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual((await b.next('s')).data, 'o1');
    assert.deepEqual((await b.next('s')).data, 'o2');
    b.close();
  });

  test('send(): broadcast, local client, local room, remote destination; cb runs after', async () => {
    const { ws, url, join } = await room();
    const a = await Client.auth(url);
    const b = await Client.auth(url);
    await join(b, ['team']);
    let called = 0;
    ws.send({ payload: { topic: 'everyone', data: 1 }, cb: () => called++ });
    assert.equal(called, 0, 'cb is asynchronous');
    await a.next('everyone');
    await b.next('everyone');
    await until(() => called === 1, 1000, 'cb');
    ws.send({ destination: a.id, payload: { topic: 'to-a', data: 2 } });
    await a.next('to-a');
    ws.send({ destination: 'team', payload: { topic: 'to-team', data: 3 } });
    await b.next('to-team');
    ws.send({ destination: 'elsewhere', payload: { topic: 'remote', data: 4 } });
    ws.send({ payload: { topic: 'undefined-data', data: undefined } });
    ws.send({ payload: { data: 1 } });
    ws.send({});
    assert.ok(await a.nothing(m => m.event !== 'to-a' && m.event !== 'everyone', 150));
    a.close();
    b.close();
  });

  test('fan-out reaches every member once', async () => {
    const { ws, url, join } = await room();
    const clients = await Promise.all(Array.from({ length: 50 }, (_, i) => Client.auth(url, { token: 'f' + i })));
    await Promise.all(clients.map(c => join(c, ['big'])));
    for (let i = 0; i < 20; i++) ws.sendToRoom({ room: 'big', event: 'tick', data: i });
    await Promise.all(
      clients.map(async c => {
        for (let i = 0; i < 20; i++) assert.equal((await c.next('tick')).data, i);
      }),
    );
    await sleep(50);
    assert.ok(clients.every(c => !c.frames.some(f => f.event === 'tick')), 'no duplicates');
    const excluded = clients.slice(0, 12).map(c => c.id).concat(['x1', 'x2', 'x3']);
    ws.sendToRoom({ room: 'big', event: 'most', data: 1, exclude: excluded });
    await Promise.all(clients.slice(12).map(c => c.next('most')));
    await sleep(50);
    assert.ok(clients.slice(0, 12).every(c => !c.frames.some(f => f.event === 'most')), 'a long exclude list is honoured');
    clients.forEach(c => c.close());
  });

  test('joinRoom / leaveRoom from the server need no validation', async () => {
    const { ws, url } = await startServer();
    const c = await Client.auth(url);
    ws.joinRoom({ clientId: c.id, room: 'ws:server-side' });
    assert.ok(ws.getClients({ id: c.id }).rooms.has('ws:server-side'));
    ws.sendToRoom({ room: 'ws:server-side', event: 'in', data: 1 });
    await c.next('in');
    ws.leaveRoom({ clientId: c.id, room: 'ws:server-side' });
    assert.equal(ws.getClientsByRoom({ room: 'ws:server-side' }).length, 0);
    ws.joinRoom({ clientId: 'no-such-client', room: 'x' });
    assert.equal(ws.getClientsByRoom({ room: 'x' }).length, 0);
    c.close();
  });

  test('a slow consumer is bounded by backpressureLimit; others are unaffected', async () => {
    const { ws, url } = await startServer({ serverOptions: { backpressureLimit: 64 * 1024 } });
    const slow = await Client.auth(url, { token: 'slow' });
    const fast = await Client.auth(url, { token: 'fast' });
    slow.sock.pause?.();
    slow.sock._socket?.pause?.();
    const blob = 'x'.repeat(16 * 1024);
    for (let i = 0; i < 2000; i++) ws.sendToClient({ clientId: slow.id, event: 'blob', data: blob });
    ws.sendToClient({ clientId: fast.id, event: 'ok', data: 1 });
    await fast.next('ok');
    await until(() => ws.stats().droppedBackpressure > 0, 3000, 'drops counted');
    assert.equal(ws.getClients({ id: slow.id }).state, 'authenticated', 'not closed by default');
    slow.close();
    fast.close();
  });

  test('closeOnBackpressureLimit closes the slow consumer with 1013', async () => {
    const { ws, url } = await startServer({ serverOptions: { backpressureLimit: 16 * 1024, closeOnBackpressureLimit: true } });
    const slow = await Client.auth(url, { token: 'slow' });
    slow.sock._socket?.pause?.();
    const blob = 'y'.repeat(8 * 1024);
    for (let i = 0; i < 5000 && ws.getClients({ id: slow.id }); i++) ws.sendToClient({ clientId: slow.id, event: 'blob', data: blob });
    await until(() => !ws.getClients({ id: slow.id }), 5000, 'slow consumer closed');
    slow.sock._socket?.resume?.();
    slow.close();
  });
});

describe('client records', () => {
  test('getClients(), getClients({id}), getClientsByUser, getClientsByRoom, getPath', async () => {
    const { ws, url } = await startServer({ path: '/realtime', authenticateFn: d => ({ userId: d.u, metadata: { m: d.u } }) });
    assert.equal(ws.getPath(), '/realtime');
    assert.ok(url.endsWith('/realtime'));
    const a = await Client.auth(url, { u: 'alice' });
    const pending = await Client.open(url);
    await until(() => ws.getClients().size === 2, 2000, 'two clients');
    const all = ws.getClients();
    assert.ok(all instanceof Map);
    const rec = all.get(a.id);
    assert.equal(rec.id, a.id);
    assert.equal(rec.userId, 'alice');
    assert.equal(rec.state, 'authenticated');
    assert.ok(rec.rooms instanceof Set);
    assert.equal(rec.backpressured, false);
    assert.equal(rec.encrypted, false);
    assert.equal(typeof rec.connectedAt, 'number');
    assert.ok(rec.lastActivity >= rec.connectedAt);
    assert.deepEqual(rec.metadata, { m: 'alice' });
    const other = [...all.values()].find(r => r.id !== a.id);
    assert.equal(other.state, 'unauthorized');
    assert.equal(other.userId, undefined);
    assert.equal(ws.getClients({ id: 'nope' }), undefined);
    assert.deepEqual(ws.getClientsByUser({ userId: 'alice' }).map(r => r.id), [a.id]);
    assert.deepEqual(ws.getClientsByUser({ userId: 'nobody' }), []);
    assert.deepEqual(ws.getClientsByRoom({ room: 'ws-default' }).map(r => r.id), [a.id]);
    rec.socket.send(JSON.stringify({ event: 'raw', data: 1 }));
    await a.next('raw');
    rec.socket.close(4100, 'bye');
    assert.deepEqual(await a.closed, { code: 4100, reason: 'bye' });
    pending.close();
  });

  test('lastActivity follows inbound frames', async () => {
    const { ws, url } = await startServer();
    const c = await Client.auth(url);
    const before = ws.getClients({ id: c.id }).lastActivity;
    await sleep(30);
    c.emit('heartbeat');
    await until(() => ws.getClients({ id: c.id }).lastActivity > before, 2000, 'lastActivity');
    c.close();
  });
});

describe('shutdown', () => {
  test('closes every client with 1001 and runs disconnect callbacks before resolving', async () => {
    const gone = [];
    const { ws, url } = await startServer({ clientDisconnectedFn: x => gone.push(x) });
    const a = await Client.auth(url, { token: 'a', userId: 'ua' });
    const b = await Client.open(url);
    await until(() => ws.getClients().size === 2, 2000, 'clients');
    await ws.shutdown();
    assert.equal(gone.length, 2, 'disconnect callbacks ran before shutdown resolved');
    assert.deepEqual(gone.find(g => g.clientId === a.id), { clientId: a.id, userId: 'ua' });
    assert.deepEqual(await a.closed, { code: 1001, reason: 'Server shutting down' });
    assert.deepEqual(await b.closed, { code: 1001, reason: 'Server shutting down' });
    assert.equal(ws.getClients().size, 0);
    await ws.shutdown();
  });
});

describe('options', () => {
  const auth = () => ({});

  test("the original's exported defaults are the defaults the server applies (one source: the native Config)", () => {
    const { defaultOptions } = require('../index.js');
    const d = defaultOptions();
    const W = lib.WebSocketDefaults;
    assert.deepEqual(
      [d.path, d.defaultRooms, d.maxPayloadLength, d.idleTimeout, d.backpressureLimit, d.sendPings, d.authTimeout, d.heartbeatInterval, d.heartbeatTimeout, d.encryptedBatchLimit],
      [W.PATH, [W.ROOM, W.NOTIFICATION_ROOM], W.MAX_PAYLOAD_LENGTH, W.IDLE_TIMEOUT, W.BACKPRESSURE_LIMIT, W.SEND_PINGS, W.AUTH_TIMEOUT, W.HEARTBEAT_INTERVAL, W.HEARTBEAT_TIMEOUT, W.ENCRYPTED_BATCH_LIMIT],
    );
    assert.equal(d.logLevel, 'info');
    assert.equal(d.backlog, 0, "the kernel's cap");
    assert.equal(d.sendTimeout, 30_000);
  });

  test('invalid options throw a message naming the option', () => {
    const bad = [
      [{}, /authenticateFn/],
      [{ authenticateFn: 'x' }, /authenticateFn/],
      [{ authenticateFn: auth, authTimeout: -1 }, /authTimeout/],
      [{ authenticateFn: auth, heartbeatInterval: 'soon' }, /heartbeatInterval/],
      [{ authenticateFn: auth, heartbeatTimeout: -5 }, /heartbeatTimeout/],
      [{ authenticateFn: auth, port: 70000 }, /port/],
      [{ authenticateFn: auth, path: 'ws' }, /path/],
      [{ authenticateFn: auth, defaultRooms: 'lobby' }, /defaultRooms/],
      [{ authenticateFn: auth, serverOptions: { maxPayloadLength: 0 } }, /maxPayloadLength/],
      [{ authenticateFn: auth, serverOptions: { idleTimeout: -1 } }, /idleTimeout/],
      [{ authenticateFn: auth, messageHandler: 5 }, /messageHandler/],
      [{ authenticateFn: auth, logLevel: 'loud' }, /logLevel/],
    ];
    for (const [opts, re] of bad) assert.throws(() => new lib.WebSocketServer(opts), re, JSON.stringify(opts));
  });

  test('configure() rejects when the port is in use, naming the address', async () => {
    const blocker = net.createServer();
    await new Promise(r => blocker.listen(0, '127.0.0.1', r));
    const port = blocker.address().port;
    const ws = new lib.WebSocketServer({ host: '127.0.0.1', port, authenticateFn: auth, logLevel: 'silent' });
    await assert.rejects(ws.configure(), new RegExp(`127\\.0\\.0\\.1:${port}`));
    blocker.close();
  });

  test('a custom logger receives lines; logLevel filters them', async () => {
    const lines = [];
    const logger = { error: l => lines.push(['error', l]), warn: l => lines.push(['warn', l]), info: l => lines.push(['info', l]) };
    const { url, ws } = await startServer({ logger, logLevel: 'info', authTimeout: 100 });
    const c = await Client.open(url);
    await c.closed;
    await until(() => lines.some(([lvl, l]) => lvl === 'warn' && l.includes('Auth timeout')), 2000, 'warn line');
    assert.ok(lines.some(([lvl, l]) => lvl === 'info' && l.includes('READY')));
    await ws.shutdown();
    const quiet = [];
    const q = await startServer({ logger: { error: l => quiet.push(l), warn: l => quiet.push(l), info: l => quiet.push(l) }, logLevel: 'error' });
    const d = await Client.auth(q.url);
    d.close();
    await sleep(100);
    assert.deepEqual(quiet, []);
  });

  test('constants carry the original values', () => {
    assert.equal(lib.WebSocketServerHelper, lib.WebSocketServer);
    assert.equal(lib.WebSocketDefaults.PATH, '/ws');
    assert.equal(lib.WebSocketDefaults.MAX_PAYLOAD_LENGTH, 131072);
    assert.equal(lib.WebSocketDefaults.BACKPRESSURE_LIMIT, 1048576);
    assert.equal(lib.WebSocketDefaults.HEARTBEAT_TIMEOUT, 90000);
    assert.equal(lib.WebSocketDefaults.ENCRYPTED_BATCH_LIMIT, 10);
    assert.equal(lib.WebSocketEvents.AUTHENTICATE, 'authenticate');
    assert.ok(lib.WebSocketEvents.isValid('encrypted'));
    assert.equal(lib.WebSocketChannels.forRoom({ room: 'x' }), 'ws:room:x');
    assert.equal(lib.WebSocketChannels.forUserPattern(), 'ws:user:*');
    assert.equal(lib.WebSocketMessageTypes.BROADCAST, 'broadcast');
    assert.equal(lib.WebSocketClientStates.AUTHENTICATING, 'authenticating');
  });
});
