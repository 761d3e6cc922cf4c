// `WebSocketServer` (alias `WebSocketServerHelper`): the original helper's
// API over the native server. This file holds only what must be JavaScript:
// calling the application's handlers (the calls themselves are in
// handler-calls.ts), keeping `metadata` (arbitrary JS values), and building
// the client records the original returns.

import { native } from './native';
import type { NativeServer } from '../index';
const { NativeServer: NativeServerClass } = native;
import type { HandshakeResult, NativeClient, TransformResult } from '../index';
import { normaliseOptions, type NormalisedOptions } from './options';
import { normaliseRedis } from './redis-options';
import { fallbackAddress, serveFetch, takeUpgrade, type BunServerLike, type UpgradeTaker } from './same-port';
import {
  EVENT_CONNECTED,
  EVENT_DISCONNECTED,
  EVENT_MESSAGE,
  EVENT_MESSAGE_PARTS,
  AUTH_OK,
  AUTH_REJECTED,
  AUTH_ERROR,
  Answers,
  MAX_ACK_ID_LENGTH,
  GENERIC_ACK_ERROR,
  WebSocketClientError,
  settle,
  errorText,
  type EventBatch,
  type KnownClient,
  type AuthRequest,
  type AuthAnswer,
  type RoomsRequest,
  type RoomsAnswer,
} from './handler-calls';
import type {
  IWebSocket,
  IWebSocketClient,
  IWebSocketMessage,
  IWebSocketServerOptions,
  IWebSocketStats,
  TLogLevel,
} from './types';

/**
 * Whether `value` can be a part of a queued `sendToClient` (see
 * `queuedSends`): a string without the newline that separates the parts.
 */
function queueable(value: unknown): value is string {
  return typeof value === 'string' && !value.includes('\n');
}

/**
 * Whether `event` can be written into the frame natively: queueable, and
 * without a lone surrogate (JSON.stringify escapes one as it is; the
 * crossing to UTF-8 would replace it). An id needs no such look: it is
 * only looked up, and crosses to UTF-8 on either path.
 */
function queueableEvent(event: unknown): event is string {
  return queueable(event) && (event as unknown as { isWellFormed(): boolean }).isWellFormed();
}

/**
 * Whether `JSON.stringify(data)` writes what `JSON.stringify({ event, data })`
 * writes under `data`: not when a `toJSON` would be called with the key
 * `''` instead of `'data'` (an object's or a function's, own or inherited,
 * or BigInt's).
 */
function keyless(data: unknown): boolean {
  if (typeof data === 'object' || typeof data === 'function') {
    return data === null || typeof (data as { toJSON?: unknown }).toJSON !== 'function';
  }
  return typeof data !== 'bigint';
}

export class WebSocketServer<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> {
  readonly identifier: string;
  /** This instance's id on the bus (a UUID), as in the original. */
  readonly serverId: string;
  /** The bound port, once `configure()` resolved (undefined with `noServer` or attach-only). */
  port: number | undefined;

  /** Where the engine runs: `js-thread` or `threads` (the `runMode` option, `auto` resolved). */
  get runMode(): 'js-thread' | 'threads' {
    return this.native.runMode as 'js-thread' | 'threads';
  }

  private readonly opts: IWebSocketServerOptions<AuthDataType, MetadataType>;
  /** `acks: true`: frames with an `id` are answered with `ack`. */
  private readonly acks: boolean;
  private readonly settings: NormalisedOptions;
  private readonly native: NativeServer;
  /**
   * `sendToClient` calls made while a batch of events is being handled, as
   * `clientId\nevent\ndataJson\n…` (`dataJson` is `''` for no data; the
   * native side writes each frame; `''`: none). They cross to the native side in
   * one call when the batch ends, or earlier, before any other call that
   * could otherwise overtake them, so the order of everything sent stays
   * the order of the calls.
   */
  private queuedSends = '';
  /**
   * Hands `queuedSends` over: a bare native function, cheaper to call than a
   * method. `last`: the batch is the last thing an event callback does (see
   * `deliver`), whose return writes it.
   */
  private readonly sendQueued: (batch: string, last?: boolean) => number;
  private handlingBatch = false;
  private readonly authAnswers: Answers<AuthAnswer>;
  private readonly roomAnswers: Answers<RoomsAnswer>;
  private readonly metadata = new Map<string, MetadataType>();
  /** Connected clients by serial, from `connected` to `disconnected` (see `handle`). */
  private readonly known = new Map<number, KnownClient>();
  private keepAlive: ReturnType<typeof setInterval> | undefined;
  private signalHandlers: Array<[NodeJS.Signals, () => void]> = [];
  private state: 'idle' | 'starting' | 'running' | 'stopped' = 'idle';
  private fetchServer: BunServerLike | undefined;
  private fetchFacade: BunServerLike | undefined;
  private attached: Array<{ server: import('node:http').Server; listener: (...a: any[]) => void }> = [];
  /** What `attach()`'s upgrades are taken over with. */
  private readonly upgrades: UpgradeTaker;

