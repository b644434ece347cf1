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
// What is pushed: a patient's grant, revocation or opt-out (an SMS keyword belongs to a number,
// a no-contact flag is the organisation's, neither is a person's consent a tool keeps). To an
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
import { failureClassOf } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { ConsentMirror, ToolConsentSignal } from '../outputs/consent-sync.ts';
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
  async targets(entry: Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'>): Promise<string[]> {
    if (entry.patientId === undefined || this.#deps.tools.size === 0 || mirrorsOf(entry).length === 0) return [];
    const stops = entry.action === 'opt_out' || entry.action === 'revoke';
    const group = await this.#deps.store.mergedGroup(entry.patientId);
    const sent = new Set((await this.#deps.store.listDisclosures({ patientIds: group, limit: 1000 })).map((d) => d.output));
    const holding = new Set<string>();
    if (stops) for (const id of group) for (const h of await this.#deps.store.listContactHoldings({ patientId: id })) holding.add(h.output);
    const targets: string[] = [];
    for (const [name, tool] of this.#deps.tools) {
      if (name === entry.output) continue; // where it came from
      if (tool.mirrorConsent ? sent.has(name) : tool.optOut && holding.has(name)) targets.push(name);
    }
    return targets;
  }

  /** Puts the pushes of a recorded entry on the queue (ConsentService calls it after the entry). */
  async queue(event: ConsentEvent, outputs: readonly string[]): Promise<void> {
    const mirrors = mirrorsOf(event);
    for (const output of outputs) {
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
      // Every contact the tool holds for the patient or a merged id, as it is known there now.
      const patientId = mirrors[0]?.patientId;
      const held = new Map<string, HeldContact>();
      for (const id of patientId === undefined ? [] : await this.#deps.store.mergedGroup(patientId)) {
        for (const h of await this.#deps.store.listContactHoldings({ patientId: id })) {
          if (h.output === output) held.set(`${h.patientId}\u0000${h.contactKey}`, { patientId: h.patientId, contactKey: h.contactKey });
        }
      }
      for (const contact of held.values()) {
        for (const m of mirrors) {
          if (m.status !== 'opted_out') continue;
          const scope: OptOutScope = { channel: m.channel, ...(m.purpose !== undefined ? { purpose: m.purpose } : {}) };
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
