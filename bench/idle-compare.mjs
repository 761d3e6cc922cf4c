// Scenario (a), idle connections: N authenticated clients held open; server
// RSS per connection and connect+auth time, this project on Node and on Bun
// against the original Ignis helper on Bun, same run.
//
//   node bench/idle-compare.mjs [clients=10000]
//
// Needs redis-server (the original requires Redis) and a release build of
// bench/loadgen (cargo build --release in bench/loadgen).
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedis } from '../__test__/redis-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..');
const CLIENTS = Number(process.argv[2] ?? 10_000);
const loadgen = path.join(here, 'loadgen', 'target', 'release', 'ignis-ws-loadgen');
const bun = path.join(root, 'node_modules', '.bin', 'bun');
const sleep = ms => new Promise(r => setTimeout(r, ms));
const rss = pid => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]) * 1024;

async function server(cmd, args, env) {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'], env: { ...process.env, ...env } });
  let out = '';
  child.stdout.on('data', d => (out += d));
  for (let i = 0; i < 300 && !/PORT (\d+)/.test(out); i++) await sleep(50);
  return { child, port: Number(/PORT (\d+)/.exec(out)[1]) };
}

async function measure(label, srv) {
  await sleep(500);
  const before = rss(srv.child.pid);
  const lg = spawn(loadgen, ['idle', '--url', `ws://127.0.0.1:${srv.port}/ws`, '--clients', String(CLIENTS), '--hold', '3'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let line = '';
  lg.stdout.on('data', d => (line += d));
  while (!line.includes('\n')) await sleep(20);
  await sleep(1000);
  const held = rss(srv.child.pid);
  const r = JSON.parse(line);
  await new Promise(res => lg.once('exit', res));
  srv.child.kill('SIGKILL');
  const perConn = (held - before) / CLIENTS / 1024;
  console.log(`${label.padEnd(34)} RSS/conn ${perConn.toFixed(2)} KiB   connect+auth ${r.connect_auth_ms.toFixed(0)} ms (${r.per_second}/s)   loadgen CPU ${r.loadgen_cpu_s}s`);
  return { perConn, ms: r.connect_auth_ms };
}

const redis = await startRedis();
const soak = path.join(root, '__test__', 'fixtures', 'soak-server.mjs');
const results = {};
results.original = await measure('original helper on Bun', await server(bun, [path.join(root, '__test__', 'fixtures', 'original-server.mjs')], { REDIS_URL: redis.url }));
results.node = await measure('ignis-ws-native on Node', await server(process.execPath, [soak], {}));
results.bun = await measure('ignis-ws-native on Bun', await server(bun, [soak], {}));
for (const k of ['node', 'bun']) {
  console.log(`${k}: RSS/conn ${(results[k].perConn / results.original.perConn).toFixed(2)}× the original's, connect+auth ${(results.original.ms / results[k].ms).toFixed(2)}× faster`);
}
await redis.stop();
