// Bun.serve's own pub/sub topics used directly: the least a Bun application
// can do for the same job (authenticate message, rooms as topics, Redis
// relay with ioredis). No timers, no validation hooks, no client registry.
import Redis from 'ioredis';

const origin = crypto.randomUUID();
const pub = new Redis(process.env.REDIS_URL);
const sub = new Redis(process.env.REDIS_URL);
const frame = (event, data) => JSON.stringify({ event, data });
const server = Bun.serve({
  hostname: '127.0.0.1',
  port: 0,
  fetch(req, srv) {
    if (new URL(req.url).pathname === '/ws' && srv.upgrade(req, { data: { userId: null } })) return undefined;
    return new Response('not found', { status: 404 });
  },
  websocket: {
    message(ws, text) {
      let m;
      try {
        m = JSON.parse(text);
      } catch {
        return;
      }
      if (!ws.data.userId) {
        if (m.event !== 'authenticate' || !m.data?.token) return ws.close(4003, 'Authentication failed');
        ws.data.userId = m.data.userId ?? 'u-' + m.data.token;
        return ws.send(frame('connected', { id: crypto.randomUUID(), userId: ws.data.userId, time: new Date().toISOString() }));
      }
      if (m.event === 'join') for (const r of m.data?.rooms ?? []) ws.subscribe(r);
      else if (m.event === 'echo') ws.send(frame('echo', m.data));
      else if (m.event === 'chat') {
        const f = frame('chat', m.data);
        server.publish(m.data.room, f);
        pub.publish('bench:fanout', JSON.stringify({ origin, room: m.data.room, frame: f }));
      }
    },
  },
});
await sub.subscribe('bench:fanout');
sub.on('message', (_channel, text) => {
  const m = JSON.parse(text);
  if (m.origin !== origin) server.publish(m.room, m.frame);
});
process.stdout.write(`PORT ${server.port}\n`);
