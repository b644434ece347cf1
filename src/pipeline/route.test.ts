import { describe, expect, it } from 'vitest';
import type { Delivery } from '../types.ts';
import type { RouteResult } from './rule.ts';
import type { DeliveryChange, DeliveryState } from './route.ts';
import { applyToDelivery, assignVariant, route, subjectOf } from './route.ts';
import { makeTrigger, rules } from './test-helpers.ts';

const PARIS = { zoneFor: () => 'Europe/Paris' };
const NOW = '2025-06-01T09:00:10+02:00';

const [reminder] = rules({
  id: 'reminder-24h',
  on: ['appointment.booked'],
  where: { 'appointment.serviceType.code': { in: ['CARDIO', 'ONCO'] } },
  purpose: 'care.logistics',
  channel: 'sms',
  send: { output: 'sms-main', template: 'reminder', fields: ['patient.name.given', 'appointment.start', 'appointment.location.name'] },
  at: 'appointment.start - 1d at 18:00',
  expires: 'appointment.start',
});

const booked = (o: Parameters<typeof makeTrigger>[0] = {}) => makeTrigger({ type: 'appointment.booked', ...o });

/**
 * A minimal store of delivery states driven by route results through applyToDelivery, as a
 * queue/store backend would: plans and replans by id, cancels by key.
 */
class Deliveries {
  readonly states = new Map<string, DeliveryState>();
  readonly log: { id: string; change: DeliveryChange; reason?: string }[] = [];

  apply(result: RouteResult): void {
    for (const order of result.cancels) {
      for (const [id, state] of this.states) {
        if (!state.delivery.cancelKeys.includes(order.key)) continue;
        this.record(id, applyToDelivery(state, { kind: 'cancel', order }));
      }
    }
    for (const delivery of result.deliveries) this.record(delivery.id, applyToDelivery(this.states.get(delivery.id), { kind: 'plan', delivery }));
    for (const delivery of result.replans) this.record(delivery.id, applyToDelivery(this.states.get(delivery.id), { kind: 'replan', delivery }));
  }

  private record(id: string, outcome: ReturnType<typeof applyToDelivery>): void {
    if (outcome.state) this.states.set(id, outcome.state);
    this.log.push({ id, change: outcome.change, ...(outcome.reason ? { reason: outcome.reason } : {}) });
  }

  get(id: string): DeliveryState | undefined {
    return this.states.get(id);
  }
}

