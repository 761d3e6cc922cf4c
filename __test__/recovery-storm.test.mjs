// Recovery through a rolling restart and a crash of each instance, with
// 1 000 SDK clients re-joining at once, directly and through a TCP
// balancer (docs/RELIABILITY.md, "Recovery storm"): every client gets every
// publication once, in order.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis, noRedis } from './redis-helpers.mjs';
import { runStorm } from './storm.mjs';

let redis;
before(async () => {
  if (!noRedis) redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

const runtime = process.versions.bun ? 'Bun' : 'Node';

describe('recovery storm', { skip: noRedis }, () => {
  for (const path of ['direct', 'balancer']) {
    for (const [signal, what] of [
      ['SIGTERM', 'a rolling restart'],
      ['SIGKILL', 'a crash and restart of each instance'],
    ]) {
      test(`${what}, 1 000 SDK clients ${path === 'direct' ? 'on both instances' : 'through a TCP balancer'} (${runtime}): 1 200 publications each, once, in order`, async () => {
        const r = await runStorm({ redisUrl: redis.url, clients: 1000, messages: 1200, rate: 100, path, signal });
        const summary = JSON.stringify({ ...r, stats: undefined });
        assert.equal(r.published, 1200, summary);
        assert.equal(r.lost, 0, summary);
        assert.equal(r.duplicated, 0, summary);
        assert.equal(r.outOfOrder, 0, summary);
        assert.equal(r.complete, 1000, summary);
        for (const x of r.recovery) {
          assert.ok(x.cut >= 500, `every client of ${x.instance} was cut off: ${summary}`);
          assert.equal(x.unrecovered, 0, summary);
        }
        for (const s of [r.stats.a, r.stats.b]) {
          assert.equal(s.historySkipped, 0, summary);
          assert.equal(s.droppedBackpressure, 0, summary);
        }
      });
    }
  }
});
