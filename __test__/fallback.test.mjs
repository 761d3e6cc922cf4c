// One public port for WebSocket and the application's HTTP: connections
// that do not open with an upgrade at `path` are spliced to the
// application's server (`httpFallback`, any runtime; `fetch`, Bun).
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { Client, lib, stopAll, until } from './helpers.mjs';
import { freePort } from './redis-helpers.mjs';

const isBun = !!globalThis.Bun;
const stop = [];
after(async () => {
  await Promise.all(stop.map(f => f()));
  await stopAll();
});

const auth = d => (d.token ? { userId: 'u-' + d.token } : null);

/** The application's own HTTP server on a loopback port. */
async function appServer() {
  const seen = { connections: 0, upgrades: [] };
  const server = http.createServer(async (req, res) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, length: body.length, tail: body.slice(-8) }));
  });
  server.on('connection', () => seen.connections++);
  server.on('upgrade', (req, socket) => {
    seen.upgrades.push(req.url);
    socket.end('HTTP/1.1 400 Bad Request\r\nx-from: app\r\ncontent-length: 0\r\n\r\n');
  });
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  stop.push(() => new Promise(r => server.close(r)));
  return { server, seen, port: server.address().port };
}

async function wsServer(opts) {
  const ws = new lib.WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', authenticateFn: auth, ...opts });
  await ws.configure();
  stop.push(() => ws.shutdown());
  return ws;
}

/** Sends raw bytes, resolves with everything received until the peer closes. */
function rawExchange(port, text) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(text));
    let got = '';
    s.on('data', d => (got += d.toString('latin1')));
    s.on('end', () => resolve({ text: got, localPort: s.localPort }));
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error('timed out')));
  });
}

describe(`httpFallback on ${isBun ? 'Bun' : 'Node'}`, () => {
  test('REST, large bodies and keep-alive reach the application; upgrades at path stay native', async () => {
    const app = await appServer();
    const ws = await wsServer({ httpFallback: `127.0.0.1:${app.port}` });
    const base = `http://127.0.0.1:${ws.port}`;
    assert.deepEqual(await fetch(`${base}/api/hello?x=1`).then(r => r.json()), { method: 'GET', url: '/api/hello?x=1', length: 0, tail: '' });
    const big = 'a'.repeat(300_000) + 'THE-END!';
    const posted = await fetch(`${base}/upload`, { method: 'POST', body: big }).then(r => r.json());
    assert.deepEqual(posted, { method: 'POST', url: '/upload', length: big.length, tail: 'THE-END!' });

    // Two requests on one kept-alive connection: one connection at the application.
    const before = app.seen.connections;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const get = path =>
      new Promise((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: ws.port, path, agent }, res => {
          let b = '';
          res.on('data', d => (b += d));
          res.on('end', () => resolve(JSON.parse(b)));
        }).on('error', reject);
      });
    assert.equal((await get('/one')).url, '/one');
    assert.equal((await get('/two')).url, '/two');
    agent.destroy();
    assert.equal(app.seen.connections - before, 1);

    const c = await Client.auth(`ws://127.0.0.1:${ws.port}/ws`, { token: 'f' });
    assert.equal(c.connected.userId, 'u-f');
    c.close();

    // An upgrade elsewhere is the application's business.
    const other = await rawExchange(
      ws.port,
      'GET /other HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n',
    );
    assert.match(other.text, /^HTTP\/1.1 400 Bad Request\r\nx-from: app/);
    assert.deepEqual(app.seen.upgrades, ['/other']);
    assert.ok(ws.stats().httpForwarded >= 3, `httpForwarded ${ws.stats().httpForwarded}`);
    assert.equal(ws.stats().httpForwardErrors, 0);
  });

  test('an unreachable application gets 502 and a counter; the server keeps serving', async () => {
    const dead = await freePort();
    const ws = await wsServer({ httpFallback: { host: '127.0.0.1', port: dead } });
    const res = await fetch(`http://127.0.0.1:${ws.port}/api`);
    assert.equal(res.status, 502);
    assert.equal(ws.stats().httpForwardErrors, 1);
    assert.match(ws.metrics(), /ignis_ws_http_forward_errors_total\{[^}]*\} 1/);
    const c = await Client.auth(`ws://127.0.0.1:${ws.port}/ws`, { token: 'g' });
    c.close();
  });

  test('shutdown does not wait for idle kept-alive HTTP connections', async () => {
    const app = await appServer();
    const ws = new lib.WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', authenticateFn: auth, httpFallback: `127.0.0.1:${app.port}` });
    await ws.configure();
    const idle = net.connect(ws.port, '127.0.0.1');
    await new Promise(r => idle.once('connect', r));
    idle.write('GET /x HTTP/1.1\r\nhost: x\r\n\r\n');
    await new Promise(r => idle.once('data', r));
    const t = performance.now();
    await ws.shutdown();
    const took = performance.now() - t;
    idle.destroy();
    assert.ok(took < 1500, `shutdown took ${took} ms`);
  });

  if (isBun) {
    test('fetch: the application handler on the same port; requestIP() gives the real client', async () => {
      const ws = await wsServer({
        fetch: (req, server) => {
          const ip = server.requestIP(req);
          return Response.json({ path: new URL(req.url).pathname, ip, port: server.port });
        },
      });
      assert.ok(ws.getFetchServer());
      const raw = await rawExchange(ws.port, 'GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
      const body = JSON.parse(raw.text.slice(raw.text.indexOf('\r\n\r\n') + 4));
      assert.equal(body.path, '/who');
      assert.equal(body.port, ws.port);
      assert.deepEqual(body.ip, { address: '127.0.0.1', family: 'IPv4', port: raw.localPort });
      const c = await Client.auth(`ws://127.0.0.1:${ws.port}/ws`, { token: 'b' });
      assert.equal(c.connected.userId, 'u-b');
      c.close();
    });
  } else {
    test('fetch is refused on Node with a pointer to attach()', async () => {
      const ws = new lib.WebSocketServer({ port: 0, logLevel: 'silent', authenticateFn: auth, fetch: () => new Response('x') });
      await assert.rejects(ws.configure(), /needs Bun; on Node pass your http.Server to attach/);
    });
  }
});
