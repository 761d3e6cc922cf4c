// `npm test`: the Node half and the Bun half in each run mode, forced
// (`auto` picks `js-thread` on up to two cores and `threads` beyond, so
// each machine would run one of them only).
// Each runs even when an earlier one failed (so one run shows all), and
// the whole fails if any did.
import { spawnSync } from 'node:child_process';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const halves = [
  { script: 'test:node', env: { IGNIS_WS_RUN_MODE: 'threads' }, label: 'test:node with IGNIS_WS_RUN_MODE=threads' },
  { script: 'test:bun', env: { IGNIS_WS_RUN_MODE: 'threads' }, label: 'test:bun with IGNIS_WS_RUN_MODE=threads' },
  { script: 'test:node', env: { IGNIS_WS_RUN_MODE: 'js-thread' }, label: 'test:node with IGNIS_WS_RUN_MODE=js-thread' },
  { script: 'test:bun', env: { IGNIS_WS_RUN_MODE: 'js-thread' }, label: 'test:bun with IGNIS_WS_RUN_MODE=js-thread' },
];
const failed = [];
for (const { script, env, label } of halves) {
  if (label) console.log(`\n> ${label}\n`);
  const r = spawnSync(npm, ['run', script], {
    stdio: 'inherit',
    shell: process.platform === 'win32',
    env: { ...process.env, ...env },
  });
  if (r.status !== 0) failed.push(label ?? script);
}
if (failed.length) {
  console.error(`\nfailed: ${failed.join(', ')}`);
  process.exit(1);
}
