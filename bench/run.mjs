// The benchmark suite: every contender, every scenario, side by side in one
// run on this machine, repeated; medians go to bench/RESULTS.md and
// bench/results.svg, raw figures to bench/results.json.
//
//   npm run bench                       (builds the load generator first)
//   BENCH_REPEAT=1 BENCH_ONLY=b,d BENCH_CONTENDERS=original,native-node node bench/run.mjs
//   BENCH_MERGE=1 BENCH_ONLY=a node bench/run.mjs   (re-measure one scenario, keep the others)
//
// Needs redis-server and a release build of the addon (npm install does it).
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedis } from '../__test__/redis-helpers.mjs';
import { render } from './report.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const loadgen = path.join(here, 'loadgen', 'target', 'release', 'ignis-ws-loadgen');
const bun = path.join(root, 'node_modules', '.bin', 'bun');
const node = process.execPath;
const sleep = ms => new Promise(r => setTimeout(r, ms));

const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const ONLY = (process.env.BENCH_ONLY ?? 'a,az,b,h,bz,c,cz,d,l,r,e,pb,pc,pd,pr').split(',');
const IDLE_CLIENTS = Number(process.env.BENCH_IDLE_CLIENTS ?? 10_000);

export const CONTENDERS = [
  { id: 'original', label: 'original helper (Bun)', cmd: bun, script: 'original.mjs', pub: 'ignis' },
  { id: 'native-node', label: 'ignis-ws-native (Node)', cmd: node, script: 'native.mjs', pub: 'ignis' },
  { id: 'native-bun', label: 'ignis-ws-native (Bun)', cmd: bun, script: 'native.mjs', pub: 'ignis' },
  // Each run mode forced: a scenario runs the one `auto` does not pick
  // there (see `autoRunMode`), beside `auto`.
  { id: 'native-node-js-thread', label: 'ignis-ws-native (Node, runMode js-thread)', cmd: node, script: 'native.mjs', pub: 'ignis', env: { IGNIS_WS_RUN_MODE: 'js-thread' } },
  { id: 'native-bun-js-thread', label: 'ignis-ws-native (Bun, runMode js-thread)', cmd: bun, script: 'native.mjs', pub: 'ignis', env: { IGNIS_WS_RUN_MODE: 'js-thread' } },
  { id: 'native-node-threads', label: 'ignis-ws-native (Node, runMode threads)', cmd: node, script: 'native.mjs', pub: 'ignis', env: { IGNIS_WS_RUN_MODE: 'threads' } },
  { id: 'native-bun-threads', label: 'ignis-ws-native (Bun, runMode threads)', cmd: bun, script: 'native.mjs', pub: 'ignis', env: { IGNIS_WS_RUN_MODE: 'threads' } },
  { id: 'bun-topics', label: 'Bun.serve topics (Bun)', cmd: bun, script: 'bun-topics.mjs', pub: 'raw' },
  { id: 'ws', label: 'ws + ioredis (Node)', cmd: node, script: 'ws-ioredis.mjs', pub: 'raw' },
  { id: 'socketio', label: 'Socket.IO 4 + redis-adapter (Node)', cmd: node, script: 'socketio.mjs', pub: 'socketio', proto: 'socketio' },
].filter(c => !process.env.BENCH_CONTENDERS || process.env.BENCH_CONTENDERS.split(',').includes(c.id));

// ---- processes -------------------------------------------------------------

// The one-core scenarios (`p…`): the server pinned to CPU 0, the load
// generator, the publisher and Redis to CPU 1, as a server in a 1-vCPU
// container with its clients elsewhere.
let pinned = false;
const onCpu = (cpu, cmd, args) => (pinned ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args]);

function procStat(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { cpu: (Number(f[11]) + Number(f[12])) / 100 };
}
const cpuOf = pid => procStat(pid).cpu;

