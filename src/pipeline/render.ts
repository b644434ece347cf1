// Message templates (LiquidJS), sandboxed: a template sees only the delivery's payload — the
// trigger fields its rule's `send.fields` allow (docs/architecture.md invariant 6) — plus date
// filters that format times in the patient's zone and language. Templates are read from
// mappings/templates/ when the mappings load (config/mappings.ts); nothing is read from disk
// while rendering: include, render, layout and block tags do not exist here.
//
// File layout (one file per language, with a language-less default as the fallback):
//
//   sms, webhook, crm   <name>.liquid            <name>.<lang>.liquid               the body
//   email               <name>.subject.liquid    <name>.<lang>.subject.liquid       subject line
//                       <name>.text.liquid       <name>.<lang>.text.liquid          plain-text body
//                       <name>.html.liquid       <name>.<lang>.html.liquid          optional HTML body
//
// `<lang>` is a lower-case ISO 639-1/-2 code (`fr`, `en`, `es`). The language is the
// payload's patient.language (docs/trigger.md: lower-case language part), so a rule whose
// template exists in several languages must allow `patient.language` in send.fields.
// HTML parts escape every output (`outputEscape: escape`); text parts do not.
//
// Strictness: an unknown variable or filter is an error (strictVariables, strictFilters), so
// optional trigger fields must be guarded: `{% if appointment.location.name %}…{% endif %}`
// or `{{ appointment.location.name | default: "our clinic" }}` (lenientIf allows both).
// Only own properties are read (ownPropertyOnly): no `constructor`, no prototype walking.
import { DateTime } from 'luxon';
import { Liquid, type Template, type Variable } from 'liquidjs';
import { PermanentError } from '../errors.ts';
import type { Channel, Delivery } from '../types.ts';
import type { FieldPath, FieldSpec } from './conditions.ts';
import { TRIGGER_FIELDS } from './conditions.ts';

export const TemplatePart = {
  /** The whole message for sms, webhook and crm. */
  Body: 'body',
  Subject: 'subject',
  Text: 'text',
  Html: 'html',
} as const;
export type TemplatePart = (typeof TemplatePart)[keyof typeof TemplatePart];

/** The parts a channel's template is made of. */
export function templateParts(channel: Channel): { required: TemplatePart[]; optional: TemplatePart[] } {
  return channel === 'email' ? { required: ['subject', 'text'], optional: ['html'] } : { required: ['body'], optional: [] };
}

/** `reminder.fr.subject.liquid`, `reminder.liquid`… (see the layout at the top of this file). */
export function templateFileName(name: string, part: TemplatePart, language?: string): string {
  return [name, ...(language ? [language] : []), ...(part === 'body' ? [] : [part]), 'liquid'].join('.');
}

const LANGUAGE = /^[a-z]{2,3}$/;
const PART_NAMES = new Set<string>(['subject', 'text', 'html']);

/**
 * Reads a file name as a file of template `name`: its language (absent for the default)
 * and part. Undefined when the file belongs to another template.
 */
export function matchTemplateFile(fileName: string, name: string): { language?: string; part: TemplatePart } | undefined {
  if (!fileName.startsWith(`${name}.`) || !fileName.endsWith('.liquid')) return undefined;
  const middle = fileName.slice(name.length + 1, -'.liquid'.length);
  const pieces = middle === '' ? [] : middle.split('.');
  let part: TemplatePart = 'body';
  if (pieces.length > 0 && PART_NAMES.has(pieces[pieces.length - 1]!)) part = pieces.pop() as TemplatePart;
  if (pieces.length === 0) return { part };
  if (pieces.length === 1 && LANGUAGE.test(pieces[0]!)) return { language: pieces[0], part };
  return undefined;
}

/** A problem in a template file, positioned when the engine says where (1-based). */
export interface TemplateIssue {
  file: string;
  line?: number;
  column?: number;
  message: string;
}

export interface CompiledTemplate {
  readonly name: string;
  /** Absent for the default (fallback) file. */
  readonly language?: string;
  readonly part: TemplatePart;
  /** As shown in issues. */
  readonly file: string;
  readonly tpl: Template[];
}

/** The value templates cannot see: filters read the zone and language from it. */
const RENDER_GLOBAL = '__carerelay_render';

