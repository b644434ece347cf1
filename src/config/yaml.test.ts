import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatConfigIssue } from '../errors.ts';
import {
  createAjv,
  interpolateEnv,
  isIanaTimeZone,
  readSecret,
  readYamlDocument,
  secretRefSchema,
  validateWithSchema,
} from './yaml.ts';

const read = (text: string, env: Record<string, string | undefined> = {}) => readYamlDocument('f.yaml', text, env);
const messages = (text: string, env: Record<string, string | undefined> = {}) =>
  read(text, env).issues.map(formatConfigIssue);

describe('readYamlDocument', () => {
  it('returns plain data and locates keys and values', () => {
    const doc = read('a:\n  b: 1\n  list:\n    - x: 2\n');
    expect(doc.issues).toEqual([]);
    expect(doc.value).toEqual({ a: { b: 1, list: [{ x: 2 }] } });
    expect(doc.locate(['a', 'b'])).toEqual({ line: 2, column: 6 });
    expect(doc.locate(['a', 'b'], { key: true })).toEqual({ line: 2, column: 3 });
    expect(doc.locate(['a', 'list', 0, 'x'])).toEqual({ line: 4, column: 10 });
    expect(doc.locate(['a', 'list', 0])).toEqual({ line: 4, column: 7 });
  });

  it('falls back to the nearest existing parent', () => {
    const doc = read('a:\n  b: 1\n');
    expect(doc.locate(['a', 'missing', 'deeper'])).toEqual({ line: 2, column: 3 });
    expect(doc.locate(['nope'])).toEqual({ line: 1, column: 1 });
    expect(read('').locate(['a'])).toBeUndefined();
  });

  it('reports syntax errors with line and column', () => {
    const doc = read('a: 1\nb: [1, 2\nc: 3\n');
    expect(doc.value).toBeUndefined();
    expect(doc.issues.map(formatConfigIssue)).toEqual([
      // yaml notices the unclosed flow sequence where the next key starts.
      'f.yaml:3:1: YAML syntax: Flow sequence in block collection must be sufficiently indented and end with a ]',
    ]);
    expect(messages('a: 1\n---\nb: 2\n')).toEqual([
      'f.yaml:2:1: a configuration file holds one YAML document: remove the "---" separator or split the file',
    ]);
  });

  it('refuses duplicate keys at the second one', () => {
    expect(messages('server:\n  port: 1\n  host: x\n  port: 2\n')).toEqual([
      'f.yaml:4:3: duplicate key "port" (first at line 2); a key may appear once per mapping',
    ]);
  });

  it('refuses tags: no custom, language or 1.1 types', () => {
    for (const text of ['a: !!js/function "x"\n', 'a: !!binary aGVsbG8=\n', 'a: !custom 1\n', 'a: !!set {x}\n']) {
      const issues = messages(text);
      expect(issues.length, text).toBeGreaterThan(0);
      expect(issues[0]).toMatch(/^f\.yaml:1:4: Unresolved tag: .*tags are not allowed/);
    }
  });

  it('refuses alias bombs (exponential expansion)', () => {
    const lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (const [name, prev] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e'], ['g', 'f']]) {
      lines.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    const doc = read(lines.join('\n') + '\n');
    expect(doc.value).toBeUndefined();
    expect(doc.issues).toHaveLength(1);
    expect(formatConfigIssue(doc.issues[0]!)).toMatch(/^f\.yaml:2:8: YAML aliases expand beyond the limit \(50\)/);
  });

  it('refuses absurd nesting and size without crashing', () => {
    const deep = read(`a: ${'['.repeat(5000)}${']'.repeat(5000)}\n`);
    expect(deep.value).toBeUndefined();
    expect(deep.issues[0]).toMatchObject({ line: 1, message: 'YAML nesting is too deep to read' });
    const huge = read(`a: "${'x'.repeat(1024 * 1024)}"\n`);
    expect(huge.issues.map(formatConfigIssue)).toEqual([
      'f.yaml: file has 1048582 characters; configuration files are limited to 1048576',
    ]);
  });

  it('still allows a few small aliases', () => {
    const doc = read('base: &b { timezone: UTC }\none: *b\ntwo: *b\n');
    expect(doc.issues).toEqual([]);
    expect(doc.value).toEqual({ base: { timezone: 'UTC' }, one: { timezone: 'UTC' }, two: { timezone: 'UTC' } });
  });

  it('keeps __proto__ as a plain key, never as a prototype', () => {
    const doc = read('__proto__:\n  polluted: true\n');
    expect(doc.issues).toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.getPrototypeOf(doc.value)).toBe(Object.prototype);
    expect(Object.keys(doc.value as object)).toEqual(['__proto__']);
  });
});

