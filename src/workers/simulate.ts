// Mapping tests and dry-run replay, in memory: the same steps as the running server —
// normalize → stored appointment/encounter state → route → apply to deliveries (the ordering
// rule of route.ts) → render — with Maps instead of the store and the queue, and a clock
// that only moves when a test says so (docs/contributing.md habit 11: an integration engineer changes a
// rule and runs its test without touching TypeScript).
//
// What is NOT simulated: send-time consent and safety checks (docs/consent.md rules 2–8: opt-outs,
// caps, quiet hours, sensitive windows). A test shows what routing plans and what the
// message says; consent has its own tests.
//
// The test file format is documented in mappings/README.md ("Mapping tests") and at the top
// of every shipped mappings/*.test.yaml.

import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ConfigIssue } from '../errors.ts';
import { ConfigError, formatConfigIssue } from '../errors.ts';
import { loadConfig, displayPath } from '../config/load.ts';
import type { PolicyConfig } from '../config/policy-schema.ts';
import { isMappingTestFile, loadMappings, type MappingSet } from '../config/mappings.ts';
import { createAjv, readYamlDocument, validateWithSchema, type Env, type JsonSchema, type Locate } from '../config/yaml.ts';
import { Hl7ParseError, parseHl7Batch } from '../hl7v2/parse.ts';
import { applyStoredState, normalizeHl7 } from '../inputs/hl7v2/normalize.ts';
import { outputSpecs } from '../outputs/index.ts';
import { outputInfos } from '../outputs/spec.ts';
import { isRecord, parseInstant } from '../pipeline/values.ts';
import { renderDelivery, type RenderedMessage } from '../pipeline/render.ts';
import { route, type DeliveryChange, type DeliveryState } from '../pipeline/route.ts';
import type { RouteResult, Rule, SkippedDelivery } from '../pipeline/rule.ts';
import type { PolicySettings, Site } from '../pipeline/policy.ts';
import { formatInstant, isValidZone } from '../pipeline/schedule.ts';
import { displayZone, patientZone } from '../pipeline/zones.ts';
import type { SubjectState } from '../store/store.ts';
import { TRIGGER_TYPES, type Delivery, type Trigger } from '../types.ts';
import { applyRouteResult } from './apply.ts';
import { renderVariables, unsubscribeLinks, type UnsubscribeLinks } from './unsubscribe.ts';

/** Unsubscribe links in mapping tests and replays: signed with a fixed key (they are never served). */
function testLinks(policy: PolicyConfig): UnsubscribeLinks {
  return unsubscribeLinks({ key: Buffer.from('carerelay-mapping-tests'), publicUrl: policy.publicUrl, ttlDays: policy.unsubscribe.ttlDays });
}

// ---------------------------------------------------------------------------------------
// The in-memory pipeline

/** What a mapping test sees of a delivery. */
export const SimStatus = {
  /** Planned, not yet due. */
  Pending: 'pending',
  /** Planned, then moved to another time by a later event (e.g. a reschedule); not yet due. */
  Moved: 'moved',
  /** Its due time came while the clock advanced: it would have been handed to the output. */
  Sent: 'sent',
  Cancelled: 'cancelled',
} as const;
export type SimStatus = (typeof SimStatus)[keyof typeof SimStatus];

export interface SimDelivery {
  delivery: Delivery;
  status: SimStatus;
  /** The first plannedAt, to tell a move. */
  firstPlannedAt: string;
}

interface Tracked {
  state: DeliveryState;
  sent: boolean;
  moved: boolean;
  firstPlannedAt: string;
}

/** What applying one op did to one delivery. */
export interface SimChange {
  op: 'plan' | 'replan' | 'cancel';
  change: DeliveryChange;
  /** Why nothing changed (route.ts UnchangedReason). */
  reason?: string;
  delivery: Delivery;
  /** For cancels: the cancelling trigger type, or "expired". */
  cause?: string;
}

export interface RoutedStep {
  result: RouteResult;
  changes: SimChange[];
}

/** What one input did, for replay lines and test diagnostics. */
export interface SimStep {
  triggers: Trigger[];
  /** Set when the input gave no trigger: "ignored: …" or "rejected: …". */
  note?: string;
  /** One per trigger. */
  results: RoutedStep[];
}

/**
 * The pipeline with Maps for the store and the queue. `zone` is the patient/site zone
 * routing and templates use; `hl7Zone` reads HL7 times without an offset.
 */
export class Simulator {
  readonly #rules: readonly Rule[];
  readonly #zone: string;
  readonly #hl7Zone: string;
  readonly #policy: Pick<PolicySettings, 'sites' | 'timezone'>;
  /** Every trigger routed, with the zone of the input it came through (HL7 inputs: hl7Zone). */
  readonly #triggers = new Map<string, { trigger: Trigger; inputZone?: string }>();
  readonly #states = new Map<string, SubjectState>();
  readonly #deliveries = new Map<string, Tracked>();
  readonly skipped: SkippedDelivery[] = [];
  #clock: number;