/**
 * CPU seconds of a server: its JavaScript thread (the main thread, on Node
 * and on Bun) and all its threads (the process's figure, which keeps the
 * time of threads that have ended).
 */
function threadCpu(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { js: (Number(f[11]) + Number(f[12])) / 100, all: cpuOf(pid) };
}

/** Per-thread CPU between two `threadCpu` readings, in µs per `unit` (round trip, delivery). */
function perThread(before, after, units, unit) {
  const js = ((after.js - before.js) * 1e6) / units;
  const all = ((after.all - before.all) * 1e6) / units;
  return { [`js_us_per_${unit}`]: js, [`other_us_per_${unit}`]: all - js };
}
const rssOf = pid => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024;

async function startServer(c, redis, env = {}) {
  const child = spawn(...onCpu(0, c.cmd, [path.join(here, 'servers', c.script)]), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, REDIS_URL: redis.url, ...c.env, ...env },
  });
  let out = '';
  let err = '';
  child.stdout.on('data', d => (out += d));
  // BENCH_SERVER_STDERR=1 shows what the servers write to stderr as it comes.
  child.stderr.on('data', d => {
    err = (err + d).slice(-2000);
    if (process.env.BENCH_SERVER_STDERR) process.stderr.write(d);
  });
  for (let i = 0; i < 400 && !/PORT (\d+)/.test(out); i++) {
    if (child.exitCode !== null) break;
    await sleep(25);
  }
  const m = /PORT (\d+)/.exec(out);
  if (!m) {
    child.kill('SIGKILL');
    throw new Error(`${c.id} did not start: ${err}`);
  }
  const wsPath = c.proto === 'socketio' ? '/socket.io/?EIO=4&transport=websocket' : '/ws';
  return {
    child,
    pid: child.pid,
    url: `ws://127.0.0.1:${m[1]}${wsPath}`,
    stop: () => new Promise(r => (child.exitCode !== null ? r() : (child.once('exit', r), child.kill('SIGKILL')))),
  };
}

/**
 * Runs the load generator; resolves with its JSON result (and `at`, when it
 * arrived). `onReady` runs when it prints READY, `onResult` as soon as the
 * result line arrives (the idle mode still holds its sockets then). If
 * `failWith` rejects first (a publisher that died), the load generator is
 * stopped and the run fails with that error instead of waiting for its
 * timeout.
 */
function runLoadgen(args, { onReady, onResult, failWith, timeoutMs = 120_000 } = {}) {
  return new Promise((resolve, reject) => {
    const lg = spawn(...onCpu(1, loadgen, args), { stdio: ['ignore', 'pipe', 'pipe'] });
    failWith?.catch(e => {
      if (lg.exitCode === null) lg.kill('SIGKILL');
      reject(e);
    });
    let out = '';
    let err = '';
    let ready = false;
    let result;
    const timer = setTimeout(() => (lg.kill('SIGKILL'), reject(new Error(`loadgen timed out: ${args.join(' ')}`))), timeoutMs);
    lg.stdout.on('data', d => {
      out += d;
      if (!ready && out.includes('READY\n')) {
        ready = true;
        onReady?.();
      }
      const line = out.split('\n').find(l => l.startsWith('{') && l.endsWith('}'));
      if (line && !result) {
        result = { ...JSON.parse(line), at: performance.now() };
        onResult?.(result);
      }
    });
    lg.stderr.on('data', d => (err = (err + d).slice(-2000)));
    lg.on('exit', code => {
      clearTimeout(timer);
      if (result) resolve(result);
      else reject(new Error(`loadgen exited ${code}: ${err}`));
    });
  });
}

/**
 * Starts the publisher: `ready` resolves once it is connected to Redis,
 * `go()` starts the publications, `done` resolves with its result. A
 * burst's clock starts at `go()`, so the publisher's own start (≈ 0.12 s:
 * Node, the addon, the Redis connection) is not counted as delivery time.
 */
