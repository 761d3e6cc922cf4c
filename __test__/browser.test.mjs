// Browser end to end, in Debian's Chromium driven by playwright-core: the
// demo page in two tabs chatting through the server, and an encrypted
// session decrypted in the page by the client SDK with WebCrypto.
// Runs under Node and Bun: the demo serves its page through attach() on
// Node and through the `fetch` option on Bun.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, stopAll, needs } from './helpers.mjs';
import { serverEncryption } from './crypto-helpers.mjs';
import { startInstance } from '../demo/server.mjs';
import { startRedis, noRedis } from './redis-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const noChromium = needs('Chromium', fs.existsSync(CHROMIUM), 'Debian/Ubuntu: apt-get install chromium, or set CHROMIUM_PATH');
let browser;
const cleanups = [];

before(async () => {
  if (noChromium) return;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await Promise.all(cleanups.map(f => f()));
  await stopAll();
});

async function joinAs(page, base, name, room = 'lobby') {
  await page.goto(base);
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join button');
  await page.waitForSelector('#app:not([hidden])');
}

describe('demo in Chromium', { skip: noChromium }, () => {
  /**
   * Two pages chat; one goes offline while the other writes, and when it is
   * back it shows what it missed, marked recovered. The online lists come
   * from getPresence.
   */
  async function chatAndRecover(adaBase, bobBase, room, instances) {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 640 } });
    const ada = await ctx.newPage();
    const bob = await ctx.newPage();
    await joinAs(ada, adaBase, 'ada', room);
    await joinAs(bob, bobBase, 'bob', room);
    for (const p of [ada, bob]) {
      await p.waitForSelector(`#online li[data-name="ada"]:has-text("${instances[0]}")`);
      await p.waitForSelector(`#online li[data-name="bob"]:has-text("${instances[1]}")`);
    }
    await ada.fill('#text', 'hello bob');
    await ada.press('#text', 'Enter');
    await bob.waitForSelector('#messages li:has-text("hello bob")');
    await bob.fill('#text', 'hi ada');
    await bob.press('#text', 'Enter');
    await ada.waitForSelector('#messages li:has-text("hi ada")');
    assert.match(await ada.textContent('#status'), /connected as ada to instance 1/);

    await ada.click('#offline');
    await ada.waitForSelector('#status:has-text("offline")');
    await bob.waitForSelector('#online li[data-name="ada"]', { state: 'detached' });
    for (const text of ['while you were away 1', 'while you were away 2', 'while you were away 3']) {
      await bob.fill('#text', text);
      await bob.press('#text', 'Enter');
      await bob.waitForSelector(`#messages li:has-text("${text}")`);
    }
    await ada.waitForTimeout(500);
    assert.equal(await ada.locator('#messages li:has-text("while you were away")').count(), 0, 'nothing while offline');
    await ada.click('#offline');
    await ada.waitForSelector('#messages li.system:has-text("Back online: 3 missed messages recovered")');
    const recovered = await ada.locator('#messages li.recovered').allTextContents();
    assert.equal(recovered.length, 3);
    assert.ok(recovered.every((t, i) => t.includes(`while you were away ${i + 1}`)), recovered.join(' | '));
    assert.equal(await ada.locator('#messages li:has-text("hi ada")').count(), 1, 'nothing twice');
    await bob.waitForSelector('#online li[data-name="ada"]');
    // The README's picture is refreshed only on request, so a test run leaves
    // the working tree as it found it.
    if (process.env.UPDATE_DOCS_SCREENSHOT) await ada.screenshot({ path: path.join(here, '..', 'docs', 'demo.png') });
    await bob.close();
    await ada.waitForSelector('#messages li:has-text("bob left")');
    await ada.waitForSelector('#online li[data-name="bob"]', { state: 'detached' });
    await ctx.close();
  }

  test('two pages chat, see each other online; a page back from offline shows what it missed, marked recovered', async () => {
    const demo = await startInstance(0, 0, { host: '127.0.0.1', logLevel: 'silent' });
    cleanups.push(() => demo.stop());
    const base = `http://127.0.0.1:${demo.port}/`;
    await chatAndRecover(base, base, 'lobby', ['instance 1', 'instance 1']);
  });

  test('the demo runs over compressed connections: Chromium negotiates permessage-deflate, both directions are compressed', async () => {
    const demo = await startInstance(0, 0, { host: '127.0.0.1', logLevel: 'silent' });
    cleanups.push(() => demo.stop());
    const page = await browser.newPage();
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    const answers = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', e => answers.push(e.response.headers['Sec-WebSocket-Extensions'] ?? e.response.headers['sec-websocket-extensions']));
    const before = demo.ws.stats();
    await joinAs(page, `http://127.0.0.1:${demo.port}/`, 'zed', 'zipped');
    const text = 'a long line that repeats itself, '.repeat(8);
    await page.fill('#text', text);
    await page.press('#text', 'Enter');
    await page.waitForSelector(`#messages li:has-text("${text.trim()}")`);
    assert.deepEqual(answers, ['permessage-deflate; server_no_context_takeover; client_no_context_takeover']);
    const after = demo.ws.stats();
    assert.ok(after.inflatedMessages > before.inflatedMessages, 'Chromium sent compressed messages');
    assert.ok(after.deflateCompressed > before.deflateCompressed, 'the chat line went back compressed');
    await page.close();
  });

  test('two instances on Redis: online lists show every instance, messages cross, a page recovers what was sent on the other instance', { skip: noRedis }, async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const one = await startInstance(0, 0, { host: '127.0.0.1', logLevel: 'silent', redis: redis.url });
    const two = await startInstance(1, 0, { host: '127.0.0.1', logLevel: 'silent', redis: redis.url });
    cleanups.push(() => one.stop(), () => two.stop());
    await chatAndRecover(`http://127.0.0.1:${one.port}/`, `http://127.0.0.1:${two.port}/`, 'ops', [
      `instance 1 (:${one.port})`,
      `instance 2 (:${two.port})`,
    ]);
  });

  test('an encrypted session decrypts in the page (ECDH P-256 / HKDF / AES-256-GCM)', async () => {
    const { ws } = await startServer({ requireEncryption: true, ...serverEncryption() });
    const page = http.createServer((req, res) => {
      if (req.url === '/client.js') {
        res.writeHead(200, { 'content-type': 'text/javascript' });
        fs.createReadStream(path.join(here, '..', 'dist', 'browser', 'client.js')).pipe(res);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><script type="module">
        import { WebSocketClient } from '/client.js';
        const c = new WebSocketClient({ url: 'ws://127.0.0.1:${ws.port}/ws', auth: () => ({ token: 'browser' }) });
        window.received = [];
        c.on('secret', d => window.received.push(d));
        window.session = await c.connect();
      </script>`);
    });
    await new Promise(r => page.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise(r => page.close(r)));
    const tab = await browser.newPage();
    const wire = [];
    tab.on('websocket', sock => sock.on('framereceived', f => wire.push(String(f.payload))));
    await tab.goto(`http://127.0.0.1:${page.address().port}/`);
    await tab.waitForFunction(() => window.session?.id);
    const session = await tab.evaluate(() => window.session);
    assert.ok(session.serverPublicKey && session.salt, 'connected carries the server key in plain JSON');
    ws.sendToClient({ clientId: session.id, event: 'secret', data: { card: '4242' } });
    await tab.waitForFunction(() => window.received.length === 1);
    assert.deepEqual(await tab.evaluate(() => window.received[0]), { card: '4242' });
    const onWire = wire.map(w => JSON.parse(w)).filter(m => m.event !== 'connected');
    assert.ok(onWire.length >= 1 && onWire.every(m => m.event === 'encrypted' && m.data.iv && m.data.ct), 'only ciphertext on the wire');
    assert.ok(!wire.some(w => w.includes('4242')));
    await tab.close();
  });
});
