// Mapping rules: the compiled shape route() works from, and compileRules(), which checks a
// list of raw rules (parsed YAML from mappings/*.yaml) and reports every problem at once
// with its path in the document (docs/architecture.md invariant 5). Locating a path in a file
// (line:column) is the config loader's job.
//
// A rule in YAML:
//
//   - id: reminder-24h
//     on: [appointment.booked]              # one type or a list (docs/trigger.md "Types")
//     where: { appointment.serviceType.code: { in: [CARDIO] } }   # conditions.ts
//     purpose: care.logistics               # docs/consent.md "Purposes"
//     channel: sms
//     send:
//       output: sms-main                    # an output connector instance
//       to: patient.telecom[system=phone,use=mobile].value   # default per channel
//       template: reminder-24h
//       fields: [patient.name.given, appointment.start, appointment.location.name]
//     at: appointment.start - 24h           # or a list: a cadence, one delivery per step
//     expires: appointment.start            # optional: never send at or after this
//     cancelOn: [...]                       # optional; defaults below
//     replanOn: [...]                       # optional; defaults below
//     variants:                             # optional A/B split, deterministic by patient
//       - { id: a, weight: 1 }
//       - { id: b, weight: 1, at: appointment.start - 48h, template: reminder-48h }
//     holdout: 0.1                          # optional share with no message; refused for care.*
//     reply: { writeBack: ehr, answers: [...] }   # optional (sms, appointments): reply.ts
import type { Channel, Delivery, Purpose, SubjectKind } from '../types.ts';
import { CHANNELS, PURPOSES, TRIGGER_TYPES, TriggerType } from '../types.ts';
import type { Condition, ConditionIssue, FieldPath, IssuePath } from './conditions.ts';
import { compileCondition, compilePath, timeExpressionsOf } from './conditions.ts';
import type { TimeExpr } from './schedule.ts';
import { destinationIssues } from './coverage.ts';
import { compileTimeExpr } from './schedule.ts';
import { closest, describe, isRecord } from './values.ts';
import { compileReply, type ReplySpec } from './reply.ts';

export type { Delivery } from '../types.ts';
export type RuleIssue = ConditionIssue;

export interface RuleVariant {
  id: string;
  /** Relative weight (> 0); shares are weight / sum of weights. */
  weight: number;
  /** Replaces the rule's `at` (same number of steps). */
  at?: TimeExpr[];
  /** Replaces the rule's `send.template`. */
  template?: string;
}

export interface Rule {
  id: string;
  on: TriggerType[];
  where?: Condition;
  purpose: Purpose;
  channel: Channel;
  send: {
    output: string;
    /** Recipient selector; absent for channels without a patient address (webhook, crm, fhir). */
    to?: FieldPath;
    template?: string;
    /** The variant that names no one, for an address shared by several patients (docs/consent.md rule 8). */
    noNameTemplate?: string;
    /** The allow-list: nothing else from the trigger leaves (invariant 6). */
    fields: FieldPath[];
    /**
     * The templates show CareRelay's own video-visit link ({{ video.link }}), minted when the
     * message is rendered (docs/video.md); appointment rules with a care purpose only.
     */
    videoLink?: true;
  };
  /** One expression per step of the cadence (usually one). */
  at: TimeExpr[];
  expires?: TimeExpr;
  /** Trigger types that cancel this rule's pending deliveries for the same subject. */
  cancelOn: TriggerType[];
  /** Trigger types that recompute due times of this rule's pending deliveries for the same subject. */
  replanOn: TriggerType[];
  /** Empty when the rule does not split traffic. */
  variants: RuleVariant[];
  /** Share of patients (0 ≤ holdout < 1) who get no message, for outcome measurement. */
  holdout: number;
  /** The answers the message offers (pipeline/reply.ts); absent: it asks for none. */
  reply?: ReplySpec;
}

/** What compileRules needs to know about output connector instances. */
export interface OutputInfo {
  name: string;
  channel: string;
  /** Declared covered by a BAA/DPA: may receive PHI (docs/consent.md rule 4). */
  baa: boolean;
  allowedPurposes: readonly string[];
  /** When set: the only send.fields this output can send (its property map); coverage.ts. */
  fields?: readonly string[];
  /**
   * When set: the send.fields every rule routed here must name, each with why (what the adapter
   * reads them for); coverage.ts refuses a rule without them.
   */
  requiredFields?: Readonly<Record<string, string>>;
  /** The write-back operations it performs for answers (outputs/write-back.ts); absent: none. */
  writeBackKinds?: readonly string[];
}

