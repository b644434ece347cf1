// Consent at run time (docs/consent.md): the gatherer that reads what the ledger and the store
// say about a delivery's patient and feeds the pure checks (pipeline/consent.ts), the
// evidence they leave, and the ways in — ledger entries, FHIR Consents, SMS keywords,
// unsubscribe links, erasure — each suppressing at once the pending deliveries it now forbids.
//
//   deliver worker ─▶ checkAtSend ─▶ gather (store) ─▶ checkConsent (pure) ─▶ decision record
//   way in ─▶ ledger entry ─▶ enforce: every pending delivery of the patient (or number)
//                          ─▶ consentStanding (pure) ─▶ suppressed with its reason + timer cancelled
//
// Fail closed: when the ledger cannot be read, care.* may go on what the last successful read
// said about the patient (the suppression cache, no older than policy.failClosed), everything
// else waits and is retried (TransientError `ledger_unavailable`).
//
// Logs carry delivery ids and reason codes only (docs/architecture.md invariant 7): never a
// patient id, a name, an address or a body.
import { TransientError, type RecipientSignal } from '../errors.ts';
import type { Logger } from '../log.ts';
import { checkConsent, consentStanding, readsCareEpisodes, nonCarePurposes, normalizeAddress, ENFORCED_REASONS, unsubscribeScope, type CareEpisode, type CheckedDelivery, type ConsentCheck, type ConsentDecision, type LedgerConsent, type PatientRecord } from '../pipeline/consent.ts';
import { dateTimeMs, readConsent, type ConsentProblem } from '../pipeline/fhir-consent.ts';
import { KeywordKind, classifyKeyword } from '../pipeline/keywords.ts';
import { isCare, type PolicySettings } from '../pipeline/policy.ts';
import { parseInstant } from '../pipeline/values.ts';
import { patientZone } from '../pipeline/zones.ts';
import type { DecisionRecord, DeliveryRef, Store, StoredDelivery, StoredFhirConsent } from '../store/store.ts';
import { ConsentChannel, ToolSignalKind, type ToolConsentSignal } from '../outputs/consent-sync.ts';
import { ForgetOutcome, type OutboundAdapter, type OutboundMessage } from '../outputs/spec.ts';
import { ConsentReason, PURPOSES, type Channel, type ConsentEvent, type Delivery, type Purpose, type Trigger } from '../types.ts';
import type { SendGate } from './deliver.ts';
import { needsUnsubscribe, type UnsubscribeLinks } from './unsubscribe.ts';

const DAY_MS = 86_400_000;
/** Caps count a day and an ISO week: eight days of sends cover both. */
const SENT_LOOKBACK_MS = 8 * DAY_MS;
/** Patients whose last good read the suppression cache keeps (least recently used go first). */
const CACHE_ENTRIES = 10_000;
/** Pending deliveries a change of consent re-checks per patient at once (the rest at send time). */
const ENFORCE_LIMIT = 1000;

/** What the consent service needs to know about an output: what it may carry, and whether its tool can forget a contact. */
export interface OutputDeclaration {
  baa: boolean;
  allowedPurposes: readonly string[];
  /** Sends nothing without the delivery's address (outputs/spec.ts needsAddress). */
  needsAddress?: boolean;
  forget?: OutboundAdapter['forget'];
}

/**
 * What an erasure did at each tool holding a contact of the patient (ErasureRecord.tools): the
 * adapter's answer (ForgetOutcome), or why it was not asked or did not answer. An operator acts on
 * every outcome but `forgotten` and `not_held`.
 */
export const ToolErasure = {
  ...ForgetOutcome,
  /** The call failed (logged with its code): ask again, or delete the contact in the tool by hand. */
  Failed: 'failed',
  /** The tool offers no delete CareRelay calls: delete the contact there by hand. */
  Unsupported: 'unsupported',
  /** The output is no longer configured: delete the contact in the tool by hand. */
  NotRunning: 'not_running',
} as const;
export type ToolErasure = (typeof ToolErasure)[keyof typeof ToolErasure];

/** How long asking one tool to forget a contact may take during an erasure. */
const FORGET_TIMEOUT_MS = 30_000;

