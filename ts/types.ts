// The original's type names and generics, so code written for
// `@venizia/ignis-helpers` compiles unchanged against this package.

import type { TWebSocketClientState, TWebSocketMessageType } from './constants';

export type ValueOrPromise<T> = T | Promise<T>;
export type TNullable<T> = T | null | undefined;

/** Inbound frame: `{ event, data?, id? }`. */
export interface IWebSocketMessage<DataType = unknown> {
  event: string;
  data?: DataType;
  id?: string;
}

/** Redis envelope (docs/PROTOCOL.md §10). */
export interface IRedisSocketMessage<DataType = unknown> {
  serverId: string;
  type: TWebSocketMessageType;
  target?: string;
  event: string;
  data: DataType;
  exclude?: string[];
}

/** Transport settings (the original's Bun `IBunWebSocketConfig`). */
/** `perMessageDeflate`'s settings. */
export interface IPerMessageDeflateOptions {
  /** Messages shorter than this many bytes go uncompressed. Default 128. */
  threshold?: number;
  /** zlib level, 0 (fastest) to 9 (smallest). Default 6. */
  level?: number;
}

export interface IBunWebSocketConfig {
  /**
   * permessage-deflate (RFC 7692), as the original passes it to Bun: the
   * same as the top-level `perMessageDeflate` (which wins when both are
   * given). Default off.
   */
  perMessageDeflate?: boolean | IPerMessageDeflateOptions;
  /** Largest inbound message in bytes; larger ones close the socket with 1009. Default 131072. */
  maxPayloadLength?: number;
  /** Seconds without any inbound traffic before the socket is closed (1001 "Idle timeout"); 0 disables. Default 60. */
  idleTimeout?: number;
  /** Bytes queued for one socket before further messages are dropped (and counted). Default 1 MiB. */
  backpressureLimit?: number;
  /** Close a socket (1013) instead of dropping when it exceeds `backpressureLimit`. Default false. */
  closeOnBackpressureLimit?: boolean;
  /** Ping idle sockets so live peers are not cut by `idleTimeout`. Default true. */
  sendPings?: boolean;
  /** Accepted for compatibility; the server never receives its own publishes. */
  publishToSelf?: boolean;
}

/** A client socket as handed to application code: send to it or close it. */
export interface IWebSocket {
  readonly remoteAddress: string;
  readonly readyState: number;
  send(data: string): number;
  close(code?: number, reason?: string): void;
}

export interface IWebSocketClient<MetadataType extends Record<string, unknown> = Record<string, unknown>> {
  id: string;
  userId?: string;
  socket: IWebSocket;
  state: TWebSocketClientState;
  rooms: Set<string>;
  backpressured: boolean;
  encrypted: boolean;
  connectedAt: number;
  lastActivity: number;
  metadata?: MetadataType;
  serverPublicKey?: string;
  salt?: string;
}

export interface IWebSocketData<MetadataType extends Record<string, unknown> = Record<string, unknown>> {
  clientId: string;
  userId?: string;
  metadata?: MetadataType;
}

export type TWebSocketAuthenticateFn<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> = (opts: AuthDataType) => ValueOrPromise<{ userId?: string; metadata?: MetadataType } | null | false>;

export type TWebSocketHandshakeFn<AuthDataType extends Record<string, unknown> = Record<string, unknown>> = (opts: {
  clientId: string;
  userId?: string;
  data: AuthDataType;
}) => ValueOrPromise<{ serverPublicKey: string; salt: string } | null | false>;

export type TWebSocketValidateRoomFn = (opts: {
  clientId: string;
  userId?: string;
  rooms: string[];
}) => ValueOrPromise<string[]>;

export type TWebSocketClientConnectedFn<MetadataType extends Record<string, unknown> = Record<string, unknown>> =
  (opts: { clientId: string; userId?: string; metadata?: MetadataType }) => ValueOrPromise<void>;

export type TWebSocketClientDisconnectedFn = (opts: { clientId: string; userId?: string }) => ValueOrPromise<void>;

export type TWebSocketMessageHandler = (opts: {
  clientId: string;
  userId?: string;
  message: IWebSocketMessage;
}) => ValueOrPromise<void>;

export type TWebSocketOutboundTransformer<
  DataType = unknown,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> = (opts: {
  client: IWebSocketClient<MetadataType>;
  event: string;
  data: DataType;
}) => ValueOrPromise<TNullable<{ event: string; data: DataType }>>;

export type TLogLevel = 'silent' | 'error' | 'warn' | 'info' | 'debug';

/** Where log lines go; each method receives one finished line. */
export interface IWebSocketLogger {
  error(line: string): void;
  warn(line: string): void;
  info(line: string): void;
  debug?(line: string): void;
}

