// FHIR R4 Consent resources (https://hl7.org/fhir/R4/consent.html), read and evaluated by their
// provisions for one message (docs/consent.md rule 3 and "Precise semantics"). The resource is
// stored as given; this module reads the elements consent depends on and answers, for a
// purpose, a channel, an output, a data class and an instant: permit, deny, opt-out, or
// nothing to say.
//
//   status          only `active` speaks; any other status counts as absent
//   provision.period  outside it the consent is absent (expired, not yet valid)
//   policyRule      OPTOUT / OPTOUTE: a deny is an opt-out (rule 2, `opted_out`);
//                   without a provision: OPTIN/OPTINR permit everything, OPTOUT/OPTOUTE deny it
//   provision tree  a provision applies when every criterion it lists matches (purpose, channel
//                   code, actor, class, security label, period); a nested provision is an
//                   exception to its parent: the deepest applicable provisions decide, and when
//                   applicable provisions at that depth disagree, deny wins ("deny wins inside
//                   one consent"). A provision without a type takes its parent's.
//   criteria        purpose: v3 ActReason (care.* → TREAT, survey and service.info → HOPERAT,
//                   marketing and fundraising → HMARKT, research → HRESCH); channel: a
//                   provision.code coding from http://hl7.org/fhir/contact-point-system (sms,
//                   email, phone), none = every channel; actor: Device/<output name> or an
//                   identifier with the output's name; class: the resource type the message is
//                   about (Appointment, Encounter, Patient); securityLabel: the labels the
//                   message's trigger carries. dataPeriod and data are kept, not evaluated.
//
// Across several consents the latest Consent.dateTime wins (the caller orders them).
import type { Channel, Purpose } from '../types.ts';
import { isRecord, parseInstant } from './values.ts';

export const CONSENT_STATUSES = ['draft', 'proposed', 'active', 'rejected', 'inactive', 'entered-in-error'] as const;
export const CONTACT_POINT_SYSTEM = 'http://hl7.org/fhir/contact-point-system';
export const ACT_REASON_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';

/** docs/consent.md "Precise semantics": the v3 ActReason code a purpose is named by. */
export function purposeCode(purpose: Purpose): string {
  switch (purpose) {
    case 'care.logistics':
    case 'care.followup':
      return 'TREAT';
    case 'survey':
    case 'service.info':
      return 'HOPERAT';
    case 'marketing':
    case 'fundraising':
      return 'HMARKT';
    case 'research':
      return 'HRESCH';
    default:
      purpose satisfies never;
      return 'TREAT';
  }
}

/** The purposes an ActReason code names (the reverse of purposeCode). */
export function purposesOfCode(code: string): Purpose[] {
  switch (code) {
    case 'TREAT':
      return ['care.logistics', 'care.followup'];
    case 'HOPERAT':
      return ['survey', 'service.info'];
    case 'HMARKT':
      return ['marketing', 'fundraising'];
    case 'HRESCH':
      return ['research'];
    default:
      return [];
  }
}

export interface ParsedProvision {
  type?: 'deny' | 'permit';
  period?: { start?: number; end?: number };
  /** Output names the provision's actors name (Device/<name>, identifier value). */
  actors: string[];
  /** ActReason codes. */
  purposes: string[];
  /** contact-point-system codes. */
  channels: string[];
  /** Resource types (class codes). */
  classes: string[];
  securityLabels: string[];
  provisions: ParsedProvision[];
}

export interface ParsedConsent {
  id?: string;
  status: (typeof CONSENT_STATUSES)[number];
  /** Consent.patient: a Patient reference and/or an identifier. */
  patient: { reference?: string; identifierValue?: string; identifierSystem?: string };
  /** Consent.dateTime as given (ISO), if any. */
  dateTime?: string;
  /** policyRule codes (any system). */
  policyRules: string[];
  provision?: ParsedProvision;
}

/** Where a resource is malformed, as a FHIRPath-like expression (OperationOutcome.issue.expression). */
export interface ConsentProblem {
  expression: string;
  message: string;
}

const DATE_TIME = /^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?)?)?$/;

