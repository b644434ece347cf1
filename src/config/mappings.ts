// Loads mappings/*.yaml (rules) and mappings/templates/*.liquid into an immutable set, and
// reports every problem at once with file:line:column (docs/architecture.md invariant 5;
// docs/reliability.md "Bad inputs": an unknown field, a bad offset, a missing template, an output
// not covered for the rule's purpose are refused at load, nothing starts).
//
// A mapping file:
//
//   description: Appointment reminders        # optional, for people reading the file
//   languages: [en, fr]                       # optional: every template these rules use must
//                                             # exist in each of these languages (+ the default)
//   rules:                                    # the rule shape: src/pipeline/rule.ts
//     - id: sms-reminder-24h
//       ...
//
// Files ending in .test.yaml are mapping tests (src/workers/simulate.ts), not rules.
// Template files are checked against the rules that use them: each required part exists for
// the default and for every language, and a template reads only what its rule's
// send.fields allow — a read outside the allow-list is an error at the template's line.

import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Ajv } from 'ajv';
import type { ConfigIssue } from '../errors.ts';
import { compilePath, type FieldPath } from '../pipeline/conditions.ts';
import { isRecord } from '../pipeline/values.ts';
import {
  TemplateSet,
  UNSUBSCRIBE_URL,
  VIDEO_LINK,
  compileTemplate,
  matchTemplateFile,
  renderTemplate,
  samplePayload,
  templateFileName,
  templateParts,
  templateReads,
  type CompiledTemplate,
  type TemplatePart,
} from '../pipeline/render.ts';
import { offerFor, replyWordingIssues, RescheduleVia, type ReplySpec } from '../pipeline/reply.ts';
import { compileRules, type OutputInfo, type Rule } from '../pipeline/rule.ts';
import { CHANNELS, PURPOSES, type Channel } from '../types.ts';
import { MAX_CONFIG_FILE_BYTES, displayPath } from './load.ts';
import { createAjv, readYamlDocument, toPointer, validateWithSchema, type DocPath, type Env, type JsonSchema, type Locate } from './yaml.ts';

/** Where a rule is declared (1-based), for messages that point back at it. */
export interface RuleSource {
  readonly file: string;
  readonly line: number;
  readonly column: number;
}

export interface MappingFileInfo {
  /** Absolute path. */
  readonly path: string;
  /** As shown in issues. */
  readonly display: string;
  readonly description?: string;
  readonly languages: readonly string[];
  readonly ruleIds: readonly string[];
}

/** Everything the mappings say, compiled and frozen. */
export interface MappingSet {
  /** Absolute mappings directory. */
  readonly dir: string;
  /** Rules of every file, in file-name order then file order. Only rules without issues. */
  readonly rules: readonly Rule[];
  readonly templates: TemplateSet;
  readonly files: readonly MappingFileInfo[];
  /** Rule id → where it is declared. */
  readonly sources: Readonly<Record<string, RuleSource>>;
}

export interface LoadMappingsOptions {
  /** Directory holding mappings/ (and connectors/). */
  configDir: string;
  /** Source of ${VAR} interpolation. */
  env: Env;
  /** The configured outputs, as routing sees them (outputs/spec.ts outputInfos). */
  outputs: readonly OutputInfo[];
  /** Every problem found is appended here; the caller refuses to start when any is. */
  issues: ConfigIssue[];
  /** Default `<configDir>/mappings`. */
  mappingsDir?: string;
  /** policy.keywords.optOut: the tenant's own opt-out words, never offered as answers (pipeline/reply.ts). */
  optOutWords?: readonly string[];
}

/** Test files sit beside the mappings but hold tests, not rules. */
export function isMappingTestFile(name: string): boolean {
  return name.endsWith('.test.yaml');
}

const stringOrList = (description: string): JsonSchema => ({
  description,
  anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }],
});