describe('environment interpolation', () => {
  it('substitutes set variables and defaults', () => {
    const doc = read('a: ${HOST}\nb: "x-${HOST}-${MISSING:-d}"\nc: ${EMPTY:-fallback}\nd: ${EMPTY}\n', {
      HOST: 'ehr.local',
      EMPTY: '',
    });
    expect(doc.issues).toEqual([]);
    expect(doc.value).toEqual({ a: 'ehr.local', b: 'x-ehr.local-d', c: 'fallback', d: '' });
  });

  it('reports a missing variable at the scalar', () => {
    expect(messages('server:\n  host: ${NOPE}\n')).toEqual([
      'f.yaml:2:9: environment variable NOPE is not set (or write ${NOPE:-default})',
    ]);
  });

  it('keeps $${ as a literal ${ and other $ as is', () => {
    const doc = read('a: "$${HOME} costs $5"\nb: $${X:-y}\n', { HOME: '/root' });
    expect(doc.issues).toEqual([]);
    expect(doc.value).toEqual({ a: '${HOME} costs $5', b: '${X:-y}' });
  });

  it('reports malformed references', () => {
    expect(messages('a: ${1BAD}\nb: "${OPEN"\n')).toEqual([
      'f.yaml:1:4: "${1BAD}" is not a variable reference: write ${NAME} or ${NAME:-default} (NAME: letters, digits, "_"), or $${ for a literal "${"',
      'f.yaml:2:4: unclosed "${": write ${NAME} or ${NAME:-default}, or $${ for a literal "${"',
    ]);
  });

  it('turns a plain whole reference into an integer or boolean, not a quoted one', () => {
    const doc = read(
      'port: ${MLLP_PORT:-2575}\nset: ${PORT}\nflag: ${FLAG:-true}\nquoted: "${PORT}"\nmixed: ${PORT}0\nnum: ${F}\nzero: ${Z}\n',
      { PORT: '3000', F: '1.5', Z: '007' },
    );
    expect(doc.issues).toEqual([]);
    expect(doc.value).toEqual({ port: 2575, set: 3000, flag: true, quoted: '3000', mixed: '30000', num: '1.5', zero: '007' });
  });

  it('works inside flow mappings and sequences, where { } are YAML syntax, keeping every line:column', () => {
    const text = 'server:\n  http: { host: 127.0.0.1, port: ${HTTP_PORT:-8080} }\n  list: [${A:-a}, "${B}", $${LIT}]\n  gone: { x: ${NOPE} }\n';
    const doc = readYamlDocument('f.yaml', text, { B: 'b' });
    expect(doc.value).toEqual({ server: { http: { host: '127.0.0.1', port: 8080 }, list: ['a', 'b', '${LIT}'], gone: { x: '${NOPE}' } } });
    expect(doc.issues).toEqual([expect.objectContaining({ line: 4, column: 14, message: expect.stringMatching(/NOPE is not set/) })]);
    expect(doc.locate(['server', 'http', 'port'])).toEqual({ line: 2, column: 34 });
    expect(readYamlDocument('f.yaml', 'http: { port: ${P:-1} }', { P: '2575' }).value).toEqual({ http: { port: 2575 } });
  });

  it('does not interpolate keys', () => {
    expect(read('${KEY}: 1\n', { KEY: 'k' }).value).toEqual({ '${KEY}': 1 });
  });

  it('never quotes a value in a problem', () => {
    const result = interpolateEnv('${A}${B', { A: 's3cr3t' });
    expect(result.ok).toBe(false);
    expect(JSON.stringify(result)).not.toContain('s3cr3t');
  });
});

