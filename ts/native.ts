// The native addon, through napi-rs's generated loader (../index.js). It
// picks the binary for this platform: the one built next to it in a source
// checkout, or the prebuilt package `ignis-ws-native-<platform>` that npm
// installed as an optional dependency. When none fits, this says which
// platform this is and how to build from source, instead of the loader's
// generic message.

import type * as Binding from '../index';

/** Platforms with a prebuilt binary package. */
export const PREBUILT = [
  'linux-x64-gnu',
  'linux-arm64-gnu',
  'linux-x64-musl',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
] as const;

function libc(): string {
  if (process.platform !== 'linux') return '';
  try {
    // musl's dynamic loader, as Alpine and every musl system install it.
    return require('node:fs').readdirSync('/lib').some((f: string) => f.startsWith('ld-musl-')) ? '-musl' : '-gnu';
  } catch {
    return '-gnu';
  }
}

/** This process's platform as the binary packages name it. */
export function platformName(): string {
  return `${process.platform}-${process.arch}${libc()}${process.platform === 'win32' ? '-msvc' : ''}`;
}

function load(): typeof Binding {
  try {
    return require('../index.js') as typeof Binding;
  } catch (cause) {
    const runtime = process.versions.bun ? `Bun ${process.versions.bun}` : `Node ${process.versions.node}`;
    const error = new Error(
      `[ignis-ws-native] no native binary for ${platformName()} (${runtime}). ` +
        `Prebuilt binaries exist for ${PREBUILT.join(', ')}; if this is one of them, ` +
        `reinstall so that npm installs the optional dependency ignis-ws-native-${platformName()} ` +
        `(it is skipped by --no-optional / --omit=optional). ` +
        `Otherwise build from source: install a Rust toolchain (https://rustup.rs), clone the ` +
        `repository, then run \`npm install\` (it builds the addon) and depend on that checkout.`,
    );
    (error as { cause?: unknown }).cause = cause;
    throw error;
  }
}

export const native = load();