const ruleSchema = {
  type: 'object',
  description: 'One rule: when a trigger of a type in `on` arrives and `where` holds, plan a message `at` a time.',
  additionalProperties: false,
  required: ['id', 'on', 'purpose', 'channel', 'send', 'at'],
  properties: {
    id: {
      type: 'string',
      description: 'Unique across all mapping files; part of every delivery id. Letters, digits, ".", "_", "-".',
    },
    description: { type: 'string', description: 'Free text for people reading the file.' },
    on: stringOrList('Trigger type(s) that plan this message, e.g. appointment.booked (docs/trigger.md "Types").'),
    where: {
      description: 'Declarative condition on trigger fields (eq, ne, in, exists, gt/gte/lt/lte, matches, all/any/not); a list means all of them.',
      anyOf: [{ type: 'object' }, { type: 'array' }],
    },
    purpose: { enum: [...PURPOSES], description: 'Why the message is sent (docs/consent.md "Purposes"); consent and outputs are checked against it.' },
    channel: { enum: [...CHANNELS], description: 'How it reaches the patient or the destination.' },
    send: {
      type: 'object',
      description: 'Where the message goes and what it may carry.',
      additionalProperties: false,
      required: ['output'],
      properties: {
        output: { type: 'string', description: 'Name of an output in connectors/*.yaml; its channel, BAA coverage and allowed purposes must fit the rule.' },
        to: {
          type: 'string',
          description: 'Recipient path; default patient.telecom[system=phone,use=mobile].value for sms, patient.telecom[system=email].value for email.',
        },
        template: {
          type: 'string',
          description: 'Template name in mappings/templates/ (sms: <name>[.<lang>].liquid; email: <name>[.<lang>].subject/.text/.html.liquid).',
        },
        noNameTemplate: {
          type: 'string',
          description:
            'The variant that names no one (it may not read patient.name), sent when the address is shared by several patients; ' +
            'without it such a message is suppressed (docs/consent.md rule 8).',
        },
        fields: {
          type: 'array',
          items: { type: 'string' },
          description: 'The allow-list of trigger paths the template and the destination may see; nothing else leaves.',
        },
        videoLink: {
          type: 'boolean',
          description:
            "The templates show CareRelay's own link to the video visit, {{ video.link }}, minted when the message is rendered; " +
            'without join information for the appointment the message is suppressed (no_join_info). Care rules about appointments only (docs/video.md).',
        },
      },
    },
    at: stringOrList('When to send: a time expression such as "appointment.start - 24h", or a list (a cadence, one message per step).'),
    expires: { type: 'string', description: 'Never send at or after this time, e.g. "appointment.start".' },
    cancelOn: stringOrList('Trigger types that cancel the pending message for the same subject; default: cancelled, deleted, noshow for appointments.'),
    replanOn: stringOrList('Trigger types that move the pending message; default: appointment.rescheduled for appointment rules.'),
    variants: {
      type: 'array',
      description: 'A/B split, deterministic per patient: at least two { id, weight, at?, template? }.',
      items: {
        type: 'object',
        description: 'One variant.',
        additionalProperties: false,
        properties: {
          id: { type: 'string', description: 'Variant id, recorded on each delivery.' },
          weight: { type: 'number', description: 'Relative share (> 0).' },
          at: stringOrList('Replaces the rule\'s at (same number of steps).'),
          template: { type: 'string', description: "Replaces the rule's send.template." },
        },
      },
    },
    holdout: {
      type: 'number',
      description: 'Share of patients (0 to below 1) who get no message, to measure outcomes; refused for care.* purposes.',
    },
    reply: {
      type: 'object',
      description:
        'An sms rule about appointments may ask for a reply: the answers it offers and what each does (pipeline/reply.ts). ' +
        'No answer may be an opt-out word (STOP, CANCEL…: FCC 24-24), and the templates may not tell the patient to send one.',
      additionalProperties: false,
      required: ['answers'],
      properties: {
        writeBack: { type: 'string', description: 'The output that writes confirm and cancel back to the EHR (a fhir-appointment, oracle-health-appointment, hl7v2-srm or webhook output with writeBack: true). Without it a cancel request is a staff task and a confirmation is only an event.' },
        answers: {
          type: 'array',
          description: 'What the patient may send, and what it does.',
          items: {
            type: 'object',
            description: 'One answer.',
            additionalProperties: false,
            required: ['action', 'words'],
            properties: {
              action: {
                enum: ['confirm', 'cancel', 'reschedule', 'accept', 'decline'],
                description:
                  'confirm (appointment.confirmed, written back), cancel (appointment.cancel_requested, written back), reschedule (appointment.reschedule_requested: a link or a staff task); ' +
                  'for a waitlist offer (docs/waitlist.md): accept (claims the slot: appointment.waitlist_accepted, or appointment.waitlist_taken when too late), decline (appointment.waitlist_declined).',
              },
              words: { description: 'What the patient may send for it, in every language (e.g. ["1", Y, YES]); matched like keywords (case and punctuation ignored).', anyOf: [{ type: 'string' }, { type: 'number' }, { type: 'array', items: { anyOf: [{ type: 'string' }, { type: 'number' }] } }] },
              languages: { type: 'object', description: 'Extra words per language of the message, e.g. { fr: [OUI] }.', additionalProperties: { type: 'array', items: { anyOf: [{ type: 'string' }, { type: 'number' }] } } },
              via: { enum: ['link', 'task'], description: 'reschedule only: link (a rule on appointment.reschedule_requested sends one) or task (default: staff call the patient).' },
            },
          },
        },
      },
    },
  },
} as const satisfies JsonSchema;

