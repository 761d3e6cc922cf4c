// The original Ignis helper (@venizia/ignis-helpers 0.0.7) on Bun, wired the
// way its component wires it, with the same handlers as native.mjs.
import { WebSocketServerHelper, RedisHelper } from '@venizia/ignis-helpers';
import { answerOrder } from './order.mjs';

const url = new URL(process.env.REDIS_URL);
const redis = new RedisHelper({ name: 'bench', host: url.hostname, port: Number(url.port), autoConnect: false });
const server = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('starting', { status: 503 }), websocket: { message() {} } });
const helper = new WebSocketServerHelper({
  identifier: 'bench',
  server,
  redisConnection: redis,
  authenticateFn: d => (d.token ? { userId: d.userId ?? 'u-' + d.token } : null),
  validateRoomFn: ({ rooms }) => rooms,
  // Scenarios (bz), (cz): permessage-deflate, handed to Bun by the helper.
  serverOptions: process.env.BENCH_DEFLATE ? { perMessageDeflate: true } : undefined,
  messageHandler: ({ clientId, message }) => {
    if (message.event === 'echo') helper.sendToClient({ clientId, event: 'echo', data: message.data });
    else if (message.event === 'order') answerOrder(o => helper.sendToClient(o), clientId, message.data);
    else if (message.event === 'chat') helper.send({ destination: message.data.room, payload: { topic: 'chat', data: message.data } });
  },
});
server.reload({
  fetch(req, srv) {
    if (new URL(req.url).pathname === '/ws' && srv.upgrade(req, { data: { clientId: crypto.randomUUID() } })) return undefined;
    return new Response('not found', { status: 404 });
  },
  websocket: helper.getBunWebSocketHandler(),
});
await helper.configure();
process.stdout.write(`PORT ${server.port}\n`);
