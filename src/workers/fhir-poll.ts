// Polling for FHIR servers without subscriptions (docs/hl7-fhir.md "No subscriptions at all"):
// every `intervalSeconds`, per resource type,
//
//   <Type>?_lastUpdated=ge<cursor>&_sort=_lastUpdated&_count=<pageSize>   (next links followed)
//
// and each resource version found goes through FhirIngest (dedupe on Type/id/_history/v,
// patients fetched from the same server only). The cursor is durable: each stored record
// carries the cursor up to its own lastUpdated, in its transaction, so a crash never
// skips a resource; versions already seen (the `ge` overlap) move it on afterwards.
// A poll that fails (server down, store down) is logged and retried at the next tick from
// the same cursor.
import type { Logger } from '../log.ts';
import type { Store } from '../store/store.ts';
import type { FhirIngest } from './fhir-ingest.ts';
import { cursorKeys } from './fhir-state.ts';
import { BACKGROUND_TIMER, type Timer } from './timer.ts';

export interface FhirPollSettings {
  input: string;
  resources: readonly string[];
  intervalSeconds: number;
  pageSize: number;
  /** First cursor (ISO instant) when none is stored; '' = the time of the first poll. */
  since: string;
  /** Pages read per type per poll at most (the rest waits for the next poll). Default 20. */
  maxPagesPerPoll?: number;
}

export interface FhirPollDeps {
  ingest: FhirIngest;
  store: Store;
  log: Logger;
  now?: () => Date;
  /** Injectable for tests; the default timer does not keep the process alive. */
  timer?: Timer;
}

export interface FhirPollResult {
  /** Resources read from the server. */
  read: number;
  /** Records stored (new versions). */
  stored: number;
  triggers: number;
}

export class FhirPoller {
  private readonly now: () => Date;
  private readonly timer: Timer;
  private handle: unknown;
  private running: Promise<unknown> | undefined;
  private stopped = true;

  constructor(
    readonly settings: FhirPollSettings,
    private readonly deps: FhirPollDeps,
  ) {
    this.now = deps.now ?? (() => new Date());
    this.timer = deps.timer ?? BACKGROUND_TIMER;
  }

  /** Polls every type once, in order; rejects on the first failure (nothing skipped). */
  async pollOnce(): Promise<FhirPollResult> {
    const total: FhirPollResult = { read: 0, stored: 0, triggers: 0 };
    for (const type of this.settings.resources) {
      const result = await this.deps.ingest.serial(`poll:${type}`, () => this.pollType(type));
      total.read += result.read;
      total.stored += result.stored;
      total.triggers += result.triggers;
    }
    return total;
  }

  private async pollType(type: string): Promise<FhirPollResult> {
    const { ingest, store } = this.deps;
    const key = cursorKeys.poll(this.settings.input, type);
    let cursor = await store.getCursor(key);
    if (cursor === undefined) {
      // First poll ever: start where configured, else now (no history), and remember it so
      // that a restart before the first change does not move the start.
      cursor = this.settings.since !== '' ? this.settings.since : this.now().toISOString();
      await store.setCursor(key, cursor);
    }
    const result = await ingest.searchSince(type, cursor, this.settings.pageSize, this.settings.maxPagesPerPoll ?? 20);
    const batch = await ingest.ingestResources(result.resources, result.included, { cursorKey: key });
    await ingest.advanceCursor(key, cursor, result.resources);
    return { read: result.resources.length, stored: batch.records.length, triggers: batch.records.reduce((n, r) => n + r.triggers.length, 0) };
  }

  /** Polls now, then `intervalSeconds` after each poll ends, until stop(). */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.handle !== undefined) this.timer.clearTimeout(this.handle);
    this.handle = undefined;
    await this.running;
  }

  private schedule(ms: number): void {
    this.handle = this.timer.setTimeout(() => {
      this.handle = undefined;
      if (this.stopped) return;
      this.running = this.pollOnce()
        .then((r) => {
          if (r.triggers > 0) this.deps.log.debug('fhir_poll.done', { input: this.settings.input, count: r.stored, triggerCount: r.triggers });
        })
        .catch((error: unknown) => {
          const code = typeof error === 'object' && error !== null && 'code' in error ? String((error as { code: unknown }).code) : 'poll_failed';
          this.deps.log.warn('fhir_poll.failed', { input: this.settings.input, reason: code });
        })
        .finally(() => {
          this.running = undefined;
          if (!this.stopped) this.schedule(this.settings.intervalSeconds * 1000);
        });
    }, ms);
  }
}
