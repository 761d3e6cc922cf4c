// Option normalisation: the defaults, and a clear error naming the option
// for anything that cannot work.

import { native } from './native';
import type { LogFormat, LogLevel, NativeOptionSpec, NativeOptions, RunMode } from '../index';
import type { IWebSocketServerOptions, TLogLevel } from './types';

const LOG_LEVELS: readonly TLogLevel[] = ['silent', 'error', 'warn', 'info', 'debug'];

export class WebSocketOptionError extends TypeError {
  constructor(option: string, problem: string) {
    super(`[ignis-ws-native] Invalid option ${option}: ${problem}`);
    this.name = 'WebSocketOptionError';
  }
}

/**
 * The options as the native side takes them: the generated `NativeOptions`
 * type of `src/options.rs`, whose one list states each option's path, kind,
 * bound and default.
 */
export type NormalisedOptions = NativeOptions;

/** Defaults, from the one place they are set (the native `Config::default()`). */
const D = native.defaultOptions();

/** Every option with a plain value: path, kind, lower bound (`src/options.rs`). */
export const SCHEMA: readonly NativeOptionSpec[] = native.optionSchema();
const SPEC = new Map(SCHEMA.map(s => [s.path, s]));

/** The value at a dotted path of the application's options. */
function at(opts: unknown, path: string): unknown {
  let v = opts as Record<string, unknown> | undefined;
  for (const key of path.split('.')) {
    if (v === undefined || v === null) return undefined;
    v = v[key] as Record<string, unknown> | undefined;
  }
  return v;
}

/** Checks `value` against the option at `path`; absent: its default. */
function read(path: string, value: unknown): any {
  const s = SPEC.get(path);
  if (!s) throw new Error(`[ignis-ws-native] no option ${path} in the schema`);
  const def = (D as unknown as Record<string, unknown>)[s.field];
  switch (s.kind) {
    case 'str':
      return str(path, value, def as string);
    case 'opt_str':
      return value === undefined || value === null ? undefined : str(path, value, '');
    case 'bool':
      return bool(path, value, def as boolean);
    case 'int':
      return num(path, value, def as number, { min: s.min, integer: true });
    case 'ms':
    case 'secs':
      return num(path, value, def as number, { min: s.min });
    case 'strings':
    case 'opt_strings':
      if (value === undefined || value === null) return s.kind === 'strings' ? [...(def as string[])] : undefined;
      if (!Array.isArray(value) || !value.every(r => typeof r === 'string' && r.length > 0)) {
        throw new WebSocketOptionError(path, `expected an array of non-empty strings, got ${describe(value)}`);
      }
      return [...value];
    default:
      throw new Error(`[ignis-ws-native] option ${path}: unknown kind ${s.kind}`);
  }
}

const MAX_U32 = 0xffff_ffff;

function num(option: string, value: unknown, fallback: number, opts: { min: number; integer?: boolean }): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new WebSocketOptionError(option, `expected a finite number, got ${describe(value)}`);
  }
  if (value < opts.min) {
    throw new WebSocketOptionError(option, `expected a number >= ${opts.min}, got ${value}`);
  }
  if (opts.integer && !Number.isInteger(value)) {
    throw new WebSocketOptionError(option, `expected an integer, got ${value}`);
  }
  // Integer options cross to the native side as 32-bit unsigned values,
  // which would silently wrap a larger number.
  if (opts.integer && value > MAX_U32) {
    throw new WebSocketOptionError(option, `expected at most ${MAX_U32}, got ${value}`);
  }
  return value;
}

function bool(option: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'boolean') {
    throw new WebSocketOptionError(option, `expected a boolean, got ${describe(value)}`);
  }
  return value;
}

function str(option: string, value: unknown, fallback: string): string {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'string' || value.length === 0) {
    throw new WebSocketOptionError(option, `expected a non-empty string, got ${describe(value)}`);
  }
  return value;
}

export function optionalFn(option: string, value: unknown): ((...args: any[]) => any) | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'function') {
    throw new WebSocketOptionError(option, `expected a function, got ${describe(value)}`);
  }
  return value as (...args: any[]) => any;
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value);
  if (typeof value === 'object') return 'an object';
  return `${typeof value} ${String(value)}`;
}

