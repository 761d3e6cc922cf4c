// Spawns the soak-server fixture and talks to it over IPC.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { until } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/**
 * `how.sameRuntime` runs the server on the runtime running the test (by
 * default Node, for `--expose-gc`); `how.stderr: 'pipe'` gives the caller
 * `child.stderr`, unread until it reads it.
 */
export async function soakServer(options = {}, env = {}, how = {}) {
  const bun = process.execPath.includes('bun');
  const [cmd, args] =
    how.sameRuntime && bun ? [process.execPath, []] : [bun ? 'node' : process.execPath, ['--expose-gc']];
  const child = spawn(cmd, [...args, path.join(here, 'fixtures', 'soak-server.mjs')], {
    stdio: ['ignore', 'pipe', how.stderr ?? 'inherit', 'ipc'],
    env: { ...process.env, ...env, SOAK_OPTIONS: JSON.stringify(options) },
  });
  let out = '';
  child.stdout.on('data', d => (out += d));
  const exited = new Promise(r => child.once('exit', (code, signal) => r({ code, signal })));
  await until(() => /PORT (\d+)/.test(out), 10_000, 'soak server');
  const port = Number(/PORT (\d+)/.exec(out)[1]);
  const ask = msg =>
    new Promise(resolve => {
      const key = Object.keys(msg)[0];
      const on = m => {
        if (key === 'fill' ? m.filled : key === 'logLines' ? m.logged : m[key] !== undefined) {
          child.off('message', on);
          resolve(key === 'fill' || key === 'logLines' ? true : m[key]);
        }
      };
      child.on('message', on);
      child.send(msg);
    });
  return {
    child,
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    output: () => out,
    exited,
    rss: () => ask({ rss: true }),
    stats: () => ask({ stats: true }),
    metrics: () => ask({ metrics: true }),
    logLines: n => ask({ logLines: n }),
    fill: (room, count, size, from = 0) => ask({ fill: { room, count, size, from } }),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.send({ stop: true });
        await Promise.race([exited, new Promise(r => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    },
  };
}
