// A real Ignis application (@venizia/ignis 0.0.7 BaseApplication) with this
// project's WebSocketComponent, switched by changing only the import line.
// REST and WebSocket share the application's port on Node and on Bun.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import net from 'node:net';
import zlib from 'node:zlib';
import { Client, until, rawSocket, serverFrames, maskedFrame } from './helpers.mjs';
import { freePort, startRedis, noRedis } from './redis-helpers.mjs';

const require = createRequire(import.meta.url);
const { BaseApplication } = require('@venizia/ignis');
const { RedisHelper } = require('@venizia/ignis-helpers');
const { WebSocketComponent, WebSocketBindingKeys } = require('ignis-ws-native/ignis');
const isBun = !!globalThis.Bun;

let redis;
const apps = [];
before(async () => {
  if (noRedis) return;
  redis = await startRedis();
});
after(async () => {
  for (const a of apps) {
    await a.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE, isOptional: true })?.shutdown();
    const server = a.getServerInstance();
    server?.closeAllConnections?.();
    if (isBun) server?.stop?.(true);
    else await new Promise(r => server?.close(r) ?? r());
  }
  await redis?.stop();
});

function makeApp({ bindRedis = true, bindAuth = true, serverOptions = {}, events = [] } = {}) {
  class App extends BaseApplication {
    getAppInfo() {
      return { name: 'ws-app', version: '1.0.0', description: 'test application' };
    }
    staticConfigure() {}
    preConfigure() {
      if (bindRedis) {
        this.bind({ key: WebSocketBindingKeys.REDIS_CONNECTION }).toValue(
          new RedisHelper({ name: 'ws-redis', host: '127.0.0.1', port: redis.port, autoConnect: false }),
        );
      }
      if (bindAuth) {
        this.bind({ key: WebSocketBindingKeys.AUTHENTICATE_HANDLER }).toValue(d => (d.token ? { userId: 'u-' + d.token, metadata: { t: d.token } } : null));
      }
      this.bind({ key: WebSocketBindingKeys.VALIDATE_ROOM_HANDLER }).toValue(({ rooms }) => rooms.filter(r => r.startsWith('public-')));
      this.bind({ key: WebSocketBindingKeys.CLIENT_CONNECTED_HANDLER }).toValue(x => events.push(['connected', x.userId, x.metadata]));
      this.bind({ key: WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER }).toValue(x => events.push(['disconnected', x.userId]));
      this.bind({ key: WebSocketBindingKeys.MESSAGE_HANDLER }).toValue(({ clientId, message }) => {
        const ws = this.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE });
        ws.sendToClient({ clientId, event: 'echo', data: message.data });
      });
      this.bind({ key: WebSocketBindingKeys.SERVER_OPTIONS }).toValue({ identifier: 'ignis-app', logLevel: 'silent', ...serverOptions });
      this.component(WebSocketComponent);
      this.getRootRouter().get('/hello', c => c.json({ hello: 'world' }));
      this.getRootRouter().get('/whoami', c => {
        const ip = c.env?.requestIP?.(c.req.raw);
        return c.json(ip ? { address: ip.address, port: ip.port } : {});
      });
      // A "service" using the bound instance.
      this.getRootRouter().post('/notify/:room', c => {
        this.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE }).sendToRoom({ room: c.req.param('room'), event: 'notice', data: 'from REST' });
        return c.json({ ok: true });
      });
    }
    postConfigure() {}
    setupMiddlewares() {}
  }
  return App;
}

async function start(opts) {
  const port = await freePort();
  const App = makeApp(opts);
  const app = new App({ scope: 'App', config: { host: '127.0.0.1', port, path: { base: '/api', isStrict: false } } });
  app.init();
  await app.start();
  apps.push(app);
  return { app, port };
}

