// Demo: chat rooms with history (recovery after a disconnection) and
// presence, served with the client SDK.
//
//   npm run demo                                  one instance on PORT (default 3000), no Redis
//   REDIS_URL=redis://… npm run demo -- --instances 2   two instances (PORT, PORT+1) sharing Redis
//
// On Node each instance is a plain http.Server serving the page; WebSocket
// upgrades at /ws on the same port go to the native server (ws.attach). On
// Bun (`bun demo/server.mjs`), whose node:http sockets cannot be handed
// over, the native server owns the port and hands every other request to
// the page's `fetch` handler (the `fetch` option).
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

/** The page's file at `pathname`: its status, headers and body. */
async function pageFile(pathname) {
  const file = files[pathname];
  if (!file) return { status: 404, headers: {}, body: 'not found' };
  try {
    const body = await fs.promises.readFile(path.join(here, file[0]));
    return { status: 200, headers: { 'content-type': file[1], 'cache-control': 'no-store' }, body };
  } catch (err) {
    return { status: 500, headers: {}, body: String(err) };
  }
}

/** Bun's `fetch` handler for the page. */
async function servePage(req) {
  const { status, headers, body } = await pageFile(new URL(req.url).pathname);
  return new Response(body, { status, headers });
}

export async function startInstance(index, port, opts = {}) {
  const bus = opts.redis ?? redis;
  let label = `instance ${index + 1}`;
  const onBun = Boolean(globalThis.Bun);
  const ws = new WebSocketServer({
    ...(onBun ? { host: opts.host ?? '0.0.0.0', port, fetch: servePage } : {}),
    identifier: `demo-${index + 1}`,
    redis: bus,
    logLevel: opts.logLevel ?? 'warn',
    heartbeatInterval: 10_000,
    heartbeatTimeout: 35_000,
    // Every room keeps its last 200 messages: a page that was offline gets
    // what it missed when it is back (on any instance, with Redis).
    history: { size: 200 },
    // The online list: getPresence, and join/leave events to the room.
    presence: { events: true },
    // `client.request('who')` gets the message handler's return value.
    acks: true,
    // Browsers offer permessage-deflate: messages go compressed both ways.
    perMessageDeflate: true,
    authenticateFn: ({ name }) => {
      const n = typeof name === 'string' ? name.trim().slice(0, 24) : '';
      return n ? { userId: n, metadata: { name: n, instance: label } } : null;
    },
    clientConnectedFn: ({ clientId }) => {
      ws.sendToClient({ clientId, event: 'instance', data: { label } });
    },
    validateRoomFn: ({ rooms }) => rooms.filter(r => ROOM.test(r)),
    messageHandler: ({ clientId, userId, message }) => {
      const { event, data } = message;
      const room = data?.room;
      if (typeof room !== 'string' || !ws.getClients({ id: clientId })?.rooms.has(room)) return undefined;
      if (event === 'who') return ws.getPresence({ room });
      if (event === 'chat' && typeof data.text === 'string' && data.text.trim()) {
        ws.send({
          destination: room,
          payload: { topic: 'chat', data: { room, from: userId, instance: label, text: data.text.slice(0, 500), at: Date.now() } },
        });
      }
      return undefined;
    },
  });
  if (onBun) {
    await ws.configure();
    label = `instance ${index + 1} (:${ws.port})`;
    return { ws, server: null, port: ws.port, stop: () => ws.shutdown() };
  }
  const server = http.createServer(async (req, res) => {
    const { status, headers, body } = await pageFile((req.url ?? '/').split('?')[0]);
    res.writeHead(status, headers).end(body);
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
