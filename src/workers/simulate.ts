// The in-memory pipeline behind mapping tests (workers/mapping-tests.ts) and dry-run replay:
// the same steps as the running server — normalize → stored appointment/encounter state →
// route → apply to deliveries (the ordering rule of route.ts) → at the due time: still
// current, not expired, the send-time consent and safety checks (docs/consent.md rules 2–8,
// the same ConsentService the server runs) → render — with Maps for deliveries and the queue,
// an in-memory SQLite store for the consent ledger and patient facts, and a clock that only
// moves when a test says so (docs/contributing.md habit 11: an integration engineer changes a
// rule and runs its test without touching TypeScript).
//
// Consent events (a FHIR Consent, an SMS keyword, an unsubscribe link, an opt-out, a grant or
// revocation, a no-contact flag, an erasure) go through the ConsentService's ways in, and the
// pending deliveries they forbid are suppressed at once, as the server does.

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ConfigIssue } from '../errors.ts';
import { ConfigError } from '../errors.ts';
import { loadConfig, displayPath } from '../config/load.ts';
import type { PolicyConfig } from '../config/policy-schema.ts';
import { loadMappings, type MappingSet } from '../config/mappings.ts';
import type { Env } from '../config/yaml.ts';
import { Hl7ParseError, parseHl7Batch } from '../hl7v2/parse.ts';
import { applyStoredState, normalizeHl7 } from '../inputs/hl7v2/normalize.ts';
import type { VirtualVisitSetting } from '../inputs/hl7v2/virtual-visit.ts';
import { silentLogger } from '../log.ts';
import { outputSpecs } from '../outputs/index.ts';
import { outputInfos } from '../outputs/spec.ts';
import { nonCarePurposes, normalizeAddress, unsubscribeScope } from '../pipeline/consent.ts';
import type { PolicySettings, Site } from '../pipeline/policy.ts';
import { renderDelivery, templateLanguage, type RenderedMessage, type TemplateSet } from '../pipeline/render.ts';
import { route, type DeliveryChange, type DeliveryState } from '../pipeline/route.ts';
import type { OutputInfo, RouteResult, Rule, SkippedDelivery } from '../pipeline/rule.ts';
import { formatInstant, isValidZone } from '../pipeline/schedule.ts';
import { isRecord, parseInstant } from '../pipeline/values.ts';
import { displayZone, patientZone } from '../pipeline/zones.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { InboundRecord, StaffTask, Store, StoredDelivery, SubjectState } from '../store/store.ts';
import { PermanentError } from '../errors.ts';
import { WriteBackOutcome, type WriteBackOperation, type WriteBackResult } from '../outputs/write-back.ts';
import { MessageStatus, PURPOSES, TRIGGER_TYPES, type Channel, type Delivery, type Purpose, type Trigger } from '../types.ts';
import { applyRouteResult } from './apply.ts';
import { ConsentService } from './consent.ts';
import { ReplyService, WRITE_BACK_ATTEMPTS } from './replies.ts';
import { staleness } from './deliver.ts';
import { renderVariables, unsubscribeLinks, type UnsubscribeLinks } from './unsubscribe.ts';
import { NO_JOIN_INFO } from './video.ts';
import { linkUrl } from '../video/link.ts';

/**
 * The video link shown in mapping tests and replays (docs/video.md): the same for the same
 * delivery, so tests can compare whole texts; never served.
 */
export function testVideoLink(publicUrl: string, deliveryId: string): string {
  return linkUrl(publicUrl, createHash('sha256').update(`carerelay-mapping-tests\u0000${deliveryId}`).digest('base64url').slice(0, 22));
}

/** Unsubscribe links in mapping tests and replays: signed with a fixed key (they are never served). */
export function testLinks(policy: PolicyConfig): UnsubscribeLinks {
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
  /** Its due time came while the clock advanced, every check passed: handed to the output. */
  Sent: 'sent',
  Cancelled: 'cancelled',
  /** Not sent on purpose: a send-time check or a consent change said no (see its reason). */
  Suppressed: 'suppressed',
} as const;
export type SimStatus = (typeof SimStatus)[keyof typeof SimStatus];