/** Reads a Consent; every problem is listed with the element it is at. */
export function readConsent(resource: unknown): { consent?: ParsedConsent; problems: ConsentProblem[] } {
  const problems: ConsentProblem[] = [];
  const bad = (expression: string, message: string) => problems.push({ expression, message });
  if (!isRecord(resource)) return { problems: [{ expression: 'Consent', message: 'the body must be a FHIR Consent resource (a JSON object)' }] };
  if (resource.resourceType !== 'Consent') bad('Consent.resourceType', `resourceType must be "Consent", got ${JSON.stringify(resource.resourceType)}`);
  const status = resource.status;
  if (typeof status !== 'string' || !(CONSENT_STATUSES as readonly string[]).includes(status)) {
    bad('Consent.status', `status is required and one of ${CONSENT_STATUSES.join(', ')}; got ${JSON.stringify(status)}`);
  }
  const patient: ParsedConsent['patient'] = {};
  if (!isRecord(resource.patient)) bad('Consent.patient', 'patient is required: a reference such as { "reference": "Patient/123" } or { "identifier": { "value": "MRN-1" } }');
  else {
    const { reference, identifier } = resource.patient;
    if (reference !== undefined) {
      if (typeof reference !== 'string' || !/^(?:.*\/)?Patient\/[A-Za-z0-9\-.]{1,64}$/.test(reference)) bad('Consent.patient.reference', `reference must name a Patient (Patient/<id>), got ${JSON.stringify(reference)}`);
      else patient.reference = reference;
    }
    if (identifier !== undefined) {
      if (!isRecord(identifier) || typeof identifier.value !== 'string' || identifier.value === '') bad('Consent.patient.identifier', 'identifier must have a value');
      else {
        patient.identifierValue = identifier.value;
        if (typeof identifier.system === 'string') patient.identifierSystem = identifier.system;
      }
    }
    if (reference === undefined && identifier === undefined) bad('Consent.patient', 'patient needs a reference (Patient/<id>) or an identifier');
  }
  if (resource.dateTime !== undefined && !isDateTime(resource.dateTime)) bad('Consent.dateTime', `dateTime must be a FHIR dateTime such as 2025-06-01T10:00:00+02:00, got ${JSON.stringify(resource.dateTime)}`);
  const policyRules: string[] = [];
  if (resource.policyRule !== undefined) {
    if (!isRecord(resource.policyRule) || (resource.policyRule.coding !== undefined && !Array.isArray(resource.policyRule.coding))) bad('Consent.policyRule', 'policyRule must be a CodeableConcept ({ "coding": [{ "system": …, "code": "OPTOUT" }] })');
    else policyRules.push(...codings(resource.policyRule.coding, 'Consent.policyRule.coding', bad).map((c) => c.code));
  }
  let provision: ParsedProvision | undefined;
  if (resource.provision !== undefined) provision = readProvision(resource.provision, 'Consent.provision', bad, 0);
  if (problems.length > 0) return { problems };
  return {
    consent: {
      ...(typeof resource.id === 'string' ? { id: resource.id } : {}),
      status: status as ParsedConsent['status'],
      patient,
      ...(typeof resource.dateTime === 'string' ? { dateTime: resource.dateTime } : {}),
      policyRules,
      ...(provision ? { provision } : {}),
    },
    problems,
  };
}

function isDateTime(value: unknown): value is string {
  return typeof value === 'string' && DATE_TIME.test(value) && dateTimeMs(value) !== undefined;
}

/** Epoch ms of a FHIR dateTime; a partial date (year, month, day) means its start, in UTC. */
export function dateTimeMs(value: string): number | undefined {
  const full = value.length === 4 ? `${value}-01-01T00:00:00Z` : value.length === 7 ? `${value}-01T00:00:00Z` : value.length === 10 ? `${value}T00:00:00Z` : value;
  const ms = parseInstant(full);
  if (ms === undefined) return undefined;
  // Date.parse rolls 2025-02-30 over to March: the calendar date must survive the round trip.
  const [y, m, d] = full.slice(0, 10).split('-').map(Number) as [number, number, number];
  const check = new Date(Date.UTC(y, m - 1, d));
  return check.getUTCMonth() === m - 1 && check.getUTCDate() === d ? ms : undefined;
}

function codings(raw: unknown, at: string, bad: (e: string, m: string) => void): Array<{ system?: string; code: string }> {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) {
    bad(at, 'must be a list of codings ({ "system": …, "code": … })');
    return [];
  }
  const out: Array<{ system?: string; code: string }> = [];
  raw.forEach((c, i) => {
    if (!isRecord(c) || typeof c.code !== 'string' || c.code === '') bad(`${at}[${i}]`, 'a coding needs a code');
    else out.push({ code: c.code, ...(typeof c.system === 'string' ? { system: c.system } : {}) });
  });
  return out;
}

const MAX_DEPTH = 8;