/** JSON Schema of one mapping file (validates and documents; docs/contributing.md habit 1). */
export const mappingFileSchema = {
  type: 'object',
  description: 'One mappings/*.yaml file: a list of rules, and the languages its templates must exist in.',
  additionalProperties: false,
  required: ['rules'],
  properties: {
    description: { type: 'string', description: 'What these rules are for, for people reading the file.' },
    languages: {
      type: 'array',
      items: { type: 'string', pattern: '^[a-z]{2,3}$', 'x-hint': 'a lower-case ISO 639 language code such as en or fr' },
      uniqueItems: true,
      description:
        'Languages every template used by these rules must exist in, besides the default file. Other language files are used when present.',
    },
    rules: { type: 'array', items: ruleSchema, description: 'The rules (src/pipeline/rule.ts).' },
  },
} as const satisfies JsonSchema;

let sharedAjv: Ajv | undefined;
function ajv(): Ajv {
  sharedAjv ??= createAjv();
  return sharedAjv;
}

interface ParsedFile {
  path: string;
  display: string;
  locate: Locate;
  value: Record<string, unknown>;
}

/** One use of a template by a rule, with what the checks need to point back at it. */
interface TemplateUse {
  name: string;
  ruleId: string;
  channel: Channel;
  /** The rule's purpose: a non-care email must carry its unsubscribe link. */
  purpose: string;
  /** The rule's no-name variant: it may not read patient.name. */
  noName: boolean;
  /** The rule shows CareRelay's video link (send.videoLink): its templates may, and must, read {{ video.link }}. */
  videoLink: boolean;
  fields: FieldPath[];
  languages: readonly string[];
  file: ParsedFile;
  /** Document path of the `template:` value. */
  at: DocPath;
  /** The rule's reply, when it asks for one (compiled): its templates' wording is checked. */
  reply?: ReplySpec;
}

/**
 * Reads and checks every mapping file and the templates they use. Problems are appended to
 * `options.issues` (none: the set is complete). A missing mappings directory is an empty set:
 * a CareRelay without rules receives and stores, and sends nothing.
 */
