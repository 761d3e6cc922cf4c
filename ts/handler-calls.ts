// The calls between the native side and the application's handlers: how
// requests arrive in batches (authentication, room validation, events) and
// how their answers go back, many per call; settling a handler's value or
// promise without an unhandled rejection; the errors a request answers.

export const EVENT_CONNECTED = 0;
export const EVENT_DISCONNECTED = 1;
export const EVENT_MESSAGE = 2;
export const EVENT_MESSAGE_PARTS = 3;
/**
 * A batch of delivered events, one flat array, entry after entry:
 * `EVENT_CONNECTED, serial, clientId, userId | null`,
 * `EVENT_DISCONNECTED, serial, clientId, userId | null`,
 * `EVENT_MESSAGE, serial, message`,
 * `EVENT_MESSAGE_PARTS, serial, event, data`: a message of exactly
 * `{event, data}`, in that order, as its two values (an object literal
 * costs far less than parsing the envelope).
 * A message names its client by the number `connected` introduced
 * (parsing a number costs far less than building the id's string for
 * every message).
 */
export type EventBatch = unknown[];
/** A connected client's id and user, kept under its serial. */
export type KnownClient = { clientId: string; userId: string | undefined };
/** One authentication request: its number, the client, `data ?? {}`. */
export type AuthRequest = [seq: number, clientId: string, data: unknown];
export const AUTH_OK = 0;
export const AUTH_REJECTED = 1;
export const AUTH_ERROR = 2;
/** An answer: its request's number, the outcome, the userId or the error. */
export type AuthAnswer = [seq: number, outcome: number, text: string | null];
/** One room validation request: its number, the client, its user, the rooms. */
export type RoomsRequest = [seq: number, clientId: string, userId: string | null, rooms: string[]];
/** An answer: its request's number, the rooms allowed, the error. */
export type RoomsAnswer = [seq: number, rooms: string[], error: string | null];

/**
 * Answers to requests the native side batched, handed back many per call:
 * those given while a batch is handled go when it ends, those settling
 * later go together at the end of their turn.
 */
export class Answers<T> {
  private list: T[] = [];
  private queued = false;

  constructor(private readonly send: (json: string) => void) {}

  push(answer: T): void {
    this.list.push(answer);
    if (!this.queued) {
      this.queued = true;
      queueMicrotask(() => this.flush());
    }
  }

  flush(): void {
    this.queued = false;
    if (this.list.length === 0) return;
    const list = this.list;
    this.list = [];
    this.send(JSON.stringify(list));
  }
}

/** Longest `id` a frame may carry to be acknowledged. */
export const MAX_ACK_ID_LENGTH = 64;
/** What a client is told when its request failed for a reason not meant for it. */
export const GENERIC_ACK_ERROR = 'Internal error';

/**
 * Thrown by a `messageHandler` to answer a request (`acks: true`) with an
 * error whose message is meant for the client. Anything else thrown is
 * answered with a generic text, and logged.
 */
export class WebSocketClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebSocketClientError';
  }
}

/**
 * Calls `call`; `ok` gets its value, or what its promise (or any thenable)
 * resolves to, exactly as `await` would; `fail` gets a throw or rejection,
 * including one from `ok` itself, so nothing escapes as an unhandled
 * rejection.
 */
export function settle(call: () => unknown, ok: (value: unknown) => void, fail: (e: unknown) => void): void {
  const done = (value: unknown) => {
    try {
      ok(value);
    } catch (e) {
      fail(e);
    }
  };
  let result: unknown;
  try {
    result = call();
    if (result && typeof (result as PromiseLike<unknown>).then === 'function') {
      // A native promise is passed through as it is (no extra promise).
      Promise.resolve(result).then(done, fail);
      return;
    }
  } catch (e) {
    fail(e);
    return;
  }
  done(result);
}

/** A thrown value as text for a log line or an error answer. */
export function errorText(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  try {
    return String(e);
  } catch {
    return 'unprintable error';
  }
}

