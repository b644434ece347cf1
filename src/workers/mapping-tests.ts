// Mapping tests (mappings/README.md "Mapping tests"): `<name>.test.yaml` files beside the
// mapping files, run by `carerelay test` through the in-memory pipeline (workers/simulate.ts),
// send-time consent and safety checks included. Each test starts from empty state, feeds its
// inputs and consent events on a clock, and compares what was planned, sent, suppressed (and
// why) and replied with `expect`. The format is documented in mappings/README.md and at the top
// of every shipped mappings/*.test.yaml; its JSON Schema is below.
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { displayPath } from '../config/load.ts';
import { isMappingTestFile, type MappingSet } from '../config/mappings.ts';
import { policyConfigOf, policySchema, type PolicyBlock } from '../config/policy-schema.ts';
import { createAjv, readYamlDocument, validateWithSchema, type Env, type JsonSchema, type Locate, type SourcePosition } from '../config/yaml.ts';
import type { ConfigIssue } from '../errors.ts';
import { ConfigError, formatConfigIssue } from '../errors.ts';
import type { PolicySettings } from '../pipeline/policy.ts';
import type { RenderedMessage } from '../pipeline/render.ts';
import type { Rule } from '../pipeline/rule.ts';
import { isValidZone } from '../pipeline/schedule.ts';
import { isRecord, parseInstant } from '../pipeline/values.ts';
import { CHANNELS, ConsentReason, PURPOSES, type Delivery } from '../types.ts';
import { NO_JOIN_INFO } from './video.ts';
import {
  SimStatus,
  Simulator,
  completeTrigger,
  describeDelivery,
  hl7Steps,
  loadForSimulation,
  testLinks,
  triggersFromJson,
  type SimConsentEvent,
  type SimDelivery,
  type SimStep,
  type SimWriteBack,
  type SimulationConfig,
} from './simulate.ts';
import type { WriteBackOperation, WriteBackResult } from '../outputs/write-back.ts';
import { STAFF_TASK_KINDS, type StaffTask } from '../store/store.ts';

export interface MappingTestFailure {
  /** The test file, as shown. */
  file: string;
  /** The test name, or "(file)" / "(configuration)" when the file or config cannot be used. */
  test: string;
  /** Readable, line by line: "- " expected, "+ " actual, "  " same. */
  diff: string;
}

/** One delivery as a test ended with it (`carerelay test --json`). */
export interface MappingTestDelivery {
  rule: string;
  subject: string;
  patient: string;
  channel: string;
  to?: string;
  status: SimStatus;
  reason?: string;
  due: string;
  /** When it actually left (after any quiet-hours move). */
  sent?: string;
}

export interface MappingTestResult {
  file: string;
  test: string;
  ok: boolean;
  /** Every delivery planned during the test (absent when the test could not run). */
  deliveries?: MappingTestDelivery[];
  /** Keyword confirmations sent. */
  replies?: Array<{ to: string; text: string }>;
  /** Write-backs of answers. */
  writeBacks?: SimWriteBack[];
  /** Staff tasks opened (kind, code, appointment). */
  tasks?: Array<{ kind: string; code?: string; appointment?: string }>;
}

export interface MappingTestResults {
  passed: number;
  failed: MappingTestFailure[];
  /** Every test run, in order. */
  results: MappingTestResult[];
}

export interface RunMappingTestsOptions {
  /** ${VAR} interpolation for the connectors and mappings; default process.env. */
  env?: Env;
  /** Run only these test files (paths); default every *.test.yaml of the directory. */
  files?: string[];
  /**
   * Performs the answers' write-backs (an integration test plugging a real output against its
   * stand-in); default: the simulated EHR, answering as the tests' `ehr` events say.
   */
  writeBack?: (output: string, operation: WriteBackOperation) => Promise<WriteBackResult>;
}

