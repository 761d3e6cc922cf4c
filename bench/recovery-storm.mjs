// The recovery storm at scale: two instances sharing a redis-server of its
// own, a history room at 100 publications/s, N client SDKs re-joining at
// once through a rolling restart (or a crash) of each instance.
//
//   node bench/recovery-storm.mjs [--clients 5000] [--runs 1] [--path direct|balancer]
//                                 [--signal SIGTERM|SIGKILL] [--messages 1200]
//   bun bench/recovery-storm.mjs …   (servers and clients on Bun)
//
// Prints one line per run: lost / duplicated / out of order, the time from
// each stop to every client it cut off back and recovered, the wait from
// `connected` to `joined`, and the peak history reads per second an
// instance served. Bounded: each run publishes `messages` at 100/s.
import { parseArgs } from 'node:util';
import { runStorm } from '../__test__/storm.mjs';
import { startRedis } from '../__test__/redis-helpers.mjs';

const { values } = parseArgs({
  options: {
    clients: { type: 'string', default: '5000' },
    runs: { type: 'string', default: '1' },
    path: { type: 'string', default: 'direct' },
    signal: { type: 'string', default: 'SIGTERM' },
    messages: { type: 'string', default: '1200' },
  },
});
const redis = await startRedis();
const runtime = process.versions.bun ? `Bun ${process.versions.bun}` : `Node ${process.versions.node}`;
let failed = 0;
for (let i = 1; i <= Number(values.runs); i++) {
  const r = await runStorm({
    redisUrl: redis.url,
    clients: Number(values.clients),
    messages: Number(values.messages),
    path: values.path,
    signal: values.signal,
    sample: true,
  });
  const ok = r.lost === 0 && r.duplicated === 0 && r.outOfOrder === 0 && r.complete === r.clients;
  if (!ok) failed++;
  const back = r.recovery.map(x => `${x.instance}: ${x.cut} cut, all back and recovered in ${x.backWithinMs} ms (down ${x.downMs} ms)`).join('; ');
  console.log(
    `${runtime} run ${i} ${values.path} ${values.signal} ${r.clients} clients: ${ok ? 'OK' : 'FAILED'} ` +
      `lost ${r.lost}, duplicated ${r.duplicated}, out of order ${r.outOfOrder}; ${back}; ` +
      `connected→joined p50 ${r.joinWaitMs.p50} ms, p99 ${r.joinWaitMs.p99} ms, max ${r.joinWaitMs.max} ms; ` +
      `peak history reads/s per instance ${r.peakReadsPerSecond}` +
      (ok ? '' : `; ${JSON.stringify(r.bad)}`),
  );
}
await redis.stop();
console.log(`${Number(values.runs) - failed} of ${values.runs} runs without loss, duplicate or disorder`);
process.exit(failed ? 1 : 0);