describe(`Ignis component on ${isBun ? 'Bun' : 'Node'}`, { skip: noRedis }, () => {
  test('binding keys carry the original strings', () => {
    assert.equal(WebSocketBindingKeys.SERVER_OPTIONS, '@app/websocket/server-options');
    assert.equal(WebSocketBindingKeys.REDIS_CONNECTION, '@app/websocket/redis-connection');
    assert.equal(WebSocketBindingKeys.AUTHENTICATE_HANDLER, '@app/websocket/authenticate-handler');
    assert.equal(WebSocketBindingKeys.HANDSHAKE_HANDLER, '@app/websocket/handshake-handler');
    assert.equal(WebSocketBindingKeys.WEBSOCKET_INSTANCE, '@app/websocket/instance');
  });

  test('missing bindings fail with the original messages', async () => {
    await assert.rejects(start({ bindRedis: false }), /Invalid instance of redisConnection/);
    await assert.rejects(start({ bindAuth: false }), /Invalid authenticateFn to setup WebSocket server/);
  });

  test('REST and WebSocket on the application port; the whole protocol through the bindings', async () => {
    const events = [];
    const { app, port } = await start({ events });
    assert.deepEqual(await fetch(`http://127.0.0.1:${port}/api/hello`).then(r => r.json()), { hello: 'world' });
    const c = await Client.auth(`ws://127.0.0.1:${port}/ws`, { token: 'n' });
    assert.equal(c.connected.userId, 'u-n');
    c.emit('ping', { n: 1 });
    assert.deepEqual(await c.next('echo'), { event: 'echo', data: { n: 1 } });
    c.emit('join', { rooms: ['public-news', 'private'] });
    const ws = app.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE });
    await until(() => ws.getClients({ id: c.id })?.rooms.has('public-news'), 2000, 'join');
    assert.ok(!ws.getClients({ id: c.id }).rooms.has('private'));
    const res = await fetch(`http://127.0.0.1:${port}/api/notify/public-news`, { method: 'POST' }).then(r => r.json());
    assert.deepEqual(res, { ok: true });
    assert.deepEqual(await c.next('notice'), { event: 'notice', data: 'from REST' });
    const bad = await Client.open(`ws://127.0.0.1:${port}/ws`);
    bad.emit('authenticate', {});
    assert.deepEqual(await bad.closed, { code: 4003, reason: 'Authentication failed' });
    await c.close();
    await until(() => events.some(e => e[0] === 'disconnected' && e[1] === 'u-n'), 2000, 'disconnect handler');
    assert.deepEqual(events.find(e => e[0] === 'connected'), ['connected', 'u-n', { t: 'n' }]);
  });

  test("the original's serverOptions.perMessageDeflate, bound as SERVER_OPTIONS, compresses on the application port", async () => {
    const { app, port } = await start({ serverOptions: { serverOptions: { perMessageDeflate: true } } });
    const raw = await rawSocket(port, '/ws', 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n');
    assert.match(raw.head, /Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover/);
    const frames = serverFrames(raw.sock);
    raw.sock.write(maskedFrame(0x1, Buffer.from(JSON.stringify({ event: 'authenticate', data: { token: 'z' } }))));
    const first = await frames.next(0x1);
    const text = first.rsv1
      ? zlib.inflateRawSync(Buffer.concat([first.payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: zlib.constants.Z_SYNC_FLUSH })
      : first.payload;
    const connected = JSON.parse(text);
    const ws = app.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE });
    ws.sendToClient({ clientId: connected.data.id, event: 'big', data: 'abc'.repeat(500) });
    const big = await frames.next(0x1);
    assert.ok(big.rsv1, 'sent compressed');
    assert.equal(ws.stats().deflateCompressed, 1);
    raw.sock.destroy();
  });

  test('a port of its own, when the server options ask for one', async () => {
    const own = await freePort();
    const { app, port } = await start({ serverOptions: { port: own, host: '127.0.0.1' } });
    const c = await Client.auth(`ws://127.0.0.1:${own}/ws`, { token: 'b' });
    assert.equal(c.connected.userId, 'u-b');
    assert.ok(app.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE }).isRunning());
    assert.deepEqual(await fetch(`http://127.0.0.1:${port}/api/hello`).then(r => r.json()), { hello: 'world' });
    c.close();
  });

  if (isBun) {
    test('Bun: the application still sees the real client, and app.stop() frees the port', async () => {
      const { app, port } = await start();
      const seen = await new Promise((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => s.write('GET /api/whoami HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'));
        let got = '';
        s.on('data', d => (got += d));
        s.on('end', () => resolve({ body: JSON.parse(got.slice(got.indexOf('\r\n\r\n') + 4)), localPort: s.localPort }));
        s.on('error', reject);
      });
      assert.deepEqual(seen.body, { address: '127.0.0.1', port: seen.localPort });
      assert.equal(app.getServerInstance().port, port);
      const ws = app.get({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE });
      app.stop();
      await until(() => !ws.isRunning(), 3000, 'WebSocket server stopped with the application');
      await until(
        () =>
          new Promise(resolve => {
            const s = net.connect(port, '127.0.0.1');
            s.on('connect', () => (s.destroy(), resolve(false)));
            s.on('error', () => resolve(true));
          }),
        5000,
        'port freed',
      );
    });
  }
});
