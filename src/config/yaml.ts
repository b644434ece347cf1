// Safe YAML reading, environment interpolation, secret references and schema validation
// with file:line:column issues. Shared by the connectors loader and the mappings loader
// (docs/architecture.md invariant 5; docs/reliability.md "Security defaults": YAML loaded safely,
// secrets from the environment or files only).

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import formats from 'ajv-formats';
import {
  Alias,
  LineCounter,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  parseDocument,
  visit,
  type Document,
  type Node as YamlNode,
} from 'yaml';
import type { ConfigIssue } from '../errors.ts';

export type Env = Readonly<Record<string, string | undefined>>;

/** 1-based line and column, as editors show them. */
export interface SourcePosition {
  line: number;
  column: number;
}

/** A path inside a document: map keys and sequence indexes, e.g. `['inputs', 0, 'port']`. */
export type DocPath = readonly (string | number)[];

export interface LocateOptions {
  /** For a map entry, point at its key rather than its value (unknown and missing keys). */
  key?: boolean;
}

/**
 * Position of the node at `path`; when part of the path does not exist, the position of the
 * nearest existing parent. `undefined` only for an empty document.
 */
export type Locate = (path: DocPath, options?: LocateOptions) => SourcePosition | undefined;

export interface YamlDocument {
  /** Plain JS data (objects, arrays, strings, numbers, booleans, null); `undefined` when the
   * text could not be parsed. */
  value: unknown;
  locate: Locate;
  issues: ConfigIssue[];
}

/**
 * Alias expansion budget. yaml counts each alias resolution weighted by the size of what it
 * points to, so a "billion laughs" document exceeds it after a handful of expansions while
 * a config that reuses a few small blocks stays far below.
 */
export const MAX_ALIAS_COUNT = 50;

/** A configuration file is a few KiB; far larger text is a mistake or an attack on the parser. */
export const MAX_YAML_CHARS = 1024 * 1024;

/**
 * Parses one YAML document safely: YAML 1.2 core schema only (no custom or language tags,
 * no `!!binary`/`!!set`/timestamps), string keys, duplicate keys refused, alias expansion
 * bounded. `${VAR}` / `${VAR:-default}` in string values are replaced from `env`
 * (`$${` writes a literal `${`). A plain (unquoted) value that is exactly one `${…}` and
 * yields an integer or `true`/`false` becomes that number or boolean, so `port:
 * ${MLLP_PORT:-2575}` is the number 2575; a quoted one stays a string. References work in flow
 * collections too (`http: { host: 127.0.0.1, port: ${HTTP_PORT:-8080} }`): see maskReferences.
 */
export function readYamlDocument(file: string, text: string, env: Env): YamlDocument {
  if (text.length > MAX_YAML_CHARS) {
    return {
      value: undefined,
      locate: () => undefined,
      issues: [{ file, message: `file has ${text.length} characters; configuration files are limited to ${MAX_YAML_CHARS}` }],
    };
  }
  const lineCounter = new LineCounter();
  const masked = maskReferences(text);
  const doc = parseDocument(masked.text, {
    lineCounter,
    prettyErrors: false,
    schema: 'core',
    customTags: [],
    resolveKnownTags: false,
    merge: false,
    stringKeys: true,
    // Checked below with a message naming the key and its first occurrence.
    uniqueKeys: false,
  });
  const at = (offset: number): SourcePosition => {
    const { line, col } = lineCounter.linePos(offset);
    return { line, column: col };
  };
  const issue = (offset: number, message: string): ConfigIssue => ({ file, ...at(offset), message });
  const issues: ConfigIssue[] = [];
  masked.restore(doc);

  for (const error of doc.errors) {
    const message =
      error.code === 'MULTIPLE_DOCS'
        ? 'a configuration file holds one YAML document: remove the "---" separator or split the file'
        : error.message.includes('Maximum call stack size exceeded')
          ? 'YAML nesting is too deep to read'
          : `YAML syntax: ${firstLine(error.message)}`;
    issues.push(issue(error.pos[0], message));
  }
  for (const warning of doc.warnings) {
    const message =
      warning.code === 'TAG_RESOLVE_FAILED'
        ? `${firstLine(warning.message)}: tags are not allowed in CareRelay configuration; remove it`
        : firstLine(warning.message);
    issues.push(issue(warning.pos[0], message));
  }
  issues.push(...duplicateKeyIssues(doc, issue, at));
  issues.push(...interpolateDocument(doc, env, issue));

  const locate = makeLocate(doc, at);
  if (doc.errors.length > 0) return { value: undefined, locate, issues };

  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (error) {
    const firstAlias = findFirstAlias(doc);
    issues.push(
      issue(
        firstAlias?.range?.[0] ?? 0,
        `YAML aliases expand beyond the limit (${MAX_ALIAS_COUNT}): ${(error as Error).message}; ` +
          'repeat the block instead of aliasing it',
      ),
    );
    value = undefined;
  }
  return { value, locate, issues };
}

