// WebSocketClient: the browser / Node / Bun client for the Ignis protocol.
// No dependency in the browser build; on Node 20 (no global WebSocket) it
// uses the `ws` package when installed, or a constructor passed in.

export type TClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

export interface IConnectedPayload {
  id: string;
  userId?: string;
  time: string;
  serverPublicKey?: string;
  salt?: string;
}

export interface IReconnectOptions {
  /** First delay in ms. Default 500. */
  minDelay?: number;
  /** Largest delay in ms. Default 30000. */
  maxDelay?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Random spread, 0..1, applied to each delay. Default 0.5. */
  jitter?: number;
  /** Give up after this many failed attempts in a row. Default: never. */
  maxAttempts?: number;
}

export interface IWebSocketClientOptions<AuthData = Record<string, unknown>> {
  url: string;
  /** Called before every (re)connection; its result is the `authenticate` data. */
  auth: () => AuthData | Promise<AuthData>;
  /** ms between heartbeats while connected; 0 disables. Default 30000. */
  heartbeatInterval?: number;
  /** Reconnect with jittered exponential backoff (default), or `false`. */
  reconnect?: boolean | IReconnectOptions;
  /** Events `emit`ted while not connected, kept for the next connection. Default 100. */
  queueLimit?: number;
  /**
   * End-to-end encryption with the documented scheme (ECDH P-256, HKDF-SHA-256,
   * AES-256-GCM): a public key is added to the authenticate data as
   * `publicKey`, and `encrypted` frames are decrypted transparently. Default:
   * on when WebCrypto is available (the server decides whether to use it).
   */
  encryption?: boolean;
  /** A WebSocket constructor, for runtimes without a global one. */
  WebSocket?: unknown;
  /**
   * ms from opening a socket to the server's `connected`; past it the
   * attempt is treated as lost and retried. Default 10000; 0 disables.
   */
  handshakeTimeout?: number;
  /**
   * ms from a re-join asking to recover to each of its rooms' `joined`;
   * past it the connection is treated as lost and opened again (the
   * rooms re-join from the same positions). Default 10000; 0 disables.
   */
  joinTimeout?: number;
}

export interface IDisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client will try again. */
  willReconnect: boolean;
}

type Listener = (data: any) => void;

/** Events the client itself emits, with their payloads. */
export interface IClientEvents {
  connecting: { attempt: number };
  reconnecting: { attempt: number };
  connected: IConnectedPayload;
  disconnected: IDisconnectInfo;
  state: TClientState;
  error: unknown;
  dropped: { event: string; data: unknown };
  /** A history room's `joined` answer: where it stands, and whether what was missed was recovered. */
  joined: { room: string; offset: number; epoch: string; recovered?: boolean };
  /** After a re-join asking to recover: false means messages were lost (refetch). */
  recovered: { room: string; recovered: boolean };
}

/** Close codes after which reconnecting cannot help. */
const FINAL_CODES = new Set([4003, 4004]);
/** The close code reported when the client gives up on a socket itself. */
const ABANDONED = 1006;
const HKDF_INFO = 'ignis-ecdh-p256-aes-256-gcm-v1';

