// The Autobahn TestSuite's fixture: an echo server on the connection's own
// socket layers (src/core/echo.rs), on 127.0.0.1.
//   npm run autobahn:server -- --port 9001
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const native = require('../index.js');

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '9001' },
    // Case 9 sends messages of up to 16 MiB.
    'max-payload': { type: 'string', default: String(64 * 1024 * 1024) },
  },
});
const port = await native.startEchoFixture('127.0.0.1', Number(values.port), Number(values['max-payload']));
console.log(`echo fixture listening on ws://127.0.0.1:${port}`);
// The listener keeps no handle on the event loop: hold the process open.
setInterval(() => {}, 1 << 30);
