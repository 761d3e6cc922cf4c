// docs/PROTOCOL.md §1–§7 against a real server and real clients.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, startServer, stopAll, sleep, until, rawSocket, maskedFrame } from './helpers.mjs';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

after(stopAll);

describe('inbound frames before authentication', () => {
  test('invalid JSON gets "Invalid message format"', async () => {
    const { url } = await startServer();
    const c = await Client.open(url);
    c.send('{not json');
    const m = await c.next('error');
    assert.deepEqual(m, { event: 'error', data: { message: 'Invalid message format' } });
    c.close();
  });

  test('the server says nothing until the client speaks', async () => {
    const { url } = await startServer();
    const c = await Client.open(url);
    assert.ok(await c.nothing(() => true, 200));
    c.close();
  });

  test('JSON without a (truthy) event is dropped without a reply', async () => {
    const { url } = await startServer();
    const c = await Client.open(url);
    for (const f of ['{"data":1}', '{"event":""}', '{"event":null}', '{"event":0}', '[1,2]', '42', 'null', '"x"']) c.send(f);
    c.emit('anything');
    const m = await c.next('error');
    assert.equal(m.data.message, 'Not authenticated', 'only the last frame is answered');
    assert.ok(await c.nothing(() => true, 150));
    c.close();
  });

  test('any event other than authenticate/heartbeat gets "Not authenticated"', async () => {
    const { url } = await startServer({ validateRoomFn: ({ rooms }) => rooms, messageHandler: () => {} });
    const c = await Client.open(url);
    for (const e of ['join', 'leave', 'chat']) {
      c.emit(e, { rooms: ['a'] });
      const m = await c.next('error');
      assert.deepEqual(m.data, { message: 'Not authenticated' });
    }
    c.emit('heartbeat');
    assert.ok(await c.nothing('error', 150), 'heartbeat is never answered');
    c.close();
  });

  test('binary frames carrying JSON are read as text, like the original', async () => {
    const { url } = await startServer();
    const c = await Client.open(url);
    c.sock.send(Buffer.from(JSON.stringify({ event: 'authenticate', data: { token: 'b' } })));
    const m = await c.next('connected');
    assert.equal(m.data.userId, 'user-b');
    c.close();
  });
});

