// ignis-ws-native, on Node or Bun, wired like an Ignis application:
// Redis bus, rooms validated in JS, a messageHandler that answers `echo`
// (and `order`, scenario r) with sendToClient and relays `chat` to its room on every instance.
import { createRequire } from 'node:module';
import { answerOrder } from './order.mjs';
const require = createRequire(import.meta.url);
const { WebSocketServer } = require('../../dist/index.js');

const ws = new WebSocketServer({
  identifier: 'bench',
  host: '127.0.0.1',
  port: 0,
  logLevel: 'error',
  // The other contenders have no per-client frame limit; the closed loop of
  // scenario (d) sends more than the default 1000 frames/s per client.
  limits: { maxFramesPerSecond: 0 },
  redis: process.env.REDIS_URL ? { url: process.env.REDIS_URL } : undefined,
  // Scenario (h): every room keeps history (in Redis with the bus).
  history: process.env.BENCH_HISTORY ? { size: 100 } : undefined,
  // Scenarios (bz), (cz): permessage-deflate.
  perMessageDeflate: Boolean(process.env.BENCH_DEFLATE),
  authenticateFn: d => (d.token ? { userId: d.userId ?? 'u-' + d.token } : null),
  validateRoomFn: ({ rooms }) => rooms,
  messageHandler: ({ clientId, message }) => {
    if (message.event === 'echo') ws.sendToClient({ clientId, event: 'echo', data: message.data });
    else if (message.event === 'order') answerOrder(o => ws.sendToClient(o), clientId, message.data);
    else if (message.event === 'chat') ws.send({ destination: message.data.room, payload: { topic: 'chat', data: message.data } });
  },
});
await ws.configure();
process.stdout.write(`PORT ${ws.port}\n`);
// For a look at the counters during a run: kill -USR2 <pid>.
process.on('SIGUSR2', () => process.stderr.write(`STATS ${JSON.stringify(ws.stats())}\n`));
