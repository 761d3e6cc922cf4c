// RFC 6455 violations get their close code before the TCP close
// (docs/PROTOCOL.md §7): real bytes on a raw socket, after authenticating,
// as a misbehaving client would send them.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Client, startServer, stopAll, rawSocket, maskedFrame, serverFrames } from './helpers.mjs';

after(stopAll);

/** A raw socket past authentication, reading the server's frames. */
async function authenticated(port) {
  const raw = await rawSocket(port);
  const frames = serverFrames(raw.sock);
  raw.sock.write(maskedFrame(0x1, Buffer.from(JSON.stringify({ event: 'authenticate', data: { token: 't' } }))));
  const connected = await frames.next(0x1);
  assert.equal(JSON.parse(connected.payload).event, 'connected');
  return { ...raw, frames };
}

/** The close code and reason of the server's close frame (null: none came). */
async function closeOf(frames) {
  const f = await frames.next(0x8);
  if (!f) return null;
  return { code: f.payload.readUInt16BE(0), reason: f.payload.subarray(2).toString() };
}

const text = s => Buffer.from(s);
const cases = [
  // [what, bytes, code, stats key]
  ['invalid UTF-8 in a text frame', maskedFrame(0x1, Buffer.from([0x7b, 0xc3, 0x28, 0x7d])), 1007, 'invalidUtf8'],
  ['an unmasked client frame', Buffer.concat([Buffer.from([0x81, 2]), text('{}')]), 1002, 'unmaskedFrame'],
  ['reserved opcode 3', maskedFrame(0x3, text('x')), 1002, 'reservedOpcode'],
  ['reserved control opcode 0xB', maskedFrame(0xb, text('x')), 1002, 'reservedOpcode'],
  ['a continuation with no message started', maskedFrame(0x0, text('x')), 1002, 'badContinuation'],
  [
    'a new text message inside a fragmented one',
    Buffer.concat([maskedFrame(0x1, text('{"ev')).fill(0x01, 0, 1), maskedFrame(0x1, text('x'))]),
    1002,
    'badContinuation',
  ],
  ['reserved bit RSV2 set', (() => { const f = maskedFrame(0x1, text('{}')); f[0] |= 0x20; return f; })(), 1002, 'reservedBits'],
  ['a fragmented ping', (() => { const f = maskedFrame(0x9, text('p')); f[0] &= 0x7f; return f; })(), 1002, 'badControlFrame'],
  ['a ping over 125 bytes', maskedFrame(0x9, Buffer.alloc(126, 0x61)), 1002, 'badControlFrame'],
  ['a close frame with a 1-byte payload', maskedFrame(0x8, Buffer.from([3])), 1002, 'badCloseFrame'],
  ['a close reason that is not UTF-8', maskedFrame(0x8, Buffer.from([0x03, 0xe8, 0xff, 0xfe])), 1007, 'invalidUtf8'],
  ['a text frame over maxPayloadLength', maskedFrame(0x1, Buffer.alloc(2000, 0x61)), 1009, 'messageTooBig'],
  [
    'a fragmented message over maxPayloadLength',
    Buffer.concat([
      (() => { const f = maskedFrame(0x1, Buffer.alloc(700, 0x61)); f[0] &= 0x7f; return f; })(),
      (() => { const f = maskedFrame(0x0, Buffer.alloc(700, 0x61)); f[0] &= 0x7f; return f; })(),
    ]),
    1009,
    'messageTooBig',
  ],
];

describe('protocol violations get their RFC 6455 close code', () => {
  for (const [what, bytes, code, key] of cases) {
    test(`${what}: close ${code}, counted as ${key}`, async () => {
      const { ws } = await startServer({ metricsPath: '/metrics', serverOptions: { maxPayloadLength: 1024 } });
      const c = await authenticated(ws.port);
      c.sock.write(bytes);
      const close = await closeOf(c.frames);
      assert.ok(close, 'a close frame came before the TCP close');
      assert.equal(close.code, code);
      await c.closed;
      const counts = ws.stats().protocolErrors;
      assert.equal(counts[key], 1, JSON.stringify(counts));
      assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), 1);
      const label = key.replace(/[A-Z]/g, m => '_' + m.toLowerCase());
      assert.match(ws.metrics(), new RegExp(`ignis_ws_protocol_errors_total\\{reason="${label}",server="[^"]+"\\} 1\\n`));
      // The server goes on serving.
      const d = await authenticated(ws.port);
      d.sock.destroy();
    });
  }

  test('a peer that resets or ends its socket stops quietly, uncounted', async () => {
    const { ws } = await startServer();
    const a = await authenticated(ws.port);
    a.sock.resetAndDestroy();
    const b = await authenticated(ws.port);
    b.sock.end();
    await Promise.all([a.closed, b.closed]);
    const counts = ws.stats().protocolErrors;
    assert.equal(Object.values(counts).reduce((x, y) => x + y, 0), 0, JSON.stringify(counts));
  });

  // Node's `ws` exposes the socket under the library to write a bad frame
  // on; Bun's built-in `ws` has none (the raw-socket cases cover Bun).
  const underlying = !process.versions.bun;
  if (underlying) test('a ws client sees the code and reason in its close event', async () => {
    const { url } = await startServer();
    const c = await Client.auth(url);
    // Invalid UTF-8 written under the library, on its own socket.
    c.sock._socket.write(maskedFrame(0x1, Buffer.from([0xff])));
    const closed = await c.closed;
    assert.equal(closed.code, 1007);
    assert.equal(closed.reason, 'Invalid UTF-8');
  });
});

describe('malformed upgrades', () => {
  /** Sends `head` and resolves with the HTTP status line's code. */
  function statusOf(port, head) {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(head));
      let got = '';
      s.on('data', d => {
        got += d.toString('latin1');
        const m = /^HTTP\/1\.1 (\d{3})/.exec(got);
        if (m) {
          resolve(Number(m[1]));
          s.destroy();
        }
      });
      s.on('error', reject);
      s.on('close', () => resolve(null));
    });
  }
  const upgrade = extra =>
    'GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
    extra +
    '\r\n';

  test('a 64 KiB request header gets 431; other malformed upgrades keep 400/404/426', async () => {
    const { ws } = await startServer();
    assert.equal(await statusOf(ws.port, upgrade(`X-Big: ${'a'.repeat(64 * 1024)}\r\n`)), 431);
    assert.equal(await statusOf(ws.port, '\x00\x01 nonsense\r\n\r\n'), 400);
    assert.equal(await statusOf(ws.port, upgrade('').replace('/ws', '/elsewhere')), 404);
    assert.equal(await statusOf(ws.port, 'GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'), 426);
    assert.equal(await statusOf(ws.port, upgrade('')), 101);
  });
});