  constructor(rules: readonly Rule[], options: { zone: string; hl7Zone?: string; now: number; sites?: readonly Site[] }) {
    this.#rules = rules;
    this.#zone = options.zone;
    this.#hl7Zone = options.hl7Zone ?? options.zone;
    // `zone` stands for the organisation's zone; configured sites keep theirs (pipeline/zones.ts).
    this.#policy = { timezone: options.zone, sites: options.sites ?? [] };
    this.#clock = options.now;
  }

  get clock(): number {
    return this.#clock;
  }

  /** Moves the clock forward (never back) and "sends" every pending delivery now due. */
  advance(to: number): void {
    if (to > this.#clock) this.#clock = to;
    for (const tracked of this.#deliveries.values()) {
      if (tracked.state.status !== 'pending' || tracked.sent) continue;
      const due = parseInstant(tracked.state.delivery.dueAt);
      if (due !== undefined && due <= this.#clock) {
        tracked.sent = true;
        tracked.state = { ...tracked.state, status: 'finished' };
      }
    }
  }

  /** One HL7 message or batch, received at the current clock. */
  hl7(text: string | Buffer): SimStep[] {
    const receivedAt = formatInstant(this.#clock, this.#zone);
    return parseHl7Batch(text).map((message) => {
      const normalized = normalizeHl7(message, { receivedAt, timezone: this.#hl7Zone });
      if (normalized.kind === 'ignored') return { triggers: [], note: `ignored: ${normalized.reason}`, results: [] };
      if (normalized.kind === 'rejected') return { triggers: [], note: `rejected: ${normalized.reason}`, results: [] };
      const applied = applyStoredState(normalized, {
        appointment: (id) => this.#states.get(`appointment/${id}`),
        encounter: (id) => this.#states.get(`encounter/${id}`),
        appointmentsOfPatient: (patientId) => [...this.#states.values()].filter((s) => s.kind === 'appointment' && s.patientId === patientId),
      });
      if (applied.kind !== 'triggers') return { triggers: [], results: [] };
      for (const state of applied.states) this.#store(state);
      for (const t of applied.triggers) this.#triggers.set(t.id, { trigger: t, inputZone: this.#hl7Zone });
      return { triggers: applied.triggers, results: applied.triggers.map((t) => this.route(t)) };
    });
  }

  /** A normalized trigger (e.g. from FHIR), received at the current clock. */
  trigger(trigger: Trigger): SimStep {
    for (const kind of ['appointment', 'encounter'] as const) {
      const subject = trigger[kind];
      if (subject?.id) {
        this.#store({
          kind,
          id: subject.id,
          patientId: trigger.patient.id,
          asOf: trigger.occurredAt,
          ...(subject.status ? { status: subject.status } : {}),
          ...(subject.start ? { start: subject.start } : {}),
          ...(subject.end ? { end: subject.end } : {}),
        });
      }
    }
    if (!this.#triggers.has(trigger.id)) this.#triggers.set(trigger.id, { trigger });
    return { triggers: [trigger], results: [this.route(trigger)] };
  }

  /** The zone a delivery's times are shown in: its site's, else its input's, else each time's own offset. */
  displayZoneOf(delivery: Delivery): string | undefined {
    const origin = this.#triggers.get(delivery.triggerId);
    return origin ? displayZone(origin.trigger, this.#policy, origin.inputZone) : undefined;
  }

  /** Routes a trigger at the current clock and applies the result to the deliveries. */
  route(trigger: Trigger): RoutedStep {
    const result = route(trigger, this.#rules, this.#clock, { zoneFor: (t) => patientZone(t, this.#policy) });
    const deliveries = this.#deliveries;
    const applied = applyRouteResult(result, {
      get: (id) => deliveries.get(id)?.state,
      *byCancelKey(key) {
        for (const tracked of deliveries.values()) if (tracked.state.delivery.cancelKeys.includes(key)) yield tracked.state;
      },
      put: (state, change) => {
        const tracked = deliveries.get(state.delivery.id);
        if (!tracked) {
          deliveries.set(state.delivery.id, { state, sent: false, moved: false, firstPlannedAt: state.delivery.plannedAt });
          return;
        }
        if (change === 'replanned' && parseInstant(state.delivery.plannedAt) !== parseInstant(tracked.state.delivery.plannedAt)) tracked.moved = true;
        if (change === 'revived') {
          tracked.moved = false;
          tracked.firstPlannedAt = state.delivery.plannedAt;
        }
        tracked.state = state;
      },
    });
    // A replan for a rule that never planned anything for this subject is not news.
    const changes: SimChange[] = applied
      .filter((c) => c.op === 'cancel' || c.reason !== 'not_found')
      .map((c) => ({ op: c.op, change: c.change, delivery: c.delivery, ...(c.reason ? { reason: c.reason } : {}), ...(c.op === 'cancel' ? { cause: c.cause } : {}) }));
    this.skipped.push(...result.skipped);
    return { result, changes };
  }

  /** Every delivery ever planned, in planning order, with its status now. */
  deliveries(): SimDelivery[] {
    return [...this.#deliveries.values()].map((t) => ({
      delivery: t.state.delivery,
      status: t.sent ? 'sent' : t.state.status === 'cancelled' ? 'cancelled' : t.moved ? 'moved' : 'pending',
      firstPlannedAt: t.firstPlannedAt,
    }));
  }

  #store(state: SubjectState): void {
    const key = `${state.kind}/${state.id}`;
    const old = this.#states.get(key);
    // As the store does: a state applies unless the stored one reflects a newer event.
    if (old && (parseInstant(old.asOf) ?? 0) > (parseInstant(state.asOf) ?? 0)) return;
    this.#states.set(key, { ...old, ...state });
  }
}

// ---------------------------------------------------------------------------------------
// Loading the mappings the way the server does

/**
 * Loads connectors (for the outputs) and mappings from the configuration directory above
 * `mappingsDir`. Throws ConfigError with every issue.
 */
export async function loadForSimulation(mappingsDir: string, env: Env): Promise<MappingSet & { policy: PolicyConfig }> {
  const dir = path.resolve(mappingsDir);
  const configDir = path.dirname(dir);
  const plan = await loadConfig({ configDir, env, outputSpecs, checkSecrets: false });
  const issues: ConfigIssue[] = [];
  const mappings = await loadMappings({ configDir, env, outputs: outputInfos(plan.outputs, outputSpecs), issues, mappingsDir: dir });
  if (issues.length > 0) throw new ConfigError(issues);
  return { ...mappings, policy: plan.policy };
}

// ---------------------------------------------------------------------------------------
// Mapping tests

export interface MappingTestFailure {
  /** The test file, as shown. */
  file: string;
  /** The test name, or "(file)" / "(configuration)" when the file or config cannot be used. */
  test: string;
  /** Readable, line by line: "- " expected, "+ " actual, "  " same. */
  diff: string;
}

export interface MappingTestResults {
  passed: number;
  failed: MappingTestFailure[];
  /** Every test run, in order. */
  results: { file: string; test: string; ok: boolean }[];
}

export interface RunMappingTestsOptions {
  /** ${VAR} interpolation for the connectors and mappings; default process.env. */
  env?: Env;
  /** Run only these test files (paths); default every *.test.yaml of the directory. */
  files?: string[];
}

/** Runs every `*.test.yaml` in `dir` (a mappings directory) against the mappings there. */
export async function runMappingTests(dir: string, options: RunMappingTestsOptions = {}): Promise<MappingTestResults> {
  const results: MappingTestResults = { passed: 0, failed: [], results: [] };
  const mappingsDir = path.resolve(dir);
  const fail = (file: string, test: string, diff: string): void => {
    results.failed.push({ file, test, diff });
    results.results.push({ file, test, ok: false });
  };
  let mappings: MappingSet & { policy: PolicyConfig };
  try {
    mappings = await loadForSimulation(mappingsDir, options.env ?? process.env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    fail(displayPath(mappingsDir), '(configuration)', error.issues.map(formatConfigIssue).join('\n'));
    return results;
  }
  const files = options.files?.map((f) => path.resolve(f)) ?? (await readdir(mappingsDir)).filter(isMappingTestFile).sort().map((n) => path.join(mappingsDir, n));
  for (const file of files) {
    const display = displayPath(file);
    let parsed: ParsedTestFile;
    try {
      parsed = await readTestFile(file);
    } catch (error) {
      fail(display, '(file)', error instanceof ConfigError ? error.issues.map(formatConfigIssue).join('\n') : String((error as Error).message));
      continue;
    }
    const rules = rulesFor(mappings, file, parsed.mapping);
    for (const test of parsed.tests) {
      let diff: string | undefined;
      try {
        diff = await runOne(test, rules, mappings, file);
      } catch (error) {
        diff = `${test.where}: ${(error as Error).message}`;
      }
      if (diff === undefined) {
        results.passed++;
        results.results.push({ file: display, test: test.name, ok: true });
      } else fail(display, test.name, diff);
    }
  }
  return results;
}

/** The rules of `mapping:` (or the sibling x.yaml of x.test.yaml), else every rule. */
function rulesFor(mappings: MappingSet, testFile: string, mapping: string | undefined): readonly Rule[] {
  const target = path.resolve(path.dirname(testFile), mapping ?? path.basename(testFile).replace(/\.test\.yaml$/, '.yaml'));
  const info = mappings.files.find((f) => f.path === target);
  if (!info) {
    if (mapping !== undefined) throw new Error(`mapping file ${mapping} is not loaded (not in ${displayPath(mappings.dir)}, or it has errors)`);
    return mappings.rules;
  }
  return mappings.rules.filter((r) => info.ruleIds.includes(r.id));
}

interface GivenItem {
  where: string;
  at?: number;
  hl7?: string;
  file?: string;
  trigger?: Record<string, unknown>;
}

interface ExpectedDelivery {
  where: string;
  rule: string;
  about?: string;
  step?: number;
  status?: SimStatus;
  due?: string;
  planned?: string;
  expires?: string;
  to?: string;
  channel?: string;
  output?: string;
  purpose?: string;
  variant?: string;
  language?: string;
  text?: string;
  textContains: string[];
  subjectContains: string[];
  htmlContains: string[];
}

interface TestCase {
  name: string;
  /** file:line:column of the test, for errors in its inputs. */
  where: string;
  now: number;
  timezone: string;
  hl7Timezone?: string;
  until?: number;
  given: GivenItem[];
  deliveries: ExpectedDelivery[];
  skipped?: { rule: string; reason: string; about?: string }[];
}

interface ParsedTestFile {
  mapping?: string;
  tests: TestCase[];
}

const instantSchema = {
  type: 'string',
  pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:?\\d{2})$',
  'x-hint': 'an ISO-8601 instant with its offset, e.g. 2025-06-01T09:00:00+02:00',
} as const;
const containsSchema = (description: string): JsonSchema => ({ description, anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] });

/** JSON Schema of a mapping test file (documents the format; mappings/README.md explains it). */
export const mappingTestFileSchema = {
  type: 'object',
  description: 'A mapping test file: tests run against the rules of the mapping file beside it.',
  additionalProperties: false,
  required: ['tests'],
  properties: {
    mapping: { type: 'string', description: 'Mapping file whose rules are routed, relative to this file; default: x.yaml for x.test.yaml (else all rules).' },
    tests: {
      type: 'array',
      minItems: 1,
      description: 'The tests; each starts from empty state.',
      items: {
        type: 'object',
        description: 'One test.',
        additionalProperties: false,
        required: ['name', 'now', 'timezone', 'given', 'expect'],
        properties: {
          name: { type: 'string', minLength: 1, description: 'What the test shows, in words.' },
          now: { ...instantSchema, description: 'The clock when the first input arrives.' },
          timezone: { type: 'string', format: 'iana-timezone', description: "The organisation's zone (sites configured in the policy keep theirs): due times are in it." },
          hl7Timezone: { type: 'string', format: 'iana-timezone', description: 'The HL7 input\'s zone: HL7 times without an offset, and dates shown when no site zone applies; default: timezone.' },
          until: { ...instantSchema, description: 'Advance the clock to this instant at the end (deliveries due by then are sent); default: the last input time.' },
          given: {
            type: 'array',
            minItems: 1,
            description: 'Inputs, in order.',
            items: {
              type: 'object',
              description: 'One input: exactly one of hl7, file, trigger; optionally at.',
              additionalProperties: false,
              minProperties: 1,
              properties: {
                hl7: { type: 'string', description: 'Inline HL7v2 message(s), one segment per line.' },
                file: { type: 'string', description: 'Path relative to the test file: .hl7 (HL7v2, batches allowed), .json or .ndjson (normalized triggers).' },
                trigger: { type: 'object', description: 'A normalized trigger (docs/trigger.md); id, times, source and empty lists are filled in.' },
                at: { ...instantSchema, description: 'Clock for this input (never before the previous one); default: the previous clock.' },
              },
            },
          },
          expect: {
            type: 'object',
            description: 'What must have happened by the end.',
            additionalProperties: false,
            required: ['deliveries'],
            properties: {
              deliveries: {
                description: 'Every delivery ever planned during the test (any status), or "none".',
                anyOf: [
                  { const: 'none' },
                  {
                    type: 'array',
                    items: {
                      type: 'object',
                      description: 'One expected delivery; keys left out are not compared.',
                      additionalProperties: false,
                      required: ['rule'],
                      properties: {
                        rule: { type: 'string', description: 'Rule id.' },
                        about: { type: 'string', description: 'Subject key, e.g. appointment/A-1001.' },
                        step: { type: 'integer', minimum: 0, description: 'Cadence step (0 for single-time rules).' },
                        status: { enum: Object.values(SimStatus), description: 'pending, moved (replanned to another time), sent (due time passed), cancelled.' },
                        due: { ...instantSchema, description: 'Due time (compared as an instant).' },
                        planned: { ...instantSchema, description: "The rule's at, resolved (compared as an instant)." },
                        expires: { ...instantSchema, description: 'Expiry (compared as an instant).' },
                        to: { type: 'string', description: 'Recipient address.' },
                        channel: { type: 'string', description: 'sms, email, webhook, crm.' },
                        output: { type: 'string', description: 'Output name.' },
                        purpose: { type: 'string', description: 'Rule purpose.' },
                        variant: { type: 'string', description: 'A/B variant id.' },
                        language: { type: 'string', description: 'Language of the template file used (default file: en).' },
                        text: { type: 'string', description: 'The whole rendered text (sms body / email text part).' },
                        'text contains': containsSchema('Text(s) the rendered body must contain.'),
                        'subject contains': containsSchema('Text(s) the email subject must contain.'),
                        'html contains': containsSchema('Text(s) the email HTML part must contain.'),
                      },
                    },
                  },
                ],
              },
              skipped: {
                type: 'array',
                description: 'Matches routing chose not to plan (holdout, expired, no_anchor); compared when given.',
                items: {
                  type: 'object',
                  description: 'One skipped match.',
                  additionalProperties: false,
                  required: ['rule', 'reason'],
                  properties: {
                    rule: { type: 'string', description: 'Rule id.' },
                    reason: { enum: ['expired', 'holdout', 'no_anchor'], description: 'Why it was not planned.' },
                    about: { type: 'string', description: 'Subject key.' },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
} as const satisfies JsonSchema;

let sharedAjv: ReturnType<typeof createAjv> | undefined;

async function readTestFile(file: string): Promise<ParsedTestFile> {
  const display = displayPath(file);
  const doc = readYamlDocument(display, await readFile(file, 'utf8'), {});
  const issues = [...doc.issues];
  if (doc.value !== undefined) {
    sharedAjv ??= createAjv();
    issues.push(...validateWithSchema(sharedAjv, mappingTestFileSchema, doc.value, display, doc.locate));
  }
  const value = doc.value as { mapping?: string; tests?: unknown[] } | undefined;
  const tests: TestCase[] = [];
  for (const [index, raw] of (issues.length === 0 ? value?.tests ?? [] : []).entries()) {
    tests.push(readTest(raw as Record<string, unknown>, index, display, doc.locate, issues));
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return { ...(value?.mapping ? { mapping: value.mapping } : {}), tests };
}

function readTest(raw: Record<string, unknown>, index: number, display: string, locate: Locate, issues: ConfigIssue[]): TestCase {
  const at = (p: (string | number)[]): string => {
    const position = locate(['tests', index, ...p]);
    return position ? `${display}:${position.line}:${position.column}` : display;
  };
  const list = (v: unknown): string[] => (v === undefined ? [] : Array.isArray(v) ? v.map(String) : [String(v)]);
  const timezone = raw.timezone as string;
  if (!isValidZone(timezone)) issues.push({ file: display, ...locate(['tests', index, 'timezone']), message: `unknown time zone "${timezone}"` });
  const given = (raw.given as Record<string, unknown>[]).map((item, i): GivenItem => {
    const kinds = ['hl7', 'file', 'trigger'].filter((k) => item[k] !== undefined);
    if (kinds.length !== 1) {
      issues.push({ file: display, ...locate(['tests', index, 'given', i]), message: `an input has exactly one of hl7, file or trigger (got ${kinds.join(', ') || 'none'})` });
    }
    return {
      where: at(['given', i]),
      ...(typeof item.at === 'string' ? { at: Date.parse(item.at) } : {}),
      ...(typeof item.hl7 === 'string' ? { hl7: item.hl7 } : {}),
      ...(typeof item.file === 'string' ? { file: item.file } : {}),
      ...(isRecord(item.trigger) ? { trigger: item.trigger } : {}),
    };
  });
  const expect = raw.expect as { deliveries: 'none' | Record<string, unknown>[]; skipped?: { rule: string; reason: string; about?: string }[] };
  const deliveries = expect.deliveries === 'none' ? [] : expect.deliveries.map((d, i): ExpectedDelivery => ({
    where: at(['expect', 'deliveries', i]),
    rule: d.rule as string,
    ...pick(d, ['about', 'status', 'due', 'planned', 'expires', 'to', 'channel', 'output', 'purpose', 'variant', 'language', 'text']),
    ...(typeof d.step === 'number' ? { step: d.step } : {}),
    textContains: list(d['text contains']),
    subjectContains: list(d['subject contains']),
    htmlContains: list(d['html contains']),
  }));
  return {
    name: raw.name as string,
    where: at([]),
    now: Date.parse(raw.now as string),
    timezone,
    ...(typeof raw.hl7Timezone === 'string' ? { hl7Timezone: raw.hl7Timezone } : {}),
    ...(typeof raw.until === 'string' ? { until: Date.parse(raw.until) } : {}),
    given,
    deliveries,
    ...(expect.skipped ? { skipped: expect.skipped } : {}),
  };
}

function pick(source: Record<string, unknown>, keys: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = String(source[key]);
  return out;
}

/** Runs one test; undefined when it passes, else the diff. */
async function runOne(test: TestCase, rules: readonly Rule[], mappings: MappingSet & { policy: PolicyConfig }, testFile: string): Promise<string | undefined> {
  const sites = mappings.policy.settings.sites;
  const sim = new Simulator(rules, { zone: test.timezone, ...(test.hl7Timezone ? { hl7Zone: test.hl7Timezone } : {}), now: test.now, sites });
  const notes: string[] = [];
  for (const [i, item] of test.given.entries()) {
    if (item.at !== undefined) {
      if (item.at < sim.clock) throw new Error(`given ${i + 1} (${item.where}): at is before the previous input's time; inputs are in time order`);
      sim.advance(item.at);
    }
    const steps = await feed(sim, item, path.dirname(testFile), i, test.timezone);
    for (const step of steps) if (step.note?.startsWith('rejected')) notes.push(`given ${i + 1} (${item.where}): ${step.note}`);
  }
  if (test.until !== undefined) sim.advance(test.until);
  else sim.advance(sim.clock);
  if (notes.length > 0) return notes.join('\n');
  return compare(test, sim, mappings);
}

async function feed(sim: Simulator, item: GivenItem, baseDir: string, index: number, zone: string): Promise<SimStep[]> {
  if (item.hl7 !== undefined) return hl7Steps(sim, item.hl7.trim(), item.where);
  if (item.trigger !== undefined) return [sim.trigger(completeTrigger(item.trigger, sim, `given ${index + 1} (${item.where})`, zone))];
  const file = path.resolve(baseDir, item.file!);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`given ${index + 1} (${item.where}): cannot read ${displayPath(file)} (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (/\.(nd)?json$/i.test(file)) {
    return triggersFromJson(bytes.toString('utf8'), displayPath(file)).map((t) => sim.trigger(completeTrigger(t, sim, displayPath(file), zone)));
  }
  return hl7Steps(sim, bytes, item.where);
}

function hl7Steps(sim: Simulator, text: string | Buffer, where: string): SimStep[] {
  try {
    return sim.hl7(text);
  } catch (error) {
    if (error instanceof Hl7ParseError) throw new Error(`${where}: HL7 cannot be parsed: ${error.message}`);
    throw error;
  }
}

function triggersFromJson(text: string, display: string): Record<string, unknown>[] {
  const trimmed = text.trim();
  const values: unknown[] = [];
  try {
    if (trimmed.startsWith('[')) values.push(...(JSON.parse(trimmed) as unknown[]));
    else if (trimmed.startsWith('{') && !trimmed.includes('\n{')) values.push(JSON.parse(trimmed));
    else for (const line of trimmed.split(/\r?\n/)) if (line.trim() !== '') values.push(JSON.parse(line));
  } catch (error) {
    throw new Error(`${display}: not JSON or NDJSON triggers (${(error as Error).message})`);
  }
  return values.filter(isRecord);
}

/** Fills what a hand-written trigger may leave out: id, times at the clock, source, empty lists. */
export function completeTrigger(raw: Record<string, unknown>, sim: Pick<Simulator, 'clock'>, where: string, zone = 'UTC'): Trigger {
  const type = raw.type;
  if (typeof type !== 'string' || !(TRIGGER_TYPES as readonly string[]).includes(type)) {
    throw new Error(`${where}: trigger type must be one of ${TRIGGER_TYPES.join(', ')}; got ${JSON.stringify(type)}`);
  }
  const patient = isRecord(raw.patient) ? raw.patient : undefined;
  if (!patient || typeof patient.id !== 'string') throw new Error(`${where}: a trigger needs patient.id`);
  const now = formatInstant(sim.clock, zone);
  const id = typeof raw.id === 'string' ? raw.id : createHash('sha256').update(JSON.stringify([raw, now])).digest('hex').slice(0, 32);
  return {
    ...raw,
    id,
    type,
    occurredAt: typeof raw.occurredAt === 'string' ? raw.occurredAt : now,
    receivedAt: typeof raw.receivedAt === 'string' ? raw.receivedAt : now,
    source: isRecord(raw.source) ? raw.source : { format: 'fhir', sender: 'mapping-test', messageType: 'test', messageId: id },
    patient: { identifiers: [{ value: patient.id }], telecom: [], deceased: false, ...patient },
  } as unknown as Trigger;
}

interface Actual {
  sim: SimDelivery;
  rendered?: RenderedMessage;
  renderError?: string;
}

function renderAll(sim: Simulator, mappings: MappingSet & { policy: PolicyConfig }): Actual[] {
  const links = testLinks(mappings.policy);
  return sim.deliveries().map((d) => {
    try {
      const variables = renderVariables(d.delivery, links, sim.clock);
      return { sim: d, rendered: renderDelivery(mappings.templates, d.delivery, { zone: sim.displayZoneOf(d.delivery), ...(variables ? { variables } : {}) }) };
    } catch (error) {
      return { sim: d, renderError: (error as Error).message };
    }
  });
}

/** Readable diff of expected vs actual; undefined when they agree. */
function compare(test: TestCase, sim: Simulator, mappings: MappingSet & { policy: PolicyConfig }): string | undefined {
  const actual = renderAll(sim, mappings);
  const unmatched = new Set(actual);
  const lines: string[] = [];
  let failed = false;
  for (const expected of test.deliveries) {
    const match = [...unmatched].find(
      (a) => a.sim.delivery.ruleId === expected.rule && (expected.about === undefined || a.sim.delivery.subjectKey === expected.about) && (expected.step === undefined || a.sim.delivery.step === expected.step),
    );
    if (!match) {
      failed = true;
      lines.push(`- delivery ${expected.rule}${expected.about ? ` @ ${expected.about}` : ''} (expected at ${expected.where}; not planned)`);
      continue;
    }
    unmatched.delete(match);
    const fieldLines = compareDelivery(expected, match);
    if (fieldLines.some((l) => !l.startsWith(' '))) failed = true;
    lines.push(`  delivery ${describeDelivery(match.sim.delivery)}`, ...fieldLines);
  }
  for (const extra of unmatched) {
    failed = true;
    lines.push(`+ delivery ${describeDelivery(extra.sim.delivery)} (planned, not expected)`, ...actualLines(extra).map((l) => `+   ${l}`));
  }
  if (test.skipped) {
    const skippedLeft = [...sim.skipped];
    for (const expected of test.skipped) {
      const i = skippedLeft.findIndex((s) => s.ruleId === expected.rule && s.reason === expected.reason && (expected.about === undefined || s.subjectKey === expected.about));
      if (i < 0) {
        failed = true;
        lines.push(`- skipped ${expected.rule} (${expected.reason})`);
      } else {
        lines.push(`  skipped ${expected.rule} (${expected.reason})`);
        skippedLeft.splice(i, 1);
      }
    }
    for (const extra of skippedLeft) {
      failed = true;
      lines.push(`+ skipped ${extra.ruleId} @ ${extra.subjectKey} (${extra.reason})`);
    }
  }
  return failed ? lines.join('\n') : undefined;
}

function describeDelivery(d: Pick<Delivery, 'ruleId' | 'subjectKey' | 'step'>): string {
  return `${d.ruleId} @ ${d.subjectKey}${d.step > 0 ? ` #${d.step}` : ''}`;
}

function actualLines(a: Actual): string[] {
  const d = a.sim.delivery;
  return [
    `status: ${a.sim.status}`,
    `due: ${d.dueAt}`,
    `channel: ${d.channel}`,
    ...(d.to ? [`to: ${d.to}`] : []),
    ...(d.variant ? [`variant: ${d.variant}`] : []),
    ...(a.rendered ? [...(a.rendered.subject !== undefined ? [`subject: ${JSON.stringify(a.rendered.subject)}`] : []), `text: ${JSON.stringify(a.rendered.text)}`] : [`render error: ${a.renderError}`]),
  ];
}

function compareDelivery(expected: ExpectedDelivery, a: Actual): string[] {
  const d = a.sim.delivery;
  const out: string[] = [];
  const same = (key: string, value: string) => out.push(`    ${key}: ${value}`);
  const differ = (key: string, want: string, got: string | undefined) => out.push(`-   ${key}: ${want}`, `+   ${key}: ${got ?? '(none)'}`);
  const check = (key: string, want: string | undefined, got: string | undefined, instant = false) => {
    if (want === undefined) return;
    const equal = instant ? got !== undefined && parseInstant(got) === parseInstant(want) : got === want;
    if (equal) same(key, got!);
    else differ(key, want, got);
  };
  check('status', expected.status, a.sim.status);
  check('due', expected.due, d.dueAt, true);
  check('planned', expected.planned, d.plannedAt, true);
  check('expires', expected.expires, d.expiresAt, true);
  check('to', expected.to, d.to);
  check('channel', expected.channel, d.channel);
  check('output', expected.output, d.output);
  check('purpose', expected.purpose, d.purpose);
  check('variant', expected.variant, d.variant);
  const needsText = expected.language !== undefined || expected.text !== undefined || expected.textContains.length + expected.subjectContains.length + expected.htmlContains.length > 0;
  if (needsText && !a.rendered) {
    out.push(`+   render error: ${a.renderError}`);
    out.push('-   (a rendered message)');
    return out;
  }
  const r = a.rendered;
  check('language', expected.language, r?.language);
  check('text', expected.text, r?.text);
  for (const [key, wants, got] of [
    ['text', expected.textContains, r?.text],
    ['subject', expected.subjectContains, r?.subject],
    ['html', expected.htmlContains, r?.html],
  ] as const) {
    for (const want of wants) {
      if (got !== undefined && got.includes(want)) same(`${key} contains`, JSON.stringify(want));
      else out.push(`-   ${key} contains: ${JSON.stringify(want)}`, `+   ${key}: ${got === undefined ? '(none)' : JSON.stringify(got)}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Dry-run replay

export interface ReplayOptions {
  /** The mappings directory; connectors/ is read from the directory above it. */
  mappingsDir: string;
  /** Routing clock (ISO instant); default the current time. Messages are replayed as if received then. */
  now?: string;
  /** Patient/site zone for due times and templates; also read HL7 times without an offset in it. */
  timezone: string;
  env?: Env;
}

/**
 * Replays files (HL7v2 .hl7 — batches allowed —, or .json/.ndjson triggers) in order through
 * the mappings, keeping state between them (a cancel after a booking cancels its reminder),
 * and describes what would be planned, moved, cancelled and skipped, and what would be sent
 * when. Nothing is stored or sent. Throws ConfigError for configuration problems.
 */
export async function replayDryRun(files: readonly string[], options: ReplayOptions): Promise<string[]> {
  if (!isValidZone(options.timezone)) throw new RangeError(`unknown time zone "${options.timezone}" (expected an IANA name like Europe/Paris)`);
  const now = options.now === undefined ? Date.now() : parseInstant(options.now);
  if (now === undefined) throw new RangeError(`"now" must be an ISO-8601 instant with offset, got "${options.now}"`);
  const mappings = await loadForSimulation(options.mappingsDir, options.env ?? process.env);
  const sim = new Simulator(mappings.rules, { zone: options.timezone, now, sites: mappings.policy.settings.sites });
  const lines: string[] = [];
  for (const file of files) {
    const display = displayPath(path.resolve(file));
    let steps: SimStep[];
    try {
      const bytes = await readFile(file);
      steps = /\.(nd)?json$/i.test(file)
        ? triggersFromJson(bytes.toString('utf8'), display).map((t) => sim.trigger(completeTrigger(t, sim, display, options.timezone)))
        : sim.hl7(bytes);
    } catch (error) {
      lines.push(`${display}: ${error instanceof Hl7ParseError ? 'HL7 cannot be parsed: ' : ''}${(error as Error).message}`);
      continue;
    }
    steps.forEach((step, i) => {
      const label = `${display}${steps.length > 1 ? ` #${i + 1}` : ''}`;
      if (step.triggers.length === 0) lines.push(`${label}: no trigger (${step.note ?? 'nothing to do'})`);
      step.triggers.forEach((trigger, j) => {
        lines.push(`${label}: ${trigger.source.messageType} ${trigger.source.messageId} → ${trigger.type} ${describeSubject(trigger)}`);
        const before = lines.length;
        const { result, changes } = step.results[j]!;
        for (const c of changes) {
          const line = changeLine(c, mappings, sim);
          if (line) lines.push(`  ${line}`);
        }
        for (const s of result.skipped) {
          lines.push(`  skip    ${describeDelivery({ ruleId: s.ruleId, subjectKey: s.subjectKey, step: s.step })}: ${s.reason}${s.plannedAt ? ` (would be ${s.plannedAt}, expires ${s.expiresAt})` : ''}`);
        }
        if (lines.length === before) lines.push('  (no rule matches)');
      });
    });
  }
  return lines;
}

function describeSubject(trigger: Trigger): string {
  if (trigger.appointment?.id) return `appointment/${trigger.appointment.id}`;
  if (trigger.encounter?.id) return `encounter/${trigger.encounter.id}`;
  return `patient/${trigger.patient.id}`;
}

/** One replay line per change that matters; undefined for non-events. */
function changeLine(c: SimChange, mappings: MappingSet & { policy: PolicyConfig }, sim: Simulator): string | undefined {
  switch (c.change) {
    case 'added':
      return `plan    ${planLine(c.delivery, mappings, sim)}`;
    case 'revived':
      return `plan    ${planLine(c.delivery, mappings, sim)} (again, after a cancel)`;
    case 'replanned':
      return `move    ${planLine(c.delivery, mappings, sim)}`;
    case 'cancelled':
      return `cancel  ${describeDelivery(c.delivery)} (${c.cause ?? 'cancelled'})`;
    case 'unchanged':
      if (c.op === 'cancel' && c.reason !== 'cancelled') return `keep    ${describeDelivery(c.delivery)} (${c.reason}: not cancelled)`;
      if (c.op !== 'cancel' && c.reason !== 'same') return `keep    ${describeDelivery(c.delivery)} (${c.reason})`;
      if (c.op === 'plan' && c.reason === 'same') return `same    ${describeDelivery(c.delivery)} (already planned)`;
      return undefined;
    default:
      c.change satisfies never;
      return undefined;
  }
}

function planLine(d: Delivery, mappings: MappingSet & { policy: PolicyConfig }, sim: Simulator): string {
  let text: string;
  try {
    const variables = renderVariables(d, testLinks(mappings.policy), sim.clock);
    const r = renderDelivery(mappings.templates, d, { zone: sim.displayZoneOf(d), ...(variables ? { variables } : {}) });
    const shown = (r.subject ?? r.text).replace(/\s+/g, ' ').trim();
    text = `[${r.language}] ${JSON.stringify(shown.length > 100 ? `${shown.slice(0, 99)}…` : shown)}`;
  } catch (error) {
    text = `render error: ${(error as Error).message}`;
  }
  return `${describeDelivery(d)} ${d.channel} via ${d.output}${d.to ? ` to ${d.to}` : ''} at ${d.dueAt}${d.variant ? ` variant ${d.variant}` : ''} ${text}`;
}
