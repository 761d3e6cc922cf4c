// `npm test`: the Node half, then the Bun half even when the Node half
// failed (so one run shows both), failing if either did.
import { spawnSync } from 'node:child_process';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const failed = [];
for (const half of ['test:node', 'test:bun']) {
  const r = spawnSync(npm, ['run', half], { stdio: 'inherit', shell: process.platform === 'win32' });
  if (r.status !== 0) failed.push(half);
}
if (failed.length) {
  console.error(`\nfailed: ${failed.join(', ')}`);
  process.exit(1);
}
