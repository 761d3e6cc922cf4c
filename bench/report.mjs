// Turns bench/results.json into bench/RESULTS.md and bench/results.svg.
// Medians of the repeated runs; ratios against the original helper on Bun.
//
//   node bench/report.mjs        (re-renders from bench/results.json)
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = 'original';

/** Columns per scenario: [key, label, better ('lower' | 'higher' | null for no ratio), digits]. */
const COLUMNS = {
  a: [
    ['rss_per_conn_kib', 'RSS per connection (KiB)', 'lower', 2],
    ['connect_auth_ms', 'connect + auth (ms)', 'lower', 0],
    ['server_cpu_s', 'server CPU (s)', 'lower', 2],
    ['loadgen_cpu_s', 'loadgen CPU (s)', null, 2],
  ],
  b: [
    ['deliveries_per_s', 'deliveries/s', 'higher', 0],
    ['time_to_last_ms', 'time to last delivery (ms)', 'lower', 0],
    ['server_cpu_s', 'server CPU (s)', 'lower', 2],
    ['js_us_per_delivery', 'JS thread µs per delivery', 'lower', 3],
    ['other_us_per_delivery', 'other threads µs per delivery', 'lower', 3],
    ['delivered_pct', 'delivered (%)', null, 1],
    ['loadgen_cpu_s', 'loadgen CPU (s)', null, 2],
  ],
  c: [
    ['p50_ms', 'p50 (ms)', 'lower', 2],
    ['p99_ms', 'p99 (ms)', 'lower', 2],
    ['max_ms', 'max (ms)', 'lower', 1],
    ['server_cpu_s', 'server CPU (s)', 'lower', 2],
    ['js_us_per_delivery', 'JS thread µs per delivery', 'lower', 3],
    ['other_us_per_delivery', 'other threads µs per delivery', 'lower', 3],
    ['delivered_pct', 'delivered (%)', null, 1],
    ['loadgen_cpu_s', 'loadgen CPU (s)', null, 2],
  ],
  d: [
    ['round_trips_per_s', 'round trips/s', 'higher', 0],
    ['p50_ms', 'p50 (ms)', 'lower', 3],
    ['p99_ms', 'p99 (ms)', 'lower', 3],
    ['server_cpu_s', 'server CPU (s)', 'lower', 2],
    ['cpu_us_per_round_trip', 'server CPU per round trip (µs)', 'lower', 2],
    ['js_us_per_round_trip', 'of which the JS thread (µs)', 'lower', 2],
    ['other_us_per_round_trip', 'of which other threads (µs)', 'lower', 2],
    ['js_bound_round_trips_per_s', 'derived: JS-bound ceiling on many cores (round trips/s)', 'higher', 0],
    ['loadgen_cpu_s', 'loadgen CPU (s)', null, 2],
  ],
  e: [
    ['cross_p50_ms', 'cross-instance p50 (ms)', 'lower', 2],
    ['cross_p99_ms', 'cross-instance p99 (ms)', 'lower', 2],
    ['cross_max_ms', 'cross-instance max (ms)', 'lower', 1],
    ['local_p99_ms', 'same-instance p99 (ms)', 'lower', 2],
    ['delivered_pct', 'delivered (%)', null, 1],
  ],
};

// (bz) and (cz) are (b) and (c) with permessage-deflate: bytes on the wire too.
const WIRE = ['wire_bytes_per_delivery', 'bytes on the wire per delivery', 'lower', 0];
COLUMNS.az = COLUMNS.a;
COLUMNS.bz = [...COLUMNS.b.slice(0, 3), WIRE, ...COLUMNS.b.slice(3)];
COLUMNS.cz = [...COLUMNS.c.slice(0, 4), WIRE, ...COLUMNS.c.slice(4)];
// (h) is the burst of (b) with history on; the one-core scenarios have the
// columns of the scenario they pin.
COLUMNS.h = COLUMNS.b;
// (r) is the closed loop of (d) with a realistic handler.
COLUMNS.r = COLUMNS.d;
// (l) is the closed loop of (d) with one client, whose JS thread waits for
// every message: no JS-bound ceiling to derive from it.
COLUMNS.l = COLUMNS.d.filter(([key]) => key !== 'js_bound_round_trips_per_s');
for (const key of ['b', 'h', 'c', 'd', 'r']) COLUMNS[`p${key}`] = COLUMNS[key];