export interface SimDelivery {
  delivery: Delivery;
  status: SimStatus;
  /** The first plannedAt, to tell a move. */
  firstPlannedAt: string;
  /** Why it was suppressed (docs/consent.md reason codes). */
  reason?: string;
  /** When it actually left (after any quiet-hours move), epoch ms. */
  sentAt?: number;
  /** Sent with the rule's no-name variant (a shared address). */
  noName?: boolean;
}

interface Tracked {
  state: DeliveryState;
  moved: boolean;
  firstPlannedAt: string;
  /** The appointment/encounter start the plan was made for (rule 1 at send time). */
  subjectStart?: string;
  /** A quiet-hours move: the next attempt, epoch ms (else the due time). */
  retryAt?: number;
  outcome?: { status: 'sent' | 'suppressed'; reason?: string; at: number; noName?: boolean };
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

/** A consent event of a mapping test (mappings/README.md "Mapping tests"). */
export type SimConsentEvent =
  | { kind: 'consent'; resource: Record<string, unknown> }
  | { kind: 'sms'; from: string; body: string; to?: string }
  | { kind: 'unsubscribe'; email: string; purpose: Purpose | 'all' }
  | { kind: 'optOut'; patient: string; channel?: Channel; purposes?: Purpose[] }
  | { kind: 'grant' | 'revoke'; patient: string; purpose: Purpose; channel: Channel }
  | { kind: 'noContact'; patient: string }
  | { kind: 'erase'; patient: string }
  /** The ledger cannot be read (fail-closed tests), or can again. */
  | { kind: 'ledger'; available: boolean }
  /** How the (simulated) EHR answers the write-backs from now on (default applied). */
  | { kind: 'ehr'; writeBacks: SimEhrAnswer };

/** How the simulated EHR answers a write-back: as asked, refused (a denial), or failing for good. */
export type SimEhrAnswer = 'applied' | 'denied' | 'failed';

/** A write-back a test made (mapping tests' `expect.writeBacks`). */
export interface SimWriteBack {
  output: string;
  action: WriteBackOperation['kind'];
  appointment: string;
  outcome: 'applied' | 'denied' | 'failed';
  code?: string;
}

export interface SimulatorOptions {
  /** The organisation's zone (configured sites keep theirs). */
  zone: string;
  /** The HL7 input's zone: HL7 times without an offset, and shown times when no site zone applies. */
  hl7Zone?: string;
  now: number;
  sites?: readonly Site[];
  /** Run the send-time checks with this policy and these outputs; absent: every due delivery is sent. */
  consent?: {
    policy: PolicySettings;
    outputs: readonly OutputInfo[];
    links: UnsubscribeLinks;
    /** The templates: the language a reply-asking message went out in (its offer's words). */
    templates?: TemplateSet;
    /** Performs a write-back (an integration test's real output); default: the simulated EHR (`ehr` events). */
    writeBack?: (output: string, operation: WriteBackOperation) => Promise<WriteBackResult>;
  };
  /** Video visits (docs/video.md): where HL7 messages carry the join URL, and the base of the links shown. */
  video?: { publicUrl: string; virtualVisit?: VirtualVisitSetting };
}

/** Ledger reads that fail while a test says the ledger is down. */
const LEDGER_READS = new Set(['consentRecords', 'patientFacts', 'mergedGroup', 'patientsAtAddress', 'listDisclosures']);

/**
 * The pipeline with Maps for deliveries and the queue, and an in-memory store for the ledger.
 * `zone` is the organisation's zone routing and templates use; `hl7Zone` reads HL7 times
 * without an offset. close() frees the in-memory store.
 */
export class Simulator {
  readonly #rules: readonly Rule[];
  readonly #zone: string;
  readonly #hl7Zone: string;
  readonly #policy: Pick<PolicySettings, 'sites' | 'timezone'> & Partial<PolicySettings>;
  readonly #states = new Map<string, SubjectState>();
  readonly #deliveries = new Map<string, Tracked>();
  /** Every trigger routed, with the zone of the input it came through (HL7 inputs: hl7Zone). */
  readonly #triggers = new Map<string, { trigger: Trigger; inputZone?: string }>();
  readonly #store: SqliteStore;
  readonly #consent?: ConsentService;
  readonly #replies?: ReplyService;
  readonly #templates?: TemplateSet;
  #ehr: SimEhrAnswer = 'applied';
  readonly #smsOutputs: string[];
  readonly #video: SimulatorOptions['video'];
  /** Appointment id → whether a join URL is kept for it (what the server's store would hold). */
  readonly #joins = new Map<string, boolean>();
  #ledgerDown = false;
  #inputs = 0;
  readonly skipped: SkippedDelivery[] = [];
  /** Keyword confirmations sent, in order. */
  readonly replies: Array<{ to: string; text: string }> = [];
  /** Write-backs of answers, in order. */
  readonly writeBacks: SimWriteBack[] = [];
  #clock: number;

