// Misbehaving application handlers: every one gets the protocol's answer and
// the process stays up.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, lib, startServer, stopAll, sleep, until } from './helpers.mjs';

after(stopAll);

describe('handlers that misbehave', () => {
  test('authenticateFn returning a truthy non-object authenticates without a user, as the original', async () => {
    const { url } = await startServer({ authenticateFn: () => 5 });
    const c = await Client.auth(url, {});
    assert.equal(c.connected.userId, undefined);
    c.close();
  });

  test('clients authenticating at once each get their own outcome, whatever their handler did', async () => {
    const modes = ['sync', 'async', 'thenable', 'rejected', 'throws', 'rejects'];
    const { url, ws } = await startServer({
      authenticateFn: ({ token, mode }) => {
        switch (mode) {
          case 'sync':
            return { userId: `u-${token}`, metadata: { token } };
          case 'async':
            return new Promise(r => setTimeout(() => r({ userId: `u-${token}` }), Math.random() * 30));
          case 'thenable':
            // Resolved as `await` would: through the inner promise too.
            return { then: resolve => resolve(Promise.resolve({ userId: `u-${token}` })) };
          case 'rejected':
            return null;
          case 'throws':
            throw new Error(`bad ${token}`);
          default:
            return Promise.reject(new Error(`no ${token}`));
        }
      },
    });
    const clients = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => ({ c: await Client.open(url), token: `t${i}`, mode: modes[i % modes.length] })),
    );
    // All sent before any answer: they reach the handler in shared batches.
    for (const { c, token, mode } of clients) c.emit('authenticate', { token, mode });
    for (const { c, token, mode } of clients) {
      if (mode === 'sync' || mode === 'async' || mode === 'thenable') {
        const m = await c.next('connected');
        assert.equal(m.data.userId, `u-${token}`);
        const record = ws.getClients({ id: m.data.id });
        assert.equal(record.userId, `u-${token}`);
        if (mode === 'sync') assert.deepEqual(record.metadata, { token });
        c.close();
      } else {
        const e = await c.next('error');
        assert.equal(e.data.message, mode === 'rejected' ? 'Authentication failed' : 'Authentication error', `${token} ${mode}`);
        assert.equal((await c.closed).code, 4003);
      }
    }
  });

  test('clients joining at once each get their own room validation, whatever the handler did', async () => {
    const modes = ['sync', 'async', 'throws', 'rejects', 'junk'];
    const { url, ws } = await startServer({
      validateRoomFn: ({ userId, rooms }) => {
        switch (rooms[0]) {
          case 'sync':
            return [...rooms, 42];
          case 'async':
            return new Promise(r => setTimeout(() => r([`own-${userId}`]), Math.random() * 30));
          case 'throws':
            throw new Error('no');
          case 'rejects':
            return Promise.reject(new Error('no'));
          default:
            return 42;
        }
      },
    });
    const clients = await Promise.all(
      Array.from({ length: 50 }, async (_, i) => ({ c: await Client.auth(url, { token: `t${i}`, userId: `u${i}` }), i, mode: modes[i % modes.length] })),
    );
    // All sent before any answer: they reach the handler in shared batches.
    for (const { c, i, mode } of clients) c.emit('join', { rooms: [mode, `own-u${i}`] });
    const expected = ({ i, mode }) => (mode === 'sync' ? ['sync', `own-u${i}`] : mode === 'async' ? [`own-u${i}`] : []);
    const joined = ({ c }) => [...ws.getClients({ id: c.id }).rooms].filter(r => !r.startsWith('ws-') && r !== c.id).sort();
    await until(() => clients.every(k => JSON.stringify(joined(k)) === JSON.stringify(expected(k).sort())), 3000, 'every join settled');
    // Failed validations join nothing, later too.
    await sleep(100);
    for (const k of clients) assert.deepEqual(joined(k), expected(k).sort(), `${k.i} ${k.mode}`);
    for (const { c } of clients) c.close();
  });

  test('clientConnectedFn / clientDisconnectedFn that throw or reject are logged only', async () => {
    const lines = [];
    const logger = { error: l => lines.push(l), warn: () => {}, info: () => {} };
    const { url, ws } = await startServer({
      logger,
      logLevel: 'error',
      clientConnectedFn: () => {
        throw new Error('connected boom');
      },
      clientDisconnectedFn: () => Promise.reject(new Error('disconnected boom')),
    });
    const c = await Client.auth(url);
    c.emit('heartbeat');
    await until(() => lines.some(l => l.includes('connected boom')), 2000, 'connected error logged');
    assert.equal(ws.getClients({ id: c.id }).state, 'authenticated', 'client kept');
    await c.close();
    await until(() => lines.some(l => l.includes('disconnected boom')), 2000, 'disconnected error logged');
  });

  test('a validateRoomFn that never settles blocks neither the client nor others', async () => {
    const { url, ws } = await startServer({ validateRoomFn: () => new Promise(() => {}), messageHandler: () => {} });
    const a = await Client.auth(url);
    for (let i = 0; i < 40; i++) a.emit('join', { rooms: ['r' + i] });
    a.emit('leave', { rooms: ['ws-default'] });
    await until(() => !ws.getClients({ id: a.id }).rooms.has('ws-default'), 2000, 'leave processed');
    assert.ok(ws.stats().joinsRefused >= 24, 'pending joins are capped per client');
    const b = await Client.auth(url);
    ws.sendToClient({ clientId: b.id, event: 'ok' });
    await b.next('ok');
    a.close();
    b.close();
  });

  test('a logger that throws does not take the server down', async () => {
    const bad = () => {
      throw new Error('logger down');
    };
    const { url } = await startServer({ logger: { error: bad, warn: bad, info: bad }, logLevel: 'debug' });
    const c = await Client.auth(url);
    c.send('garbage');
    await c.next('error');
    c.close();
  });
});

