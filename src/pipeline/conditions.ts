// The declarative condition language of mapping rules (`where:`), and the trigger path
// vocabulary it shares with `send.to`, `send.fields` and time expressions.
//
// Nothing here executes code from a mapping file: a condition is data (eq, in, exists,
// comparisons, bounded regular expressions, all/any/not) checked when the mapping loads
// and evaluated against a Trigger (../types.ts, docs/trigger.md "Fields").
//
// YAML forms (a mapping with several keys means "all of them"):
//
//   where:
//     appointment.serviceType.code: { in: [CARDIO, ONCO] }   # operator map on a path
//     patient.deceased: false                                 # a scalar means eq
//     appointment.durationMinutes: { gte: 15, lte: 90 }       # several operators: all hold
//     any:
//       - patient.language: fr
//       - patient.telecom[system=email].value: { exists: true }
//     not: { sensitivity: { in: [PSY, HIV] } }
//     appointment.start: { gte: occurredAt + 7d }               # booked at least a week ahead
//
// A time field compares with an instant (2025-03-30T09:00:00+02:00) or with a time
// expression over the trigger's own times (schedule.ts; `d` and `w` steps in the rule's
// zone): lead times such as "booked at least a week ahead". `now` is refused there: a rule
// must decide the same way when its mapping tests or a replay run later.
//
// Paths are dot paths into the trigger. A path that crosses an array (patient.telecom,
// patient.identifiers, patient.name.given, sensitivity…) reaches every element, and a
// positive operator (eq, in, gt/gte/lt/lte, matches, exists: true) holds when ANY reached
// value satisfies it. `ne` is exactly `not eq` and `exists: false` exactly `not exists`:
// they hold when NO reached value equals / exists. A filter `[key=value,key=value]` after
// an array segment keeps only the elements whose fields equal those strings, so two tests
// on the same element are written `patient.telecom[system=phone,use=mobile].value`.
// Empty strings count as absent (HL7 feeds send empty components).
import type { Trigger } from '../types.ts';
import { compileTimeExpr, resolveInstant, type TimeExpr } from './schedule.ts';
import { closest, describe, isRecord, parseInstant } from './values.ts';

/** A location inside the mapping document: keys and array indexes from the rule list down. */
export type IssuePath = (string | number)[];

export interface ConditionIssue {
  path: IssuePath;
  message: string;
}

// ---------------------------------------------------------------------------------------
// The trigger field vocabulary (docs/trigger.md "Fields"). Add fields here when docs/trigger.md
// gains them: rules naming an unknown path are refused at load time.

export const FieldKind = {
  String: 'string',
  Number: 'number',
  Boolean: 'boolean',
  /** ISO-8601 instant with offset, compared as an instant. */
  Time: 'time',
  /** YYYY-MM-DD, compared as a calendar date. */
  Date: 'date',
  Object: 'object',
} as const;
export type FieldKind = (typeof FieldKind)[keyof typeof FieldKind];

export interface FieldSpec {
  kind: FieldKind;
  /** The value is an array of `kind` (objects or scalars). */
  array?: boolean;
  fields?: Record<string, FieldSpec>;
}

const str: FieldSpec = { kind: 'string' };
const time: FieldSpec = { kind: 'time' };
const identifier: FieldSpec = { kind: 'object', array: true, fields: { value: str, system: str, type: str } };
const location: FieldSpec = { kind: 'object', fields: { id: str, name: str, facility: str } };