export interface IWebSocketServerOptions<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> {
  /** Names this server in logs. Default `WEBSOCKET_SERVER`. */
  identifier?: string;
  /** Interface to listen on. Default `0.0.0.0`. */
  host?: string;
  /** TCP port; 0 picks a free one (read it from `ws.port` after `configure()`). Default 0. */
  port?: number;
  /** Open no port: serve only upgrades handed over by `attach(httpServer)`. */
  noServer?: boolean;
  /**
   * Bun: the application's HTTP handler (`app.fetch` of Hono, Elysia…). The
   * server listens on `host:port` for both: WebSocket upgrades at `path` are
   * served natively, every other connection goes to this handler (served by
   * `Bun.serve` on a loopback port, spliced byte for byte). The handler's
   * second argument is that server, its `requestIP(req)` reporting the real
   * client. On Node use `attach(httpServer)` instead.
   */
  fetch?: (request: Request, server: any) => Response | Promise<Response | undefined | void> | undefined | void;
  /**
   * Any runtime: the `host:port` (or `{ host, port }`) of an HTTP server to
   * which every connection that does not open with a WebSocket upgrade at
   * `path` is spliced, so both share this server's port. `fetch` sets it.
   */
  httpFallback?: string | { host?: string; port: number };
  /** Upgrade path. Default `/ws`. */
  path?: string;
  /**
   * Redis for scale-out. Without it the server runs on an in-process bus
   * (one instance). Accepted for drop-in use; see docs/SCALE-OUT.md for the forms.
   */
  redis?: unknown;
  /** The original's name for `redis`. */
  redisConnection?: unknown;
  /** The original's Bun server; ignored (this server listens by itself). */
  server?: unknown;
  defaultRooms?: string[];
  serverOptions?: IBunWebSocketConfig;
  authTimeout?: number;
  heartbeatInterval?: number;
  heartbeatTimeout?: number;
  encryptedBatchLimit?: number;
  requireEncryption?: boolean;
  /**
   * Built-in end-to-end encryption, done in Rust: `'ecdh-p256-aes-256-gcm'`
   * (the documented scheme, docs/PROTOCOL.md §9). Every client must send a
   * `publicKey` (base64 raw P-256) in its `authenticate` data; `connected`
   * carries `serverPublicKey` and `salt`; every later frame is sent
   * encrypted. No `handshakeFn` or `outboundTransformer` is needed (they
   * are ignored when this is set).
   */
  encryption?: 'ecdh-p256-aes-256-gcm';
  authenticateFn: TWebSocketAuthenticateFn<AuthDataType, MetadataType>;
  validateRoomFn?: TWebSocketValidateRoomFn;
  clientConnectedFn?: TWebSocketClientConnectedFn<MetadataType>;
  clientDisconnectedFn?: TWebSocketClientDisconnectedFn;
  messageHandler?: TWebSocketMessageHandler;
  outboundTransformer?: TWebSocketOutboundTransformer<unknown, MetadataType>;
  handshakeFn?: TWebSocketHandshakeFn<AuthDataType>;
  /**
   * Origins allowed to open sockets, against cross-site WebSocket hijacking:
   * exact origins (`https://app.example.com`) or `*.example.com`. Others get
   * HTTP 403. Default: any origin (an explicit list is recommended for
   * browser-facing servers). Requests without an Origin header (non-browser
   * clients) are always allowed.
   */
  allowedOrigins?: string[];
  /** Abuse limits; see docs/RELIABILITY.md for defaults and close codes. */
  limits?: IWebSocketLimits;
  /**
   * Length of the listening socket's accept queue (the kernel caps it at
   * `net.core.somaxconn`). Default 0: that cap itself (4096 where it cannot
   * be read), as Go's `net.Listen` asks.
   */
  backlog?: number;
  /**
   * Milliseconds a write to a client may make no progress (the client
   * stopped reading and its TCP window is full) before the connection is
   * dropped. Default 30000; 0 disables it.
   */
  sendTimeout?: number;
  /**
   * Request/response: a client frame with a string `id` (at most 64
   * characters) is answered, once `messageHandler` settles, with
   * `{"event":"ack","data":{"id":…,"result":…}}` (its return value), or
   * `{"event":"ack","data":{"id":…,"error":…}}` when it throws or rejects:
   * the message of a `WebSocketClientError`, otherwise a generic text.
   * Frames without `id` get no ack. Default false (the original's wire).
   */
  acks?: boolean;
  /**
   * History rooms: keep the last `size` (default 100) publications of each
   * matching room for `ttl` ms (default 300000) after its last publication,
   * so a client that was away can recover what it missed (`join` with
   * `recover`). `rooms`: names or prefixes ending in `*`; default every room
   * but the default rooms and client-id rooms. Publications to these rooms
   * carry `room`, `offset` and `epoch`; a join answers `joined`. Kept in
   * process, or, with `redis`, in Redis: one sequence per room for the
   * whole fleet, recoverable on any instance (a publication to a history
   * room then reaches its members on every instance). Default: off.
   */
  history?: boolean | { size?: number; ttl?: number; rooms?: string[] };
  /**
   * Presence: `getPresence({room})` lists a room's members
   * (`{clientId, userId, metadata?}`); with `events: true` the members of a
   * presence room receive `{"event":"presence","data":{"room","clientId",
   * "userId","state":"join"|"leave"}}` when someone joins or leaves it.
   * `rooms` as for `history`. With `redis` both cover the whole fleet:
   * entries live in Redis, refreshed while their instance lives, and the
   * members of an instance that stops vanish at most `ttl` ms (default
   * 30000) after its last refresh. Default: off.
   */
  presence?: boolean | { rooms?: string[]; events?: boolean; ttl?: number };
  /**
   * permessage-deflate (RFC 7692), the name Bun uses: offered to every
   * client that asks for it (browsers always do), with no context takeover
   * on either side. Room, broadcast, user and Redis-borne publications and
   * history replays are compressed once per publication for all compressed
   * recipients; messages under `threshold` bytes (default 128) go plain;
   * clients with built-in encryption are never sent compressed frames.
   * Compressed client messages are inflated, `maxPayloadLength` applying to
   * the inflated size. Default off.
   */
  perMessageDeflate?: boolean | IPerMessageDeflateOptions;
  /** Serve Prometheus text at this path on the server's port (plain GET). */
  metricsPath?: string;
  /** PEM certificate chain and private key: serve `wss://` natively. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /**
   * Shut down gracefully (every client gets 1001, disconnect handlers run)
   * on these signals, then let the signal take its course. `true` means
   * `['SIGTERM', 'SIGINT']`. Default: off (the application decides).
   */
  shutdownSignals?: boolean | NodeJS.Signals[];
  /** Most verbose level written. Default `info` (nothing per message at info). */
  logLevel?: TLogLevel;
  /** `text` (default) or `json`: one JSON object per line with `time`, `level`, `server`, `msg` and the line's keys (`id` is the client id). */
  logFormat?: 'text' | 'json';
  /** Receives log lines instead of stderr. */
  logger?: IWebSocketLogger;
  /**
   * Where the engine runs. `js-thread`: sockets are read and written on the
   * JavaScript thread, between its callbacks (least CPU per message; the
   * whole server shares that one thread, as Bun's own server does).
   * `threads`: on a pool of native threads, with the JavaScript thread left
   * to the handlers (more throughput when cores are free). `auto` (default):
   * `js-thread` when the process may use two cores at most (affinity mask,
   * cgroup quota), else `threads`; the environment variable
   * `IGNIS_WS_RUN_MODE` (`js-thread` or `threads`) overrides `auto`.
   * `js-thread` belongs to the first JavaScript thread that starts a server
   * in it; a server made on another thread (a worker) runs on `threads`.
   * `ws.runMode` tells which one runs.
   */
  runMode?: 'auto' | 'js-thread' | 'threads';
}

