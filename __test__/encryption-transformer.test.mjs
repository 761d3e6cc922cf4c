// docs/PROTOCOL.md §9: the outbound transformer for encrypted clients, end to end
// with the documented ECDH/HKDF/AES-GCM scheme and Node's WebCrypto.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, startServer, stopAll, sleep, until } from './helpers.mjs';
import { newKeyPair, deriveKey, decrypt, serverEncryption } from './crypto-helpers.mjs';

after(stopAll);

/** Authenticates with a fresh key pair; returns the client and its AES key. */
async function encryptedClient(url, token) {
  const { pair, publicKey } = await newKeyPair();
  const c = await Client.auth(url, { token, publicKey });
  assert.equal(typeof c.connected.serverPublicKey, 'string', 'connected is plain JSON with the server key');
  c.key = await deriveKey(pair.privateKey, c.connected.serverPublicKey, c.connected.salt);
  return c;
}

describe('outbound transformer (§9)', () => {
  test('frames to encrypted clients are transformed and decrypt to {event, data}; plain clients get plain frames', async () => {
    const enc = serverEncryption();
    const seen = [];
    const { ws, url } = await startServer({
      requireEncryption: true,
      handshakeFn: async x => (x.data.publicKey ? enc.handshakeFn(x) : { serverPublicKey: 'none', salt: 'none' }),
      outboundTransformer: async x => {
        seen.push(x.client);
        return enc.outboundTransformer(x);
      },
      authenticateFn: d => ({ userId: 'u-' + d.token, metadata: { t: d.token } }),
      validateRoomFn: ({ rooms }) => rooms,
    });
    const e = await encryptedClient(url, 'e');
    ws.sendToClient({ clientId: e.id, event: 'secret', data: { n: 1 } });
    const f = await e.next('encrypted');
    assert.deepEqual(await decrypt(e.key, f), { event: 'secret', data: { n: 1 } });
    assert.equal(seen[0].id, e.id);
    assert.equal(seen[0].encrypted, true);
    assert.deepEqual(seen[0].metadata, { t: 'e' });

    ws.sendToRoom({ room: 'ws-default', event: 'room', data: 'r' });
    assert.deepEqual(await decrypt(e.key, await e.next('encrypted')), { event: 'room', data: 'r' });
    ws.broadcast({ event: 'all', data: [1] });
    assert.deepEqual(await decrypt(e.key, await e.next('encrypted')), { event: 'all', data: [1] });
    e.emit('heartbeat');
    e.send('not json');
    assert.deepEqual(await decrypt(e.key, await e.next('encrypted')), { event: 'error', data: { message: 'Invalid message format' } });
    assert.ok(!e.frames.some(x => x.event !== 'encrypted'), 'nothing in plaintext after connected');
    e.close();
  });

  test('order per client is kept; at most encryptedBatchLimit transformer calls are in flight', async () => {
    const enc = serverEncryption();
    let inFlight = 0;
    let peak = 0;
    const { ws, url } = await startServer({
      requireEncryption: true,
      encryptedBatchLimit: 3,
      handshakeFn: enc.handshakeFn,
      outboundTransformer: async x => {
        inFlight++;
        peak = Math.max(peak, inFlight);
        await sleep(2);
        inFlight--;
        return enc.outboundTransformer(x);
      },
    });
    const clients = [];
    for (let i = 0; i < 12; i++) clients.push(await encryptedClient(url, 'p' + i));
    for (let n = 0; n < 10; n++) ws.sendToRoom({ room: 'ws-default', event: 'seq', data: n });
    for (const c of clients) {
      for (let n = 0; n < 10; n++) assert.deepEqual(await decrypt(c.key, await c.next('encrypted', 5000)), { event: 'seq', data: n });
    }
    assert.ok(peak <= 3, `peak ${peak} transformer calls in flight`);
    assert.ok(peak >= 2, 'calls for different clients do run concurrently');
    clients.forEach(c => c.close());
  });

  test('a transformer that throws drops that message only; null sends the original', async () => {
    const enc = serverEncryption();
    const { ws, url } = await startServer({
      requireEncryption: true,
      handshakeFn: enc.handshakeFn,
      outboundTransformer: async x => {
        if (x.event === 'boom') throw new Error('cannot encrypt');
        if (x.event === 'plain') return null;
        return enc.outboundTransformer(x);
      },
    });
    const c = await encryptedClient(url, 'x');
    ws.sendToClient({ clientId: c.id, event: 'boom', data: 1 });
    ws.sendToClient({ clientId: c.id, event: 'plain', data: 2 });
    ws.sendToClient({ clientId: c.id, event: 'after', data: 3 });
    assert.deepEqual(await c.next('plain'), { event: 'plain', data: 2 });
    assert.deepEqual(await decrypt(c.key, await c.next('encrypted')), { event: 'after', data: 3 });
    await until(() => ws.stats().handlerErrors >= 1, 2000, 'error counted');
    assert.ok(!c.frames.some(f => f.event === 'boom'));
    c.close();
  });

  test('without requireEncryption nobody is encrypted and the transformer is never called', async () => {
    let calls = 0;
    const { ws, url } = await startServer({ outboundTransformer: () => (calls++, null) });
    const c = await Client.auth(url);
    ws.sendToClient({ clientId: c.id, event: 'x', data: 1 });
    await c.next('x');
    assert.equal(calls, 0);
    c.close();
  });
});
