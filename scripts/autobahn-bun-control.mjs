// Control server for the Autobahn TestSuite run (`npm run autobahn -- --control bun`):
// a plain Bun.serve echo server with permessage-deflate, so the suite's results
// on a well-known implementation (Bun's uWebSockets) can be compared with ours.
//
//   bun scripts/autobahn-bun-control.mjs --port 9001
//
// Listens on 127.0.0.1 only and prints a line containing `listening` when ready.
// Runs under Bun only (it uses Bun.serve).
if (typeof Bun === 'undefined') {
  console.error('autobahn-bun-control.mjs must be run with bun');
  process.exit(2);
}

function argValue(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i !== -1 && process.argv[i + 1] !== undefined) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`${name}=`));
  return eq ? eq.slice(name.length + 1) : fallback;
}

const port = Number(argValue('--port', process.env.PORT ?? '9001'));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid --port: ${port}`);
  process.exit(2);
}

const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, srv) {
    if (srv.upgrade(req)) return undefined;
    return new Response('WebSocket echo server (Autobahn control)\n', { status: 426 });
  },
  websocket: {
    perMessageDeflate: true,
    maxPayloadLength: 16 * 1024 * 1024,
    message(ws, m) {
      ws.send(m);
    },
  },
});

console.log(`autobahn bun control listening on ws://127.0.0.1:${server.port} (bun ${Bun.version})`);

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
