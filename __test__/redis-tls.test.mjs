// rediss:// with a private CA, and with verification turned off.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Client, lib, startServer, stopAll } from './helpers.mjs';
import { makeCertificates, startTlsRedis, noRedis, noOpenssl } from './redis-helpers.mjs';

let certs;
let tlsRedis;
before(async () => {
  if (noRedis || noOpenssl) return;
  certs = makeCertificates();
  tlsRedis = await startTlsRedis(certs);
});
after(async () => {
  await stopAll();
  await tlsRedis?.stop();
  if (certs) fs.rmSync(certs.dir, { recursive: true, force: true });
});

describe('Redis over TLS', { skip: noRedis || noOpenssl }, () => {
  test('rediss:// with the CA given as ioredis-style tls.ca carries traffic between instances', async () => {
    const redis = { url: `rediss://127.0.0.1:${tlsRedis.port}`, tls: { ca: certs.ca } };
    const a = await startServer({ redis, validateRoomFn: ({ rooms }) => rooms });
    const b = await startServer({ redis: { host: '127.0.0.1', port: tlsRedis.port, tls: { ca: Buffer.from(certs.ca) } } });
    const c = await Client.auth(b.url, { token: 'tls', userId: 'tls-user' });
    await new Promise(r => setTimeout(r, 150));
    a.ws.send({ destination: c.id, payload: { topic: 'secure', data: 1 } });
    await c.next('secure');
    const emitter = new lib.WebSocketEmitter({ redis });
    await emitter.configure();
    await emitter.toUser({ userId: 'tls-user', event: 'e', data: 2 });
    await c.next('e');
    await emitter.shutdown();
    c.close();
  });

  test('an untrusted certificate is refused unless rejectUnauthorized is false', async () => {
    const url = `rediss://127.0.0.1:${tlsRedis.port}`;
    const strict = new lib.WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', authenticateFn: () => ({}), redis: { url, connectTimeout: 1000 } });
    await assert.rejects(strict.configure(), /127\.0\.0\.1/);
    const lax = await startServer({ redis: { url, tls: { rejectUnauthorized: false } } });
    assert.equal(lax.ws.stats().busState, 'connected');
  });
});