/** What compiling rules needs besides the rules: the outputs, and the tenant's localized opt-out words. */
export interface RuleContext {
  outputs: readonly OutputInfo[];
  /** policy.keywords.optOut: never an answer a rule may offer (reply.ts). */
  optOutWords?: readonly string[];
}

/** Why a match produced no delivery; recorded so every non-send has a reason. */
export const SkipReason = {
  /** The due time is at or after `expires` (docs/consent.md "Quiet hours", last sentence). */
  Expired: 'expired',
  /** The patient falls in the rule's holdout share: no message, by design. */
  Holdout: 'holdout',
  /** The trigger lacks the time the rule's `at` or `expires` is anchored on. */
  NoAnchor: 'no_anchor',
} as const;
export type SkipReason = (typeof SkipReason)[keyof typeof SkipReason];

export interface SkippedDelivery {
  /** The delivery id it would have had. */
  id: string;
  ruleId: string;
  subjectKey: string;
  step: number;
  triggerId: string;
  reason: SkipReason;
  variant?: string;
  plannedAt?: string;
  expiresAt?: string;
}

/** A rule whose `on` names the trigger's type but whose `where` does not hold for it. */
export interface UnmatchedRule {
  ruleId: string;
  reason: 'condition_false';
  /** The part of `where` that did not hold, as the rule says it (conditions.ts failingPart). */
  condition: string;
}

export const CancelReason = {
  /** A cancelling trigger for the subject (cancelOn). */
  Trigger: 'trigger',
  /** A re-plan computed a due time at or after expiry: the pending delivery must not go. */
  Expired: 'expired',
} as const;
export type CancelReason = (typeof CancelReason)[keyof typeof CancelReason];

export interface CancelOrder {
  /** A queue cancel key: `<trigger type>@<subjectKey>`, or a delivery id. */
  key: string;
  reason: CancelReason;
  triggerId: string;
  triggerType: TriggerType;
  /** The cancelling trigger's occurredAt: it cancels only plans that are not newer. */
  asOf: string;
}

export interface RouteResult {
  triggerId: string;
  /** New deliveries (a known id with a newer plan replans it; see applyToDelivery). */
  deliveries: Delivery[];
  /** New plans for deliveries that may already exist; never creates one. */
  replans: Delivery[];
  cancels: CancelOrder[];
  skipped: SkippedDelivery[];
  /** Rules listening to the type whose condition did not hold (absent when none). */
  unmatched?: UnmatchedRule[];
}

// ---------------------------------------------------------------------------------------
// Defaults

/** The subject a trigger type is about. */
export function subjectKindOf(type: TriggerType): Exclude<SubjectKind, 'trigger'> {
  if (type.startsWith('appointment.')) return 'appointment';
  if (type.startsWith('encounter.')) return 'encounter';
  return 'patient';
}

const APPOINTMENT_CANCEL: TriggerType[] = ['appointment.cancelled', 'appointment.deleted', 'appointment.noshow'];
const APPOINTMENT_REPLAN: TriggerType[] = ['appointment.rescheduled'];

/**
 * cancelOn when the rule does not say: appointment rules are cancelled by a cancelled,
 * deleted or noshow of the same appointment; encounter.finished rules (post-discharge) by
 * discharge_cancelled and encounter.cancelled; other encounter rules by encounter.cancelled.
 * A type the rule is triggered by is never one of its own cancellers (a "we missed you"
 * rule on noshow must not be cancelled by that very noshow).
 */
export function defaultCancelOn(on: readonly TriggerType[]): TriggerType[] {
  const out = new Set<TriggerType>();
  for (const type of on) {
    if (subjectKindOf(type) === 'appointment') APPOINTMENT_CANCEL.forEach((t) => out.add(t));
    else if (type === 'encounter.finished') {
      out.add('encounter.discharge_cancelled');
      out.add('encounter.cancelled');
    } else if (subjectKindOf(type) === 'encounter') out.add('encounter.cancelled');
  }
  return [...out].filter((t) => !on.includes(t));
}

/** replanOn when the rule does not say: appointment rules follow appointment.rescheduled. */
export function defaultReplanOn(on: readonly TriggerType[]): TriggerType[] {
  if (!on.some((t) => subjectKindOf(t) === 'appointment')) return [];
  return APPOINTMENT_REPLAN.filter((t) => !on.includes(t));
}

