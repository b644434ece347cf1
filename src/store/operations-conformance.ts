// The operations part of the Store conformance suite: outcome links and observations
// (store.ts OutcomeObservation) and retention (RetentionKind). Every backend runs it from
// storeConformanceSuite. All data here is synthetic.
import { describe, expect, it } from 'vitest';
import type { Delivery, Trigger } from '../types.ts';
import { testDelivery, testRecord, testTrigger } from './conformance.ts';
import { PENDING_REASON, RETENTION_KINDS, type DeliveryWrite, type OutcomeObservation, type RetentionKind, type Store } from './store.ts';

/** The cutoff of the retention tests: what is older goes (unless still needed). */
const CUTOFF = '2024-03-01T00:00:00Z';
const OLD = '2024-01-10T09:00:00Z';
const RECENT = '2024-03-05T09:00:00Z';

function write(delivery: Delivery, over: Partial<DeliveryWrite> = {}): DeliveryWrite {
  return { delivery, status: 'pending', asOf: delivery.asOf, generation: 1, updatedAt: OLD, ...over };
}

function appointmentTrigger(id: string, appointmentId: string, type: Trigger['type'], start: string, at = OLD): Trigger {
  return testTrigger({ id, type, occurredAt: at, receivedAt: at, appointment: { id: appointmentId, status: 'booked', start } });
}

/** Everything prune would remove of `kind` now, batch by batch (dry or not). */
export async function pruneAll(store: Store, kind: RetentionKind, options: { dryRun?: boolean; limit?: number; before?: string } = {}): Promise<number> {
  let removed = 0;
  let after: string | undefined;
  for (let i = 0; i < 1000; i++) {
    const batch = await store.prune(kind, options.before ?? CUTOFF, { limit: options.limit ?? 2, ...(after !== undefined ? { after } : {}), ...(options.dryRun ? { dryRun: true } : {}) });
    removed += batch.removed;
    if (batch.next === undefined) return removed;
    after = batch.next;
  }
  throw new Error('prune never finished');
}

