// `npm run test:matrix`: the packed tarballs (`npm run pack:all`) installed
// into a scratch application, and a smoke of the server, the client SDK and
// `ignis-ws-native/ignis` run on every runtime the README promises: Node 20,
// 22, 24 and 26, Bun 1.2.0 and the newest Bun (the devDependency).
//
// The runtimes come from the npm registry (the `node` and `bun` packages
// ship their binaries) into ~/.cache/ignis-ws-native/runtimes, once.
// The Ignis smoke needs redis-server (its component requires a Redis
// connection). Prints one line per runtime and "N passed, N failed".
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const cache = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'ignis-ws-native', 'runtimes');

/** The runtimes, each as [label, binary]. */
function runtimes() {
  const fetch = (name, version) => {
    const dir = path.join(cache, `${name}@${version}`);
    const bin = name === 'node' ? path.join(dir, 'node_modules', 'node', 'bin', 'node') : path.join(dir, 'node_modules', '.bin', 'bun');
    if (!fs.existsSync(bin)) {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'package.json'), '{"private":true}');
      execFileSync(npm, ['install', '--no-audit', '--no-fund', '--no-save', `${name}@${version}`], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
    }
    return bin;
  };
  const newestBun = path.join(root, 'node_modules', '.bin', 'bun');
  return [
    ...['20', '22', '24', '26'].map(v => [`Node ${v}`, fetch('node', v)]),
    ['Bun 1.2.0', fetch('bun', '1.2.0')],
    [`Bun ${JSON.parse(fs.readFileSync(path.join(root, 'node_modules', 'bun', 'package.json'), 'utf8')).version} (newest)`, newestBun],
  ];
}

// The smoke: a plain server with the client SDK (connect, join, a room
// publication, a request answered through acks), then an Ignis application
// with this package's component on its own port, reached by the SDK.
const SMOKE = `
const assert = require('node:assert/strict');
const { WebSocketServer } = require('ignis-ws-native');
const { WebSocketClient } = require('ignis-ws-native/client');
const { BaseApplication } = require('@venizia/ignis');
const { RedisHelper } = require('@venizia/ignis-helpers');
const { WebSocketComponent, WebSocketBindingKeys } = require('ignis-ws-native/ignis');
const net = require('node:net');

const freePort = () => new Promise(r => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
const until = async (fn, what) => { const end = Date.now() + 10000; while (!fn()) { if (Date.now() > end) throw new Error('timed out: ' + what); await new Promise(r => setTimeout(r, 10)); } };

(async () => {
  // 1. The server and the SDK.
  const ws = new WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', acks: true,
    authenticateFn: d => (d.token === 't' ? { userId: 'u1' } : null),
    validateRoomFn: ({ rooms }) => rooms,
    messageHandler: ({ message }) => ({ sum: message.data.a + message.data.b }) });
  await ws.configure();
  const c = new WebSocketClient({ url: 'ws://127.0.0.1:' + ws.port + '/ws', auth: () => ({ token: 't' }), encryption: false });
  const session = await c.connect();
  assert.equal(session.userId, 'u1');
  const got = [];
  c.on('news', d => got.push(d));
  c.join('r');
  await until(() => ws.getClientsByRoom({ room: 'r' }).length === 1, 'joined');
  ws.sendToRoom({ room: 'r', event: 'news', data: 1 });
  await until(() => got.length === 1, 'room publication');
  assert.deepEqual(await c.request('sum', { a: 2, b: 3 }), { sum: 5 });
  c.close();
  await ws.shutdown();

  // 2. An Ignis application with the component.
  const port = await freePort();
  class App extends BaseApplication {
    getAppInfo() { return { name: 'smoke', version: '1.0.0', description: 'smoke' }; }
    staticConfigure() {}
    preConfigure() {
      this.bind({ key: WebSocketBindingKeys.REDIS_CONNECTION }).toValue(new RedisHelper({ name: 'r', host: '127.0.0.1', port: Number(process.env.REDIS_PORT), autoConnect: false }));
      this.bind({ key: WebSocketBindingKeys.AUTHENTICATE_HANDLER }).toValue(d => (d.token ? { userId: 'i-' + d.token } : null));
      this.bind({ key: WebSocketBindingKeys.MESSAGE_HANDLER }).toValue(({ clientId, message }) =>
        this.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE }).sendToClient({ clientId, event: 'echo', data: message.data }));
      this.bind({ key: WebSocketBindingKeys.SERVER_OPTIONS }).toValue({ identifier: 'smoke', logLevel: 'silent' });
      this.component(WebSocketComponent);
      this.getRootRouter().get('/hello', ctx => ctx.json({ hello: 'world' }));
    }
    postConfigure() {}
    setupMiddlewares() {}
  }
  const app = new App({ scope: 'App', config: { host: '127.0.0.1', port, path: { base: '/api', isStrict: false } } });
  app.init();
  await app.start();
  assert.deepEqual(await fetch('http://127.0.0.1:' + port + '/api/hello').then(r => r.json()), { hello: 'world' });
  const i = new WebSocketClient({ url: 'ws://127.0.0.1:' + port + '/ws', auth: () => ({ token: 'x' }), encryption: false });
  assert.equal((await i.connect()).userId, 'i-x');
  const echoed = new Promise(r => i.on('echo', r));
  i.emit('say', { hi: 1 });
  assert.deepEqual(await echoed, { hi: 1 });
  i.close();
  await app.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE }).shutdown();
  const server = app.getServerInstance();
  server?.closeAllConnections?.();
  if (globalThis.Bun) server?.stop?.(true);
  else await new Promise(r => server.close(r));
  console.log('SMOKE OK ' + (globalThis.Bun ? 'Bun ' + Bun.version : 'Node ' + process.versions.node));
  process.exit(0);
})().catch(e => { console.error(e); process.exit(1); });
`;