export async function loadMappings(options: LoadMappingsOptions): Promise<MappingSet> {
  const dir = path.resolve(options.mappingsDir ?? path.join(options.configDir, 'mappings'));
  const { issues } = options;
  const files = await readMappingFiles(dir, options.env, issues);

  const rules: Rule[] = [];
  const sources: Record<string, RuleSource> = {};
  const infos: MappingFileInfo[] = [];
  const uses: TemplateUse[] = [];

  for (const file of files) {
    const { value, locate, display } = file;
    const schemaIssues = validateWithSchema(ajv(), mappingFileSchema, value, display, locate);
    const rawRules = Array.isArray(value.rules) ? (value.rules as unknown[]) : [];
    const compiled = compileRules(rawRules, { outputs: options.outputs, optOutWords: options.optOutWords ?? [] });
    const ruleIssues: ConfigIssue[] = compiled.issues.map((issue) => {
      const at: DocPath = ['rules', ...issue.path];
      return { file: display, ...locate(at, { key: issue.message.startsWith('unknown key') }), path: toPointer(at), message: issue.message };
    });
    // The rule compiler's message is the more specific one where both speak of one place.
    const taken = new Set(ruleIssues.map(placeKey));
    issues.push(...schemaIssues.filter((i) => !taken.has(placeKey(i))), ...ruleIssues);
    const languages = Array.isArray(value.languages) ? value.languages.filter((l): l is string => typeof l === 'string') : [];

    const ids: string[] = [];
    rawRules.forEach((raw, index) => {
      if (!isRecord(raw) || typeof raw.id !== 'string') return;
      const position = locate(['rules', index]) ?? { line: 1, column: 1 };
      const first = sources[raw.id];
      if (first && first.file !== display) {
        issues.push({
          file: display,
          ...locate(['rules', index, 'id']),
          path: toPointer(['rules', index, 'id']),
          message: `duplicate rule id "${raw.id}" (first used at ${first.file}:${first.line}:${first.column}); ids must be unique across all mapping files`,
        });
      } else if (!first) {
        sources[raw.id] = { file: display, ...position };
      }
      ids.push(raw.id);
      const reply = compiled.rules.find((r) => r.id === raw.id)?.reply;
      uses.push(...templateUses(raw, index, languages, file).map((u) => (reply ? { ...u, reply } : u)));
    });
    rules.push(...compiled.rules.filter((r) => sources[r.id]?.file === display));
    infos.push({
      path: file.path,
      display,
      ...(typeof value.description === 'string' ? { description: value.description } : {}),
      languages,
      ruleIds: ids,
    });
  }

  issues.push(...rescheduleLinkIssues(files, rules));
  const templates = await loadTemplates(path.join(dir, 'templates'), uses, sources, issues, options.optOutWords ?? []);
  return Object.freeze({
    dir,
    rules: deepFreezeRules(rules),
    templates,
    files: Object.freeze(infos.map((i) => Object.freeze({ ...i, languages: Object.freeze([...i.languages]), ruleIds: Object.freeze([...i.ruleIds]) }))),
    sources: Object.freeze(sources),
  });
}

function placeKey(issue: ConfigIssue): string {
  return `${issue.file}:${issue.line ?? 0}:${issue.column ?? 0}`;
}

async function readMappingFiles(dir: string, env: Env, issues: ConfigIssue[]): Promise<ParsedFile[]> {
  let names: string[];
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    names = entries.filter((e) => e.isFile()).map((e) => e.name);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') issues.push({ file: displayPath(dir), message: `cannot read the mappings directory (${code ?? 'error'})` });
    return [];
  }
  const files: ParsedFile[] = [];
  for (const name of names.sort()) {
    const file = path.join(dir, name);
    const display = displayPath(file);
    if (name.endsWith('.yml')) {
      issues.push({ file: display, message: `not loaded: mapping files end in .yaml; rename it to ${name.slice(0, -4)}.yaml` });
      continue;
    }
    if (!name.endsWith('.yaml') || isMappingTestFile(name)) continue;
    try {
      const { size } = await stat(file);
      if (size > MAX_CONFIG_FILE_BYTES) {
        issues.push({ file: display, message: `file is ${size} bytes; mapping files are limited to ${MAX_CONFIG_FILE_BYTES}` });
        continue;
      }
      const doc = readYamlDocument(display, await readFile(file, 'utf8'), env);
      issues.push(...doc.issues);
      if (doc.value === undefined) continue;
      if (!isRecord(doc.value)) {
        issues.push({ file: display, ...doc.locate([]), message: 'a mapping file is a mapping with a `rules:` list (and optional description, languages)' });
        continue;
      }
      files.push({ path: file, display, locate: doc.locate, value: doc.value });
    } catch (error) {
      issues.push({ file: display, message: `cannot read the file (${(error as NodeJS.ErrnoException).code ?? 'error'})` });
    }
  }
  return files;
}