  constructor(opts: IWebSocketServerOptions<AuthDataType, MetadataType>) {
    this.settings = normaliseOptions(opts);
    this.opts = opts;
    this.acks = opts.acks === true;
    this.identifier = this.settings.identifier;
    this.serverId = globalThis.crypto.randomUUID();
    const s = this.settings;
    this.native = new NativeServerClass(
      {
        ...s,
        serverId: this.serverId,
        redis: normaliseRedis(opts.redis !== undefined ? 'redis' : 'redisConnection', opts.redis ?? opts.redisConnection),
      },
      batch => this.authenticate(batch),
      opts.validateRoomFn ? batch => this.validateRooms(batch) : null,
      opts.handshakeFn && !s.nativeEncryption ? (clientId, userId, dataJson) => this.runHandshake(clientId, userId, dataJson) : null,
      batch => this.deliver(batch),
      opts.logger ? (level, line) => this.writeLog(level as TLogLevel, line) : null,
      opts.outboundTransformer && !s.nativeEncryption ? (clientId, frame) => this.runTransform(clientId, frame) : null,
    );
    this.sendQueued = this.native.queuedSender();
    this.upgrades = {
      native: this.native,
      path: this.settings.path,
      running: () => this.state === 'running',
      ours: server => this.attached.filter(a => a.server === server).length,
      logError: (msg, fields) => this.log('error', msg, fields),
    };
    this.authAnswers = new Answers(json => this.native.authAnswers(json));
    this.roomAnswers = new Answers(json => this.native.roomAnswers(json));
    if (s.nativeEncryption && (opts.handshakeFn || opts.outboundTransformer)) {
      this.log('warn', 'encryption is built in: handshakeFn and outboundTransformer are not used');
    }
    if (s.requireEncryption && !s.nativeEncryption && !opts.handshakeFn) {
      this.log('warn', 'requireEncryption is true but no handshakeFn is set: every client will be closed with 4004');
    }
  }

  // ---- lifecycle --------------------------------------------------------

  /** Starts listening; resolves once the port is bound (`ws.port`). */
  async configure(): Promise<void> {
    if (this.state !== 'idle') {
      throw new Error(`[ignis-ws-native] configure() called twice (server is ${this.state})`);
    }
    this.state = 'starting';
    const listen = !(this.opts.noServer || (this.attached.length > 0 && this.opts.port === undefined));
    this.native.setListen(listen);
    try {
      this.native.setHttpFallback(this.opts.fetch ? this.startFetchServer(this.opts.fetch) : fallbackAddress(this.opts.httpFallback));
      this.port = (await this.native.start()) ?? undefined;
    } catch (e) {
      this.state = 'idle';
      this.stopFetchServer();
      throw new Error(`[ignis-ws-native] ${this.identifier}: ${errorText(e)}`);
    }
    // A listening server keeps the process alive, as a net.Server does; the
    // native side's callbacks are weak and never do.
    this.keepAlive = setInterval(() => {}, 1 << 30);
    this.state = 'running';
    this.installSignalHandlers();
  }

  private installSignalHandlers(): void {
    const opt = this.opts.shutdownSignals;
    if (!opt) return;
    const signals: NodeJS.Signals[] = opt === true ? ['SIGTERM', 'SIGINT'] : opt;
    for (const sig of signals) {
      const handler = () => {
        this.log('info', 'Signal received: shutting down', { signal: sig });
        this.shutdown().then(
          () => {
            // Nobody else handles it: let it terminate the process as usual.
            if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
          },
          e => this.log('error', 'Shutdown on signal failed', { signal: sig, error: errorText(e) }),
        );
      };
      process.once(sig, handler);
      this.signalHandlers.push([sig, handler]);
    }
  }

