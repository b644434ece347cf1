// Replay of deliveries that did not go, after an operator looked at them (docs/reliability.md
// "Replay"): a `failed` delivery (dead-lettered: a permanent refusal, or its retry span over)
// or one in `review` (an ambiguous failure of an output that does not dedupe). By id, or by a
// filter over the failed (or review) ones: output, rule, since when.
//
// A replay runs the delivery's own job once more (Queue.retryDead): the same delivery id, so the
// same idempotency key (webhook-id, Message-ID, the send ledger's receipts), exactly one more
// counted attempt — a rate limit or a busy output still only delays it — and the send-time
// checks again (a cancelled appointment, an opt-out since: suppressed, not sent). A job that no
// longer exists (pruned) is added again under its id with one attempt. Each request that names
// a delivery is written to the audit log with the token's name; refused ones with their reason.
import type { Logger } from '../log.ts';
import type { Queue } from '../queue/queue.ts';
import { AuditAction, StoredDeliveryStatus, type Store, type StoredDelivery } from '../store/store.ts';
import { deliveryJobId, type DeliveryJob } from './router.ts';

/** Why a delivery was not replayed (audit outcome `refused:<code>`, safe to log). */
export const ReplayRefusal = {
  UnknownDelivery: 'unknown_delivery',
  /** Not failed or in review: it is pending, sent, suppressed or cancelled. */
  NotReplayable: 'not_replayable',
  /** Its job is already waiting or running (replayed a moment ago). */
  AlreadyReplayed: 'already_replayed',
} as const;
export type ReplayRefusal = (typeof ReplayRefusal)[keyof typeof ReplayRefusal];

/** Statuses a replay acts on. */
export const REPLAYABLE: readonly StoredDeliveryStatus[] = [StoredDeliveryStatus.Failed, StoredDeliveryStatus.Review];

/** Default and largest number of deliveries one filtered replay acts on. */
export const REPLAY_DEFAULT_LIMIT = 100;
export const REPLAY_MAX_LIMIT = 1000;

/** Which deliveries to replay: ids, or a filter over the failed (default) or review ones. */
export type ReplayRequest =
  | { ids: readonly string[] }
  | {
      status?: 'failed' | 'review';
      output?: string;
      rule?: string;
      /** ISO instant: only deliveries that failed (or went to review) at or after it. */
      since?: string;
      /** Default 100, at most 1000. */
      limit?: number;
    };

export interface ReplayResult {
  replayed: Array<{ id: string; status: StoredDeliveryStatus; reason?: string }>;
  refused: Array<{ id: string; reason: ReplayRefusal }>;
  /** Filtered requests: more deliveries match than `limit` (ask again). */
  more?: boolean;
}

export interface ReplayDeps {
  store: Store;
  queue: Queue<DeliveryJob>;
  /** Whether an output dedupes by delivery id (the job's `idempotent`, for a job added again). */
  idempotentOutput: (output: string) => boolean;
  log: Logger;
  now: () => number;
}

/** Rows read per page while filtering. */
const PAGE = 200;

export class DeliveryReplay {
  readonly #deps: ReplayDeps;

  constructor(deps: ReplayDeps) {
    this.#deps = deps;
  }

  async replay(request: ReplayRequest, actor: string): Promise<ReplayResult> {
    const result: ReplayResult = { replayed: [], refused: [] };
    if ('ids' in request) {
      for (const id of request.ids) await this.#one(id, await this.#deps.store.getDelivery(id), actor, result);
      return result;
    }
    const { matched, more } = await this.#matching(request);
    for (const d of matched) await this.#one(d.delivery.id, d, actor, result);
    if (more) result.more = true;
    return result;
  }

  /** Failed (or review) deliveries matching the filter, newest first, at most `limit`. */
  async #matching(filter: Exclude<ReplayRequest, { ids: readonly string[] }>): Promise<{ matched: StoredDelivery[]; more: boolean }> {
    const limit = Math.min(Math.max(1, filter.limit ?? REPLAY_DEFAULT_LIMIT), REPLAY_MAX_LIMIT);
    const since = filter.since === undefined ? undefined : Date.parse(filter.since);
    const matched: StoredDelivery[] = [];
    let before: string | undefined;
    for (;;) {
      const page = await this.#deps.store.listDeliveries({
        status: filter.status ?? StoredDeliveryStatus.Failed,
        ...(filter.rule !== undefined ? { ruleId: filter.rule } : {}),
        limit: PAGE,
        ...(before !== undefined ? { before } : {}),
      });
      for (const d of page) {
        if (filter.output !== undefined && d.delivery.output !== filter.output) continue;
        if (since !== undefined && Date.parse(d.updatedAt) < since) continue;
        if (matched.length === limit) return { matched, more: true };
        matched.push(d);
      }
      if (page.length < PAGE) return { matched, more: false };
      before = page[page.length - 1]!.delivery.id;
    }
  }

  async #one(id: string, stored: StoredDelivery | undefined, actor: string, result: ReplayResult): Promise<void> {
    const { store, queue, log } = this.#deps;
    const at = new Date(this.#deps.now()).toISOString();
    const audit = (outcome: string) => store.appendAudit({ at, actor, action: AuditAction.Replay, target: `delivery/${id}`, outcome });
    const refuse = async (reason: ReplayRefusal): Promise<void> => {
      await audit(`refused:${reason}`);
      log.warn('delivery.replay_refused', { deliveryId: id, actor, reason });
      result.refused.push({ id, reason });
    };
    if (stored === undefined) return refuse(ReplayRefusal.UnknownDelivery);
    if (!REPLAYABLE.includes(stored.status)) return refuse(ReplayRefusal.NotReplayable);
    const jobId = deliveryJobId(id, stored.generation);
    if (!(await queue.retryDead(jobId))) {
      const job = await queue.get(jobId);
      if (job !== undefined) return refuse(job.state === 'pending' || job.state === 'active' ? ReplayRefusal.AlreadyReplayed : ReplayRefusal.NotReplayable);
      // The job was pruned since: the same id again, with its one attempt.
      const added = await queue.add({ id: jobId, data: null, runAt: at, maxAttempts: 1, idempotent: this.#deps.idempotentOutput(stored.delivery.output) });
      if (added !== 'added') return refuse(ReplayRefusal.AlreadyReplayed);
    }
    await audit('stored');
    log.info('delivery.replayed', { deliveryId: id, actor, status: stored.status });
    result.replayed.push({ id, status: stored.status, ...(stored.reason !== undefined ? { reason: stored.reason } : {}) });
  }
}
