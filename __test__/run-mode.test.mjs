// Where the engine runs (`runMode`): on the JavaScript thread or on native
// threads. Both modes serve the same protocol; the JS-thread mode must also
// wake up for work that arrives while JavaScript is idle, fire its timers
// while nothing else happens, survive a handler that blocks the thread, and
// let the process exit once the server is shut down.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import { Client, startServer, stopAll, sleep, lib, hasCommand, needs, until } from './helpers.mjs';
import { noRedis, sharedRedis, startRedis } from './redis-helpers.mjs';

after(stopAll);

const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
const wsLib = createRequire(import.meta.url).resolve('ws');

/** An echo server: `echo` frames come back through sendToClient. */
function echoServer(runMode, extra = {}) {
  let ws;
  const started = startServer({
    runMode,
    messageHandler: ({ clientId, message }) => {
      if (message.event === 'echo') ws.sendToClient({ clientId, event: 'echo', data: message.data });
    },
    ...extra,
  });
  return started.then(s => {
    ws = s.ws;
    return s;
  });
}

/** A js-thread server whose handler answers each frame with `done`, after
 * holding the JS thread for `ms` on a `block` frame. */
async function blockingServer(ms) {
  const started = await startServer({
    runMode: 'js-thread',
    messageHandler: ({ clientId, message }) => {
      if (message.event === 'block') {
        const end = performance.now() + ms;
        while (performance.now() < end);
      }
      started.ws.sendToClient({ clientId, event: 'done', data: message.data });
    },
  });
  return started;
}

/** The command and arguments running `code` (an ES module body) in this runtime. */
function moduleCommand(code, prefix = []) {
  const [cmd, ...args] = [...prefix, process.execPath, '--input-type=module', '-e', code];
  return [cmd, process.versions.bun ? args.filter(a => a !== '--input-type=module') : args];
}

/** Runs `code` (an ES module body) in a fresh process of this runtime. */
function child(code, { env = {}, prefix = [] } = {}) {
  const r = spawnSync(...moduleCommand(code, prefix), {
    env: { ...process.env, IGNIS_WS_RUN_MODE: '', ...env },
    encoding: 'utf8',
    timeout: 20000,
  });
  return { status: r.status, signal: r.signal, out: (r.stdout ?? '').trim(), err: r.stderr ?? '' };
}

describe('runMode', () => {
  test('an unknown mode is refused naming the option', () => {
    assert.throws(
      () => new lib.WebSocketServer({ runMode: 'fibers', authenticateFn: () => null }),
      e => e.name === 'WebSocketOptionError' && /runMode/.test(e.message),
    );
  });

  for (const mode of ['js-thread', 'threads']) {
    test(`${mode}: 30 clients get their echoes, in order, each its own`, async () => {
      const { ws, url } = await echoServer(mode);
      assert.equal(ws.runMode, mode);
      const clients = await Promise.all(Array.from({ length: 30 }, () => Client.auth(url)));
      for (let round = 0; round < 20; round++) {
        for (const [i, c] of clients.entries()) c.emit('echo', { i, round });
      }
      for (const [i, c] of clients.entries()) {
        for (let round = 0; round < 20; round++) {
          const m = await c.next('echo');
          assert.deepEqual(m.data, { i, round });
        }
      }
      for (const c of clients) c.close();
    });
  }

  test('IGNIS_WS_RUN_MODE stands in for auto, and an explicit option wins over it', () => {
    const code = `
      const { WebSocketServer } = (await import(${JSON.stringify(dist)})).default ?? await import(${JSON.stringify(dist)});
      const a = new WebSocketServer({ logLevel: 'silent', authenticateFn: () => null });
      const b = new WebSocketServer({ logLevel: 'silent', runMode: 'js-thread', authenticateFn: () => null });
      console.log(a.runMode + ' ' + b.runMode);`;
    const r = child(code, { env: { IGNIS_WS_RUN_MODE: 'threads' } });
    assert.equal(r.status, 0, r.err);
    assert.equal(r.out.split('\n').pop(), 'threads js-thread');
  });

  /** What `auto` resolves to in a child process limited to `cpus` by taskset. */
  function autoUnder(cpus) {
    const code = `
      const { WebSocketServer } = (await import(${JSON.stringify(dist)})).default ?? await import(${JSON.stringify(dist)});
      console.log(new WebSocketServer({ logLevel: 'silent', authenticateFn: () => null }).runMode);`;
    const r = child(code, { prefix: ['taskset', '-c', cpus] });
    assert.equal(r.status, 0, r.err);
    return r.out.split('\n').pop();
  }

  test('auto runs on the JS thread when the process may use one core', t => {
    const missing = needs('taskset', hasCommand('taskset'), 'apt-get install util-linux');
    if (missing) return t.skip?.(missing);
    assert.equal(autoUnder('0'), 'js-thread');
  });

  test('auto runs on the JS thread when the process may use two cores', t => {
    const missing = needs('taskset', hasCommand('taskset'), 'apt-get install util-linux');
    if (missing) return t.skip?.(missing);
    // A property of the machine, not a missing component: said, not failed.
    if (os.availableParallelism() < 2) return t.skip?.('this machine lets the tests use one core only');
    assert.equal(autoUnder('0,1'), 'js-thread');
  });
});