/** Where a channel's recipient comes from unless `send.to` says otherwise. */
export const DEFAULT_RECIPIENT: Partial<Record<Channel, string>> = {
  sms: 'patient.telecom[system=phone,use=mobile].value',
  email: 'patient.telecom[system=email].value',
};

// ---------------------------------------------------------------------------------------
// Compilation

const RULE_KEYS = ['id', 'on', 'where', 'purpose', 'channel', 'send', 'at', 'expires', 'cancelOn', 'replanOn', 'variants', 'holdout', 'reply', 'description'] as const;
const SEND_KEYS = ['output', 'to', 'template', 'noNameTemplate', 'fields', 'videoLink'] as const;
const VARIANT_KEYS = ['id', 'weight', 'at', 'template'] as const;
const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const MAX_CADENCE = 10;

/**
 * Compiles every rule; `rules` holds only rules without issues, `issues` every problem of
 * every rule with its path from the list down (`[2, 'send', 'output']`). The caller refuses
 * to start when `issues` is non-empty.
 */
export function compileRules(rawRules: unknown[], context: RuleContext): { rules: Rule[]; issues: RuleIssue[] } {
  const rules: Rule[] = [];
  const issues: RuleIssue[] = [];
  const seen = new Map<string, number>();
  rawRules.forEach((raw, index) => {
    const own: RuleIssue[] = [];
    const rule = compileRule(raw, [index], context, own);
    if (isRecord(raw) && typeof raw.id === 'string') {
      const first = seen.get(raw.id);
      if (first !== undefined) own.push({ path: [index, 'id'], message: `duplicate rule id "${raw.id}" (first used by rule #${first + 1}); ids must be unique across all mapping files` });
      else seen.set(raw.id, index);
    }
    issues.push(...own);
    if (rule && own.length === 0) rules.push(rule);
  });
  return { rules, issues };
}

