// The send-time checks of docs/consent.md, rules 2–8, as one pure function: what the ledger
// and the store say about a patient goes in (gathered by workers/consent-gather.ts), a
// decision comes out — allow (with the basis), or deny with a reason code, or move (quiet
// hours, with retryAt). First denial wins; a denial is data, never an error. Rule 1 (still
// current) and `expired` are checked by the deliver worker before this runs.
//
//   2  deceased → opted_out → no_contact          (that order inside rule 2)
//   3  consent: the latest applicable record per patient; across merged patients the
//      stricter state wins (opt-out > deny > permit > none); none → the default matrix
//   4  destination fitness: the output allows the purpose; care details only to baa outputs
//   5  sensitive window: no survey, service.info, marketing or fundraising after flagged care
//   6  frequency caps on the day (and ISO week) of the actual send, in the patient's zone
//   7  quiet hours: move (retryAt) or `expired`
//   8  contact point: an address exists; a shared one gets the no-name variant, else suppressed
//
// Clock passed in; imports only types.ts and pipeline/ (docs/architecture.md dependency rule).
import { DateTime } from 'luxon';
import { ConsentReason, type Channel, type ConsentEvent, type Delivery, type Purpose } from '../types.ts';
import { evaluateConsent, type ConsentAnswer, type ParsedConsent } from './fhir-consent.ts';
import { defaultVerdict, isCare, type PolicySettings } from './policy.ts';
import { quietHours } from './quiet-hours.ts';
import { parseInstant } from './values.ts';

const DAY_MS = 86_400_000;

/** A FHIR Consent as the ledger keeps it, read (readConsent) for evaluation. */
export interface LedgerConsent {
  /** Store id. */
  id: string;
  consent: ParsedConsent;
  /** When it takes effect for "latest wins": Consent.dateTime, else when it was recorded. */
  at: number;
}

/** Everything the ledger holds about one patient id (one of a merged group). */
export interface PatientRecord {
  id: string;
  deceased: boolean;
  /** Patient-scoped entries (grants, revocations, opt-outs, no-contact flags). */
  events: readonly ConsentEvent[];
  consents: readonly LedgerConsent[];
}

/** An appointment or encounter of the patient, for the sensitive window (rule 5). */
export interface CareEpisode {
  /** `appointment/<id>` or `encounter/<id>`. */
  key: string;
  status?: string;
  /** Epoch ms. */
  start?: number;
  end?: number;
  /** Confidentiality labels, sticky on an encounter (docs/trigger.md `sensitivity`). */
  labels: readonly string[];
  /** Service type code (and `system|code`). */
  serviceCodes: readonly string[];
  locationIds: readonly string[];
}

/** A message already sent to the patient (the disclosure ledger), for caps (rule 6). */
export interface SentRecord {
  /** Epoch ms. */
  at: number;
  purpose: Purpose;
  channel: Channel;
}

/** The message being checked. */
export type CheckedDelivery = Pick<Delivery, 'id' | 'purpose' | 'channel' | 'output' | 'to' | 'dueAt' | 'expiresAt' | 'subjectKind' | 'noNameTemplate' | 'payload'>;

export interface ConsentCheck {
  delivery: CheckedDelivery;
  /** Epoch ms of the appointment the message is about, if any (quiet-hours moves stay an hour before it). */
  appointmentStart?: number;
  /** Labels of the delivery's trigger (data class for Consent securityLabel provisions). */
  labels: readonly string[];
  /**
   * The output as declared now; undefined when it is not running (the worker refuses it before).
   * `needsAddress` (outputs/spec.ts): whether it cannot send without the delivery's address.
   */
  output?: { baa: boolean; allowedPurposes: readonly string[]; needsAddress?: boolean };
  /** The patient's zone (pipeline/zones.ts patientZone). */
  zone: string;
  /** The patient and every patient merged with them (A40), first the delivery's own. */
  patients: readonly PatientRecord[];
  /** Keyword entries of the delivery's address (SMS opt-outs belong to the number). */
  addressEvents: readonly ConsentEvent[];
  episodes: readonly CareEpisode[];
  /** Sends to the patient group in the last 8 days (enough for a day and an ISO week). */
  sent: readonly SentRecord[];
  /** Another patient uses the delivery's address. */
  addressShared: boolean;
  /** Epoch ms. */
  now: number;
}