describe('a server on a worker thread', () => {
  // The worker is terminated without shutdown(): its server must go with
  // it, as the worker's own sockets do, or it keeps its port and its
  // clients with no JavaScript left to answer them. The main thread has the
  // addon loaded too, so the engine outlives the worker.
  for (const mode of ['threads', 'js-thread']) {
    test(`${mode}: ends with its worker, closing its clients (1001) and freeing its port`, () => {
      const code = `
        const { Worker } = await import('node:worker_threads');
        const { WebSocketServer } = (await import(${JSON.stringify(dist)})).default ?? await import(${JSON.stringify(dist)});
        const WebSocket = (await import(${JSON.stringify(wsLib)})).default;
        const w = new Worker(\`
          (async () => {
            const { parentPort } = await import('node:worker_threads');
            const m = await import(${JSON.stringify(dist)});
            const ws = new (m.default ?? m).WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', runMode: '${mode}', authenticateFn: () => ({ userId: 'u' }) });
            await ws.configure();
            parentPort.postMessage({ port: ws.port, mode: ws.runMode });
          })();
        \`, { eval: true });
        const { port, mode } = await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
        const c = new WebSocket('ws://127.0.0.1:' + port + '/ws');
        await new Promise((resolve, reject) => { c.once('open', resolve); c.once('error', reject); });
        c.send(JSON.stringify({ event: 'authenticate', data: {} }));
        const first = await new Promise(resolve => c.once('message', d => resolve(JSON.parse(String(d)))));
        const closed = new Promise(resolve => c.once('close', code => resolve(code)));
        await w.terminate();
        let timer;
        const closeCode = await Promise.race([closed, new Promise(r => (timer = setTimeout(() => r('still open after 5 s'), 5000)))]);
        clearTimeout(timer);
        // Bound again from the main thread: the worker's listener is gone.
        const again = new WebSocketServer({ host: '127.0.0.1', port, logLevel: 'silent', runMode: '${mode}', authenticateFn: () => ({ userId: 'u' }) });
        let rebound;
        try {
          await again.configure();
          rebound = again.port === port;
        } catch (e) {
          rebound = String(e?.message ?? e);
        }
        console.log(JSON.stringify({ mode, first: first.event, closeCode, rebound, mainMode: again.runMode }));
        await again.shutdown();`;
      const r = child(code);
      assert.equal(r.status, 0, r.err);
      const got = JSON.parse(r.out.split('\n').pop());
      assert.equal(got.mode, mode);
      assert.equal(got.first, 'connected');
      assert.equal(got.closeCode, 1001);
      assert.equal(got.rebound, true);
      // Said once, on stderr, whatever the server's log level: nothing else
      // tells the application that its server went with the worker.
      assert.equal(r.err.split('ended before shutdown()').length - 1, 1, r.err);
      // js-thread belongs to the first JavaScript thread that asked for it
      // (here the worker, now gone): the main thread's server runs on threads.
      assert.equal(got.mainMode, 'threads');
    });
  }

  test('with Redis: the Redis connections of a worker\'s server and emitter close when it ends', { skip: noRedis }, async () => {
    const redis = await startRedis();
    try {
      const code = `
        const { Worker } = await import('node:worker_threads');
        await import(${JSON.stringify(dist)});
        const w = new Worker(\`
          (async () => {
            const { parentPort } = await import('node:worker_threads');
            const m = await import(${JSON.stringify(dist)});
            const lib = m.default ?? m;
            globalThis.ws = new lib.WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', redis: '${redis.url}', history: true, presence: true, authenticateFn: () => ({ userId: 'u' }) });
            await globalThis.ws.configure();
            globalThis.emitter = new lib.WebSocketEmitter({ redis: '${redis.url}' });
            await globalThis.emitter.configure();
            await globalThis.emitter.toRoom({ room: 'r', event: 'x', data: 1 });
            parentPort.postMessage('ready');
          })();
        \`, { eval: true });
        await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
        console.log('ready');
        // Held until told: the test counts the connections meanwhile.
        await new Promise(r => process.stdin.once('data', r));
        await w.terminate();
        console.log('terminated');
        await new Promise(r => process.stdin.once('data', r));`;
      const p = spawn(...moduleCommand(code), { stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', d => (out += d));
      try {
        await until(() => out.includes('ready'), 10000, 'the worker\'s server and emitter');
        const running = redis.connections();
        // The server's subscriber, publisher and store, and the emitter's.
        assert.ok(running >= 4, `${running} connections while the worker runs`);
        p.stdin.write('go\n');
        await until(() => out.includes('terminated'), 10000, 'the worker to end');
        await until(() => redis.connections() === 0, 3000, 'every connection closed after the worker ended');
      } finally {
        p.kill('SIGKILL');
      }
    } finally {
      await redis.stop();
    }
  });
});

describe('runMode js-thread', () => {
  test('work that arrives while JavaScript is idle is served: a client frame, and a send from a timer', async () => {
    const { ws, url } = await echoServer('js-thread');
    const c = await Client.auth(url);
    await sleep(300);
    c.emit('echo', 'after idle');
    assert.equal((await c.next('echo')).data, 'after idle');
    await sleep(300);
    await new Promise(r =>
      setTimeout(() => {
        ws.sendToClient({ clientId: c.id, event: 'tick', data: 1 });
        r();
      }, 50),
    );
    assert.equal((await c.next('tick')).data, 1);
    c.close();
  });

  test('timers fire while the JS thread has nothing to do: an idle unauthenticated client is closed 4001', async () => {
    const { url } = await echoServer('js-thread', { authTimeout: 200 });
    const c = await Client.open(url);
    const { code } = await Promise.race([c.closed, sleep(3000).then(() => ({ code: 'none' }))]);
    assert.equal(code, 4001);
  });

  test('a handler that blocks the thread delays the others but loses nothing', async () => {
    const { url } = await blockingServer(300);
    const blocker = await Client.auth(url);
    const others = await Promise.all(Array.from({ length: 5 }, () => Client.auth(url)));
    blocker.emit('block', 'b');
    await sleep(50);
    for (const [i, c] of others.entries()) for (let k = 0; k < 10; k++) c.emit('x', `${i}-${k}`);
    assert.equal((await blocker.next('done')).data, 'b');
    for (const [i, c] of others.entries()) {
      for (let k = 0; k < 10; k++) assert.equal((await c.next('done')).data, `${i}-${k}`);
    }
    for (const c of [blocker, ...others]) c.close();
  });

  test('while a handler holds the JS thread, what needs no JavaScript goes on: a new client opens', async () => {
    const { url } = await blockingServer(800);
    const blocker = await Client.auth(url);
    // The opening client is in a process of its own: this one's JavaScript
    // thread is the one the handler holds.
    const opener = spawn('node', [fileURLToPath(new URL('./fixtures/open-on-cue.mjs', import.meta.url)), url, '200'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let out = '';
    opener.stdout.on('data', d => (out += d));
    try {
      await until(() => out.includes('READY\n'), 10_000, 'the opener to start');
      opener.stdin.write('go\n');
      blocker.emit('block', 'b');
      assert.equal((await blocker.next('done')).data, 'b');
      await until(() => /READY\n\d+\n/.test(out), 10_000, 'the opener to open');
      const ms = Number(out.split('\n')[1]);
      process.stderr.write(`# figure: open while a handler held the JS thread: ${ms} ms\n`);
      // The handshake needs no JavaScript: it must not wait for the 800 ms
      // handler (it opens ~200 ms into it).
      assert.ok(ms < 300, `the open took ${ms} ms while a handler held the JS thread`);
    } finally {
      opener.kill();
      blocker.close();
    }
  });

  // Node only: Bun has no libuv poll handle to watch the runtime with.
  if (!process.versions.bun && fs.existsSync('/proc/self/task')) {
    test('on Node, messages spaced apart wake the JS thread alone: the waiter is not woken per message (IGNIS_WS_LOOP_WATCH=off: it is)', () => {
      const fixture = fileURLToPath(new URL('./fixtures/light-load.mjs', import.meta.url));
      const run = env => {
        const r = spawnSync(process.execPath, [fixture, '300', '3'], {
          env: { ...process.env, IGNIS_WS_RUN_MODE: '', ...env },
          encoding: 'utf8',
          timeout: 60_000,
        });
        assert.equal(r.status, 0, r.stderr);
        return JSON.parse(r.stdout.trim().split('\n').pop());
      };
      const watched = run({})['ignis-ws-waiter'];
      const handed = run({ IGNIS_WS_LOOP_WATCH: 'off' })['ignis-ws-waiter'];
      process.stderr.write(`# figure: the waiter woken ${watched} times over 300 round trips 3 ms apart with the loop watch, ${handed} without\n`);
      // The control: without the watch the waiter reads every frame.
      assert.ok(handed >= 300, `without the watch the waiter was woken only ${handed} times`);
      assert.ok(watched <= handed / 3, `with the watch the waiter was still woken ${watched} times (${handed} without)`);
    });
  }

  test('while a handler holds the JS thread, the waiter serving the sockets does not spin', async t => {
    if (!fs.existsSync('/proc/self/task')) return t.skip('needs /proc (Linux)');
    /** CPU ticks of this process's `ignis-ws-waiter` thread. */
    const waiterTicks = () => {
      for (const task of fs.readdirSync('/proc/self/task')) {
        if (fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() !== 'ignis-ws-waiter') continue;
        const f = fs.readFileSync(`/proc/self/task/${task}/stat`, 'utf8').split(') ')[1].split(' ');
        return Number(f[11]) + Number(f[12]);
      }
      throw new Error('no ignis-ws-waiter thread');
    };
    let spent;
    const { ws, url } = await startServer({
      runMode: 'js-thread',
      messageHandler: ({ clientId, message }) => {
        const before = waiterTicks();
        const end = performance.now() + 1000;
        while (performance.now() < end);
        spent = waiterTicks() - before;
        ws.sendToClient({ clientId, event: 'done', data: message.data });
      },
    });
    const c = await Client.auth(url);
    c.emit('block', 1);
    await c.next('done');
    // The waiter takes the runtime back and then sleeps in its driver;
    // spinning, it would burn the whole second (100 ticks).
    assert.ok(spent < 30, `the waiter used ${spent} ticks of CPU during a 1 s handler`);
    c.close();
  });

  test('with Redis, a publication leaves for the other instances before the local fan-out is done', { skip: noRedis, timeout: 120_000 }, async () => {
    // The Redis connections run on a thread of their own: on the JS
    // thread's runtime the publication waited behind the writes to every
    // local member of the room.
    const redis = await sharedRedis();
    const { default: IORedis } = await import('ioredis');
    const sub = new IORedis(redis.url);
    const socks = [];
    let ws;
    try {
      const big = 'x'.repeat(16 * 1024);
      ({ ws } = await startServer({
        runMode: 'js-thread',
        redis: { url: redis.url },
        messageHandler: ({ message }) => {
          if (message.event === 'go') ws.send({ destination: 'ws-default', payload: { topic: 'news', data: big } });
        },
      }));
      const url = `ws://127.0.0.1:${ws.port}/ws`;
      const members = 1000;
      let got = 0;
      let gotWhenPublished = -1;
      const published = new Promise(resolve =>
        sub.on('message', () => {
          gotWhenPublished = got;
          resolve();
        }),
      );
      // Its 'ready' may have been fired during startServer.
      if (sub.status !== 'ready') await new Promise((resolve, reject) => (sub.once('ready', resolve), sub.once('error', reject)));
      await sub.subscribe('ws:room:ws-default');
      for (let i = 0; i < members; i += 100) {
        socks.push(...(await Promise.all(Array.from({ length: Math.min(100, members - i) }, () => Client.auth(url)))));
      }
      const all = new Promise(resolve => {
        for (const c of socks) {
          c.sock.on('message', d => {
            if (d.length > big.length && ++got === members) resolve();
          });
        }
      });
      socks[0].emit('go');
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`after 20 s: ${got} of ${members} members got the publication, Redis ${gotWhenPublished < 0 ? 'did not' : 'did'}`)), 20000);
      });
      await Promise.race([Promise.all([published, all]), late]).finally(() => clearTimeout(timer));
      assert.ok(gotWhenPublished < members, `Redis got the publication only after all ${members} local members had theirs`);
      if (fs.existsSync('/proc/self/task')) {
        const threads = fs.readdirSync('/proc/self/task').map(t => fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim());
        assert.ok(threads.includes('ignis-ws-redis'), `no ignis-ws-redis thread among ${threads}`);
      }
    } finally {
      for (const c of socks) c.sock.terminate();
      sub.disconnect();
      await ws?.shutdown();
      await redis.stop();
    }
  });

  test('the process exits by itself once the server is shut down', () => {
    const code = `
      const { WebSocketServer } = (await import(${JSON.stringify(dist)})).default ?? await import(${JSON.stringify(dist)});
      const ws = new WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', runMode: 'js-thread', authenticateFn: () => ({ userId: 'u' }) });
      await ws.configure();
      const WebSocket = (await import(${JSON.stringify(wsLib)})).default;
      const c = new WebSocket('ws://127.0.0.1:' + ws.port + '/ws');
      await new Promise((resolve, reject) => { c.once('open', resolve); c.once('error', reject); });
      c.send(JSON.stringify({ event: 'authenticate', data: {} }));
      await new Promise(resolve => c.once('message', resolve));
      c.close();
      await ws.shutdown();
      console.log('shut down');`;
    const started = performance.now();
    const r = child(code);
    assert.equal(r.signal, null, `killed after ${performance.now() - started} ms: the process did not exit by itself`);
    assert.equal(r.status, 0, r.err);
    assert.equal(r.out.split('\n').pop(), 'shut down');
  });
});