interface RenderLocale {
  /** IANA zone times are shown in; undefined: each time in the offset it came with. */
  zone?: string;
  language: string;
}

/** Bounds so a template cannot take the process down (characters, ms, bytes). */
const PARSE_LIMIT = 100_000;
const RENDER_LIMIT_MS = 1_000;
const MEMORY_LIMIT = 10_000_000;

function createEngine(escape: boolean): Liquid {
  const liquid = new Liquid({
    strictVariables: true,
    strictFilters: true,
    ownPropertyOnly: true,
    lenientIf: true,
    // No file system: templates come in as text (mappings loader) and cannot pull others in.
    templates: {},
    relativeReference: false,
    ...(escape ? { outputEscape: 'escape' as const } : {}),
    parseLimit: PARSE_LIMIT,
    renderLimit: RENDER_LIMIT_MS,
    memoryLimit: MEMORY_LIMIT,
  });
  for (const tag of ['include', 'render', 'layout', 'block']) delete liquid.tags[tag];
  registerDateFilters(liquid);
  return liquid;
}

/**
 * Date filters in the zone of the place of the appointment and the file's language:
 *   {{ appointment.start | local_date }}        Friday, September 24, 2021 / vendredi 24 septembre 2021
 *   {{ appointment.start | local_date: "short" }}   9/24/2021 / 24/09/2021   ("medium": Sep 24, 2021)
 *   {{ appointment.start | local_time }}        9:15 AM / 09:15
 *   {{ appointment.start | local_datetime }}    date and time together
 *   {{ appointment.start | local_format: "dd/LL/yyyy HH'h'mm" }}   luxon format tokens
 * A value that is not an ISO-8601 instant with offset is a render error (never a silent blank).
 */
function registerDateFilters(liquid: Liquid): void {
  const at = (locale: RenderLocale, value: unknown, filter: string): DateTime => {
    const parsed = typeof value === 'string' ? DateTime.fromISO(value, { setZone: true }) : undefined;
    if (!parsed?.isValid || !/[zZ]|[+-]\d{2}:?\d{2}$/.test(value as string)) {
      throw new Error(`${filter} expects a time with offset such as appointment.start, got ${value === undefined || value === null ? 'nothing' : typeof value}`);
    }
    // Without a zone the time keeps the offset it came with (parsed with setZone).
    return (locale.zone === undefined ? parsed : parsed.setZone(locale.zone)).setLocale(locale.language);
  };
  /** A filter's text for (value, style, zone, language), from the memo or computed by `format`. */
  const formatted = (context: { globals: unknown }, filter: string, value: unknown, style: string, format: (t: DateTime) => string): string => {
    const locale = (context.globals as Record<string, RenderLocale | undefined>)[RENDER_GLOBAL] ?? { language: 'en' };
    if (typeof value !== 'string') return format(at(locale, value, filter));
    const key = `${filter}\u0000${style}\u0000${value}\u0000${locale.zone ?? ''}\u0000${locale.language}`;
    let text = dateMemo.get(key);
    if (text === undefined) {
      text = format(at(locale, value, filter));
      if (dateMemo.size >= DATE_MEMO_ENTRIES) dateMemo.clear();
      dateMemo.set(key, text);
    }
    return text;
  };
  const dateStyles = { short: DateTime.DATE_SHORT, medium: DateTime.DATE_MED, long: DateTime.DATE_HUGE } as const;
  liquid.registerFilter('local_date', function (value: unknown, style: unknown = 'long') {
    const format = dateStyles[String(style) as keyof typeof dateStyles];
    if (!format) throw new Error(`local_date takes "short", "medium" or "long", got "${String(style)}"`);
    return formatted(this.context, 'local_date', value, String(style), (t) => t.toLocaleString(format));
  });
  liquid.registerFilter('local_time', function (value: unknown) {
    return formatted(this.context, 'local_time', value, '', (t) => t.toLocaleString(DateTime.TIME_SIMPLE));
  });
  liquid.registerFilter('local_datetime', function (value: unknown) {
    return formatted(this.context, 'local_datetime', value, '', (t) => t.toLocaleString({ ...DateTime.DATE_HUGE, ...DateTime.TIME_SIMPLE }));
  });
  liquid.registerFilter('local_format', function (value: unknown, format: unknown) {
    if (typeof format !== 'string' || format === '') throw new Error('local_format takes a luxon format string, e.g. "dd/LL/yyyy HH:mm"');
    return formatted(this.context, 'local_format', value, format, (t) => t.toFormat(format));
  });
}