/** Compiles one rule; issues are appended to `issues` with paths under `at`. */
export function compileRule(raw: unknown, at: IssuePath, context: RuleContext, issues: RuleIssue[]): Rule | undefined {
  const before = issues.length;
  const add = (path: IssuePath, message: string) => issues.push({ path, message });
  if (!isRecord(raw)) {
    add(at, `a rule must be a mapping with id, on, purpose, channel, send and at; got ${describe(raw)}`);
    return undefined;
  }
  unknownKeys(raw, RULE_KEYS, at, issues);

  const id = raw.id;
  if (typeof id !== 'string' || !ID.test(id)) {
    add([...at, 'id'], `id must be 1–100 characters of letters, digits, ".", "_" or "-", starting with a letter or digit; got ${describe(id)}`);
  }

  const on = triggerTypes(raw.on, [...at, 'on'], issues, true) ?? [];
  let where: Condition | undefined;
  if (raw.where !== undefined) {
    const compiled = compileCondition(raw.where, [...at, 'where']);
    issues.push(...compiled.issues);
    where = compiled.condition;
    for (const expr of where ? timeExpressionsOf(where) : []) anchorFits(expr, on, [...at, 'where'], issues, 'occurredAt');
  }

  const purpose = raw.purpose;
  if (typeof purpose !== 'string' || !(PURPOSES as readonly string[]).includes(purpose)) {
    add([...at, 'purpose'], `purpose must be one of ${PURPOSES.join(', ')}; got ${describe(purpose)}`);
  }
  const channel = raw.channel;
  if (typeof channel !== 'string' || !(CHANNELS as readonly string[]).includes(channel)) {
    add([...at, 'channel'], `channel must be one of ${CHANNELS.join(', ')}; got ${describe(channel)}`);
  }
  const isCare = typeof purpose === 'string' && purpose.startsWith('care.');

  const send = compileSend(raw.send, [...at, 'send'], channel as Channel, purpose as string, context, issues);
  // A link into a visit is care logistics about an appointment (docs/video.md): it goes only
  // where care messages may go (BAA, rule 4), and each delivery names the appointment it joins.
  if (isRecord(raw.send) && raw.send.videoLink === true) {
    if (typeof purpose === 'string' && !purpose.startsWith('care.')) add([...at, 'send', 'videoLink'], `a video link is sent for care only; purpose ${purpose} cannot carry one (use care.logistics)`);
    const others = on.filter((t) => subjectKindOf(t) !== 'appointment');
    if (others.length > 0) add([...at, 'send', 'videoLink'], `a video link joins an appointment; ${others.join(', ')} ${others.length === 1 ? 'is' : 'are'} not about one`);
  }
  // docs/consent.md rule 4 (BAA coverage, PHI) and the fields the output can send: coverage.ts.
  const output = send && typeof id === 'string' ? context.outputs.find((o) => o.name === send.output) : undefined;
  if (output && send) issues.push(...destinationIssues({ id: id as string, purpose: purpose as string, fields: send.fields }, output, at));
  const steps = compileCadence(raw.at, [...at, 'at'], on, issues, true);
  let expires: TimeExpr | undefined;
  if (raw.expires !== undefined) {
    const compiled = compileTimeExpr(raw.expires, [...at, 'expires']);
    issues.push(...compiled.issues);
    expires = compiled.expr;
    if (expires) anchorFits(expires, on, [...at, 'expires'], issues);
  }

  const cancelOn = raw.cancelOn === undefined ? defaultCancelOn(on) : triggerTypes(raw.cancelOn, [...at, 'cancelOn'], issues, false) ?? [];
  const replanOn = raw.replanOn === undefined ? defaultReplanOn(on) : triggerTypes(raw.replanOn, [...at, 'replanOn'], issues, false) ?? [];
  for (const [key, list] of [['cancelOn', cancelOn], ['replanOn', replanOn]] as const) {
    list.forEach((type, i) => {
      if (on.includes(type)) add([...at, key, i], `"${type}" triggers this rule; it cannot also ${key === 'cancelOn' ? 'cancel' : 'replan'} it`);
      else if (on.length > 0 && !on.some((t) => subjectKindOf(t) === subjectKindOf(type))) {
        add([...at, key, i], `"${type}" is about ${subjectKindOf(type)}s, but this rule's deliveries are about ${[...new Set(on.map(subjectKindOf))].join('/')}s: it could never match`);
      }
    });
  }
  const both = cancelOn.filter((t) => replanOn.includes(t));
  if (both.length > 0) add([...at, 'replanOn'], `${both.join(', ')} cannot both cancel and replan`);

  const variants = compileVariants(raw.variants, [...at, 'variants'], steps?.length ?? 1, on, issues);

  let holdout = 0;
  if (raw.holdout !== undefined) {
    if (typeof raw.holdout !== 'number' || !(raw.holdout >= 0 && raw.holdout < 1)) {
      add([...at, 'holdout'], `holdout is a share of patients from 0 to below 1 (e.g. 0.1); got ${describe(raw.holdout)}`);
    } else if (isCare && raw.holdout > 0) {
      add([...at, 'holdout'], `a holdout is refused for ${purpose as string}: care messages are not withheld to build a control group (docs/consent.md "Measuring outcomes"); use variants, or a non-care purpose`);
    } else holdout = raw.holdout;
  }

  const reply = raw.reply === undefined ? undefined : compileReply(raw.reply, [...at, 'reply'], { on, channel }, { outputs: context.outputs, optOutWords: context.optOutWords ?? [] }, issues);

  if (issues.length > before || !send || !steps) return undefined;
  return {
    id: id as string,
    on,
    ...(where ? { where } : {}),
    purpose: purpose as Purpose,
    channel: channel as Channel,
    send,
    at: steps,
    ...(expires ? { expires } : {}),
    cancelOn,
    replanOn,
    variants,
    holdout,
    ...(reply ? { reply } : {}),
  };
}