function firstLine(message: string): string {
  return message.split('\n', 1)[0]!.replace(/ at line \d+, column \d+:?$/, '');
}

function nodeStart(node: unknown): number | undefined {
  const range = (node as YamlNode | null)?.range;
  return range ? range[0] : undefined;
}

function duplicateKeyIssues(
  doc: Document.Parsed,
  issue: (offset: number, message: string) => ConfigIssue,
  at: (offset: number) => SourcePosition,
): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  visit(doc, {
    Map(_, map) {
      const seen = new Map<string, number>();
      for (const pair of map.items) {
        if (!isScalar(pair.key)) continue;
        const key = String(pair.key.value);
        const offset = nodeStart(pair.key) ?? 0;
        const first = seen.get(key);
        if (first === undefined) {
          seen.set(key, offset);
        } else {
          issues.push(
            issue(offset, `duplicate key "${key}" (first at line ${at(first).line}); a key may appear once per mapping`),
          );
        }
      }
    },
  });
  return issues;
}

function findFirstAlias(doc: Document.Parsed): Alias | undefined {
  let found: Alias | undefined;
  visit(doc, {
    Alias(_, node) {
      found = node;
      return visit.BREAK;
    },
  });
  return found;
}

// Private-use characters stand in for `${…}` while YAML parses (maskReferences).
const MASK_START = '\uE000';
const MASK_PAD = '\uE001';
const MASK_DIGIT0 = 0xe100;
const MASK_DIGITS = 4096;
const MASKED = /\uE000[\uE001\uE100-\uF0FF]*/g;
const PRIVATE_USE = /[\uE000-\uF8FF]/;
const REFERENCE_TEXT = /\$?\$\{[^}\r\n]*\}/g;

/**
 * `{` and `}` are flow indicators in YAML, so `port: ${HTTP_PORT:-8080}` inside a flow mapping
 * (`{ host: …, port: ${HTTP_PORT:-8080} }`) does not parse as written. Before parsing, each
 * reference (one line, up to its `}`) is replaced by a placeholder of the same length made of
 * private-use characters, which YAML reads as part of a plain scalar; afterwards `restore`
 * puts the references back into every scalar, where interpolation then works as for block
 * style. Same length: every line:column stays true. A file already holding private-use
 * characters is parsed as is.
 */
function maskReferences(text: string): { text: string; restore: (doc: Document.Parsed) => void } {
  if (!text.includes('${') || PRIVATE_USE.test(text)) return { text, restore: () => {} };
  const originals: string[] = [];
  const out = text.replace(REFERENCE_TEXT, (reference) => {
    const index = originals.length;
    if (index >= MASK_DIGITS * MASK_DIGITS || reference.length < 3) return reference;
    const digits = index < MASK_DIGITS ? [index] : [Math.floor(index / MASK_DIGITS), index % MASK_DIGITS];
    const mark = MASK_START + digits.map((d) => String.fromCharCode(MASK_DIGIT0 + d)).join('');
    if (mark.length > reference.length) return reference;
    originals.push(reference);
    return mark + MASK_PAD.repeat(reference.length - mark.length);
  });
  if (originals.length === 0) return { text, restore: () => {} };
  const unmask = (value: string): string =>
    value.replace(MASKED, (placeholder) => {
      const digits = [...placeholder.slice(1)].filter((c) => c !== MASK_PAD).map((c) => c.charCodeAt(0) - MASK_DIGIT0);
      const index = digits.length === 2 ? digits[0]! * MASK_DIGITS + digits[1]! : digits[0]!;
      return originals[index] ?? placeholder;
    });
  return {
    text: out,
    restore: (doc) => {
      visit(doc, {
        Scalar(_, node) {
          if (typeof node.value === 'string' && node.value.includes(MASK_START)) node.value = unmask(node.value);
        },
      });
    },
  };
}

const WHOLE_REFERENCE = /^\$\{[^}]*\}$/;
const REFERENCE_BODY = /^([A-Za-z_][A-Za-z0-9_]*)(?::-([\s\S]*))?$/;
const INTEGER = /^-?(?:0|[1-9][0-9]*)$/;

export type InterpolationResult = { ok: true; value: string } | { ok: false; problems: string[] };