/**
 * The templates a raw rule uses (send.template and each variant's), with the fields it
 * allows. Read from the raw rule so template problems are reported even when the rule has
 * other problems (every error at once).
 */
function templateUses(raw: Record<string, unknown>, index: number, languages: readonly string[], file: ParsedFile): TemplateUse[] {
  const channel = raw.channel;
  const send = raw.send;
  if (typeof channel !== 'string' || !(CHANNELS as readonly string[]).includes(channel) || !isRecord(send)) return [];
  const fields: FieldPath[] = [];
  if (Array.isArray(send.fields)) {
    for (const item of send.fields) {
      const compiled = typeof item === 'string' ? compilePath(item) : undefined;
      if (compiled !== undefined && typeof compiled !== 'string') fields.push(compiled);
    }
  }
  const purpose = typeof raw.purpose === 'string' ? raw.purpose : '';
  const base = { ruleId: String(raw.id), channel: channel as Channel, purpose, noName: false, videoLink: send.videoLink === true, fields, languages, file };
  const out: TemplateUse[] = [];
  if (typeof send.template === 'string' && send.template !== '') out.push({ ...base, name: send.template, at: ['rules', index, 'send', 'template'] });
  if (typeof send.noNameTemplate === 'string' && send.noNameTemplate !== '') {
    out.push({ ...base, noName: true, name: send.noNameTemplate, at: ['rules', index, 'send', 'noNameTemplate'] });
  }
  if (Array.isArray(raw.variants)) {
    raw.variants.forEach((variant, i) => {
      if (isRecord(variant) && typeof variant.template === 'string' && variant.template !== '') {
        out.push({ ...base, name: variant.template, at: ['rules', index, 'variants', i, 'template'] });
      }
    });
  }
  return out;
}

const TEMPLATE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$/;

/**
 * Reads the template files the rules use (only those), compiles each once, and checks every
 * use: the parts exist for the default and each language, the template reads only allowed
 * fields, and a trial render against a sample payload works.
 */