export type ConsentDecision =
  | {
      allow: true;
      /** Why it may go, for people: "consent Consent/7 permit", "default eu: care.logistics sms allow". */
      basis: string;
      /** Ledger entries and Consent ids the decision rests on. */
      records: string[];
      /** Render with the rule's no-name template (a shared address). */
      noName: boolean;
    }
  | {
      allow: false;
      /** The rule that said no (1–8), 0 for a delivery's life (expired). */
      rule: number;
      reason: ConsentReason;
      /** Quiet hours: when to try again (ISO-8601 in the patient's zone). */
      retryAt?: string;
      basis: string;
      records: string[];
    };

/**
 * Denials a change of consent enforces at once on pending deliveries: they come from a record
 * and hold whenever the message would be sent. `no_consent` (the default matrix) is left to
 * send time: a grant may still come before then.
 */
export const ENFORCED_REASONS: ReadonlySet<ConsentReason> = new Set([
  ConsentReason.Deceased,
  ConsentReason.OptedOut,
  ConsentReason.NoContact,
  ConsentReason.ConsentDenied,
]);

/** Purposes withheld within the sensitive window (docs/consent.md rule 5). */
const SENSITIVE_PURPOSES: readonly Purpose[] = ['survey', 'service.info', 'marketing', 'fundraising'];

/**
 * Whether a check of `purpose` reads the patient's care episodes (ConsentCheck.episodes): only
 * rule 5 does, for the purposes it withholds; a check of any other may be given none.
 */
export function readsCareEpisodes(purpose: Purpose): boolean {
  return SENSITIVE_PURPOSES.includes(purpose);
}

/** Paths of a payload that say something about care (with any identity: PHI). */
const CARE_KEYS = ['appointment', 'encounter', 'sensitivity', 'type', 'source'];

/** The state one patient's records give a purpose on a channel. */
type State = { kind: 'opt_out' | 'deny' | 'permit'; records: string[]; basis: string };

function denial(rule: number, reason: ConsentReason, basis: string, records: string[] = [], retryAt?: string): ConsentDecision {
  return { allow: false, rule, reason, basis, records, ...(retryAt !== undefined ? { retryAt } : {}) };
}

/**
 * Rules 2 and 3 only: what the patient's records (and the default matrix) say about the
 * delivery's purpose and channel, whatever the time, output or address count. The patient
 * views show it per purpose and channel; a change of consent suppresses at once the pending
 * deliveries it now denies.
 */
export function consentStanding(c: ConsentCheck, policy: PolicySettings): ConsentDecision {
  const d = c.delivery;
  // Rule 2: deceased, then opted_out, then no_contact.
  const dead = c.patients.find((p) => p.deceased);
  if (dead) return denial(2, ConsentReason.Deceased, 'the patient is recorded as deceased');
  const stopped = addressOptOut(c);
  if (stopped) return denial(2, ConsentReason.OptedOut, `${stopped.source === 'sms' ? 'SMS keyword' : 'provider-reported'} opt-out (${stopped.method}) of this ${d.channel === 'email' ? 'address' : 'number'}`, [stopped.id]);
  const states = c.patients.map((p) => patientState(p, c)).filter((s): s is State => s !== undefined);
  const strictest = (['opt_out', 'deny', 'permit'] as const).map((k) => states.find((s) => s.kind === k)).find((s) => s !== undefined);
  if (strictest?.kind === 'opt_out') return denial(2, ConsentReason.OptedOut, strictest.basis, strictest.records);
  const flagged = c.patients.map((p) => latest(p.events.filter((e) => e.action === 'no_contact' || e.action === 'contact_allowed'))).find((e) => e?.action === 'no_contact');
  if (flagged) return denial(2, ConsentReason.NoContact, 'the organisation set a no-contact flag', [flagged.id]);

  // Rule 3: the consent state, else the default matrix.
  if (strictest?.kind === 'deny') return denial(3, ConsentReason.ConsentDenied, strictest.basis, strictest.records);
  if (strictest?.kind === 'permit') return { allow: true, basis: strictest.basis, records: strictest.records, noName: false };
  if (defaultVerdict(policy.defaults, d.purpose, d.channel) === 'deny') {
    return denial(3, ConsentReason.NoConsent, `no consent record; the ${policy.region} default denies ${d.purpose} by ${d.channel}`);
  }
  return { allow: true, basis: `no consent record; the ${policy.region} default allows ${d.purpose} by ${d.channel}`, records: [], noName: false };
}

