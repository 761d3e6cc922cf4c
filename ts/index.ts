// ignis-ws-native: a native WebSocket server speaking the Ignis protocol on
// Node.js and Bun. The names below are the original helper's.

export { WebSocketServer, WebSocketServerHelper } from './server';
export { WebSocketClientError } from './handler-calls';
export { WebSocketEmitter } from './emitter';
export { WebSocketOptionError } from './options';
export type { IRedisOptions, IRedisEndpoint, IRedisTlsOptions, TRedisOption } from './redis-options';
export {
  WebSocketEvents,
  WebSocketChannels,
  WebSocketDefaults,
  WebSocketMessageTypes,
  WebSocketClientStates,
} from './constants';
export type { TWebSocketMessageType, TWebSocketClientState } from './constants';
export type * from './types';
