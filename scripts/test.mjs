// `npm test`: the Node half and the Bun half in each run mode, forced
// (`auto` picks `js-thread` on up to two cores and `threads` beyond, so
// each machine would run one of them only).
// Each runs even when an earlier one failed (so one run shows all), and
// the whole fails if any did. The four halves print some 5 000 lines; a
// failure's lines (with what led to them) are printed again at the end,
// where a log cut to its tail still shows them.
import { spawn } from 'node:child_process';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const halves = [
  { script: 'test:node', env: { IGNIS_WS_RUN_MODE: 'threads' }, label: 'test:node with IGNIS_WS_RUN_MODE=threads' },
  { script: 'test:bun', env: { IGNIS_WS_RUN_MODE: 'threads' }, label: 'test:bun with IGNIS_WS_RUN_MODE=threads' },
  { script: 'test:node', env: { IGNIS_WS_RUN_MODE: 'js-thread' }, label: 'test:node with IGNIS_WS_RUN_MODE=js-thread' },
  { script: 'test:bun', env: { IGNIS_WS_RUN_MODE: 'js-thread' }, label: 'test:bun with IGNIS_WS_RUN_MODE=js-thread' },
];

// What marks a failure: Bun's "(fail)" line comes after the error it
// reports, node:test's "not ok" before its details; Bun's summary counts
// errors outside tests ("Unhandled error between tests") apart.
const FAILED = /^\s*(\(fail\)|not ok \d+)|Unhandled error|^\s*[1-9]\d* errors?$/;
const BEFORE = 25; // lines kept before a failure's line
const AFTER = 12; // and after it

/** Runs one half, echoing its output; resolves with its status and the lines around its failures. */
function run({ script, env }) {
  return new Promise((resolve) => {
    const child = spawn(npm, ['run', script], {
      stdio: ['inherit', 'pipe', 'pipe'],
      shell: process.platform === 'win32',
      env: { ...process.env, ...env },
    });
    const recent = [];
    const excerpts = [];
    let open = null; // the excerpt still taking lines after its failure
    const rest = { stdout: '', stderr: '' };
    const take = (line) => {
      if (open && open.after > 0) {
        open.lines.push(line);
        open.after -= 1;
        if (FAILED.test(line)) open.after = AFTER;
      } else if (FAILED.test(line)) {
        open = { lines: [...recent, line], after: AFTER };
        excerpts.push(open);
        recent.length = 0;
        return;
      }
      recent.push(line);
      if (recent.length > BEFORE) recent.shift();
    };
    for (const name of ['stdout', 'stderr']) {
      child[name].on('data', (chunk) => {
        process[name].write(chunk);
        const text = rest[name] + chunk.toString('utf8');
        const lines = text.split('\n');
        rest[name] = lines.pop();
        lines.forEach(take);
      });
    }
    child.on('close', (status, signal) => {
      for (const name of ['stdout', 'stderr']) if (rest[name]) take(rest[name]);
      resolve({ status: status ?? signal, excerpts: excerpts.map((e) => e.lines.join('\n')) });
    });
  });
}

const failed = [];
for (const half of halves) {
  console.log(`\n> ${half.label}\n`);
  const { status, excerpts } = await run(half);
  if (status !== 0) failed.push({ label: half.label, status, excerpts });
}
if (failed.length) {
  for (const { label, status, excerpts } of failed) {
    console.error(`\n==== ${label}: exit ${status}; what it reported as failed:`);
    if (excerpts.length === 0) console.error('(no failing test named: the runner itself exited non-zero)');
    for (const e of excerpts) console.error(`----\n${e}`);
  }
  console.error(`\nfailed: ${failed.map((f) => f.label).join(', ')}`);
  process.exit(1);
}