describe('authentication (§4)', () => {
  test('success: connected with id (UUID v4), userId and ISO time; clientConnectedFn gets metadata', async () => {
    const seen = [];
    const { url, ws } = await startServer({
      authenticateFn: d => ({ userId: 'alice', metadata: { role: d.role } }),
      clientConnectedFn: x => seen.push(x),
    });
    const before = Date.now();
    const c = await Client.auth(url, { role: 'admin' });
    assert.match(c.connected.id, UUID_V4);
    assert.equal(c.connected.userId, 'alice');
    assert.deepEqual(Object.keys(c.connected), ['id', 'userId', 'time']);
    const t = Date.parse(c.connected.time);
    assert.equal(new Date(t).toISOString(), c.connected.time);
    assert.ok(t >= before - 5 && t <= Date.now() + 5);
    await until(() => seen.length === 1, 2000, 'clientConnectedFn');
    assert.deepEqual(seen[0], { clientId: c.id, userId: 'alice', metadata: { role: 'admin' } });
    const rec = ws.getClients({ id: c.id });
    assert.equal(rec.state, 'authenticated');
    assert.deepEqual(rec.metadata, { role: 'admin' });
    c.close();
  });

  test('authenticateFn receives data ?? {}', async () => {
    const got = [];
    const { url } = await startServer({ authenticateFn: d => (got.push(d), { userId: 'u' }) });
    const a = await Client.open(url);
    a.emit('authenticate');
    await a.next('connected');
    const b = await Client.open(url);
    b.emit('authenticate', null);
    await b.next('connected');
    const c = await Client.open(url);
    c.emit('authenticate', { x: [1, { y: 'z' }] });
    await c.next('connected');
    assert.deepEqual(got, [{}, {}, { x: [1, { y: 'z' }] }]);
    a.close(); b.close(); c.close();
  });

  test('without a userId the connected payload has none', async () => {
    const { url } = await startServer({ authenticateFn: () => ({}) });
    const c = await Client.auth(url, {});
    assert.deepEqual(Object.keys(c.connected), ['id', 'time']);
    c.close();
  });

  test('falsy result: "Authentication failed" then close 4003', async () => {
    for (const result of [null, false, undefined, 0, '']) {
      const { url } = await startServer({ authenticateFn: () => result });
      const c = await Client.open(url);
      c.emit('authenticate', {});
      assert.deepEqual((await c.next('error')).data, { message: 'Authentication failed' });
      assert.deepEqual(await c.closed, { code: 4003, reason: 'Authentication failed' });
    }
  });

  test('throw or rejection: "Authentication error" then close 4003', async () => {
    for (const fn of [
      () => {
        throw new Error('boom');
      },
      async () => {
        throw new Error('async boom');
      },
      () => Promise.reject('not even an Error'),
    ]) {
      const { url } = await startServer({ authenticateFn: fn });
      const c = await Client.open(url);
      c.emit('authenticate', {});
      assert.deepEqual((await c.next('error')).data, { message: 'Authentication error' });
      assert.deepEqual(await c.closed, { code: 4003, reason: 'Authentication failed' });
    }
  });

  test('a second authenticate, or one while authenticating, gets "Already authenticated"', async () => {
    let release;
    const { url } = await startServer({
      authenticateFn: () => new Promise(r => (release = () => r({ userId: 'slow' }))),
    });
    const c = await Client.open(url);
    c.emit('authenticate', {});
    await until(() => release, 2000, 'authenticateFn call');
    c.emit('authenticate', {});
    assert.deepEqual((await c.next('error')).data, { message: 'Already authenticated' });
    c.emit('chat', {});
    assert.deepEqual((await c.next('error')).data, { message: 'Not authenticated' }, 'still not authenticated');
    release();
    await c.next('connected');
    c.emit('authenticate', {});
    assert.deepEqual((await c.next('error')).data, { message: 'Already authenticated' });
    c.close();
  });

  test('no authenticate within authTimeout: close 4001', async () => {
    const { url } = await startServer({ authTimeout: 200 });
    const c = await Client.open(url);
    const t0 = performance.now();
    assert.deepEqual(await c.closed, { code: 4001, reason: 'Authentication timeout' });
    assert.ok(performance.now() - t0 >= 150);
  });

  test('authenticateFn that never settles: close 4001 after authTimeout * 3', async () => {
    const { url, ws } = await startServer({ authTimeout: 150, authenticateFn: () => new Promise(() => {}) });
    const c = await Client.open(url);
    const t0 = performance.now();
    c.emit('authenticate', {});
    await until(() => ws.getClients({ id: [...ws.getClients().keys()][0] })?.state === 'authenticating', 1000, 'authenticating');
    // Bun collects a promise nothing can settle; that must still read as "never settles".
    globalThis.Bun?.gc(true);
    assert.deepEqual(await c.closed, { code: 4001, reason: 'Authentication timeout' });
    const took = performance.now() - t0;
    assert.ok(took >= 400, `closed after ${took} ms, expected about 450`);
    await until(() => ws.getClients().size === 0, 2000, 'client removed');
  });

  test('client gone during authentication: nothing is indexed, disconnect still reported', async () => {
    let release;
    const disconnected = [];
    const { url, ws } = await startServer({
      authenticateFn: () => new Promise(r => (release = () => r({ userId: 'late', metadata: { a: 1 } }))),
      clientDisconnectedFn: x => disconnected.push(x),
    });
    const c = await Client.open(url);
    c.emit('authenticate', {});
    await until(() => release, 2000, 'authenticateFn call');
    await c.close();
    await until(() => disconnected.length === 1, 2000, 'disconnect');
    release();
    await sleep(100);
    assert.equal(ws.getClients().size, 0);
    assert.equal(ws.getClientsByUser({ userId: 'late' }).length, 0);
  });
});

describe('heartbeat (§6)', () => {
  test('silent authenticated clients are closed 4002; heartbeats keep a client alive', async () => {
    const { url } = await startServer({ heartbeatInterval: 100, heartbeatTimeout: 400 });
    const silent = await Client.auth(url);
    const alive = await Client.auth(url);
    const beat = setInterval(() => alive.emit('heartbeat'), 100);
    try {
      assert.deepEqual(await silent.closed, { code: 4002, reason: 'Heartbeat timeout' });
      await sleep(300);
      alive.emit('ping-check');
      assert.ok(alive.sock.readyState === 1, 'heartbeating client still open');
    } finally {
      clearInterval(beat);
    }
    alive.close();
  });

  test('unauthenticated clients are left to the auth timer', async () => {
    const { url } = await startServer({ heartbeatInterval: 50, heartbeatTimeout: 100, authTimeout: 600 });
    const c = await Client.open(url);
    const t0 = performance.now();
    const closed = await c.closed;
    assert.equal(closed.code, 4001);
    assert.ok(performance.now() - t0 >= 500);
  });
});