export interface ConsentServiceDeps {
  store: Store;
  policy: PolicySettings;
  /** The running output's declaration now (rule 4 at send time); undefined when not running. */
  output: (name: string) => OutputDeclaration | undefined;
  /** Cancels a delivery's queue timer (its pending job); absent in the in-memory pipeline. */
  cancelTimer?: (deliveryId: string, reason: string) => Promise<void>;
  log: Logger;
  now: () => number;
  /** Signs the unsubscribe link of every non-care email; absent: none (tests of the checks alone). */
  links?: UnsubscribeLinks;
  /**
   * The tools a patient's entries are pushed to (workers/consent-sync.ts): which outputs keep
   * consent, and what queues a recorded entry's pushes. Absent: nothing is pushed.
   */
  mirrors?: {
    /** The outputs an entry about to be recorded is to be pushed to. */
    targets: (entry: Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'>) => Promise<string[]>;
    queue: (event: ConsentEvent, outputs: readonly string[]) => Promise<void>;
  };
}

/** What the ledger and the store say about a patient, without the delivery itself. */
type Context = Omit<ConsentCheck, 'delivery' | 'now' | 'output' | 'labels' | 'zone' | 'appointmentStart'>;

/** A change of consent and what it did at once. */
export interface Enforced {
  /** Pending deliveries now suppressed, with their reason. */
  suppressed: Array<{ deliveryId: string; reason: ConsentReason }>;
}

export type FhirConsentOutcome =
  | ({ kind: 'stored'; consent: StoredFhirConsent } & Enforced)
  | { kind: 'invalid'; problems: ConsentProblem[] }
  | { kind: 'unknown_patient'; reference: string };

export class ConsentService implements SendGate {
  readonly #deps: ConsentServiceDeps;
  readonly #cache = new Map<string, { at: number; context: Context }>();

  constructor(deps: ConsentServiceDeps) {
    this.#deps = deps;
  }

  get policy(): PolicySettings {
    return this.#deps.policy;
  }

  // --- send time ------------------------------------------------------------------------

  /**
   * Rules 2–8 for a delivery about to be sent, with its decision recorded. Throws
   * TransientError `ledger_unavailable` when the ledger cannot be read and the message may
   * not go on the suppression cache (fail closed).
   */
  async checkAtSend(stored: StoredDelivery): Promise<ConsentDecision> {
    const now = this.#deps.now();
    const check = await this.#checkFor(stored, now, true);
    const decision = checkConsent(check, this.#deps.policy);
    await this.#record(stored, decision, check, now).catch(() => this.#deps.log.error('consent.decision_not_recorded', { deliveryId: stored.delivery.id }));
    return decision;
  }

  /** SendGate: the deliver worker's checks. */
  check(stored: StoredDelivery): Promise<ConsentDecision> {
    return this.checkAtSend(stored);
  }

  /**
   * The signed unsubscribe link of a non-care email (its text shows it as {{ unsubscribe_url }};
   * the adapter puts it in List-Unsubscribe with RFC 8058 one-click); undefined otherwise.
   */
  unsubscribeLinks(delivery: Delivery): OutboundMessage['unsubscribe'] {
    return this.#deps.links && needsUnsubscribe(delivery) ? { url: this.#deps.links.url(delivery.id, this.#deps.now()) } : undefined;
  }

  /** Records a message the output accepted (the accounting of disclosures; the caps' count). */
  async sent(stored: StoredDelivery, to: string | undefined, at: number): Promise<void> {
    await this.#deps.store.recordDisclosure({
      ...refOf(stored),
      ...(to !== undefined ? { recipient: to } : {}),
      at: new Date(at).toISOString(),
    });
  }

  /**
   * SendGate: a provider refused the message because of its address. An opt-out at the
   * provider (Twilio 21610: the number replied STOP to that sender) stops that output's SMS to
   * the number; a hard bounce stops email to the mailbox; an unfit address is left to rule 8.
   */
  async refused(stored: StoredDelivery, signal: RecipientSignal, providerCode: string | undefined): Promise<void> {
    const d = stored.delivery;
    if (d.to === undefined || (signal !== 'opted_out' && signal !== 'hard_bounce')) return;
    await this.record({
      address: d.to,
      ...(signal === 'opted_out' ? { output: d.output } : {}),
      action: 'opt_out',
      channel: d.channel,
      purposes: [],
      source: 'provider',
      method: `${signal}${providerCode !== undefined ? `:${providerCode}` : ''}`,
      reference: d.id,
    });
  }