  /** Whether `configure()` has completed and `shutdown()` has not begun. */
  isRunning(): boolean {
    return this.state === 'running';
  }

  /** Closes every socket with 1001, runs disconnect callbacks, stops. */
  async shutdown(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopped';
    for (const [sig, handler] of this.signalHandlers) process.off(sig, handler);
    this.signalHandlers = [];
    for (const { server, listener } of this.attached) server.off('upgrade', listener);
    this.attached = [];
    this.flushSends();
    try {
      await this.native.shutdown();
    } finally {
      this.stopFetchServer();
      if (this.keepAlive) clearInterval(this.keepAlive);
      this.keepAlive = undefined;
      this.metadata.clear();
      this.known.clear();
    }
  }

  /** Bun: `fetch` served for the native listener to splice to; its address. */
  private startFetchServer(fetch: NonNullable<IWebSocketServerOptions['fetch']>): string {
    const { server, facade, address } = serveFetch(this.native, fetch, () => this.port);
    this.fetchServer = server;
    this.fetchFacade = facade;
    return address;
  }

  private stopFetchServer(): void {
    this.fetchServer?.stop(true);
    this.fetchServer = undefined;
  }

  /**
   * With `fetch` (Bun): the `Bun.serve` server that runs it, as the
   * application sees it (`requestIP` gives real clients, `port` the public
   * port). Undefined otherwise.
   */
  getFetchServer(): BunServerLike | undefined {
    return this.fetchServer ? this.fetchFacade : undefined;
  }

  /**
   * Serves WebSocket upgrades at `path` that arrive at an application's own
   * Node `http.Server` (Express, Fastify, Hono's node-server…), so REST and
   * WebSocket share one port. The socket is handed to the native server
   * (its file descriptor is duplicated; Node lets go of its copy). Attached
   * before `configure()` and without a `port`, the server opens no port of
   * its own. Not for `https` servers (TLS lives in Node there): terminate
   * TLS in front, or use the `tls` option on a port of its own.
   */
  attach(server: import('node:http').Server): this {
    if (process.platform === 'win32') {
      // The upgrade's socket is handed over as a file descriptor (dup), which
      // Windows sockets do not have.
      throw new Error(
        '[ignis-ws-native] attach() needs a Unix system (it hands the socket over by file descriptor); ' +
          'on Windows give the server a port of its own, or use httpFallback',
      );
    }
    const listener = (req: import('node:http').IncomingMessage, socket: import('node:net').Socket, head: Buffer) =>
      takeUpgrade(this.upgrades, server, req, socket, head);
    server.on('upgrade', listener);
    this.attached.push({ server, listener });
    return this;
  }

  getPath(): string {
    return this.settings.path;
  }

  stats(): IWebSocketStats {
    return this.ordered().stats();
  }

  /** Prometheus text exposition (also served at `metricsPath` when set). */
  metrics(): string {
    return this.native.metrics();
  }

  // ---- delivery ---------------------------------------------------------

  sendToClient(opts: { clientId: string; event: string; data?: unknown; doLog?: boolean }): void {
    const { clientId, event, data, doLog } = opts;
    if (this.handlingBatch && !doLog && queueable(clientId) && queueableEvent(event) && keyless(data)) {
      // `data` alone: V8 serialises the `{ event, data }` wrapper at twice
      // the cost; the native side writes the frame around it, as
      // JSON.stringify({ event, data }) would (no raw newline can be in
      // JSON text, so the parts stay apart).
      const send = clientId + '\n' + event + '\n' + (JSON.stringify(data) ?? '');
      // Concatenated as it comes: pushing the parts to an array and joining
      // them at the end cost more (a send holds two newlines, so '' is
      // "nothing queued").
      this.queuedSends = this.queuedSends === '' ? send : this.queuedSends + '\n' + send;
      return;
    }
    const frame = JSON.stringify({ event, data });
    const sent = this.ordered().sendToClient(clientId, frame);
    if (doLog) this.log('info', 'Message sent', { id: clientId, event, delivered: sent });
  }

