// Publishes benchmark messages to a room through Redis, the way each
// contender's applications do it: the Ignis envelope (WebSocketEmitter), a
// plain PUBLISH for the hand-written relays, @socket.io/redis-emitter for
// Socket.IO. Every message carries `t` (ms since the epoch) for latency.
//
//   node bench/publish.mjs --kind ignis|raw|socketio --redis URL --count N [--rate R] [--room bench] [--size 100] [--history 1] [--shape pad|json]
// --shape json: a 1.6 KB JSON list of products, different in every message
// (what compression meets in an application), instead of `size` x's.
// --rate 0 (default) publishes as fast as Redis takes it. Prints one JSON line.
// --wait 1: connect, print READY, and start publishing at the first line on
// stdin (a burst's clock then starts at its first publication, not at this
// process's start).
import { createRequire } from 'node:module';
import Redis from 'ioredis';

const require = createRequire(import.meta.url);
const opt = { kind: 'ignis', redis: '', count: 100, rate: 0, room: 'bench', event: 'bench', size: 100, history: 0, shape: 'pad', wait: 0 };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, '');
  opt[k] = typeof opt[k] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}
const pad = 'x'.repeat(opt.size);
const products = k =>
  Array.from({ length: 16 }, (_, i) => ({
    id: k * 16 + i,
    sku: `SKU-${(k * 7919 + i * 104729) % 100000}`,
    name: `Product ${i} of batch ${k}`,
    price: ((k * 31 + i * 17) % 10000) / 100,
    stock: (k * 13 + i * 7) % 250,
    tags: ['new', 'sale', 'popular', 'limited'].slice(0, 1 + ((k + i) % 4)),
  }));
const message = k => (opt.shape === 'json' ? { k, t: now(), items: products(k) } : { k, t: now(), pad });
const now = () => performance.timeOrigin + performance.now();

let publish, close;
if (opt.kind === 'ignis') {
  const { WebSocketEmitter } = require('../dist/index.js');
  // --history 1: through the rooms' history, as the servers of (h) keep it.
  const emitter = new WebSocketEmitter({ identifier: 'bench-emitter', redis: opt.redis, history: opt.history > 0 });
  await emitter.configure();
  publish = data => emitter.toRoom({ room: opt.room, event: opt.event, data });
  close = () => emitter.shutdown();
} else if (opt.kind === 'raw') {
  const redis = new Redis(opt.redis);
  const origin = 'publisher';
  publish = data =>
    redis.publish('bench:fanout', JSON.stringify({ origin, room: opt.room, frame: JSON.stringify({ event: opt.event, data }) }));
  close = () => redis.quit();
} else if (opt.kind === 'socketio') {
  const { Emitter } = require('@socket.io/redis-emitter');
  const redis = new Redis(opt.redis);
  const emitter = new Emitter(redis);
  publish = async data => emitter.to(opt.room).emit(opt.event, data);
  close = () => redis.quit();
} else {
  throw new Error(`unknown --kind ${opt.kind}`);
}

if (opt.wait > 0) {
  console.log('READY');
  const go = await new Promise(r => process.stdin.once('data', () => r(true)).once('end', () => r(false)));
  // Closed without a word: the run this was for has ended.
  if (!go) process.exit(1);
  process.stdin.destroy();
}
const t0 = now();
if (opt.rate > 0) {
  const gap = 1000 / opt.rate;
  for (let k = 0; k < opt.count; k++) {
    const due = t0 + k * gap;
    // Timers, not a busy wait: on a 2-core machine a spinning publisher
    // takes CPU from the server under test. A late timer only delays that
    // message (its timestamp is taken when it goes); the schedule keeps the
    // average rate.
    const wait = due - now();
    if (wait > 0) await new Promise(r => setTimeout(r, wait));
    publish(message(k));
  }
} else {
  const pending = [];
  for (let k = 0; k < opt.count; k++) pending.push(publish(message(k)));
  await Promise.all(pending);
}
const took = now() - t0;
await new Promise(r => setTimeout(r, 200));
await close();
console.log(JSON.stringify({ published: opt.count, took_ms: Math.round(took) }));
