// Real redis-server processes for the tests: one per test file (or the one
// named by REDIS_URL), and clusters of three masters.
import './ignis-logs.mjs';
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sleep, needs, hasCommand } from './helpers.mjs';

/** Set (to the reason) when redis-server is not installed: pass as `{ skip }`. */
export const noRedis = needs('redis-server', hasCommand('redis-server') && hasCommand('redis-cli'), 'Debian/Ubuntu: apt-get install redis-server');
/** Set when openssl (to make test certificates) is not installed. */
export const noOpenssl = needs('openssl', hasCommand('openssl'), 'Debian/Ubuntu: apt-get install openssl');

export async function freePort() {
  const srv = net.createServer();
  await new Promise(r => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise(r => srv.close(r));
  return port;
}

async function waitForPort(port, timeout = 5000) {
  const end = performance.now() + timeout;
  for (;;) {
    const ok = await new Promise(resolve => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (performance.now() > end) throw new Error(`redis-server on ${port} did not start`);
    await sleep(20);
  }
}

/** A redis-server of our own on a free port; `stop()` kills it, `start()` brings it back on the same port. */
export async function startRedis(extraArgs = [], dir) {
  const port = await freePort();
  const r = {
    port,
    url: `redis://127.0.0.1:${port}`,
    proc: null,
    async start() {
      const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extraArgs];
      r.proc = spawn('redis-server', args, { stdio: 'ignore', cwd: dir });
      await waitForPort(port);
    },
    async stop() {
      if (!r.proc) return;
      const p = r.proc;
      r.proc = null;
      const gone = new Promise(res => p.once('exit', res));
      p.kill('SIGKILL');
      await gone;
    },
    cli(...args) {
      return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).trim();
    },
    /** How many clients are connected, the one asking not counted. */
    connections() {
      return r.cli('CLIENT', 'LIST').split('\n').filter(l => l && !/cmd=client\|list/.test(l)).length;
    },
  };
  await r.start();
  return r;
}

/** REDIS_URL when set, otherwise a fresh redis-server. */
export async function sharedRedis() {
  if (process.env.REDIS_URL) {
    const u = new URL(process.env.REDIS_URL);
    const port = Number(u.port || 6379);
    return {
      url: process.env.REDIS_URL,
      port,
      async stop() {},
      cli: (...args) => execFileSync('redis-cli', ['-u', process.env.REDIS_URL, ...args], { encoding: 'utf8' }).trim(),
    };
  }
  return startRedis();
}

/** Three masters, no replicas: `redis-cli --cluster create`. */
export async function startCluster() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-ws-cluster-'));
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    const nodeDir = path.join(dir, String(i));
    fs.mkdirSync(nodeDir);
    nodes.push(await startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'], nodeDir));
  }
  execFileSync('redis-cli', ['--cluster', 'create', ...nodes.map(n => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
    stdio: 'ignore',
  });
  const end = performance.now() + 10_000;
  while (!nodes.every(n => n.cli('cluster', 'info').includes('cluster_state:ok'))) {
    if (performance.now() > end) throw new Error('cluster did not become ok');
    await sleep(100);
  }
  return {
    nodes,
    seeds: nodes.map(n => ({ host: '127.0.0.1', port: n.port })),
    async stop() {
      await Promise.all(nodes.map(n => n.stop()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A CA and a server certificate for 127.0.0.1, made with openssl. */
export function makeCertificates() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-ws-tls-'));
  const run = args => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=test-ca']);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf']);
  const read = f => fs.readFileSync(path.join(dir, f), 'utf8');
  return { dir, ca: read('ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key'), caFile: path.join(dir, 'ca.pem') };
}

/** redis-server speaking only TLS on its port. */
export async function startTlsRedis(certs) {
  const port = await freePort();
  const proc = spawn(
    'redis-server',
    ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      '--tls-cert-file', certs.cert, '--tls-key-file', certs.key, '--tls-ca-cert-file', certs.caFile, '--tls-auth-clients', 'no'],
    { stdio: 'ignore' },
  );
  await waitForPort(port);
  return {
    port,
    async stop() {
      const gone = new Promise(r => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    },
  };
}