/**
 * The date filters' texts already computed (luxon's parse, zone and locale work was the
 * largest part of a render): a message's parts show the same times, and one appointment's
 * messages too. A text depends only on its key (the zone and locale data do not change
 * while the process runs). Bounded: emptied when full.
 */
const dateMemo = new Map<string, string>();
const DATE_MEMO_ENTRIES = 4_096;

const textEngine = createEngine(false);
const htmlEngine = createEngine(true);
const engineFor = (part: TemplatePart): Liquid => (part === 'html' ? htmlEngine : textEngine);

function positionOf(error: unknown): { line?: number; column?: number } {
  const token = (error as { token?: { getPosition?: () => [number, number] } }).token;
  const position = token?.getPosition?.();
  return position ? { line: position[0], column: position[1] } : {};
}

/** The engine's first line, without its own ", line:1, col:4" (issues carry the position). */
function engineMessage(error: unknown): string {
  const first = String((error as Error).message ?? error).split('\n', 1)[0]!;
  return first.replace(/(, file:[^,]*)?, line:\d+, col:\d+$/, '').replace(/, file:[^,]*$/, '');
}

/** Parses one template file. Unknown filters and tags are errors here, at load time. */
export function compileTemplate(source: { name: string; language?: string; part: TemplatePart; file: string; text: string }): {
  template?: CompiledTemplate;
  issues: TemplateIssue[];
} {
  try {
    const tpl = engineFor(source.part).parse(source.text, source.file);
    const template: CompiledTemplate = Object.freeze({
      name: source.name,
      ...(source.language ? { language: source.language } : {}),
      part: source.part,
      file: source.file,
      tpl,
    });
    return { template, issues: [] };
  } catch (error) {
    let message = engineMessage(error);
    if (/^tag "(include|render|layout|block)" not found/.test(message)) {
      message += ': templates cannot include other files (each message is one self-contained file per language)';
    }
    return { issues: [{ file: source.file, ...positionOf(error), message: `template: ${message}` }] };
  }
}

/** One variable a template reads from its data, where it reads it (1-based). */
export interface TemplateRead {
  /** As written, e.g. `patient.name.given[0]`. */
  text: string;
  line: number;
  column: number;
  allowed: boolean;
}

/**
 * The signed unsubscribe link of a non-care email (workers/unsubscribe.ts): a variable the
 * renderer provides, not trigger data.
 */
export const UNSUBSCRIBE_URL = 'unsubscribe_url';

/**
 * CareRelay's own link to a video visit (docs/video.md), minted when the message is rendered:
 * a variable the renderer provides to rules with `send.videoLink: true`, not trigger data.
 */
export const VIDEO_LINK = 'video.link';

/**
 * Every variable the template reads from outside itself (loop variables and assigns are
 * its own), and whether the rule's allow-list (or `provided`, variables the renderer gives) covers it. A read is allowed when it stays
 * inside an allowed field (`patient.name.given[0]`, `….first`, `….size` under
 * `patient.name.given`) or names an object above one (`appointment` when
 * `appointment.start` is allowed: the payload holds nothing else). A computed key
 * (`appointment[key]`) is allowed only inside an allowed field.
 */
export function templateReads(template: CompiledTemplate, fields: readonly FieldPath[], provided: readonly string[] = []): TemplateRead[] {
  const analysis = engineFor(template.part).analyzeSync(template.tpl, { partials: false });
  const reads: TemplateRead[] = [];
  const allowedPaths = fields.map((f) => f.segments.map((s) => s.name));
  for (const variables of Object.values(analysis.globals)) {
    for (const variable of variables) {
      const { names, dynamic } = fieldNames(variable);
      const inside = allowedPaths.some((allowed) => startsWith(names, allowed)) || provided.some((p) => startsWith(names, p.split('.')));
      const above = !dynamic && allowedPaths.some((allowed) => startsWith(allowed, names));
      reads.push({ text: String(variable), line: variable.location.row, column: variable.location.col, allowed: inside || above });
    }
  }
  return reads;
}