/** Runs rules 2–8 in order; the first denial wins. */
export function checkConsent(c: ConsentCheck, policy: PolicySettings): ConsentDecision {
  const d = c.delivery;
  const deny = denial;
  const standing = consentStanding(c, policy);
  if (!standing.allow) return standing;
  const { basis, records } = standing;

  // Rule 4: the destination as declared now (also refused when mappings load).
  if (c.output && !c.output.allowedPurposes.includes(d.purpose)) {
    return deny(4, ConsentReason.DestinationNotCovered, `output ${d.output} does not allow ${d.purpose}`, records);
  }
  if (c.output && !c.output.baa && (isCare(d.purpose) || Object.keys(d.payload).some((k) => CARE_KEYS.includes(k)))) {
    return deny(4, ConsentReason.DestinationNotCovered, `output ${d.output} is not covered by a BAA and the message is about care`, records);
  }

  // Rule 5: sensitive care.
  if (readsCareEpisodes(d.purpose)) {
    const episode = c.episodes.find((e) => inSensitiveWindow(e, policy, c.now));
    if (episode) return deny(5, ConsentReason.SensitiveWindow, `within ${policy.sensitive.windowDays} days of sensitive care (${episode.key})`, records);
  }

  // Rule 7 decides when it would go; rule 6 counts that day (a capped message is not deferred).
  const due = parseInstant(d.dueAt) ?? c.now;
  const expires = d.expiresAt === undefined ? undefined : parseInstant(d.expiresAt);
  const when = quietHours(policy.quietHours, {
    purpose: d.purpose,
    channel: d.channel,
    due,
    now: c.now,
    zone: c.zone,
    ...(c.appointmentStart !== undefined ? { appointmentStart: c.appointmentStart } : {}),
    ...(expires !== undefined ? { expires } : {}),
  });
  if (when.kind === 'expired') return deny(7, ConsentReason.Expired, `no time outside quiet hours (${policy.quietHours.start}–${policy.quietHours.end}) before it expires`, records);
  const cap = capReached(c, policy, when.at);
  if (cap) return deny(6, ConsentReason.FrequencyCap, cap, records);
  if (when.kind === 'move') {
    const retryAt = DateTime.fromMillis(when.at, { zone: c.zone }).toISO({ suppressMilliseconds: true })!;
    return deny(7, ConsentReason.QuietHours, `quiet hours (${policy.quietHours.start}–${policy.quietHours.end} allowed, ${c.zone})`, records, retryAt);
  }

  // Rule 8: the contact point.
  // SMS and email always need one; other outputs when they say so (a marketing tool keyed by email).
  const addressNeeded = c.output?.needsAddress ?? (d.channel === 'sms' || d.channel === 'email');
  if (addressNeeded && (d.to === undefined || d.to === '')) return deny(8, ConsentReason.NoAddress, `no ${d.channel === 'sms' || d.channel === 'email' ? d.channel : 'recipient'} address${d.channel === 'sms' || d.channel === 'email' ? '' : ` (output ${d.output} keys its contacts by address)`}`, records);
  if (c.addressShared) {
    if (d.noNameTemplate === undefined) return deny(8, ConsentReason.SharedAddress, 'the address is shared by several patients and the rule has no no-name variant', records);
    return { allow: true, basis: `${basis}; shared address: the no-name variant`, records, noName: true };
  }
  return { allow: true, basis, records, noName: false };
}

