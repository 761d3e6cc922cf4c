// A rolling restart (or crash) of two instances under a history room's
// traffic, with N client SDKs re-joining at once: the reproduction behind
// docs/RELIABILITY.md's "recovery storm" figures. Shared by the test suite
// (recovery-storm.test.mjs) and the larger benchmark-style run
// (bench/recovery-storm.mjs).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { freePort } from './redis-helpers.mjs';
import { soakServer } from './soak-helpers.mjs';
import { sleep, until } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { WebSocketEmitter } = require('../dist/index.js');
const { WebSocketClient } = require('../dist/client.js');

/** The balancer fixture in its own process, in front of `ports`. */
export async function balancer(ports) {
  const child = spawn(process.execPath, [path.join(here, 'fixtures', 'balancer.mjs'), ...ports.map(String)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', d => (out += d));
  await until(() => /PORT (\d+)/.test(out), 10_000, 'balancer');
  return { port: Number(/PORT (\d+)/.exec(out)[1]), close: () => child.kill('SIGKILL') };
}

/** An instance on a fixed port that can be stopped (SIGTERM or SIGKILL) and started again. */
async function instance(port, options, how) {
  const self = {
    port,
    server: null,
    async start() {
      // The port is free again at once after a kill; retry while it is not.
      for (let i = 0; ; i++) {
        try {
          self.server = await soakServer({ ...options, port }, {}, how);
          return;
        } catch (e) {
          if (i >= 20) throw e;
          await sleep(100);
        }
      }
    },
    async stop(signal) {
      const s = self.server;
      self.server = null;
      s.child.kill(signal);
      await Promise.race([s.exited, sleep(10_000)]);
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
      await s.exited;
    },
    stats: () => self.server?.stats(),
  };
  await self.start();
  return self;
}

/**
 * Runs one storm and returns what every client saw.
 *
 * opts: redisUrl, clients (1000), messages (1200), rate (per second, 100),
 * path ('direct' | 'balancer'), signal ('SIGTERM' | 'SIGKILL'),
 * sameRuntime (servers on the runtime running this), log (progress lines).
 */
export async function runStorm(opts) {
  const {
    redisUrl,
    clients: n = 1000,
    messages = 1200,
    rate = 100,
    path = 'direct',
    signal = 'SIGTERM',
    log = () => {},
  } = opts;
  const room = `storm-${process.pid}-${Date.now()}`;
  const history = { size: 2000, ttl: 600_000 };
  const options = { redis: redisUrl, history, shutdownSignals: true };
  const how = { sameRuntime: true };
  const [pa, pb] = [await freePort(), await freePort()];
  const a = await instance(pa, options, how);
  const b = await instance(pb, options, how);
  const lb = path === 'balancer' ? await balancer([pa, pb]) : null;
  const emitter = new WebSocketEmitter({ redis: redisUrl, history });
  await emitter.configure();

  const started = performance.now();
  const members = [];
  for (let i = 0; i < n; i++) {
    const port = lb ? lb.port : i % 2 ? pb : pa;
    const m = {
      connectedAt: 0,
      got: [],
      joins: [],
      closes: [],
      connects: 0,
      client: new WebSocketClient({
        url: `ws://127.0.0.1:${port}/ws`,
        auth: () => ({ userId: `u${i}` }),
        heartbeatInterval: 0,
        encryption: false,
      }),
    };
    m.client.on('m', d => m.got.push(d.k));
    m.client.on('joined', j => m.joins.push({ at: performance.now() - started, wait: performance.now() - started - m.connectedAt, ...j }));
    m.client.on('connected', () => {
      m.connects++;
      m.connectedAt = performance.now() - started;
    });
    m.client.on('disconnected', d => m.closes.push({ at: performance.now() - started, code: d.code, reason: d.reason }));
    m.client.join(room);
    members.push(m);
  }
  await Promise.all(members.map(m => m.client.connect()));
  await until(() => members.every(m => m.joins.length >= 1), 30_000, 'every client joined');
  log(`${n} clients joined in ${performance.now() - started} ms`);

  // Publish at `rate` per second; restart A, then B, under the traffic.
  let published = 0;
  let publishing = true;
  const publisher = (async () => {
    const t0 = performance.now();
    while (published < messages && publishing) {
      await emitter.toRoom({ room, event: 'm', data: { k: published } });
      published++;
      const ahead = t0 + (published * 1000) / rate - performance.now();
      if (ahead > 0) await sleep(ahead);
    }
  })();
  // History reads served per second, per instance (sampled from stats()).
  const reads = [];
  let sampling = opts.sample;
  const sampler = (async () => {
    while (sampling) {
      const at = performance.now() - started;
      const [sa, sb] = await Promise.all([a.stats(), b.stats()]);
      reads.push({ at, a: sa?.historyReads ?? null, b: sb?.historyReads ?? null });
      await sleep(250);
    }
  })();
  const restarts = [];
  const period = (messages / rate) * 1000;
  for (const [name, inst] of [
    ['A', a],
    ['B', b],
  ]) {
    await sleep(period / 4);
    const t = { name, stoppedAt: performance.now() - started };
    await inst.stop(signal);
    await inst.start();
    t.startedAt = performance.now() - started;
    restarts.push(t);
    log(`${name} ${signal} at ${t.stoppedAt} ms, listening again at ${t.startedAt} ms`);
  }
  await publisher;
  publishing = false;
  sampling = false;
  await sampler;
  const done = () => members.every(m => m.got.length >= messages);
  await until(done, 30_000, 'every client has every publication').catch(() => {});

  // What each client saw.
  let lost = 0;
  let duplicated = 0;
  let outOfOrder = 0;
  let complete = 0;
  const bad = [];
  for (const [i, m] of members.entries()) {
    const seen = new Set();
    let prev = -1;
    let dup = 0;
    let ooo = 0;
    for (const k of m.got) {
      if (seen.has(k)) dup++;
      else seen.add(k);
      if (k < prev) ooo++;
      prev = k;
    }
    const miss = messages - seen.size;
    lost += miss;
    duplicated += dup;
    outOfOrder += ooo;
    if (!miss && !dup && !ooo) complete++;
    else if (bad.length < 5) {
      const missing = [];
      for (let k = 0; k < messages && missing.length < 5; k++) if (!seen.has(k)) missing.push(k);
      bad.push({ client: i, miss, dup, ooo, missing, joins: m.joins.slice(-3), closes: m.closes.slice(-3) });
    }
  }
  // Time from each stop to every client it cut off being back and
  // recovered (its first `joined` after that stop).
  const recovery = restarts.map(r => {
    let worst = 0;
    let cut = 0;
    let unrecovered = 0;
    for (const m of members) {
      if (!m.closes.some(c => c.at >= r.stoppedAt && c.at < r.startedAt + 1000)) continue;
      cut++;
      const back = m.joins.find(j => j.at >= r.stoppedAt);
      if (!back || back.recovered !== true) unrecovered++;
      if (back) worst = Math.max(worst, back.at - r.stoppedAt);
    }
    return { instance: r.name, cut, unrecovered, backWithinMs: worst, downMs: r.startedAt - r.stoppedAt };
  });
  const stats = { a: await a.stats(), b: await b.stats() };
  // From `connected` to `joined` for every (re-)join: the bound a
  // recovering join is answered within.
  const waits = members.flatMap(m => m.joins.map(j => j.wait)).sort((x, y) => x - y);
  const pct = q => waits[Math.min(waits.length - 1, Math.floor(q * waits.length))];
  const joinWaitMs = { p50: pct(0.5), p99: pct(0.99), max: waits[waits.length - 1] };
  // Peak history reads per second an instance served (over 1 s windows).
  let peakReadsPerSecond = 0;
  for (const key of ['a', 'b']) {
    for (let i = 0; i < reads.length; i++) {
      const j = reads.findIndex(r => r.at >= reads[i].at + 1000);
      if (j < 0) break;
      const [x, y] = [reads[i][key], reads[j][key]];
      if (x !== null && y !== null && y >= x) peakReadsPerSecond = Math.max(peakReadsPerSecond, ((y - x) * 1000) / (reads[j].at - reads[i].at));
    }
  }
  // Why connections ended, and how long the slowest took to come back.
  const closes = {};
  for (const m of members) for (const c of m.closes) closes[`${c.code} ${c.reason}`] = (closes[`${c.code} ${c.reason}`] ?? 0) + 1;

  for (const m of members) m.client.close();
  await emitter.shutdown();
  lb?.close();
  await Promise.all([a, b].map(i => i.server?.stop()));
  return { clients: n, messages, published, complete, lost, duplicated, outOfOrder, recovery, joinWaitMs, peakReadsPerSecond: Math.round(peakReadsPerSecond), closes, bad, stats };
}
