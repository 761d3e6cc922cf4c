// `npm run pack:all`: writes to pkg/ the publishable tarballs this machine
// can make, the napi-rs way:
//
// - ignis-ws-native-<platform>-<version>.tgz: this platform's release
//   binary, alone (npm/<platform>/package.json says which os, cpu and libc
//   it fits);
// - ignis-ws-native-<version>.tgz: the compiled JavaScript and types
//   (dist/), napi-rs's loader (index.js, index.d.ts), no Rust sources and
//   no binary, with every platform package as an optional dependency of
//   the same version, so npm installs the one that fits and skips the rest.
//
// The other platforms' binaries are built by .github/workflows/release.yml,
// which downloads them into npm/<platform>/ and runs this with --prebuilt:
// then every platform package holding its binary is packed, and nothing is
// compiled but the TypeScript.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'pkg');
const npmCmd = process.platform === 'win32' ? 'npm.cmd' : 'npm';
// Windows runs npm.cmd only through a shell.
const run = (cmd, args, cwd = root) =>
  execFileSync(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', shell: process.platform === 'win32' });

const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const binaryName = pkg.napi.binaryName;

// napi-rs's names for the targets (npm/<dir>), as `napi create-npm-dirs` made them.
const dirs = fs.readdirSync(path.join(root, 'npm')).filter(d => fs.existsSync(path.join(root, 'npm', d, 'package.json')));
const platformPackages = dirs.map(d => JSON.parse(fs.readFileSync(path.join(root, 'npm', d, 'package.json'), 'utf8')));

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });

const prebuilt = process.argv.includes('--prebuilt');
const binaryOf = dir => `${binaryName}.${dir}.node`;
let platforms;
if (prebuilt) {
  run(npmCmd, ['run', 'build:ts']);
  platforms = dirs.filter(d => fs.existsSync(path.join(root, 'npm', d, binaryOf(d))));
  if (platforms.length === 0) throw new Error('--prebuilt: no npm/<platform>/ holds its binary');
} else {
  // 1. This platform's binary, release build (incremental when up to date), and the JavaScript.
  run(npmCmd, ['run', 'build']);
  const built = fs.readdirSync(root).filter(f => f.startsWith(`${binaryName}.`) && f.endsWith('.node'));
  if (built.length !== 1) throw new Error(`expected one ${binaryName}.*.node after the build, found: ${built.join(', ') || 'none'}`);
  const platform = built[0].slice(binaryName.length + 1, -'.node'.length);
  if (!dirs.includes(platform)) throw new Error(`no npm/${platform}: add its target to package.json "napi.targets" and run napi create-npm-dirs`);
  platforms = [platform];
}

// 2. The platform packages: each directory plus its binary, packed from a copy.
for (const platform of platforms) {
  const stage = path.join(out, '.stage', platform);
  fs.cpSync(path.join(root, 'npm', platform), stage, { recursive: true });
  const binary = prebuilt ? path.join(root, 'npm', platform, binaryOf(platform)) : path.join(root, binaryOf(platform));
  fs.copyFileSync(binary, path.join(stage, binaryOf(platform)));
  run(npmCmd, ['pack', '--pack-destination', out], stage);
}

// 3. The main package, from a staged copy of what users need.
const stageMain = path.join(out, '.stage', 'main');
fs.mkdirSync(stageMain, { recursive: true });
for (const f of ['dist', 'index.js', 'index.d.ts', 'README.md']) {
  fs.cpSync(path.join(root, f), path.join(stageMain, f), { recursive: true });
}
const main = { ...pkg };
delete main.devDependencies;
delete main.scripts; // `prepare` builds from source: only for a git checkout
delete main.allowScripts;
main.files = ['dist', 'index.js', 'index.d.ts'];
main.optionalDependencies = Object.fromEntries(platformPackages.map(p => [p.name, pkg.version]));
fs.writeFileSync(path.join(stageMain, 'package.json'), JSON.stringify(main, null, 2) + '\n');
run(npmCmd, ['pack', '--pack-destination', out], stageMain);

fs.rmSync(path.join(out, '.stage'), { recursive: true, force: true });
for (const f of fs.readdirSync(out)) console.log(path.join('pkg', f));
