// `ws` on Node with an ioredis relay: what a Node application writes by hand
// for the same job (authenticate message, rooms as sets, Redis fan-out).
import { WebSocketServer } from 'ws';
import Redis from 'ioredis';

const origin = crypto.randomUUID();
const pub = new Redis(process.env.REDIS_URL);
const sub = new Redis(process.env.REDIS_URL);
const rooms = new Map();
const frame = (event, data) => JSON.stringify({ event, data });
const toRoom = (room, f) => {
  for (const s of rooms.get(room) ?? []) s.send(f);
};
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: '/ws' });
wss.on('connection', socket => {
  let userId = null;
  const mine = new Set();
  socket.on('message', text => {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (!userId) {
      if (m.event !== 'authenticate' || !m.data?.token) return socket.close(4003, 'Authentication failed');
      userId = m.data.userId ?? 'u-' + m.data.token;
      return socket.send(frame('connected', { id: crypto.randomUUID(), userId, time: new Date().toISOString() }));
    }
    if (m.event === 'join') {
      for (const r of m.data?.rooms ?? []) {
        if (!rooms.has(r)) rooms.set(r, new Set());
        rooms.get(r).add(socket);
        mine.add(r);
      }
    } else if (m.event === 'echo') socket.send(frame('echo', m.data));
    else if (m.event === 'chat') {
      const f = frame('chat', m.data);
      toRoom(m.data.room, f);
      pub.publish('bench:fanout', JSON.stringify({ origin, room: m.data.room, frame: f }));
    }
  });
  socket.on('close', () => {
    for (const r of mine) rooms.get(r)?.delete(socket);
  });
});
await sub.subscribe('bench:fanout');
sub.on('message', (_channel, text) => {
  const m = JSON.parse(text);
  if (m.origin !== origin) toRoom(m.room, m.frame);
});
if (!wss.address()) await new Promise(r => wss.once('listening', r));
process.stdout.write(`PORT ${wss.address().port}\n`);