describe('route: planning', () => {
  it('booked → one delivery with a deterministic id, due time, expiry, cancel keys and only allowed fields', () => {
    const result = route(booked(), [reminder], NOW, PARIS);
    expect(result.cancels).toEqual([]);
    expect(result.skipped).toEqual([]);
    expect(result.replans).toEqual([]);
    expect(result.deliveries).toEqual([
      {
        id: 'reminder-24h@appointment/A100#0',
        ruleId: 'reminder-24h',
        subjectKey: 'appointment/A100',
        subjectKind: 'appointment',
        subjectId: 'A100',
        step: 0,
        patientId: 'MRN1',
        triggerId: 'trg-1',
        triggerType: 'appointment.booked',
        asOf: '2025-06-01T09:00:00+02:00',
        plannedAt: '2025-06-09T18:00:00+02:00',
        dueAt: '2025-06-09T18:00:00+02:00',
        expiresAt: '2025-06-10T14:30:00+02:00',
        purpose: 'care.logistics',
        channel: 'sms',
        output: 'sms-main',
        template: 'reminder',
        to: '+33612345678',
        cancelKeys: [
          'reminder-24h@appointment/A100#0',
          'appointment/A100',
          'patient/MRN1',
          'rule/reminder-24h',
          'appointment.cancelled@appointment/A100',
          'appointment.deleted@appointment/A100',
          'appointment.noshow@appointment/A100',
        ],
        payload: {
          patient: { name: { given: ['Claire', 'Anne'] } },
          appointment: { start: '2025-06-10T14:30:00+02:00', location: { name: 'Cardiology, building B' } },
        },
      } satisfies Delivery,
    ]);
    // Nothing else leaves: no identifiers, no phone numbers, no birth date in the payload.
    expect(JSON.stringify(result.deliveries[0].payload)).not.toMatch(/MRN1|1980|\+336|example\.org/);
  });

  it('ids carry no ":" and encode odd subject ids', () => {
    const result = route(booked({ appointment: { id: 'SCH:12/3#4' } }), [reminder], NOW, PARIS);
    expect(result.deliveries[0].id).toBe('reminder-24h@appointment/SCH%3A12%2F3%234#0');
    expect(result.deliveries[0].id).not.toContain(':');
  });

  it('where that does not hold → nothing', () => {
    const result = route(booked({ appointment: { serviceType: { code: 'DERM' } } }), [reminder], NOW, PARIS);
    expect(result).toEqual({
      triggerId: 'trg-1',
      deliveries: [],
      replans: [],
      cancels: [],
      skipped: [],
      // Which part of `where` failed, as the rule says it (for the routing explanation).
      unmatched: [{ ruleId: 'reminder-24h', reason: 'condition_false', condition: 'appointment.serviceType.code in [CARDIO, ONCO]' }],
    });
  });

  it('the same trigger twice gives the same result (same ids)', () => {
    const a = route(booked(), [reminder], NOW, PARIS);
    const b = route(booked(), [reminder], '2025-06-01T09:05:00+02:00', PARIS);
    expect(b).toEqual(a);
    const store = new Deliveries();
    store.apply(a);
    store.apply(b);
    expect(store.log.map((l) => l.change)).toEqual(['added', 'unchanged']);
    expect(store.states.size).toBe(1);
  });

  it('a second booked for the same appointment (new message, new trigger id) gives the same delivery id', () => {
    const first = route(booked({ id: 'trg-1' }), [reminder], NOW, PARIS);
    const second = route(booked({ id: 'trg-2', occurredAt: '2025-06-02T08:00:00+02:00' }), [reminder], NOW, PARIS);
    expect(second.deliveries.map((d) => d.id)).toEqual(first.deliveries.map((d) => d.id));
    const store = new Deliveries();
    store.apply(first);
    store.apply(second);
    expect(store.states.size).toBe(1);
    expect(store.log.at(-1)).toEqual({ id: 'reminder-24h@appointment/A100#0', change: 'unchanged', reason: 'same' });
    // Same appointment booked again at another time: replanned, still one delivery.
    store.apply(route(booked({ id: 'trg-3', occurredAt: '2025-06-03T08:00:00+02:00', appointment: { start: '2025-06-20T10:00:00+02:00' } }), [reminder], NOW, PARIS));
    expect(store.states.size).toBe(1);
    expect(store.log.at(-1)?.change).toBe('replanned');
    expect(store.get('reminder-24h@appointment/A100#0')?.delivery.dueAt).toBe('2025-06-19T18:00:00+02:00');
  });

  it('the due time follows the patient zone', () => {
    const ny = route(booked({ appointment: { start: '2025-06-10T09:00:00-04:00' } }), [reminder], NOW, { zoneFor: () => 'America/New_York' });
    expect(ny.deliveries[0].dueAt).toBe('2025-06-09T18:00:00-04:00');
    expect(() => route(booked(), [reminder], NOW, { zoneFor: () => 'Mars/Olympus' })).toThrow(/unknown time zone "Mars\/Olympus"/);
  });

  it('a cadence gives one delivery per step', () => {
    const [cadence] = rules({ ...rawReminder(), id: 'prep', at: ['appointment.start - 7d at 10:00', 'appointment.start - 1d at 10:00'] });
    const result = route(booked(), [cadence], NOW, PARIS);
    expect(result.deliveries.map((d) => [d.id, d.dueAt])).toEqual([
      ['prep@appointment/A100#0', '2025-06-03T10:00:00+02:00'],
      ['prep@appointment/A100#1', '2025-06-09T10:00:00+02:00'],
    ]);
  });

  it('a trigger without the anchor time is skipped with reason no_anchor', () => {
    const result = route(booked({ appointment: { start: undefined } }), [reminder], NOW, PARIS);
    expect(result.deliveries).toEqual([]);
    expect(result.skipped).toEqual([
      { id: 'reminder-24h@appointment/A100#0', ruleId: 'reminder-24h', subjectKey: 'appointment/A100', step: 0, triggerId: 'trg-1', reason: 'no_anchor' },
    ]);
  });

  it('patient rules are about the patient; encounter triggers without an id fall back to the trigger', () => {
    expect(subjectOf(makeTrigger({ type: 'patient.updated' })).key).toBe('patient/MRN1');
    expect(subjectOf(makeTrigger({ type: 'encounter.finished', id: 'T9', encounter: { status: 'finished' } })).key).toBe('trigger/T9');
    expect(subjectOf(makeTrigger({ type: 'encounter.finished', encounter: { id: 'V7' } })).key).toBe('encounter/V7');
  });
});