  /**
   * The native server, for a call that must not overtake the queued
   * `sendToClient` calls: they are handed over first.
   */
  private ordered(): NativeServer {
    this.flushSends();
    return this.native;
  }

  /** Hands the queued `sendToClient` calls over, in order. */
  private flushSends(last = false): void {
    if (this.queuedSends === '') return;
    const batch = this.queuedSends;
    this.queuedSends = '';
    this.sendQueued(batch, last);
  }

  sendToUser(opts: { userId: string; event: string; data?: unknown }): void {
    const { userId, event, data } = opts;
    this.ordered().sendToUser(userId, JSON.stringify({ event, data }));
  }

  sendToRoom(opts: { room: string; event: string; data?: unknown; exclude?: string[] }): void {
    const { room, event, data, exclude } = opts;
    this.ordered().sendToRoom(room, JSON.stringify({ event, data }), exclude?.length ? exclude : null);
  }

  /** Every authenticated client on this instance, except `exclude`. */
  broadcast(opts: { event: string; data?: unknown; exclude?: string[] }): void {
    const { event, data, exclude } = opts;
    this.ordered().broadcast(JSON.stringify({ event, data }), exclude?.length ? exclude : null);
  }

  /**
   * Local delivery and publication on the bus, as the original's `send`:
   * no destination → broadcast; a local client → that client; a local room
   * → that room; anything else → published as a room for other instances.
   */
  send(opts: {
    destination?: string;
    payload: { topic: string; data: unknown };
    doLog?: boolean;
    cb?: () => void;
  }): void {
    const { destination, payload, doLog, cb } = opts ?? ({} as typeof opts);
    if (!payload) return;
    const { topic, data } = payload;
    if (!topic || data === undefined) return;
    const dataJson = JSON.stringify(data);
    if (dataJson === undefined) return; // a function or symbol: nothing to send
    this.ordered().send(destination || null, topic, dataJson);
    if (cb) setTimeout(cb, 0);
    if (doLog) this.log('info', 'Message emitted', { destination: destination ?? 'all', topic });
  }

  joinRoom(opts: { clientId: string; room: string }): void {
    this.ordered().joinRoom(opts.clientId, opts.room);
  }

  leaveRoom(opts: { clientId: string; room: string }): void {
    this.ordered().leaveRoom(opts.clientId, opts.room);
  }

  // ---- clients ----------------------------------------------------------

  getClients(): Map<string, IWebSocketClient<MetadataType>>;
  getClients(opts: { id: string }): IWebSocketClient<MetadataType> | undefined;
  getClients(opts?: { id?: string }): Map<string, IWebSocketClient<MetadataType>> | IWebSocketClient<MetadataType> | undefined {
    const id = opts?.id;
    if (id) {
      const c = this.native.client(id);
      return c ? this.record(c) : undefined;
    }
    const map = new Map<string, IWebSocketClient<MetadataType>>();
    for (const c of this.native.clients()) map.set(c.id, this.record(c));
    return map;
  }

  getClientsByUser(opts: { userId: string }): IWebSocketClient<MetadataType>[] {
    return this.native.clientsByUser(opts.userId).map(c => this.record(c));
  }

  getClientsByRoom(opts: { room: string }): IWebSocketClient<MetadataType>[] {
    return this.native.clientsByRoom(opts.room).map(c => this.record(c));
  }

  /**
   * Who is in a presence room (the `presence` option), as
   * `{clientId, userId, metadata?}`: with Redis, its members on every
   * instance; without, this instance's. Rejects for a room without
   * presence, and when Redis cannot answer.
   */
  async getPresence(opts: { room: string }): Promise<Array<{ clientId: string; userId?: string; metadata?: MetadataType }>> {
    const room = opts?.room;
    if (typeof room !== 'string' || !this.ordered().hasPresence(room)) {
      throw new Error(`[ignis-ws-native] getPresence: room ${JSON.stringify(room)} has no presence (option presence)`);
    }
    let fleet: string | null;
    try {
      fleet = await this.native.fleetPresence(room);
    } catch (e) {
      throw new Error(`[ignis-ws-native] getPresence: ${errorText(e)}`);
    }
    if (fleet !== null) return JSON.parse(fleet);
    return this.native.clientsByRoom(room).map(c => {
      const entry: { clientId: string; userId?: string; metadata?: MetadataType } = { clientId: c.id };
      if (c.userId != null) entry.userId = c.userId;
      const metadata = this.metadata.get(c.id);
      if (metadata !== undefined) entry.metadata = metadata;
      return entry;
    });
  }