/** The trigger field names a variable reaches: indexes and first/last on arrays dropped, size ignored. */
function fieldNames(variable: Variable): { names: string[]; dynamic: boolean } {
  const names: string[] = [];
  let spec: FieldSpec | undefined;
  let fields: Record<string, FieldSpec> | undefined = TRIGGER_FIELDS;
  for (const segment of variable.segments) {
    if (typeof segment === 'number') continue;
    if (typeof segment !== 'string') return { names, dynamic: true };
    if (spec?.array && (segment === 'first' || segment === 'last')) continue;
    if (segment === 'size' && (spec?.array || spec?.kind === 'string')) break;
    names.push(segment);
    spec = fields?.[segment];
    fields = spec?.fields;
  }
  return { names, dynamic: false };
}

function startsWith(path: readonly string[], prefix: readonly string[]): boolean {
  return prefix.length <= path.length && prefix.every((name, i) => path[i] === name);
}

/** An instant that every date filter accepts, for the load-time trial render. */
const SAMPLE_TIME = '2030-01-15T09:30:00+01:00';

/**
 * A payload holding every allowed field with a plausible value of its kind, in the shape
 * route.ts's pickFields gives. Used to render each template once at load time, so a filter
 * misuse (`local_date` on a name) fails when the mappings load, not at 03:00 at send time.
 */
export function samplePayload(fields: readonly FieldPath[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of fields) {
    let target = out;
    let specs: Record<string, FieldSpec> | undefined = TRIGGER_FIELDS;
    field.segments.forEach((segment, i) => {
      const spec = specs?.[segment.name];
      if (!spec) return;
      const last = i === field.segments.length - 1;
      if (last) {
        target[segment.name] = sampleValue(spec, segment.name);
        return;
      }
      // An array on the way (patient.telecom.value): one element holding the rest.
      if (spec.array) {
        const list = (target[segment.name] as Record<string, unknown>[] | undefined) ?? [{}];
        target[segment.name] = list;
        target = list[0]!;
      } else {
        target = (target[segment.name] as Record<string, unknown> | undefined) ?? (target[segment.name] = {}) as Record<string, unknown>;
      }
      specs = spec.fields;
    });
  }
  return out;
}

function sampleValue(spec: FieldSpec, name: string): unknown {
  let one: unknown;
  switch (spec.kind) {
    case 'string':
      one = name === 'language' ? 'en' : `sample-${name}`;
      break;
    case 'number':
      one = 30;
      break;
    case 'boolean':
      one = false;
      break;
    case 'time':
      one = SAMPLE_TIME;
      break;
    case 'date':
      one = '1980-04-12';
      break;
    case 'object':
      one = Object.fromEntries(Object.entries(spec.fields ?? {}).map(([k, s]) => [k, sampleValue(s, k)]));
      break;
    default:
      spec.kind satisfies never;
  }
  return spec.array ? [one] : one;
}

/**
 * Renders a template against a payload. Throws the engine's error (with its position) —
 * callers turn it into an issue (load time) or a PermanentError (send time).
 */
