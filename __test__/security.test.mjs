// Hostile input and abuse limits: Origin allow-list, connection limits,
// frame rate, pending authentications, rooms per client, wss://, metrics.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import WebSocket from 'ws';
import { Client, startServer, stopAll, sleep, until } from './helpers.mjs';
import { makeCertificates } from './redis-helpers.mjs';

after(stopAll);

/** Opens a socket with headers; resolves with 'open' or the HTTP status of a refused upgrade. */
function attempt(url, headers = {}, extra = {}) {
  return new Promise(resolve => {
    const s = new WebSocket(url, { headers, ...extra });
    s.once('open', () => resolve({ open: true, sock: s }));
    s.once('unexpected-response', (_req, res) => resolve({ status: res.statusCode }));
    s.once('error', e => resolve({ error: e.message }));
  });
}

function get(port, path) {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path }, res => {
        let body = '';
        res.on('data', d => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, body, type: res.headers['content-type'] }));
      })
      .on('error', reject);
  });
}

describe('origin check', () => {
  test('only allowed origins may upgrade; others get HTTP 403', async () => {
    const { url } = await startServer({ allowedOrigins: ['https://app.example.com', '*.trusted.io'] });
    const ok = await attempt(url, { Origin: 'https://app.example.com' });
    assert.equal(ok.open, true);
    ok.sock.close();
    const sub = await attempt(url, { Origin: 'https://eu.trusted.io' });
    assert.equal(sub.open, true);
    sub.sock.close();
    assert.equal((await attempt(url, { Origin: 'https://evil.example' })).status, 403);
    assert.equal((await attempt(url, { Origin: 'https://trusted.io.evil.example' })).status, 403);
    const noOrigin = await attempt(url);
    assert.equal(noOrigin.open, true, 'non-browser clients send no Origin');
    noOrigin.sock.close();
  });

  test('plain HTTP requests get 426 on the path and 404 elsewhere', async () => {
    const { ws } = await startServer();
    assert.equal((await get(ws.port, '/ws')).status, 426);
    assert.equal((await get(ws.port, '/elsewhere')).status, 404);
  });
});

describe('limits', () => {
  test('maxConnections: upgrades beyond it get 503', async () => {
    const { url, ws } = await startServer({ limits: { maxConnections: 2 } });
    const a = await Client.open(url);
    const b = await Client.open(url);
    await until(() => ws.getClients().size === 2, 2000, 'two clients');
    assert.equal((await attempt(url)).status, 503);
    assert.equal(ws.stats().connectionsRefused, 1);
    a.close();
    await until(() => ws.getClients().size === 1, 2000, 'one left');
    const c = await attempt(url);
    assert.equal(c.open, true, 'room again once a client left');
    c.sock.close();
    b.close();
  });

  test('maxConnectionsPerIp: connections beyond it from one address get 429', async () => {
    const { url } = await startServer({ limits: { maxConnectionsPerIp: 2 } });
    const a = await Client.open(url);
    const b = await Client.open(url);
    assert.equal((await attempt(url)).status, 429);
    a.close();
    b.close();
  });

  test('maxFramesPerSecond: a flooding client is closed 1008, others carry on', async () => {
    const { url } = await startServer({ limits: { maxFramesPerSecond: 50 }, messageHandler: () => {} });
    const flood = await Client.auth(url);
    const calm = await Client.auth(url, { token: 'calm' });
    for (let i = 0; i < 200; i++) flood.emit('spam', i);
    assert.deepEqual(await flood.closed, { code: 1008, reason: 'Rate limit exceeded' });
    calm.emit('heartbeat');
    calm.emit('authenticate', {});
    await calm.next('error');
    calm.close();
  });

  test('maxFramesPerSecond counts per one-second window: a client under it each second stays', async () => {
    const { url } = await startServer({ limits: { maxFramesPerSecond: 5 }, messageHandler: () => {} });
    const c = await Client.auth(url);
    // 12 frames in all, at most 4 in any second: over the limit only if
    // the window never starts again.
    for (let burst = 0; burst < 3; burst++) {
      for (let i = 0; i < 4; i++) c.emit('tick', i);
      await sleep(1100);
    }
    // Still open: the server answers.
    c.emit('authenticate', {});
    await c.next('error');
    c.close();
  });

  test('maxPendingAuthentications: authentications beyond it are closed 1013', async () => {
    const { url, ws } = await startServer({ limits: { maxPendingAuthentications: 2 }, authenticateFn: () => new Promise(() => {}) });
    const a = await Client.open(url);
    const b = await Client.open(url);
    a.emit('authenticate', {});
    b.emit('authenticate', {});
    await until(() => [...ws.getClients().values()].filter(c => c.state === 'authenticating').length === 2, 2000, 'two pending');
    const c = await Client.open(url);
    c.emit('authenticate', {});
    assert.deepEqual(await c.closed, { code: 1013, reason: 'Too many pending authentications' });
    a.close();
    await until(() => ws.stats().authenticating === 1, 2000, 'a gone');
    const d = await Client.open(url);
    d.emit('authenticate', {});
    await sleep(100);
    assert.equal(ws.stats().authenticating, 2, 'a slot freed by a disconnect is reused');
    b.close();
    d.close();
  });

  test('maxRoomsPerClient caps rooms joined through join', async () => {
    const { url, ws } = await startServer({ limits: { maxRoomsPerClient: 3 }, validateRoomFn: ({ rooms }) => rooms });
    const c = await Client.auth(url);
    c.emit('join', { rooms: ['r1', 'r2'] });
    await until(() => ws.getClients({ id: c.id }).rooms.has('r2'), 2000, 'first join');
    c.emit('join', { rooms: ['r3', 'r4', 'r5'] });
    await until(() => ws.stats().roomsLimited === 1, 2000, 'limit hit');
    const rooms = ws.getClients({ id: c.id }).rooms;
    assert.ok(rooms.has('r3') && !rooms.has('r4') && !rooms.has('r5'));
    assert.ok(rooms.has(c.id) && rooms.has('ws-default'), 'own and default rooms untouched');
    c.close();
  });
});

