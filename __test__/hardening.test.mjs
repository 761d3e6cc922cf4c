// Conditions of production that the happy path never creates: a log pipe
// nobody reads, a connection storm, a client that stops reading (real TCP),
// and a real Prometheus parser reading /metrics. Each prints its figure as
// a `# figure:` line (docs/RELIABILITY.md quotes them).
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import WebSocket from 'ws';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, lib, startServer, stopAll, sleep, until, needs, hasCommand } from './helpers.mjs';
import { soakServer } from './soak-helpers.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const runtime = process.versions.bun ? 'Bun' : 'Node';
const figure = line => process.stderr.write(`# figure: ${line} (${runtime})\n`);

const children = new Set();
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await stopAll();
});

/** Opens and authenticates `n` clients at once; resolves with them and each one's time to `connected`. */
async function authenticateMany(url, n, timeout) {
  const started = performance.now();
  const results = await Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise(resolve => {
          const s = new WebSocket(url);
          const timer = setTimeout(() => resolve({ s, ok: false, why: 'timeout' }), timeout);
          s.on('error', () => {});
          s.once('close', code => (clearTimeout(timer), resolve({ s, ok: false, why: `closed ${code}` })));
          s.once('open', () => s.send(JSON.stringify({ event: 'authenticate', data: { userId: 'u' + i } })));
          s.on('message', d => {
            if (JSON.parse(d.toString()).event === 'connected') {
              clearTimeout(timer);
              resolve({ s, ok: true, ms: performance.now() - started });
            }
          });
        }),
    ),
  );
  return results;
}