function compileSend(
  raw: unknown,
  at: IssuePath,
  channel: Channel,
  purpose: string,
  context: RuleContext,
  issues: RuleIssue[],
): Rule['send'] | undefined {
  const before = issues.length;
  const add = (path: IssuePath, message: string) => issues.push({ path, message });
  if (!isRecord(raw)) {
    add(at, `send must be a mapping with output, template and fields; got ${describe(raw)}`);
    return undefined;
  }
  unknownKeys(raw, SEND_KEYS, at, issues);

  const outputName = raw.output;
  if (typeof outputName !== 'string' || outputName === '') {
    add([...at, 'output'], `output must name an output connector instance; got ${describe(outputName)}`);
  }
  const output = context.outputs.find((o) => o.name === outputName);
  if (typeof outputName === 'string' && outputName !== '' && !output) {
    const names = context.outputs.map((o) => o.name);
    add([...at, 'output'], `no output named "${outputName}"${names.length ? `; known: ${closest(outputName, names).join(', ')}` : ' (no outputs are configured)'}`);
  }

  let to: FieldPath | undefined;
  const toSource = raw.to ?? DEFAULT_RECIPIENT[channel];
  if (toSource !== undefined) {
    if (typeof toSource !== 'string') add([...at, 'to'], `to must be a trigger path like patient.telecom[system=phone,use=mobile].value; got ${describe(toSource)}`);
    else {
      const path = compilePath(toSource);
      if (typeof path === 'string') add([...at, 'to'], path);
      else if (path.spec.kind !== 'string' && !(path.spec.kind === 'object' && path.spec.fields?.value)) {
        add([...at, 'to'], `to must reach a text value (e.g. ….value); "${toSource}" is a ${path.spec.kind}`);
      } else to = path;
    }
  }

  const template = raw.template;
  if (template !== undefined && (typeof template !== 'string' || template === '')) {
    add([...at, 'template'], `template must be a template name; got ${describe(template)}`);
  } else if (template === undefined && (channel === 'sms' || channel === 'email')) {
    add([...at, 'template'], `a ${channel} rule needs a template`);
  }
  const noNameTemplate = raw.noNameTemplate;
  if (noNameTemplate !== undefined && (typeof noNameTemplate !== 'string' || noNameTemplate === '')) {
    add([...at, 'noNameTemplate'], `noNameTemplate must be a template name (the variant that names no one, for a shared address); got ${describe(noNameTemplate)}`);
  }

  const fields: FieldPath[] = [];
  if (raw.fields !== undefined && !Array.isArray(raw.fields)) {
    add([...at, 'fields'], `fields is the list of trigger paths the destination may receive; got ${describe(raw.fields)}`);
  } else {
    for (const [i, item] of ((raw.fields as unknown[] | undefined) ?? []).entries()) {
      if (typeof item !== 'string') {
        add([...at, 'fields', i], `expected a trigger path, got ${describe(item)}`);
        continue;
      }
      const path = compilePath(item);
      if (typeof path === 'string') add([...at, 'fields', i], path);
      else if (path.segments.some((s) => s.filter)) add([...at, 'fields', i], 'fields name whole paths; filters […] belong in `to` and `where`');
      else fields.push(path);
    }
  }

  const videoLink = raw.videoLink;
  if (videoLink !== undefined && typeof videoLink !== 'boolean') add([...at, 'videoLink'], `videoLink is true (the templates show {{ video.link }}) or false; got ${describe(videoLink)}`);
  else if (videoLink === true && template === undefined) add([...at, 'videoLink'], 'videoLink needs a template: the link is shown by it, as {{ video.link }}');

  if (output && output.allowedPurposes.length === 0 && output.writeBackKinds !== undefined) {
    add([...at, 'output'], `output "${output.name}" writes answers back to the EHR and sends no messages: name it in a rule's reply.writeBack, not in send.output`);
  } else if (output && typeof purpose === 'string') {
    if (output.channel !== channel) add([...at, 'output'], `output "${output.name}" is a ${output.channel} output, but the rule's channel is ${channel}`);
    if (!output.allowedPurposes.includes(purpose)) {
      add([...at, 'output'], `output "${output.name}" does not allow purpose ${purpose} (allowed: ${output.allowedPurposes.join(', ') || 'none'}) (docs/consent.md rule 4)`);
    }
  }
  if (issues.length > before) return undefined;
  return {
    output: outputName as string,
    ...(to ? { to } : {}),
    ...(template !== undefined ? { template: template as string } : {}),
    ...(noNameTemplate !== undefined ? { noNameTemplate: noNameTemplate as string } : {}),
    fields,
    ...(videoLink === true ? { videoLink: true as const } : {}),
  };
}

function compileCadence(raw: unknown, at: IssuePath, on: TriggerType[], issues: RuleIssue[], required: boolean): TimeExpr[] | undefined {
  if (raw === undefined) {
    if (required) issues.push({ path: at, message: 'at is required: when to send, e.g. "appointment.start - 24h" or "now"' });
    return undefined;
  }
  const list = Array.isArray(raw) ? raw : [raw];
  if (list.length === 0 || list.length > MAX_CADENCE) {
    issues.push({ path: at, message: `at takes one time expression or a list of 1–${MAX_CADENCE}` });
    return undefined;
  }
  const out: TimeExpr[] = [];
  list.forEach((item, i) => {
    const where = Array.isArray(raw) ? [...at, i] : at;
    const compiled = compileTimeExpr(item, where);
    issues.push(...compiled.issues);
    if (compiled.expr) {
      anchorFits(compiled.expr, on, where, issues);
      out.push(compiled.expr);
    }
  });
  return out.length === list.length ? out : undefined;
}

