// Consent kept in step with the tools that hold a patient's contact (docs/consent.md "Ways in":
// opt-outs "are pushed to every marketing tool that holds the contact"; outputs/consent-sync.ts
// for the data), both ways:
//
//   ledger entry ─▶ (same transaction) consent_mirrors row ─▶ queue job `mirror:<entry>:<output>`
//                ─▶ adapter.mirrorConsent() per channel × purpose      (a tool with a consent model)
//                ─▶ adapter.optOut() per held contact × channel × purpose   (a marketing tool)
//                                                                    (retried by the queue)
//   tool ─▶ adapter.pollConsent(cursor) ─▶ ToolConsentSignal ─▶ ConsentService.toolSignal()
//        ─▶ ledger entry (once per event id) ─▶ pending deliveries it forbids suppressed
//
// What is pushed: a patient's grant, revocation or opt-out (a no-contact flag is the
// organisation's, not a person's consent a tool keeps). An SMS STOP belongs to its number
// (docs/consent.md "Scope of an opt-out"), whether CareRelay received the keyword or the SMS
// provider refused a send because the number said STOP there (Twilio 21610): it is pushed as an SMS opt-out of that number — never
// an email unsubscribe — for the patients whose triggers carried the number, to the marketing
// tools holding their contact that keep an SMS status (adapter.optOutChannels: Mailchimp, Brevo;
// not HubSpot or ActiveCampaign, whose APIs have none) and to a tool with a consent model that was
// sent something about them; START is never pushed. To an
// output with a consent model (a `consent` block and mirrorConsent: salesforce-crm) that was
// sent something about the patient or a merged id (the accounting of disclosures says which),
// grants and opt-outs alike; to a marketing tool (optOut: HubSpot, Mailchimp, Brevo,
// ActiveCampaign) holding the patient's contact (Store contact holdings), revocations and
// opt-outs only — CareRelay never lifts an opt-out there. Never back to the output that
// reported the entry. FHIR Consents are evaluated by their provisions and not pushed. A tool
// refusing one push for good (a purpose it does not map) is logged with its code and the rest
// of the entry still goes; a transient failure retries the whole entry (pushes are idempotent).
//
// Logs: output names, entry ids, codes and counts only.
import { failureClassOf, RecipientSignal } from '../errors.ts';
import type { Logger } from '../log.ts';
import { normalizeAddress } from '../pipeline/consent.ts';
import type { ConsentChannel, ConsentMirror, ToolConsentSignal } from '../outputs/consent-sync.ts';
import type { HeldContact, OptOutOutcome, OptOutScope } from '../outputs/spec.ts';
import type { JobContext, Queue } from '../queue/queue.ts';
import type { Store } from '../store/store.ts';
import type { ConsentEvent, Receipt } from '../types.ts';
import type { ConsentService } from './consent.ts';

/** Name of the embedded queue holding consent pushes. */
export const CONSENT_MIRROR_QUEUE = 'consent-mirror';
/** How often a tool's consent changes are read by default. */
export const CONSENT_POLL_EVERY_MS = 60_000;
/** Pages read per poll at most (a backlog is read over the next polls). */
const POLL_PAGES = 20;

export interface MirrorJob {
  eventId: string;
  output: string;
  mirrors: ConsentMirror[];
}

/** What an output offers to keep consent in step (salesforce-crm: mirror and poll; marketing tools: optOut). */
export interface ConsentTool {
  mirrorConsent?(consent: ConsentMirror, context: { readonly signal: AbortSignal }): Promise<Receipt>;
  optOut?(contact: HeldContact, scope: OptOutScope, context: { readonly signal: AbortSignal }): Promise<OptOutOutcome>;
  /** The channels optOut sets a status for (OutboundAdapter.optOutChannels; absent: email only). */
  readonly optOutChannels?: readonly ConsentChannel[];
  pollConsent?(cursor: PollCursor, context: { readonly signal: AbortSignal }): Promise<{ signals: ToolConsentSignal[]; cursor: PollCursor; more: boolean }>;
}