/**
 * Replaces `${NAME}` and `${NAME:-default}` (default used when NAME is unset or empty, as in
 * POSIX shells); `$${` is a literal `${`; any other `$` is kept. Problems never quote the
 * variable's value (it may be a secret).
 */
export function interpolateEnv(text: string, env: Env): InterpolationResult {
  let out = '';
  const problems: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text.startsWith('$${', i)) {
      out += '${';
      i += 3;
      continue;
    }
    if (!text.startsWith('${', i)) {
      out += text[i];
      i += 1;
      continue;
    }
    const end = text.indexOf('}', i + 2);
    if (end < 0) {
      problems.push('unclosed "${": write ${NAME} or ${NAME:-default}, or $${ for a literal "${"');
      break;
    }
    const body = text.slice(i + 2, end);
    const match = REFERENCE_BODY.exec(body);
    if (!match) {
      problems.push(
        `"\${${body}}" is not a variable reference: write \${NAME} or \${NAME:-default} ` +
          '(NAME: letters, digits, "_"), or $${ for a literal "${"',
      );
    } else {
      const [, name, fallback] = match;
      const value = env[name!];
      if (fallback !== undefined && (value === undefined || value === '')) out += fallback;
      else if (value === undefined) problems.push(`environment variable ${name} is not set (or write \${${name}:-default})`);
      else out += value;
    }
    i = end + 1;
  }
  return problems.length > 0 ? { ok: false, problems } : { ok: true, value: out };
}

function interpolateDocument(
  doc: Document.Parsed,
  env: Env,
  issue: (offset: number, message: string) => ConfigIssue,
): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  visit(doc, {
    Scalar(key, node) {
      // Map keys are names, not values: never interpolated.
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const source = node.value;
      const result = interpolateEnv(source, env);
      if (!result.ok) {
        for (const problem of result.problems) issues.push(issue(nodeStart(node) ?? 0, problem));
        return;
      }
      node.value = node.type === 'PLAIN' && WHOLE_REFERENCE.test(source) ? coerce(result.value) : result.value;
    },
  });
  return issues;
}

function coerce(value: string): string | number | boolean {
  if (value === 'true') return true;
  if (value === 'false') return false;
  if (INTEGER.test(value)) {
    const n = Number(value);
    if (Number.isSafeInteger(n)) return n;
  }
  return value;
}

function makeLocate(doc: Document.Parsed, at: (offset: number) => SourcePosition): Locate {
  return (docPath, options) => {
    let node: unknown = doc.contents;
    const rootStart = nodeStart(node);
    if (rootStart === undefined) return undefined;
    let position: number = rootStart;
    for (let i = 0; i < docPath.length; i += 1) {
      if (isAlias(node)) node = node.resolve(doc);
      const segment = docPath[i]!;
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(segment));
        if (!pair) break;
        const keyStart: number = nodeStart(pair.key) ?? position;
        const valueStart = nodeStart(pair.value);
        const isEmptyValue = isScalar(pair.value) && pair.value.value === null && pair.value.source === '';
        if (i === docPath.length - 1 && options?.key) return at(keyStart);
        node = pair.value;
        position = valueStart === undefined || isEmptyValue ? keyStart : valueStart;
      } else if (isSeq(node)) {
        const item = node.items[Number(segment)];
        const itemStart = nodeStart(item);
        if (itemStart === undefined) break;
        node = item;
        position = itemStart;
      } else {
        break;
      }
    }
    return at(position);
  };
}

// ---------------------------------------------------------------------------------------
// Secret references. A secret is named, never written: `{ env: NAME }` or `{ file: PATH }`.

export type SecretRef = { env: string } | { file: string };

/**
 * JSON Schema of a configured name (an input, an output, an admin token): safe in URLs, logs
 * and the audit log. `description` says what the name is for.
 */
export function nameSchema(description: string) {
  return {
    type: 'string',
    pattern: '^[a-z][a-z0-9-]*$',
    maxLength: 63,
    'x-hint': 'lower-case letters, digits and "-", starting with a letter',
    description,
  } as const;
}

/**
 * JSON Schema of a secret reference. `x-secret` marks it so validation errors can explain
 * how to fix an inline value, and so the loader can check every reference resolves.
 */
export const secretRefSchema = {
  type: 'object',
  'x-secret': true,
  description:
    'A secret, given by reference only: `{ env: NAME }` reads environment variable NAME, ' +
    '`{ file: PATH }` reads a file (relative paths are relative to the configuration directory).',
  properties: {
    env: {
      type: 'string',
      pattern: '^[A-Za-z_][A-Za-z0-9_]*$',
      description: 'Name of the environment variable holding the secret.',
    },
    file: {
      type: 'string',
      minLength: 1,
      description: 'Path of a file holding the secret (e.g. a mounted Docker/Kubernetes secret).',
    },
  },
  additionalProperties: false,
  minProperties: 1,
  maxProperties: 1,
} as const;