function publisher(c, redis, args) {
  const p = spawn(...onCpu(1, node, [path.join(here, 'publish.mjs'), '--kind', c.pub, '--redis', redis.url, '--wait', '1', ...args]), { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  let onReady;
  const ready = new Promise(r => (onReady = r));
  p.stdout.on('data', d => {
    out += d;
    if (out.includes('READY\n')) onReady();
  });
  const done = new Promise((resolve, reject) =>
    p.on('exit', code => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`publisher exited ${code}`)))),
  );
  // Either may be read only later (at the load generator's READY): a death
  // before then is not an unhandled rejection, but each reader still sees it.
  const readyOrDied = Promise.race([ready, done]);
  done.catch(() => {});
  readyOrDied.catch(() => {});
  return { ready: readyOrDied, go: () => p.stdin.write('go\n'), stop: () => p.stdin.end(), done };
}

/**
 * Runs the load generator with `pub` publishing from its READY on: `onStart`
 * (the clock, the CPU baselines) runs just before the first publication, a
 * publisher that dies fails the run, and the publisher is stopped when the
 * run ends.
 */
function loadgenWithPublisher(args, pub, onStart) {
  return runLoadgen(args, {
    failWith: pub.done,
    onReady: () =>
      pub.ready.then(() => {
        onStart();
        pub.go();
      }, () => {}),
  }).finally(pub.stop);
}

const proto = c => ['--proto', c.proto ?? 'ignis'];

async function withServer(c, redis, fn, env) {
  const s = await startServer(c, redis, env);
  try {
    return await fn(s);
  } finally {
    await s.stop();
  }
}

// ---- scenarios -------------------------------------------------------------