describe('a log pipe nobody reads', () => {
  test('300 clients connect while stderr is not read; lines are dropped and counted, then the log resumes', async () => {
    // A small queue so that 300 clients overflow it (default 16 384 lines).
    const srv = await soakServer(
      { logLevel: 'info', heartbeatInterval: 60_000 },
      { IGNIS_WS_LOG_QUEUE_LINES: '64' },
      { sameRuntime: true, stderr: 'pipe' },
    );
    try {
      // Never read until below: the pipe fills, and writes to it block or
      // fail with EAGAIN. (Node and Bun give children a socket pair, whose
      // buffers take a few hundred KiB: fill them first.)
      srv.child.stderr.pause();
      for (let i = 0; i < 20 && (await srv.stats()).logDropped === 0; i++) await srv.logLines(10_000);
      assert.ok((await srv.stats()).logDropped > 0, 'the pipe is full and the queue overflows');
      const results = await authenticateMany(srv.url, 300, 3000);
      const ok = results.filter(r => r.ok);
      figure(`log pipe stalled: ${ok.length}/300 authenticated within 3 s, slowest ${Math.round(Math.max(...ok.map(r => r.ms)))} ms`);
      assert.equal(ok.length, 300, `failures: ${[...new Set(results.filter(r => !r.ok).map(r => r.why))].join(', ')}`);
      const stats = await srv.stats();
      assert.match(await srv.metrics(), /ignis_ws_log_dropped_total\{server="[^"]+"\} [1-9]/);
      figure(`log pipe stalled: ${stats.logDropped} lines dropped`);

      // Reading again: the queued lines come out, the writer says how many
      // were lost, and new lines follow.
      let text = '';
      srv.child.stderr.on('data', d => (text += d));
      srv.child.stderr.resume();
      await until(() => /log line\(s\) dropped/.test(text), 5000, 'the dropped-lines notice');
      for (const r of results) r.s.close();
      await until(() => /Client disconnected/.test(text.slice(text.search(/log line\(s\) dropped/))), 5000, 'log lines after the notice');
    } finally {
      await srv.stop();
    }
  });
});

describe('a connection storm', () => {
  test("2000 clients opening at once all open quickly (accept queue at the kernel's cap)", async () => {
    const { ws, url } = await startServer({ heartbeatInterval: 60_000 });
    const n = 2000;
    // The clients live in a process of their own, as real ones do: in this
    // one they would hold the JavaScript thread the server may run on.
    const child = spawn('node', [path.join(here, 'fixtures', 'open-storm.mjs'), url, String(n)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.add(child);
    let out = '';
    child.stdout.on('data', d => (out += d));
    await until(() => out.includes('\n'), 30_000, 'the storm to open');
    const ms = JSON.parse(out);
    assert.equal(ms.length, n);
    const p99 = ms[Math.floor(n * 0.99) - 1];
    const max = ms[n - 1];
    figure(`storm of ${n}: p50 ${Math.round(ms[n / 2])} ms, p99 ${Math.round(p99)} ms, max ${Math.round(max)} ms`);
    await until(() => ws.stats().connections === n, 5000, 'every connection registered');
    child.stdin.end();
    await until(() => ws.stats().connections === 0, 10_000, 'every connection closed');
    children.delete(child);
    // A SYN dropped by a full accept queue is retransmitted after 1 s. With
    // the old queue of 128 most of the storm waited for that (p99 1.2-1.4 s);
    // on these shared 2 cores a rare straggler still can.
    const late = ms.filter(x => x >= 1000).length;
    assert.ok(p99 < 900, `p99 open took ${Math.round(p99)} ms`);
    assert.ok(late <= n / 100, `${late} of ${n} opens waited for a SYN retransmit`);
  });
});

describe('a client that stops reading (real TCP)', () => {
  /**
   * A client in a Node process of its own that authenticates, joins `room`
   * and stops reading (Bun's paused sockets keep reading into memory).
   */
  async function stalledClient(ws, room, trickleMs) {
    const before = ws.getClientsByRoom({ room }).length;
    const child = spawn('node', [path.join(here, 'fixtures', 'stalled-client.mjs'), String(ws.port), room, ...(trickleMs ? [String(trickleMs)] : [])], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.add(child);
    let out = '';
    child.stdout.on('data', d => (out += d));
    await until(() => out.includes('READY'), 5000, 'the stalled client ready');
    await until(() => ws.getClientsByRoom({ room }).length === before + 1, 3000, 'joined');
    return {
      stop: () => child.kill('SIGKILL'),
      /** Resolves true once the client has read `bytes` (it prints its count), false after `ms` or if it ends. */
      received(bytes, ms) {
        const read = () => Number([...out.matchAll(/RECEIVED (\d+)/g)].pop()?.[1] ?? 0);
        return until(() => read() >= bytes || child.exitCode !== null, ms, `${bytes} bytes read`)
          .then(() => read() >= bytes)
          .catch(() => false);
      },
    };
  }

  /**
   * Sends `mb` MiB to `room` in 64 KiB frames: enough to fill the
   * loopback's socket buffers (several MiB with autotuning) and then the
   * client's queue.
   */
  function flood(ws, room, mb) {
    const blob = 'x'.repeat(64 * 1024);
    for (let i = 0; i < mb * 16; i++) ws.sendToRoom({ room, event: 'flood', data: blob });
  }

  test('the heartbeat closes it on schedule, and its TCP connection is dropped', async () => {
    const gone = [];
    const { ws } = await startServer({
      heartbeatInterval: 500,
      heartbeatTimeout: 3000,
      validateRoomFn: ({ rooms }) => rooms,
      clientDisconnectedFn: ({ clientId }) => gone.push(clientId),
    });
    const raw = await stalledClient(ws, 'stall');
    const since = performance.now();
    flood(ws, 'stall', 32);
    await until(() => ws.getClients().size === 0, 6000, 'the stalled client removed');
    const took = performance.now() - since;
    figure(`stalled reader removed by the heartbeat (500 ms / 3 s) after ${took} ms`);
    // It really stalled: its queue overflowed.
    assert.ok(ws.stats().droppedBackpressure > 0);
    assert.ok(took < 4500, `took ${took} ms`);
    await until(() => gone.length === 1, 2000, 'clientDisconnectedFn');
    // The close frame cannot be written; the socket is dropped after the
    // close handshake's grace (2 s): the metric of running connection tasks
    // goes back to 0.
    await until(() => /ignis_ws_sockets\{server="[^"]+"\} 0/.test(ws.metrics()), 4000, 'the connection task ended');
    raw.stop();
  });

  test('sendTimeout drops it when a write makes no progress', async () => {
    const { ws } = await startServer({
      heartbeatInterval: 60_000,
      sendTimeout: 1000,
      validateRoomFn: ({ rooms }) => rooms,
    });
    const raw = await stalledClient(ws, 'stall');
    const since = performance.now();
    flood(ws, 'stall', 32);
    await until(() => ws.getClients().size === 0, 4000, 'dropped by sendTimeout');
    const took = performance.now() - since;
    figure(`stalled reader dropped by sendTimeout 1000 ms after ${took} ms`);
    assert.equal(ws.stats().sendTimeouts, 1);
    raw.stop();
  });

  test('sendTimeout keeps a reader that is slow but reads: each read is progress', async () => {
    const { ws } = await startServer({
      heartbeatInterval: 60_000,
      sendTimeout: 1000,
      serverOptions: { backpressureLimit: 64 * 1024 * 1024 },
      validateRoomFn: ({ rooms }) => rooms,
    });
    // One 32 MiB frame to a reader that reads for 10 ms every 400 ms: a
    // socket buffer's worth per read, so the one write waits on the socket
    // for several seconds in all, never 1 s without progress.
    const raw = await stalledClient(ws, 'trickle', 400);
    const since = performance.now();
    ws.sendToRoom({ room: 'trickle', event: 'big', data: 'x'.repeat(32 * 1024 * 1024) });
    const got = await raw.received(32 * 1024 * 1024, 20000);
    const took = performance.now() - since;
    figure(`32 MiB to a reader reading 10 ms in 400: ${took} ms, never dropped`);
    assert.equal(ws.stats().sendTimeouts, 0);
    assert.ok(got, 'the reader did not get the frame');
    assert.equal(ws.getClients().size, 1);
    assert.ok(took > 1000, `the write waited on the socket less than sendTimeout (${took} ms)`);
    raw.stop();
  });

  test('closeOnBackpressureLimit closes it at once', async () => {
    const { ws } = await startServer({
      heartbeatInterval: 60_000,
      serverOptions: { closeOnBackpressureLimit: true, backpressureLimit: 256 * 1024 },
      validateRoomFn: ({ rooms }) => rooms,
    });
    const raw = await stalledClient(ws, 'stall');
    flood(ws, 'stall', 32);
    await until(() => ws.getClients().size === 0, 1000, 'closed at the limit');
    raw.stop();
  });

  test('a burst through Redis to its room: its drops are counted at the limit, a member that reads gets every publication once, in order', { skip: noRedis }, async () => {
    // Bus bursts reach members as shared runs of publications; a run that
    // would pass the stalled member's limit is offered frame by frame.
    const redis = await startRedis();
    try {
      const { ws, url } = await startServer({
        heartbeatInterval: 60_000,
        redis: redis.url,
        serverOptions: { backpressureLimit: 1024 * 1024 },
        validateRoomFn: ({ rooms }) => rooms,
      });
      const raw = await stalledClient(ws, 'burst');
      const reader = await Client.auth(url, { token: 'reader' });
      reader.emit('join', { rooms: ['burst'] });
      await until(() => ws.getClientsByRoom({ room: 'burst' }).length === 2, 2000, 'the reader joined');
      await sleep(150); // the room's subscription on the bus
      const emitter = new lib.WebSocketEmitter({ redis: redis.url });
      await emitter.configure();
      const n = 2000;
      const pad = 'x'.repeat(8 * 1024); // 16 MiB in all: past the kernel's buffers and the limit
      const got = () => reader.frames.filter(f => f.event === 'b').length;
      // Bursts of 100 (800 KiB, under the limit, so the member that reads
      // is never over it however far behind it falls), each published at
      // once and so fanned out in runs.
      for (let base = 0; base < n; base += 100) {
        await Promise.all(Array.from({ length: 100 }, (_, i) => emitter.toRoom({ room: 'burst', event: 'b', data: { k: base + i, pad } })));
        await until(() => got() === base + 100, 5000, `publications ${base}-${base + 99} at the reader`);
      }
      const ks = reader.frames.filter(f => f.event === 'b').map(f => f.data.k);
      assert.deepEqual(ks, Array.from({ length: n }, (_, k) => k), 'once each, in order');
      const dropped = ws.stats().droppedBackpressure;
      figure(`Redis burst of ${n} x 8 KiB to a room with a stalled member: ${dropped} dropped for it, ${n} of ${n} at the reader`);
      assert.ok(dropped > 0, 'the stalled member overflowed its limit');
      assert.ok(dropped < n, `not every publication was dropped for it (${dropped})`);
      await emitter.shutdown();
      reader.close();
      raw.stop();
    } finally {
      await redis.stop();
    }
  });

  test('shutdown() and an explicit close finish within the grace', async () => {
    const { ws } = await startServer({ heartbeatInterval: 60_000, validateRoomFn: ({ rooms }) => rooms });
    const a = await stalledClient(ws, 'stall');
    const b = await stalledClient(ws, 'stall');
    flood(ws, 'stall', 32);
    await sleep(100);
    const [first] = ws.getClientsByRoom({ room: 'stall' });
    ws.getClients({ id: first.id }).socket.close(4000, 'bye');
    await until(() => ws.getClients().size === 1, 1000, 'closed on request');
    const since = performance.now();
    await ws.shutdown();
    const took = performance.now() - since;
    figure(`shutdown() with a stalled reader took ${took} ms`);
    assert.ok(took < 3000, `shutdown took ${took} ms`);
    assert.match(ws.metrics(), /ignis_ws_sockets\{server="[^"]+"\} 0/);
    a.stop();
    b.stop();
  });
});

describe('/metrics read by Prometheus tooling', () => {
  const skip = needs('promtool', hasCommand('promtool'), 'Debian/Ubuntu: apt-get install prometheus');
  test('promtool check metrics accepts the page after traffic', { skip }, async () => {
    const { ws, url } = await startServer({ metricsPath: '/metrics', validateRoomFn: ({ rooms }) => rooms });
    const a = await Client.auth(url);
    const b = await Client.open(url);
    a.emit('join', { rooms: ['r1'] });
    await until(() => ws.getClientsByRoom({ room: 'r1' }).length === 1, 3000, 'joined');
    ws.sendToRoom({ room: 'r1', event: 'x', data: 1 });
    b.send('not json');
    await a.next('x');
    const res = await fetch(`http://127.0.0.1:${ws.port}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
    const page = await res.text();
    assert.match(page, /ignis_ws_connections\{[^}]*state="authenticated"[^}]*\} 1/);
    assert.match(page, /ignis_ws_invalid_frames_total\{server="[^"]+"\} 1/);
    const check = await new Promise(resolve => {
      const p = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', d => (out += d));
      p.stderr.on('data', d => (out += d));
      p.on('close', code => resolve({ code, out }));
      p.stdin.end(page);
    });
    assert.equal(check.code, 0, `promtool: ${check.out}`);
    figure('promtool check metrics: passed');
    a.close();
    b.close();
  });
});

describe('options of this hardening', () => {
  test('perMessageDeflate: wrong shapes and levels are refused naming the option; a valid one starts without a warning', async () => {
    for (const [opts, name] of [
      [{ perMessageDeflate: 'yes' }, /perMessageDeflate: expected true or an object/],
      [{ serverOptions: { perMessageDeflate: 1 } }, /serverOptions\.perMessageDeflate: expected true or an object/],
      [{ perMessageDeflate: { level: 10 } }, /perMessageDeflate\.level: expected 0 to 9/],
      [{ perMessageDeflate: { threshold: -1 } }, /perMessageDeflate\.threshold/],
    ]) {
      assert.throws(() => new lib.WebSocketServer({ authenticateFn: () => null, ...opts }), name, JSON.stringify(opts));
    }
    const lines = [];
    const logger = { error: l => lines.push(l), warn: l => lines.push(l), info: () => {} };
    await startServer({ logLevel: 'warn', logger, serverOptions: { perMessageDeflate: true } });
    assert.deepEqual(lines, []);
  });

  test("backlog: the default asks for the kernel's cap without a warning; more than the cap warns", async () => {
    const cap = Number(fs.readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
    const started = async backlog => {
      const lines = [];
      const logger = { error: l => lines.push(l), warn: l => lines.push(l), info: () => {} };
      await startServer({ logLevel: 'warn', logger, ...(backlog === undefined ? {} : { backlog }) });
      return lines.filter(l => /somaxconn/.test(l));
    };
    assert.deepEqual(await started(undefined), []);
    assert.deepEqual(await started(cap), []);
    const over = await started(cap + 1);
    assert.equal(over.length, 1, 'one warning');
    assert.match(over[0], new RegExp(`backlog.*${cap + 1}`));
    assert.match(over[0], new RegExp(`somaxconn.*${cap}`));
  });

  test('integer options larger than 32 bits are refused, not wrapped', () => {
    for (const opts of [{ limits: { maxConnections: 5e9 } }, { encryptedBatchLimit: 2 ** 32 }, { history: { size: 2 ** 40 } }]) {
      assert.throws(() => new lib.WebSocketServer({ authenticateFn: () => null, ...opts }), /at most 4294967295/, JSON.stringify(opts));
    }
  });

  test('backlog and sendTimeout are validated', () => {
    for (const [name, value] of [
      ['backlog', -1],
      ['backlog', 1.5],
      ['backlog', 'big'],
      ['backlog', 2 ** 32],
      ['sendTimeout', -1],
      ['sendTimeout', 'soon'],
    ]) {
      assert.throws(
        () => new lib.WebSocketServer({ authenticateFn: () => null, [name]: value }),
        err => err.message.includes(name),
        `${name}: ${value}`,
      );
    }
  });
});