  private record(c: NativeClient): IWebSocketClient<MetadataType> {
    const native = this.native;
    const id = c.id;
    const socket: IWebSocket = {
      remoteAddress: c.remoteAddress,
      get readyState() {
        return native.hasClient(id) ? 1 : 3;
      },
      send: (data: string) => this.ordered().sendToClient(id, String(data)),
      close: (code = 1000, reason = '') => this.ordered().closeClient(id, code, reason),
    };
    const record: IWebSocketClient<MetadataType> = {
      id,
      socket,
      state: c.state as IWebSocketClient['state'],
      rooms: new Set(c.rooms),
      backpressured: c.backpressured,
      encrypted: c.encrypted,
      connectedAt: c.connectedAt,
      lastActivity: c.lastActivity,
    };
    if (c.userId != null) record.userId = c.userId;
    const metadata = this.metadata.get(id);
    if (metadata !== undefined) record.metadata = metadata;
    if (c.serverPublicKey != null) record.serverPublicKey = c.serverPublicKey;
    if (c.salt != null) record.salt = c.salt;
    return record;
  }

  // ---- adapters called by the native side ------------------------------
  // Each one calls the application's handler, awaits it, catches anything it
  // throws or rejects, and answers with a plain object; none of them throws.

  /** A batch of requests from the native side: one JSON array text. */
  private parseBatch<R>(batch: string, what: string): R[] | undefined {
    try {
      return JSON.parse(batch) as R[];
    } catch (e) {
      // Cannot happen (the native side builds it from validated JSON); said
      // loudly rather than lost quietly (those requests meet their timers).
      this.log('error', `Unparsable ${what} batch`, { length: batch.length, error: errorText(e) });
      return undefined;
    }
  }

  /**
   * A batch of authentication requests. A handler that answers
   * synchronously is answered with the rest of the batch, in one call back;
   * one that returns a promise is answered when it settles.
   */
  private authenticate(batch: string): void {
    const requests = this.parseBatch<AuthRequest>(batch, 'authentication');
    if (!requests) return;
    for (const [seq, clientId, data] of requests) {
      settle(
        () => this.opts.authenticateFn(data as AuthDataType),
        result => this.authSettled(seq, clientId, result),
        e => this.authAnswers.push([seq, AUTH_ERROR, errorText(e)]),
      );
    }
    this.authAnswers.flush();
  }

  private authSettled(seq: number, clientId: string, result: unknown): void {
    if (!result) {
      this.authAnswers.push([seq, AUTH_REJECTED, null]);
      return;
    }
    // A throw here (a getter, a userId that will not become a string) is
    // `settle`'s to turn into an error answer.
    const { userId, metadata } = result as { userId?: unknown; metadata?: MetadataType };
    // Kept only while the client exists: its disconnect event, queued after
    // its removal, deletes the entry again.
    if (metadata !== undefined && this.native.hasClient(clientId)) {
      this.metadata.set(clientId, metadata);
      // Fleet presence entries carry it to the other instances.
      if (this.settings.presence) this.shareMetadata(clientId, metadata);
    }
    this.authAnswers.push([seq, AUTH_OK, userId === undefined || userId === null ? null : String(userId)]);
  }

  private shareMetadata(clientId: string, metadata: MetadataType): void {
    let json: string | undefined;
    try {
      json = JSON.stringify(metadata);
    } catch (e) {
      this.log('warn', 'Client metadata is not JSON; presence entries leave it out', { id: clientId, error: errorText(e) });
    }
    this.native.setClientMetadata(clientId, json ?? null);
  }

  /** A batch of room validations, answered like authentication. */
  private validateRooms(batch: string): void {
    const requests = this.parseBatch<RoomsRequest>(batch, 'room validation');
    if (!requests) return;
    for (const [seq, clientId, userId, rooms] of requests) {
      settle(
        () => this.opts.validateRoomFn!({ clientId, userId: userId ?? undefined, rooms }),
        allowed => this.roomAnswers.push([seq, this.allowedRooms(clientId, allowed), null]),
        e => this.roomAnswers.push([seq, [], errorText(e)]),
      );
    }
    this.roomAnswers.flush();
  }

