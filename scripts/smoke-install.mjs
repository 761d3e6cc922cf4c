// Installs package tarballs into a fresh application and runs a server from
// them: what a user without a Rust toolchain does. Used by the test suite
// (__test__/package.test.mjs) and by the release workflow on every platform
// it builds.
//
//   node scripts/smoke-install.mjs [--runtime <node|bun|path>]… <tarball>…
//
// Prints "CONNECTED <frame>" per runtime once a client authenticated against
// the installed package, and the application's directory as "APP <dir>".
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// The application: a server, and a raw WebSocket client that authenticates
// against it (no client library needed, Node 20 has no global WebSocket).
const CHECK = `
const { WebSocketServer } = require('ignis-ws-native');
const net = require('node:net');
(async () => {
  const ws = new WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent',
    authenticateFn: d => (d.token === 't' ? { userId: 'u1' } : null) });
  await ws.configure();
  const sock = net.connect(ws.port, '127.0.0.1');
  await new Promise(r => sock.once('connect', r));
  sock.write('GET /ws HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n');
  const body = Buffer.from(JSON.stringify({ event: 'authenticate', data: { token: 't' } }));
  let seen = '';
  let sent = false;
  let timer;
  const frame = await new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error('no connected frame: ' + seen)), 5000);
    sock.on('data', d => {
      seen += d.toString('latin1');
      if (seen.includes('HTTP/1.1 101') && !sent) {
        sent = true;
        sock.write(Buffer.concat([Buffer.from([0x81, 0x80 | body.length, 0, 0, 0, 0]), body]));
      }
      const i = seen.indexOf('{"event":"connected"');
      if (i >= 0) resolve(seen.slice(i));
    });
  });
  clearTimeout(timer);
  sock.destroy();
  await ws.shutdown();
  console.log('CONNECTED ' + frame);
})().catch(e => { console.error(e); process.exit(1); });
`;

const args = process.argv.slice(2);
const runtimes = [];
const tarballs = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--runtime') runtimes.push(args[++i]);
  else tarballs.push(path.resolve(args[i]));
}
if (tarballs.length === 0) {
  console.error('usage: node scripts/smoke-install.mjs [--runtime node|bun|<path>]… <tarball>…');
  process.exit(2);
}
if (runtimes.length === 0) runtimes.push('node');

const app = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-ws-app-'));
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
// Offline: the tarballs are all it needs (the other platforms' optional
// packages are skipped, as on any machine they do not fit).
execFileSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['install', '--offline', '--no-audit', '--no-fund', ...tarballs], {
  cwd: app,
  stdio: ['ignore', 'ignore', 'inherit'],
  shell: process.platform === 'win32',
});
fs.writeFileSync(path.join(app, 'check.cjs'), CHECK);
console.log(`APP ${app}`);
let failed = false;
for (const runtime of runtimes) {
  const r = spawnSync(runtime, ['check.cjs'], { cwd: app, encoding: 'utf8', timeout: 30_000 });
  if (r.status === 0) process.stdout.write(r.stdout);
  else {
    failed = true;
    console.error(`${runtime}: exit ${r.status}\n${r.stdout}${r.stderr}${r.error ?? ''}`);
  }
}
process.exit(failed ? 1 : 0);