describe('route: expiry', () => {
  it('a due time already passed goes now when still before expiry', () => {
    // Booked at 09:00 for 14:30 the same day: the 18:00-the-day-before reminder goes now.
    const late = booked({ occurredAt: '2025-06-10T09:00:00+02:00' });
    const result = route(late, [reminder], '2025-06-10T09:00:03+02:00', PARIS);
    expect(result.deliveries[0].plannedAt).toBe('2025-06-09T18:00:00+02:00');
    expect(result.deliveries[0].dueAt).toBe('2025-06-10T09:00:03+02:00');
  });

  it('at or after expiry it is dropped with reason expired (and any earlier plan cancelled)', () => {
    const result = route(booked(), [reminder], '2025-06-10T14:30:00+02:00', PARIS);
    expect(result.deliveries).toEqual([]);
    expect(result.skipped).toEqual([
      {
        id: 'reminder-24h@appointment/A100#0',
        ruleId: 'reminder-24h',
        subjectKey: 'appointment/A100',
        step: 0,
        triggerId: 'trg-1',
        reason: 'expired',
        plannedAt: '2025-06-09T18:00:00+02:00',
        expiresAt: '2025-06-10T14:30:00+02:00',
      },
    ]);
    expect(result.cancels).toEqual([
      { key: 'reminder-24h@appointment/A100#0', reason: 'expired', triggerId: 'trg-1', triggerType: 'appointment.booked', asOf: '2025-06-01T09:00:00+02:00' },
    ]);
  });

  it('a planned time after expiry is dropped even when routing early', () => {
    const [afterStart] = rules({ ...rawReminder(), id: 'bad-timing', at: 'appointment.start + 1h' });
    expect(route(booked(), [afterStart], NOW, PARIS).skipped.map((s) => s.reason)).toEqual(['expired']);
  });
});