  constructor(rules: readonly Rule[], options: SimulatorOptions) {
    this.#rules = rules;
    this.#zone = options.zone;
    this.#hl7Zone = options.hl7Zone ?? options.zone;
    // `zone` stands for the organisation's zone; configured sites keep theirs (pipeline/zones.ts).
    this.#policy = { ...options.consent?.policy, timezone: options.zone, sites: options.sites ?? options.consent?.policy.sites ?? [] };
    this.#clock = options.now;
    this.#store = SqliteStore.open(':memory:');
    this.#smsOutputs = (options.consent?.outputs ?? []).filter((o) => o.channel === 'sms').map((o) => o.name);
    this.#video = options.video;
    if (options.consent) {
      const outputs = options.consent.outputs;
      // The ledger as the checks see it: reads fail while a test says it is down.
      const ledger = new Proxy(this.#store, {
        get: (target, prop, receiver) => {
          const value = Reflect.get(target, prop, receiver) as unknown;
          if (typeof value !== 'function') return value;
          if (this.#ledgerDown && LEDGER_READS.has(String(prop))) return () => Promise.reject(new Error('the ledger is unavailable (mapping test)'));
          return (value as (...a: unknown[]) => unknown).bind(target);
        },
      }) as Store;
      this.#consent = new ConsentService({
        store: ledger,
        policy: { ...options.consent.policy, timezone: options.zone },
        output: (name) => outputs.find((o) => o.name === name),
        log: silentLogger,
        now: () => this.#clock,
        links: options.consent.links,
      });
      this.#templates = options.consent.templates;
      // Answers as the server reads them (workers/replies.ts): the same service on the in-memory
      // store; answer triggers routed here, write-backs performed at once, on their last attempt.
      const perform = options.consent.writeBack ?? ((_output: string, operation: WriteBackOperation) => this.#simulatedEhr(operation));
      const consent = this.#consent;
      this.#replies = new ReplyService({
        store: this.#store,
        keywords: consent,
        policy: { keywords: options.consent.policy.keywords },
        rules: () => this.#rules,
        onAnswer: (triggers) => {
          for (const t of triggers) {
            this.#triggers.set(t.id, { trigger: t });
            this.route(t);
          }
        },
        queueWriteBack: async (job) => {
          const entry: SimWriteBack = { output: job.data.output, action: job.data.operation.kind, appointment: job.data.operation.appointment.id, outcome: 'applied' };
          this.writeBacks.push(entry);
          try {
            const result = await this.#replies!.writeBack({ id: job.id, data: job.data, attempt: WRITE_BACK_ATTEMPTS, signal: new AbortController().signal });
            if (result?.outcome === WriteBackOutcome.Denied) Object.assign(entry, { outcome: 'denied', code: result.code });
          } catch (error) {
            Object.assign(entry, { outcome: 'failed', code: String((error as { code?: unknown }).code ?? 'error') });
          }
        },
        output: (name) => (outputs.some((o) => o.name === name && o.writeBackKinds !== undefined) ? { writeBack: (operation) => perform(name, operation) } : undefined),
        log: silentLogger,
        now: () => this.#clock,
      });
    }
  }

  /** The write-back as the test's `ehr` events say the EHR answers it. */
  async #simulatedEhr(operation: WriteBackOperation): Promise<WriteBackResult> {
    if (this.#ehr === 'denied') return { outcome: WriteBackOutcome.Denied, code: 'ehr_denied' };
    if (this.#ehr === 'failed') throw new PermanentError('ehr_failed', `the simulated EHR fails the ${operation.kind}`);
    return { outcome: WriteBackOutcome.Applied, appointmentId: operation.appointment.id };
  }

  /** Staff tasks opened so far, oldest first. */
  async tasks(): Promise<StaffTask[]> {
    return (await this.#store.listStaffTasks({ limit: 1000 })).reverse();
  }

  get clock(): number {
    return this.#clock;
  }

  /** Frees the in-memory store. */
  async close(): Promise<void> {
    await this.#store.close();
  }

  /**
   * Moves the clock forward (never back). Every pending delivery whose time comes on the way
   * is attempted at that time, in time order, as the queue would: still current? expired?
   * the consent checks (a quiet-hours move sets the next attempt) — then sent or suppressed.
   */
  async advance(to: number): Promise<void> {
    for (let guard = 0; guard < 10_000; guard++) {
      let next: { tracked: Tracked; at: number } | undefined;
      for (const tracked of this.#deliveries.values()) {
        if (tracked.state.status !== 'pending' || tracked.outcome) continue;
        const at = tracked.retryAt ?? parseInstant(tracked.state.delivery.dueAt);
        if (at !== undefined && at <= Math.max(to, this.#clock) && (next === undefined || at < next.at)) next = { tracked, at };
      }
      if (!next) break;
      if (next.at > this.#clock) this.#clock = next.at;
      await this.#attempt(next.tracked);
    }
    if (to > this.#clock) this.#clock = to;
  }

  async #attempt(tracked: Tracked): Promise<void> {
    const d = tracked.state.delivery;
    const stored = this.#stored(tracked);
    const subject = d.subjectKind === 'appointment' || d.subjectKind === 'encounter' ? this.#states.get(`${d.subjectKind}/${d.subjectId}`) : undefined;
    const stale = staleness(stored, subject);
    if (stale) return this.#finish(tracked, 'suppressed', stale);
    const expires = d.expiresAt === undefined ? undefined : parseInstant(d.expiresAt);
    if (expires !== undefined && this.#clock >= expires) return this.#finish(tracked, 'suppressed', 'expired');
    // After the consent checks, as the server mints a video link only for a message that goes.
    const noJoin = this.#showsVideoLink(d) && this.#joins.get(d.subjectId) !== true;
    if (!this.#consent) return noJoin ? this.#finish(tracked, 'suppressed', NO_JOIN_INFO) : this.#finish(tracked, 'sent');
    let decision;
    try {
      decision = await this.#consent.check(stored);
    } catch {
      // Fail closed: the job is retried later; in a test, once the ledger is back.
      tracked.retryAt = this.#clock + 60_000;
      return;
    }
    if (!decision.allow) {
      if (decision.retryAt === undefined) return this.#finish(tracked, 'suppressed', decision.reason);
      tracked.retryAt = Math.max(Date.parse(decision.retryAt), this.#clock + 1);
      return;
    }
    if (noJoin) return this.#finish(tracked, 'suppressed', NO_JOIN_INFO);
    await this.#consent.sent(stored, d.to, this.#clock);
    this.#finish(tracked, 'sent', undefined, decision.noName);
    const sentAs = decision.noName && d.noNameTemplate ? { ...d, template: d.noNameTemplate } : d;
    await this.#replies?.sent(stored, d.to, this.#clock, (this.#templates ? templateLanguage(this.#templates, sentAs) : undefined) ?? 'en');
  }

  #finish(tracked: Tracked, status: 'sent' | 'suppressed', reason?: string, noName?: boolean): void {
    tracked.outcome = { status, at: this.#clock, ...(reason !== undefined ? { reason } : {}), ...(noName ? { noName } : {}) };
    tracked.state = { ...tracked.state, status: 'finished' };
  }

  #stored(tracked: Tracked): StoredDelivery {
    const at = new Date(this.#clock).toISOString();
    return { delivery: tracked.state.delivery, status: 'pending', asOf: tracked.state.asOf, generation: 1, ...(tracked.subjectStart ? { subjectStart: tracked.subjectStart } : {}), createdAt: at, updatedAt: at };
  }

  /** One HL7 message or batch, received at the current clock. */
  async hl7(text: string | Buffer): Promise<SimStep[]> {
    const receivedAt = formatInstant(this.#clock, this.#zone);
    const steps: SimStep[] = [];
    for (const message of parseHl7Batch(text)) {
      const virtualVisit = this.#video?.virtualVisit;
      const normalized = normalizeHl7(message, { receivedAt, timezone: this.#hl7Zone, ...(virtualVisit ? { virtualVisit } : {}) });
      if (normalized.kind === 'ignored') steps.push({ triggers: [], note: `ignored: ${normalized.reason}`, results: [] });
      else if (normalized.kind === 'rejected') steps.push({ triggers: [], note: `rejected: ${normalized.reason}`, results: [] });
      else {
        const applied = applyStoredState(normalized, {
          appointment: (id) => this.#states.get(`appointment/${id}`),
          encounter: (id) => this.#states.get(`encounter/${id}`),
          appointmentsOfPatient: (patientId) => [...this.#states.values()].filter((s) => s.kind === 'appointment' && s.patientId === patientId),
        });
        if (applied.kind !== 'triggers') {
          steps.push({ triggers: [], results: [] });
          continue;
        }
        for (const state of applied.states) this.#keep(state);
        for (const j of applied.joins ?? []) this.#joins.set(j.appointmentId, j.url !== undefined);
        await this.#commit(applied.triggers, applied.states, 'hl7v2', Buffer.isBuffer(text) ? text : Buffer.from(text));
        for (const t of applied.triggers) this.#triggers.set(t.id, { trigger: t, inputZone: this.#hl7Zone });
        steps.push({ triggers: applied.triggers, results: applied.triggers.map((t) => this.route(t)) });
      }
    }
    return steps;
  }

  /** A normalized trigger (e.g. from FHIR), received at the current clock. */
  async trigger(trigger: Trigger): Promise<SimStep> {
    const states: SubjectState[] = [];
    // What a FHIR input keeps of a video visit's join URL: the trigger says whether there is one.
    const appointment = trigger.appointment;
    if (appointment?.virtual !== undefined) this.#joins.set(appointment.id, appointment.virtual.hasJoinInfo);
    if (appointment?.status !== undefined && ['cancelled', 'entered-in-error', 'noshow', 'fulfilled'].includes(appointment.status)) this.#joins.set(appointment.id, false);
    for (const kind of ['appointment', 'encounter'] as const) {
      const subject = trigger[kind];
      if (!subject?.id || trigger.patient === undefined) continue;
      // The data a FHIR input keeps with the state (fhir/normalize.ts): service, location, and
      // on encounters the sensitivity that sticks to them.
      const previous = this.#states.get(`${kind}/${subject.id}`)?.data?.sensitivity;
      const sensitivity = [...new Set([...(Array.isArray(previous) ? (previous as string[]) : []), ...(trigger.sensitivity ?? [])])];
      const service = trigger.appointment?.serviceType;
      const data: Record<string, unknown> = { locationId: subject.location?.id ?? null };
      if (kind === 'appointment') data.serviceType = service ? `${service.system ?? ''}|${service.code}` : null;
      else if (sensitivity.length > 0) data.sensitivity = sensitivity;
      const state: SubjectState = {
        kind,
        id: subject.id,
        patientId: trigger.patient.id,
        asOf: trigger.occurredAt,
        ...(subject.status ? { status: subject.status } : {}),
        ...(subject.start ? { start: subject.start } : {}),
        ...(subject.end ? { end: subject.end } : {}),
        data,
      };
      this.#keep(state);
      states.push(state);
    }
    await this.#commit([trigger], states, 'fhir', Buffer.from(JSON.stringify(trigger)));
    if (!this.#triggers.has(trigger.id)) this.#triggers.set(trigger.id, { trigger });
    return { triggers: [trigger], results: [this.route(trigger)] };
  }

  /** Commits what an input gave to the in-memory store: patient facts (deceased, contact points, merges) and states. */
  async #commit(triggers: Trigger[], subjectStates: SubjectState[], format: 'hl7v2' | 'fhir', raw: Buffer): Promise<void> {
    const receivedAt = new Date(this.#clock).toISOString();
    const record: InboundRecord = {
      input: 'mapping-test',
      format,
      sender: 'mapping-test',
      controlId: '',
      messageType: triggers[0]?.source.messageType ?? '',
      contentHash: createHash('sha256').update(`${++this.#inputs}`).digest('hex'),
      raw,
      status: MessageStatus.Accepted,
      ack: '',
      ackCode: 'AA',
      receivedAt,
      triggers,
      subjectStates,
    };
    await this.#store.commitInbound(record);
  }

  /** A consent event of a test, at the current clock; the pending deliveries it forbids are suppressed. */
  async consentEvent(event: SimConsentEvent): Promise<void> {
    const consent = this.#consent;
    if (!consent) throw new Error('consent events need the send-time checks (a policy)');
    switch (event.kind) {
      case 'ledger':
        this.#ledgerDown = !event.available;
        return;
      case 'ehr':
        this.#ehr = event.writeBacks;
        return;
      case 'consent': {
        const outcome = await consent.fhirConsent(event.resource, 'fhir', false);
        if (outcome.kind === 'invalid') throw new Error(`the Consent is not valid: ${outcome.problems.map((p) => `${p.expression}: ${p.message}`).join('; ')}`);
        break;
      }
      case 'sms': {
        const output = event.to ?? this.#smsOutputs[0];
        if (output === undefined || !this.#smsOutputs.includes(output)) throw new Error(`sms: "to" must name the SMS output the reply came to (one of ${this.#smsOutputs.join(', ') || 'none: configure an SMS output'})`);
        const messageId = `SM-test-${++this.#inputs}`;
        const message = { output, from: event.from, body: event.body, messageId, raw: Buffer.from(new URLSearchParams({ From: event.from, Body: event.body, MessageSid: messageId }).toString()) };
        const { reply } = await (this.#replies ?? consent).inboundSms(message);
        if (reply !== undefined) this.replies.push({ to: event.from, text: reply });
        break;
      }
      case 'unsubscribe': {
        const purposes = event.purpose === 'all' ? nonCarePurposes(PURPOSES) : unsubscribeScope(event.purpose);
        for (const patientId of await this.#store.patientsAtAddress(normalizeAddress(event.email))) {
          await consent.record({ patientId, action: 'opt_out', channel: 'email', purposes, source: 'email-link', method: 'link' });
        }
        break;
      }
      case 'optOut':
        await consent.record({ patientId: event.patient, action: 'opt_out', ...(event.channel ? { channel: event.channel } : {}), purposes: event.purposes ?? [], source: 'admin', method: 'api' });
        break;
      case 'grant':
      case 'revoke':
        await consent.record({ patientId: event.patient, action: event.kind, purposes: [event.purpose], channel: event.channel, source: 'admin', method: 'api' });
        break;
      case 'noContact':
        await consent.record({ patientId: event.patient, action: 'no_contact', purposes: [], source: 'admin', method: 'api' });
        break;
      case 'erase': {
        const erased = new Set((await consent.erase(event.patient)).map((r) => r.patientId));
        for (const tracked of this.#deliveries.values()) {
          if (tracked.state.status === 'pending' && !tracked.outcome && erased.has(tracked.state.delivery.patientId)) this.#finish(tracked, 'suppressed', 'erased');
        }
        return;
      }
      default:
        event satisfies never;
    }
    // What the change forbids is suppressed now, as the server's enforcement does.
    for (const tracked of this.#deliveries.values()) {
      if (tracked.state.status !== 'pending' || tracked.outcome) continue;
      const denial = await consent.enforcedDenial(this.#stored(tracked));
      if (denial) this.#finish(tracked, 'suppressed', denial.decision.reason);
    }
  }

  /** The zone a delivery's times are shown in: its site's, else its input's, else each time's own offset. */
  displayZoneOf(delivery: Delivery): string | undefined {
    const origin = this.#triggers.get(delivery.triggerId);
    return origin ? displayZone(origin.trigger, this.#policy, origin.inputZone) : undefined;
  }

  /** Routes a trigger at the current clock and applies the result to the deliveries. */
  route(trigger: Trigger): RoutedStep {
    const quiet = this.#consent?.policy.quietHours;
    const result = route(trigger, this.#rules, this.#clock, { zoneFor: (t) => patientZone(t, this.#policy), ...(quiet ? { quietHours: quiet } : {}) });
    const deliveries = this.#deliveries;
    const start = (d: Delivery) => (d.subjectKind === 'appointment' ? trigger.appointment?.start : d.subjectKind === 'encounter' ? trigger.encounter?.start : undefined);
    const applied = applyRouteResult(result, {
      get: (id) => deliveries.get(id)?.state,
      *byCancelKey(key) {
        for (const tracked of deliveries.values()) if (tracked.state.delivery.cancelKeys.includes(key)) yield tracked.state;
      },
      put: (state, change) => {
        const tracked = deliveries.get(state.delivery.id);
        const subjectStart = start(state.delivery);
        if (!tracked) {
          deliveries.set(state.delivery.id, { state, moved: false, firstPlannedAt: state.delivery.plannedAt, ...(subjectStart ? { subjectStart } : {}) });
          return;
        }
        if (change === 'replanned' && parseInstant(state.delivery.plannedAt) !== parseInstant(tracked.state.delivery.plannedAt)) tracked.moved = true;
        if (change === 'revived') {
          tracked.moved = false;
          tracked.firstPlannedAt = state.delivery.plannedAt;
        }
        if (change === 'replanned' || change === 'revived') {
          tracked.subjectStart = subjectStart;
          delete tracked.retryAt;
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
      status: t.outcome?.status ?? (t.state.status === 'cancelled' ? 'cancelled' : t.moved ? 'moved' : 'pending'),
      firstPlannedAt: t.firstPlannedAt,
      ...(t.outcome?.reason !== undefined ? { reason: t.outcome.reason } : {}),
      ...(t.outcome?.status === 'sent' ? { sentAt: t.outcome.at } : {}),
      ...(t.outcome?.noName ? { noName: true } : {}),
    }));
  }

  /** Renders a delivery as it went (or would go): its zone, its unsubscribe link, its no-name variant. */
  render(d: SimDelivery, templates: TemplateSet, links: UnsubscribeLinks): RenderedMessage {
    const unsubscribe = renderVariables(d.delivery, links, d.sentAt ?? this.#clock);
    const video = this.#showsVideoLink(d.delivery) ? { video: { link: testVideoLink(this.#video?.publicUrl ?? 'http://127.0.0.1:8080', d.delivery.id) } } : undefined;
    const variables = unsubscribe || video ? { ...unsubscribe, ...video } : undefined;
    const delivery = d.noName && d.delivery.noNameTemplate ? { ...d.delivery, template: d.delivery.noNameTemplate } : d.delivery;
    return renderDelivery(templates, delivery, { zone: this.displayZoneOf(d.delivery), ...(variables ? { variables } : {}) });
  }

  #showsVideoLink(d: Delivery): boolean {
    return this.#rules.find((r) => r.id === d.ruleId)?.send.videoLink === true;
  }

  #keep(state: SubjectState): void {
    const key = `${state.kind}/${state.id}`;
    const old = this.#states.get(key);
    // As the store does: a state applies unless the stored one reflects a newer event.
    if (old && (parseInstant(old.asOf) ?? 0) > (parseInstant(state.asOf) ?? 0)) return;
    this.#states.set(key, { ...old, ...state });
  }
}

// ---------------------------------------------------------------------------------------
// Loading the mappings the way the server does

/** The mappings, the policy and the outputs' declarations, as the server would load them. */
export type SimulationConfig = MappingSet & {
  policy: PolicyConfig;
  outputs: readonly OutputInfo[];
  /** Where HL7 messages carry a video visit's join URL: the first HL7 input that says (docs/video.md). */
  virtualVisit?: VirtualVisitSetting;
};

/**
 * Loads connectors (for the outputs and the policy) and mappings from the configuration
 * directory above `mappingsDir`. Throws ConfigError with every issue.
 */
export async function loadForSimulation(mappingsDir: string, env: Env): Promise<SimulationConfig> {
  const dir = path.resolve(mappingsDir);
  const configDir = path.dirname(dir);
  const plan = await loadConfig({ configDir, env, outputSpecs, checkSecrets: false });
  const issues: ConfigIssue[] = [];
  const outputs = outputInfos(plan.outputs, outputSpecs);
  const mappings = await loadMappings({ configDir, env, outputs, issues, mappingsDir: dir, optOutWords: plan.policy.settings.keywords.optOut });
  if (issues.length > 0) throw new ConfigError(issues);
  const virtualVisit = plan.inputs.map((i) => (i.config as { virtualVisit?: VirtualVisitSetting }).virtualVisit).find((v) => v !== undefined);
  return { ...mappings, policy: plan.policy, outputs, ...(virtualVisit ? { virtualVisit } : {}) };
}

/** Reads HL7 into the simulator, turning a parse failure into an error naming the input. */
export async function hl7Steps(sim: Simulator, text: string | Buffer, where: string): Promise<SimStep[]> {
  try {
    return await sim.hl7(text);
  } catch (error) {
    if (error instanceof Hl7ParseError) throw new Error(`${where}: HL7 cannot be parsed: ${error.message}`);
    throw error;
  }
}

export function triggersFromJson(text: string, display: string): Record<string, unknown>[] {
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

export function describeDelivery(d: Pick<Delivery, 'ruleId' | 'subjectKey' | 'step'>): string {
  return `${d.ruleId} @ ${d.subjectKey}${d.step > 0 ? ` #${d.step}` : ''}`;
}

// ---------------------------------------------------------------------------------------
// Dry-run replay

export interface ReplayOptions {
  /** The mappings directory; connectors/ is read from the directory above it. */
  mappingsDir: string;
  /** Routing clock (ISO instant); default the current time. Messages are replayed as if received then. */
  now?: string;
  /** The organisation's zone for due times (sites keep theirs); also read HL7 times without an offset in it. */
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
  // What routing plans, moved by quiet hours as it would be; consent itself is decided at send time.
  const sim = new Simulator(mappings.rules, {
    zone: options.timezone,
    now,
    sites: mappings.policy.settings.sites,
    video: { publicUrl: mappings.policy.publicUrl, ...(mappings.virtualVisit ? { virtualVisit: mappings.virtualVisit } : {}) },
  });
  const lines: string[] = [];
  try {
    for (const file of files) {
      const display = displayPath(path.resolve(file));
      let steps: SimStep[];
      try {
        const bytes = await readFile(file);
        steps = [];
        if (/\.(nd)?json$/i.test(file)) for (const t of triggersFromJson(bytes.toString('utf8'), display)) steps.push(await sim.trigger(completeTrigger(t, sim, display, options.timezone)));
        else steps = await sim.hl7(bytes);
      } catch (error) {
        lines.push(`${display}: ${error instanceof Hl7ParseError ? 'HL7 cannot be parsed: ' : ''}${(error as Error).message}`);
        continue;
      }
      describeSteps(steps, display, lines, mappings, sim);
    }
  } finally {
    await sim.close();
  }
  return lines;
}

function describeSteps(steps: SimStep[], display: string, lines: string[], mappings: SimulationConfig, sim: Simulator): void {
  {
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
}

function describeSubject(trigger: Trigger): string {
  if (trigger.appointment?.id) return `appointment/${trigger.appointment.id}`;
  if (trigger.encounter?.id) return `encounter/${trigger.encounter.id}`;
  return trigger.patient !== undefined ? `patient/${trigger.patient.id}` : `trigger/${trigger.id}`;
}

/** One replay line per change that matters; undefined for non-events. */
function changeLine(c: SimChange, mappings: SimulationConfig, sim: Simulator): string | undefined {
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

function planLine(d: Delivery, mappings: SimulationConfig, sim: Simulator): string {
  let text: string;
  try {
    const r = sim.render({ delivery: d, status: 'pending', firstPlannedAt: d.plannedAt }, mappings.templates, testLinks(mappings.policy));
    const shown = (r.subject ?? r.text).replace(/\s+/g, ' ').trim();
    text = `[${r.language}] ${JSON.stringify(shown.length > 100 ? `${shown.slice(0, 99)}…` : shown)}`;
  } catch (error) {
    text = `render error: ${(error as Error).message}`;
  }
  return `${describeDelivery(d)} ${d.channel} via ${d.output}${d.to ? ` to ${d.to}` : ''} at ${d.dueAt}${d.variant ? ` variant ${d.variant}` : ''} ${text}`;
}
