// permessage-deflate (RFC 7692, `perMessageDeflate`): negotiation with real
// clients, compressed and plain members in one room, one compression per
// publication (fan-out, Redis, history replay), inbound compressed messages
// with their bounds, and clients with built-in encryption never compressed.
// Frames are read off raw sockets, so whether each came compressed (RSV1)
// is seen, on both runtimes.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { spawn } from 'node:child_process';
import WebSocket from 'ws';
import { startServer, stopAll, rawSocket, maskedFrame, serverFrames, until } from './helpers.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';
import { newKeyPair, deriveKey, decrypt } from './crypto-helpers.mjs';

const cleanups = [];
after(async () => {
  await stopAll();
  await Promise.all(cleanups.map(f => f()));
});

const ANSWER = 'permessage-deflate; server_no_context_takeover; client_no_context_takeover';
const OFFER = 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n';
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
/** A 3.4 KB JSON publication, as compressible as real ones. */
const BIG = { items: Array.from({ length: 60 }, (_, i) => ({ id: i, name: `item number ${i}`, tags: ['alpha', 'beta'] })) };

const inflate = payload => zlib.inflateRawSync(Buffer.concat([payload, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
/** A message deflated as a client does it: sync flush, its tail cut. */
function deflate(buf) {
  const z = zlib.deflateRawSync(buf, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  assert.deepEqual(z.subarray(-4), TAIL);
  return z.subarray(0, z.length - 4);
}

/** A raw client, offering the extension when `compressed`. */
async function rawClient(port, { compressed = true, path = '/ws' } = {}) {
  const raw = await rawSocket(port, path, compressed ? OFFER : '');
  const frames = serverFrames(raw.sock);
  return {
    ...raw,
    frames,
    negotiated: /sec-websocket-extensions: ([^\r]*)/i.exec(raw.head)?.[1] ?? null,
    send(obj, { compress = compressed } = {}) {
      const buf = Buffer.from(JSON.stringify(obj));
      raw.sock.write(compress ? maskedFrame(0x1, deflate(buf), { rsv1: true }) : maskedFrame(0x1, buf));
    },
    /** The next text message, inflated, and whether it came compressed. */
    async message() {
      const f = await frames.next(0x1);
      if (!f) return null;
      return { compressed: f.rsv1, msg: JSON.parse(f.rsv1 ? inflate(f.payload) : f.payload) };
    },
    async closeFrame() {
      const f = await frames.next(0x8);
      return f && { code: f.payload.readUInt16BE(0), reason: f.payload.subarray(2).toString() };
    },
  };
}

async function authed(port, opts = {}, data = { token: 't' }) {
  const c = await rawClient(port, opts);
  c.send({ event: 'authenticate', data });
  const m = await c.message();
  assert.equal(m.msg.event, 'connected');
  c.id = m.msg.data.id;
  c.connected = m.msg.data;
  return c;
}

/** Messages until `n` of event `event` came (other events are skipped). */
async function collect(c, event, n) {
  const got = [];
  while (got.length < n) {
    const m = await c.message();
    assert.ok(m, `socket ended after ${got.length} of ${n} ${event}`);
    if (m.msg.event === event) got.push(m);
  }
  return got;
}

function openWs(url, opts) {
  return new Promise((resolve, reject) => {
    const s = new WebSocket(url, opts);
    s.once('open', () => resolve(s));
    s.once('error', reject);
  });
}

describe('perMessageDeflate: negotiation', () => {
  test('an offer gets no context takeover on both sides; no offer, or the option off, gets plain frames', async () => {
    const { ws } = await startServer({ perMessageDeflate: true });
    assert.equal((await rawClient(ws.port)).negotiated, ANSWER);
    assert.equal((await rawClient(ws.port, { compressed: false })).negotiated, null);
    const off = await startServer({});
    assert.equal((await rawClient(off.ws.port)).negotiated, null, 'off by default, as in Bun');
    const viaServerOptions = await startServer({ serverOptions: { perMessageDeflate: true } });
    assert.equal((await rawClient(viaServerOptions.ws.port)).negotiated, ANSWER, "the original's serverOptions.perMessageDeflate");
  });

  test('offers the server cannot honour are declined by leaving the extension out, never by failing the upgrade', async () => {
    const { ws } = await startServer({ perMessageDeflate: true });
    const offer = async header => (await rawSocket(ws.port, '/ws', `Sec-WebSocket-Extensions: ${header}\r\n`)).head;
    for (const header of ['permessage-deflate; server_max_window_bits=10', 'permessage-deflate; bogus', 'permessage-deflate; client_max_window_bits=99', 'x-webkit-deflate-frame']) {
      const head = await offer(header);
      assert.match(head, /^HTTP\/1\.1 101/, header);
      assert.doesNotMatch(head, /sec-websocket-extensions/i, header);
    }
    // Of several offers, the first acceptable one.
    assert.match(await offer('permessage-deflate; server_max_window_bits=9, permessage-deflate; server_max_window_bits=15'), new RegExp(`Sec-WebSocket-Extensions: ${ANSWER}; server_max_window_bits=15`));
  });

  test('ws with and without context takeover and with window-bits offers: negotiated or declined, and every publication arrives', async () => {
    const { ws, url } = await startServer({ perMessageDeflate: true });
    const cases = [
      [{ perMessageDeflate: true }, true],
      [{ perMessageDeflate: { serverNoContextTakeover: true, clientNoContextTakeover: true } }, true],
      [{ perMessageDeflate: { clientMaxWindowBits: 10 } }, true],
      [{ perMessageDeflate: { serverMaxWindowBits: 15 } }, true],
      [{ perMessageDeflate: { serverMaxWindowBits: 10 } }, false],
      [{ perMessageDeflate: false }, false],
    ];
    for (const [opts, negotiated] of cases) {
      const s = await openWs(url, opts);
      assert.equal(s.extensions.includes('permessage-deflate'), negotiated, JSON.stringify(opts));
      const got = [];
      s.on('message', d => got.push(JSON.parse(d)));
      s.send(JSON.stringify({ event: 'authenticate', data: { token: 'w' } }));
      await until(() => got.find(m => m.event === 'connected'), 3000, 'connected');
      const id = got.find(m => m.event === 'connected').data.id;
      ws.sendToClient({ clientId: id, event: 'big', data: BIG });
      ws.sendToClient({ clientId: id, event: 'small', data: 1 });
      await until(() => got.some(m => m.event === 'small'), 3000, 'small');
      assert.deepEqual(got.find(m => m.event === 'big').data, BIG, JSON.stringify(opts));
      s.close();
    }
  });
});

describe('perMessageDeflate: outbound', () => {
  test('a room of compressed and plain members: everyone gets every publication; each is compressed once, below the threshold none is', async () => {
    const { ws } = await startServer({ perMessageDeflate: { threshold: 256 } });
    const zipped = await Promise.all([1, 2, 3].map(i => authed(ws.port, {}, { token: `z${i}` })));
    const plain = await Promise.all([1, 2].map(i => authed(ws.port, { compressed: false }, { token: `p${i}` })));
    const before = ws.stats();
    for (let i = 0; i < 5; i++) ws.sendToRoom({ room: 'ws-default', event: 'pub', data: { i, ...BIG } });
    ws.broadcast({ event: 'pub', data: { i: 5, ...BIG } });
    ws.sendToRoom({ room: 'ws-default', event: 'pub', data: { i: 6, small: true } });
    for (const c of [...zipped, ...plain]) {
      const got = await collect(c, 'pub', 7);
      assert.deepEqual(got.map(m => m.msg.data.i), [0, 1, 2, 3, 4, 5, 6]);
      const compressed = zipped.includes(c);
      assert.deepEqual(got.map(m => m.compressed), [compressed, compressed, compressed, compressed, compressed, compressed, false]);
      assert.deepEqual(got[0].msg.data.items, BIG.items);
    }
    const after = ws.stats();
    assert.equal(after.deflateCompressed - before.deflateCompressed, 6, 'once per publication, not once per member (3 compressed members)');
    const ratio = (after.deflateBytesOut - before.deflateBytesOut) / (after.deflateBytesIn - before.deflateBytesIn);
    assert.ok(ratio < 0.25, `compressed to ${ratio}`);
  });

  test('direct sends (sendToClient, sendToUser) are compressed too', async () => {
    const { ws } = await startServer({ perMessageDeflate: true });
    const c = await authed(ws.port, {}, { token: 'd', userId: 'ud' });
    ws.sendToClient({ clientId: c.id, event: 'direct', data: BIG });
    ws.sendToUser({ userId: 'ud', event: 'user', data: BIG });
    const [d] = await collect(c, 'direct', 1);
    const [u] = await collect(c, 'user', 1);
    assert.ok(d.compressed && u.compressed);
    assert.deepEqual(d.msg.data, BIG);
  });

  test('a client with built-in encryption is never sent compressed frames, though it negotiated the extension', async () => {
    const { ws } = await startServer({ perMessageDeflate: { threshold: 0 }, encryption: 'ecdh-p256-aes-256-gcm' });
    const { pair, publicKey } = await newKeyPair();
    const c = await authed(ws.port, {}, { token: 'e', publicKey });
    assert.equal(c.negotiated, ANSWER);
    const key = await deriveKey(pair.privateKey, c.connected.serverPublicKey, c.connected.salt);
    const before = ws.stats().deflateCompressed;
    ws.sendToClient({ clientId: c.id, event: 'secret', data: BIG });
    ws.sendToRoom({ room: 'ws-default', event: 'secret', data: BIG });
    for (let i = 0; i < 2; i++) {
      const m = await c.message();
      assert.equal(m.compressed, false);
      assert.equal(m.msg.event, 'encrypted');
      assert.deepEqual((await decrypt(key, m.msg)).data, BIG);
    }
    assert.equal(ws.stats().deflateCompressed, before, 'nothing was compressed for it');
  });
});

describe('perMessageDeflate: inbound', () => {
  test('compressed client messages, whole or fragmented with a ping between, reach the handler inflated', async () => {
    const got = [];
    const { ws } = await startServer({ perMessageDeflate: true, messageHandler: ({ message }) => got.push(message) });
    const c = await authed(ws.port);
    const text = 'x'.repeat(100 * 1024);
    c.send({ event: 'whole', data: text });
    const z = deflate(Buffer.from(JSON.stringify({ event: 'fragmented', data: BIG })));
    const third = Math.floor(z.length / 3);
    c.sock.write(maskedFrame(0x1, z.subarray(0, third), { fin: false, rsv1: true }));
    c.sock.write(maskedFrame(0x9, Buffer.from('ping')));
    c.sock.write(maskedFrame(0x0, z.subarray(third, 2 * third), { fin: false }));
    c.sock.write(maskedFrame(0x0, z.subarray(2 * third)));
    // A plain message on the same connection.
    c.send({ event: 'plain', data: 1 }, { compress: false });
    await until(() => got.length === 3, 3000, 'three messages');
    assert.deepEqual(got.map(m => m.event), ['whole', 'fragmented', 'plain']);
    assert.equal(got[0].data, text);
    assert.deepEqual(got[1].data, BIG);
    const pong = await c.frames.next(0xa);
    assert.equal(pong.payload.toString(), 'ping');
    assert.equal(ws.stats().inflatedMessages, 3, 'authenticate, whole, fragmented');
  });

  test('maxPayloadLength applies to the inflated size: a bomb and an over-limit message close 1009, the server stays up', async () => {
    const { ws } = await startServer({ perMessageDeflate: true, serverOptions: { maxPayloadLength: 64 * 1024 } });
    const bystander = await authed(ws.port, { compressed: false }, { token: 'b' });
    // 8 MiB of zeros is 8 KiB compressed.
    const bomb = deflate(Buffer.alloc(8 * 1024 * 1024));
    assert.ok(bomb.length < 16 * 1024);
    for (const payload of [bomb, deflate(Buffer.from(JSON.stringify({ event: 'x', data: 'y'.repeat(65 * 1024) })))]) {
      const c = await authed(ws.port);
      c.sock.write(maskedFrame(0x1, payload, { rsv1: true }));
      assert.deepEqual(await c.closeFrame(), { code: 1009, reason: 'Message too big' });
      await c.closed;
    }
    const s = ws.stats();
    assert.equal(s.protocolErrors.messageTooBig, 2);
    assert.equal(s.oversizedFrames, 2);
    ws.sendToClient({ clientId: bystander.id, event: 'still', data: 1 });
    assert.equal((await collect(bystander, 'still', 1)).length, 1);
  });

  test('invalid deflate data closes 1007 and is counted; RSV1 where it may not be closes 1002', async () => {
    const { ws } = await startServer({ perMessageDeflate: true });
    const bad = await authed(ws.port);
    bad.sock.write(maskedFrame(0x1, Buffer.from([0xff, 0xff, 0xff, 0xff]), { rsv1: true }));
    assert.deepEqual(await bad.closeFrame(), { code: 1007, reason: 'Invalid compressed data' });
    const cont = await authed(ws.port);
    const z = deflate(Buffer.from('{"event":"x"}'));
    cont.sock.write(maskedFrame(0x1, z.subarray(0, 2), { fin: false, rsv1: true }));
    cont.sock.write(maskedFrame(0x0, z.subarray(2), { rsv1: true }));
    assert.equal((await cont.closeFrame()).code, 1002);
    const unnegotiated = await authed(ws.port, { compressed: false });
    unnegotiated.sock.write(maskedFrame(0x1, z, { rsv1: true }));
    assert.equal((await unnegotiated.closeFrame()).code, 1002);
    const s = ws.stats().protocolErrors;
    assert.equal(s.invalidDeflate, 1);
    assert.equal(s.reservedBits, 2);
  });
});

describe('perMessageDeflate: through Redis and history', { skip: noRedis }, () => {
  test("another instance's publications and a history replay go compressed, once per publication per instance", async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const opts = { redis: redis.url, perMessageDeflate: true, history: true, validateRoomFn: ({ rooms }) => rooms };
    const a = await startServer(opts);
    const b = await startServer(opts);
    const join = async (c, recover) => {
      c.send({ event: 'join', data: recover ? { rooms: ['h'], recover: { h: recover } } : { rooms: ['h'] } });
      return (await collect(c, 'joined', 1))[0].msg.data;
    };
    const first = await authed(b.ws.port, {}, { token: 'r1' });
    const second = await authed(b.ws.port, {}, { token: 'r2' });
    const joined = await join(first);
    await join(second);
    const before = b.ws.stats().deflateCompressed;
    for (let i = 0; i < 4; i++) a.ws.sendToRoom({ room: 'h', event: 'pub', data: { i, ...BIG } });
    for (const c of [first, second]) {
      const got = await collect(c, 'pub', 4);
      assert.deepEqual(got.map(m => [m.msg.data.i, m.compressed]), [[0, true], [1, true], [2, true], [3, true]]);
    }
    assert.equal(b.ws.stats().deflateCompressed - before, 4, 'two compressed members, one compression each');

    // Two clients recover from before the publications at once: the replay
    // is compressed, and its frames are shared between them.
    const mid = b.ws.stats().deflateCompressed;
    const late = await Promise.all([authed(b.ws.port, {}, { token: 'l1' }), authed(b.ws.port, {}, { token: 'l2' })]);
    const recover = { offset: joined.offset, epoch: joined.epoch };
    for (const c of late) c.send({ event: 'join', data: { rooms: ['h'], recover: { h: recover } } });
    for (const c of late) {
      const got = await collect(c, 'pub', 4);
      assert.deepEqual(got.map(m => [m.msg.data.i, m.compressed]), [[0, true], [1, true], [2, true], [3, true]]);
      assert.deepEqual(got[3].msg.data.items, BIG.items);
    }
    const replays = b.ws.stats().deflateCompressed - mid;
    assert.ok(replays >= 4 && replays <= 8, `4 publications replayed to 2 joiners: ${replays} compressions`);
  });
});

describe('perMessageDeflate: built-in clients', () => {
  test("the runtime's own WebSocket client negotiates or not, and gets publications intact", async () => {
    const { ws, url } = await startServer({ perMessageDeflate: true });
    // Node 20 has its WebSocket behind a flag: run the client in a child
    // process with it, so every runtime's built-in client is exercised.
    const script = `
      const s = new WebSocket(${JSON.stringify(url)});
      const got = [];
      s.onmessage = e => {
        const m = JSON.parse(e.data);
        got.push(m);
        if (m.event === 'connected') console.log(JSON.stringify({ id: m.data.id, extensions: s.extensions }));
        if (m.event === 'big') { console.log(JSON.stringify({ big: m.data })); s.close(); }
      };
      s.onopen = () => s.send(JSON.stringify({ event: 'authenticate', data: { token: 'builtin' } }));
      s.onclose = () => process.exit(0);
    `;
    const isBun = typeof globalThis.Bun !== 'undefined';
    const major = Number(process.versions.node.split('.')[0]);
    const args = isBun || major >= 22 ? ['-e', script] : ['--experimental-websocket', '-e', script];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', d => {
      out += d;
      const first = out.split('\n')[0];
      if (first && out.includes('\n') && !child.sentBig) {
        child.sentBig = true;
        ws.sendToClient({ clientId: JSON.parse(first).id, event: 'big', data: BIG });
      }
    });
    const code = await new Promise(r => child.once('exit', r));
    assert.equal(code, 0);
    const [hello, big] = out.trim().split('\n').map(l => JSON.parse(l));
    assert.deepEqual(big.big, BIG);
    // Both runtimes' clients offer the extension and report the answer.
    assert.equal(hello.extensions, ANSWER);
  });
});