export interface IWebSocketLimits {
  /** Open connections at most; beyond, upgrades get HTTP 503. Default 100000; 0 = none. */
  maxConnections?: number;
  /** Open connections per remote IP; beyond, HTTP 429. Default 0 (off: behind a load balancer every client shares its IP). */
  maxConnectionsPerIp?: number;
  /** Rooms one client may join through `join` (own and default rooms not counted). Default 1000. */
  maxRoomsPerClient?: number;
  /** Inbound frames per second per client; beyond, close 1008 "Rate limit exceeded". Default 1000; 0 = none. */
  maxFramesPerSecond?: number;
  /** `authenticateFn` calls in flight; beyond, close 1013 "Too many pending authentications". Default 10000; 0 = none. */
  maxPendingAuthentications?: number;
}

export interface IWebSocketEmitterOptions {
  identifier?: string;
  redis?: unknown;
  redisConnection?: unknown;
  /**
   * The servers' `history` option: `toRoom` to a history room then goes
   * through the room's history in Redis (positioned, recoverable) like a
   * server's publication. Default: off.
   */
  history?: boolean | { size?: number; ttl?: number; rooms?: string[] };
}

/**
 * Counters and gauges from `ws.stats()`: the type the native addon
 * generates from its one list of counters (`src/core/stats.rs`).
 */
export type IWebSocketStats = import('../index').NativeStats;
