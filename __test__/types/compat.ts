// Code written against the original's types must compile unchanged with
// only the import path switched. Checked by `tsc --noEmit` in `npm test`.
import {
  WebSocketServerHelper,
  WebSocketServer,
  WebSocketDefaults,
  WebSocketEvents,
  WebSocketChannels,
  WebSocketClientStates,
  WebSocketMessageTypes,
} from 'ignis-ws-native';
import type {
  IWebSocketServerOptions,
  IWebSocketClient,
  IWebSocketMessage,
  IRedisSocketMessage,
  IBunWebSocketConfig,
  TWebSocketAuthenticateFn,
  TWebSocketValidateRoomFn,
  TWebSocketClientConnectedFn,
  TWebSocketClientDisconnectedFn,
  TWebSocketMessageHandler,
  TWebSocketOutboundTransformer,
  TWebSocketHandshakeFn,
} from 'ignis-ws-native';

type Auth = { token: string };
type Meta = { role: string };

const authenticateFn: TWebSocketAuthenticateFn<Auth, Meta> = async data => {
  if (!data.token) return null;
  return { userId: 'u', metadata: { role: 'admin' } };
};
const validateRoomFn: TWebSocketValidateRoomFn = ({ rooms }) => rooms.filter(r => r.startsWith('public-'));
const clientConnectedFn: TWebSocketClientConnectedFn<Meta> = ({ clientId, metadata }) => {
  void clientId;
  void metadata?.role;
};
const clientDisconnectedFn: TWebSocketClientDisconnectedFn = ({ clientId, userId }) => void [clientId, userId];
const messageHandler: TWebSocketMessageHandler = ({ message }) => {
  const m: IWebSocketMessage = message;
  void m.event;
};
const outboundTransformer: TWebSocketOutboundTransformer<unknown, Meta> = async ({ client, event, data }) => {
  if (!client.encrypted) return null;
  return { event: WebSocketEvents.ENCRYPTED, data: { event, data } };
};
const handshakeFn: TWebSocketHandshakeFn<Auth> = async ({ data }) => (data.token ? { serverPublicKey: 'k', salt: 's' } : false);
const serverOptions: IBunWebSocketConfig = { maxPayloadLength: WebSocketDefaults.MAX_PAYLOAD_LENGTH, sendPings: true };

const options: IWebSocketServerOptions<Auth, Meta> = {
  identifier: 'chat',
  path: WebSocketDefaults.PATH,
  defaultRooms: [WebSocketDefaults.ROOM],
  serverOptions,
  authenticateFn,
  validateRoomFn,
  clientConnectedFn,
  clientDisconnectedFn,
  messageHandler,
  outboundTransformer,
  handshakeFn,
};

async function main(): Promise<void> {
  const helper: WebSocketServerHelper<Auth, Meta> = new WebSocketServerHelper<Auth, Meta>(options);
  const same: WebSocketServer<Auth, Meta> = helper;
  await helper.configure();
  const clients: Map<string, IWebSocketClient<Meta>> = helper.getClients();
  const one: IWebSocketClient<Meta> | undefined = helper.getClients({ id: 'x' });
  void [clients, one, same.getPath()];
  helper.send({ destination: 'room', payload: { topic: 't', data: 1 }, cb: () => {} });
  helper.sendToRoom({ room: 'r', event: 'e', data: {}, exclude: ['a'] });
  const env: IRedisSocketMessage = { serverId: 's', type: 'room', target: 'r', event: 'e', data: 1 };
  void [env, WebSocketChannels.forRoom({ room: 'r' }), WebSocketClientStates.AUTHENTICATED, WebSocketMessageTypes.USER];
  await helper.shutdown();
}
void main;

// The client SDK's typed events.
import { WebSocketClient } from 'ignis-ws-native/client';
type ChatEvents = { chat: { text: string; from: string } };
const client = new WebSocketClient<{ token: string }, ChatEvents>({ url: 'ws://x/ws', auth: () => ({ token: 't' }) });
client.on('chat', m => void m.text.toUpperCase());
client.on('disconnected', d => void (d.code + 1));
client.emit('chat', { text: 'hi', from: 'me' });
// @ts-expect-error: `chat` payloads have no `nope`
client.on('chat', m => void m.nope);
// @ts-expect-error: wrong payload type for `chat`
client.emit('chat', { text: 1 });

// This project's extensions: history, presence and acks, fleet-wide with Redis.
import { WebSocketEmitter } from 'ignis-ws-native';
async function extensions(): Promise<void> {
  const server = new WebSocketServer<Auth, Meta>({
    ...options,
    redis: 'redis://127.0.0.1:6379',
    acks: true,
    history: { size: 500, ttl: 60_000, rooms: ['chat-*'] },
    presence: { rooms: ['chat-*'], events: true, ttl: 15_000 },
  });
  const members: Array<{ clientId: string; userId?: string; metadata?: Meta }> = await server.getPresence({ room: 'chat-1' });
  void members;
  const emitter = new WebSocketEmitter({ redis: 'redis://127.0.0.1:6379', history: { rooms: ['chat-*'] } });
  await emitter.toRoom({ room: 'chat-1', event: 'e', data: 1 });
  // @ts-expect-error: presence.ttl is a number of ms
  void new WebSocketServer<Auth, Meta>({ ...options, presence: { ttl: '15s' } });
  const answer: number = await client.request<number>('sum', [1, 2], { timeout: 1000 });
  client.on('recovered', r => void (r.recovered ? r.room : ''));
  void answer;
}
void extensions;