function readProvision(raw: unknown, at: string, bad: (e: string, m: string) => void, depth: number): ParsedProvision | undefined {
  if (!isRecord(raw)) {
    bad(at, 'a provision must be an object');
    return undefined;
  }
  if (depth >= MAX_DEPTH) {
    bad(at, `provisions nest at most ${MAX_DEPTH} deep`);
    return undefined;
  }
  const p: ParsedProvision = { actors: [], purposes: [], channels: [], classes: [], securityLabels: [], provisions: [] };
  if (raw.type !== undefined) {
    if (raw.type !== 'deny' && raw.type !== 'permit') bad(`${at}.type`, `type must be "deny" or "permit", got ${JSON.stringify(raw.type)}`);
    else p.type = raw.type;
  }
  if (raw.period !== undefined) {
    if (!isRecord(raw.period)) bad(`${at}.period`, 'period must be an object with start and/or end');
    else {
      const period: { start?: number; end?: number } = {};
      for (const edge of ['start', 'end'] as const) {
        const v = raw.period[edge];
        if (v === undefined) continue;
        if (!isDateTime(v)) bad(`${at}.period.${edge}`, `${edge} must be a FHIR dateTime, got ${JSON.stringify(v)}`);
        else period[edge] = dateTimeMs(v);
      }
      p.period = period;
    }
  }
  if (raw.actor !== undefined) {
    if (!Array.isArray(raw.actor)) bad(`${at}.actor`, 'actor must be a list of { role, reference }');
    else
      raw.actor.forEach((a, i) => {
        const ref = isRecord(a) ? a.reference : undefined;
        if (!isRecord(ref)) bad(`${at}.actor[${i}].reference`, 'an actor needs a reference');
        else {
          if (typeof ref.reference === 'string') p.actors.push(ref.reference.replace(/^.*\/(?=[^/]+\/[^/]+$)/, ''));
          if (isRecord(ref.identifier) && typeof ref.identifier.value === 'string') p.actors.push(ref.identifier.value);
        }
      });
  }
  p.purposes = codings(raw.purpose, `${at}.purpose`, bad).map((c) => c.code);
  p.classes = codings(raw.class, `${at}.class`, bad).map((c) => c.code);
  p.securityLabels = codings(raw.securityLabel, `${at}.securityLabel`, bad).map((c) => c.code);
  if (raw.code !== undefined) {
    if (!Array.isArray(raw.code)) bad(`${at}.code`, 'code must be a list of CodeableConcepts');
    else
      raw.code.forEach((cc, i) => {
        if (!isRecord(cc)) {
          bad(`${at}.code[${i}]`, 'a code must be a CodeableConcept');
          return;
        }
        for (const c of codings(cc.coding, `${at}.code[${i}].coding`, bad)) {
          if (c.system !== CONTACT_POINT_SYSTEM) continue;
          if (!['phone', 'fax', 'email', 'pager', 'url', 'sms', 'other'].includes(c.code)) bad(`${at}.code[${i}].coding`, `"${c.code}" is not a contact-point-system code (sms, email, phone…)`);
          else p.channels.push(c.code);
        }
      });
  }
  if (raw.provision !== undefined) {
    if (!Array.isArray(raw.provision)) bad(`${at}.provision`, 'provision must be a list');
    else
      raw.provision.forEach((child, i) => {
        const parsed = readProvision(child, `${at}.provision[${i}]`, bad, depth + 1);
        if (parsed) p.provisions.push(parsed);
      });
  }
  return p;
}

/** What one message is, as a Consent's provisions see it. */
export interface ConsentQuestion {
  purpose: Purpose;
  channel: Channel;
  output: string;
  /** Resource type the message is about: Appointment, Encounter or Patient. */
  dataClass: string;
  /** Security labels of the message's trigger. */
  labels: readonly string[];
  /** The instant the message would go (epoch ms). */
  at: number;
}

export type ConsentAnswer = 'permit' | 'deny' | 'opt_out';

/** The consent's answer for one message, or undefined when it says nothing about it. */
export function evaluateConsent(consent: ParsedConsent, q: ConsentQuestion): ConsentAnswer | undefined {
  if (consent.status !== 'active') return undefined;
  const optOutRule = consent.policyRules.some((c) => c === 'OPTOUT' || c === 'OPTOUTE');
  let verdict: 'permit' | 'deny' | undefined;
  if (!consent.provision) {
    if (optOutRule) verdict = 'deny';
    else if (consent.policyRules.some((c) => c === 'OPTIN' || c === 'OPTINR')) verdict = 'permit';
  } else {
    // The root period bounds the whole consent: outside it the consent is absent.
    if (!inPeriod(consent.provision, q.at)) return undefined;
    verdict = decide(consent.provision, undefined, q, 0);
  }
  if (verdict === 'deny' && optOutRule) return 'opt_out';
  return verdict;
}

function decide(p: ParsedProvision, inherited: 'permit' | 'deny' | undefined, q: ConsentQuestion, depth: number): 'permit' | 'deny' | undefined {
  if (depth > MAX_DEPTH || !applies(p, q)) return undefined;
  const type = p.type ?? inherited;
  const children = p.provisions.map((c) => decide(c, type, q, depth + 1)).filter((v): v is 'permit' | 'deny' => v !== undefined);
  if (children.length > 0) return children.includes('deny') ? 'deny' : 'permit';
  return type;
}

function inPeriod(p: ParsedProvision, at: number): boolean {
  return !p.period || ((p.period.start === undefined || at >= p.period.start) && (p.period.end === undefined || at < p.period.end));
}

function applies(p: ParsedProvision, q: ConsentQuestion): boolean {
  if (!inPeriod(p, q.at)) return false;
  if (p.purposes.length > 0 && !p.purposes.includes(purposeCode(q.purpose))) return false;
  if (p.channels.length > 0 && !p.channels.includes(q.channel)) return false;
  if (p.actors.length > 0 && !p.actors.some((a) => a === q.output || a === `Device/${q.output}`)) return false;
  if (p.classes.length > 0 && !p.classes.includes(q.dataClass)) return false;
  if (p.securityLabels.length > 0 && !p.securityLabels.some((l) => q.labels.includes(l))) return false;
  return true;
}
