// Replay through the delivery queue (Queue.retryDead), for a runtime that has no replay
// service of its own: a dead-lettered delivery's job, or a parked one, is made pending again
// with one more attempt. The deliver worker then runs every send-time check again (still
// current, consent, caps, expiry) before it sends, and a failed delivery of that generation may
// end again (Store.finishDelivery). Each delivery replayed or refused is written to the audit
// log with the caller's name.
import type { Logger } from '../../log.ts';
import type { Store } from '../../store/store.ts';
import { AuditAction } from '../../store/store.ts';
import { deliveryJobId } from '../../workers/router.ts';
import type { AdminCaller } from '../app.ts';
import { REPLAY_MAX, reviewItems, type ReplayRequest, type ReplayResult, type ReplayService } from './deliveries.ts';
import type { QueueReader } from './flows.ts';

export interface QueueReplayDeps {
  store: Store;
  queue: QueueReader & { retryDead(id: string): Promise<boolean> };
  log: Logger;
  now: () => Date;
}

export function queueReplay(deps: QueueReplayDeps): ReplayService {
  const { store, queue, log, now } = deps;
  const audit = (caller: AdminCaller, id: string, outcome: string) =>
    store.appendAudit({ at: now().toISOString(), actor: caller.name, action: AuditAction.Replay, target: `delivery/${id}`, outcome });

  return async (request: ReplayRequest, caller: AdminCaller): Promise<ReplayResult> => {
    let ids: string[];
    if ('ids' in request) ids = [...new Set(request.ids)].slice(0, REPLAY_MAX);
    else if (request.filter.status === 'review') ids = (await reviewItems(deps, REPLAY_MAX)).filter((d) => request.filter.rule === undefined || d.delivery.ruleId === request.filter.rule).map((d) => d.delivery.id);
    else ids = (await store.listDeliveries({ status: 'failed', ruleId: request.filter.rule, limit: REPLAY_MAX })).map((d) => d.delivery.id);

    const result: ReplayResult = { replayed: [], refused: [] };
    for (const id of ids) {
      const d = await store.getDelivery(id);
      const replayed = d !== undefined && (d.status === 'failed' || d.status === 'pending') && (await queue.retryDead(deliveryJobId(id, d.generation)));
      const reason = d === undefined ? 'unknown_delivery' : replayed ? undefined : 'not_dead_or_parked';
      await audit(caller, id, reason === undefined ? 'stored' : `refused:${reason}`);
      if (reason === undefined) result.replayed.push(id);
      else result.refused.push({ id, reason });
    }
    log.info('delivery.replay', { actor: caller.name, count: result.replayed.length, refused: result.refused.length });
    return result;
  };
}