describe('validateWithSchema', () => {
  const ajv = createAjv();
  const schema = {
    type: 'object',
    additionalProperties: false,
    required: ['name'],
    properties: {
      name: { type: 'string', pattern: '^[a-z]+$', 'x-hint': 'lower-case letters' },
      mode: { type: 'string', enum: ['accept', 'reject'], default: 'accept' },
      port: { type: 'integer', minimum: 1, maximum: 65535 },
      zone: { type: 'string', format: 'iana-timezone' },
      tls: {
        type: 'object',
        additionalProperties: false,
        required: ['cert'],
        properties: { cert: secretRefSchema, ca: secretRefSchema },
      },
    },
  } as const;
  const check = (text: string, basePath: (string | number)[] = []) => {
    const doc = read(text);
    const value = basePath.reduce<unknown>((v, k) => (v as Record<string, unknown>)[k], doc.value);
    return { value, issues: validateWithSchema(ajv, schema, value, 'f.yaml', doc.locate, basePath).map(formatConfigIssue) };
  };

  it('applies defaults', () => {
    expect(check('name: ok\n')).toEqual({ value: { name: 'ok', mode: 'accept' }, issues: [] });
  });

  it('names unknown keys at the key with the allowed ones', () => {
    expect(check('name: ok\nprot: 1\n').issues).toEqual([
      'f.yaml:2:1: unknown key "prot" (allowed: name, mode, port, zone, tls)',
    ]);
  });

  it('reports a missing key at its parent, enums, types, ranges, patterns and zones', () => {
    const text = [
      'inputs:',
      '  - mode: maybe', // 2
      '    port: "80"', // 3
      '  - name: Bad', // 4
      '    port: 70000', // 5
      '    zone: Mars/Olympus', // 6
      '    tls:', // 7
      '      ca: { env: CA }', // 8
    ].join('\n');
    const first = check(text, ['inputs', 0]).issues;
    expect(first).toEqual([
      'f.yaml:2:5: missing required key "name" in item 1 of "inputs"',
      'f.yaml:2:11: "mode" must be one of "accept", "reject" (got "maybe")',
      'f.yaml:3:11: "port" must be an integer, got a string',
    ]);
    expect(check(text, ['inputs', 1]).issues).toEqual([
      'f.yaml:4:11: "name" "Bad" is not valid: lower-case letters',
      'f.yaml:5:11: "port" must be <= 65535 (got 70000)',
      'f.yaml:6:11: "zone" "Mars/Olympus" is not an IANA time zone name (e.g. "UTC", "Europe/Paris", "America/New_York")',
      'f.yaml:7:5: missing required key "cert" in "tls"',
    ]);
  });

  it('refuses an inline secret and explains how to give one', () => {
    expect(check('name: ok\ntls:\n  cert: "-----BEGIN CERTIFICATE-----"\n').issues).toEqual([
      'f.yaml:3:9: "cert": secrets are never written inline: use { env: NAME } (an environment variable) or { file: PATH } (a file)',
    ]);
    expect(check('name: ok\ntls:\n  cert: { env: A, file: b }\n').issues).toEqual([
      'f.yaml:3:9: "cert": give exactly one of env or file',
    ]);
    expect(check('name: ok\ntls:\n  cert: { value: x }\n').issues).toEqual([
      'f.yaml:3:11: unknown key "value" in a secret reference: secrets are never written inline: use { env: NAME } (an environment variable) or { file: PATH } (a file)',
    ]);
  });
});

describe('isIanaTimeZone', () => {
  it('accepts zone names and refuses offsets and junk', () => {
    expect(isIanaTimeZone('UTC')).toBe(true);
    expect(isIanaTimeZone('Europe/Paris')).toBe(true);
    expect(isIanaTimeZone('America/Argentina/Buenos_Aires')).toBe(true);
    expect(isIanaTimeZone('Mars/Olympus')).toBe(false);
    expect(isIanaTimeZone('+02:00')).toBe(false);
    expect(isIanaTimeZone('')).toBe(false);
  });
});

describe('readSecret', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'carerelay-secret-'));
    await writeFile(path.join(dir, 'token'), 'abc123\n');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads from the environment or a file (relative to a base dir), without the trailing newline', () => {
    expect(readSecret({ env: 'TOKEN' }, { TOKEN: 'xyz' })).toBe('xyz');
    expect(readSecret({ file: 'token' }, {}, dir)).toBe('abc123');
    expect(readSecret({ file: path.join(dir, 'token') }, {})).toBe('abc123');
  });

  it('names the missing reference', () => {
    expect(() => readSecret({ env: 'TOKEN' }, {})).toThrow('secret environment variable TOKEN is not set');
    expect(() => readSecret({ file: 'nope' }, {}, dir)).toThrow(`secret file ${path.join(dir, 'nope')} cannot be read (ENOENT)`);
  });
});
