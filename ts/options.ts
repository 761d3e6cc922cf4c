// Option normalisation: the defaults, and a clear error naming the option
// for anything that cannot work.

import { native } from './native';
import type { LogFormat, LogLevel, NativeOptions } from '../index';
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
 * type of `src/native_server.rs`, the one schema of both layers.
 */
export type NormalisedOptions = NativeOptions;

/** Defaults, from the one place they are set (the native `Config::default()`). */
const D = native.defaultOptions();

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
  const path = str('path', opts.path, D.path);
  if (!path.startsWith('/')) {
    throw new WebSocketOptionError('path', `must start with "/", got ${describe(path)}`);
  }
  let defaultRooms = [...D.defaultRooms];
  if (opts.defaultRooms !== undefined && opts.defaultRooms !== null) {
    if (!Array.isArray(opts.defaultRooms) || !opts.defaultRooms.every(r => typeof r === 'string' && r.length > 0)) {
      throw new WebSocketOptionError('defaultRooms', 'expected an array of non-empty strings');
    }
    defaultRooms = [...opts.defaultRooms];
  }
  const so = opts.serverOptions ?? {};
  if (typeof so !== 'object') {
    throw new WebSocketOptionError('serverOptions', `expected an object, got ${describe(so)}`);
  }
  const logLevel = (opts.logLevel ?? D.logLevel) as TLogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new WebSocketOptionError('logLevel', `expected one of ${LOG_LEVELS.join(', ')}, got ${describe(opts.logLevel)}`);
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
  let presence = { on: false, rooms: undefined as string[] | undefined, events: false, ttl: D.presenceTtl };
  if (opts.presence !== undefined && opts.presence !== null && opts.presence !== false) {
    const p = opts.presence === true ? {} : opts.presence;
    if (typeof p !== 'object') throw new WebSocketOptionError('presence', `expected an object, got ${describe(opts.presence)}`);
    if (p.rooms !== undefined && p.rooms !== null && (!Array.isArray(p.rooms) || !p.rooms.every(r => typeof r === 'string' && r.length > 0))) {
      throw new WebSocketOptionError('presence.rooms', 'expected an array of room names or prefixes ending in "*"');
    }
    presence = {
      on: true,
      rooms: p.rooms ? [...p.rooms] : undefined,
      events: bool('presence.events', p.events, false),
      ttl: num('presence.ttl', p.ttl, D.presenceTtl, { min: 300 }),
    };
  }
  const history = normaliseHistory(opts.history);
  const logFormat = opts.logFormat ?? D.logFormat;
  if (logFormat !== 'text' && logFormat !== 'json') {
    throw new WebSocketOptionError('logFormat', `expected "text" or "json", got ${describe(opts.logFormat)}`);
  }
  let allowedOrigins: string[] = [];
  if (opts.allowedOrigins !== undefined && opts.allowedOrigins !== null) {
    if (!Array.isArray(opts.allowedOrigins) || !opts.allowedOrigins.every(o => typeof o === 'string' && o.length > 0)) {
      throw new WebSocketOptionError('allowedOrigins', 'expected an array of origins such as "https://app.example.com"');
    }
    allowedOrigins = [...opts.allowedOrigins];
  }
  if (opts.shutdownSignals !== undefined && typeof opts.shutdownSignals !== 'boolean') {
    if (!Array.isArray(opts.shutdownSignals) || !opts.shutdownSignals.every(x => typeof x === 'string' && x.startsWith('SIG'))) {
      throw new WebSocketOptionError('shutdownSignals', 'expected true, false or an array of signal names such as "SIGTERM"');
    }
  }
  const limits = opts.limits ?? {};
  if (typeof limits !== 'object') throw new WebSocketOptionError('limits', `expected an object, got ${describe(limits)}`);
  const metricsPath = opts.metricsPath === undefined || opts.metricsPath === null ? undefined : str('metricsPath', opts.metricsPath, '');
  if (metricsPath !== undefined && (!metricsPath.startsWith('/') || metricsPath === path)) {
    throw new WebSocketOptionError('metricsPath', `must start with "/" and differ from path, got ${describe(metricsPath)}`);
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
  const limit = (name: keyof typeof limits, fallback: number) =>
    num(`limits.${name}`, limits[name], fallback, { min: 0, integer: true });
  return {
    identifier: str('identifier', opts.identifier, D.identifier),
    serverId: '',
    host: str('host', opts.host, D.host),
    port: num('port', opts.port, D.port, { min: 0, integer: true }),
    listen: true,
    path,
    defaultRooms,
    authTimeout: num('authTimeout', opts.authTimeout, D.authTimeout, { min: 1 }),
    heartbeatInterval: num('heartbeatInterval', opts.heartbeatInterval, D.heartbeatInterval, { min: 1 }),
    heartbeatTimeout: num('heartbeatTimeout', opts.heartbeatTimeout, D.heartbeatTimeout, { min: 1 }),
    requireEncryption: bool('requireEncryption', opts.requireEncryption, D.requireEncryption) || opts.encryption === 'ecdh-p256-aes-256-gcm',
    nativeEncryption: opts.encryption === 'ecdh-p256-aes-256-gcm',
    encryptedBatchLimit: num('encryptedBatchLimit', opts.encryptedBatchLimit, D.encryptedBatchLimit, { min: 1, integer: true }),
    maxPayloadLength: num('serverOptions.maxPayloadLength', so.maxPayloadLength, D.maxPayloadLength, { min: 1, integer: true }),
    idleTimeout: num('serverOptions.idleTimeout', so.idleTimeout, D.idleTimeout, { min: 0 }),
    backpressureLimit: num('serverOptions.backpressureLimit', so.backpressureLimit, D.backpressureLimit, { min: 1, integer: true }),
    closeOnBackpressureLimit: bool('serverOptions.closeOnBackpressureLimit', so.closeOnBackpressureLimit, D.closeOnBackpressureLimit),
    sendPings: bool('serverOptions.sendPings', so.sendPings, D.sendPings),
    logLevel: logLevel as LogLevel,
    logFormat: logFormat as LogFormat,
    hasMessageHandler: typeof opts.messageHandler === 'function',
    allowedOrigins,
    maxConnections: limit('maxConnections', D.maxConnections),
    maxConnectionsPerIp: limit('maxConnectionsPerIp', D.maxConnectionsPerIp),
    maxRoomsPerClient: limit('maxRoomsPerClient', D.maxRoomsPerClient),
    maxFramesPerSecond: limit('maxFramesPerSecond', D.maxFramesPerSecond),
    maxPendingAuth: limit('maxPendingAuthentications', D.maxPendingAuth),
    metricsPath,
    tlsCert,
    tlsKey,
    backlog: num('backlog', opts.backlog, D.backlog, { min: 1, integer: true }),
    sendTimeout: num('sendTimeout', opts.sendTimeout, D.sendTimeout, { min: 0 }),
    historySize: history.size,
    historyTtl: history.ttl,
    historyRooms: history.rooms,
    presence: presence.on,
    presenceRooms: presence.rooms,
    presenceEvents: presence.events,
    presenceTtl: presence.ttl,
  };
}

/** The `history` option (of a server or an emitter); size 0: off. */
export function normaliseHistory(value: unknown): { size: number; ttl: number; rooms: string[] | undefined } {
  if (value === undefined || value === null || value === false) return { size: 0, ttl: D.historyTtl, rooms: undefined };
  const h = (value === true ? {} : value) as { size?: unknown; ttl?: unknown; rooms?: unknown };
  if (typeof h !== 'object') throw new WebSocketOptionError('history', `expected an object, got ${describe(value)}`);
  let rooms: string[] | undefined;
  if (h.rooms !== undefined && h.rooms !== null) {
    if (!Array.isArray(h.rooms) || !h.rooms.every(r => typeof r === 'string' && r.length > 0)) {
      throw new WebSocketOptionError('history.rooms', 'expected an array of room names or prefixes ending in "*"');
    }
    rooms = [...h.rooms];
  }
  return {
    size: num('history.size', h.size, 100, { min: 1, integer: true }),
    ttl: num('history.ttl', h.ttl, D.historyTtl, { min: 1 }),
    rooms,
  };
}