  private allowedRooms(clientId: string, allowed: unknown): string[] {
    if (!Array.isArray(allowed)) {
      if (allowed !== undefined && allowed !== null) {
        this.log('warn', 'validateRoomFn did not return an array: no rooms joined', { id: clientId, returned: typeof allowed });
      }
      return [];
    }
    return allowed.filter((r): r is string => typeof r === 'string' && r.length > 0);
  }

  private async runHandshake(clientId: string, userId: string | null | undefined, dataJson: string): Promise<HandshakeResult> {
    try {
      const data = JSON.parse(dataJson) as AuthDataType;
      const result = await this.opts.handshakeFn!({ clientId, userId: userId ?? undefined, data });
      if (!result) return { outcome: 'rejected' };
      const { serverPublicKey, salt } = result;
      if (typeof serverPublicKey !== 'string' || typeof salt !== 'string') {
        return { outcome: 'error', error: 'handshakeFn must return { serverPublicKey: string, salt: string }' };
      }
      return { outcome: 'ok', serverPublicKey, salt };
    } catch (e) {
      return { outcome: 'error', error: errorText(e) };
    }
  }

  /**
   * `outboundTransformer` for one frame to an encrypted client (the native
   * side calls this only for those, never for `connected`).
   */
  private async runTransform(clientId: string, frame: string): Promise<TransformResult> {
    try {
      const { event, data } = JSON.parse(frame) as { event: string; data: unknown };
      const client = this.getClients({ id: clientId });
      if (!client) return {};
      const transformed = await this.opts.outboundTransformer!({ client, event, data });
      if (transformed === null || transformed === undefined) return {};
      return { frame: JSON.stringify(transformed) };
    } catch (e) {
      return { error: errorText(e) };
    }
  }

  /**
   * One batch of connect / disconnect / message events, in order, as one
   * JSON array text (`EventBatch`).
   */
  private deliver(batch: string): void {
    let events: EventBatch;
    try {
      events = JSON.parse(batch) as EventBatch;
    } catch (e) {
      // Cannot happen (every frame was validated as JSON natively); said
      // loudly rather than lost quietly if it ever does.
      this.log('error', 'Unparsable event batch; events lost', { length: batch.length, error: errorText(e) });
      return;
    }
    this.handlingBatch = true;
    try {
      this.handle(events);
    } finally {
      this.handlingBatch = false;
      // The last thing this callback does: its return turns the native
      // runtime, which writes what the batch queued.
      this.flushSends(true);
    }
  }

  private handle(events: EventBatch): void {
    let i = 0;
    while (i < events.length) {
      const kind = events[i] as number;
      const serial = events[i + 1] as number;
      if (kind === EVENT_MESSAGE_PARTS) {
        // `{"event":…,"data":…}`: the object JSON.parse makes of it, and
        // no ack id to look for.
        const client = this.sender(serial);
        if (client !== undefined) {
          this.onMessage(client.clientId, client.userId, { event: events[i + 2] as string, data: events[i + 3] });
        }
        i += 4;
        continue;
      }
      if (kind === EVENT_MESSAGE) {
        const message = events[i + 2] as IWebSocketMessage;
        i += 3;
        const client = this.sender(serial);
        if (client === undefined) continue;
        const { clientId, userId } = client;
        const id = (message as { id?: unknown }).id;
        if (this.acks && typeof id === 'string' && id.length <= MAX_ACK_ID_LENGTH) {
          this.answer(clientId, id, () => this.opts.messageHandler?.({ clientId, userId, message }));
        } else {
          this.onMessage(clientId, userId, message);
        }
        continue;
      }
      const clientId = events[i + 2] as string;
      const userId = (events[i + 3] as string | null) ?? undefined;
      i += 4;
      if (kind === EVENT_CONNECTED) {
        this.known.set(serial, { clientId, userId });
        this.invoke('clientConnectedFn', clientId, () =>
          this.opts.clientConnectedFn?.({ clientId, userId, metadata: this.metadata.get(clientId) }),
        );
      } else if (kind === EVENT_DISCONNECTED) {
        this.known.delete(serial);
        this.metadata.delete(clientId);
        this.invoke('clientDisconnectedFn', clientId, () => this.opts.clientDisconnectedFn?.({ clientId, userId }));
      } else {
        // Cannot happen either; the rest of the batch cannot be read.
        this.log('error', 'Unknown event in a batch; the rest of it lost', { kind });
        return;
      }
    }
  }

