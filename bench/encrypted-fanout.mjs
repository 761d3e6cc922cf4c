// Fan-out to encrypted clients: built-in encryption (Rust) against the JS
// outboundTransformer path with the same scheme (WebCrypto in Node).
//
//   node bench/encrypted-fanout.mjs [clients=1000] [messages=20]
//
// Clients live in this process and only count frames (no decryption), so
// the figure is dominated by the server's encryption work.
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { newKeyPair, serverEncryption } from '../__test__/crypto-helpers.mjs';

const require = createRequire(import.meta.url);
const { WebSocketServer } = require('../dist/index.js');
const CLIENTS = Number(process.argv[2] ?? 1000);
const MESSAGES = Number(process.argv[3] ?? 20);

async function run(label, opts) {
  const ws = new WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', authenticateFn: () => ({}), ...opts });
  await ws.configure();
  const url = `ws://127.0.0.1:${ws.port}/ws`;
  let received = 0;
  let done;
  const all = new Promise(r => (done = r));
  const sockets = [];
  for (let i = 0; i < CLIENTS; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, CLIENTS - i) }, async () => {
        const { publicKey } = await newKeyPair();
        const s = new WebSocket(url);
        sockets.push(s);
        await new Promise(r => s.once('open', r));
        s.send(JSON.stringify({ event: 'authenticate', data: { publicKey } }));
        await new Promise(r => s.once('message', r));
        s.on('message', () => {
          if (++received === CLIENTS * MESSAGES) done();
        });
      }),
    );
  }
  const payload = { text: 'x'.repeat(200), n: 0 };
  const t0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  for (let m = 0; m < MESSAGES; m++) ws.broadcast({ event: 'news', data: { ...payload, n: m } });
  await all;
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const cpu = process.cpuUsage(cpu0);
  const rate = (CLIENTS * MESSAGES) / (ms / 1000);
  console.log(`${label.padEnd(28)} ${CLIENTS} clients × ${MESSAGES} msgs: ${ms.toFixed(0)} ms, ${Math.round(rate)} deliveries/s, process CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms`);
  sockets.forEach(s => s.terminate());
  await ws.shutdown();
  return ms;
}

const js = await run('JS outboundTransformer', { requireEncryption: true, ...serverEncryption() });
const native = await run('built-in (Rust)', { encryption: 'ecdh-p256-aes-256-gcm' });
console.log(`built-in is ${(js / native).toFixed(1)}× faster to the last delivery`);
