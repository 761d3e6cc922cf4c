// Each option is stated once (src/options.rs); the TypeScript types, the
// runtime checks and the documented defaults are held to that one list.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { lib } from './helpers.mjs';
import { renderTable, withTable } from '../scripts/options-doc.mjs';

const require = createRequire(import.meta.url);
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { optionSchema, defaultOptions } = require('../index.js');
const schema = optionSchema();
const auth = () => ({});

/** `{a: {b: value}}` for the path `a.b`. */
function nested(p, value) {
  const keys = p.split('.');
  return keys.reduceRight((inner, k) => ({ [k]: inner }), value);
}

/** A value of the wrong type for a kind. */
const WRONG = { str: 5, opt_str: 5, strings: 'x', opt_strings: 'x', bool: 'yes', int: 'many', ms: 'soon', secs: 'soon' };

describe('options: one list', () => {
  test('the schema covers every plain option, once, with a default for each', () => {
    assert.ok(schema.length >= 25, `${schema.length} options`);
    assert.equal(new Set(schema.map(s => s.path)).size, schema.length);
    const d = defaultOptions();
    for (const s of schema) {
      assert.ok(s.field in d || s.kind.startsWith('opt_'), `${s.path}: defaultOptions() has ${s.field}`);
      assert.ok(['str', 'opt_str', 'strings', 'opt_strings', 'bool', 'int', 'ms', 'secs'].includes(s.kind), s.kind);
    }
  });

  test('each option refuses a value of the wrong type, naming its path', () => {
    for (const s of schema) {
      const opts = { authenticateFn: auth, ...nested(s.path, WRONG[s.kind]) };
      assert.throws(() => new lib.WebSocketServer(opts), e => e.name === 'WebSocketOptionError' && e.message.includes(s.path), s.path);
    }
  });

  test('each number refuses a value below its bound, and integers a fraction', () => {
    for (const s of schema.filter(s => ['int', 'ms', 'secs'].includes(s.kind))) {
      const below = { authenticateFn: auth, ...nested(s.path, s.min - 1) };
      assert.throws(() => new lib.WebSocketServer(below), new RegExp(s.path.replace(/\./g, '\\.')), `${s.path} below ${s.min}`);
      if (s.kind === 'int') {
        const frac = { authenticateFn: auth, ...nested(s.path, s.min + 0.5) };
        assert.throws(() => new lib.WebSocketServer(frac), /integer/, `${s.path} fraction`);
      }
    }
  });

  test('an option left out gets the default of the list, and one given reaches the native side', async () => {
    const plain = new lib.WebSocketServer({ authenticateFn: auth, host: '127.0.0.1', logLevel: 'silent', history: true });
    assert.equal(plain.getPath(), defaultOptions().path);
    // A value that differs from each default is accepted (it passes the checks of its kind).
    for (const s of schema) {
      const value = { str: '/x', opt_str: '/m', strings: ['a'], opt_strings: ['a*'], bool: !defaultOptions()[s.field], int: s.min + 1, ms: s.min + 1, secs: s.min + 1 }[s.kind];
      const opts = { authenticateFn: auth, logLevel: 'silent', ...nested(s.path, value) };
      assert.doesNotThrow(() => new lib.WebSocketServer(opts), s.path);
    }
  });

  test('the TypeScript option types agree with the list', () => {
    const ts = require('typescript');
    const file = path.join(root, 'ts', 'types.ts');
    const program = ts.createProgram([file], { strict: true, target: ts.ScriptTarget.ES2022, moduleResolution: ts.ModuleResolutionKind.Node10 });
    const checker = program.getTypeChecker();
    const source = program.getSourceFile(file);
    let options;
    ts.forEachChild(source, n => {
      if (ts.isInterfaceDeclaration(n) && n.name.text === 'IWebSocketServerOptions') options = checker.getTypeAtLocation(n);
    });
    assert.ok(options, 'IWebSocketServerOptions found');
    const expected = { str: 'string', opt_str: 'string', strings: 'string[]', opt_strings: 'string[]', bool: 'boolean', int: 'number', ms: 'number', secs: 'number' };
    for (const s of schema) {
      let type = options;
      for (const key of s.path.split('.')) {
        // `history?: boolean | {…}`: the object member holds the fields.
        const candidates = type.isUnion() ? type.types : [type];
        const holder = candidates.find(t => t.getProperty(key));
        assert.ok(holder, `${s.path}: no property ${key} in ${checker.typeToString(type)}`);
        type = checker.getNonNullableType(checker.getTypeOfSymbol(holder.getProperty(key)));
      }
      const shown = checker.typeToString(type).replace(/^readonly /, '');
      const ok = s.kind === 'bool' ? /^(boolean|true|false)$/.test(shown) : shown === expected[s.kind];
      assert.ok(ok, `${s.path}: the TypeScript type is ${shown}, the list says ${s.kind}`);
    }
  });

  test("docs/API.md's table of options is the one generated from the list", () => {
    const text = fs.readFileSync(path.join(root, 'docs', 'API.md'), 'utf8');
    assert.equal(withTable(text, renderTable()), text, 'run `npm run docs:options`');
    for (const s of schema) assert.ok(text.includes(`| \`${s.path}\` |`), s.path);
  });
});