async function loadTemplates(dir: string, uses: readonly TemplateUse[], sources: Record<string, RuleSource>, issues: ConfigIssue[], optOutWords: readonly string[]): Promise<TemplateSet> {
  let names: string[] = [];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') issues.push({ file: displayPath(dir), message: `cannot read the templates directory (${code ?? 'error'})` });
  }

  const compiled = new Map<string, CompiledTemplate | null>();
  /** The text of each template file read, for the reply wording check. */
  const texts = new Map<string, string>();
  const compileFile = async (name: string, fileName: string, part: TemplatePart, language?: string): Promise<CompiledTemplate | undefined> => {
    const cacheKey = `${fileName}\u0000${part}`;
    if (compiled.has(cacheKey)) return compiled.get(cacheKey) ?? undefined;
    const file = path.join(dir, fileName);
    const display = displayPath(file);
    let result: CompiledTemplate | undefined;
    try {
      const text = await readFile(file, 'utf8');
      texts.set(display, text);
      if (Buffer.byteLength(text) > MAX_CONFIG_FILE_BYTES) issues.push({ file: display, message: `template is larger than ${MAX_CONFIG_FILE_BYTES} bytes` });
      else {
        const out = compileTemplate({ name, part, ...(language ? { language } : {}), file: display, text });
        issues.push(...out.issues);
        result = out.template;
      }
    } catch (error) {
      issues.push({ file: display, message: `cannot read the template (${(error as NodeJS.ErrnoException).code ?? 'error'})` });
    }
    compiled.set(cacheKey, result ?? null);
    return result;
  };

  const used: CompiledTemplate[] = [];
  const templatesDir = displayPath(dir);
  for (const use of uses) {
    const place = { file: use.file.display, ...use.file.locate(use.at), path: toPointer(use.at) };
    const rule = sources[use.ruleId];
    const ruleWhere = rule ? `${rule.file}:${rule.line}:${rule.column}` : use.file.display;
    if (!TEMPLATE_NAME.test(use.name)) {
      issues.push({ ...place, message: `template name "${use.name}" must be letters, digits, "_" or "-" (it names files in ${templatesDir}/)` });
      continue;
    }
    const { required, optional } = templateParts(use.channel);
    const found = names
      .map((fileName) => ({ fileName, match: matchTemplateFile(fileName, use.name) }))
      .filter((f): f is { fileName: string; match: NonNullable<typeof f.match> } => f.match !== undefined && [...required, ...optional].includes(f.match.part));
    const languages = [...new Set([...use.languages, ...found.flatMap((f) => (f.match.language ? [f.match.language] : []))])].sort();

    const missing: string[] = [];
    for (const language of [undefined, ...languages]) {
      for (const part of required) {
        if (!found.some((f) => f.match.part === part && f.match.language === language)) missing.push(templateFileName(use.name, part, language));
      }
    }
    if (missing.length > 0) {
      const layout = use.channel === 'email' ? `${use.name}[.<lang>].subject.liquid and ${use.name}[.<lang>].text.liquid (+ optional .html.liquid)` : `${use.name}[.<lang>].liquid`;
      issues.push({
        ...place,
        message: `template "${use.name}" (rule "${use.ruleId}", ${use.channel}) is missing ${missing.map((m) => `${templatesDir}/${m}`).join(', ')}; ${use.channel} templates are ${layout}, with a language-less default`,
      });
    }
    if (languages.length > 0 && !use.fields.some((f) => f.source === 'patient.language')) {
      issues.push({
        file: use.file.display,
        ...use.file.locate(['rules', Number(use.at[1]), 'send', 'fields'], { key: true }),
        path: toPointer(['rules', Number(use.at[1]), 'send', 'fields']),
        message: `template "${use.name}" exists in ${languages.join(', ')}: add patient.language to send.fields so the patient's language can be chosen (without it the default file is always used)`,
      });
    }

    // A non-care email carries a signed unsubscribe link (docs/consent.md): its text part shows it.
    const unsubscribe = use.channel === 'email' && use.purpose !== '' && !use.purpose.startsWith('care.');
    const sample = {
      ...samplePayload(use.fields),
      ...(unsubscribe ? { [UNSUBSCRIBE_URL]: 'https://carerelay.example.org/unsubscribe/sample' } : {}),
      ...(use.videoLink ? { video: { link: 'https://carerelay.example.org/v/sample' } } : {}),
    };
    const provided = [...(unsubscribe ? [UNSUBSCRIBE_URL] : []), ...(use.videoLink ? [VIDEO_LINK] : [])];
    for (const { fileName, match } of found) {
      const template = await compileFile(use.name, fileName, match.part, match.language);
      if (!template) continue;
      used.push(template);
      // A rule asking for a reply: its text names its answers, and never an opt-out word as an action.
      if (use.reply && match.part !== 'subject' && match.part !== 'html') {
        const offer = offerFor(use.reply, match.language ?? 'en');
        for (const problem of replyWordingIssues(texts.get(template.file) ?? '', offer, optOutWords, use.ruleId)) {
          issues.push({ file: template.file, line: problem.line, column: problem.column, message: problem.message });
        }
      }
      let denied = 0;
      const reads = templateReads(template, use.fields, provided);
      for (const read of reads) {
        if (read.allowed && !(use.noName && /^patient\.name\b/.test(read.text))) continue;
        denied++;
        issues.push({
          file: template.file,
          line: read.line,
          column: read.column,
          message: read.allowed
            ? `reads "${read.text}", but it is the no-name variant of rule "${use.ruleId}" (${ruleWhere}), sent to addresses shared by several patients: it may name no one`
            : read.text.startsWith(UNSUBSCRIBE_URL)
              ? `reads "${read.text}", which only non-care emails have (rule "${use.ruleId}" is ${use.channel} ${use.purpose})`
              : /^video\b/.test(read.text)
                ? `reads "${read.text}", which only rules with send.videoLink: true have (rule "${use.ruleId}", ${ruleWhere}; docs/video.md)`
                : `reads "${read.text}", which rule "${use.ruleId}" (${ruleWhere}) does not allow: add the field to its send.fields, or remove it from the template`,
        });
      }
      if (unsubscribe && match.part === 'text' && !reads.some((r) => r.text === UNSUBSCRIBE_URL)) {
        denied++;
        issues.push({
          file: template.file,
          line: 1,
          column: 1,
          message: `rule "${use.ruleId}" sends ${use.purpose} email: its text must carry the unsubscribe link, {{ ${UNSUBSCRIBE_URL} }} (docs/consent.md rule 2)`,
        });
      }
      if (use.videoLink && (match.part === 'body' || match.part === 'text') && !reads.some((r) => r.text === VIDEO_LINK)) {
        denied++;
        issues.push({
          file: template.file,
          line: 1,
          column: 1,
          message: `rule "${use.ruleId}" has send.videoLink: true: its ${match.part === 'body' ? 'message' : 'text'} must show the link, {{ ${VIDEO_LINK} }} (docs/video.md)`,
        });
      }
      if (denied > 0) continue;
      try {
        renderTemplate(template, sample, { zone: 'UTC', language: match.language ?? 'en' });
      } catch (error) {
        const position = (error as { token?: { getPosition?: () => [number, number] } }).token?.getPosition?.();
        const message = String((error as Error).message).split('\n', 1)[0]!.replace(/(, file:[^,]*)?, line:\d+, col:\d+$/, '');
        issues.push({
          file: template.file,
          ...(position ? { line: position[0], column: position[1] } : {}),
          message: `trial render for rule "${use.ruleId}" failed: ${message}`,
        });
      }
    }
  }
  return new TemplateSet([...new Set(used)]);
}