describe('rooms (§5)', () => {
  test('own room and default rooms are joined on authentication', async () => {
    const { url, ws } = await startServer();
    const c = await Client.auth(url);
    assert.deepEqual([...ws.getClients({ id: c.id }).rooms].sort(), [c.id, 'ws-default', 'ws-notification'].sort());
    const custom = await startServer({ defaultRooms: ['lobby'] });
    const d = await Client.auth(custom.url);
    assert.deepEqual([...custom.ws.getClients({ id: d.id }).rooms].sort(), [d.id, 'lobby'].sort());
    c.close(); d.close();
  });

  test('join sanitises names, asks validateRoomFn and joins exactly what it returns', async () => {
    const calls = [];
    const { url, ws } = await startServer({
      validateRoomFn: x => {
        calls.push(x);
        return x.rooms.filter(r => r !== 'denied').concat('bonus');
      },
    });
    const c = await Client.auth(url, { token: 'r', userId: 'ru' });
    c.emit('join', { rooms: ['a', 'denied', 'ws:internal', '', 'x'.repeat(257), 'y'.repeat(256), 7, null] });
    await until(() => ws.getClientsByRoom({ room: 'bonus' }).length === 1, 2000, 'join');
    assert.deepEqual(calls, [{ clientId: c.id, userId: 'ru', rooms: ['a', 'denied', 'y'.repeat(256)] }]);
    const rooms = ws.getClients({ id: c.id }).rooms;
    assert.ok(rooms.has('a') && rooms.has('bonus') && rooms.has('y'.repeat(256)));
    assert.ok(!rooms.has('denied'));
    assert.equal(ws.getClientsByRoom({ room: 'a' })[0].id, c.id);
    c.close();
  });

  test('nothing joinable, no validateRoomFn, or a bad payload: no join and no reply', async () => {
    let called = 0;
    const a = await startServer({ validateRoomFn: ({ rooms }) => (called++, rooms) });
    const c = await Client.auth(a.url);
    c.emit('join', { rooms: ['ws:x', ''] });
    c.emit('join', { rooms: 'lobby' });
    c.emit('join', 5);
    c.emit('join');
    assert.ok(await c.nothing(() => true, 200));
    assert.equal(called, 0);

    const b = await startServer();
    const d = await Client.auth(b.url);
    d.emit('join', { rooms: ['lobby'] });
    assert.ok(await d.nothing(() => true, 200));
    assert.equal(b.ws.getClientsByRoom({ room: 'lobby' }).length, 0);
    c.close(); d.close();
  });

  test('validateRoomFn that throws, rejects or returns garbage joins nothing and harms nothing', async () => {
    const answers = [
      () => {
        throw new Error('x');
      },
      () => Promise.reject(new Error('y')),
      () => 'lobby',
      () => ({ rooms: ['lobby'] }),
      () => [1, null, {}],
    ];
    let i = 0;
    const { url, ws } = await startServer({ validateRoomFn: () => answers[i++]() });
    const c = await Client.auth(url);
    for (let k = 0; k < answers.length; k++) c.emit('join', { rooms: ['lobby'] });
    await until(() => i === answers.length, 2000, 'all validations');
    await sleep(50);
    assert.equal(ws.getClientsByRoom({ room: 'lobby' }).length, 0);
    c.emit('heartbeat');
    assert.equal(ws.getClients({ id: c.id }).state, 'authenticated');
    c.close();
  });

  test('10 000-entry rooms arrays are handled without harm', async () => {
    let seen = 0;
    const { url, ws } = await startServer({ validateRoomFn: ({ rooms }) => ((seen = rooms.length), rooms.slice(0, 3)) });
    const c = await Client.auth(url);
    c.emit('join', { rooms: Array.from({ length: 10_000 }, (_, i) => `room-${i}`) });
    await until(() => seen > 0, 3000, 'validateRoomFn');
    assert.ok(seen <= 1024, `validateRoomFn got ${seen} rooms; one request is capped`);
    await until(() => ws.getClientsByRoom({ room: 'room-2' }).length === 1, 2000, 'joined');
    c.close();
  });

  test('leave only leaves joined rooms', async () => {
    const { url, ws } = await startServer({ validateRoomFn: ({ rooms }) => rooms });
    const c = await Client.auth(url);
    c.emit('join', { rooms: ['a', 'b'] });
    await until(() => ws.getClients({ id: c.id }).rooms.has('b'), 2000, 'join');
    c.emit('leave', { rooms: ['a', 'never-joined', 'ws:broadcast'] });
    await until(() => !ws.getClients({ id: c.id }).rooms.has('a'), 2000, 'leave');
    const rooms = ws.getClients({ id: c.id }).rooms;
    assert.ok(rooms.has('b') && !rooms.has('never-joined'));
    assert.equal(ws.getClientsByRoom({ room: 'a' }).length, 0, 'empty rooms disappear');
    c.close();
  });

  test('disconnect removes the client from every room and index', async () => {
    const { url, ws } = await startServer({ validateRoomFn: ({ rooms }) => rooms });
    const c = await Client.auth(url, { token: 'z', userId: 'zed' });
    c.emit('join', { rooms: ['solo'] });
    await until(() => ws.getClientsByRoom({ room: 'solo' }).length === 1, 2000, 'join');
    await c.close();
    await until(() => ws.getClients().size === 0, 2000, 'removal');
    assert.equal(ws.getClientsByRoom({ room: 'solo' }).length, 0);
    assert.equal(ws.getClientsByUser({ userId: 'zed' }).length, 0);
    assert.equal(ws.stats().rooms, 0);
  });
});