export const SCENARIOS = {
  a: {
    title: `(a) ${IDLE_CLIENTS.toLocaleString('en')} authenticated idle connections`,
    async run(c, redis, deflate = false) {
      return withServer(c, redis, async s => {
        await sleep(700);
        const before = rssOf(s.pid);
        const cpu0 = cpuOf(s.pid);
        let serverCpu;
        let held;
        const r = await runLoadgen(['idle', '--url', s.url, ...proto(c), '--clients', String(IDLE_CLIENTS), '--hold', '3', ...(deflate ? ['--deflate', '1'] : [])], {
          onResult: () => {
            serverCpu = cpuOf(s.pid) - cpu0;
            // Read while the sockets are still held, after the server settled.
            setTimeout(() => (held = rssOf(s.pid)), 1500);
          },
        });
        if (held === undefined) throw new Error('sockets were not held long enough to read RSS');
        return {
          rss_per_conn_kib: (held - before) / IDLE_CLIENTS / 1024,
          connect_auth_ms: r.connect_auth_ms,
          server_cpu_s: serverCpu,
          loadgen_cpu_s: r.loadgen_cpu_s,
        };
      }, deflate ? { BENCH_DEFLATE: '1' } : {});
    },
  },
  az: {
    title: `(az) the idle connections of (a), each having negotiated perMessageDeflate`,
    contenders: ['original', 'native-node', 'native-bun'],
    run: (c, redis) => SCENARIOS.a.run(c, redis, true),
  },
  b: {
    title: '(b) fan-out burst: 1000 clients in one room, 2000 messages published through Redis',
    async run(c, redis, history = false, deflate = false) {
      return withServer(
        c,
        redis,
        async s => {
        let started;
        let cpu0;
        let threads0;
        const pub = publisher(c, redis, ['--count', '2000', '--rate', '0', ...(history ? ['--history', '1'] : []), ...(deflate ? ['--shape', 'json'] : [])]);
        // A burst reports no latency: the load generator skips the stamps.
        const r = await loadgenWithPublisher(['receive', '--url', s.url, ...proto(c), '--clients', '1000', '--expect', '2000', '--timeout', '60', '--latency', '0', ...(deflate ? ['--deflate', '1'] : [])], pub, () => {
          cpu0 = cpuOf(s.pid);
          threads0 = threadCpu(s.pid);
          started = performance.now();
        });
        return {
          deliveries_per_s: r.deliveries / ((r.at - started) / 1000),
          time_to_last_ms: r.at - started,
          delivered_pct: (100 * r.deliveries) / r.expected,
          server_cpu_s: cpuOf(s.pid) - cpu0,
          ...perThread(threads0, threadCpu(s.pid), r.deliveries, 'delivery'),
          wire_bytes_per_delivery: r.wire_bytes_per_delivery,
          loadgen_cpu_s: r.loadgen_cpu_s,
        };
        },
        { ...(history ? { BENCH_HISTORY: '1' } : {}), ...(deflate ? { BENCH_DEFLATE: '1' } : {}) },
      );
    },
  },
  h: {
    title: '(h) the burst of (b) with history on: each publication positioned and kept in Redis (the original has no history and runs (b) as is)',
    contenders: ['original', 'native-node', 'native-bun', 'native-node-js-thread', 'native-bun-js-thread', 'native-node-threads', 'native-bun-threads'],
    async run(c, redis) {
      return SCENARIOS.b.run(c, redis, c.id !== 'original');
    },
  },
  bz: {
    title: '(bz) the burst of (b) with perMessageDeflate on: every client negotiates it and inflates what it gets',
    contenders: ['original', 'native-node', 'native-bun'],
    run: (c, redis) => SCENARIOS.b.run(c, redis, false, true),
  },
  c: {
    title: '(c) steady fan-out: 500 msg/s to 1000 clients for 4 s',
    async run(c, redis, deflate = false) {
      return withServer(c, redis, async s => {
        let cpu0;
        let threads0;
        const pub = publisher(c, redis, ['--count', '2000', '--rate', '500', ...(deflate ? ['--shape', 'json'] : [])]);
        const r = await loadgenWithPublisher(['receive', '--url', s.url, ...proto(c), '--clients', '1000', '--expect', '2000', '--timeout', '30', ...(deflate ? ['--deflate', '1'] : [])], pub, () => {
          cpu0 = cpuOf(s.pid);
          threads0 = threadCpu(s.pid);
        });
        return {
          p50_ms: r.p50_ms,
          p99_ms: r.p99_ms,
          max_ms: r.max_ms,
          delivered_pct: (100 * r.deliveries) / r.expected,
          server_cpu_s: cpuOf(s.pid) - cpu0,
          ...perThread(threads0, threadCpu(s.pid), r.deliveries, 'delivery'),
          wire_bytes_per_delivery: r.wire_bytes_per_delivery,
          loadgen_cpu_s: r.loadgen_cpu_s,
        };
      }, deflate ? { BENCH_DEFLATE: '1' } : {});
    },
  },
  cz: {
    title: '(cz) the steady fan-out of (c) with perMessageDeflate on',
    contenders: ['original', 'native-node', 'native-bun'],
    run: (c, redis) => SCENARIOS.c.run(c, redis, true),
  },
  d: {
    title: '(d) 50 clients in closed loop; the JS message handler answers each with sendToClient',
    run: (c, redis) => closedLoop(c, redis, 'echo'),
  },
  l: {
    title: '(l) light load: the echo of (d) with one client in closed loop, so that every round trip finds the server idle',
    run: (c, redis) => closedLoop(c, redis, 'echo', 1, 4),
  },
  r: {
    title: '(r) the closed loop of (d) with a realistic handler: it validates and prices a 1.7 KiB order and answers a 1 KiB receipt',
    contenders: ['original', 'native-node', 'native-bun', 'native-node-js-thread', 'native-bun-js-thread', 'native-node-threads', 'native-bun-threads'],
    run: (c, redis) => closedLoop(c, redis, 'order'),
  },
  e: {
    title: '(e) two instances, 1000 clients each; a client on one sends 100 msg/s for 5 s to a room spanning both',
    async run(c, redis) {
      const a = await startServer(c, redis);
      const b = await startServer(c, redis);
      try {
        const common = [...proto(c), '--clients', '1000', '--event', 'chat', '--expect', '500', '--timeout', '30'];
        let readyB;
        const bReady = new Promise(r => (readyB = r));
        const far = runLoadgen(['receive', '--url', b.url, ...common], { onReady: () => readyB() });
        await bReady;
        const near = runLoadgen(['receive', '--url', a.url, ...common, '--send', '500', '--rate', '100']);
        const [rb, ra] = await Promise.all([far, near]);
        return {
          cross_p50_ms: rb.p50_ms,
          cross_p99_ms: rb.p99_ms,
          cross_max_ms: rb.max_ms,
          local_p99_ms: ra.p99_ms,
          delivered_pct: (100 * (ra.deliveries + rb.deliveries)) / (ra.expected + rb.expected),
        };
      } finally {
        await a.stop();
        await b.stop();
      }
    },
  },
};