/** A tool's poll position (opaque here; outputs/salesforce-crm/consent-poll.ts). */
export interface PollCursor {
  readonly since: string;
  readonly afterId?: string;
}

/**
 * The pushes a ledger entry makes: one per channel (email and SMS when it names none) and
 * purpose (none named: the whole channel). Empty for what a tool does not keep.
 */
export function mirrorsOf(event: Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'>): ConsentMirror[] {
  if (event.patientId === undefined) return [];
  const status = event.action === 'grant' ? 'opted_in' : event.action === 'revoke' || event.action === 'opt_out' ? 'opted_out' : undefined;
  if (status === undefined) return [];
  const channels = event.channel === undefined ? (['email', 'sms'] as const) : event.channel === 'email' || event.channel === 'sms' ? [event.channel] : [];
  const purposes = event.purposes.length === 0 ? [undefined] : event.purposes;
  const capturedVia = event.source === 'sms' ? 'sms' : event.source === 'email-link' ? 'email' : undefined;
  return channels.flatMap((channel) =>
    purposes.map((purpose) => ({
      patientId: event.patientId!,
      channel,
      ...(purpose !== undefined ? { purpose } : {}),
      status,
      capturedAt: event.at,
      source: event.source,
      ...(capturedVia !== undefined ? { capturedVia } : {}),
      effectiveFrom: event.at,
    })),
  );
}

type NewEntry = Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'>;

/** A number's SMS opt-out (STOP): an entry of the number, not of a patient (inboundSms, refused). */
export function isNumberOptOut(entry: NewEntry): entry is NewEntry & { address: string } {
  if (entry.patientId !== undefined || entry.action !== 'opt_out' || entry.address === undefined) return false;
  // A keyword CareRelay received, or the SMS provider refusing a send because the number
  // replied STOP to that sender there (Twilio 21610: ConsentService.refused records the method
  // `<signal>:<provider code>`): the same fact.
  const refusedAs = entry.source === 'provider' ? entry.method.split(':')[0] : undefined;
  return entry.source === 'sms' || (entry.channel === 'sms' && refusedAs === RecipientSignal.OptedOut);
}

/**
 * The pushes of an SMS keyword's opt-out: one per patient whose triggers carried the number, for
 * the SMS channel as a whole and that number only.
 */
export function keywordMirrors(event: NewEntry & { address: string }, patientIds: readonly string[]): ConsentMirror[] {
  const address = normalizeAddress(event.address);
  return patientIds.map((patientId) => ({ patientId, channel: 'sms', status: 'opted_out', capturedAt: event.at, source: event.source, capturedVia: 'sms', effectiveFrom: event.at, address }));
}

export interface ConsentSyncDeps {
  store: Store;
  consent: ConsentService;
  queue: Queue<MirrorJob>;
  /** The outputs that keep consent: a `consent` block with mirrorConsent/pollConsent, or optOut. */
  tools: ReadonlyMap<string, ConsentTool>;
  log: Logger;
  now: () => number;
  /** Default CONSENT_POLL_EVERY_MS. */
  pollEveryMs?: number;
}

export class ConsentSync {
  readonly #deps: ConsentSyncDeps;
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #polls = new Map<string, Promise<void>>();
  readonly #abort = new AbortController();
  #stopped = false;

  constructor(deps: ConsentSyncDeps) {
    this.#deps = deps;
  }