/** An appointment.* anchor can only be present on appointment triggers (likewise encounter.*). */
function anchorFits(expr: TimeExpr, on: TriggerType[], at: IssuePath, issues: RuleIssue[], instead = 'occurredAt or now'): void {
  const family = expr.anchor.split('.')[0];
  if ((family === 'appointment' || family === 'encounter') && on.length > 0 && !on.some((t) => subjectKindOf(t) === family)) {
    issues.push({ path: at, message: `"${expr.anchor}" is never present on ${on.join(', ')} triggers; anchor on ${instead} instead` });
  }
}

function compileVariants(raw: unknown, at: IssuePath, steps: number, on: TriggerType[], issues: RuleIssue[]): RuleVariant[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw) || raw.length < 2) {
    issues.push({ path: at, message: 'variants is a list of at least two { id, weight, at?, template? }' });
    return [];
  }
  const out: RuleVariant[] = [];
  const ids = new Set<string>();
  raw.forEach((item, i) => {
    const here = [...at, i];
    if (!isRecord(item)) {
      issues.push({ path: here, message: `a variant is a mapping { id, weight, at?, template? }; got ${describe(item)}` });
      return;
    }
    unknownKeys(item, VARIANT_KEYS, here, issues);
    const { id, weight } = item;
    if (typeof id !== 'string' || !ID.test(id)) issues.push({ path: [...here, 'id'], message: `variant id must be letters, digits, ".", "_" or "-"; got ${describe(id)}` });
    else if (ids.has(id)) issues.push({ path: [...here, 'id'], message: `duplicate variant id "${id}"` });
    else ids.add(id);
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
      issues.push({ path: [...here, 'weight'], message: `weight must be a positive number; got ${describe(weight)}` });
    }
    const variant: RuleVariant = { id: id as string, weight: weight as number };
    if (item.at !== undefined) {
      const cadence = compileCadence(item.at, [...here, 'at'], on, issues, false);
      if (cadence && cadence.length !== steps) {
        issues.push({ path: [...here, 'at'], message: `the rule's at has ${steps} step(s); a variant's at must have the same number` });
      } else if (cadence) variant.at = cadence;
    }
    if (item.template !== undefined) {
      if (typeof item.template !== 'string' || item.template === '') issues.push({ path: [...here, 'template'], message: 'template must be a template name' });
      else variant.template = item.template;
    }
    out.push(variant);
  });
  return out;
}

function triggerTypes(raw: unknown, at: IssuePath, issues: RuleIssue[], required: boolean): TriggerType[] | undefined {
  if (raw === undefined && !required) return [];
  const list = typeof raw === 'string' ? [raw] : raw;
  if (!Array.isArray(list) || (required && list.length === 0)) {
    issues.push({ path: at, message: `expected a trigger type or a list of them (e.g. appointment.booked); got ${describe(raw)}` });
    return undefined;
  }
  const out: TriggerType[] = [];
  let bad = false;
  list.forEach((item, i) => {
    const where = Array.isArray(raw) ? [...at, i] : at;
    if (typeof item !== 'string' || !(TRIGGER_TYPES as readonly string[]).includes(item)) {
      issues.push({ path: where, message: `unknown trigger type ${describe(item)}; closest: ${closest(String(item), TRIGGER_TYPES).join(', ')}` });
      bad = true;
    } else if (item === TriggerType.SlotFreed) {
      // About no patient: nobody to write to, no consent to check. The waitlist offers such slots (waitlist.on).
      issues.push({ path: where, message: 'slot.freed (time freed on a schedule) is about no patient: no message can be planned from it; to offer such slots to the waitlist, list it in the waitlist block\'s `on` (docs/waitlist.md)' });
      bad = true;
    } else if (!out.includes(item as TriggerType)) out.push(item as TriggerType);
  });
  return bad ? undefined : out;
}

function unknownKeys(raw: Record<string, unknown>, known: readonly string[], at: IssuePath, issues: RuleIssue[]): void {
  for (const key of Object.keys(raw)) {
    if (!known.includes(key)) {
      issues.push({ path: [...at, key], message: `unknown key "${key}"; did you mean ${closest(key, known, 1)[0]}? (known: ${known.join(', ')})` });
    }
  }
}