/**
 * A reschedule answer sent `via: link` needs a rule that sends the link: one listening to
 * appointment.reschedule_requested, in any mapping file. Without one the patient would get
 * nothing, so the answer is refused at load (via: task is the alternative).
 */
function rescheduleLinkIssues(files: readonly ParsedFile[], rules: readonly Rule[]): ConfigIssue[] {
  if (rules.some((r) => r.on.includes('appointment.reschedule_requested'))) return [];
  const issues: ConfigIssue[] = [];
  for (const file of files) {
    const raws = Array.isArray(file.value.rules) ? (file.value.rules as unknown[]) : [];
    raws.forEach((raw, index) => {
      const rule = isRecord(raw) ? rules.find((r) => r.id === raw.id) : undefined;
      rule?.reply?.answers.forEach((a, i) => {
        if (a.via !== RescheduleVia.Link) return;
        const at: DocPath = ['rules', index, 'reply', 'answers', i, 'via'];
        issues.push({
          file: file.display,
          ...file.locate(at),
          path: toPointer(at),
          message: `rule "${rule.id}" answers ${a.words[0]} with a rebooking link, but no rule listens to appointment.reschedule_requested to send it: add one, or use via: task`,
        });
      });
    });
  }
  return issues;
}

function deepFreezeRules(rules: Rule[]): readonly Rule[] {
  const freeze = (value: unknown): void => {
    if (value === null || typeof value !== 'object' || Object.isFrozen(value)) return;
    Object.freeze(value);
    for (const child of Object.values(value)) freeze(child);
  };
  freeze(rules);
  return rules;
}