  /**
   * The outputs an entry about to be recorded is pushed to (ConsentService.record writes them
   * with the entry): see the top of this file.
   */
  async targets(entry: NewEntry): Promise<string[]> {
    if (this.#deps.tools.size === 0) return [];
    const keyword = isNumberOptOut(entry);
    if (!keyword && (entry.patientId === undefined || mirrorsOf(entry).length === 0)) return [];
    const stops = entry.action === 'opt_out' || entry.action === 'revoke';
    const group = await this.#group(keyword ? await this.#patientsAt(entry.address) : [entry.patientId!]);
    if (group.length === 0) return [];
    const sent = new Set((await this.#deps.store.listDisclosures({ patientIds: group, limit: 1000 })).map((d) => d.output));
    const holding = new Set<string>();
    if (stops) for (const id of group) for (const h of await this.#deps.store.listContactHoldings({ patientId: id })) holding.add(h.output);
    const targets: string[] = [];
    for (const [name, tool] of this.#deps.tools) {
      if (!keyword && name === entry.output) continue; // where it came from (a keyword's output is the SMS sender)
      // A STOP goes only where the tool keeps an SMS status: the others are skipped, not told of email.
      const smsStatus = !keyword || (tool.optOutChannels ?? ['email']).includes('sms');
      if (tool.mirrorConsent ? sent.has(name) : tool.optOut && smsStatus && holding.has(name)) targets.push(name);
    }
    return targets;
  }

  /** The pushes of a recorded entry (a keyword's: for the patients at its number now). */
  async #mirrors(event: ConsentEvent): Promise<ConsentMirror[]> {
    return isNumberOptOut(event) ? keywordMirrors(event, await this.#patientsAt(event.address)) : mirrorsOf(event);
  }

  /**
   * A keyword's pushes an output may have: a tool with a consent model only hears of the patients
   * it was sent something about (never of another patient at the number); a marketing tool's are
   * narrowed to the contacts it holds when pushed.
   */
  async #toldOf(output: string, mirrors: readonly ConsentMirror[]): Promise<ConsentMirror[]> {
    if (!this.#deps.tools.get(output)?.mirrorConsent) return [...mirrors];
    const told: ConsentMirror[] = [];
    for (const mirror of mirrors) {
      const group = await this.#group([mirror.patientId]);
      if ((await this.#deps.store.listDisclosures({ patientIds: group, limit: 1000 })).some((d) => d.output === output)) told.push(mirror);
    }
    return told;
  }

  /** The patients whose triggers carried an address. */
  async #patientsAt(address: string): Promise<string[]> {
    return this.#deps.store.patientsAtAddress(normalizeAddress(address));
  }

  /** The patients and every id merged with them. */
  async #group(patientIds: readonly string[]): Promise<string[]> {
    const ids = new Set<string>();
    for (const id of patientIds) for (const member of await this.#deps.store.mergedGroup(id)) ids.add(member);
    return [...ids];
  }

  /** Puts the pushes of a recorded entry on the queue (ConsentService calls it after the entry). */
  async queue(event: ConsentEvent, outputs: readonly string[]): Promise<void> {
    const all = outputs.length > 0 ? await this.#mirrors(event) : [];
    for (const output of outputs) {
      const mirrors = isNumberOptOut(event) ? await this.#toldOf(output, all) : all;
      if (mirrors.length > 0) {
        await this.#deps.queue.add({ id: `mirror:${event.id}:${output}`, data: { eventId: event.id, output, mirrors }, runAt: new Date(this.#deps.now()), idempotent: true });
      }
      await this.#deps.store.consentMirrorQueued(event.id, output);
    }
  }

  /** Queues what a crash left between an entry and its job, then pushes and polls. */
  async start(): Promise<void> {
    for (;;) {
      const left = await this.#deps.store.unqueuedConsentMirrors(100);
      if (left.length === 0) break;
      for (const { event, output } of left) await this.queue(event, [output]);
    }
    this.#deps.queue.process((job) => this.#push(job), { concurrency: 1 });
    this.#deps.queue.subscribe((event) => {
      if (event.type === 'dead') this.#deps.log.error('consent.mirror_failed', { job: event.id, code: event.code });
    });
    for (const [output, tool] of this.#deps.tools) {
      if (typeof tool.pollConsent === 'function') this.#schedule(output, 0);
    }
  }

  /**
   * Reads the tool's consent changes since the saved cursor into the ledger, a page at a time;
   * the cursor is saved after each page (an event read again is recorded once).
   */
  async pollOnce(output: string): Promise<{ signals: number }> {
    const running = this.#polls.get(output);
    if (running) await running;
    let count = 0;
    const run = (async () => {
      const tool = this.#deps.tools.get(output);
      if (!tool?.pollConsent) return;
      const key = `consent-poll:${output}`;
      const saved = await this.#deps.store.getCursor(key);
      // First poll: from the second before now — tools compare whole seconds (SOQL dateTime),
      // so a change made in the second polling began is still read (an event read twice is
      // recorded once).
      let cursor: PollCursor = saved !== undefined ? (JSON.parse(saved) as PollCursor) : { since: new Date(Math.floor(this.#deps.now() / 1000) * 1000 - 1000).toISOString() };
      if (saved === undefined) await this.#deps.store.setCursor(key, JSON.stringify(cursor));
      for (let page = 0; page < POLL_PAGES; page++) {
        const result = await tool.pollConsent(cursor, { signal: this.#abort.signal });
        for (const signal of result.signals) {
          await this.#deps.consent.toolSignal(signal);
          count++;
        }
        cursor = result.cursor;
        await this.#deps.store.setCursor(key, JSON.stringify(cursor));
        if (!result.more) break;
      }
    })();
    this.#polls.set(output, run);
    try {
      await run;
    } finally {
      if (this.#polls.get(output) === run) this.#polls.delete(output);
    }
    return { signals: count };
  }

  /** Resolves once no push is due or running (tests, shutdown). */
  async idle(): Promise<void> {
    await this.#deps.queue.idle();
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.#abort.abort();
    await Promise.allSettled(this.#polls.values());
    await this.#deps.queue.close();
  }

  #schedule(output: string, delayMs: number): void {
    if (this.#stopped) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      void this.pollOnce(output)
        .catch((error: unknown) => {
          if (!this.#stopped) this.#deps.log.warn('consent.poll_failed', { output, code: (error as { code?: string }).code ?? (error as Error).name });
        })
        .finally(() => this.#schedule(output, this.#deps.pollEveryMs ?? CONSENT_POLL_EVERY_MS));
    }, delayMs);
    timer.unref();
    this.#timers.add(timer);
  }

  async #push(job: JobContext<MirrorJob>): Promise<void> {
    const { output, mirrors, eventId } = job.data;
    const tool = this.#deps.tools.get(output);
    const calls: Array<() => Promise<unknown>> = [];
    if (tool?.mirrorConsent) {
      for (const mirror of mirrors) calls.push(() => tool.mirrorConsent!(mirror, { signal: job.signal }));
    } else if (tool?.optOut) {
      // Every contact the tool holds for the patients (or a merged id), as it is known there now:
      // each with the pushes of its own patient (a keyword's name one patient each).
      const patients = [...new Set(mirrors.map((m) => m.patientId))];
      const held = new Map<string, { contact: HeldContact; of: string }>();
      for (const patientId of patients) {
        for (const id of await this.#deps.store.mergedGroup(patientId)) {
          for (const h of await this.#deps.store.listContactHoldings({ patientId: id })) {
            if (h.output === output) held.set(`${h.patientId}\u0000${h.contactKey}`, { contact: { patientId: h.patientId, contactKey: h.contactKey }, of: patientId });
          }
        }
      }
      for (const { contact, of } of held.values()) {
        for (const m of mirrors) {
          if (m.status !== 'opted_out' || m.patientId !== of) continue;
          const scope: OptOutScope = { channel: m.channel, ...(m.purpose !== undefined ? { purpose: m.purpose } : {}), ...(m.address !== undefined ? { address: m.address } : {}) };
          calls.push(() => tool.optOut!(contact, scope, { signal: job.signal }));
        }
      }
    } else {
      this.#deps.log.warn('consent.mirror_skipped', { output, entry: eventId, reason: 'output_not_running' });
      return;
    }
    let refused = 0;
    for (const call of calls) {
      try {
        await call();
      } catch (error) {
        if (failureClassOf(error) !== 'permanent') throw error;
        refused++;
        this.#deps.log.warn('consent.mirror_refused', { output, entry: eventId, code: (error as { code?: string }).code ?? 'permanent' });
      }
    }
    this.#deps.log.info('consent.mirrored', { output, entry: eventId, count: calls.length - refused });
  }
}