describe('application messages', () => {
  test('messageHandler gets {clientId, userId, message} with the whole frame', async () => {
    const got = [];
    const { url } = await startServer({ messageHandler: x => got.push(x) });
    const c = await Client.auth(url, { token: 'm', userId: 'mu' });
    c.send(JSON.stringify({ event: 'chat', data: { text: 'hi' }, id: 'req-1', extra: true }));
    await until(() => got.length === 1, 2000, 'message');
    assert.deepEqual(got[0], {
      clientId: c.id,
      userId: 'mu',
      message: { event: 'chat', data: { text: 'hi' }, id: 'req-1', extra: true },
    });
    c.close();
  });

  test('messages arrive in order', async () => {
    const got = [];
    const { url } = await startServer({ messageHandler: ({ message }) => got.push(message.data) });
    const c = await Client.auth(url);
    for (let i = 0; i < 500; i++) c.emit('n', i);
    await until(() => got.length === 500, 5000, '500 messages');
    assert.deepEqual(got, Array.from({ length: 500 }, (_, i) => i));
    c.close();
  });

  test('a handler that throws, rejects or never settles does not stall others', async () => {
    const got = [];
    const { url } = await startServer({
      messageHandler: ({ message }) => {
        if (message.event === 'throw') throw new Error('sync');
        if (message.event === 'reject') return Promise.reject(new Error('async'));
        if (message.event === 'hang') return new Promise(() => {});
        got.push(message.event);
      },
    });
    const a = await Client.auth(url);
    const b = await Client.auth(url);
    a.emit('throw'); a.emit('reject'); a.emit('hang');
    b.emit('ok-b');
    a.emit('ok-a');
    await until(() => got.length === 2, 2000, 'other messages');
    assert.deepEqual(got.sort(), ['ok-a', 'ok-b']);
    a.close(); b.close();
  });

  test('without a messageHandler application events are dropped silently', async () => {
    const { url, ws } = await startServer();
    const c = await Client.auth(url);
    c.emit('chat', 1);
    assert.ok(await c.nothing(() => true, 150));
    assert.equal(ws.stats().droppedNoHandler, 1);
    c.close();
  });
});

describe('hostile input', () => {
  test('frames larger than maxPayloadLength close the socket with 1009', async () => {
    const { url, ws } = await startServer({ serverOptions: { maxPayloadLength: 1024 } });
    const c = await Client.auth(url);
    c.emit('chat', 'x'.repeat(2000));
    const closed = await c.closed;
    assert.equal(closed.code, 1009);
    const d = await Client.auth(url);
    assert.ok(d.id, 'server still serves');
    d.close();
    assert.equal(ws.stats().oversizedFrames, 1);
  });

  test('deeply nested JSON, invalid UTF-8 and garbage never crash the server', async () => {
    const { url, ws } = await startServer({ messageHandler: () => {} });
    const c = await Client.auth(url);
    // 60 000 levels: parsed without recursion (dropped: no event) or refused; never a crash.
    c.send('['.repeat(60_000) + ']'.repeat(60_000));
    c.send('{"event":"chat","data":' + '{"a":'.repeat(20_000) + '1' + '}'.repeat(20_000) + '}');
    c.send('{"event":"chat","data":' + '['.repeat(20_000) + ']'.repeat(20_000));
    c.send('\u0000\u0001 garbage');
    assert.deepEqual((await c.next('error')).data, { message: 'Invalid message format' });
    // Invalid UTF-8 in a text frame is a protocol error for that socket only.
    const raw = await rawSocket(ws.port);
    raw.sock.write(maskedFrame(0x1, Buffer.from([0xc3, 0x28])));
    await raw.closed;
    const again = await Client.auth(url);
    assert.ok(again.id);
    c.close(); again.close();
  });

  test('upgrades on another path are refused', async () => {
    const { ws } = await startServer();
    const c = new Client(`ws://127.0.0.1:${ws.port}/other`);
    await assert.rejects(c.opened);
  });
});