describe('route: cancel and reschedule', () => {
  const cancelled = (o: Parameters<typeof makeTrigger>[0] = {}) =>
    makeTrigger({ type: 'appointment.cancelled', id: 'trg-c', occurredAt: '2025-06-03T10:00:00+02:00', appointment: { status: 'cancelled' }, ...o });
  const rescheduled = (o: Parameters<typeof makeTrigger>[0] = {}) =>
    makeTrigger({
      type: 'appointment.rescheduled',
      id: 'trg-r',
      occurredAt: '2025-06-02T10:00:00+02:00',
      appointment: { start: '2025-06-12T08:15:00+02:00', previousStart: '2025-06-10T14:30:00+02:00' },
      ...o,
    });
  const ID = 'reminder-24h@appointment/A100#0';

  it('cancelled → a cancel key matching the pending delivery', () => {
    const result = route(cancelled(), [reminder], NOW, PARIS);
    expect(result.deliveries).toEqual([]);
    expect(result.cancels).toEqual([
      { key: 'appointment.cancelled@appointment/A100', reason: 'trigger', triggerId: 'trg-c', triggerType: 'appointment.cancelled', asOf: '2025-06-03T10:00:00+02:00' },
    ]);
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(result);
    expect(store.get(ID)?.status).toBe('cancelled');
  });

  it('deleted and noshow cancel too; an unrelated rule on noshow is not cancelled by its own trigger', () => {
    const [missed] = rules({ ...rawReminder(), id: 'missed-you', on: ['appointment.noshow'], at: 'occurredAt + 2h', expires: undefined, where: undefined });
    const noshow = makeTrigger({ type: 'appointment.noshow', id: 'trg-n', occurredAt: '2025-06-10T15:00:00+02:00' });
    const store = new Deliveries();
    store.apply(route(booked(), [reminder, missed], NOW, PARIS));
    const result = route(noshow, [reminder, missed], '2025-06-10T15:00:01+02:00', PARIS);
    expect(result.cancels.map((c) => c.key)).toEqual(['appointment.noshow@appointment/A100']);
    expect(result.deliveries.map((d) => d.id)).toEqual(['missed-you@appointment/A100#0']);
    expect(result.deliveries[0].cancelKeys).not.toContain('appointment.noshow@appointment/A100');
    store.apply(result);
    expect(store.get(ID)?.status).toBe('cancelled');
    expect(store.get('missed-you@appointment/A100#0')?.status).toBe('pending');
    expect(route(makeTrigger({ type: 'appointment.deleted' }), [reminder], NOW, PARIS).cancels[0].key).toBe('appointment.deleted@appointment/A100');
  });

  it('rescheduled → a replan with the due time re-resolved against the new trigger', () => {
    const result = route(rescheduled(), [reminder], NOW, PARIS);
    expect(result.deliveries).toEqual([]);
    expect(result.replans).toHaveLength(1);
    expect(result.replans[0]).toMatchObject({
      id: ID,
      dueAt: '2025-06-11T18:00:00+02:00',
      expiresAt: '2025-06-12T08:15:00+02:00',
      asOf: '2025-06-02T10:00:00+02:00',
      payload: { appointment: { start: '2025-06-12T08:15:00+02:00' } },
    });
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(result);
    expect(store.log.at(-1)?.change).toBe('replanned');
    expect(store.get(ID)?.delivery.dueAt).toBe('2025-06-11T18:00:00+02:00');
    expect(store.states.size).toBe(1);
  });

  it('a replan never creates a delivery (the rule did not match the booking)', () => {
    const store = new Deliveries();
    store.apply(route(booked({ appointment: { serviceType: { code: 'DERM' } } }), [reminder], NOW, PARIS));
    store.apply(route(rescheduled(), [reminder], NOW, PARIS));
    expect(store.states.size).toBe(0);
    expect(store.log).toEqual([{ id: ID, change: 'unchanged', reason: 'not_found' }]);
  });

  it('rescheduled to a time that makes the reminder expire cancels the pending one', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    // Moved to 10:00 today, processed at 10:05: past the new start.
    const moved = rescheduled({ occurredAt: '2025-06-05T09:00:00+02:00', appointment: { start: '2025-06-05T10:00:00+02:00' } });
    const result = route(moved, [reminder], '2025-06-05T10:05:00+02:00', PARIS);
    expect(result.skipped.map((s) => s.reason)).toEqual(['expired']);
    store.apply(result);
    expect(store.get(ID)?.status).toBe('cancelled');
  });

  it('reschedule then cancel → cancelled', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(route(rescheduled(), [reminder], NOW, PARIS));
    store.apply(route(cancelled(), [reminder], NOW, PARIS));
    expect(store.log.map((l) => l.change)).toEqual(['added', 'replanned', 'cancelled']);
    expect(store.get(ID)?.status).toBe('cancelled');
  });

  it('cancel then a new booking with a NEW appointment id → a new delivery', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(route(cancelled(), [reminder], NOW, PARIS));
    const rebooked = booked({ id: 'trg-b2', occurredAt: '2025-06-03T10:05:00+02:00', appointment: { id: 'A200', start: '2025-06-17T09:00:00+02:00' } });
    const result = route(rebooked, [reminder], NOW, PARIS);
    expect(result.deliveries.map((d) => d.id)).toEqual(['reminder-24h@appointment/A200#0']);
    expect(result.deliveries[0].cancelKeys).not.toContain('appointment.cancelled@appointment/A100');
    store.apply(result);
    expect(store.get(ID)?.status).toBe('cancelled');
    expect(store.get('reminder-24h@appointment/A200#0')).toMatchObject({ status: 'pending', delivery: { dueAt: '2025-06-16T18:00:00+02:00' } });
  });

  it('the same appointment booked again after a cancel (newer event) is revived', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(route(cancelled(), [reminder], NOW, PARIS));
    store.apply(route(booked({ id: 'trg-b3', occurredAt: '2025-06-04T08:00:00+02:00' }), [reminder], NOW, PARIS));
    expect(store.log.at(-1)?.change).toBe('revived');
    expect(store.get(ID)?.status).toBe('pending');
  });
});