describe('transport timers', () => {
  test('idleTimeout closes a silent socket (1001 Idle timeout) when pings are off', async () => {
    const { url } = await startServer({ serverOptions: { idleTimeout: 1, sendPings: false } });
    const c = await Client.auth(url);
    const t0 = performance.now();
    assert.deepEqual(await c.closed, { code: 1001, reason: 'Idle timeout' });
    const took = performance.now() - t0;
    assert.ok(took >= 400 && took < 2500, `closed after ${took} ms`);
  });

  test('with sendPings a live but quiet peer answers pings and stays connected', async () => {
    const { url, ws } = await startServer({ serverOptions: { idleTimeout: 1, sendPings: true } });
    const c = await Client.auth(url);
    let pings = 0;
    c.sock.on('ping', () => pings++);
    await sleep(2500);
    assert.ok(ws.getClients({ id: c.id }), 'still connected');
    assert.ok(pings >= 1, 'the server pinged');
    c.close();
  });
});

describe('events reaching the handlers', () => {
  test('every message names its own sender and user while clients come and go in the same batches', async () => {
    const got = [];
    const connected = new Map();
    const disconnected = new Map();
    const { url, ws } = await startServer({
      clientConnectedFn: ({ clientId, userId }) => connected.set(clientId, userId),
      clientDisconnectedFn: ({ clientId, userId }) => disconnected.set(clientId, userId),
      messageHandler: ({ clientId, userId, message }) => got.push({ clientId, userId, from: message.data.from }),
    });
    const senders = new Map();
    let live = [];
    for (let wave = 0; wave < 3; wave++) {
      const fresh = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const token = `w${wave}-${i}`;
          const c = await Client.auth(url, { token });
          senders.set(token, c.id);
          return { c, token };
        }),
      );
      live = live.concat(fresh);
      // Interleaved, so one batch holds messages from many clients.
      for (let n = 0; n < 5; n++) for (const { c, token } of live) c.emit('chat', { from: token, n });
      // Half leave while the others' messages are still on their way.
      const leaving = live.filter((_, i) => i % 2 === 0);
      live = live.filter((_, i) => i % 2 === 1);
      for (const { c } of leaving) c.close();
    }
    const expected = [...senders.keys()].length;
    await until(() => got.length === 5 * (20 + 30 + 35), 5000, `all messages (${got.length})`);
    for (const { clientId, userId, from } of got) {
      assert.equal(clientId, senders.get(from), `${from}'s message names its sender`);
      assert.equal(userId, `user-${from}`);
    }
    for (const { c } of live) c.close();
    await until(() => disconnected.size === expected, 5000, 'every disconnect');
    for (const [token, id] of senders) {
      assert.equal(connected.get(id), `user-${token}`);
      assert.equal(disconnected.get(id), `user-${token}`);
    }
    // Nothing is kept for a client once it is gone.
    assert.equal(ws.known.size, 0);
  });

  test('a message is what JSON.parse makes of its frame, whatever its keys and their order', async () => {
    const frames = [
      '{"event":"a","data":{"k":1,"list":[1,null,{"deep":true}]}}',
      ' { "event" : "a" ,\n "data" : [1, "\\u00e9\\n\\"", -0.5e3] } ',
      '{"event":"a","data":"\\ud83d\\ude00 é"}',
      '{"event":"a","data":null}',
      '{"event":7,"data":false}',
      '{"event":{"o":1},"data":{"__proto__":{"x":1}}}',
      '{"data":1,"event":"a"}',
      '{"event":"a"}',
      '{"event":"a","data":1,"x":2}',
      '{"x":2,"event":"a","data":1}',
      '{"event":"a","data":1,"id":"q"}',
      '{"event":"a","event":"b","data":1}',
      '{"event":"a","data":1,"data":2}',
      '{"ev\\u0065nt":"a","data":1}',
      '{"event":"d\\u0061ta","d\\u0061ta":1}',
    ];
    const got = [];
    const { url, ws } = await startServer({ messageHandler: ({ message }) => got.push(message) });
    // Tally the kinds of entry in each batch, to know both forms are used.
    const kinds = new Map();
    const deliver = ws.deliver.bind(ws);
    ws.deliver = batch => {
      const events = JSON.parse(batch);
      for (let i = 0; i < events.length; ) {
        kinds.set(events[i], (kinds.get(events[i]) ?? 0) + 1);
        i += events[i] === 2 ? 3 : 4;
      }
      return deliver(batch);
    };
    const c = await Client.auth(url);
    for (const f of frames) c.sock.send(f);
    await until(() => got.length === frames.length, 3000, `every message (${got.length})`);
    for (const [i, f] of frames.entries()) {
      const want = JSON.parse(f);
      assert.deepEqual(got[i], want, f);
      // Same keys in the same order, and the same own properties.
      assert.deepEqual(Reflect.ownKeys(got[i]), Reflect.ownKeys(want), f);
      assert.equal(JSON.stringify(got[i]), JSON.stringify(want), f);
    }
    // `{event, data}` alone, in that order: the first six frames.
    assert.equal(kinds.get(3), 6);
    assert.equal(kinds.get(2), frames.length - 6);
    c.close();
  });

  test('what a handler sends while its batch runs arrives as JSON.stringify({ event, data }) writes it, in order', async () => {
    const keyedFn = () => 1;
    keyedFn.toJSON = key => `fn:${key}`;
    const replies = [
      { event: 'plain', data: { k: 1, s: 'é😀"\\\u0001\u007f\u2028/', list: [1, null, { deep: true }] } },
      { event: 'nodata' },
      { event: 'date', data: new Date(0) },
      { event: 'line\nbreak', data: 1 },
      { event: 'lone\ud800', data: 2 },
      { event: 'fn', data: () => 1 },
      { event: 'text', data: 'a\nb"c' },
      { event: 't\tab"\\\u0001', data: null },
      { event: 'é', data: [] },
      // toJSON is told the key it is serialised under, as in the original.
      { event: 'keyed', data: { toJSON: key => `key:${key}` } },
      { event: 'keyed fn', data: keyedFn },
      // No data last: the queued calls end with an empty part.
      { event: 'end' },
    ];
    const { url, ws } = await startServer({
      messageHandler: ({ clientId }) => {
        for (const r of replies) ws.sendToClient({ clientId, ...r });
      },
    });
    // Count what takes the queued path, to know the test exercises it.
    let queued = 0;
    const sendQueued = ws.sendQueued;
    ws.sendQueued = batch => {
      queued += batch.split("\n").length / 3;
      return sendQueued(batch);
    };
    const c = await Client.auth(url);
    const raw = [];
    c.sock.on('message', d => raw.push(d.toString()));
    c.emit('go');
    await until(() => c.frames.some(m => m.event === 'end'), 3000, 'the last reply');
    // Byte for byte what the original's JSON.stringify({ event, data }) writes.
    assert.deepEqual(raw, replies.map(r => JSON.stringify(r)));
    // All went queued but the newline, the lone surrogate and the three
    // toJSONs (the Date's is one).
    assert.equal(queued, replies.length - 5);
    c.close();
  });

  test('queued sends past a full socket buffer all arrive, in order: from a handler, and from a timer', async () => {
    // 200 frames of 20 KiB: past what the socket buffer takes at once, so
    // most of them wait in the client's queue for its task to write.
    const big = i => `${i}:${'y'.repeat(20_000)}`;
    const { url, ws } = await startServer({
      // Room for all of them: nothing may be dropped for backpressure.
      serverOptions: { backpressureLimit: 16 * 1024 * 1024 },
      messageHandler: ({ clientId }) => {
        for (let i = 0; i < 200; i++) ws.sendToClient({ clientId, event: 'big', data: big(i) });
      },
    });
    const c = await Client.auth(url);
    c.emit('go');
    for (let i = 0; i < 200; i++) assert.equal((await c.next('big', 10_000)).data, big(i));
    const batch = Array.from({ length: 200 }, (_, i) => `${c.id}\nlater\n${JSON.stringify(big(i))}`).join('\n');
    await new Promise(r => setTimeout(() => r(assert.equal(ws.sendQueued(batch), 200)), 10));
    for (let i = 0; i < 200; i++) assert.equal((await c.next('later', 10_000)).data, big(i));
    c.close();
  });

  test('the native function for queued sends answers bad input with a throw, and sends nothing before the server starts', async () => {
    // Before `configure()` there is no core to send through.
    const idle = new lib.WebSocketServer({ host: '127.0.0.1', port: 0, logLevel: 'silent', authenticateFn: () => null });
    assert.equal(idle.sendQueued('someone\nhi\n1'), 0);
    const { url, ws } = await startServer({});
    const c = await Client.auth(url);
    assert.throws(() => ws.sendQueued(), /batch is required/);
    assert.throws(() => ws.sendQueued(42), /string/i);
    // Well formed: one frame for a connected client, none for an unknown one.
    assert.equal(ws.sendQueued(`${c.id}\nhi\n{"a":1}\nnobody\nhi\n1`), 1);
    assert.deepEqual(await c.next('hi'), { event: 'hi', data: { a: 1 } });
    // The text is read into a buffer kept between calls (up to 64 KiB): a
    // shorter batch after a longer one is read without the longer one's
    // tail, text of every UTF-8 width included; a batch past the buffer's
    // limit is read whole, and so is the next one.
    for (const size of [30_000, 100_000]) {
      const long = 'x'.repeat(size);
      assert.equal(ws.sendQueued(`${c.id}\nlong\n"${long}"`), 1);
      assert.equal((await c.next('long')).data, long);
      assert.equal(ws.sendQueued(`${c.id}\né😀\n"ü€😀"`), 1);
      assert.deepEqual(await c.next('é😀'), { event: 'é😀', data: 'ü€😀' });
    }
    c.close();
  });
});
