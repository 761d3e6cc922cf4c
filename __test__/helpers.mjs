// Test helpers: real servers on loopback, real `ws` clients.
import './ignis-logs.mjs';
import { createRequire } from 'node:module';
import WebSocket from 'ws';
import { spawnSync } from 'node:child_process';

const require = createRequire(import.meta.url);
export const lib = require('../dist/index.js');

export const sleep = ms => new Promise(r => setTimeout(r, ms));

const servers = new Set();

/** Starts a server on an ephemeral loopback port. */
export async function startServer(opts = {}) {
  const ws = new lib.WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    logLevel: 'silent',
    authenticateFn: async data => (data.token ? { userId: data.userId ?? 'user-' + data.token, metadata: { token: data.token } } : null),
    ...opts,
  });
  await ws.configure();
  servers.add(ws);
  return { ws, url: `ws://127.0.0.1:${ws.port}${ws.getPath()}` };
}

export async function stopAll() {
  const all = [...servers];
  servers.clear();
  await Promise.all(all.map(s => s.shutdown()));
}

/** A client that records every frame and its close. */
export class Client {
  constructor(url) {
    this.url = url;
    this.frames = [];
    this.waiters = [];
    this.sock = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.sock.once('open', resolve);
      this.sock.once('error', reject);
    });
    this.closed = new Promise(resolve => {
      this.sock.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.sock.on('error', () => {});
    this.sock.on('message', data => {
      const msg = JSON.parse(data.toString());
      this.frames.push(msg);
      for (const w of [...this.waiters]) {
        if (w.pred(msg)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(msg);
        }
      }
    });
  }

  static async open(url) {
    const c = new Client(url);
    await c.opened;
    return c;
  }

  /** Opens and authenticates; resolves with the `connected` data. */
  static async auth(url, data = { token: 't' }) {
    const c = await Client.open(url);
    c.emit('authenticate', data);
    const m = await c.next('connected');
    c.id = m.data.id;
    c.connected = m.data;
    return c;
  }

  send(raw) {
    this.sock.send(raw);
  }

  emit(event, data) {
    this.sock.send(JSON.stringify(data === undefined ? { event } : { event, data }));
  }

  /** The next frame (already received or future) matching `event`. */
  next(event, timeout = 3000) {
    const pred = typeof event === 'function' ? event : m => m.event === event;
    const i = this.frames.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.frames.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = {
        pred: m => {
          if (!pred(m)) return false;
          this.frames.splice(this.frames.indexOf(m), 1);
          return true;
        },
        resolve,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          reject(new Error(`timed out waiting for ${typeof event === 'string' ? event : 'frame'}; got ${JSON.stringify(this.frames)}`));
        }, timeout),
      };
      this.waiters.push(w);
    });
  }

  /** Asserts nothing matching arrives within `ms`. */
  async nothing(event, ms = 200) {
    await sleep(ms);
    const pred = typeof event === 'function' ? event : m => m.event === event;
    return !this.frames.some(pred);
  }

  close() {
    this.sock.close();
    return this.closed;
  }
}

/** Resolves when `fn()` is truthy, polling; rejects after `timeout`. */
export async function until(fn, timeout = 3000, what = 'condition') {
  const end = performance.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A hand-made WebSocket connection over node:net, for frames no client library sends. */
export async function rawSocket(port, path = '/ws', extraHeaders = '') {
  const net = await import('node:net');
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  sock.write(
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n' +
      extraHeaders +
      '\r\n',
  );
  let head = '';
  await new Promise((resolve, reject) => {
    const onData = d => {
      head += d.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        sock.off('data', onData);
        head.startsWith('HTTP/1.1 101') ? resolve() : reject(new Error(head.split('\r\n')[0]));
      }
    };
    sock.on('data', onData);
  });
  const closed = new Promise(resolve => sock.once('close', resolve));
  sock.on('error', () => {});
  return { sock, closed, head };
}

/** Reads the server's (unmasked) frames off a raw socket. */
export function serverFrames(sock) {
  let buf = Buffer.alloc(0);
  const frames = [];
  let wake = () => {};
  sock.on('data', d => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (buf.length < 2) break;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) break;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) break;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      if (buf.length < off + len) break;
      frames.push({ fin: (buf[0] & 0x80) !== 0, rsv1: (buf[0] & 0x40) !== 0, opcode: buf[0] & 0x0f, payload: buf.subarray(off, off + len) });
      buf = buf.subarray(off + len);
    }
    wake();
  });
  const ended = new Promise(resolve => sock.once('close', resolve));
  return {
    /** Every frame read and not taken yet. */
    frames,
    /** The first frame with `opcode` (waits for it; null if the socket ends first). */
    async next(opcode) {
      for (;;) {
        const i = frames.findIndex(f => f.opcode === opcode);
        if (i >= 0) return frames.splice(i, 1)[0];
        const more = new Promise(resolve => (wake = resolve));
        if ((await Promise.race([more.then(() => 'data'), ended.then(() => 'end')])) === 'end') {
          const j = frames.findIndex(f => f.opcode === opcode);
          return j >= 0 ? frames.splice(j, 1)[0] : null;
        }
      }
    },
  };
}


/** A masked client frame (mask key 0, so the payload goes as is). */
export function maskedFrame(opcode, payload, { fin = true, rsv1 = false } = {}) {
  const len = payload.length;
  const first = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode;
  let head;
  if (len < 126) head = Buffer.from([first, 0x80 | len]);
  else if (len < 65536) head = Buffer.from([first, 0x80 | 126, len >> 8, len & 255]);
  else {
    head = Buffer.alloc(10);
    head[0] = first;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([head, Buffer.from([0, 0, 0, 0]), payload]);
}

/**
 * A system component a test needs. Present: returns false (run the test).
 * Missing: prints one line naming it and how to install it and returns that
 * line (pass it as `{ skip }`); with CI=true a missing component is an error
 * instead, so CI never passes by skipping.
 */
export function needs(what, present, install) {
  if (present) return false;
  const line = `${what} is missing (${install})`;
  if (/^(1|true)$/i.test(process.env.CI ?? '')) throw new Error(`CI=true: ${line}`);
  process.stderr.write(`# skip: ${line}\n`);
  return line;
}

/** Whether `cmd` is on PATH. */
export function hasCommand(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}