export const TRIGGER_FIELDS: Record<string, FieldSpec> = {
  id: str,
  type: str,
  occurredAt: time,
  receivedAt: time,
  source: {
    kind: 'object',
    fields: { format: str, sender: str, messageType: str, messageId: str },
  },
  patient: {
    kind: 'object',
    fields: {
      id: str,
      identifiers: identifier,
      name: { kind: 'object', fields: { family: str, given: { kind: 'string', array: true } } },
      birthDate: { kind: 'date' },
      gender: str,
      language: str,
      deceased: { kind: 'boolean' },
      telecom: { kind: 'object', array: true, fields: { system: str, use: str, value: str } },
      mergedFrom: identifier,
    },
  },
  appointment: {
    kind: 'object',
    fields: {
      id: str,
      placerId: str,
      status: str,
      start: time,
      end: time,
      durationMinutes: { kind: 'number' },
      previousStart: time,
      serviceType: { kind: 'object', fields: { code: str, display: str, system: str } },
      location,
      practitioner: { kind: 'object', fields: { id: str, name: str } },
      virtual: { kind: 'object', fields: { channel: str, hasJoinInfo: { kind: 'boolean' } } },
    },
  },
  encounter: {
    kind: 'object',
    fields: {
      id: str,
      status: str,
      class: str,
      start: time,
      end: time,
      location,
      dischargeDisposition: str,
    },
  },
  sensitivity: { kind: 'string', array: true },
  reply: { kind: 'object', fields: { action: str, answer: str, prompt: str } },
};

/** Every known dot path (objects included), for "did you mean" hints and docs. */
export const KNOWN_PATHS: readonly string[] = (() => {
  const out: string[] = [];
  const walk = (fields: Record<string, FieldSpec>, prefix: string): void => {
    for (const [name, spec] of Object.entries(fields)) {
      const path = prefix + name;
      out.push(path);
      if (spec.fields) walk(spec.fields, path + '.');
    }
  };
  walk(TRIGGER_FIELDS, '');
  return out;
})();

// ---------------------------------------------------------------------------------------
// Paths

export interface PathSegment {
  name: string;
  /** Element filter on an array segment: every [key, value] must equal String(element[key]). */
  filter?: [string, string][];
}

export interface FieldPath {
  /** As written in the mapping, for messages and round-tripping. */
  source: string;
  segments: PathSegment[];
  /** The spec of the last segment. */
  spec: FieldSpec;
  /** True when the path crosses an array (it may reach several values). */
  multi: boolean;
}

const NAME = /^[A-Za-z][A-Za-z0-9_]*$/;
const FILTER_VALUE = /^[^,\]=[]+$/;

/**
 * Parses and checks a path against TRIGGER_FIELDS. Returns an error message (no path) on
 * failure, naming the closest known paths when a field is unknown.
 */
export function compilePath(text: string): FieldPath | string {
  if (text.length === 0) return 'a path must not be empty';
  if (text.length > 200) return 'a path must be at most 200 characters';
  const segments: PathSegment[] = [];
  // Split on dots outside [...] (filter values may contain dots, e.g. an email domain).
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    else if (c === '.' && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
    if (depth < 0 || depth > 1) return `unbalanced "[" "]" in path "${text}"`;
  }
  if (depth !== 0) return `unbalanced "[" "]" in path "${text}"`;
  parts.push(text.slice(start));

  let fields: Record<string, FieldSpec> | undefined = TRIGGER_FIELDS;
  let spec: FieldSpec | undefined;
  let multi = false;
  const plain: string[] = [];
  for (const part of parts) {
    const m = /^([^[\]]*)(?:\[([^\]]*)\])?$/.exec(part);
    if (!m || !NAME.test(m[1])) return `"${part}" is not a valid path segment in "${text}" (expected name or name[key=value,…])`;
    const name = m[1];
    plain.push(name);
    if (!fields || !(name in fields)) {
      const known = plain.slice(0, -1).join('.');
      return `unknown trigger path "${plain.join('.')}"${known && !fields ? ` ("${known}" has no fields)` : ''}; closest known: ${closest(plain.join('.'), KNOWN_PATHS).join(', ')}`;
    }
    spec = fields[name];
    const segment: PathSegment = { name };
    if (m[2] !== undefined) {
      if (!spec.array || !spec.fields) return `"[…]" filters apply to arrays of objects; "${plain.join('.')}" is not one`;
      const filter: [string, string][] = [];
      for (const clause of m[2].split(',')) {
        const eq = clause.indexOf('=');
        const key = clause.slice(0, eq).trim();
        const value = clause.slice(eq + 1).trim();
        if (eq < 0 || !FILTER_VALUE.test(value)) return `filter "${clause}" in "${text}" must be key=value`;
        if (!(key in spec.fields)) return `filter key "${key}" is not a field of "${plain.join('.')}" (fields: ${Object.keys(spec.fields).join(', ')})`;
        filter.push([key, value]);
      }
      segment.filter = filter;
    }
    if (spec.array) multi = true;
    segments.push(segment);
    fields = spec.fields;
  }
  return { source: text, segments, spec: spec!, multi };
}

