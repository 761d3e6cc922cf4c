// docs/PROTOCOL.md §4.4: requireEncryption with handshakeFn.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, startServer, stopAll } from './helpers.mjs';

after(stopAll);

describe('encryption handshake (§4.4)', () => {
  test('no handshakeFn: close 4004 without an error event', async () => {
    const { url } = await startServer({ requireEncryption: true });
    const c = await Client.open(url);
    c.emit('authenticate', { token: 't' });
    assert.deepEqual(await c.closed, { code: 4004, reason: 'Encryption required' });
    assert.ok(!c.frames.some(f => f.event === 'error'));
  });

  test('handshake accepted: connected carries serverPublicKey and salt; the client is encrypted', async () => {
    const calls = [];
    const { url, ws } = await startServer({
      requireEncryption: true,
      handshakeFn: x => (calls.push(x), { serverPublicKey: 'PUB', salt: 'SALT' }),
    });
    const c = await Client.auth(url, { token: 'h', userId: 'hu', publicKey: 'CLIENT' });
    assert.equal(c.connected.serverPublicKey, 'PUB');
    assert.equal(c.connected.salt, 'SALT');
    assert.deepEqual(calls, [{ clientId: c.id, userId: 'hu', data: { token: 'h', userId: 'hu', publicKey: 'CLIENT' } }]);
    const rec = ws.getClients({ id: c.id });
    assert.equal(rec.encrypted, true);
    assert.equal(rec.serverPublicKey, 'PUB');
    assert.equal(rec.salt, 'SALT');
    c.close();
  });

  test('handshake refused: "Encryption handshake failed" then 4004; handshake throws: "Authentication error" then 4003', async () => {
    const a = await startServer({ requireEncryption: true, handshakeFn: () => null });
    const c = await Client.open(a.url);
    c.emit('authenticate', { token: 't' });
    assert.deepEqual((await c.next('error')).data, { message: 'Encryption handshake failed' });
    assert.deepEqual(await c.closed, { code: 4004, reason: 'Encryption required' });

    const b = await startServer({
      requireEncryption: true,
      handshakeFn: () => {
        throw new Error('no');
      },
    });
    const d = await Client.open(b.url);
    d.emit('authenticate', { token: 't' });
    assert.deepEqual((await d.next('error')).data, { message: 'Authentication error' });
    assert.deepEqual(await d.closed, { code: 4003, reason: 'Authentication failed' });
  });

  test('the client stays authenticating (cannot join or send) until the handshake is done', async () => {
    let release;
    const { url, ws } = await startServer({
      requireEncryption: true,
      validateRoomFn: ({ rooms }) => rooms,
      handshakeFn: () => new Promise(r => (release = () => r({ serverPublicKey: 'P', salt: 'S' }))),
    });
    const c = await Client.open(url);
    c.emit('authenticate', { token: 't' });
    const t0 = performance.now();
    while (!release && performance.now() - t0 < 2000) await new Promise(r => setTimeout(r, 10));
    assert.ok(release, 'handshakeFn called');
    assert.equal([...ws.getClients().values()][0].state, 'authenticating');
    c.emit('join', { rooms: ['x'] });
    assert.deepEqual((await c.next('error')).data, { message: 'Not authenticated' });
    release();
    await c.next('connected');
    c.close();
  });

  test('handshakeFn returning the wrong types is an error (4003); one that never settles hits the 4001 timer', async () => {
    const a = await startServer({ requireEncryption: true, handshakeFn: () => ({ serverPublicKey: 5, salt: null }) });
    const c = await Client.open(a.url);
    c.emit('authenticate', { token: 't' });
    assert.deepEqual((await c.next('error')).data, { message: 'Authentication error' });
    assert.deepEqual(await c.closed, { code: 4003, reason: 'Authentication failed' });

    const b = await startServer({ requireEncryption: true, authTimeout: 100, handshakeFn: () => new Promise(() => {}) });
    const d = await Client.open(b.url);
    d.emit('authenticate', { token: 't' });
    globalThis.Bun?.gc(true);
    assert.deepEqual(await d.closed, { code: 4001, reason: 'Authentication timeout' });
  });
});