/** The chart: one headline metric per row group. */
const HEADLINES = [
  ['a', 'rss_per_conn_kib', '(a) memory per connection'],
  ['a', 'connect_auth_ms', '(a) connect + auth time'],
  ['b', 'deliveries_per_s', '(b) burst deliveries/s'],
  ['b', 'server_cpu_s', '(b) server CPU for the burst'],
  ['h', 'deliveries_per_s', '(h) burst deliveries/s, history on'],
  ['bz', 'deliveries_per_s', '(bz) burst deliveries/s, compressed'],
  ['bz', 'wire_bytes_per_delivery', '(bz) bytes on the wire per delivery'],
  ['c', 'p99_ms', '(c) steady fan-out p99'],
  ['d', 'round_trips_per_s', '(d) round trips/s'],
  ['d', 'p99_ms', '(d) round-trip p99'],
  ['d', 'cpu_us_per_round_trip', '(d) server CPU per round trip'],
  ['r', 'round_trips_per_s', '(r) realistic handler round trips/s'],
  ['pd', 'round_trips_per_s', '(pd) round trips/s, server on one core'],
  ['e', 'cross_p99_ms', '(e) cross-instance p99'],
];

export function median(values) {
  const v = values.filter(x => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return undefined;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function better(col) {
  for (const cols of Object.values(COLUMNS)) for (const c of cols) if (c[0] === col) return c[2];
}

/** Per scenario and contender: the median of each metric (undefined when every run failed). */
function medians(data) {
  const out = {};
  for (const [sc, byContender] of Object.entries(data.runs)) {
    out[sc] = {};
    for (const [id, runs] of Object.entries(byContender)) {
      const ok = runs.filter(r => !r.error);
      out[sc][id] = { n: ok.length, errors: runs.filter(r => r.error).map(r => r.error) };
      for (const [key] of COLUMNS[sc] ?? []) out[sc][id][key] = median(ok.map(r => r[key]));
    }
  }
  return out;
}

/** How many times better than the original (>1 is better), per the metric's direction. */
function gain(m, sc, id, key, base = BASE) {
  const ours = m[sc]?.[id]?.[key];
  const theirs = m[sc]?.[base]?.[key];
  if (ours === undefined || theirs === undefined || ours <= 0 || theirs <= 0) return undefined;
  return better(key) === 'higher' ? ours / theirs : theirs / ours;
}

const fmt = (v, d) => (v === undefined ? '—' : v.toLocaleString('en', { minimumFractionDigits: d, maximumFractionDigits: d }));
const times = g => (g === undefined ? '—' : `${g >= 10 ? g.toFixed(0) : g >= 0.1 ? g.toFixed(2) : g.toPrecision(2)}×`);

function targets(m) {
  const rows = [];
  const ours = [
    ['native-node', 'Node'],
    ['native-bun', 'Bun'],
  ];
  const add = (name, check) => {
    const cells = ours.map(([id]) => check(id));
    const met = cells.every(c => c.ok === true);
    rows.push(`| ${name} | ${cells.map(c => c.text).join(' | ')} | ${met ? '**met**' : '**not met**'} |`);
  };
  const v = (sc, id, key) => m[sc]?.[id]?.[key];
  const cmp = (ok, text) => ({ ok: ok === undefined ? false : ok, text: ok === undefined ? 'not measured' : text });
  // "ours vs the original's" for one figure of a scenario.
  const vs = (sc, key, digits, unit) => id => `${fmt(v(sc, id, key), digits)} vs ${fmt(v(sc, BASE, key), digits)} ${unit}`;
  add('(a) RSS per connection ≤ the original’s', id => {
    const a = v('a', id, 'rss_per_conn_kib');
    const o = v('a', BASE, 'rss_per_conn_kib');
    return cmp(a !== undefined && o !== undefined ? a <= o : undefined, vs('a', 'rss_per_conn_kib', 2, 'KiB')(id));
  });
  add('(a) connect + auth ≥ 1.5× faster', id => {
    const g = gain(m, 'a', id, 'connect_auth_ms');
    return cmp(g !== undefined ? g >= 1.5 : undefined, times(g));
  });
  add('(b) deliveries/s ≥ 1.5× the original’s', id => {
    const g = gain(m, 'b', id, 'deliveries_per_s');
    return cmp(g !== undefined ? g >= 1.5 : undefined, times(g));
  });
  add('(b) ≥ 1.5× less server CPU', id => {
    const g = gain(m, 'b', id, 'server_cpu_s');
    return cmp(g !== undefined ? g >= 1.5 : undefined, `${times(g)} less`);
  });
  add('(h) history on: deliveries/s ≥ 1.5× the original’s (b)', id => {
    const g = gain(m, 'h', id, 'deliveries_per_s');
    return cmp(g !== undefined ? g >= 1.5 : undefined, times(g));
  });
  add('(h) ≥ 1.5× less server CPU', id => {
    const g = gain(m, 'h', id, 'server_cpu_s');
    return cmp(g !== undefined ? g >= 1.5 : undefined, `${times(g)} less`);
  });
  const c99 = vs('c', 'p99_ms', 2, 'ms');
  add('(c) p99 ≤ the original’s', id => {
    const g = gain(m, 'c', id, 'p99_ms');
    return cmp(g !== undefined ? g >= 1 : undefined, c99(id));
  });
  add('(c) stretch: p99 ≤ half the original’s', id => {
    const g = gain(m, 'c', id, 'p99_ms');
    return cmp(g !== undefined ? g >= 2 : undefined, c99(id));
  });
  add('(c) server CPU ≤ the original’s', id => {
    const g = gain(m, 'c', id, 'server_cpu_s');
    return cmp(g !== undefined ? g >= 1 : undefined, vs('c', 'server_cpu_s', 2, 's')(id));
  });
  // The closed loops, (d) and (r): rate and CPU per round trip.
  const closedLoop = sc => {
    add(`(${sc}) round trips/s ≥ the original’s`, id => {
      const g = gain(m, sc, id, 'round_trips_per_s');
      return cmp(g !== undefined ? g >= 1 : undefined, times(g));
    });
    add(`(${sc}) server CPU per round trip ≤ the original’s`, id => {
      const g = gain(m, sc, id, 'cpu_us_per_round_trip');
      return cmp(g !== undefined ? g >= 1 : undefined, vs(sc, 'cpu_us_per_round_trip', 2, 'µs')(id));
    });
  };
  closedLoop('d');
  add('(d) p99 ≤ the original’s', id => {
    const g = gain(m, 'd', id, 'p99_ms');
    return cmp(g !== undefined ? g >= 1 : undefined, vs('d', 'p99_ms', 3, 'ms')(id));
  });
  closedLoop('r');
  add('(e) cross-instance p99 ≤ the original’s', id => {
    const g = gain(m, 'e', id, 'cross_p99_ms');
    return cmp(g !== undefined ? g >= 1 : undefined, vs('e', 'cross_p99_ms', 2, 'ms')(id));
  });
  for (const [peer, label] of [
    ['ws', '`ws` + ioredis'],
    ['socketio', 'Socket.IO'],
  ]) {
    add(`(b) deliveries/s ≥ 3× ${label}`, id => {
      const g = gain(m, 'b', id, 'deliveries_per_s', peer);
      return cmp(g !== undefined ? g >= 3 : undefined, times(g));
    });
    add(`(d) round trips/s ≥ 3× ${label}`, id => {
      const g = gain(m, 'd', id, 'round_trips_per_s', peer);
      return cmp(g !== undefined ? g >= 3 : undefined, times(g));
    });
  }
  return rows;
}

function chart(data, m) {
  const contenders = data.contenders.filter(c => c.id !== BASE);
  const colors = ['#d9480f', '#f08c00', '#1971c2', '#2f9e44', '#7048e8', '#868e96'];
  const headlines = HEADLINES.filter(([sc]) => m[sc]);
  const bar = 13;
  const groupH = contenders.length * (bar + 3) + 26;
  const left = 250;
  const plotW = 560;
  const top = 64;
  const height = top + headlines.length * groupH + 40;
  const width = left + plotW + 40;
  // log2 scale from 1/8× to 64×, 1× at the original.
  const lo = -3;
  const hi = 6;
  const x = g => left + ((Math.min(hi, Math.max(lo, Math.log2(g))) - lo) / (hi - lo)) * plotW;
  const esc = s => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">\n`;
  out += `<rect width="100%" height="100%" fill="#fff"/>\n`;
  out += `<text x="8" y="20" font-size="15" font-weight="bold">Times better than the original Ignis helper on Bun (log scale; right of 1× is better)</text>\n`;
  for (let k = lo; k <= hi; k++) {
    const gx = x(2 ** k);
    out += `<line x1="${gx}" y1="${top - 10}" x2="${gx}" y2="${height - 30}" stroke="${k === 0 ? '#000' : '#ddd'}"/>`;
    out += `<text x="${gx}" y="${top - 14}" text-anchor="middle" fill="#555">${k < 0 ? `1/${2 ** -k}` : 2 ** k}×</text>\n`;
  }
  headlines.forEach(([sc, key, title], gi) => {
    const gy = top + gi * groupH;
    out += `<text x="8" y="${gy + 12}" font-weight="bold">${esc(title)}</text>\n`;
    contenders.forEach((c, ci) => {
      const y = gy + 18 + ci * (bar + 3);
      const g = gain(m, sc, c.id, key);
      out += `<text x="${left - 6}" y="${y + bar - 3}" text-anchor="end" fill="#333">${esc(c.label)}</text>`;
      if (g === undefined) {
        out += `<text x="${x(1) + 4}" y="${y + bar - 3}" fill="#999">not measured</text>\n`;
        return;
      }
      const x0 = Math.min(x(1), x(g));
      out += `<rect x="${x0}" y="${y}" width="${Math.max(1, Math.abs(x(g) - x(1)))}" height="${bar}" fill="${colors[ci % colors.length]}"/>`;
      out += `<text x="${Math.max(x(1), x(g)) + 4}" y="${y + bar - 3}" fill="#000">${times(g)}</text>\n`;
    });
  });
  out += `<text x="8" y="${height - 10}" fill="#555">${esc(`${data.machine.cpu}; Node ${data.machine.node}, Bun ${data.machine.bun}; medians of ${data.machine.repeat} runs, ${data.machine.date.slice(0, 10)}`)}</text>\n`;
  return out + '</svg>\n';
}

export function render(data) {
  const m = medians(data);
  const mc = data.machine;
  let md = `# Benchmark results\n\n`;
  md += `Generated by \`npm run bench\` (bench/run.mjs) on ${mc.date.slice(0, 16).replace('T', ' ')} UTC. Every contender ran in the same\n`;
  md += `run on the same machine, one after another, ${mc.repeat} time(s); each figure is the median of those runs, and\n`;
  md += `each ratio compares medians of the same run against the original Ignis helper on Bun. The machine is shared\n`;
  md += `and noisy, so absolute figures move between runs; the ratios are what count. The load generator\n`;
  md += `(bench/loadgen, Rust) runs on the same cores and reports its own CPU next to the server's.\n\n`;
  md += `- Machine: ${mc.cpu}, ${mc.memory_gib} GiB, Linux ${mc.kernel}\n`;
  md += `- Runtimes: Node ${mc.node}, Bun ${mc.bun}, ${mc.redis}\n`;
  md += `- Packages: ${Object.entries(mc.packages).map(([k, v]) => `${k} ${v}`).join(', ')}\n`;
  for (const m of mc.merged ?? []) {
    const keys = m.split(' ')[0].split(',');
    const who = [...new Set(keys.flatMap(k => Object.keys(data.runs[k] ?? {})))].join(', ');
    md += `- Scenario ${m} (${who}; same repeat count); the rest as above\n`;
  }
  md += '\n';
  md += `![Times better than the original, per scenario](results.svg)\n\n`;
  md += `## Targets\n\n| Target | ours on Node | ours on Bun | |\n|---|---|---|---|\n${targets(m).join('\n')}\n\n`;
  md += `Missed targets are analysed, with the plan, in docs/PERFORMANCE.md.\n\n`;
  for (const [sc, title] of Object.entries(data.scenarios)) {
    const cols = COLUMNS[sc];
    md += `## ${title}\n\n| Contender | ${cols.map(c => c[1] + (c[2] ? ' | vs original' : '')).join(' | ')} |\n`;
    md += `|---|${cols.map(c => (c[2] ? '---:|---:' : '---:')).join('|')}|\n`;
    for (const c of data.contenders) {
      const r = m[sc]?.[c.id];
      if (!r) continue;
      if (r.n === 0) {
        md += `| ${c.label} | failed: ${(r.errors[0] ?? '').replace(/\|/g, '/').replace(/\n/g, ' ')} |\n`;
        continue;
      }
      md += `| ${c.label} | ${cols
        .map(([key, , dir, d]) => {
          const cell = fmt(r[key], d);
          if (!dir) return cell;
          return `${cell} | ${c.id === BASE ? '1×' : times(gain(m, sc, c.id, key))}`;
        })
        .join(' | ')} |\n`;
    }
    const failures = Object.entries(m[sc] ?? {}).filter(([, r]) => r.errors.length && r.n > 0);
    for (const [id, r] of failures) md += `\n${id}: ${r.errors.length} of ${r.errors.length + r.n} runs failed (${r.errors[0]}).\n`;
    md += `\n"vs original": how many times better (higher for rates, lower for times, memory and CPU).\n\n`;
  }
  return { markdown: md, svg: chart(data, m) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const data = JSON.parse(fs.readFileSync(path.join(here, 'results.json'), 'utf8'));
  const { markdown, svg } = render(data);
  fs.writeFileSync(path.join(here, 'RESULTS.md'), markdown);
  fs.writeFileSync(path.join(here, 'results.svg'), svg);
  console.log(markdown);
}