const SECRET_HINT =
  'secrets are never written inline: use { env: NAME } (an environment variable) or { file: PATH } (a file)';

/**
 * Reads a secret. Relative file paths resolve against `baseDir` (the loader already stores
 * absolute paths in the plan). One trailing newline is removed: secret files usually end
 * with one. Throws an Error naming the reference (never the value) when it cannot be read.
 */
export function readSecret(ref: SecretRef, env: Env, baseDir: string = process.cwd()): string {
  if ('env' in ref) {
    const value = env[ref.env];
    if (value === undefined || value === '') throw new Error(`secret environment variable ${ref.env} is not set`);
    return value;
  }
  const file = path.resolve(baseDir, ref.file);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`secret file ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return text.replace(/\r?\n$/, '');
}

// ---------------------------------------------------------------------------------------
// JSON Schema validation with readable, positioned messages.

/** A JSON Schema object as written in this code base (annotations included). */
export type JsonSchema = { readonly [keyword: string]: unknown };

/**
 * The project's Ajv: strict (a typo in a schema is a bug caught at compile), every error
 * reported, schema defaults inserted into the validated value, ajv-formats, plus the
 * `iana-timezone` format and the `x-secret` / `x-hint` annotations.
 */
export function createAjv(): Ajv {
  const ajv = new Ajv({ strict: true, allErrors: true, useDefaults: true, verbose: true });
  formats.default(ajv);
  ajv.addFormat('iana-timezone', { type: 'string', validate: isIanaTimeZone });
  ajv.addKeyword({ keyword: 'x-secret', schemaType: 'boolean' });
  // A short human hint appended to errors of this property (e.g. what a pattern means).
  ajv.addKeyword({ keyword: 'x-hint', schemaType: 'string' });
  return ajv;
}

/** True for a time zone Intl knows by name ("Europe/Paris", "UTC"); offsets are refused. */
export function isIanaTimeZone(zone: string): boolean {
  if (!/^[A-Za-z][A-Za-z0-9_+\-/]*$/.test(zone)) return false;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

/** `['inputs', 0, 'port']` → `/inputs/0/port` (RFC 6901). */
export function toPointer(docPath: DocPath): string {
  return docPath.map((s) => `/${String(s).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
}

function fromPointer(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * Validates `value` (defaults are inserted into it) and returns one issue per problem, at
 * the line:column of the offending node. `basePath` is where `value` sits in the document
 * (e.g. `['inputs', 2]`), so positions and paths are document-wide.
 */
export function validateWithSchema(
  ajv: Ajv,
  schema: JsonSchema,
  value: unknown,
  file: string,
  locate: Locate,
  basePath: DocPath = [],
): ConfigIssue[] {
  const validate = ajv.compile(schema);
  if (validate(value)) return [];
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  for (const error of withoutUnrelatedAlternatives(validate.errors ?? [])) {
    const described = describe(error, basePath.map(String));
    if (!described) continue;
    const docPath = [...basePath, ...described.path];
    const hint = typeof error.parentSchema?.['x-hint'] === 'string' ? ` (${error.parentSchema['x-hint']})` : '';
    const message = `${described.message}${described.hint === false ? '' : hint}`;
    const key = `${toPointer(docPath)}\n${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const position = locate(docPath, { key: described.atKey });
    issues.push({ file, ...position, path: toPointer(docPath), message });
  }
  return issues;
}

/**
 * For a value that fails an `anyOf` (e.g. `auth: none` or `auth: { bearerToken: … }`), ajv
 * reports every alternative's errors. Keep only those of the alternatives whose kind the value
 * has (a mapping's errors for a mapping), so the message is about what was meant; when the
 * value has the kind of none of them, keep the anyOf error alone (it carries the x-hint).
 */
function withoutUnrelatedAlternatives(errors: readonly ErrorObject[]): ErrorObject[] {
  let kept = [...errors];
  for (const alt of errors.filter((e) => e.keyword === 'anyOf')) {
    const prefix = `${alt.schemaPath}/`;
    const branchOf = (e: ErrorObject): string | undefined =>
      e.schemaPath.startsWith(prefix) ? e.schemaPath.slice(prefix.length).split('/', 1)[0] : undefined;
    // An alternative the value is not even the kind of fails at its own level on type/const/enum.
    const unrelated = new Set(
      kept
        .filter((e) => e.instancePath === alt.instancePath && ['type', 'const', 'enum'].includes(e.keyword))
        .map(branchOf)
        .filter((b): b is string => b !== undefined),
    );
    const branches = new Set(kept.map(branchOf).filter((b): b is string => b !== undefined));
    const related = [...branches].filter((b) => !unrelated.has(b));
    kept = kept.filter((e) => {
      const branch = branchOf(e);
      if (e === alt) return related.length === 0;
      return branch === undefined || related.includes(branch);
    });
  }
  return kept;
}

interface Described {
  path: string[];
  message: string;
  /** Point at the key of the entry rather than its value. */
  atKey: boolean;
  hint?: false;
}

/** `"port"`, `item 2 of "inputs"`, or `the document`. */
function label(path: readonly string[]): string {
  const last = path[path.length - 1];
  if (last === undefined) return 'the document';
  if (!/^(?:0|[1-9][0-9]*)$/.test(last)) return `"${last}"`;
  const parent = path[path.length - 2];
  return `item ${Number(last) + 1}${parent === undefined ? '' : ` of "${parent}"`}`;
}

function show(value: unknown): string {
  const text = typeof value === 'string' ? JSON.stringify(value) : String(value);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

function typeName(value: unknown): string {
  if (value === null) return 'null (empty value)';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'number') return Number.isInteger(value) ? 'an integer' : 'a number';
  return `a ${typeof value}`;
}

function describe(error: ErrorObject, basePath: readonly string[]): Described | undefined {
  const path = fromPointer(error.instancePath);
  const params = error.params as Record<string, unknown>;
  const parent = (error.parentSchema ?? {}) as Record<string, unknown>;
  const isSecret = parent['x-secret'] === true;
  const name = label([...basePath, ...path]);
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(params.additionalProperty);
      if (isSecret) return { path: [...path, key], atKey: true, message: `unknown key "${key}" in a secret reference: ${SECRET_HINT}`, hint: false };
      const allowed = Object.keys((parent.properties as object | undefined) ?? {});
      return {
        path: [...path, key],
        atKey: true,
        message: `unknown key "${key}" (allowed: ${allowed.join(', ')})`,
        hint: false,
      };
    }
    case 'required':
      return {
        path,
        atKey: true,
        message: `missing required key "${String(params.missingProperty)}" in ${name}`,
        hint: false,
      };
    case 'enum':
      return {
        path,
        atKey: false,
        message: `${name} must be one of ${(params.allowedValues as unknown[]).map(show).join(', ')} (got ${show(error.data)})`,
      };
    case 'const':
      return { path, atKey: false, message: `${name} must be ${show(params.allowedValue)} (got ${show(error.data)})` };
    case 'type':
      if (isSecret) return { path, atKey: false, message: `${name}: ${SECRET_HINT}`, hint: false };
      return { path, atKey: false, message: `${name} must be ${article(String(params.type))}, got ${typeName(error.data)}` };
    case 'minProperties':
    case 'maxProperties':
      if (isSecret) return { path, atKey: false, message: `${name}: give exactly one of env or file`, hint: false };
      return { path, atKey: false, message: `${name} ${error.message ?? 'has the wrong number of keys'}` };
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return { path, atKey: false, message: `${name} ${error.message} (got ${show(error.data)})` };
    case 'pattern': {
      // A hint says in words what the regex means; the regex is the fallback.
      const hint = parent['x-hint'];
      return typeof hint === 'string'
        ? { path, atKey: false, message: `${name} ${show(error.data)} is not valid: ${hint}`, hint: false }
        : { path, atKey: false, message: `${name} ${show(error.data)} does not match ${String(params.pattern)}` };
    }
    case 'format':
      return {
        path,
        atKey: false,
        message:
          params.format === 'iana-timezone'
            ? `${name} ${show(error.data)} is not an IANA time zone name (e.g. "UTC", "Europe/Paris", "America/New_York")`
            : `${name} ${show(error.data)} is not a valid ${String(params.format)}`,
      };
    case 'propertyNames':
      // Reported by the nested error on the name itself.
      return undefined;
    case 'anyOf':
      return { path, atKey: false, message: `${name} is not valid` };
    default:
      return { path, atKey: false, message: `${name} ${error.message ?? 'is invalid'}` };
  }
}

function article(type: string): string {
  const names: Record<string, string> = {
    object: 'a mapping',
    array: 'a list',
    string: 'a string',
    integer: 'an integer',
    number: 'a number',
    boolean: 'true or false',
    null: 'null',
  };
  return type
    .split(',')
    .map((t) => names[t] ?? t)
    .join(' or ');
}