async function freePort() {
  const s = net.createServer();
  await new Promise(r => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise(r => s.close(r));
  return port;
}

const hasRedis = spawnSync('sh', ['-c', 'command -v redis-server'], { stdio: 'ignore' }).status === 0;
if (!hasRedis) {
  const line = 'redis-server is missing (Debian/Ubuntu: apt-get install redis-server)';
  if (/^(1|true)$/i.test(process.env.CI ?? '')) {
    console.error(`CI=true: ${line}`);
    process.exit(1);
  }
  console.log(`# skip: ${line}`);
  process.exit(0);
}

console.log('== packing');
execFileSync(process.execPath, [path.join(root, 'scripts', 'pack-all.mjs')], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
const tarballs = fs.readdirSync(path.join(root, 'pkg')).filter(f => f.endsWith('.tgz')).map(f => path.join(root, 'pkg', f));

console.log('== runtimes');
const list = runtimes();

console.log('== the application');
const app = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-ws-matrix-'));
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'matrix-app', version: '1.0.0', private: true }));
// What an Ignis application on Node installs besides this package: the
// framework, and the peers of it that its HTTP side loads (the versions this
// repository develops with).
const ignisPeers = Object.keys(JSON.parse(fs.readFileSync(path.join(root, 'node_modules', '@venizia', 'ignis', 'package.json'), 'utf8')).peerDependencies ?? {});
const dev = pkg.devDependencies;
const extras = ['ws', '@venizia/ignis', '@venizia/ignis-helpers', 'ioredis', ...ignisPeers.filter(p => dev[p])].map(p => `${p}@${dev[p] ?? pkg.peerDependencies[p]}`);
execFileSync(npm, ['install', '--prefer-offline', '--legacy-peer-deps', '--no-audit', '--no-fund', ...tarballs, ...extras], {
  cwd: app,
  stdio: ['ignore', 'ignore', 'inherit'],
});
fs.writeFileSync(path.join(app, 'smoke.cjs'), SMOKE);

const redisPort = await freePort();
const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
try {
  let passed = 0;
  let failed = 0;
  for (const [label, bin] of list) {
    const r = spawnSync(bin, ['smoke.cjs'], { cwd: app, encoding: 'utf8', timeout: 60_000, env: { ...process.env, REDIS_PORT: String(redisPort), APP_ENV_LOGGER_FOLDER_PATH: app } });
    const ok = r.status === 0 && /SMOKE OK/.test(r.stdout);
    if (ok) passed++;
    else failed++;
    // The application's own log lines are shown only when it failed.
    console.log(`${ok ? 'ok' : 'not ok'} ${label}: ${ok ? /SMOKE OK .*/.exec(r.stdout)[0] : `exit ${r.status}\n${r.stdout}${r.stderr}${r.error ?? ''}`}`);
  }
  console.log(`matrix: ${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
} finally {
  redis.kill('SIGKILL');
  fs.rmSync(app, { recursive: true, force: true });
}