/** Whether a ledger entry speaks about this purpose and channel (and address). */
function covers(e: ConsentEvent, c: ConsentCheck): boolean {
  const d = c.delivery;
  if (e.channel !== undefined && e.channel !== d.channel) return false;
  if (e.purposes.length > 0 && !e.purposes.includes(d.purpose)) return false;
  if (e.address !== undefined && e.address !== normalizeAddress(d.to ?? '')) return false;
  return true;
}

/** The latest entry by `at` (ties: the one recorded last). */
function latest<T extends { at: string; recordedAt?: string }>(items: readonly T[]): T | undefined {
  let best: T | undefined;
  let bestAt = -Infinity;
  for (const item of items) {
    const at = parseInstant(item.at) ?? -Infinity;
    if (best === undefined || at > bestAt || (at === bestAt && (item.recordedAt ?? '') >= (best.recordedAt ?? ''))) {
      best = item;
      bestAt = at;
    }
  }
  return best;
}

/**
 * An opt-out of the delivery's address not lifted since: an SMS keyword (it belongs to the
 * number and the output it was sent to; START/UNSTOP re-grants only what a keyword revoked), or
 * a provider's report (opted out at the provider, a hard bounce of the mailbox).
 */
function addressOptOut(c: ConsentCheck): ConsentEvent | undefined {
  const d = c.delivery;
  if (d.to === undefined || d.to === '') return undefined;
  const address = normalizeAddress(d.to);
  const relevant = c.addressEvents.filter(
    (e) => e.address === address && (e.output === undefined || e.output === d.output) && (e.action === 'opt_out' || e.action === 'opt_in') && (e.channel === undefined || e.channel === d.channel),
  );
  const last = latest(relevant);
  return last?.action === 'opt_out' ? last : undefined;
}

/**
 * One patient's state for the delivery's purpose and channel: the latest applicable record
 * among ledger entries and FHIR Consents (by Consent.dateTime) decides.
 */
function patientState(p: PatientRecord, c: ConsentCheck): State | undefined {
  const d = c.delivery;
  type Candidate = { at: number; recordedAt: string; state: State };
  const candidates: Candidate[] = [];
  for (const e of p.events) {
    if (e.action !== 'grant' && e.action !== 'revoke' && e.action !== 'opt_out') continue;
    if (!covers(e, c)) continue;
    const kind = e.action === 'grant' ? 'permit' : e.action === 'revoke' ? 'deny' : 'opt_out';
    const what = e.action === 'grant' ? 'granted' : e.action === 'revoke' ? 'revoked' : 'opted out';
    candidates.push({ at: parseInstant(e.at) ?? 0, recordedAt: e.recordedAt, state: { kind, records: [e.id], basis: `${what} (${e.source}, ${e.method}) at ${e.at}` } });
  }
  for (const lc of p.consents) {
    const answer: ConsentAnswer | undefined = evaluateConsent(lc.consent, {
      purpose: d.purpose,
      channel: d.channel,
      output: d.output,
      dataClass: d.subjectKind === 'appointment' ? 'Appointment' : d.subjectKind === 'encounter' ? 'Encounter' : 'Patient',
      labels: c.labels,
      at: c.now,
    });
    if (answer === undefined) continue;
    const kind = answer === 'permit' ? 'permit' : answer === 'deny' ? 'deny' : 'opt_out';
    candidates.push({ at: lc.at, recordedAt: '', state: { kind, records: [lc.id], basis: `FHIR Consent ${lc.consent.id ?? lc.id}: ${answer === 'opt_out' ? 'opt-out' : answer}` } });
  }
  if (candidates.length === 0) return undefined;
  // Latest wins; at the same instant the stricter record wins (not sending is the safe side).
  const rank = { opt_out: 2, deny: 1, permit: 0 } as const;
  candidates.sort((a, b) => b.at - a.at || rank[b.state.kind] - rank[a.state.kind]);
  return candidates[0]!.state;
}

