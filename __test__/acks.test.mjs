// Request/response acknowledgements (`acks: true`): a frame with a string
// `id` is answered once messageHandler settles; without the option, or
// without an id, the wire stays the original's. Also the client SDK's
// request().
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Client, lib, startServer, stopAll, sleep } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { WebSocketClient } = require('../dist/client.js');

after(stopAll);

/** A server whose messageHandler answers per event name. */
function answering(extra = {}) {
  return startServer({
    acks: true,
    messageHandler: ({ message }) => {
      switch (message.event) {
        case 'sum':
          return message.data.a + message.data.b;
        case 'later':
          return new Promise(r => setTimeout(() => r({ ok: true, echo: message.data }), 30));
        case 'nothing':
          return undefined;
        case 'refuse':
          throw new lib.WebSocketClientError('Room is full');
        case 'crash':
          throw new Error('secret connection string in this message');
        case 'reject':
          return Promise.reject(new Error('db password leaked'));
        case 'bigint':
          return 10n;
      }
    },
    ...extra,
  });
}

describe('acks: true', () => {
  test('results, asynchronous results and null for undefined, by id', async () => {
    const { url } = await answering();
    const c = await Client.auth(url);
    c.send(JSON.stringify({ event: 'later', data: 'x', id: 'a' }));
    c.send(JSON.stringify({ event: 'sum', data: { a: 2, b: 3 }, id: 'b' }));
    c.send(JSON.stringify({ event: 'nothing', id: 'c' }));
    const acks = [await c.next('ack'), await c.next('ack'), await c.next('ack')];
    const byId = Object.fromEntries(acks.map(a => [a.data.id, a.data]));
    assert.deepEqual(byId.b, { id: 'b', result: 5 });
    assert.deepEqual(byId.a, { id: 'a', result: { ok: true, echo: 'x' } });
    assert.deepEqual(byId.c, { id: 'c', result: null });
    c.close();
  });

  test('errors: a WebSocketClientError message reaches the client, anything else is generic', async () => {
    const { url } = await answering();
    const c = await Client.auth(url);
    for (const [event, id] of [
      ['refuse', 'r1'],
      ['crash', 'r2'],
      ['reject', 'r3'],
      ['bigint', 'r4'],
    ]) {
      c.send(JSON.stringify({ event, id }));
      const ack = await c.next('ack');
      assert.equal(ack.data.id, id);
      assert.equal('result' in ack.data, false);
      assert.equal(ack.data.error, event === 'refuse' ? 'Room is full' : 'Internal error');
    }
    c.close();
  });

  test('no id, a non-string id or one over 64 characters: no ack, as without the option', async () => {
    const { url } = await answering();
    const c = await Client.auth(url);
    c.send(JSON.stringify({ event: 'sum', data: { a: 1, b: 1 } }));
    c.send(JSON.stringify({ event: 'sum', data: { a: 1, b: 1 }, id: 7 }));
    c.send(JSON.stringify({ event: 'sum', data: { a: 1, b: 1 }, id: 'x'.repeat(65) }));
    c.send(JSON.stringify({ event: 'sum', data: { a: 1, b: 1 }, id: 'x'.repeat(64) }));
    const ack = await c.next('ack');
    assert.equal(ack.data.id, 'x'.repeat(64));
    assert.ok(await c.nothing('ack', 200));
    c.close();
  });

  test('without the option a frame with an id gets no ack (the original wire)', async () => {
    const { url } = await answering({ acks: undefined });
    const c = await Client.auth(url);
    c.send(JSON.stringify({ event: 'sum', data: { a: 1, b: 1 }, id: 'q' }));
    assert.ok(await c.nothing('ack', 300));
    c.close();
  });

  test('the option is validated', () => {
    assert.throws(() => new lib.WebSocketServer({ authenticateFn: () => null, acks: 'yes' }), /acks/);
  });
});

describe('WebSocketClient.request()', () => {
  test('resolves with the result, rejects with the error, and times out', async () => {
    const { url } = await answering({ messageHandler: ({ message }) => {
      if (message.event === 'sum') return message.data.a + message.data.b;
      if (message.event === 'refuse') throw new lib.WebSocketClientError('no');
      return new Promise(() => {}); // never settles
    } });
    const c = new WebSocketClient({ url, auth: () => ({ token: 't' }), heartbeatInterval: 0 });
    await c.connect();
    const seen = [];
    c.on('ack', a => seen.push(a));
    assert.equal(await c.request('sum', { a: 20, b: 22 }), 42);
    await assert.rejects(c.request('refuse'), e => e.message === 'no');
    await assert.rejects(c.request('hang', null, { timeout: 200 }), /no answer within 200 ms/);
    await sleep(50);
    assert.deepEqual(seen, [], 'answers to requests are not dispatched as events');
    c.close();
  });
});
