// Process hygiene: a listening server keeps its process alive like a
// net.Server, and after shutdown() the process exits by itself, on Node and
// on Bun alike.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Client, sleep } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = path.join(here, 'fixtures', 'lifecycle.mjs');
const bun = path.join(here, '..', 'node_modules', '.bin', 'bun');

for (const [runtime, cmd] of [
  ['node', process.execPath.includes('bun') ? 'node' : process.execPath],
  ['bun', bun],
]) {
  describe(`process lifecycle on ${runtime}`, () => {
    test('stays alive while listening, exits by itself after shutdown()', async () => {
      const child = spawn(cmd, [fixture], { stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      const exited = new Promise(r => child.once('exit', code => r(code)));
      child.stdout.on('data', d => (out += d));
      const t0 = performance.now();
      while (!/PORT (\d+)/.test(out)) {
        if (performance.now() - t0 > 10_000) throw new Error('child did not start: ' + out);
        await sleep(20);
      }
      const port = Number(/PORT (\d+)/.exec(out)[1]);
      const c = await Client.auth(`ws://127.0.0.1:${port}/ws`, {});
      await sleep(500);
      assert.equal(child.exitCode, null, 'still running while listening');
      child.stdin.write('stop\n');
      assert.deepEqual(await c.closed, { code: 1001, reason: 'Server shutting down' });
      const code = await Promise.race([exited, sleep(8000).then(() => 'hung')]);
      if (code === 'hung') child.kill('SIGKILL');
      assert.equal(code, 0, 'exits on its own with code 0');
      assert.match(out, /STOPPED/);
    });
  });
}
