// The code's shape: no import circle among the Rust modules (src/), the
// TypeScript files (ts/) or the repository's scripts, read from the source.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');

function walk(dir, ext) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap(e => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p, ext) : p.endsWith(ext) ? [p] : [];
  });
}

/** Every cycle (as a list of files) of `graph` (file → Set of files). */
function cycles(graph) {
  const found = [];
  const index = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  let n = 0;
  const visit = v => {
    index.set(v, n);
    low.set(v, n++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), index.get(w)));
    }
    if (low.get(v) === index.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1) found.push(comp.map(f => path.relative(root, f)).sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

/** Rust: a file depends on the module files its `crate::…`, `super::…` and `use crate::x::{…}` paths name (tests excluded). */
export function rustGraph(src) {
  const files = walk(src, '.rs');
  const modOf = f => {
    const parts = path.relative(src, f).replace(/\.rs$/, '').split(path.sep);
    if (['mod', 'lib'].includes(parts[parts.length - 1])) parts.pop();
    return parts;
  };
  const byMod = new Map(files.map(f => [modOf(f).join('::'), f]));
  const resolve = parts => {
    for (let i = parts.length; i > 0; i--) {
      const f = byMod.get(parts.slice(0, i).join('::'));
      if (f) return f;
    }
    return null;
  };
  const graph = new Map();
  for (const f of files) {
    const code = fs.readFileSync(f, 'utf8').split('#[cfg(test)]')[0];
    const deps = new Set();
    const add = parts => {
      const t = resolve(parts);
      if (t && t !== f) deps.add(t);
    };
    for (const m of code.matchAll(/crate::((?:\w+::)*\w+)/g)) add(m[1].split('::'));
    for (const m of code.matchAll(/use crate::([\w:]+)::\{([^}]*)\}/g)) {
      for (const item of m[2].split(',')) {
        const name = item.trim().split(/\s+as\s+/)[0];
        if (name && name !== 'self') add([...m[1].split('::'), ...name.split('::')]);
      }
    }
    const parent = modOf(f).slice(0, f.endsWith('mod.rs') ? -1 : -1);
    for (const m of code.matchAll(/\bsuper::(\w+)/g)) add([...parent, m[1]]);
    graph.set(f, deps);
  }
  return graph;
}

/**
 * TypeScript and JavaScript: relative imports (static, dynamic and
 * `import('…')` types) between the files under `dirs`.
 */
export function jsGraph(dirs) {
  const files = dirs.flatMap(d => ['.ts', '.mjs', '.js'].flatMap(ext => walk(d, ext))).filter(f => !f.includes('node_modules') && !f.endsWith('.d.ts'));
  const known = new Set(files);
  const graph = new Map();
  for (const f of files) {
    const code = fs.readFileSync(f, 'utf8');
    const deps = new Set();
    for (const m of code.matchAll(/(?:from|import\(|require\()\s*['"](\.{1,2}\/[\w./-]+)['"]/g)) {
      const base = path.resolve(path.dirname(f), m[1]);
      const t = [base, base.replace(/\.js$/, '.ts'), base + '.ts', base + '.mjs', base + '.js'].find(c => known.has(c));
      if (t && t !== f) deps.add(t);
    }
    graph.set(f, deps);
  }
  return graph;
}

describe('structure', () => {
  test('no import circle among the Rust modules', () => {
    const graph = rustGraph(path.join(root, 'src'));
    assert.ok(graph.size > 20, 'the modules were read');
    assert.ok([...graph.values()].some(d => d.size > 3), 'their imports were read');
    assert.deepEqual(cycles(graph), []);
  });

  test("no import circle among the TypeScript files and the repository's scripts", () => {
    const dirs = ['ts', '__test__', 'bench', 'scripts', 'demo'].map(d => path.join(root, d)).filter(d => fs.existsSync(d));
    const graph = jsGraph(dirs);
    assert.ok(graph.get(path.join(root, 'ts', 'index.ts')).size > 3, 'the imports were read');
    assert.ok(graph.get(path.join(root, '__test__', 'storm.mjs')).size > 2, 'the imports were read');
    assert.deepEqual(cycles(graph), []);
  });

  test('a circle is found when there is one', () => {
    const a = path.join(root, 'a');
    const b = path.join(root, 'b');
    assert.deepEqual(cycles(new Map([[a, new Set([b])], [b, new Set([a])]])), [['a', 'b']]);
  });
});