/** Runs every `*.test.yaml` in `dir` (a mappings directory) against the mappings there. */
export async function runMappingTests(dir: string, options: RunMappingTestsOptions = {}): Promise<MappingTestResults> {
  const results: MappingTestResults = { passed: 0, failed: [], results: [] };
  const mappingsDir = path.resolve(dir);
  const fail = (file: string, test: string, diff: string, outcome?: Outcome): void => {
    results.failed.push({ file, test, diff });
    results.results.push({ file, test, ok: false, ...outcome });
  };
  let config: SimulationConfig;
  try {
    config = await loadForSimulation(mappingsDir, options.env ?? process.env);
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
    let rules: readonly Rule[];
    try {
      rules = rulesFor(config, file, parsed.mapping);
    } catch (error) {
      fail(display, '(file)', (error as Error).message);
      continue;
    }
    for (const test of parsed.tests) {
      let outcome: Outcome | undefined;
      let diff: string | undefined;
      try {
        outcome = await runOne(test, rules, config, file, options);
        diff = outcome.diff;
      } catch (error) {
        diff = `${test.where}: ${(error as Error).message}`;
      }
      const details = outcome ? { deliveries: outcome.deliveries, replies: outcome.replies, writeBacks: outcome.writeBacks, tasks: outcome.tasks } : undefined;
      if (diff === undefined) {
        results.passed++;
        results.results.push({ file: display, test: test.name, ok: true, ...details });
      } else fail(display, test.name, diff, details);
    }
  }
  return results;
}

/**
 * The problems of the mapping tests (`*.test.yaml`) of `mappings`' directory, found without
 * running them — for `carerelay validate`, which checks them with the rest of the
 * configuration: the file's shape, zones and inputs (as `carerelay test` reads them), the
 * files its inputs name, and the mapping file it targets.
 */