  /** The client a message came from, as `connected` introduced it. */
  private sender(serial: number): KnownClient | undefined {
    const client = this.known.get(serial);
    // Cannot happen: `connected` comes first, in the same order.
    if (client === undefined) this.log('error', 'Message from a client never announced; dropped', { serial });
    return client;
  }

  /**
   * `acks: true`: calls `messageHandler` for a frame with an `id` and, once
   * it settles, sends the client `ack` with its result, or with an error:
   * the message of a `WebSocketClientError` (meant for clients), otherwise
   * a generic text (internals never leave the server; the throw is logged).
   */
  private answer(clientId: string, id: string, call: () => unknown): void {
    const ack = (data: { id: string; result?: unknown; error?: string }) => {
      try {
        this.sendToClient({ clientId, event: 'ack', data });
      } catch (e) {
        // A result JSON cannot express (a BigInt, a cycle).
        this.log('error', 'messageHandler result not sendable', { id: clientId, error: errorText(e) });
        this.sendToClient({ clientId, event: 'ack', data: { id, error: GENERIC_ACK_ERROR } });
      }
    };
    settle(
      call,
      value => ack({ id, result: value === undefined ? null : value }),
      e => {
        if (e instanceof WebSocketClientError) return ack({ id, error: e.message });
        this.log('error', 'messageHandler error', { id: clientId, error: errorText(e) });
        ack({ id, error: GENERIC_ACK_ERROR });
      },
    );
  }

  /**
   * `messageHandler` for a frame nobody awaits: `invoke` without the
   * closure, on the path every message takes.
   */
  private onMessage(clientId: string, userId: string | undefined, message: IWebSocketMessage): void {
    const handler = this.opts.messageHandler;
    if (!handler) return;
    try {
      const r = handler({ clientId, userId, message });
      if (r && typeof (r as Promise<unknown>).then === 'function') {
        (r as Promise<unknown>).then(undefined, e => this.messageError(clientId, e));
      }
    } catch (e) {
      this.messageError(clientId, e);
    }
  }

  private messageError(clientId: string, e: unknown): void {
    this.log('error', 'messageHandler error', { id: clientId, error: errorText(e) });
  }

  /** Calls a fire-and-forget handler; its throw or rejection is logged. */
  private invoke(name: string, clientId: string, call: () => unknown): void {
    try {
      const r = call();
      if (r && typeof (r as Promise<unknown>).then === 'function') {
        (r as Promise<unknown>).then(undefined, e => this.log('error', `${name} error`, { id: clientId, error: errorText(e) }));
      }
    } catch (e) {
      this.log('error', `${name} error`, { id: clientId, error: errorText(e) });
    }
  }

  // ---- logging ----------------------------------------------------------

  /**
   * A line of this layer, formatted by the native logger like the core's
   * own (`msg | key: value`, or JSON): written to stderr through its
   * writer thread, or returned for the application's `logger`.
   */
  private log(level: TLogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    const flat: string[] = [];
    for (const [k, v] of Object.entries(fields)) flat.push(k, String(v));
    const line = this.native.logLine(level, msg, flat);
    if (line != null) this.writeLog(level, line);
  }

  /** Hands a finished line to the application's `logger`. */
  private writeLog(level: TLogLevel, line: string): void {
    const logger = this.opts.logger;
    if (!logger) return;
    try {
      const fn = level === 'debug' ? (logger.debug ?? logger.info) : logger[level as 'error' | 'warn' | 'info'];
      fn.call(logger, line);
    } catch {
      // A logger that throws must not take the server down.
    }
  }
}

/** The original's class name. */
export const WebSocketServerHelper = WebSocketServer;
export type WebSocketServerHelper<
  AuthDataType extends Record<string, unknown> = Record<string, unknown>,
  MetadataType extends Record<string, unknown> = Record<string, unknown>,
> = WebSocketServer<AuthDataType, MetadataType>;