/** (d), (r) and (l): `clients` clients, each sending `message` and waiting for the answer. */
function closedLoop(c, redis, message, clients = 50, seconds = 5) {
  return withServer(c, redis, async s => {
    const cpu0 = cpuOf(s.pid);
    const threads0 = threadCpu(s.pid);
    const r = await runLoadgen(['echo', '--url', s.url, ...proto(c), '--clients', String(clients), '--duration', String(seconds), '--message', message]);
    const cpu = cpuOf(s.pid) - cpu0;
    const split = perThread(threads0, threadCpu(s.pid), r.round_trips, 'round_trip');
    if (r.closed_early > 0) throw new Error(`${r.closed_early} of ${clients} clients were disconnected during the loop`);
    if (r.rejected > 0) throw new Error(`${r.rejected} orders were answered with an error`);
    return {
      round_trips_per_s: r.per_second,
      p50_ms: r.p50_ms,
      p99_ms: r.p99_ms,
      server_cpu_s: cpu,
      cpu_us_per_round_trip: (cpu * 1e6) / r.round_trips,
      ...split,
      // Derived, not measured: the round trips/s at which the JavaScript
      // thread alone would be busy all the time, were the other threads on
      // cores of their own (a many-core host).
      js_bound_round_trips_per_s: 1e6 / split.js_us_per_round_trip,
      loadgen_cpu_s: r.loadgen_cpu_s,
    };
  });
}

/** What `auto` picks for a server started from here (on one core when
 * `oneCore`), asked of the addon itself. */
function autoRunMode(oneCore) {
  const code = `const { WebSocketServer } = require(${JSON.stringify(path.join(root, 'dist', 'index.js'))});
    console.log(new WebSocketServer({ logLevel: 'silent', authenticateFn: () => null }).runMode);`;
  const [cmd, args] = oneCore ? ['taskset', ['-c', '0', node, '-e', code]] : [node, ['-e', code]];
  return execFileSync(cmd, args, { encoding: 'utf8', env: { ...process.env, IGNIS_WS_RUN_MODE: '' } }).trim();
}
const otherMode = mode => (mode === 'js-thread' ? 'threads' : 'js-thread');

// Beside `auto`, each scenario runs the other mode, forced.
const otherThanAuto = otherMode(autoRunMode(false));
for (const key of ['b', 'h', 'c', 'd', 'l', 'r', 'e']) SCENARIOS[key].modes = [otherThanAuto];

const otherThanAutoOnOneCore = otherMode(autoRunMode(true));
for (const key of ['b', 'h', 'c', 'd', 'r']) {
  const sc = SCENARIOS[key];
  SCENARIOS[`p${key}`] = {
    title: `${sc.title.replace(/^\((\w)\)/, '(p$1)')}; server pinned to one core (taskset), load on the other`,
    contenders: sc.contenders,
    modes: [otherThanAutoOnOneCore],
    async run(c, redis) {
      pinned = true;
      try {
        return await sc.run(c, redis);
      } finally {
        pinned = false;
      }
    },
  };
}

