// Every accepted form of the `redis` option, reduced to what the native side
// needs: a URL, or cluster seed URLs. Clients and helpers are only read for
// their connection options; their sockets are never used.

import type { NativeRedisOptions, NativeRedisTls } from '../index';
import { WebSocketOptionError, describe } from './options';

export interface IRedisEndpoint {
  host?: string;
  port?: number;
}

/** The object forms of the `redis` option. */
export interface IRedisOptions extends IRedisEndpoint {
  url?: string;
  username?: string;
  password?: string;
  db?: number;
  /**
   * `true` or ioredis-style `{ ca, cert, key, rejectUnauthorized }`: connect
   * with TLS (`rediss://`). `ca` replaces the system trust store.
   */
  tls?: boolean | IRedisTlsOptions;
  /** Redis Cluster seed nodes. */
  nodes?: Array<IRedisEndpoint | string>;
  /** Cluster only: SSUBSCRIBE/SPUBLISH. Not compatible with original instances. */
  sharded?: boolean;
  /** ms `configure()` waits for Redis before rejecting. Default 5000. */
  connectTimeout?: number;
  /** Publications kept while Redis is unreachable; beyond, the oldest are dropped and counted. Default 10000. */
  publishBuffer?: number;
}

export interface IRedisTlsOptions {
  ca?: string | Buffer | Array<string | Buffer>;
  cert?: string | Buffer;
  key?: string | Buffer;
  rejectUnauthorized?: boolean;
}

function pem(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (Array.isArray(v)) return v.map(pem).filter(Boolean).join('\n');
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
}

function tlsDetails(tls: unknown): NativeRedisTls | undefined {
  if (!tls || typeof tls !== 'object') return undefined;
  const t = tls as IRedisTlsOptions;
  const out = { ca: pem(t.ca), cert: pem(t.cert), key: pem(t.key), insecure: t.rejectUnauthorized === false };
  return out.ca || out.cert || out.insecure ? out : undefined;
}

export type TRedisOption = string | IRedisOptions | { getClient(): unknown } | Record<string, unknown>;

const DEFAULT_CONNECT_TIMEOUT = 5000;
const DEFAULT_PUBLISH_BUFFER = 10_000;

function hidePassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

function buildUrl(o: IRedisOptions & Record<string, unknown>, host: string, port: number, withDb: boolean): string {
  const scheme = o.tls ? 'rediss' : 'redis';
  const user = o.username ? encodeURIComponent(String(o.username)) : '';
  const pass = o.password ? encodeURIComponent(String(o.password)) : '';
  const auth = user || pass ? `${user}${pass ? ':' + pass : ''}@` : '';
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  const db = withDb && o.db ? `/${Number(o.db)}` : '';
  return `${scheme}://${auth}${h}:${port}${db}`;
}

function endpoint(option: string, n: IRedisEndpoint | string, base: IRedisOptions & Record<string, unknown>): string {
  if (typeof n === 'string') return /^rediss?:\/\//.test(n) ? n : buildUrl(base, n.split(':')[0], Number(n.split(':')[1] ?? 6379), false);
  if (!n || typeof n !== 'object') throw new WebSocketOptionError(option, `cluster node ${describe(n)} is not {host, port}`);
  return buildUrl(base, n.host ?? '127.0.0.1', Number(n.port ?? 6379), false);
}

/** Reads connection options off an ioredis client (Redis or Cluster). */
function fromIoredis(option: string, client: any): IRedisOptions & Record<string, unknown> {
  if (Array.isArray(client.startupNodes)) {
    const ro = client.options?.redisOptions ?? {};
    return { nodes: client.startupNodes, username: ro.username, password: ro.password, tls: ro.tls };
  }
  const o = client.options;
  if (!o || typeof o !== 'object') throw new WebSocketOptionError(option, 'the Redis client exposes no connection options');
  if (o.path) throw new WebSocketOptionError(option, 'Redis over a Unix socket is not supported; use host and port');
  return { host: o.host, port: o.port, username: o.username, password: o.password, db: o.db, tls: o.tls };
}

export function normaliseRedis(option: string, value: unknown): NativeRedisOptions | undefined {
  if (value === undefined || value === null || value === false) return undefined;
  let o: IRedisOptions & Record<string, unknown>;
  if (typeof value === 'string') {
    o = { url: value };
  } else if (typeof value === 'object') {
    const v = value as any;
    if (typeof v.getClient === 'function') o = fromIoredis(option, v.getClient());
    else if (typeof v.duplicate === 'function' && (v.options || v.startupNodes)) o = fromIoredis(option, v);
    else o = v;
  } else {
    throw new WebSocketOptionError(option, `expected a URL, an options object or a Redis client, got ${describe(value)}`);
  }
  const connectTimeout = o.connectTimeout ?? DEFAULT_CONNECT_TIMEOUT;
  if (typeof connectTimeout !== 'number' || !(connectTimeout > 0)) {
    throw new WebSocketOptionError(`${option}.connectTimeout`, `expected a positive number of ms, got ${describe(connectTimeout)}`);
  }
  const publishBuffer = o.publishBuffer ?? DEFAULT_PUBLISH_BUFFER;
  if (typeof publishBuffer !== 'number' || !(publishBuffer >= 1)) {
    throw new WebSocketOptionError(`${option}.publishBuffer`, `expected a number >= 1, got ${describe(publishBuffer)}`);
  }
  if (o.nodes !== undefined) {
    if (!Array.isArray(o.nodes) || o.nodes.length === 0) {
      throw new WebSocketOptionError(`${option}.nodes`, 'expected a non-empty array of {host, port}');
    }
    const nodes = o.nodes.map(n => endpoint(`${option}.nodes`, n, o));
    return {
      nodes,
      sharded: o.sharded === true,
      connectTimeout,
      publishBuffer,
      display: `cluster ${nodes.map(hidePassword).join(', ')}`,
      tls: tlsDetails(o.tls),
    };
  }
  let url: string;
  if (typeof o.url === 'string') {
    if (!/^rediss?:\/\//.test(o.url)) throw new WebSocketOptionError(option, `expected a redis:// or rediss:// URL, got ${describe(o.url)}`);
    url = o.url;
  } else {
    url = buildUrl(o, o.host ?? '127.0.0.1', Number(o.port ?? 6379), true);
  }
  return { url, sharded: false, connectTimeout, publishBuffer, display: hidePassword(url), tls: tlsDetails(o.tls) };
}
