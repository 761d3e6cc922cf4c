// ws.attach(httpServer): REST and WebSocket on one Node port; the upgrade's
// socket is handed to the native server.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Client, lib, stopAll, until } from './helpers.mjs';

const isBun = !!globalThis.Bun;
const stop = [];
after(async () => {
  await Promise.all(stop.map(f => f()));
  await stopAll();
});

async function app(wsOpts = {}) {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ rest: true, url: req.url }));
  });
  const ws = new lib.WebSocketServer({
    logLevel: 'silent',
    authenticateFn: d => (d.token ? { userId: 'u-' + d.token } : null),
    validateRoomFn: ({ rooms }) => rooms,
    ...wsOpts,
  });
  ws.attach(server);
  await ws.configure();
  await new Promise(r => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  stop.push(async () => {
    await ws.shutdown();
    await new Promise(r => server.close(r));
  });
  return { server, ws, port };
}

describe(`attach(httpServer) on ${isBun ? 'Bun' : 'Node'}`, () => {
  if (isBun) {
    // Bun's node:http upgrade sockets carry no file descriptor: the upgrade
    // is refused clearly (503 and an error line), never half-served.
    test('on Bun an attached upgrade is refused with 503 and a log line saying why', async () => {
      const lines = [];
      const { port } = await app({ logLevel: 'error', logger: { error: l => lines.push(l), warn: () => {}, info: () => {} } });
      const { default: WebSocket } = await import('ws');
      const status = await new Promise(r => {
        const s = new WebSocket(`ws://127.0.0.1:${port}/ws`);
        s.once('unexpected-response', (_q, res) => r(res.statusCode));
        s.once('open', () => r('open'));
        s.once('error', () => {});
      });
      assert.equal(status, 503);
      assert.ok(lines.some(l => l.includes('no file descriptor')));
      const rest = await fetch(`http://127.0.0.1:${port}/api`).then(r => r.json());
      assert.equal(rest.rest, true, 'the application keeps serving');
    });
    return;
  }
  test('REST and WebSocket share the application port; the server opens none of its own', async () => {
    const { ws, port } = await app();
    assert.equal(ws.port, undefined, 'no port of its own');
    const rest = await fetch(`http://127.0.0.1:${port}/api/things`).then(r => r.json());
    assert.deepEqual(rest, { rest: true, url: '/api/things' });
    const c = await Client.auth(`ws://127.0.0.1:${port}/ws?x=1`, { token: 'a' });
    assert.equal(c.connected.userId, 'u-a');
    c.emit('join', { rooms: ['r'] });
    await until(() => ws.getClients({ id: c.id })?.rooms.has('r'), 2000, 'join');
    ws.sendToRoom({ room: 'r', event: 'hello', data: 1 });
    assert.deepEqual(await c.next('hello'), { event: 'hello', data: 1 });
    const rest2 = await fetch(`http://127.0.0.1:${port}/still`).then(r => r.json());
    assert.equal(rest2.url, '/still', 'REST still served after upgrades');
    await ws.shutdown();
    assert.deepEqual(await c.closed, { code: 1001, reason: 'Server shutting down' });
  });

  test('upgrades on other paths get 404; the origin check still applies', async () => {
    const { port } = await app({ allowedOrigins: ['https://ok.example'] });
    const other = new Client(`ws://127.0.0.1:${port}/nope`);
    await assert.rejects(other.opened);
    const { default: WebSocket } = await import('ws');
    const status = await new Promise(r => {
      const s = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Origin: 'https://evil.example' } });
      s.once('unexpected-response', (_q, res) => r(res.statusCode));
      s.once('open', () => r('open'));
      s.once('error', () => {});
    });
    assert.equal(status, 403);
  });

  test('many clients through one application port', async () => {
    const { ws, port } = await app();
    const clients = await Promise.all(Array.from({ length: 50 }, (_, i) => Client.auth(`ws://127.0.0.1:${port}/ws`, { token: 't' + i })));
    ws.broadcast({ event: 'all', data: 'x' });
    await Promise.all(clients.map(c => c.next('all')));
    clients.forEach(c => c.close());
  });
});
