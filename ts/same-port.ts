// One public port for the application and the WebSocket server: on Bun a
// `fetch` handler served on a loopback port that the native listener
// splices every non-WebSocket connection to; on Node an upgrade taken over
// from the application's own `http.Server` (`attach()`), its socket handed
// to the native server by file descriptor.

import type { NativeServer } from '../index';
import { errorText } from './handler-calls';
import type { IWebSocketServerOptions } from './types';

/** The part of Bun's `Server` used here. */
export interface BunServerLike {
  port: number;
  stop(closeActiveConnections?: boolean): unknown;
  requestIP(req: Request): { address: string; family: string; port: number } | null;
}

/** `httpFallback` as the native side takes it: `host:port`, or none. */
export function fallbackAddress(opt: IWebSocketServerOptions['httpFallback']): string | null {
  if (opt === undefined || opt === null) return null;
  if (typeof opt === 'string') return opt;
  return `${opt.host ?? '127.0.0.1'}:${opt.port}`;
}

/**
 * Bun: serves `fetch` on a loopback port for the native listener to splice
 * non-WebSocket connections to. Returns the server, the facade the
 * application sees as "its server" (`requestIP()` answers with the real
 * client, not the loopback hop; `port` is the public one) and its address.
 */
export function serveFetch(
  native: NativeServer,
  fetch: NonNullable<IWebSocketServerOptions['fetch']>,
  publicPort: () => number | undefined,
): { server: BunServerLike; facade: BunServerLike; address: string } {
  const bun = (globalThis as { Bun?: { serve(o: unknown): BunServerLike } }).Bun;
  if (!bun) {
    throw new Error('the `fetch` option needs Bun; on Node pass your http.Server to attach() instead');
  }
  let facade: BunServerLike | undefined;
  const server = bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch: (req: Request) => fetch(req, facade),
  });
  facade = new Proxy(server, {
    get: (target, key) => {
      if (key === 'requestIP') {
        return (req: Request) => {
          const hop = target.requestIP(req);
          const real = hop ? native.forwardedPeer(hop.port) : null;
          if (!real) return hop;
          const cut = real.lastIndexOf(':');
          const address = real.slice(0, cut).replace(/^\[|\]$/g, '');
          return { address, family: address.includes(':') ? 'IPv6' : 'IPv4', port: Number(real.slice(cut + 1)) };
        };
      }
      if (key === 'port' && publicPort() !== undefined) return publicPort();
      const value = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { server, facade, address: `127.0.0.1:${server.port}` };
}

/** What taking over an upgrade needs of the server. */
export interface UpgradeTaker {
  native: NativeServer;
  path: string;
  running(): boolean;
  /** How many of `server`'s upgrade listeners are this server's. */
  ours(server: import('node:http').Server): number;
  logError(msg: string, fields: Record<string, unknown>): void;
}

/**
 * Node (`attach()`): an upgrade at `path` is handed to the native server
 * (its file descriptor duplicated; Node lets go of its copy); another
 * path's is answered 404 only when nobody else listens for upgrades.
 */
export function takeUpgrade(
  to: UpgradeTaker,
  server: import('node:http').Server,
  req: import('node:http').IncomingMessage,
  socket: import('node:net').Socket,
  head: Buffer,
): void {
  const path = (req.url ?? '/').split('?')[0];
  if (path !== to.path) {
    // Someone else's upgrade; answer it only if nobody else listens.
    if (server.listenerCount('upgrade') === to.ours(server)) {
      socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    }
    return;
  }
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (!to.running() || (socket as { encrypted?: boolean }).encrypted || typeof fd !== 'number' || fd < 0) {
    const why = !to.running() ? 'server not running' : 'socket has no file descriptor (TLS or this runtime)';
    to.logError('Cannot take over upgrade', { reason: why });
    socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
  text += '\r\n';
  try {
    socket.pause();
    to.native.adoptSocket(fd, Buffer.concat([Buffer.from(text, 'latin1'), head]));
  } catch (e) {
    to.logError('Cannot take over upgrade', { error: errorText(e) });
    socket.end('HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return;
  }
  // Our duplicate keeps the connection; Node closes only its descriptor.
  socket.destroy();
}