export function normaliseOptions(opts: IWebSocketServerOptions<any, any>): NormalisedOptions {
  if (!opts || typeof opts !== 'object') {
    throw new WebSocketOptionError('options', `expected an object, got ${describe(opts)}`);
  }
  if (typeof opts.authenticateFn !== 'function') {
    throw new WebSocketOptionError('authenticateFn', `a function is required, got ${describe(opts.authenticateFn)}`);
  }
  for (const group of ['serverOptions', 'limits'] as const) {
    const g = opts[group];
    if (g !== undefined && g !== null && typeof g !== 'object') {
      throw new WebSocketOptionError(group, `expected an object, got ${describe(g)}`);
    }
  }
  // Every option with a plain value, from the schema; `history.*` and
  // `presence.*` are read below, with their objects.
  const plain: Record<string, unknown> = {};
  for (const s of SCHEMA) {
    if (/^(history|presence|perMessageDeflate)\./.test(s.path)) continue;
    plain[s.field] = read(s.path, at(opts, s.path));
  }
  const path = plain.path as string;
  if (!path.startsWith('/')) {
    throw new WebSocketOptionError('path', `must start with "/", got ${describe(path)}`);
  }
  const metricsPath = plain.metricsPath as string | undefined;
  if (metricsPath !== undefined && (!metricsPath.startsWith('/') || metricsPath === path)) {
    throw new WebSocketOptionError('metricsPath', `must start with "/" and differ from path, got ${describe(metricsPath)}`);
  }
  const logLevel = (opts.logLevel ?? D.logLevel) as TLogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new WebSocketOptionError('logLevel', `expected one of ${LOG_LEVELS.join(', ')}, got ${describe(opts.logLevel)}`);
  }
  const logFormat = opts.logFormat ?? D.logFormat;
  if (logFormat !== 'text' && logFormat !== 'json') {
    throw new WebSocketOptionError('logFormat', `expected "text" or "json", got ${describe(opts.logFormat)}`);
  }
  const runMode = opts.runMode ?? D.runMode;
  if (runMode !== 'auto' && runMode !== 'js-thread' && runMode !== 'threads') {
    throw new WebSocketOptionError('runMode', `expected "auto", "js-thread" or "threads", got ${describe(opts.runMode)}`);
  }
  if (opts.logger !== undefined && opts.logger !== null) {
    const l = opts.logger as unknown as Record<string, unknown>;
    if (typeof l !== 'object' || !['error', 'warn', 'info'].every(k => typeof l[k] === 'function')) {
      throw new WebSocketOptionError('logger', 'expected an object with error, warn and info methods');
    }
  }
  for (const name of [
    'validateRoomFn',
    'clientConnectedFn',
    'clientDisconnectedFn',
    'messageHandler',
    'outboundTransformer',
    'handshakeFn',
  ] as const) {
    optionalFn(name, opts[name]);
  }
  if (opts.encryption !== undefined && opts.encryption !== null && opts.encryption !== 'ecdh-p256-aes-256-gcm') {
    throw new WebSocketOptionError('encryption', `expected 'ecdh-p256-aes-256-gcm', got ${describe(opts.encryption)}`);
  }
  bool('acks', opts.acks, false);
  if (opts.shutdownSignals !== undefined && typeof opts.shutdownSignals !== 'boolean') {
    if (!Array.isArray(opts.shutdownSignals) || !opts.shutdownSignals.every(x => typeof x === 'string' && x.startsWith('SIG'))) {
      throw new WebSocketOptionError('shutdownSignals', 'expected true, false or an array of signal names such as "SIGTERM"');
    }
  }
  let tlsCert: string | undefined;
  let tlsKey: string | undefined;
  if (opts.tls !== undefined && opts.tls !== null) {
    const pemText = (name: string, v: unknown): string => {
      if (typeof v === 'string' && v.includes('-----BEGIN')) return v;
      if (Buffer.isBuffer(v)) return v.toString('utf8');
      throw new WebSocketOptionError(name, 'expected PEM text (string or Buffer)');
    };
    tlsCert = pemText('tls.cert', (opts.tls as { cert?: unknown }).cert);
    tlsKey = pemText('tls.key', (opts.tls as { key?: unknown }).key);
  }
  const native = opts.encryption === 'ecdh-p256-aes-256-gcm';
  return {
    ...(plain as unknown as NativeOptions),
    ...normaliseHistory(opts.history),
    ...normalisePresence(opts.presence),
    ...normaliseDeflate(opts),
    requireEncryption: (plain.requireEncryption as boolean) || native,
    nativeEncryption: native,
    serverId: '',
    listen: true,
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
    runMode: runMode as RunMode,
    hasMessageHandler: typeof opts.messageHandler === 'function',
    tlsCert,
    tlsKey,
  };
}

/** An option that is `true`, an object of sub-options, or absent/`false` (off). */
function onOrObject(name: string, value: unknown): Record<string, unknown> | undefined {
  if (value === undefined || value === null || value === false) return undefined;
  const v = value === true ? {} : value;
  if (typeof v !== 'object' || Array.isArray(v)) throw new WebSocketOptionError(name, `expected true or an object, got ${describe(value)}`);
  return v as Record<string, unknown>;
}

/** The `history` option (of a server or an emitter). */
export function normaliseHistory(value: unknown): Pick<NativeOptions, 'history' | 'historySize' | 'historyTtl' | 'historyRooms'> {
  const h = onOrObject('history', value);
  return {
    history: h !== undefined,
    historySize: read('history.size', h?.size),
    historyTtl: read('history.ttl', h?.ttl),
    historyRooms: read('history.rooms', h?.rooms),
  };
}

/**
 * `perMessageDeflate`, or the original's `serverOptions.perMessageDeflate`
 * (the top-level one wins when both are given).
 */
function normaliseDeflate(
  opts: IWebSocketServerOptions<any, any>,
): Pick<NativeOptions, 'perMessageDeflate' | 'perMessageDeflateThreshold' | 'perMessageDeflateLevel'> {
  const top = opts.perMessageDeflate;
  const given = top !== undefined && top !== null ? top : opts.serverOptions?.perMessageDeflate;
  const name = top !== undefined && top !== null ? 'perMessageDeflate' : 'serverOptions.perMessageDeflate';
  const d = onOrObject(name, given);
  const level = read('perMessageDeflate.level', d?.level);
  if (level > 9) throw new WebSocketOptionError('perMessageDeflate.level', `expected 0 to 9, got ${level}`);
  return {
    perMessageDeflate: d !== undefined,
    perMessageDeflateThreshold: read('perMessageDeflate.threshold', d?.threshold),
    perMessageDeflateLevel: level,
  };
}

/** The `presence` option. */
function normalisePresence(value: unknown): Pick<NativeOptions, 'presence' | 'presenceEvents' | 'presenceTtl' | 'presenceRooms'> {
  const p = onOrObject('presence', value);
  return {
    presence: p !== undefined,
    presenceEvents: read('presence.events', p?.events),
    presenceTtl: read('presence.ttl', p?.ttl),
    presenceRooms: read('presence.rooms', p?.rooms),
  };
}