describe('wss:// and metrics', () => {
  test('tls: {cert, key} serves wss:// (self-signed certificate)', async () => {
    const certs = makeCertificates();
    try {
      const { ws } = await startServer({ tls: { cert: fs.readFileSync(certs.cert), key: fs.readFileSync(certs.key, 'utf8') } });
      const url = `wss://127.0.0.1:${ws.port}/ws`;
      const refused = await attempt(url);
      assert.ok(refused.error, 'an unknown CA is refused by the client');
      const ok = await attempt(url, {}, { ca: certs.ca });
      assert.equal(ok.open, true);
      ok.sock.send(JSON.stringify({ event: 'authenticate', data: { token: 'tls' } }));
      const m = await new Promise(r => ok.sock.once('message', d => r(JSON.parse(d.toString()))));
      assert.equal(m.event, 'connected');
      ok.sock.close();
    } finally {
      fs.rmSync(certs.dir, { recursive: true, force: true });
    }
  });

  test('bad tls material rejects configure() naming the option', async () => {
    const { lib } = await import('./helpers.mjs');
    const ws = new lib.WebSocketServer({
      host: '127.0.0.1',
      authenticateFn: () => ({}),
      logLevel: 'silent',
      tls: { cert: '-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n', key: '-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n' },
    });
    await assert.rejects(ws.configure(), /tls/);
  });

  test('metricsPath serves Prometheus text on the same port', async () => {
    const { ws, url } = await startServer({ metricsPath: '/metrics' });
    const c = await Client.auth(url);
    c.send('garbage');
    await c.next('error');
    const res = await get(ws.port, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.type, /text\/plain/);
    assert.match(res.body, /ignis_ws_connections\{server="WEBSOCKET_SERVER",state="authenticated"\} 1/);
    assert.match(res.body, /ignis_ws_invalid_frames_total\{server="WEBSOCKET_SERVER"\} 1/);
    assert.equal(ws.metrics().split('\n')[0].startsWith('# HELP'), true);
    c.close();
  });
});

describe('logs', () => {
  test('logFormat json: one object per line with level, server, msg and the client id; no tokens in any line', async () => {
    const lines = [];
    const sink = l => lines.push(l);
    const secret = 'SECRET-TOKEN-8d1f';
    const { url, ws } = await startServer({
      identifier: 'json-logs',
      logFormat: 'json',
      logLevel: 'debug',
      logger: { error: sink, warn: sink, info: sink, debug: sink },
      authenticateFn: d => (d.token === secret ? { userId: 'alice' } : null),
      messageHandler: () => {
        throw new Error('handler failed');
      },
    });
    const c = await Client.auth(url, { token: secret });
    c.emit('chat', { password: secret });
    const bad = await Client.open(url);
    bad.emit('authenticate', { token: 'wrong-' + secret });
    await bad.closed;
    await until(() => lines.some(l => l.includes('handler failed')), 2000, 'handler error logged');
    c.close();
    await until(() => lines.some(l => l.includes('Client disconnected')), 2000, 'disconnect logged');
    const parsed = lines.map(l => JSON.parse(l));
    const auth = parsed.find(p => p.msg === 'Authenticated');
    assert.equal(auth.id, c.id);
    assert.equal(auth.userId, 'alice');
    assert.equal(auth.server, 'json-logs');
    assert.equal(auth.level, 'info');
    assert.ok(!Number.isNaN(Date.parse(auth.time)));
    assert.ok(parsed.some(p => p.level === 'error' && p.id === c.id), 'handler errors carry the client id');
    assert.ok(lines.every(l => !l.includes(secret)), 'no token or message content in logs');
    await ws.shutdown();
  });
});