export function renderTemplate(template: CompiledTemplate, payload: Record<string, unknown>, locale: RenderLocale): string {
  // The engine reads an absent optional field (`{% if appointment.location.name %}`, lenientIf)
  // by throwing and catching an error inside: capturing its stack was about a sixth of a
  // render (the booking confirmation's three parts). Errors that escape carry their message and token
  // position (what a template author needs), not a stack. The render is synchronous: no
  // other code runs while the limit is 0.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return engineFor(template.part).renderSync(template.tpl, payload, { globals: { [RENDER_GLOBAL]: locale } }) as string;
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** The message an adapter receives (besides the recipient and ids). */
export interface RenderedMessage {
  language: string;
  subject?: string;
  text: string;
  html?: string;
}

/**
 * All compiled templates, by name, language and part. Immutable once built. Looking a
 * language up falls back to the default file (no language) of the same part.
 */
export class TemplateSet {
  readonly #byKey = new Map<string, CompiledTemplate>();
  readonly #languages = new Map<string, Set<string>>();

  constructor(templates: readonly CompiledTemplate[]) {
    for (const t of templates) {
      this.#byKey.set(key(t.name, t.part, t.language), t);
      if (t.language) {
        const set = this.#languages.get(t.name) ?? new Set<string>();
        set.add(t.language);
        this.#languages.set(t.name, set);
      }
    }
    Object.freeze(this);
  }

  get size(): number {
    return this.#byKey.size;
  }

  /** Every compiled template (for listings and docs). */
  all(): CompiledTemplate[] {
    return [...this.#byKey.values()];
  }

  /** The languages a template exists in, besides its default. */
  languages(name: string): string[] {
    return [...(this.#languages.get(name) ?? [])].sort();
  }

  /** The exact file for a part and language (no fallback). */
  get(name: string, part: TemplatePart, language?: string): CompiledTemplate | undefined {
    return this.#byKey.get(key(name, part, language));
  }

  /** The file for the patient's language, else the default. */
  resolve(name: string, part: TemplatePart, language: string | undefined): CompiledTemplate | undefined {
    return (language ? this.get(name, part, language) : undefined) ?? this.get(name, part);
  }
}

function key(name: string, part: TemplatePart, language?: string): string {
  return `${name}\u0000${part}\u0000${language ?? ''}`;
}

/** `fr-CA` → `fr`; docs/trigger.md already gives the lower-case language part. */
export function languageOf(payload: Record<string, unknown>): string | undefined {
  const patient = payload.patient as { language?: unknown } | undefined;
  const language = patient?.language;
  return typeof language === 'string' && language !== '' ? language.toLowerCase().split(/[-_]/)[0] : undefined;
}

export interface RenderOptions {
  /**
   * IANA zone the times are shown in: the place of the appointment (pipeline/zones.ts
   * displayZone). Undefined: each time is shown in the offset it came with.
   */
  zone: string | undefined;
  /** Language when the payload has none and for the default file's formats; default `en`. */
  defaultLanguage?: string;
  /** Values the renderer provides besides the payload (UNSUBSCRIBE_URL, `video: { link }`). */
  variables?: Readonly<Record<string, unknown>>;
}

/**
 * Renders a delivery with its template in the patient's language (falling back to the
 * default file). A delivery without a template (webhook, crm) gives its payload as JSON.
 * Throws PermanentError `render_failed` (no patient data in its message): retrying cannot
 * help, the mapping must be fixed.
 */
/**
 * The language a delivery goes out in: the patient's (patient.language in its payload) when its
 * template exists in it, else undefined (the default file, written in the default language).
 */
export function templateLanguage(templates: TemplateSet, delivery: Pick<Delivery, 'payload' | 'template'>): string | undefined {
  const wanted = languageOf(delivery.payload);
  if (delivery.template === undefined) return wanted;
  return wanted !== undefined && templates.languages(delivery.template).includes(wanted) ? wanted : undefined;
}

export function renderDelivery(templates: TemplateSet, delivery: Delivery, options: RenderOptions): RenderedMessage {
  const fallback = options.defaultLanguage ?? 'en';
  if (delivery.template === undefined) {
    return { language: templateLanguage(templates, delivery) ?? fallback, text: JSON.stringify(delivery.payload) };
  }
  const name = delivery.template;
  const { required, optional } = templateParts(delivery.channel);
  const language = templateLanguage(templates, delivery);
  // Dates follow the file's language: a French file shows French dates, the default file
  // (written in defaultLanguage) shows dates in that language.
  const locale = { zone: options.zone, language: language ?? fallback };
  const out: Partial<Record<TemplatePart, string>> = {};
  for (const part of [...required, ...optional]) {
    const template = templates.resolve(name, part, language);
    if (!template) {
      if (required.includes(part)) throw new PermanentError('render_failed', `template "${name}" has no ${templateFileName(name, part)} (delivery ${delivery.id})`);
      continue;
    }
    try {
      out[part] = renderTemplate(template, options.variables ? { ...delivery.payload, ...options.variables } : delivery.payload, locale);
    } catch (error) {
      const { line, column } = positionOf(error);
      throw new PermanentError('render_failed', `${template.file}${line ? `:${line}:${column}` : ''}: ${engineMessage(error)} (delivery ${delivery.id})`, { cause: error });
    }
  }
  return {
    language: language ?? fallback,
    ...(out.subject !== undefined ? { subject: out.subject.trim() } : {}),
    // Editors end files with a newline; a message does not.
    text: (out.body ?? out.text ?? '').replace(/\s+$/, ''),
    ...(out.html !== undefined ? { html: out.html } : {}),
  };
}
