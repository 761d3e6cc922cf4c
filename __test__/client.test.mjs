// The client SDK against a real server: connect, events, rooms, heartbeats,
// reconnection with re-authentication and re-join, final close codes, and
// transparent decryption.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { lib, startServer, stopAll, sleep, until } from './helpers.mjs';
import { serverEncryption } from './crypto-helpers.mjs';

const require = createRequire(import.meta.url);
const { WebSocketClient } = require('../dist/client.js');

after(stopAll);
const clients = [];
after(() => clients.forEach(c => c.close()));

function client(opts) {
  const c = new WebSocketClient({ heartbeatInterval: 0, ...opts });
  clients.push(c);
  return c;
}

describe('WebSocketClient', () => {
  test('connect() resolves with the connected payload; emit, on, once, off; join/leave', async () => {
    const got = [];
    const { ws, url } = await startServer({
      validateRoomFn: ({ rooms }) => rooms,
      messageHandler: ({ clientId, message }) => {
        got.push(message);
        ws.sendToClient({ clientId, event: 'echo', data: message.data });
      },
    });
    const c = client({ url, auth: () => ({ token: 'sdk', userId: 'sdk-user' }) });
    const states = [];
    c.on('state', s => states.push(s));
    const payload = await c.connect();
    assert.equal(payload.userId, 'sdk-user');
    assert.equal(c.state, 'connected');
    assert.equal(c.session.id, payload.id);
    const echo = new Promise(r => c.once('echo', r));
    c.emit('say', { text: 'hi' });
    assert.deepEqual(await echo, { text: 'hi' });
    assert.deepEqual(got, [{ event: 'say', data: { text: 'hi' } }]);

    c.join(['lobby', 'news']);
    await until(() => ws.getClients({ id: payload.id }).rooms.has('news'), 2000, 'join');
    c.leave('news');
    await until(() => !ws.getClients({ id: payload.id }).rooms.has('news'), 2000, 'leave');

    let count = 0;
    const fn = () => count++;
    c.on('tick', fn);
    ws.sendToClient({ clientId: payload.id, event: 'tick', data: 1 });
    await until(() => count === 1, 2000, 'tick');
    c.off('tick', fn);
    ws.sendToClient({ clientId: payload.id, event: 'tick', data: 2 });
    await sleep(100);
    assert.equal(count, 1);
    assert.deepEqual(states, ['connecting', 'connected']);
  });

  test('heartbeats on its own keep the connection through the server sweep', async () => {
    const { url } = await startServer({ heartbeatInterval: 100, heartbeatTimeout: 300 });
    const c = client({ url, auth: () => ({ token: 'hb' }), heartbeatInterval: 100 });
    await c.connect();
    const disconnected = [];
    c.on('disconnected', d => disconnected.push(d));
    await sleep(1000);
    assert.equal(c.state, 'connected');
    assert.deepEqual(disconnected, []);
  });

  test('reconnects with backoff, re-authenticates with a fresh auth(), re-joins rooms and flushes queued emits', async () => {
    const first = await startServer({ validateRoomFn: ({ rooms }) => rooms });
    const port = first.ws.port;
    let authCalls = 0;
    const c = client({
      url: first.url,
      auth: async () => ({ token: 'r' + ++authCalls, userId: 'same-user' }),
      reconnect: { minDelay: 50, maxDelay: 200 },
    });
    const seen = [];
    for (const s of ['connecting', 'connected', 'reconnecting', 'disconnected']) c.on(s, info => seen.push([s, info?.code]));
    const one = await c.connect();
    c.join(['keep-me']);
    await until(() => first.ws.getClients({ id: one.id })?.rooms.has('keep-me'), 2000, 'join');

    await first.ws.shutdown();
    await until(() => c.state === 'reconnecting' || c.state === 'disconnected', 2000, 'noticed');
    assert.ok(seen.some(([s, code]) => s === 'disconnected' && code === 1001));
    assert.equal(c.emit('while-away', { n: 1 }), true, 'queued');

    const got = [];
    const second = await startServer({
      port,
      validateRoomFn: ({ rooms }) => rooms,
      authenticateFn: d => ({ userId: d.userId, metadata: { token: d.token } }),
      messageHandler: ({ message }) => got.push(message),
    });
    await until(() => c.state === 'connected', 5000, 'reconnected');
    assert.ok(authCalls >= 2, 'auth() called again');
    const rec = second.ws.getClients({ id: c.session.id });
    assert.deepEqual(rec.metadata, { token: 'r' + authCalls }, 'fresh auth data');
    await until(() => second.ws.getClients({ id: c.session.id })?.rooms.has('keep-me'), 2000, 're-join');
    await until(() => got.length === 1, 2000, 'queued emit delivered');
    assert.deepEqual(got[0], { event: 'while-away', data: { n: 1 } });
    assert.ok(seen.some(([s]) => s === 'reconnecting'));
  });

  test('an attempt that gets no connected in handshakeTimeout is treated as lost and retried', async () => {
    let calls = 0;
    // The first authentication never settles: the socket is open, the server silent.
    const { url } = await startServer({ authenticateFn: () => (++calls === 1 ? new Promise(() => {}) : { userId: 'u' }) });
    const c = client({ url, auth: () => ({}), handshakeTimeout: 300, reconnect: { minDelay: 10, maxDelay: 20 } });
    const lost = [];
    c.on('disconnected', d => lost.push(d));
    const session = await c.connect();
    assert.equal(session.userId, 'u');
    assert.deepEqual(lost, [{ code: 1006, reason: 'no connected in time', willReconnect: true }]);
    assert.equal(calls, 2);
  });

  test('a re-join that gets no joined in joinTimeout is treated as lost and retried', async () => {
    const first = await startServer({ validateRoomFn: ({ rooms }) => rooms, history: true });
    const port = first.ws.port;
    const c = client({ url: first.url, auth: () => ({ token: 'j' }), joinTimeout: 300, reconnect: { minDelay: 10, maxDelay: 20 } });
    await c.connect();
    c.join('h');
    await until(() => first.ws.getClientsByRoom({ room: 'h' }).length === 1, 2000, 'joined');
    const got = [];
    c.on('m', d => got.push(d));
    first.ws.sendToRoom({ room: 'h', event: 'm', data: 1 });
    await until(() => got.length === 1, 2000, 'a positioned publication');
    await first.ws.shutdown();
    // The next instance's first validation never settles: `joined` never comes.
    let validations = 0;
    const second = await startServer({
      port,
      history: true,
      validateRoomFn: ({ rooms }) => (++validations === 1 ? new Promise(() => {}) : rooms),
    });
    const lost = [];
    const joined = [];
    c.on('disconnected', d => lost.push(d));
    c.on('joined', j => joined.push(j));
    await until(() => joined.length === 1, 5000, 'joined on the retry');
    assert.equal(validations, 2);
    assert.ok(lost.some(d => d.code === 1006 && d.reason === 'no joined in time' && d.willReconnect), JSON.stringify(lost));
    assert.equal(joined[0].room, 'h');
    assert.equal(c.state, 'connected');
    second.ws.sendToRoom({ room: 'h', event: 'm', data: 2 });
    await until(() => got.length === 2, 2000, 'live again');
  });

  test('a room the server now refuses costs one reconnection, then is given up (recovered: false)', async () => {
    const first = await startServer({ validateRoomFn: ({ rooms }) => rooms, history: true });
    const port = first.ws.port;
    const c = client({ url: first.url, auth: () => ({ token: 'r' }), joinTimeout: 300, reconnect: { minDelay: 10, maxDelay: 20 } });
    await c.connect();
    c.join(['revoked', 'kept']);
    await until(() => first.ws.getClientsByRoom({ room: 'kept' }).length === 1, 2000, 'joined');
    const got = [];
    c.on('m', d => got.push(d));
    first.ws.sendToRoom({ room: 'revoked', event: 'm', data: 1 });
    first.ws.sendToRoom({ room: 'kept', event: 'm', data: 2 });
    await until(() => got.length === 2, 2000, 'positions in both rooms');
    await first.ws.shutdown();
    // The next instance no longer allows 'revoked'.
    const second = await startServer({ port, history: true, validateRoomFn: ({ rooms }) => rooms.filter(r => r !== 'revoked') });
    const lost = [];
    const recovered = [];
    c.on('disconnected', d => lost.push(d.reason));
    c.on('recovered', r => recovered.push(r));
    await until(() => recovered.some(r => r.room === 'revoked' && r.recovered === false), 5000, 'revoked room given up');
    await sleep(1000);
    assert.equal(c.state, 'connected');
    assert.equal(lost.filter(r => r === 'no joined in time').length, 1, JSON.stringify(lost));
    assert.ok(recovered.some(r => r.room === 'kept'), 'the kept room was re-joined');
    second.ws.sendToRoom({ room: 'kept', event: 'm', data: 3 });
    await until(() => got.length === 3, 2000, 'live in the kept room');
  });

  test('4003 is final: no retry, connect() rejects', async () => {
    const { url } = await startServer({ authenticateFn: () => null });
    let calls = 0;
    const c = client({ url, auth: () => (calls++, {}), reconnect: { minDelay: 10 } });
    const info = new Promise(r => c.on('disconnected', r));
    await assert.rejects(c.connect(), /4003/);
    assert.deepEqual(await info, { code: 4003, reason: 'Authentication failed', willReconnect: false });
    await sleep(200);
    assert.equal(calls, 1);
    assert.equal(c.state, 'disconnected');
  });

  test('the emit queue is bounded while disconnected', async () => {
    const c = client({ url: 'ws://127.0.0.1:9/ws', auth: () => ({}), queueLimit: 3, reconnect: { minDelay: 1000 } });
    const dropped = [];
    c.on('dropped', d => dropped.push(d.event));
    for (let i = 0; i < 5; i++) c.emit('e' + i);
    assert.deepEqual(dropped, ['e3', 'e4']);
    c.close();
  });

  test('decrypts encrypted frames transparently (ECDH P-256, HKDF-SHA-256, AES-256-GCM)', async () => {
    const enc = serverEncryption();
    const { ws, url } = await startServer({ requireEncryption: true, ...enc });
    const c = client({ url, auth: () => ({ token: 'enc' }) });
    const payload = await c.connect();
    assert.ok(payload.serverPublicKey && payload.salt);
    const secret = new Promise(r => c.once('secret', r));
    ws.sendToClient({ clientId: payload.id, event: 'secret', data: { pin: 1234 } });
    assert.deepEqual(await secret, { pin: 1234 });
    const order = [];
    c.on('seq', n => order.push(n));
    for (let i = 0; i < 20; i++) ws.sendToClient({ clientId: payload.id, event: 'seq', data: i });
    await until(() => order.length === 20, 3000, 'all decrypted');
    assert.deepEqual(order, [...Array(20).keys()], 'in order');
  });
});