export function operationsConformance(getStore: () => Store): void {
  describe('outcome links and observations', () => {
    it('notes the appointment of each stored outcome trigger, in the commit, newest note last', async () => {
      const store = getStore();
      await store.commitInbound(testRecord({ controlId: 'B1', triggers: [appointmentTrigger('b1', 'A1', 'appointment.booked', RECENT)] }));
      expect(await store.outcomeLinksDue(10)).toEqual([]);
      await store.commitInbound(testRecord({ controlId: 'F1', triggers: [appointmentTrigger('f1', 'A1', 'appointment.fulfilled', RECENT)] }));
      await store.commitInbound(testRecord({ controlId: 'N2', triggers: [appointmentTrigger('n2', 'A2', 'appointment.noshow', RECENT)] }));
      const first = await store.outcomeLinksDue(10);
      expect(first.map((l) => l.appointmentId)).toEqual(['A1', 'A2']);
      // A new outcome of A1 (a late cancellation message after the visit, say): noted again, last.
      await store.commitInbound(testRecord({ controlId: 'C1', triggers: [appointmentTrigger('c1', 'A1', 'appointment.cancelled', RECENT)] }));
      const again = await store.outcomeLinksDue(10);
      expect(again.map((l) => l.appointmentId)).toEqual(['A2', 'A1']);
      expect(await store.outcomeLinksDue(1)).toHaveLength(1);

      // Saving with the version read before the newer note keeps the note due.
      const obs: OutcomeObservation = { rule: 'r', holdout: false, sent: true, outcome: 'showed', day: '2024-03-05' };
      await store.saveOutcomes(first[0]!, [obs]);
      expect((await store.outcomeLinksDue(10)).map((l) => l.appointmentId)).toEqual(['A2', 'A1']);
      await store.saveOutcomes(again.find((l) => l.appointmentId === 'A1')!, [{ ...obs, outcome: 'cancelled_late' }]);
      expect((await store.outcomeLinksDue(10)).map((l) => l.appointmentId)).toEqual(['A2']);
      expect(await store.countOutcomes({})).toEqual([{ rule: 'r', holdout: false, day: '2024-03-05', outcome: 'cancelled_late', count: 1, sent: 1 }]);
    });

    it('replaces an appointment’s observations and counts them by rule, arm, day and outcome', async () => {
      const store = getStore();
      const obs = (o: Partial<OutcomeObservation>): OutcomeObservation => ({ rule: 'remind', holdout: false, sent: true, outcome: 'showed', day: '2024-03-04', ...o });
      const link = (appointmentId: string) => ({ appointmentId, version: 0 });
      await store.saveOutcomes(link('A1'), [obs({ variant: 'a' }), obs({ rule: 'tips', holdout: true, sent: false })]);
      await store.saveOutcomes(link('A2'), [obs({ variant: 'a', sent: false })]);
      await store.saveOutcomes(link('A3'), [obs({ variant: 'b', outcome: 'noshow', day: '2024-03-20' })]);
      await store.saveOutcomes(link('A4'), [obs({ variant: 'b', day: '2024-02-01' })]);
      await store.saveOutcomes(link('A4'), []);
      const all = await store.countOutcomes({});
      expect(all).toEqual([
        { rule: 'remind', variant: 'a', holdout: false, day: '2024-03-04', outcome: 'showed', count: 2, sent: 1 },
        { rule: 'tips', holdout: true, day: '2024-03-04', outcome: 'showed', count: 1, sent: 0 },
        { rule: 'remind', variant: 'b', holdout: false, day: '2024-03-20', outcome: 'noshow', count: 1, sent: 1 },
      ]);
      expect(await store.countOutcomes({ rule: 'tips' })).toEqual([all[1]]);
      expect(await store.countOutcomes({ fromDay: '2024-03-05', toDay: '2024-12-31' })).toEqual([all[2]]);
      expect(await store.countOutcomes({ toDay: '2024-03-04' })).toEqual(all.slice(0, 2));
    });
  });

  describe('retention (RetentionKind)', () => {
    it('rawMessages: clears the bytes of old messages, keeps quarantined copies awaiting review and pending events', async () => {
      const store = getStore();
      const old = await store.commitInbound(testRecord({ controlId: 'OLD', receivedAt: OLD }));
      const recent = await store.commitInbound(testRecord({ controlId: 'NEW', receivedAt: RECENT }));
      const conflict = await store.commitInbound(testRecord({ controlId: 'OLD', receivedAt: OLD, raw: Buffer.from('MSH|other bytes\r') }));
      expect(conflict.outcome).toBe('conflict');
      const pending = await store.commitInbound(testRecord({ controlId: 'PEND', receivedAt: OLD, reason: PENDING_REASON }));
      const length = (await store.getMessage(old.message.id))!.raw.length;

      expect(await pruneAll(store, 'rawMessages', { dryRun: true })).toBe(1);
      expect((await store.getMessage(old.message.id))!.raw.length).toBe(length);
      expect(await pruneAll(store, 'rawMessages')).toBe(1);
      const cleared = (await store.getMessage(old.message.id))!;
      expect(cleared).toMatchObject({ status: 'accepted', controlId: 'OLD', rawBytes: length });
      expect(cleared.raw.length).toBe(0);
      expect((await store.getMessage(recent.message.id))!.raw.length).toBeGreaterThan(0);
      expect((await store.getMessage(conflict.message.id))!.raw.toString()).toBe('MSH|other bytes\r');
      expect((await store.getMessage(pending.message.id))!.raw.length).toBeGreaterThan(0);
      // Cleared once: nothing more to do.
      expect(await pruneAll(store, 'rawMessages')).toBe(0);
      // A resend of the same bytes is still answered from the record.
      expect((await store.commitInbound(testRecord({ controlId: 'NEW', receivedAt: RECENT }))).outcome).toBe('duplicate');
    });

    it('triggers: removes old records with their triggers and states, keeps what routing, pending deliveries and outcomes still need', async () => {
      const store = getStore();
      const commit = (controlId: string, trigger: Trigger, state?: { start: string }) =>
        store.commitInbound(
          testRecord({
            controlId,
            receivedAt: OLD,
            triggers: [trigger],
            subjectStates: state ? [{ kind: 'appointment', id: trigger.appointment!.id, patientId: 'MRN-1', status: 'booked', start: state.start, asOf: OLD }] : [],
          }),
        );
      const past = '2024-01-20T10:00:00Z';
      const future = '2024-04-20T10:00:00Z';
      const gone = await commit('GONE', appointmentTrigger('t-gone', 'A-GONE', 'appointment.booked', past), { start: past });
      const unrouted = await commit('UNROUTED', appointmentTrigger('t-unrouted', 'A-UNROUTED', 'appointment.booked', past), { start: past });
      const pendingDelivery = await commit('PENDING', appointmentTrigger('t-pending', 'A-PENDING', 'appointment.booked', past), { start: past });
      const upcoming = await commit('UPCOMING', appointmentTrigger('t-upcoming', 'A-UPCOMING', 'appointment.booked', future), { start: future });
      const linkDue = await commit('LINK', appointmentTrigger('t-link', 'A-LINK', 'appointment.noshow', past), { start: past });
      const quarantined = await store.commitInbound(testRecord({ controlId: 'GONE', receivedAt: OLD, raw: Buffer.from('MSH|conflict\r') }));
      const recent = await store.commitInbound(testRecord({ controlId: 'RECENT', receivedAt: RECENT, triggers: [appointmentTrigger('t-recent', 'A-RECENT', 'appointment.booked', past, RECENT)] }));
      const routed = ['t-gone', 't-pending', 't-upcoming', 't-link', 't-recent'];
      await store.saveRouting(routed, [write(testDelivery({ appointmentId: 'A-PENDING' })), write(testDelivery({ appointmentId: 'A-GONE' }), { status: 'cancelled' })], OLD);

      expect(await pruneAll(store, 'triggers', { dryRun: true })).toBe(1);
      expect(await store.getTrigger('t-gone')).toBeDefined();
      expect(await pruneAll(store, 'triggers')).toBe(1);
      expect(await store.getMessage(gone.message.id)).toBeUndefined();
      expect(await store.getTrigger('t-gone')).toBeUndefined();
      expect(await store.getSubjectState('appointment', 'A-GONE')).toBeUndefined();
      for (const kept of [unrouted, pendingDelivery, upcoming, linkDue, quarantined, recent]) expect(await store.getMessage(kept.message.id)).toBeDefined();
      for (const id of ['t-unrouted', 't-pending', 't-upcoming', 't-link', 't-recent']) expect(await store.getTrigger(id)).toBeDefined();
      expect(await store.getSubjectState('appointment', 'A-PENDING')).toBeDefined();
      // Once linked, and once its pending delivery is no longer pending, each goes too.
      await store.saveOutcomes((await store.outcomeLinksDue(10))[0]!, []);
      await store.finishDelivery(testDelivery({ appointmentId: 'A-PENDING' }).id, 1, { status: 'sent', at: OLD });
      expect(await pruneAll(store, 'triggers')).toBe(2);
      expect(await store.getTrigger('t-link')).toBeUndefined();
      expect(await store.getTrigger('t-pending')).toBeUndefined();
      expect(await store.getTrigger('t-upcoming')).toBeDefined();
    });

    it('deliveryBodies: removes address, payload and message of final deliveries, keeps pending and failed ones whole', async () => {
      const store = getStore();
      const sent = testDelivery({ appointmentId: 'A-SENT' });
      const pending = testDelivery({ appointmentId: 'A-PENDING' });
      const failed = testDelivery({ appointmentId: 'A-FAILED' });
      const recent = testDelivery({ appointmentId: 'A-RECENT' });
      await store.saveRouting('t', [write(sent), write(pending), write(failed), write(recent)], OLD);
      await store.finishDelivery(sent.id, 1, { status: 'sent', at: OLD, providerId: 'p-1', message: { language: 'en', to: '+15550100', text: 'Hello Alex' } });
      await store.finishDelivery(failed.id, 1, { status: 'failed', reason: 'http_500', at: OLD });
      await store.finishDelivery(recent.id, 1, { status: 'sent', at: RECENT, message: { language: 'en', text: 'Hi' } });

      expect(await pruneAll(store, 'deliveryBodies', { dryRun: true })).toBe(1);
      expect(await pruneAll(store, 'deliveryBodies')).toBe(1);
      const cleared = (await store.getDelivery(sent.id))!;
      expect(cleared).toMatchObject({ status: 'sent', providerId: 'p-1', delivery: { id: sent.id, ruleId: 'reminder', payload: {} } });
      expect(cleared.delivery.to).toBeUndefined();
      expect(cleared.message).toBeUndefined();
      expect((await store.getDelivery(pending.id))!.delivery.to).toBe('+15550100');
      expect((await store.getDelivery(failed.id))!.delivery.payload).toEqual(failed.payload);
      expect((await store.getDelivery(recent.id))!.message?.text).toBe('Hi');
      expect(await pruneAll(store, 'deliveryBodies')).toBe(0);
    });

    it('outbox and deliveries: old entries and final records go, pending deliveries stay', async () => {
      const store = getStore();
      const sent = testDelivery({ appointmentId: 'A-SENT' });
      const pending = testDelivery({ appointmentId: 'A-PENDING', cancelKeys: [...testDelivery({ appointmentId: 'A-PENDING' }).cancelKeys, 'campaign/x'] });
      const recent = testDelivery({ appointmentId: 'A-RECENT' });
      await store.saveRouting('t', [write(sent), write(pending), write(recent, { updatedAt: RECENT })], OLD);
      await store.saveRouting('t2', [], RECENT);
      await store.putOutboxEntry({ deliveryId: sent.id, output: 'sms', channel: 'sms', language: 'en', text: 'Hello', keptAt: OLD });
      await store.putOutboxEntry({ deliveryId: recent.id, output: 'sms', channel: 'sms', language: 'en', text: 'Hi', keptAt: RECENT });
      await store.finishDelivery(sent.id, 1, { status: 'sent', at: OLD });
      await store.addDeliveryReceipt({ deliveryId: sent.id, output: 'sms', status: 'accepted', providerId: 'SM1', at: OLD });

      expect(await pruneAll(store, 'outbox')).toBe(1);
      expect((await store.listOutbox({})).map((e) => e.deliveryId)).toEqual([recent.id]);
      expect(await pruneAll(store, 'deliveries', { dryRun: true })).toBe(1);
      expect(await pruneAll(store, 'deliveries')).toBe(1);
      expect(await store.getDelivery(sent.id)).toBeUndefined();
      expect(await store.listDeliveryReceipts({ deliveryId: sent.id })).toEqual([]);
      expect((await store.countDeliveries()).sent).toBe(0);
      expect(await store.getDelivery(pending.id)).toBeDefined();
      expect((await store.deliveriesByCancelKey('campaign/x')).map((d) => d.delivery.id)).toEqual([pending.id]);
      expect(await store.getDelivery(recent.id)).toBeDefined();
    });

    it('decisions, audit and outcomes: what is older than the cutoff goes, batch by batch', async () => {
      const store = getStore();
      const decision = { deliveryId: 'd1', patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'sms', output: 'sms', result: 'allow', basis: 'care' } as const;
      for (const at of [OLD, OLD, OLD, RECENT]) await store.recordDecision({ ...decision, records: [], settings: {}, at });
      for (const at of [OLD, RECENT]) await store.appendAudit({ at, actor: 'admin', action: 'message.reprocess', target: 'message/1', outcome: 'stored' });
      await store.recordDisclosure({ deliveryId: 'd1', patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'sms', output: 'sms', at: OLD });
      await store.recordDisclosure({ deliveryId: 'd2', patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'sms', output: 'sms', at: RECENT });
      await store.saveOutcomes({ appointmentId: 'A1', version: 0 }, [{ rule: 'r', holdout: false, sent: true, outcome: 'showed', day: '2024-02-28' }]);
      await store.saveOutcomes({ appointmentId: 'A2', version: 0 }, [{ rule: 'r', holdout: false, sent: true, outcome: 'showed', day: '2024-03-01' }]);

      expect(await pruneAll(store, 'decisions', { dryRun: true })).toBe(3);
      expect(await pruneAll(store, 'decisions')).toBe(3);
      expect((await store.listDecisions({ patientId: 'MRN-1' })).map((d) => d.at)).toEqual([RECENT]);
      expect(await pruneAll(store, 'audit', { limit: 1 })).toBe(2);
      expect((await store.listAudit({})).map((a) => a.at)).toEqual([RECENT]);
      expect((await store.listDisclosures({ patientIds: ['MRN-1'] })).map((d) => d.at)).toEqual([RECENT]);
      expect(await pruneAll(store, 'outcomes')).toBe(1);
      expect((await store.countOutcomes({})).map((c) => c.day)).toEqual(['2024-03-01']);
    });

    it('finds nothing to remove in an empty store, for every kind', async () => {
      const store = getStore();
      for (const kind of RETENTION_KINDS) expect(await store.prune(kind, CUTOFF, { limit: 10 })).toEqual({ removed: 0 });
      await expect(store.prune('rawMessages', CUTOFF, { limit: 10, after: 'not a position' })).rejects.toThrow(RangeError);
    });
  });
}
