// Option normalisation: the original's defaults, and a clear error naming
// the option for anything that cannot work.

import { WebSocketDefaults } from './constants';
import type { IWebSocketServerOptions, TLogLevel } from './types';

const LOG_LEVELS: readonly TLogLevel[] = ['silent', 'error', 'warn', 'info', 'debug'];

export class WebSocketOptionError extends TypeError {
  constructor(option: string, problem: string) {
    super(`[ignis-ws-native] Invalid option ${option}: ${problem}`);
    this.name = 'WebSocketOptionError';
  }
}

export interface NormalisedOptions {
  identifier: string;
  host: string;
  port: number;
  path: string;
  defaultRooms: string[];
  authTimeout: number;
  heartbeatInterval: number;
  heartbeatTimeout: number;
  encryptedBatchLimit: number;
  requireEncryption: boolean;
  nativeEncryption: boolean;
  maxPayloadLength: number;
  idleTimeout: number;
  backpressureLimit: number;
  closeOnBackpressureLimit: boolean;
  sendPings: boolean;
  logLevel: TLogLevel;
  logFormat: 'text' | 'json';
  allowedOrigins: string[];
  maxConnections: number;
  maxConnectionsPerIp: number;
  maxRoomsPerClient: number;
  maxFramesPerSecond: number;
  maxPendingAuth: number;
  metricsPath: string | undefined;
  backlog: number;
  sendTimeout: number;
  tlsCert: string | undefined;
  tlsKey: string | undefined;
}

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
  const path = str('path', opts.path, WebSocketDefaults.PATH);
  if (!path.startsWith('/')) {
    throw new WebSocketOptionError('path', `must start with "/", got ${describe(path)}`);
  }
  let defaultRooms = [WebSocketDefaults.ROOM, WebSocketDefaults.NOTIFICATION_ROOM];
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
  const logLevel = (opts.logLevel ?? 'info') as TLogLevel;
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
  const logFormat = opts.logFormat ?? 'text';
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
    logFormat,
    allowedOrigins,
    maxConnections: limit('maxConnections', 100_000),
    maxConnectionsPerIp: limit('maxConnectionsPerIp', 0),
    maxRoomsPerClient: limit('maxRoomsPerClient', 1_000),
    maxFramesPerSecond: limit('maxFramesPerSecond', 1_000),
    maxPendingAuth: limit('maxPendingAuthentications', 10_000),
    metricsPath,
    backlog: num('backlog', opts.backlog, 511, { min: 1, integer: true }),
    sendTimeout: num('sendTimeout', opts.sendTimeout, 30_000, { min: 0 }),
    tlsCert,
    tlsKey,
    identifier: str('identifier', opts.identifier, 'WEBSOCKET_SERVER'),
    host: str('host', opts.host, '0.0.0.0'),
    port: num('port', opts.port, 0, { min: 0, integer: true }),
    path,
    defaultRooms,
    authTimeout: num('authTimeout', opts.authTimeout, WebSocketDefaults.AUTH_TIMEOUT, { min: 1 }),
    heartbeatInterval: num('heartbeatInterval', opts.heartbeatInterval, WebSocketDefaults.HEARTBEAT_INTERVAL, { min: 1 }),
    heartbeatTimeout: num('heartbeatTimeout', opts.heartbeatTimeout, WebSocketDefaults.HEARTBEAT_TIMEOUT, { min: 1 }),
    encryptedBatchLimit: num('encryptedBatchLimit', opts.encryptedBatchLimit, WebSocketDefaults.ENCRYPTED_BATCH_LIMIT, {
      min: 1,
      integer: true,
    }),
    requireEncryption: bool('requireEncryption', opts.requireEncryption, false) || opts.encryption === 'ecdh-p256-aes-256-gcm',
    nativeEncryption: opts.encryption === 'ecdh-p256-aes-256-gcm',
    maxPayloadLength: num('serverOptions.maxPayloadLength', so.maxPayloadLength, WebSocketDefaults.MAX_PAYLOAD_LENGTH, {
      min: 1,
      integer: true,
    }),
    idleTimeout: num('serverOptions.idleTimeout', so.idleTimeout, WebSocketDefaults.IDLE_TIMEOUT, { min: 0 }),
    backpressureLimit: num('serverOptions.backpressureLimit', so.backpressureLimit, WebSocketDefaults.BACKPRESSURE_LIMIT, {
      min: 1,
      integer: true,
    }),
    closeOnBackpressureLimit: bool('serverOptions.closeOnBackpressureLimit', so.closeOnBackpressureLimit, false),
    sendPings: bool('serverOptions.sendPings', so.sendPings, WebSocketDefaults.SEND_PINGS),
    logLevel,
  };
}