describe('out-of-order arrival: older events never roll a delivery back', () => {
  const ID = 'reminder-24h@appointment/A100#0';
  const resched = (id: string, occurredAt: string, start: string) =>
    makeTrigger({ type: 'appointment.rescheduled', id, occurredAt, appointment: { start } });

  it('an older rescheduled arriving after a newer one does not move the delivery', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(route(resched('r2', '2025-06-03T10:00:00+02:00', '2025-06-20T10:00:00+02:00'), [reminder], NOW, PARIS));
    store.apply(route(resched('r1', '2025-06-02T10:00:00+02:00', '2025-06-15T10:00:00+02:00'), [reminder], NOW, PARIS));
    expect(store.log.map((l) => [l.change, l.reason])).toEqual([['added', undefined], ['replanned', undefined], ['unchanged', 'stale']]);
    expect(store.get(ID)?.delivery.dueAt).toBe('2025-06-19T18:00:00+02:00');
  });

  it('a booked older than the stored plan (late duplicate of the first booking) changes nothing', () => {
    const store = new Deliveries();
    store.apply(route(resched('r2', '2025-06-03T10:00:00+02:00', '2025-06-20T10:00:00+02:00'), [reminder], NOW, PARIS)); // nothing yet
    store.apply(route(booked({ id: 'b1', occurredAt: '2025-06-04T00:00:00+02:00' }), [reminder], NOW, PARIS));
    store.apply(route(booked({ id: 'b0', occurredAt: '2025-06-01T00:00:00+02:00', appointment: { start: '2025-06-05T10:00:00+02:00' } }), [reminder], NOW, PARIS));
    expect(store.log.at(-1)).toEqual({ id: ID, change: 'unchanged', reason: 'stale' });
    expect(store.get(ID)?.delivery.plannedAt).toBe('2025-06-09T18:00:00+02:00');
  });

  it('a cancel arriving before an older rescheduled: the delivery stays cancelled', () => {
    const store = new Deliveries();
    store.apply(route(booked(), [reminder], NOW, PARIS));
    store.apply(route(makeTrigger({ type: 'appointment.cancelled', id: 'c3', occurredAt: '2025-06-03T10:00:00+02:00' }), [reminder], NOW, PARIS));
    store.apply(route(resched('r2', '2025-06-02T10:00:00+02:00', '2025-06-20T10:00:00+02:00'), [reminder], NOW, PARIS));
    store.apply(route(booked({ id: 'b2', occurredAt: '2025-06-02T11:00:00+02:00' }), [reminder], NOW, PARIS));
    expect(store.log.map((l) => [l.change, l.reason])).toEqual([['added', undefined], ['cancelled', undefined], ['unchanged', 'cancelled'], ['unchanged', 'stale']]);
    expect(store.get(ID)?.status).toBe('cancelled');
  });

  it('a cancel older than the current plan does not cancel it; one at the same instant does', () => {
    const plan = route(booked({ occurredAt: '2025-06-03T10:00:00+02:00' }), [reminder], NOW, PARIS).deliveries[0];
    const state: DeliveryState = { status: 'pending', asOf: plan.asOf, delivery: plan };
    const order = (asOf: string) => ({ key: 'appointment.cancelled@appointment/A100', reason: 'trigger' as const, triggerId: 'c', triggerType: 'appointment.cancelled' as const, asOf });
    expect(applyToDelivery(state, { kind: 'cancel', order: order('2025-06-03T09:59:59+02:00') })).toMatchObject({ change: 'unchanged', reason: 'stale' });
    expect(applyToDelivery(state, { kind: 'cancel', order: order('2025-06-03T08:00:00Z') })).toMatchObject({ change: 'cancelled' });
    expect(applyToDelivery(state, { kind: 'cancel', order: { ...order('2025-06-04T00:00:00Z'), key: 'appointment/A999' } })).toMatchObject({ change: 'unchanged', reason: 'other_key' });
    expect(applyToDelivery({ ...state, status: 'finished' }, { kind: 'plan', delivery: { ...plan, asOf: '2025-06-05T00:00:00Z', plannedAt: 'x' } })).toMatchObject({ change: 'unchanged', reason: 'finished' });
  });
});