/** Whether an episode flags sensitive care that still holds at `now`. */
export function inSensitiveWindow(e: CareEpisode, policy: PolicySettings, now: number): boolean {
  const s = policy.sensitive;
  if (e.status === 'cancelled' || e.status === 'entered-in-error' || e.status === 'noshow') return false;
  const flagged =
    e.labels.some((l) => s.labels.includes(l)) ||
    e.serviceCodes.some((code) => s.services.includes(code) || s.services.includes(code.slice(code.lastIndexOf('|') + 1))) ||
    e.locationIds.some((id) => s.locationTypes.includes(id));
  if (!flagged || e.start === undefined) return false;
  if (e.start > now) return false; // not happened yet
  // From the end of the episode, or from its start while it is open.
  const from = e.end ?? e.start;
  return now < from + s.windowDays * DAY_MS;
}

/** A reached cap on the day / ISO week of `at` in the patient's zone, described; else undefined. */
interface CapBounds {
  day: { from: number; to: number };
  week: { from: number; to: number };
}

/**
 * The local day and (ISO) week around `at` in `zone`, kept per zone while `at` stays in the
 * same local day: the zone work was most of a send-time check's luxon cost, and a day's
 * sends all share the same bounds.
 */
const capBoundsByZone = new Map<string, CapBounds>();

function capBounds(zone: string, at: number): CapBounds {
  const kept = capBoundsByZone.get(zone);
  if (kept !== undefined && at >= kept.day.from && at < kept.day.to) return kept;
  const local = DateTime.fromMillis(at, { zone });
  const bounds = {
    day: { from: local.startOf('day').toMillis(), to: local.startOf('day').plus({ days: 1 }).toMillis() },
    week: { from: local.startOf('week').toMillis(), to: local.startOf('week').plus({ weeks: 1 }).toMillis() },
  };
  if (capBoundsByZone.size >= 256) capBoundsByZone.clear();
  capBoundsByZone.set(zone, bounds);
  return bounds;
}

function capReached(c: ConsentCheck, policy: PolicySettings, at: number): string | undefined {
  const d = c.delivery;
  const { day, week } = capBounds(c.zone, at);
  const count = (range: { from: number; to: number }, match: (s: SentRecord) => boolean) => c.sent.filter((s) => s.at >= range.from && s.at < range.to && match(s)).length;
  for (const cap of policy.caps) {
    if (cap.purpose !== d.purpose || cap.channel !== d.channel) continue;
    const same = (s: SentRecord) => s.purpose === d.purpose && s.channel === d.channel;
    if (cap.perDay !== undefined && count(day, same) >= cap.perDay) return `cap of ${cap.perDay} ${d.purpose} ${d.channel} per day reached`;
    if (cap.perWeek !== undefined && count(week, same) >= cap.perWeek) return `cap of ${cap.perWeek} ${d.purpose} ${d.channel} per week reached`;
  }
  if (policy.region === 'us' && d.channel === 'sms' && isCare(d.purpose)) {
    const exempt = (s: SentRecord) => s.channel === 'sms' && isCare(s.purpose);
    const { perDay, perWeek } = policy.usExemptSms;
    if (count(day, exempt) >= perDay) return `US exempt healthcare SMS limit of ${perDay} per day reached`;
    if (count(week, exempt) >= perWeek) return `US exempt healthcare SMS limit of ${perWeek} per week reached`;
  }
  return undefined;
}

/**
 * An address as the ledger compares it: email addresses lower-cased and trimmed, phone numbers
 * with only the digits and a leading "+" (docs/trigger.md "Phones").
 */
export function normalizeAddress(address: string): string {
  const trimmed = address.trim();
  if (trimmed.includes('@')) return trimmed.toLowerCase();
  return trimmed.replace(/[^\d+]/g, '').replace(/(?!^)\+/g, '');
}

/** Every purpose except care.* (an email "unsubscribe from all"). */
export function nonCarePurposes(purposes: readonly Purpose[]): Purpose[] {
  return purposes.filter((p) => !isCare(p));
}

/** The purposes an unsubscribe link sent for `purpose` stops (docs/consent.md "Scope of an opt-out"). */
export function unsubscribeScope(purpose: Purpose): Purpose[] {
  if (purpose === 'marketing' || purpose === 'service.info') return ['marketing', 'service.info'];
  return [purpose];
}

export type { ConsentAnswer };
