// Built-in encryption (encryption: 'ecdh-p256-aes-256-gcm'): handshake and
// AES-GCM in Rust, decrypted by WebCrypto clients (the test's own and the SDK).
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Client, startServer, stopAll, until } from './helpers.mjs';
import { newKeyPair, deriveKey, decrypt } from './crypto-helpers.mjs';

const require = createRequire(import.meta.url);
const { WebSocketClient } = require('../dist/client.js');
after(stopAll);

describe("encryption: 'ecdh-p256-aes-256-gcm'", () => {
  test('every frame after connected is encrypted with the documented scheme; WebCrypto decrypts it', async () => {
    const { ws, url } = await startServer({ encryption: 'ecdh-p256-aes-256-gcm', validateRoomFn: ({ rooms }) => rooms });
    const { pair, publicKey } = await newKeyPair();
    const c = await Client.auth(url, { token: 'n', publicKey });
    const key = await deriveKey(pair.privateKey, c.connected.serverPublicKey, c.connected.salt);
    const rec = ws.getClients({ id: c.id });
    assert.equal(rec.encrypted, true);
    assert.equal(rec.serverPublicKey, c.connected.serverPublicKey);
    ws.sendToClient({ clientId: c.id, event: 'secret', data: { n: 1 } });
    ws.sendToRoom({ room: 'ws-default', event: 'room', data: [1, 2] });
    ws.broadcast({ event: 'all', data: 'x' });
    c.send('garbage');
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await decrypt(key, await c.next('encrypted')));
    assert.deepEqual(got, [
      { event: 'secret', data: { n: 1 } },
      { event: 'room', data: [1, 2] },
      { event: 'all', data: 'x' },
      { event: 'error', data: { message: 'Invalid message format' } },
    ]);
    assert.deepEqual(c.frames, [], 'nothing in plaintext');
    c.close();
  });

  test('a missing or wrong public key gets "Encryption handshake failed" and 4004', async () => {
    const { url } = await startServer({ encryption: 'ecdh-p256-aes-256-gcm' });
    for (const data of [{ token: 'a' }, { token: 'b', publicKey: 'not-a-key' }, { token: 'c', publicKey: Buffer.alloc(65, 4).toString('base64') }]) {
      const c = await Client.open(url);
      c.emit('authenticate', data);
      assert.deepEqual((await c.next('error')).data, { message: 'Encryption handshake failed' });
      assert.deepEqual(await c.closed, { code: 4004, reason: 'Encryption required' });
    }
  });

  test('the client SDK decrypts built-in encryption transparently, in order', async () => {
    const { ws, url } = await startServer({ encryption: 'ecdh-p256-aes-256-gcm' });
    const c = new WebSocketClient({ url, auth: () => ({ token: 'sdk' }), heartbeatInterval: 0 });
    const session = await c.connect();
    const seq = [];
    c.on('seq', n => seq.push(n));
    for (let i = 0; i < 50; i++) ws.sendToClient({ clientId: session.id, event: 'seq', data: i });
    await until(() => seq.length === 50, 3000, 'all decrypted');
    assert.deepEqual(seq, [...Array(50).keys()]);
    c.close();
  });
});