interface ISocket {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

function b64encode(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function b64decode(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function findWebSocket(given: unknown): new (url: string) => ISocket {
  if (given) return given as new (url: string) => ISocket;
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (g) return g as new (url: string) => ISocket;
  try {
    // Node 20 has no global WebSocket; the `ws` package speaks the same API.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const req = typeof require === 'function' ? require : undefined;
    if (req) return req('ws') as new (url: string) => ISocket;
  } catch {
    // fall through
  }
  throw new Error('[ignis-ws-native/client] no WebSocket implementation: install "ws" or pass options.WebSocket');
}

/**
 * `Events` maps application event names to their `data` types, so
 * `on('chat', m => …)` is typed: `new WebSocketClient<Auth, { chat: Msg }>(…)`.
 */
export class WebSocketClient<
  AuthData extends Record<string, unknown> = Record<string, unknown>,
  Events extends Record<string, any> = Record<string, any>,
> {
  /** The `connected` payload of the current connection. */
  session: IConnectedPayload | undefined;

  private readonly opts: IWebSocketClientOptions<AuthData>;
  private readonly Ctor: new (url: string) => ISocket;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly rooms = new Set<string>();
  private readonly queue: string[] = [];
  private socket: ISocket | undefined;
  private _state: TClientState = 'idle';
  private attempts = 0;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Armed while an attempt waits for `connected`, then for the `joined` answers. */
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  /** History rooms whose `joined` answer the current connection still waits for. */
  private readonly awaitingJoined = new Set<string>();
  /** Re-joins left unanswered, per room, on connections in a row. */
  private readonly joinMisses = new Map<string, number>();
  private closedByUser = false;
  // WebCrypto key objects (typed loosely: the package builds without DOM typings).
  private key: any;
  private keyPair: { publicKey: any; privateKey: any } | undefined;
  private decryptChain: Promise<void> = Promise.resolve();
  private firstConnect: { resolve: (p: IConnectedPayload) => void; reject: (e: Error) => void } | undefined;
  private readonly requests = new Map<string, { resolve: (v: any) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }>();
  private nextRequest = 0;
  /** The last position seen in each joined history room. */
  private readonly positions = new Map<string, { offset: number; epoch: string }>();

  constructor(opts: IWebSocketClientOptions<AuthData>) {
    if (!opts || typeof opts.url !== 'string') throw new TypeError('[ignis-ws-native/client] options.url is required');
    if (typeof opts.auth !== 'function') throw new TypeError('[ignis-ws-native/client] options.auth must be a function');
    this.opts = opts;
    this.Ctor = findWebSocket(opts.WebSocket);
  }

  get state(): TClientState {
    return this._state;
  }

  /** Opens the connection; resolves with the `connected` payload. */
  connect(): Promise<IConnectedPayload> {
    if (this._state === 'connected' && this.session) return Promise.resolve(this.session);
    this.closedByUser = false;
    const p = new Promise<IConnectedPayload>((resolve, reject) => (this.firstConnect = { resolve, reject }));
    if (this._state === 'idle' || this._state === 'disconnected') {
      // A retry already scheduled is this attempt: one socket at a time.
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      void this.open();
    }
    return p;
  }

  on<K extends keyof (Events & IClientEvents) & string>(event: K, fn: (data: (Events & IClientEvents)[K]) => void): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener);
    return this;
  }

  off<K extends keyof (Events & IClientEvents) & string>(event: K, fn: (data: (Events & IClientEvents)[K]) => void): this {
    this.listeners.get(event)?.delete(fn as Listener);
    return this;
  }

  once<K extends keyof (Events & IClientEvents) & string>(event: K, fn: (data: (Events & IClientEvents)[K]) => void): this {
    const wrapped = (data: (Events & IClientEvents)[K]) => {
      this.off(event, wrapped);
      fn(data);
    };
    return this.on(event, wrapped);
  }

  /** Sends an application event (see `emit`), typed by `Events`. */

  /** Sends an application event; queued (bounded) while not connected. Returns false when dropped. */
  emit<K extends keyof Events & string>(event: K, data?: Events[K]): boolean {
    return this.sendFrame(JSON.stringify(data === undefined ? { event } : { event, data }), event, data);
  }

  /**
   * Sends an event with an `id` and resolves with the server's answer
   * (the server's `acks: true`): `messageHandler`'s return value; rejects
   * with the error the server answered, or after `timeout` ms (default
   * 10 000). A request made while reconnecting waits in the queue.
   */
  request<T = unknown>(event: string, data?: unknown, opts: { timeout?: number } = {}): Promise<T> {
    const id = `r${(this.nextRequest++).toString(36)}`;
    const timeout = opts.timeout ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(id);
        reject(new Error(`[ignis-ws-native/client] request "${event}" got no answer within ${timeout} ms`));
      }, timeout);
      this.requests.set(id, { resolve, reject, timer });
      const frame = JSON.stringify(data === undefined ? { event, id } : { event, data, id });
      if (!this.sendFrame(frame, event, data)) {
        clearTimeout(timer);
        this.requests.delete(id);
        reject(new Error(`[ignis-ws-native/client] request "${event}" not sent: the client is closed or its queue is full`));
      }
    });
  }

  private sendFrame(frame: string, event: string, data: unknown): boolean {
    if (this._state === 'connected' && this.socket?.readyState === 1) {
      this.socket.send(frame);
      return true;
    }
    if (this.closedByUser) return false;
    const limit = this.opts.queueLimit ?? 100;
    if (this.queue.length >= limit) {
      this.dispatch('dropped', { event, data });
      return false;
    }
    this.queue.push(frame);
    return true;
  }

  /** Joins rooms now and again after every reconnection. */
  join(rooms: string | string[]): void {
    const list = Array.isArray(rooms) ? rooms : [rooms];
    for (const r of list) this.rooms.add(r);
    if (this._state === 'connected') this.send({ event: 'join', data: { rooms: list } });
  }

  leave(rooms: string | string[]): void {
    const list = Array.isArray(rooms) ? rooms : [rooms];
    for (const r of list) {
      this.rooms.delete(r);
      this.positions.delete(r);
      this.joinMisses.delete(r);
      if (this.awaitingJoined.delete(r) && !this.awaitingJoined.size) this.disarm();
    }
    if (this._state === 'connected') this.send({ event: 'leave', data: { rooms: list } });
  }

  /** Closes for good (no reconnection). */
  close(code = 1000, reason = ''): void {
    this.closedByUser = true;
    this.disarm();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.stopHeartbeat();
    const s = this.socket;
    if (s && s.readyState <= 1) s.close(code, reason);
    else this.setState('disconnected', { code, reason, willReconnect: false });
  }

  // ---- internals --------------------------------------------------------

  private send(msg: unknown): void {
    if (this.socket?.readyState === 1) this.socket.send(JSON.stringify(msg));
  }

  private notify(event: string, data: unknown): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(data);
      } catch (e) {
        if (event !== 'listenerError') this.notify('listenerError', e);
      }
    }
  }

  private setState(state: TClientState, info?: unknown): void {
    this._state = state;
    this.dispatch('state', state);
    this.dispatch(state, info);
  }

  private wantsEncryption(): boolean {
    return this.opts.encryption !== false && !!globalThis.crypto?.subtle;
  }

  private async open(): Promise<void> {
    this.setState(this.attempts === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempts });
    let data: Record<string, unknown>;
    try {
      data = { ...((await this.opts.auth()) ?? {}) };
      if (this.wantsEncryption()) {
        this.keyPair = (await crypto.subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits'])) as {
          publicKey: any;
          privateKey: any;
        };
        data.publicKey = b64encode(new Uint8Array(await crypto.subtle.exportKey('raw', this.keyPair.publicKey)));
      }
    } catch (e) {
      this.dispatch('error', e);
      this.scheduleRetry({ code: 0, reason: 'auth() failed' });
      return;
    }
    if (this.closedByUser) return;
    let socket: ISocket;
    try {
      socket = new this.Ctor(this.opts.url);
    } catch (e) {
      this.dispatch('error', e);
      this.scheduleRetry({ code: 0, reason: String(e) });
      return;
    }
    this.socket = socket;
    this.key = undefined;
    this.arm(socket, this.opts.handshakeTimeout ?? 10_000, 'no connected in time');
    socket.onopen = () => socket.send(JSON.stringify({ event: 'authenticate', data }));
    socket.onmessage = ev => this.onFrame(socket, ev.data);
    socket.onerror = ev => this.dispatch('error', ev);
    socket.onclose = ev => this.onClose(socket, ev.code, ev.reason);
  }

  private onFrame(socket: ISocket, raw: unknown): void {
    if (socket !== this.socket) return;
    let msg: { event: string; data?: any };
    try {
      msg = JSON.parse(typeof raw === 'string' ? raw : String(raw));
    } catch {
      return;
    }
    if (msg.event === 'connected') {
      // Decryption must wait for the key; chain it so frames stay in order.
      this.decryptChain = this.decryptChain.then(() => this.onConnected(socket, msg.data as IConnectedPayload));
      return;
    }
    if (msg.event === 'encrypted') {
      this.decryptChain = this.decryptChain.then(async () => {
        if (!this.key) return this.dispatch('encrypted', msg.data);
        try {
          const pt = await crypto.subtle.decrypt(
            { name: 'AES-GCM', iv: b64decode(msg.data.iv) },
            this.key,
            b64decode(msg.data.ct),
          );
          const inner = JSON.parse(new TextDecoder().decode(pt)) as { event: string; data?: unknown };
          this.deliver(inner);
        } catch (e) {
          this.dispatch('error', e);
        }
      });
      return;
    }
    this.decryptChain = this.decryptChain.then(() => this.deliver(msg));
  }

  /** Notes a history room's position, then dispatches the event. */
  private deliver(msg: { event: string; data?: any; room?: unknown; offset?: unknown; epoch?: unknown }): void {
    if (typeof msg.room === 'string' && typeof msg.offset === 'number' && typeof msg.epoch === 'string' && this.rooms.has(msg.room)) {
      const at = this.positions.get(msg.room);
      // A live publication skipped (dropped at this client's backpressure
      // limit): say so, as a failed recovery would, so the app refetches.
      if (at && at.epoch === msg.epoch && msg.offset > at.offset + 1) this.dispatch('recovered', { room: msg.room, recovered: false });
      this.positions.set(msg.room, { offset: msg.offset, epoch: msg.epoch });
    } else if (msg.event === 'joined' && msg.data && typeof msg.data.room === 'string') {
      const { room, offset, epoch, recovered } = msg.data;
      if (typeof offset === 'number' && typeof epoch === 'string') this.positions.set(room, { offset, epoch });
      if (typeof recovered === 'boolean') this.dispatch('recovered', { room, recovered });
      this.joinMisses.delete(room);
      if (this.awaitingJoined.delete(room) && !this.awaitingJoined.size) {
        this.disarm();
        this.attempts = 0;
      }
    }
    this.dispatch(msg.event, msg.data);
  }

  /** An `ack` answering one of our requests settles it; any other event is dispatched. */
  private dispatch(event: string, data: unknown): void {
    if (event === 'ack' && data && typeof (data as { id?: unknown }).id === 'string') {
      const ack = data as { id: string; result?: unknown; error?: unknown };
      const req = this.requests.get(ack.id);
      if (req) {
        this.requests.delete(ack.id);
        clearTimeout(req.timer);
        if ('error' in ack) req.reject(new Error(String(ack.error)));
        else req.resolve(ack.result);
        return;
      }
    }
    this.notify(event, data);
  }

  private async onConnected(socket: ISocket, payload: IConnectedPayload): Promise<void> {
    if (payload.serverPublicKey && payload.salt && this.keyPair) {
      try {
        const peer = await crypto.subtle.importKey('raw', b64decode(payload.serverPublicKey), { name: 'ECDH', namedCurve: 'P-256' }, false, []);
        const bits = await crypto.subtle.deriveBits({ name: 'ECDH', public: peer }, this.keyPair.privateKey, 256);
        const hkdf = await crypto.subtle.importKey('raw', bits, 'HKDF', false, ['deriveKey']);
        this.key = await crypto.subtle.deriveKey(
          { name: 'HKDF', hash: 'SHA-256', salt: b64decode(payload.salt), info: new TextEncoder().encode(HKDF_INFO) },
          hkdf,
          { name: 'AES-GCM', length: 256 },
          false,
          ['decrypt'],
        );
      } catch (e) {
        this.dispatch('error', e);
      }
    }
    if (socket !== this.socket) return;
    this.disarm();
    this.session = payload;
    this._state = 'connected';
    this.startHeartbeat();
    // Rooms and queued events go out before listeners hear `connected`, so
    // whatever they send follows the re-join.
    if (this.rooms.size) {
      // History rooms (the server's `history` option): ask for what was
      // missed since the last position seen in each.
      const recover: Record<string, { offset: number; epoch: string }> = {};
      for (const room of this.rooms) {
        const at = this.positions.get(room);
        if (at) recover[room] = at;
      }
      const data = Object.keys(recover).length ? { rooms: [...this.rooms], recover } : { rooms: [...this.rooms] };
      this.send({ event: 'join', data });
      // Only history rooms answer `joined`; those with a position are known to be.
      for (const room of Object.keys(recover)) this.awaitingJoined.add(room);
    }
    // A connection counts as made once its re-joins are answered: one that
    // stalls after `connected` keeps backing off.
    if (this.awaitingJoined.size) this.arm(socket, this.opts.joinTimeout ?? 10_000, 'no joined in time');
    else this.attempts = 0;
    while (this.queue.length && this.socket?.readyState === 1) this.socket.send(this.queue.shift()!);
    this.setState('connected', payload);
    this.firstConnect?.resolve(payload);
    this.firstConnect = undefined;
  }

  /**
   * Gives `socket` `ms` to get past the current step (`connected`, then the
   * `joined` answers); past it the socket is treated as lost: a half-open
   * connection, or a server that stopped answering, never keeps the client
   * waiting for longer.
   */
  private arm(socket: ISocket, ms: number, reason: string): void {
    this.disarm();
    if (!(ms > 0)) return;
    this.watchdog = setTimeout(() => {
      this.watchdog = undefined;
      if (socket !== this.socket) return;
      if (this.awaitingJoined.size && this.giveUpRefusedRooms()) return;
      socket.onopen = socket.onmessage = socket.onclose = null;
      socket.onerror = () => {};
      try {
        const s = socket as ISocket & { terminate?: () => void };
        if (typeof s.terminate === 'function') s.terminate();
        else s.close();
      } catch {
        // already closed
      }
      this.onClose(socket, ABANDONED, reason);
    }, ms);
  }

  /**
   * A re-join unanswered on two connections in a row is taken for a room
   * the server refuses now (a refused room answers nothing): its position
   * is dropped, `recovered: false` is said, and it is no longer waited
   * for, so a revoked room cannot keep the client reconnecting. Returns
   * true when no room is left to wait for (the connection is kept).
   */
  private giveUpRefusedRooms(): boolean {
    for (const room of this.awaitingJoined) {
      const misses = (this.joinMisses.get(room) ?? 0) + 1;
      this.joinMisses.set(room, misses);
      if (misses < 2) continue;
      this.joinMisses.delete(room);
      this.awaitingJoined.delete(room);
      this.positions.delete(room);
      this.dispatch('recovered', { room, recovered: false });
    }
    if (this.awaitingJoined.size) return false;
    this.attempts = 0;
    return true;
  }

  private disarm(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = undefined;
  }

  private onClose(socket: ISocket, code: number, reason: string): void {
    if (socket !== this.socket) return;
    this.disarm();
    this.awaitingJoined.clear();
    this.stopHeartbeat();
    this.socket = undefined;
    this.session = undefined;
    if (this.closedByUser) {
      this.setState('disconnected', { code, reason, willReconnect: false });
      this.firstConnect?.reject(new Error(`closed (${code})`));
      this.firstConnect = undefined;
      return;
    }
    this.scheduleRetry({ code, reason });
  }

  private scheduleRetry(close: { code: number; reason: string }): void {
    const r = this.opts.reconnect ?? true;
    const cfg: IReconnectOptions = typeof r === 'object' ? r : {};
    const final = FINAL_CODES.has(close.code);
    const exhausted = cfg.maxAttempts !== undefined && this.attempts >= cfg.maxAttempts;
    const willReconnect = r !== false && !final && !exhausted && !this.closedByUser;
    this.setState('disconnected', { ...close, willReconnect } satisfies IDisconnectInfo);
    if (!willReconnect) {
      this.firstConnect?.reject(new Error(`connection closed (${close.code}${close.reason ? ' ' + close.reason : ''})`));
      this.firstConnect = undefined;
      return;
    }
    const min = cfg.minDelay ?? 500;
    const max = cfg.maxDelay ?? 30_000;
    const factor = cfg.factor ?? 2;
    const jitter = Math.min(1, Math.max(0, cfg.jitter ?? 0.5));
    const base = Math.min(max, min * factor ** this.attempts);
    const delay = base * (1 - jitter + Math.random() * jitter * 2);
    this.attempts++;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.closedByUser) void this.open();
    }, Math.min(max, delay));
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    const every = this.opts.heartbeatInterval ?? 30_000;
    if (every > 0) this.heartbeat = setInterval(() => this.send({ event: 'heartbeat' }), every);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}