export async function checkMappingTestFiles(mappings: MappingSet): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  let names: string[];
  try {
    names = (await readdir(mappings.dir)).filter(isMappingTestFile).sort();
  } catch {
    return issues; // no mappings directory: reported by the mappings loader
  }
  for (const name of names) {
    const file = path.join(mappings.dir, name);
    const display = displayPath(file);
    let parsed: ParsedTestFile;
    try {
      parsed = await readTestFile(file);
    } catch (error) {
      if (error instanceof ConfigError) issues.push(...error.issues);
      else issues.push({ file: display, message: `cannot read the file (${(error as NodeJS.ErrnoException).code ?? 'error'})` });
      continue;
    }
    if (parsed.mapping !== undefined && !mappings.files.some((f) => f.path === path.resolve(mappings.dir, parsed.mapping!))) {
      issues.push({ file: display, message: `mapping file ${parsed.mapping} is not in ${displayPath(mappings.dir)} (or it has errors)` });
    }
    for (const test of parsed.tests) {
      for (const item of test.given) {
        if (item.file === undefined) continue;
        try {
          await stat(path.resolve(mappings.dir, item.file));
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          issues.push({ file: display, ...item.position, message: `input file ${item.file} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? 'error'})`} (paths are relative to the test file)` });
        }
      }
    }
  }
  return issues;
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

/** The consent event kinds of `given` (besides the inputs hl7, file, trigger). */
const EVENT_KINDS = ['consent', 'sms', 'unsubscribe', 'optOut', 'grant', 'revoke', 'noContact', 'erase', 'ledger', 'ehr'] as const;
const INPUT_KINDS = ['hl7', 'file', 'trigger', ...EVENT_KINDS] as const;

interface GivenItem {
  where: string;
  /** Where the item is in its test file (for issues). */
  position?: SourcePosition;
  at?: number;
  hl7?: string;
  file?: string;
  trigger?: Record<string, unknown>;
  event?: SimConsentEvent;
}

interface ExpectedDelivery {
  where: string;
  rule: string;
  about?: string;
  step?: number;
  status?: SimStatus;
  reason?: string;
  due?: string;
  sent?: string;
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

interface ExpectedReply {
  to?: string;
  text?: string;
  textContains: string[];
}

/** Keys of an expected write-back or staff task: each compared when given. */
type Expected = Record<string, string>;

interface TestCase {
  name: string;
  /** file:line:column of the test, for errors in its inputs. */
  where: string;
  now: number;
  timezone: string;
  hl7Timezone?: string;
  until?: number;
  /** The test's own policy keys (config/policy-schema.ts), over the configuration's. */
  settings?: Partial<PolicySettings>;
  given: GivenItem[];
  deliveries: ExpectedDelivery[];
  skipped?: { rule: string; reason: string; about?: string }[];
  replies?: ExpectedReply[];
  writeBacks?: Expected[];
  tasks?: Expected[];
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
const patientRef = { type: 'string', minLength: 1, description: 'The patient id (the trigger\'s patient.id).' } as const;
const channelSchema = { enum: [...CHANNELS], description: 'sms, email, webhook, crm, fhir.' } as const;
const purposeSchema = { enum: [...PURPOSES], description: 'A purpose (docs/consent.md "Purposes").' } as const;

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
          until: { ...instantSchema, description: 'Advance the clock to this instant at the end (deliveries due by then are attempted); default: the last input time.' },
          settings: {
            ...policySchema,
            description: "This test's policy keys (the connectors policy block's format), over the configuration's; timezone stays the test's.",
          },
          given: {
            type: 'array',
            minItems: 1,
            description: 'Inputs and consent events, in order.',
            items: {
              type: 'object',
              description: `One input or consent event: exactly one of ${INPUT_KINDS.join(', ')}; optionally at.`,
              additionalProperties: false,
              minProperties: 1,
              properties: {
                hl7: { type: 'string', description: 'Inline HL7v2 message(s), one segment per line.' },
                file: { type: 'string', description: 'Path relative to the test file: .hl7 (HL7v2, batches allowed), .json or .ndjson (normalized triggers).' },
                trigger: { type: 'object', description: 'A normalized trigger (docs/trigger.md); id, times, source and empty lists are filled in.' },
                consent: { type: 'object', description: 'A FHIR R4 Consent resource, as a FHIR input would bring it.' },
                sms: {
                  type: 'object',
                  description: 'An inbound SMS (keywords: docs/consent.md).',
                  additionalProperties: false,
                  required: ['from', 'body'],
                  properties: {
                    from: { type: 'string', minLength: 1, description: 'The number it came from.' },
                    to: { type: 'string', description: 'The SMS output (its number) it was sent to; default: the first SMS output.' },
                    body: { type: 'string', description: 'The text.' },
                  },
                },
                unsubscribe: {
                  type: 'object',
                  description: 'An unsubscribe link used by whoever reads this email address.',
                  additionalProperties: false,
                  required: ['email', 'purpose'],
                  properties: {
                    email: { type: 'string', minLength: 1, description: 'The email address.' },
                    purpose: { enum: [...PURPOSES, 'all'], description: 'The purpose the email was sent for, or "all" (every non-care email).' },
                  },
                },
                optOut: {
                  type: 'object',
                  description: 'An opt-out recorded through the admin API.',
                  additionalProperties: false,
                  required: ['patient'],
                  properties: { patient: patientRef, channel: channelSchema, purposes: { type: 'array', items: purposeSchema, description: 'Default: every purpose.' } },
                },
                grant: { type: 'object', description: 'A grant.', additionalProperties: false, required: ['patient', 'purpose', 'channel'], properties: { patient: patientRef, purpose: purposeSchema, channel: channelSchema } },
                revoke: { type: 'object', description: 'A revocation.', additionalProperties: false, required: ['patient', 'purpose', 'channel'], properties: { patient: patientRef, purpose: purposeSchema, channel: channelSchema } },
                noContact: { type: 'object', description: "The organisation's no-contact flag.", additionalProperties: false, required: ['patient'], properties: { patient: patientRef } },
                erase: { type: 'object', description: 'A GDPR erasure.', additionalProperties: false, required: ['patient'], properties: { patient: patientRef } },
                ledger: { enum: ['unavailable', 'available'], description: 'The consent ledger cannot be read from now on (fail closed), or can again.' },
                ehr: {
                  type: 'object',
                  description: 'How the EHR answers write-backs from now on (the simulated EHR; default applied).',
                  additionalProperties: false,
                  required: ['writeBacks'],
                  properties: { writeBacks: { enum: ['applied', 'denied', 'failed'], description: 'applied, denied (refused as asked), failed (for good).' } },
                },
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
                        status: { enum: Object.values(SimStatus), description: 'pending, moved (replanned to another time), sent (handed to its output), cancelled, suppressed (see reason).' },
                        reason: {
                          enum: [...Object.values(ConsentReason), NO_JOIN_INFO],
                          description: 'Why it was suppressed (docs/consent.md reason codes; no_join_info: a video link with no join URL kept, docs/video.md).',
                        },
                        due: { ...instantSchema, description: 'Due time (compared as an instant).' },
                        sent: { ...instantSchema, description: 'When it actually left, after any quiet-hours move (compared as an instant).' },
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
              writeBacks: {
                type: 'array',
                description: 'Every write-back of an answer, in order (compared when given; [] for none).',
                items: {
                  type: 'object',
                  description: 'One write-back; keys left out are not compared.',
                  additionalProperties: false,
                  properties: {
                    output: { type: 'string', description: 'The write-back output.' },
                    action: { enum: ['confirm', 'cancel'], description: 'What was written.' },
                    appointment: { type: 'string', description: 'The appointment id.' },
                    outcome: { enum: ['applied', 'denied', 'failed'], description: 'What the EHR did.' },
                    code: { type: 'string', description: 'The denial or failure code.' },
                  },
                },
              },
              tasks: {
                type: 'array',
                description: 'Every staff task opened, in order (compared when given; [] for none).',
                items: {
                  type: 'object',
                  description: 'One task; keys left out are not compared.',
                  additionalProperties: false,
                  properties: {
                    kind: { enum: [...STAFF_TASK_KINDS], description: 'What it asks staff to do.' },
                    code: { type: 'string', description: 'Its reason code.' },
                    appointment: { type: 'string', description: 'The appointment id.' },
                  },
                },
              },
              replies: {
                type: 'array',
                description: 'Every keyword confirmation sent, in order (compared when given; [] for none). Answers and anything for staff get none.',
                items: {
                  anyOf: [
                    { type: 'string', description: 'The whole text.' },
                    {
                      type: 'object',
                      description: 'One confirmation.',
                      additionalProperties: false,
                      properties: { to: { type: 'string', description: 'The number it went to.' }, text: { type: 'string', description: 'The whole text.' }, 'text contains': containsSchema('Text(s) it must contain.') },
                    },
                  ],
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
  // The settings keys a test wrote, before the schema fills the defaults in.
  const written = (isRecord(doc.value) && Array.isArray(doc.value.tests) ? doc.value.tests : []).map((t) => (isRecord(t) && isRecord(t.settings) ? Object.keys(t.settings) : []));
  if (doc.value !== undefined) {
    sharedAjv ??= createAjv();
    issues.push(...validateWithSchema(sharedAjv, mappingTestFileSchema, doc.value, display, doc.locate));
  }
  const value = doc.value as { mapping?: string; tests?: unknown[] } | undefined;
  const tests: TestCase[] = [];
  for (const [index, raw] of (issues.length === 0 ? value?.tests ?? [] : []).entries()) {
    tests.push(readTest(raw as Record<string, unknown>, index, display, doc.locate, issues, written[index] ?? []));
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return { ...(value?.mapping ? { mapping: value.mapping } : {}), tests };
}

function readTest(raw: Record<string, unknown>, index: number, display: string, locate: Locate, issues: ConfigIssue[], settingsKeys: readonly string[]): TestCase {
  const at = (p: (string | number)[]): string => {
    const position = locate(['tests', index, ...p]);
    return position ? `${display}:${position.line}:${position.column}` : display;
  };
  const list = (v: unknown): string[] => (v === undefined ? [] : Array.isArray(v) ? v.map(String) : [String(v)]);
  const timezone = raw.timezone as string;
  if (!isValidZone(timezone)) issues.push({ file: display, ...locate(['tests', index, 'timezone']), message: `unknown time zone "${timezone}"` });
  const given = (raw.given as Record<string, unknown>[]).map((item, i): GivenItem => {
    const kinds = INPUT_KINDS.filter((k) => item[k] !== undefined);
    if (kinds.length !== 1) {
      issues.push({ file: display, ...locate(['tests', index, 'given', i]), message: `an input has exactly one of ${INPUT_KINDS.join(', ')} (got ${kinds.join(', ') || 'none'})` });
    }
    const position = locate(['tests', index, 'given', i]);
    return {
      where: at(['given', i]),
      ...(position ? { position } : {}),
      ...(typeof item.at === 'string' ? { at: Date.parse(item.at) } : {}),
      ...(typeof item.hl7 === 'string' ? { hl7: item.hl7 } : {}),
      ...(typeof item.file === 'string' ? { file: item.file } : {}),
      ...(isRecord(item.trigger) ? { trigger: item.trigger } : {}),
      ...(kinds.length === 1 && (EVENT_KINDS as readonly string[]).includes(kinds[0]!) ? { event: consentEvent(kinds[0] as (typeof EVENT_KINDS)[number], item[kinds[0]!]) } : {}),
    };
  });
  const expect = raw.expect as { deliveries: 'none' | Record<string, unknown>[]; skipped?: { rule: string; reason: string; about?: string }[]; replies?: unknown[]; writeBacks?: Expected[]; tasks?: Expected[] };
  const deliveries = expect.deliveries === 'none' ? [] : expect.deliveries.map((d, i): ExpectedDelivery => ({
    where: at(['expect', 'deliveries', i]),
    rule: d.rule as string,
    ...pick(d, ['about', 'status', 'reason', 'due', 'sent', 'planned', 'expires', 'to', 'channel', 'output', 'purpose', 'variant', 'language', 'text']),
    ...(typeof d.step === 'number' ? { step: d.step } : {}),
    textContains: list(d['text contains']),
    subjectContains: list(d['subject contains']),
    htmlContains: list(d['html contains']),
  }));
  const replies = expect.replies?.map((r): ExpectedReply => (typeof r === 'string' ? { text: r, textContains: [] } : { ...pick(r as Record<string, unknown>, ['to', 'text']), textContains: list((r as Record<string, unknown>)['text contains']) }));
  let settings: Partial<PolicySettings> | undefined;
  if (isRecord(raw.settings)) {
    // Only the keys the test wrote override the configuration's (the schema filled the rest in).
    const computed = policyConfigOf(raw.settings as unknown as PolicyBlock, { http: { host: '127.0.0.1', port: 8080 } }).settings as unknown as Record<string, unknown>;
    const keys = new Set(settingsKeys.filter((k) => k !== 'timezone'));
    if (keys.has('region')) keys.add('defaults');
    settings = Object.fromEntries([...keys].filter((k) => k in computed).map((k) => [k, computed[k]])) as Partial<PolicySettings>;
  }
  return {
    name: raw.name as string,
    where: at([]),
    now: Date.parse(raw.now as string),
    timezone,
    ...(typeof raw.hl7Timezone === 'string' ? { hl7Timezone: raw.hl7Timezone } : {}),
    ...(typeof raw.until === 'string' ? { until: Date.parse(raw.until) } : {}),
    ...(settings ? { settings } : {}),
    given,
    deliveries,
    ...(expect.skipped ? { skipped: expect.skipped } : {}),
    ...(replies ? { replies } : {}),
    ...(expect.writeBacks ? { writeBacks: expect.writeBacks } : {}),
    ...(expect.tasks ? { tasks: expect.tasks } : {}),
  };
}

/** A consent event of `given`, as the schema validated it. */
function consentEvent(kind: (typeof EVENT_KINDS)[number], value: unknown): SimConsentEvent {
  const v = value as Record<string, unknown>;
  switch (kind) {
    case 'consent':
      return { kind, resource: v };
    case 'ledger':
      return { kind, available: value === 'available' };
    default:
      return { kind, ...v } as SimConsentEvent;
  }
}

function pick(source: Record<string, unknown>, keys: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of keys) if (source[key] !== undefined) out[key] = String(source[key]);
  return out;
}

interface Outcome {
  diff?: string;
  deliveries: MappingTestDelivery[];
  replies: Array<{ to: string; text: string }>;
  writeBacks: SimWriteBack[];
  tasks: NonNullable<MappingTestResult['tasks']>;
}

/** Runs one test; its diff is undefined when it passes. */
async function runOne(test: TestCase, rules: readonly Rule[], config: SimulationConfig, testFile: string, options: RunMappingTestsOptions): Promise<Outcome> {
  const policy: PolicySettings = { ...config.policy.settings, ...test.settings, timezone: test.timezone };
  const sim = new Simulator(rules, {
    zone: test.timezone,
    ...(test.hl7Timezone ? { hl7Zone: test.hl7Timezone } : {}),
    now: test.now,
    sites: policy.sites,
    consent: { policy, outputs: config.outputs, links: testLinks(config.policy), templates: config.templates, ...(options.writeBack ? { writeBack: options.writeBack } : {}) },
    video: { publicUrl: config.policy.publicUrl, ...(config.virtualVisit ? { virtualVisit: config.virtualVisit } : {}) },
  });
  try {
    const notes: string[] = [];
    for (const [i, item] of test.given.entries()) {
      if (item.at !== undefined) {
        if (item.at < sim.clock) throw new Error(`given ${i + 1} (${item.where}): at is before the previous input's time; inputs are in time order`);
        await sim.advance(item.at);
      }
      if (item.event) {
        try {
          await sim.consentEvent(item.event);
        } catch (error) {
          throw new Error(`given ${i + 1} (${item.where}): ${(error as Error).message}`);
        }
        continue;
      }
      const steps = await feed(sim, item, path.dirname(testFile), i, test.timezone);
      for (const step of steps) if (step.note?.startsWith('rejected')) notes.push(`given ${i + 1} (${item.where}): ${step.note}`);
    }
    await sim.advance(test.until ?? sim.clock);
    const deliveries = sim.deliveries().map(summary);
    const tasks = (await sim.tasks()).map(taskSummary);
    const seen = { deliveries, replies: sim.replies, writeBacks: sim.writeBacks, tasks };
    if (notes.length > 0) return { diff: notes.join('\n'), ...seen };
    const diff = compare(test, sim, config, tasks);
    return { ...(diff !== undefined ? { diff } : {}), ...seen };
  } finally {
    await sim.close();
  }
}

function taskSummary(t: StaffTask): { kind: string; code?: string; appointment?: string } {
  return { kind: t.kind, ...(t.code !== undefined ? { code: t.code } : {}), ...(t.appointmentId !== undefined ? { appointment: t.appointmentId } : {}) };
}

function summary(d: SimDelivery): MappingTestDelivery {
  const x = d.delivery;
  return {
    rule: x.ruleId,
    subject: x.subjectKey,
    patient: x.patientId,
    channel: x.channel,
    ...(x.to !== undefined ? { to: x.to } : {}),
    status: d.status,
    ...(d.reason !== undefined ? { reason: d.reason } : {}),
    due: x.dueAt,
    ...(d.sentAt !== undefined ? { sent: new Date(d.sentAt).toISOString() } : {}),
  };
}

async function feed(sim: Simulator, item: GivenItem, baseDir: string, index: number, zone: string): Promise<SimStep[]> {
  if (item.hl7 !== undefined) return hl7Steps(sim, item.hl7.trim(), item.where);
  if (item.trigger !== undefined) return [await sim.trigger(completeTrigger(item.trigger, sim, `given ${index + 1} (${item.where})`, zone))];
  const file = path.resolve(baseDir, item.file!);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`given ${index + 1} (${item.where}): cannot read ${displayPath(file)} (${(error as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (/\.(nd)?json$/i.test(file)) {
    const steps: SimStep[] = [];
    for (const t of triggersFromJson(bytes.toString('utf8'), displayPath(file))) steps.push(await sim.trigger(completeTrigger(t, sim, displayPath(file), zone)));
    return steps;
  }
  return hl7Steps(sim, bytes, item.where);
}

interface Actual {
  sim: SimDelivery;
  rendered?: RenderedMessage;
  renderError?: string;
}

function renderAll(sim: Simulator, config: SimulationConfig): Actual[] {
  const links = testLinks(config.policy);
  return sim.deliveries().map((d) => {
    try {
      return { sim: d, rendered: sim.render(d, config.templates, links) };
    } catch (error) {
      return { sim: d, renderError: (error as Error).message };
    }
  });
}

/** Readable diff of expected vs actual; undefined when they agree. */
function compare(test: TestCase, sim: Simulator, config: SimulationConfig, tasks: ReadonlyArray<Record<string, unknown>>): string | undefined {
  const actual = renderAll(sim, config);
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
  if (test.replies) {
    const got = sim.replies;
    test.replies.forEach((want, i) => {
      const reply = got[i];
      const ok = reply !== undefined && (want.to === undefined || reply.to === want.to) && (want.text === undefined || reply.text === want.text) && want.textContains.every((t) => reply.text.includes(t));
      if (ok) lines.push(`  reply to ${reply.to}: ${JSON.stringify(reply.text)}`);
      else {
        failed = true;
        lines.push(`- reply ${i + 1}${want.to ? ` to ${want.to}` : ''}: ${want.text !== undefined ? JSON.stringify(want.text) : `containing ${want.textContains.map((t) => JSON.stringify(t)).join(', ')}`}`);
        if (reply) lines.push(`+ reply ${i + 1} to ${reply.to}: ${JSON.stringify(reply.text)}`);
      }
    });
    for (const extra of got.slice(test.replies.length)) {
      failed = true;
      lines.push(`+ reply to ${extra.to}: ${JSON.stringify(extra.text)} (not expected)`);
    }
  }
  for (const [name, wanted, got] of [
    ['write-back', test.writeBacks, sim.writeBacks as unknown as ReadonlyArray<Record<string, unknown>>],
    ['task', test.tasks, tasks],
  ] as const) {
    if (wanted === undefined) continue;
    wanted.forEach((want, i) => {
      const have = got[i];
      const line = (x: Record<string, unknown>) => Object.entries(x).map(([k, v]) => `${k}: ${String(v)}`).join(', ');
      if (have !== undefined && Object.entries(want).every(([k, v]) => String(have[k]) === v)) lines.push(`  ${name} ${line(have)}`);
      else {
        failed = true;
        lines.push(`- ${name} ${i + 1}: ${line(want)}`);
        if (have) lines.push(`+ ${name} ${i + 1}: ${line(have)}`);
      }
    });
    for (const extra of got.slice(wanted.length)) {
      failed = true;
      lines.push(`+ ${name}: ${Object.entries(extra).map(([k, v]) => `${k}: ${String(v)}`).join(', ')} (not expected)`);
    }
  }
  return failed ? lines.join('\n') : undefined;
}

function actualLines(a: Actual): string[] {
  const d = a.sim.delivery;
  return [
    `status: ${a.sim.status}`,
    ...(a.sim.reason ? [`reason: ${a.sim.reason}`] : []),
    `due: ${d.dueAt}`,
    ...(a.sim.sentAt !== undefined ? [`sent: ${new Date(a.sim.sentAt).toISOString()}`] : []),
    `channel: ${d.channel}`,
    ...(d.to ? [`to: ${d.to}`] : []),
    ...(d.variant ? [`variant: ${d.variant}`] : []),
    ...(a.rendered ? [...(a.rendered.subject !== undefined ? [`subject: ${JSON.stringify(a.rendered.subject)}`] : []), `text: ${JSON.stringify(a.rendered.text)}`] : [`render error: ${a.renderError}`]),
  ];
}

function compareDelivery(expected: ExpectedDelivery, a: Actual): string[] {
  const d: Delivery = a.sim.delivery;
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
  check('reason', expected.reason, a.sim.reason);
  check('due', expected.due, d.dueAt, true);
  check('sent', expected.sent, a.sim.sentAt === undefined ? undefined : new Date(a.sim.sentAt).toISOString(), true);
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
