// The original's constants, with the original's values (docs/PROTOCOL.md §11).

export class WebSocketEvents {
  static readonly AUTHENTICATE = 'authenticate';
  static readonly CONNECTED = 'connected';
  static readonly DISCONNECT = 'disconnect';
  static readonly JOIN = 'join';
  static readonly LEAVE = 'leave';
  static readonly ERROR = 'error';
  static readonly HEARTBEAT = 'heartbeat';
  static readonly ENCRYPTED = 'encrypted';
  static readonly SCHEME_SET = new Set<string>([
    this.AUTHENTICATE,
    this.CONNECTED,
    this.DISCONNECT,
    this.JOIN,
    this.LEAVE,
    this.ERROR,
    this.HEARTBEAT,
    this.ENCRYPTED,
  ]);
  static isValid(input: string): boolean {
    return this.SCHEME_SET.has(input);
  }
}

export class WebSocketChannels {
  static readonly BROADCAST = 'ws:broadcast';
  static readonly ROOM_PREFIX = 'ws:room:';
  static readonly CLIENT_PREFIX = 'ws:client:';
  static readonly USER_PREFIX = 'ws:user:';
  static forRoom(opts: { room: string }): string {
    return `${this.ROOM_PREFIX}${opts.room}`;
  }
  static forClient(opts: { clientId: string }): string {
    return `${this.CLIENT_PREFIX}${opts.clientId}`;
  }
  static forUser(opts: { userId: string }): string {
    return `${this.USER_PREFIX}${opts.userId}`;
  }
  static forRoomPattern(): string {
    return `${this.ROOM_PREFIX}*`;
  }
  static forClientPattern(): string {
    return `${this.CLIENT_PREFIX}*`;
  }
  static forUserPattern(): string {
    return `${this.USER_PREFIX}*`;
  }
}

export class WebSocketDefaults {
  static readonly PATH = '/ws';
  static readonly ROOM = 'ws-default';
  static readonly NOTIFICATION_ROOM = 'ws-notification';
  static readonly BROADCAST_TOPIC = 'ws:internal:broadcast';
  static readonly MAX_PAYLOAD_LENGTH = 128 * 1024;
  static readonly IDLE_TIMEOUT = 60;
  static readonly BACKPRESSURE_LIMIT = 1024 * 1024;
  static readonly SEND_PINGS = true;
  static readonly PUBLISH_TO_SELF = false;
  static readonly AUTH_TIMEOUT = 5_000;
  static readonly HEARTBEAT_INTERVAL = 30_000;
  static readonly HEARTBEAT_TIMEOUT = 90_000;
  static readonly ENCRYPTED_BATCH_LIMIT = 10;
}

export class WebSocketMessageTypes {
  static readonly CLIENT = 'client';
  static readonly USER = 'user';
  static readonly ROOM = 'room';
  static readonly BROADCAST = 'broadcast';
  static readonly SCHEME_SET = new Set<string>([this.CLIENT, this.USER, this.ROOM, this.BROADCAST]);
  static isValid(input: string): boolean {
    return this.SCHEME_SET.has(input);
  }
}

export class WebSocketClientStates {
  static readonly UNAUTHORIZED = 'unauthorized';
  static readonly AUTHENTICATING = 'authenticating';
  static readonly AUTHENTICATED = 'authenticated';
  static readonly DISCONNECTED = 'disconnected';
  static readonly SCHEME_SET = new Set<string>([
    this.UNAUTHORIZED,
    this.AUTHENTICATING,
    this.AUTHENTICATED,
    this.DISCONNECTED,
  ]);
  static isValid(input: string): boolean {
    return this.SCHEME_SET.has(input);
  }
}

export type TWebSocketMessageType = 'client' | 'user' | 'room' | 'broadcast';
export type TWebSocketClientState = 'unauthorized' | 'authenticating' | 'authenticated' | 'disconnected';