/**
 * Every value the path reaches in `root`, arrays flattened, absent values (undefined, null,
 * empty string) left out. Objects are returned as they are (for exists and for picking).
 */
export function resolvePath(root: unknown, path: FieldPath): unknown[] {
  let current: unknown[] = [root];
  for (const segment of path.segments) {
    const next: unknown[] = [];
    for (const item of current) {
      if (item === null || typeof item !== 'object') continue;
      const value = (item as Record<string, unknown>)[segment.name];
      const values = Array.isArray(value) ? value : [value];
      for (const v of values) {
        if (v === undefined || v === null || v === '') continue;
        if (segment.filter && !matchesFilter(v, segment.filter)) continue;
        next.push(v);
      }
    }
    current = next;
    if (current.length === 0) break;
  }
  return current;
}

function matchesFilter(value: unknown, filter: [string, string][]): boolean {
  if (value === null || typeof value !== 'object') return false;
  const record = value as Record<string, unknown>;
  return filter.every(([k, v]) => record[k] !== undefined && String(record[k]) === v);
}

// ---------------------------------------------------------------------------------------
// Bounded regular expressions

/** Longest accepted pattern, in UTF-16 code units. */
export const MAX_PATTERN_LENGTH = 200;
/** Longer subjects are never matched (so evaluation time stays bounded). */
export const MAX_SUBJECT_LENGTH = 1000;
/**
 * Upper bound on the backtracking paths a pattern may have on a MAX_SUBJECT_LENGTH
 * subject: the product of the choices at each quantifier and alternation, times the start
 * positions when the pattern is not anchored with ^. 10^7 keeps the worst case in the tens
 * of milliseconds on V8 (measured in conditions.test.ts).
 */
export const MAX_BACKTRACKING = 1e7;

/**
 * Checks a `matches` pattern and compiles it (flag `u`, nothing else). Refused:
 * backreferences and lookaround (not regular; unbounded work), a quantifier on a group that
 * itself contains a quantifier or an alternation (`(a+)+`, `(a|aa)*`: exponential
 * backtracking), and patterns whose backtracking bound exceeds MAX_BACKTRACKING.
 */
export function compilePattern(pattern: string): RegExp | string {
  if (pattern.length === 0) return 'the pattern is empty';
  if (pattern.length > MAX_PATTERN_LENGTH) return `the pattern is ${pattern.length} characters long; at most ${MAX_PATTERN_LENGTH} are accepted`;
  let regex: RegExp;
  try {
    regex = new RegExp(pattern, 'u');
  } catch (error) {
    return `invalid regular expression: ${(error as Error).message}`;
  }
  const problem = analysePattern(pattern);
  return problem ?? regex;
}

interface GroupFrame {
  /** The group contains a quantifier or an alternation (directly or nested). */
  branches: boolean;
  alternatives: number;
}

