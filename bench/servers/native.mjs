// ignis-ws-native, on Node or Bun, wired like an Ignis application:
// Redis bus, rooms validated in JS, a messageHandler that answers `echo`
// with sendToClient and relays `chat` to its room on every instance.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const { WebSocketServer } = require('../../dist/index.js');

const ws = new WebSocketServer({
  identifier: 'bench',
  host: '127.0.0.1',
  port: 0,
  logLevel: 'error',
  redis: process.env.REDIS_URL ? { url: process.env.REDIS_URL } : undefined,
  authenticateFn: d => (d.token ? { userId: d.userId ?? 'u-' + d.token } : null),
  validateRoomFn: ({ rooms }) => rooms,
  messageHandler: ({ clientId, message }) => {
    if (message.event === 'echo') ws.sendToClient({ clientId, event: 'echo', data: message.data });
    else if (message.event === 'chat') ws.send({ destination: message.data.room, payload: { topic: 'chat', data: message.data } });
  },
});
await ws.configure();
process.stdout.write(`PORT ${ws.port}\n`);
