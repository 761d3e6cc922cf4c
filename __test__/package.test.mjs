// Install without a Rust toolchain: `npm run pack:all` makes the publishable
// tarballs, an application installs them with no cargo or rustc on PATH,
// and the server runs on Node and on Bun from the prebuilt binary. Also:
// what the main package contains, and the loader's error on a platform
// without a binary.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const bun = path.join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'bun.exe' : 'bun');
const node = process.versions.bun ? 'node' : process.execPath;

/** PATH without any directory holding cargo or rustc. */
function pathWithoutRust() {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter(dir => !['cargo', 'rustc'].some(tool => fs.existsSync(path.join(dir, tool))))
    .join(path.delimiter);
}

let tarballs;
let app;

describe('install from the packed tarballs, no Rust toolchain', () => {
  before(() => {
    execFileSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', 'pack:all'], {
      cwd: root,
      stdio: ['ignore', 'ignore', 'inherit'],
      shell: process.platform === 'win32',
    });
    tarballs = fs.readdirSync(path.join(root, 'pkg')).filter(f => f.endsWith('.tgz')).map(f => path.join(root, 'pkg', f));
  });
  after(() => app && fs.rmSync(app, { recursive: true, force: true }));

  test('pack:all writes the main package and this platform binary package', () => {
    const names = tarballs.map(t => path.basename(t)).sort();
    assert.ok(names.includes(`ignis-ws-native-${pkg.version}.tgz`), names.join(', '));
    assert.equal(names.filter(n => /^ignis-ws-native-[a-z0-9]+-[a-z0-9]+(-[a-z]+)?-\d/.test(n)).length, 1, names.join(', '));
  });

  test('the main package holds the JavaScript and types, no sources, tests or binaries; every platform is an optional dependency', () => {
    const main = tarballs.find(t => path.basename(t) === `ignis-ws-native-${pkg.version}.tgz`);
    const files = execFileSync('tar', ['-tzf', main], { encoding: 'utf8' }).trim().split('\n');
    assert.ok(files.includes('package/dist/index.js') && files.includes('package/dist/index.d.ts'));
    assert.ok(files.includes('package/index.js') && files.includes('package/index.d.ts'));
    for (const f of files) {
      assert.doesNotMatch(f, /^package\/(src|ts|__test__|tests|bench|target|npm|demo|docs)\/|\.rs$|\.node$|Cargo/, f);
    }
    const manifest = JSON.parse(execFileSync('tar', ['-xzOf', main, 'package/package.json'], { encoding: 'utf8' }));
    const platforms = fs.readdirSync(path.join(root, 'npm')).map(d => `ignis-ws-native-${d}`);
    assert.deepEqual(Object.keys(manifest.optionalDependencies).sort(), platforms.sort());
    for (const v of Object.values(manifest.optionalDependencies)) assert.equal(v, pkg.version);
    assert.equal(manifest.scripts, undefined, 'no build step on install');
    assert.equal(manifest.engines.node, '>= 20');
  });

  test('an app installs the tarballs with no cargo on PATH and runs the server on Node and on Bun', () => {
    const env = { ...process.env, PATH: pathWithoutRust() };
    // `command -v` fails (1, or 127 in dash) when neither is found; null
    // would mean the shell did not even start, which proves nothing.
    const found = spawnSync('/bin/sh', ['-c', 'command -v cargo || command -v rustc'], { env });
    assert.ok(typeof found.status === 'number' && found.status !== 0, `cargo or rustc is still on PATH (status ${found.status})`);
    const r = spawnSync(node, [path.join(root, 'scripts', 'smoke-install.mjs'), '--runtime', node, '--runtime', bun, ...tarballs], {
      env,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const connected = r.stdout.match(/CONNECTED \{"event":"connected","data":\{"id":"[0-9a-f-]{36}","userId":"u1"/g) ?? [];
    assert.equal(connected.length, 2, `one per runtime: ${r.stdout}`);
    app = /APP (.+)/.exec(r.stdout)[1];
    // The binary came from the platform package, not from a build.
    assert.ok(!fs.readdirSync(path.join(app, 'node_modules', 'ignis-ws-native')).some(f => f.endsWith('.node')));
    assert.ok(fs.readdirSync(path.join(app, 'node_modules')).some(d => /^ignis-ws-native-.+/.test(d)));
  });

  test('on a platform without a binary the loader names it and says how to build from source', () => {
    assert.ok(app, 'needs the app installed by the test before');
    fs.writeFileSync(path.join(app, 'aix.cjs'), "Object.defineProperty(process, 'platform', { value: 'aix' });\n");
    const r = spawnSync(node, ['-r', './aix.cjs', '-e', "require('ignis-ws-native')"], { cwd: app, encoding: 'utf8', timeout: 30_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`no native binary for aix-${process.arch}`));
    assert.match(r.stderr, /rustup\.rs/);
    assert.match(r.stderr, /npm install/);
  });
});