function analysePattern(p: string): string | undefined {
  const n = MAX_SUBJECT_LENGTH;
  let cost = 1;
  const stack: GroupFrame[] = [{ branches: false, alternatives: 1 }];
  // What the next quantifier applies to: a group that branches, or a single atom.
  let lastAtomBranches: boolean | undefined;
  let i = 0;
  const quantifier = (min: number, max: number): string | undefined => {
    if (lastAtomBranches === undefined) return undefined; // RegExp already refused it
    if (lastAtomBranches) return 'a quantifier on a group that contains a quantifier or "|" (like (a+)+ or (a|b)*) can take exponential time; rewrite it without nesting';
    const choices = max === Infinity ? n + 1 : max - min + 1;
    cost *= choices;
    stack[stack.length - 1].branches = true;
    lastAtomBranches = undefined;
    return undefined;
  };
  while (i < p.length) {
    const c = p[i];
    if (c === '\\') {
      const next = p[i + 1] ?? '';
      if (/[1-9]/.test(next) || next === 'k') return 'backreferences (\\1, \\k<name>) are not allowed';
      // \p{…} / \u{…} / \x.. / \cX are single atoms: skip the escape body.
      if ((next === 'p' || next === 'P' || next === 'u') && p[i + 2] === '{') i = p.indexOf('}', i) + 1;
      else i += 2;
      lastAtomBranches = false;
      continue;
    }
    if (c === '[') {
      // Character class: one atom, no choice points. Skip to its closing bracket.
      i++;
      if (p[i] === '^') i++;
      if (p[i] === ']') i++;
      while (i < p.length && p[i] !== ']') i += p[i] === '\\' ? 2 : 1;
      i++;
      lastAtomBranches = false;
      continue;
    }
    if (c === '(') {
      if (p.startsWith('(?=', i) || p.startsWith('(?!', i) || p.startsWith('(?<=', i) || p.startsWith('(?<!', i)) {
        return 'lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not allowed';
      }
      if (p.startsWith('(?:', i)) i += 3;
      else if (p.startsWith('(?<', i)) i = p.indexOf('>', i) + 1;
      else i += 1;
      stack.push({ branches: false, alternatives: 1 });
      lastAtomBranches = undefined;
      continue;
    }
    if (c === ')') {
      const frame = stack.pop()!;
      cost *= frame.alternatives;
      if (frame.branches) stack[stack.length - 1].branches = true;
      lastAtomBranches = frame.branches;
      i++;
      continue;
    }
    if (c === '|') {
      const frame = stack[stack.length - 1];
      frame.alternatives++;
      frame.branches = true;
      lastAtomBranches = undefined;
      i++;
      continue;
    }
    if (c === '*' || c === '+' || c === '?' || c === '{') {
      let min = 0;
      let max = Infinity;
      let end = i + 1;
      if (c === '+') min = 1;
      else if (c === '?') max = 1;
      else if (c === '{') {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(p.slice(i));
        if (!m) return 'invalid quantifier "{"';
        min = Number(m[1]);
        max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
        end = i + m[0].length;
      }
      if (p[end] === '?') end++; // lazy: same choice points
      const problem = quantifier(min, max);
      if (problem) return problem;
      i = end;
      continue;
    }
    lastAtomBranches = c === '^' || c === '$' ? undefined : false;
    i++;
  }
  const top = stack[0];
  cost *= top.alternatives;
  // Unanchored (or only one top-level alternative anchored): every start position is tried.
  if (!(p.startsWith('^') && top.alternatives === 1)) cost *= n;
  if (cost > MAX_BACKTRACKING) {
    return `the pattern can backtrack too much on a ${n}-character value (about ${cost.toExponential(1)} paths, at most ${MAX_BACKTRACKING.toExponential(0)}): anchor it with ^, or use fewer open-ended * + {n,} quantifiers`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Conditions

export const ConditionOp = {
  All: 'all',
  Any: 'any',
  Not: 'not',
  Eq: 'eq',
  Ne: 'ne',
  In: 'in',
  Exists: 'exists',
  Gt: 'gt',
  Gte: 'gte',
  Lt: 'lt',
  Lte: 'lte',
  Matches: 'matches',
} as const;
export type ConditionOp = (typeof ConditionOp)[keyof typeof ConditionOp];

/** A comparable scalar: strings, numbers, booleans; times as epoch ms; dates as YYYY-MM-DD. */
export type Scalar = string | number | boolean;

export type Condition =
  | { op: 'all' | 'any'; of: Condition[] }
  | { op: 'not'; of: Condition }
  | { op: 'eq' | 'ne'; path: FieldPath; value: Scalar }
  | { op: 'in'; path: FieldPath; values: Scalar[] }
  | { op: 'exists'; path: FieldPath; value: boolean }
  | { op: 'gt' | 'gte' | 'lt' | 'lte'; path: FieldPath; value: number | string }
  /** A time field against a time expression over the same trigger (a lead time). */
  | { op: 'gt' | 'gte' | 'lt' | 'lte'; path: FieldPath; expr: TimeExpr }
  | { op: 'matches'; path: FieldPath; regex: RegExp };

const LOGICAL = new Set(['all', 'any', 'not']);
const FIELD_OPS = ['eq', 'ne', 'in', 'exists', 'gt', 'gte', 'lt', 'lte', 'matches'] as const;
type FieldOp = (typeof FIELD_OPS)[number];
/** Nesting bound: keeps evaluation and error messages sane for hand-written files. */
const MAX_DEPTH = 16;

/**
 * Compiles a raw `where` value (parsed YAML). `at` is where the value sits in the mapping
 * document; every issue carries the full path to the offending key so the loader can point
 * at file:line:column. A list is read as `all` of its items.
 */
export function compileCondition(raw: unknown, at: IssuePath): { condition?: Condition; issues: ConditionIssue[] } {
  const issues: ConditionIssue[] = [];
  const condition = compileNode(raw, at, issues, 0);
  return issues.length === 0 ? { condition, issues } : { issues };
}

function compileNode(raw: unknown, at: IssuePath, issues: ConditionIssue[], depth: number): Condition | undefined {
  if (depth > MAX_DEPTH) {
    issues.push({ path: at, message: `conditions are nested more than ${MAX_DEPTH} levels deep` });
    return undefined;
  }
  if (Array.isArray(raw)) return compileList('all', raw, at, issues, depth);
  if (!isRecord(raw)) {
    issues.push({ path: at, message: 'expected a mapping of trigger paths to tests (e.g. `appointment.status: booked`) or all/any/not' });
    return undefined;
  }
  const keys = Object.keys(raw);
  if (keys.length === 0) {
    issues.push({ path: at, message: 'an empty condition: remove it, or name a trigger path to test' });
    return undefined;
  }
  const parts: Condition[] = [];
  for (const key of keys) {
    const value = raw[key];
    const here = [...at, key];
    let part: Condition | undefined;
    if (key === 'all' || key === 'any') {
      if (!Array.isArray(value)) {
        issues.push({ path: here, message: `"${key}" takes a list of conditions` });
        continue;
      }
      part = compileList(key, value, here, issues, depth);
    } else if (key === 'not') {
      const inner = compileNode(value, here, issues, depth + 1);
      part = inner && { op: 'not', of: inner };
    } else if ((FIELD_OPS as readonly string[]).includes(key)) {
      issues.push({ path: here, message: `"${key}" needs a trigger path: write \`<path>: { ${key}: … }\`, e.g. \`appointment.durationMinutes: { gte: 15 }\`` });
      continue;
    } else {
      part = compileField(key, value, here, issues);
    }
    if (part) parts.push(part);
  }
  if (parts.length !== keys.length) return undefined;
  return parts.length === 1 ? parts[0] : { op: 'all', of: parts };
}

function compileList(op: 'all' | 'any', raw: unknown[], at: IssuePath, issues: ConditionIssue[], depth: number): Condition | undefined {
  if (raw.length === 0) {
    issues.push({ path: at, message: `"${op}" needs at least one condition` });
    return undefined;
  }
  const of = raw.map((item, i) => compileNode(item, [...at, i], issues, depth + 1));
  if (of.some((c) => c === undefined)) return undefined;
  return { op, of: of as Condition[] };
}

function compileField(key: string, raw: unknown, at: IssuePath, issues: ConditionIssue[]): Condition | undefined {
  const path = compilePath(key);
  if (typeof path === 'string') {
    issues.push({ path: at, message: path });
    return undefined;
  }
  // Shorthand: a scalar means eq.
  if (!isRecord(raw)) {
    if (Array.isArray(raw)) {
      issues.push({ path: at, message: `a list is ambiguous here: write \`${key}: { in: [...] }\` for "one of"` });
      return undefined;
    }
    return compileFieldOp(path, 'eq', raw, at, issues);
  }
  const ops = Object.keys(raw);
  if (ops.length === 0) {
    issues.push({ path: at, message: `no test given for "${key}" (use eq, ne, in, exists, gt, gte, lt, lte or matches)` });
    return undefined;
  }
  const parts: Condition[] = [];
  for (const op of ops) {
    if (!(FIELD_OPS as readonly string[]).includes(op)) {
      const hint = LOGICAL.has(op) ? ' (all/any/not go above paths, not under them)' : `; known: ${FIELD_OPS.join(', ')}`;
      issues.push({ path: [...at, op], message: `unknown operator "${op}"${hint}` });
      continue;
    }
    const part = compileFieldOp(path, op as FieldOp, raw[op], [...at, op], issues);
    if (part) parts.push(part);
  }
  if (parts.length !== ops.length) return undefined;
  return parts.length === 1 ? parts[0] : { op: 'all', of: parts };
}

function compileFieldOp(path: FieldPath, op: FieldOp, raw: unknown, at: IssuePath, issues: ConditionIssue[]): Condition | undefined {
  const kind = path.spec.kind;
  const fail = (message: string): undefined => {
    issues.push({ path: at, message });
    return undefined;
  };
  switch (op) {
    case 'exists':
      if (typeof raw !== 'boolean') return fail('exists takes true or false');
      return { op, path, value: raw };
    case 'eq':
    case 'ne': {
      if (kind === 'object') return fail(`"${path.source}" is an object; compare one of its fields (${Object.keys(path.spec.fields ?? {}).map((f) => `${path.source}.${f}`).join(', ')})`);
      const value = coerceScalar(path, raw);
      if (typeof value === 'object') return fail(value.error);
      return { op, path, value };
    }
    case 'in': {
      if (kind === 'object') return fail(`"${path.source}" is an object; compare one of its fields`);
      if (!Array.isArray(raw) || raw.length === 0) return fail('in takes a non-empty list of values');
      const values: Scalar[] = [];
      for (const [i, item] of raw.entries()) {
        const value = coerceScalar(path, item);
        if (typeof value === 'object') {
          issues.push({ path: [...at, i], message: value.error });
          return undefined;
        }
        values.push(value);
      }
      return { op, path, values };
    }
    case 'gt':
    case 'gte':
    case 'lt':
    case 'lte': {
      if (kind !== 'number' && kind !== 'time' && kind !== 'date') {
        return fail(`${op} compares numbers, times and dates; "${path.source}" is a ${kind}`);
      }
      if (kind === 'time' && typeof raw === 'string' && parseInstant(raw) === undefined) {
        const compiled = compileTimeExpr(raw, at);
        if (compiled.expr === undefined) {
          return fail(
            `"${path.source}" is a time: compare it with an ISO-8601 instant with offset like 2025-03-30T09:00:00+02:00 or with a time ` +
              `expression over the trigger such as "occurredAt + 7d" (${compiled.issues[0]?.message ?? 'not a time expression'})`,
          );
        }
        if (compiled.expr.anchor === 'now') {
          return fail(
            `"now" cannot be used in a condition: a rule must decide the same way when its mapping tests or a replay run ` +
              'later; compare two trigger times instead (e.g. `appointment.start: { gte: occurredAt + 7d }`), or use `expires:`',
          );
        }
        return { op, path, expr: compiled.expr };
      }
      const value = coerceScalar(path, raw);
      if (typeof value === 'object') return fail(value.error);
      return { op, path, value: value as number | string };
    }
    case 'matches': {
      if (kind === 'object' || kind === 'number' || kind === 'boolean') return fail(`matches applies to text; "${path.source}" is a ${kind}`);
      if (typeof raw !== 'string') return fail('matches takes a regular expression as a string');
      const regex = compilePattern(raw);
      if (typeof regex === 'string') return fail(regex);
      return { op, path, regex };
    }
    default:
      op satisfies never;
      return undefined;
  }
}

/** The compiled comparison value for a path kind, or an error message. */
function coerceScalar(path: FieldPath, raw: unknown): Scalar | { error: string } {
  switch (path.spec.kind) {
    case 'string':
      // YAML reads unquoted codes like 12345 as numbers: compare them as written.
      if (typeof raw === 'string') return raw;
      if (typeof raw === 'number' && Number.isFinite(raw)) return String(raw);
      return { error: `"${path.source}" holds text; expected a string, got ${describe(raw)}` };
    case 'number':
      if (typeof raw === 'number' && Number.isFinite(raw)) return raw;
      return { error: `"${path.source}" holds a number; got ${describe(raw)}` };
    case 'boolean':
      if (typeof raw === 'boolean') return raw;
      return { error: `"${path.source}" holds true/false; got ${describe(raw)}` };
    case 'time': {
      const ms = raw instanceof Date ? raw.getTime() : typeof raw === 'string' ? parseInstant(raw) : undefined;
      if (ms === undefined || Number.isNaN(ms)) {
        return { error: `"${path.source}" is a time; expected an ISO-8601 instant with offset like 2025-03-30T09:00:00+02:00, got ${describe(raw)}` };
      }
      return ms;
    }
    case 'date':
      if (typeof raw === 'string' && /^\d{4}-\d{2}-\d{2}$/.test(raw)) return raw;
      return { error: `"${path.source}" is a date; expected YYYY-MM-DD, got ${describe(raw)}` };
    case 'object':
      return { error: `"${path.source}" is an object` };
    default:
      path.spec.kind satisfies never;
      return { error: 'unreachable' };
  }
}

/** The time expressions a condition compares with (to check their anchors against the rule's triggers). */
export function timeExpressionsOf(condition: Condition): TimeExpr[] {
  switch (condition.op) {
    case 'all':
    case 'any':
      return condition.of.flatMap(timeExpressionsOf);
    case 'not':
      return timeExpressionsOf(condition.of);
    default:
      return 'expr' in condition ? [condition.expr] : [];
  }
}

/**
 * True when the condition holds for the trigger. Pure; never throws on trigger data. `zone`
 * (an IANA name, checked by the caller) is where `d`/`w` steps of a time expression count
 * calendar days.
 */
export function evaluate(condition: Condition, trigger: Trigger, zone = 'UTC'): boolean {
  switch (condition.op) {
    case 'all':
      return condition.of.every((c) => evaluate(c, trigger, zone));
    case 'any':
      return condition.of.some((c) => evaluate(c, trigger, zone));
    case 'not':
      return !evaluate(condition.of, trigger, zone);
    case 'exists':
      return (resolvePath(trigger, condition.path).length > 0) === condition.value;
    case 'eq':
      return resolvePath(trigger, condition.path).some((v) => same(condition.path, v, condition.value));
    case 'ne':
      return !resolvePath(trigger, condition.path).some((v) => same(condition.path, v, condition.value));
    case 'in': {
      const values = resolvePath(trigger, condition.path);
      return values.some((v) => condition.values.some((w) => same(condition.path, v, w)));
    }
    case 'gt':
    case 'gte':
    case 'lt':
    case 'lte': {
      const { op } = condition;
      // A time expression whose anchor the trigger lacks decides nothing: false, like a
      // comparison with an absent field.
      const value = 'expr' in condition ? resolveInstant(condition.expr, trigger, zone, 0) : condition.value;
      if (value === undefined) return false;
      return resolvePath(trigger, condition.path).some((v) => {
        const left = comparable(condition.path, v);
        if (left === undefined || typeof left !== typeof value) return false;
        return op === 'gt' ? left > value : op === 'gte' ? left >= value : op === 'lt' ? left < value : left <= value;
      });
    }
    case 'matches':
      return resolvePath(trigger, condition.path).some(
        (v) => typeof v === 'string' && v.length <= MAX_SUBJECT_LENGTH && condition.regex.test(v),
      );
    default:
      condition satisfies never;
      return false;
  }
}

/** Longest condition text kept in a routing explanation. */
const MAX_DESCRIPTION = 200;

/**
 * The part of a condition that does not hold for the trigger, as the rule says it (for
 * routing explanations: rule text, never trigger values); undefined when it holds. In an
 * `all`, the first item that fails; otherwise the whole node.
 */
export function failingPart(condition: Condition, trigger: Trigger, zone = 'UTC'): string | undefined {
  if (evaluate(condition, trigger, zone)) return undefined;
  if (condition.op === 'all') {
    for (const item of condition.of) {
      const failing = failingPart(item, trigger, zone);
      if (failing !== undefined) return failing;
    }
  }
  const text = describeCondition(condition);
  return text.length <= MAX_DESCRIPTION ? text : `${text.slice(0, MAX_DESCRIPTION - 1)}…`;
}

/** A condition in words close to the YAML it came from: `appointment.start gte occurredAt + 7d`. */
export function describeCondition(condition: Condition): string {
  switch (condition.op) {
    case 'all':
      return condition.of.map(describeCondition).join(' and ');
    case 'any':
      return `any of (${condition.of.map(describeCondition).join('; ')})`;
    case 'not':
      return `not (${describeCondition(condition.of)})`;
    case 'exists':
      return `${condition.path.source} exists: ${condition.value}`;
    case 'in':
      return `${condition.path.source} in [${condition.values.map(String).join(', ')}]`;
    case 'matches':
      return `${condition.path.source} matches /${condition.regex.source}/`;
    case 'eq':
    case 'ne':
      return `${condition.path.source} ${condition.op} ${String(condition.value)}`;
    case 'gt':
    case 'gte':
    case 'lt':
    case 'lte': {
      const value = 'expr' in condition ? condition.expr.source : condition.path.spec.kind === 'time' && typeof condition.value === 'number' ? new Date(condition.value).toISOString() : String(condition.value);
      return `${condition.path.source} ${condition.op} ${value}`;
    }
    default:
      condition satisfies never;
      return '';
  }
}

function comparable(path: FieldPath, value: unknown): number | string | undefined {
  switch (path.spec.kind) {
    case 'number':
      return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
    case 'time':
      return typeof value === 'string' ? parseInstant(value) : undefined;
    case 'date':
      return typeof value === 'string' && /^\d{4}-\d{2}-\d{2}$/.test(value) ? value : undefined;
    default:
      return undefined;
  }
}

function same(path: FieldPath, value: unknown, expected: Scalar): boolean {
  if (path.spec.kind === 'time') return typeof value === 'string' && parseInstant(value) === expected;
  if (path.spec.kind === 'string') return (typeof value === 'string' || typeof value === 'number') && String(value) === expected;
  return value === expected;
}

// ---------------------------------------------------------------------------------------