// ---- main ------------------------------------------------------------------

function machine() {
  const v = cmd => {
    try {
      return execFileSync(cmd[0], cmd.slice(1), { encoding: 'utf8' }).trim().split('\n')[0];
    } catch {
      return 'unknown';
    }
  };
  const pkg = p => JSON.parse(fs.readFileSync(path.join(root, 'node_modules', p, 'package.json'), 'utf8')).version;
  return {
    date: new Date().toISOString(),
    cpu: `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'unknown'}`,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    bun: v([bun, '--version']),
    redis: v(['redis-server', '--version']),
    packages: {
      'ignis-ws-native': JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version,
      '@venizia/ignis-helpers': pkg('@venizia/ignis-helpers'),
      ws: pkg('ws'),
      ioredis: pkg('ioredis'),
      'socket.io': pkg('socket.io'),
      '@socket.io/redis-adapter': pkg('@socket.io/redis-adapter'),
    },
    repeat: REPEAT,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (!fs.existsSync(loadgen)) throw new Error('build the load generator first: cargo build --release --manifest-path bench/loadgen/Cargo.toml');
  const redis = await startRedis();
  // With the one-core scenarios, Redis runs beside the load, not the server.
  if (ONLY.some(k => k.startsWith('p'))) execFileSync('taskset', ['-pc', '1', String(redis.proc.pid)], { stdio: 'ignore' });
  const runs = {}; // runs[scenario][contender] = [result, …]
  try {
    for (let rep = 1; rep <= REPEAT; rep++) {
      for (const key of ONLY) {
        const sc = SCENARIOS[key];
        runs[key] ??= {};
        for (const c of CONTENDERS) {
          if (sc.contenders && !sc.contenders.includes(c.id)) continue;
          // A forced run mode only where it is not what `auto` runs.
          if (c.env?.IGNIS_WS_RUN_MODE && !(sc.modes ?? []).includes(c.env.IGNIS_WS_RUN_MODE)) continue;
          let r;
          try {
            r = await sc.run(c, redis);
          } catch (e) {
            r = { error: String(e.message ?? e).slice(0, 300) };
          }
          (runs[key][c.id] ??= []).push(r);
          console.log(`[${rep}/${REPEAT}] ${key} ${c.id.padEnd(12)} ${JSON.stringify(r, (k, v) => (typeof v === 'number' ? Math.round(v * 100) / 100 : v))}`);
          await sleep(300);
        }
      }
    }
  } finally {
    await redis.stop();
  }
  let data = { machine: machine(), contenders: CONTENDERS.map(({ id, label }) => ({ id, label })), scenarios: Object.fromEntries(ONLY.map(k => [k, SCENARIOS[k].title])), runs };
  const previous = path.join(here, 'results.json');
  if (process.env.BENCH_MERGE && fs.existsSync(previous)) {
    // Re-measured scenarios replace theirs whole (every contender, one run),
    // so each scenario's ratios still come from a single run.
    const old = JSON.parse(fs.readFileSync(previous, 'utf8'));
    data = {
      ...old,
      machine: { ...data.machine, merged: [...(old.machine.merged ?? []).filter(m => !m.startsWith(`${ONLY.join(',')} `)), `${ONLY.join(',')} re-measured ${data.machine.date}`] },
      scenarios: { ...old.scenarios, ...data.scenarios },
      runs: { ...old.runs, ...runs },
    };
  }
  fs.writeFileSync(path.join(here, 'results.json'), JSON.stringify(data, null, 1) + '\n');
  const { markdown, svg } = render(data);
  fs.writeFileSync(path.join(here, 'RESULTS.md'), markdown);
  fs.writeFileSync(path.join(here, 'results.svg'), svg);
  console.log(markdown);
}