describe('encounter rules', () => {
  const [survey] = rules({
    id: 'post-discharge',
    on: ['encounter.finished'],
    purpose: 'care.followup',
    channel: 'sms',
    send: { output: 'sms-main', template: 'followup', fields: ['encounter.end'] },
    at: 'encounter.end + 1d at 10:00',
  });
  const finished = makeTrigger({ type: 'encounter.finished', appointment: null, encounter: { id: 'V42', status: 'finished', end: '2025-06-03T16:20:00+02:00' } });

  it('finished → a delivery about the encounter; discharge_cancelled cancels it', () => {
    const store = new Deliveries();
    const planned = route(finished, [survey], NOW, PARIS);
    expect(planned.deliveries.map((d) => [d.id, d.dueAt])).toEqual([['post-discharge@encounter/V42#0', '2025-06-04T10:00:00+02:00']]);
    store.apply(planned);
    const undo = makeTrigger({ type: 'encounter.discharge_cancelled', id: 'a13', occurredAt: '2025-06-03T18:00:00+02:00', appointment: null, encounter: { id: 'V42' } });
    const result = route(undo, [survey], NOW, PARIS);
    expect(result.cancels.map((c) => c.key)).toEqual(['encounter.discharge_cancelled@encounter/V42']);
    store.apply(result);
    expect(store.get('post-discharge@encounter/V42#0')?.status).toBe('cancelled');
  });
});