  // --- ways in --------------------------------------------------------------------------

  /** Appends a ledger entry (grant, revocation, opt-out, no-contact…) and enforces it at once. */
  async record(entry: Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion' | 'at'> & { at?: string }): Promise<{ event: ConsentEvent } & Enforced> {
    const now = this.#deps.now();
    const at = entry.at ?? new Date(now).toISOString();
    const mirrorTo = (await this.#deps.mirrors?.targets({ ...entry, at })) ?? [];
    const event = await this.#deps.store.addConsentEvent({ ...entry, at, policyVersion: this.#deps.policy.version, recordedAt: new Date(now).toISOString() }, mirrorTo);
    if (mirrorTo.length > 0) {
      // Recorded with the entry: a push not queued now is queued at the next start.
      await this.#deps.mirrors!.queue(event, mirrorTo).catch(() => this.#deps.log.error('consent.mirror_not_queued', { entry: event.id }));
    }
    const enforced = entry.patientId !== undefined ? await this.enforcePatients([entry.patientId]) : await this.enforceAddress(event.address!, event.output);
    return { event, ...enforced };
  }

  /**
   * A tool's report about a contact's consent (outputs/consent-sync.ts: a Salesforce consent
   * change, a Marketing Cloud unsubscribe or hard bounce), recorded once per event id. An
   * opt-out or opt-in becomes a patient entry (source `provider`) for the patient the tool names,
   * else for the patients whose triggers carried the address; it covers what the tool said
   * (a channel, a purpose; none said: every channel, every purpose but care). A hard bounce
   * stops email (or SMS) to the address itself, for every output. `recorded`: entries written.
   */
  async toolSignal(signal: ToolConsentSignal): Promise<{ recorded: number } & Enforced> {
    const nothing = { recorded: 0, suppressed: [] };
    if (!(await this.#deps.store.noteInboundEvent(`tool:${signal.output}:${signal.eventId}`, new Date(this.#deps.now()).toISOString()))) return nothing;
    const channel: Channel | undefined = signal.scope.channel === undefined ? undefined : signal.scope.channel === ConsentChannel.Email ? 'email' : 'sms';
    const at = parseInstant(signal.at) !== undefined ? signal.at : undefined;
    const base = { source: 'provider' as const, method: `${signal.tool}:${signal.kind}`, reference: signal.eventId, ...(at !== undefined ? { at } : {}) };
    const { contact } = signal;
    if (signal.kind === ToolSignalKind.HardBounce) {
      const address = channel === 'sms' ? contact.phone : (contact.email ?? contact.phone);
      if (address === undefined) return nothing;
      const { suppressed } = await this.record({ ...base, address, action: 'opt_out', channel: channel ?? (address === contact.email ? 'email' : 'sms'), purposes: [] });
      return { recorded: 1, suppressed };
    }
    const patients = contact.patientId !== undefined && (await this.knownPatient(contact.patientId)) ? [contact.patientId] : await this.#patientsOfContact(signal);
    if (patients.length === 0) {
      this.#deps.log.info('consent.tool_signal_unmatched', { output: signal.output, kind: signal.kind });
      return nothing;
    }
    const purposes = signal.scope.purpose !== undefined ? [signal.scope.purpose] : nonCarePurposes(PURPOSES);
    const suppressed: Enforced['suppressed'] = [];
    for (const patientId of patients) {
      // `output`: where it came from — never pushed back there.
      const result = await this.record({ ...base, patientId, output: signal.output, action: signal.kind === ToolSignalKind.OptedIn ? 'grant' : 'opt_out', ...(channel ? { channel } : {}), purposes });
      suppressed.push(...result.suppressed);
    }
    return { recorded: patients.length, suppressed };
  }

  /**
   * The patients a tool's contact stands for: those whose contact the tool knows by its own id
   * (a HubSpot contact id this output recorded), else those this output handed the tool under
   * that address (contact holdings), else those whose triggers carried the address.
   */
  async #patientsOfContact(signal: ToolConsentSignal): Promise<string[]> {
    const found = new Set<string>();
    if (signal.contact.toolId !== undefined) {
      for (const h of await this.#deps.store.listContactHoldings({ output: signal.output, toolId: signal.contact.toolId })) found.add(h.patientId);
      if (found.size > 0) return [...found];
    }
    for (const address of [signal.contact.email, signal.contact.phone]) {
      if (address === undefined) continue;
      const key = normalizeAddress(address);
      const held = await this.#deps.store.listContactHoldings({ output: signal.output, contactKey: key });
      const ids = held.length > 0 ? held.map((h) => h.patientId) : await this.#deps.store.patientsAtAddress(key);
      for (const id of ids) found.add(id);
    }
    return [...found];
  }

  /**
   * A FHIR Consent (POST /api/consents, a FHIR input): read, attached to its patient, kept as
   * given, enforced. `knownOnly`: refuse a patient CareRelay has never seen (the API's 404).
   */
  async fhirConsent(resource: unknown, source: 'fhir' | 'admin' | 'import', knownOnly = true): Promise<FhirConsentOutcome> {
    const { consent, problems } = readConsent(resource);
    if (!consent) return { kind: 'invalid', problems };
    const reference = consent.patient.identifierValue ?? consent.patient.reference!.replace(/^.*Patient\//, '');
    const patientId = reference;
    if (knownOnly && !(await this.knownPatient(patientId))) return { kind: 'unknown_patient', reference: consent.patient.reference ?? `identifier ${reference}` };
    const now = this.#deps.now();
    const stored = await this.#deps.store.addFhirConsent({
      patientId,
      resource: resource as Record<string, unknown>,
      effectiveAt: consent.dateTime !== undefined ? new Date(dateTimeMs(consent.dateTime)!).toISOString() : new Date(now).toISOString(),
      source,
      recordedAt: new Date(now).toISOString(),
    });
    return { kind: 'stored', consent: stored, ...(await this.enforcePatients([patientId])) };
  }

  /**
   * An inbound SMS (docs/consent.md "Keywords"): the STOP family and the localized list opt the
   * number out of SMS from this output, START/UNSTOP lift that, HELP is answered. Each keyword
   * message is answered once at most (a provider resending it gets no second reply); anything
   * else is not a keyword and gets no answer.
   */
  async inboundSms(message: { output: string; from: string; body: string; messageId: string }): Promise<{ reply?: string } & Enforced> {
    const keyword = classifyKeyword(message.body, this.#deps.policy.keywords.optOut);
    const nothing = { suppressed: [] };
    if (!keyword) return nothing;
    const now = new Date(this.#deps.now()).toISOString();
    if (!(await this.#deps.store.noteInboundEvent(`sms:${message.output}:${message.messageId}`, now))) return nothing;
    const replies = this.#deps.policy.keywords.replies;
    if (keyword.kind === KeywordKind.Help) return { reply: replies.help, ...nothing };
    const action = keyword.kind === KeywordKind.OptOut ? 'opt_out' : 'opt_in';
    const { suppressed } = await this.record({
      address: message.from,
      output: message.output,
      action,
      channel: 'sms',
      purposes: [],
      source: 'sms',
      method: `keyword:${keyword.word}`,
      reference: message.messageId,
    });
    return { reply: action === 'opt_out' ? replies.stop : replies.start, suppressed };
  }

  /**
   * An unsubscribe link used (docs/consent.md "Scope of an opt-out"): `purpose` stops what the
   * email was sent for (marketing and service.info together), `all` every non-care email.
   */
  async unsubscribe(deliveryId: string, scope: 'purpose' | 'all', method: 'link' | 'one-click'): Promise<({ event: ConsentEvent } & Enforced) | undefined> {
    const stored = await this.#deps.store.getDelivery(deliveryId);
    if (!stored) return undefined;
    const purposes = scope === 'all' ? nonCarePurposes(PURPOSES) : unsubscribeScope(stored.delivery.purpose);
    return this.record({ patientId: stored.delivery.patientId, action: 'opt_out', channel: 'email', purposes, source: 'email-link', method, reference: deliveryId });
  }

  /**
   * GDPR erasure of a patient and every id merged with them; their timers are cancelled. Each
   * tool holding a contact of theirs is first asked to forget it (art. 17(2): the processors are
   * told), and the erasure record names every such output with what it answered (ToolErasure).
   */
  async erase(patientId: string): Promise<Array<Awaited<ReturnType<Store['erasePatient']>>>> {
    const at = new Date(this.#deps.now()).toISOString();
    const records = [];
    for (const id of await this.#deps.store.mergedGroup(patientId)) {
      const record = await this.#deps.store.erasePatient(id, at, await this.#forget(id));
      for (const c of record.cancelled) await this.#deps.cancelTimer?.(c.deliveryId, ConsentReason.Erased);
      records.push(record);
    }
    this.#cache.clear();
    this.#deps.log.info('consent.erased', { count: records.reduce((n, r) => n + r.cancelled.length, 0) });
    return records;
  }

  /** Asks each tool holding a contact of the patient to forget it; per output, the first outcome that needs a person wins. */
  async #forget(patientId: string): Promise<Record<string, ToolErasure>> {
    const outcomes: Record<string, ToolErasure> = {};
    for (const held of await this.#deps.store.listContactHoldings({ patientId })) {
      const adapter = this.#deps.output(held.output);
      let outcome: ToolErasure;
      if (adapter === undefined) outcome = ToolErasure.NotRunning;
      else if (adapter.forget === undefined) outcome = ToolErasure.Unsupported;
      else {
        try {
          outcome = await adapter.forget({ patientId: held.patientId, contactKey: held.contactKey }, { signal: AbortSignal.timeout(FORGET_TIMEOUT_MS) });
        } catch (error) {
          this.#deps.log.warn('consent.forget_failed', { output: held.output, code: (error as { code?: string }).code ?? (error as Error).name });
          outcome = ToolErasure.Failed;
        }
      }
      const before = outcomes[held.output];
      if (before === undefined || before === ToolErasure.Forgotten || before === ToolErasure.NotHeld) outcomes[held.output] = outcome;
    }
    for (const [output, outcome] of Object.entries(outcomes)) this.#deps.log.info('consent.tool_erasure', { output, outcome });
    return outcomes;
  }

  /** Whether CareRelay knows the patient: a trigger named them, or the ledger holds something. */
  async knownPatient(patientId: string): Promise<boolean> {
    if ((await this.#deps.store.patientFacts([patientId])).length > 0) return true;
    const { events, consents } = await this.#deps.store.consentRecords({ patientIds: [patientId] });
    return events.length + consents.length > 0;
  }

  // --- enforcement ----------------------------------------------------------------------

  /** Re-checks the pending deliveries of patients (and their merged ids) against rules 2–3 now. */
  async enforcePatients(patientIds: readonly string[]): Promise<Enforced> {
    const ids = new Set<string>();
    for (const id of patientIds) for (const member of await this.#deps.store.mergedGroup(id)) ids.add(member);
    const pending: StoredDelivery[] = [];
    for (const id of ids) pending.push(...(await this.#deps.store.listDeliveries({ patientId: id, status: 'pending', limit: ENFORCE_LIMIT })));
    return this.#enforce(pending);
  }

  /** Re-checks the pending SMS to a number (for one output, or all) after a keyword. */
  async enforceAddress(address: string, output?: string): Promise<Enforced> {
    const number = normalizeAddress(address);
    const pending: StoredDelivery[] = [];
    for (const id of await this.#deps.store.patientsAtAddress(number)) {
      for (const d of await this.#deps.store.listDeliveries({ patientId: id, status: 'pending', limit: ENFORCE_LIMIT })) {
        if (d.delivery.to !== undefined && normalizeAddress(d.delivery.to) === number && (output === undefined || d.delivery.output === output)) pending.push(d);
      }
    }
    return this.#enforce(pending);
  }

  /**
   * Rules 2–3 for a pending delivery now: a denial a change of consent enforces at once
   * (ENFORCED_REASONS), else undefined. The in-memory pipeline of mapping tests uses it too.
   */
  async enforcedDenial(stored: StoredDelivery): Promise<{ decision: ConsentDecision & { allow: false }; check: ConsentCheck } | undefined> {
    const check = await this.#checkFor(stored, this.#deps.now(), false);
    const decision = consentStanding(check, this.#deps.policy);
    return !decision.allow && ENFORCED_REASONS.has(decision.reason) ? { decision, check } : undefined;
  }

  async #enforce(pending: readonly StoredDelivery[]): Promise<Enforced> {
    this.#cache.clear();
    const suppressed: Enforced['suppressed'] = [];
    const now = this.#deps.now();
    for (const stored of pending) {
      const denial = await this.enforcedDenial(stored);
      if (!denial) continue;
      const { decision, check } = denial;
      const at = new Date(now).toISOString();
      const written = await this.#deps.store.finishDelivery(stored.delivery.id, stored.generation, { status: 'suppressed', reason: decision.reason, at });
      if (!written) continue; // sent, moved or suppressed meanwhile
      await this.#deps.cancelTimer?.(stored.delivery.id, decision.reason);
      await this.#record(stored, decision, check, now);
      this.#deps.log.info('deliver.suppressed', { deliveryId: stored.delivery.id, rule: stored.delivery.ruleId, reason: decision.reason });
      suppressed.push({ deliveryId: stored.delivery.id, reason: decision.reason });
    }
    return { suppressed };
  }

  // --- the patient views ----------------------------------------------------------------

  /** The effective state per purpose × channel, and why (GET /api/patients/:id/consent). */
  async effectiveConsent(patientId: string): Promise<{ patientIds: string[]; deceased: boolean; states: Array<{ purpose: Purpose; channel: Channel; allowed: boolean; reason?: string; basis: string; records: string[] }> }> {
    const context = await this.#context(patientId, undefined, this.#deps.now());
    const states = [];
    for (const purpose of PURPOSES) {
      for (const channel of ['sms', 'email', 'webhook', 'crm'] as const) {
        const delivery: CheckedDelivery = { id: '', purpose, channel, output: '', dueAt: new Date(this.#deps.now()).toISOString(), subjectKind: 'patient', payload: {} };
        const d = consentStanding({ ...context, delivery, labels: [], zone: this.#deps.policy.timezone, now: this.#deps.now() }, this.#deps.policy);
        states.push({ purpose, channel, allowed: d.allow, ...(d.allow ? {} : { reason: d.reason }), basis: d.basis, records: d.records });
      }
    }
    return { patientIds: context.patients.map((p) => p.id), deceased: context.patients.some((p) => p.deceased), states };
  }

  // --- gathering ------------------------------------------------------------------------

  async #checkFor(stored: StoredDelivery, now: number, failClosed: boolean): Promise<ConsentCheck> {
    const d = stored.delivery;
    const cacheKey = `${d.patientId}\u0000${d.to ?? ''}`;
    let context: Context;
    let trigger: Trigger | undefined;
    try {
      // Care episodes only for the purposes rule 5 withholds: a care message's check reads none.
      [context, trigger] = await Promise.all([this.#context(d.patientId, d.to, now, readsCareEpisodes(d.purpose)), this.#deps.store.getTrigger(d.triggerId)]);
      this.#remember(cacheKey, context, now);
    } catch (error) {
      if (!failClosed) throw error;
      const cached = this.#cache.get(cacheKey);
      const fresh = cached !== undefined && now - cached.at <= this.#deps.policy.failClosed.cacheMaxAgeSeconds * 1000;
      if (!isCare(d.purpose) || !fresh) {
        this.#deps.log.warn('consent.ledger_unavailable', { deliveryId: d.id, reason: isCare(d.purpose) ? 'no_fresh_cache' : 'not_care' });
        throw new TransientError('ledger_unavailable', `the consent ledger cannot be read now; delivery ${d.id} waits`, { cause: error });
      }
      context = cached.context;
    }
    const start = stored.subjectStart ?? trigger?.appointment?.start;
    const appointmentStart = d.subjectKind === 'appointment' && start !== undefined ? Date.parse(start) : undefined;
    const declared = this.#deps.output(d.output);
    const output = declared ? { baa: declared.baa, allowedPurposes: declared.allowedPurposes, ...(declared.needsAddress !== undefined ? { needsAddress: declared.needsAddress } : {}) } : undefined;
    return {
      ...context,
      delivery: d,
      labels: trigger?.sensitivity ?? [],
      ...(output ? { output } : {}),
      zone: trigger ? patientZone(trigger, this.#deps.policy) : this.#deps.policy.timezone,
      ...(appointmentStart !== undefined && !Number.isNaN(appointmentStart) ? { appointmentStart } : {}),
      now,
    };
  }

  /** `withEpisodes` false: the care episodes are left out (a check that does not read them). */
  async #context(patientId: string, to: string | undefined, now: number, withEpisodes = true): Promise<Context> {
    const { store } = this.#deps;
    const group = await store.mergedGroup(patientId);
    const [facts, records, sharing, sent, states] = await Promise.all([
      store.patientFacts(group),
      store.consentRecords({ patientIds: group, ...(to ? { addresses: [to] } : {}) }),
      to ? store.patientsAtAddress(to) : Promise.resolve([]),
      store.listDisclosures({ patientIds: group, since: new Date(now - SENT_LOOKBACK_MS).toISOString(), limit: 1000 }),
      withEpisodes ? Promise.all(group.flatMap((id) => [store.listSubjectStates('appointment', id), store.listSubjectStates('encounter', id)])) : Promise.resolve([]),
    ]);
    const patients: PatientRecord[] = group.map((id) => ({
      id,
      deceased: facts.some((f) => f.id === id && f.deceased),
      events: records.events.filter((e) => e.patientId === id),
      consents: records.consents.filter((c) => c.patientId === id).flatMap((c) => ledgerConsent(c)),
    }));
    const episodes: CareEpisode[] = states.flat().map((s) => ({
      key: `${s.kind}/${s.id}`,
      ...(s.status !== undefined ? { status: s.status } : {}),
      ...(s.start !== undefined ? { start: Date.parse(s.start) } : {}),
      ...(s.end !== undefined ? { end: Date.parse(s.end) } : {}),
      labels: stringList(s.data?.sensitivity),
      serviceCodes: stringList(s.data?.serviceType),
      locationIds: stringList(s.data?.locationId),
    }));
    return {
      patients,
      addressEvents: records.events.filter((e) => e.patientId === undefined),
      episodes,
      sent: sent.map((s) => ({ at: Date.parse(s.at), purpose: s.purpose, channel: s.channel })),
      addressShared: sharing.some((id) => !group.includes(id)),
    };
  }

  #remember(key: string, context: Context, now: number): void {
    this.#cache.delete(key);
    this.#cache.set(key, { at: now, context });
    if (this.#cache.size > CACHE_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
  }

  async #record(stored: StoredDelivery, decision: ConsentDecision, check: ConsentCheck, now: number): Promise<void> {
    const d = stored.delivery;
    const p = this.#deps.policy;
    const record: Omit<DecisionRecord, 'id'> = {
      ...refOf(stored),
      result: decision.allow ? 'allow' : decision.reason === ConsentReason.QuietHours ? 'move' : 'deny',
      ...(decision.allow ? {} : { checkRule: decision.rule, reason: decision.reason, ...(decision.retryAt ? { retryAt: decision.retryAt } : {}) }),
      basis: decision.basis,
      records: decision.records,
      settings: {
        region: p.region,
        policyVersion: p.version,
        zone: check.zone,
        default: p.defaults[d.purpose][d.channel === 'sms' ? 'sms' : 'email'],
        quietHours: p.quietHours,
        caps: p.caps.filter((c) => c.purpose === d.purpose && c.channel === d.channel),
        ...(p.region === 'us' && d.channel === 'sms' && isCare(d.purpose) ? { usExemptSms: p.usExemptSms } : {}),
        sensitiveWindowDays: p.sensitive.windowDays,
      },
      at: new Date(now).toISOString(),
    };
    await this.#deps.store.recordDecision(record);
  }
}

/** Which message a decision or disclosure is about. */
function refOf(stored: StoredDelivery): DeliveryRef {
  const d = stored.delivery;
  return { deliveryId: d.id, patientId: d.patientId, rule: d.ruleId, purpose: d.purpose, channel: d.channel, output: d.output };
}

/** A stored Consent read for evaluation; one that no longer reads is left out. */
function ledgerConsent(c: StoredFhirConsent): LedgerConsent[] {
  const { consent } = readConsent(c.resource);
  return consent ? [{ id: c.id, consent, at: Date.parse(c.effectiveAt) }] : [];
}

function stringList(value: unknown): string[] {
  if (typeof value === 'string' && value !== '') return [value];
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string' && v !== '') : [];
}
