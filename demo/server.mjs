// Demo: chat rooms with presence, served with the client SDK.
//
//   npm run demo                                  one instance on PORT (default 3000), no Redis
//   REDIS_URL=redis://… npm run demo -- --instances 2   two instances (PORT, PORT+1) sharing Redis
//
// Each instance is a plain Node http.Server serving the page; WebSocket
// upgrades at /ws on the same port go to the native server (ws.attach).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { WebSocketServer } = require('../dist/index.js');
const here = path.dirname(fileURLToPath(import.meta.url));

const args = process.argv.slice(2);
const instances = Number(args[args.indexOf('--instances') + 1] || 1) || 1;
const basePort = Number(process.env.PORT ?? 3000);
const redis = process.env.REDIS_URL;
if (instances > 1 && !redis) {
  console.error('More than one instance needs Redis between them: set REDIS_URL (e.g. redis://127.0.0.1:6379).');
  process.exit(1);
}

const ROOM = /^[a-z0-9-]{1,32}$/;
const files = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/client.js': ['../dist/browser/client.js', 'text/javascript; charset=utf-8'],
};

export async function startInstance(index, port, opts = {}) {
  const bus = opts.redis ?? redis;
  const members = new Map(); // clientId -> { name, rooms }
  let label = `instance ${index + 1}`;
  const ws = new WebSocketServer({
    identifier: `demo-${index + 1}`,
    redis: bus,
    logLevel: opts.logLevel ?? 'warn',
    heartbeatInterval: 10_000,
    heartbeatTimeout: 35_000,
    authenticateFn: ({ name }) => {
      const n = typeof name === 'string' ? name.trim().slice(0, 24) : '';
      return n ? { userId: n, metadata: { name: n } } : null;
    },
    clientConnectedFn: ({ clientId, userId }) => {
      members.set(clientId, { name: userId, rooms: new Set() });
      ws.sendToClient({ clientId, event: 'instance', data: { label } });
    },
    validateRoomFn: ({ clientId, rooms }) => {
      const ok = rooms.filter(r => ROOM.test(r));
      for (const r of ok) members.get(clientId)?.rooms.add(r);
      return ok;
    },
    clientDisconnectedFn: ({ clientId }) => {
      const m = members.get(clientId);
      members.delete(clientId);
      for (const room of m?.rooms ?? []) {
        ws.send({ destination: room, payload: { topic: 'presence', data: { room, clientId, name: m.name, instance: label, state: 'left' } } });
      }
    },
    messageHandler: ({ clientId, userId, message }) => {
      const { event, data } = message;
      const room = data?.room;
      const member = members.get(clientId);
      if (typeof room !== 'string' || !ROOM.test(room) || !member) return;
      // A join is validated asynchronously; a presence announcement may
      // overtake it, so it records the room itself.
      if (event === 'here') member.rooms.add(room);
      if (!member.rooms.has(room)) return;
      if (event === 'chat' && typeof data.text === 'string' && data.text.trim()) {
        ws.send({
          destination: room,
          payload: { topic: 'chat', data: { room, from: userId, instance: label, text: data.text.slice(0, 500), at: Date.now() } },
        });
      } else if (event === 'here') {
        // Announce to the room; everyone already there answers the newcomer directly.
        ws.send({ destination: room, payload: { topic: 'presence', data: { room, clientId, name: userId, instance: label, state: 'here' } } });
      } else if (event === 'here-too' && typeof data.to === 'string') {
        ws.send({ destination: data.to, payload: { topic: 'presence', data: { room, clientId, name: userId, instance: label, state: 'here' } } });
      }
    },
  });
  const server = http.createServer((req, res) => {
    const file = files[(req.url ?? '/').split('?')[0]];
    if (!file) {
      res.writeHead(404).end('not found');
      return;
    }
    fs.readFile(path.join(here, file[0]), (err, body) => {
      if (err) res.writeHead(500).end(String(err));
      else res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' }).end(body);
    });
  });
  ws.attach(server);
  await ws.configure();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, opts.host ?? '0.0.0.0', resolve);
  });
  label = `instance ${index + 1} (:${server.address().port})`;
  return {
    ws,
    server,
    port: server.address().port,
    async stop() {
      await ws.shutdown();
      await new Promise(r => server.close(r));
    },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const running = [];
  for (let i = 0; i < instances; i++) {
    const inst = await startInstance(i, basePort + i);
    running.push(inst);
    console.log(`ignis-ws-native demo: instance ${i + 1} on http://localhost:${inst.port}/${redis ? ` (Redis ${redis})` : ''}`);
  }
  const stop = async () => {
    await Promise.all(running.map(r => r.stop()));
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