describe('variants and holdout', () => {
  const base = { ...rawReminder(), id: 'survey-1', purpose: 'survey', where: undefined };

  it('assignment is deterministic by patient and follows the weights (10,000 patients)', () => {
    const [rule] = rules({ ...base, variants: [{ id: 'short', weight: 3 }, { id: 'long', weight: 1, template: 'long', at: 'appointment.start - 2d at 18:00' }] });
    const counts: Record<string, number> = { short: 0, long: 0 };
    for (let i = 0; i < 10_000; i++) {
      const v = assignVariant(rule, `MRN${i}`).variant!.id;
      counts[v]++;
      if (i % 1000 === 0) expect(assignVariant(rule, `MRN${i}`).variant!.id).toBe(v);
    }
    // Expected 7,500 / 2,500; ±300 is about 7 standard deviations (σ ≈ 43).
    expect(Math.abs(counts.short - 7500)).toBeLessThan(300);
    // The variant's own template and timing are used.
    const pick = Array.from({ length: 50 }, (_, i) => `P${i}`).find((p) => assignVariant(rule, p).variant!.id === 'long')!;
    const d = route(booked({ patient: { id: pick } }), [rule], NOW, PARIS).deliveries[0];
    expect(d).toMatchObject({ variant: 'long', template: 'long', dueAt: '2025-06-08T18:00:00+02:00' });
  });

  it('assignment differs between rules (hash of rule id + patient id)', () => {
    const [r1] = rules({ ...base, id: 'split-a', variants: [{ id: 'x', weight: 1 }, { id: 'y', weight: 1 }] });
    const [r2] = rules({ ...base, id: 'split-b', variants: [{ id: 'x', weight: 1 }, { id: 'y', weight: 1 }] });
    let same = 0;
    for (let i = 0; i < 1000; i++) if (assignVariant(r1, `MRN${i}`).variant!.id === assignVariant(r2, `MRN${i}`).variant!.id) same++;
    expect(same).toBeGreaterThan(400);
    expect(same).toBeLessThan(600);
  });

  it('a holdout share gets no delivery and is reported as skipped: holdout', () => {
    const [rule] = rules({ ...base, holdout: 0.2 });
    let held = 0;
    for (let i = 0; i < 10_000; i++) if (assignVariant(rule, `MRN${i}`).holdout) held++;
    expect(Math.abs(held - 2000)).toBeLessThan(250);
    const patient = Array.from({ length: 100 }, (_, i) => `P${i}`).find((p) => assignVariant(rule, p).holdout)!;
    const result = route(booked({ patient: { id: patient } }), [rule], NOW, PARIS);
    expect(result.deliveries).toEqual([]);
    expect(result.skipped.map((s) => s.reason)).toEqual(['holdout']);
  });

  it('a holdout is recorded only where the message would have been planned (same appointments in both arms)', () => {
    const [rule] = rules({ ...base, holdout: 0.2 });
    const patient = Array.from({ length: 100 }, (_, i) => `P${i}`).find((p) => assignVariant(rule, p).holdout)!;
    // Routed only after its expiry (the appointment start): no message for anyone, so no holdout either.
    const late = route(booked({ patient: { id: patient }, appointment: { start: '2025-06-01T09:00:00+02:00' } }), [rule], NOW, PARIS);
    expect(late.skipped.map((s) => s.reason)).toEqual(['expired']);
  });

  it('holdout is refused for care.* rules', () => {
    expect(() => rules({ ...rawReminder(), holdout: 0.05 })).toThrow(/holdout is refused for care.logistics/);
  });
});

function rawReminder(): Record<string, unknown> {
  return {
    id: 'reminder-24h',
    on: ['appointment.booked'],
    where: { 'appointment.serviceType.code': { in: ['CARDIO', 'ONCO'] } },
    purpose: 'care.logistics',
    channel: 'sms',
    send: { output: 'sms-main', template: 'reminder', fields: ['patient.name.given', 'appointment.start'] },
    at: 'appointment.start - 1d at 18:00',
    expires: 'appointment.start',
  };
}


describe('route: quiet hours at planning', () => {
  const quiet = { start: '08:00', end: '21:00', channels: ['sms' as const] };
  const [late] = rules({
    id: 'late-reminder',
    on: ['appointment.booked'],
    purpose: 'care.logistics',
    channel: 'sms',
    send: { output: 'sms-main', template: 'reminder', noNameTemplate: 'reminder-noname', fields: ['appointment.start'] },
    at: 'appointment.start - 1d at 22:30',
    expires: 'appointment.start',
  });

  it('plans a care.logistics SMS due in quiet hours at 20:59 the same evening, keeping the due time it replaced', () => {
    const [d] = route(booked(), [late!], NOW, { ...PARIS, quietHours: quiet }).deliveries;
    expect(d).toMatchObject({ plannedAt: '2025-06-09T22:30:00+02:00', dueAt: '2025-06-09T20:59:00+02:00', quietHoursFrom: '2025-06-09T22:30:00+02:00', noNameTemplate: 'reminder-noname' });
    // Without quiet hours, or for a purpose that only moves later (at send time), nothing moves.
    expect(route(booked(), [late!], NOW, PARIS).deliveries[0]!.dueAt).toBe('2025-06-09T22:30:00+02:00');
    expect(route(booked(), [{ ...late!, purpose: 'care.followup' }], NOW, { ...PARIS, quietHours: quiet }).deliveries[0]).not.toHaveProperty('quietHoursFrom');
  });
});
