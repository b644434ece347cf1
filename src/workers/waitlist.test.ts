// The waitlist on an injected clock (docs/waitlist.md), with the real store and the real replies
// worker; the queue is a list of jobs run when the clock says they are due, the booking output a
// recorder. The race, the order of booking and cancelling, waves and expiry, and each filter.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { WaitlistConfig } from '../config/waitlist-schema.ts';
import { silentLogger } from '../log.ts';
import type { WriteBackOperation, WriteBackResult } from '../outputs/write-back.ts';
import type { QuietHours } from '../pipeline/policy.ts';
import { compileReply } from '../pipeline/reply.ts';
import type { Rule } from '../pipeline/rule.ts';
import type { NewJob } from '../queue/queue.ts';
import { testDelivery, testRecord, testTrigger } from '../store/conformance.ts';
import { OfferToldError, type Store, type StoredDelivery } from '../store/store.ts';
import { storeBackends, type StoreBackend } from '../../test/helpers/store-backends.ts';
import type { Trigger } from '../types.ts';
import { ReplyService } from './replies.ts';
import { WaitlistService, type WaitlistJob } from './waitlist.ts';

const MINUTE = 60_000;
const T0 = Date.parse('2030-03-10T10:00:00Z');
const SLOT_START = '2030-03-12T09:00:00Z';

const OFFER = compileReply(
  { answers: [{ action: 'accept', words: ['1', 'YES'] }, { action: 'decline', words: ['2'] }] },
  ['reply'],
  { on: ['appointment.waitlist_offered'], channel: 'sms' },
  { outputs: [], optOutWords: [] },
  [],
)!;

function config(over: Partial<WaitlistConfig> = {}): WaitlistConfig {
  return {
    book: 'ehr',
    on: ['appointment.cancelled', 'appointment.deleted', 'appointment.noshow'],
    sources: { laterAppointments: { optIn: 'all', patients: [] } },
    equivalents: { services: [], practitioners: [] },
    minNoticeMinutes: 60,
    waves: { size: 2, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 },
    maxOffersPerPatient: { count: 3, days: 7 },
    ...over,
  };
}

let store: Store;
let clock: number;
let jobs: Array<NewJob<WaitlistJob>>;
let ran: Set<string>;
let offered: Trigger[];
/** appointment.waitlist_taken made by the waitlist (the notice to the others when a yes claims the slot). */
let told: Trigger[];
/** What the search of the EHR's waitlist does before a wave (sources.searchFhir). */
let search: () => Promise<void>;
let answered: Trigger[];
let calls: WriteBackOperation[];
let results: WriteBackResult[];
let denyConsent: Set<string>;
let quietHours: QuietHours;
let waitlist: WaitlistService;
let replies: ReplyService;

function start(over: Partial<WaitlistConfig> = {}): void {
  waitlist = new WaitlistService({
    store,
    config: config(over),
    policy: { quietHours, sites: [], timezone: 'UTC' },
    queue: async (job) => jobs.push(job),
    output: (name) =>
      name === 'ehr'
        ? {
            writeBack: async (op) => {
              calls.push(op);
              return results.shift() ?? { outcome: 'applied', appointmentId: `made-${calls.length}` };
            },
          }
        : undefined,
    onTriggers: (t) => {
      offered.push(...t.filter((x) => x.type === 'appointment.waitlist_offered'));
      told.push(...t.filter((x) => x.type === 'appointment.waitlist_taken'));
    },
    smsAllowed: async (patientId) => !denyConsent.has(patientId),
    searchEhr: async () => search(),
    log: silentLogger,
    now: () => clock,
  });
  replies = new ReplyService({
    store,
    keywords: { inboundSms: async () => ({}) },
    policy: { keywords: { optOut: [], replies: { stop: 's', start: 's', help: 'h' } } },
    rules: () => [{ id: 'offer', reply: OFFER } as Rule],
    onAnswer: (t) => answered.push(...t),
    queueWriteBack: async () => undefined,
    output: () => undefined,
    waitlist,
    log: silentLogger,
    now: () => clock,
  });
}

let cleanup: () => Promise<void>;
async function openStore(backend: StoreBackend): Promise<void> {
  ({ store, cleanup } = await backend.open());
  clock = T0;
  jobs = [];
  ran = new Set();
  offered = [];
  told = [];
  search = async () => undefined;
  answered = [];
  calls = [];
  results = [];
  denyConsent = new Set();
  quietHours = { start: '08:00', end: '21:00', channels: [] };
}

const phoneOf = (patientId: string) => `+3361000${patientId.replace(/\D/g, '').padStart(4, '0')}`;

/** A trigger from the feed, committed and handed to the waitlist as the ingest does. */
async function feed(trigger: Trigger): Promise<void> {
  await store.commitInbound(testRecord({ controlId: `C-${trigger.id}`, triggers: [trigger] }));
  await waitlist.onCommitted([trigger]);
}

/** A later booked appointment of a patient (service CHK with DR-22 unless told). */
function later(id: string, patientId: string, startIso: string, o: { service?: string; practitioner?: string; mobile?: boolean } = {}): Promise<void> {
  return feed(
    testTrigger({
      id: `booked-${id}`,
      occurredAt: new Date(clock).toISOString(),
      patient: { ...testTrigger({ id: 'x' }).patient, id: patientId, identifiers: [{ value: patientId, type: 'MR' }], telecom: o.mobile === false ? [] : [{ system: 'phone', use: 'mobile', value: phoneOf(patientId) }] },
      appointment: { id, status: 'booked', start: startIso, serviceType: { code: o.service ?? 'CHK' }, practitioner: { id: o.practitioner ?? 'DR-22' } },
    }),
  );
}

/** An appointment on the EHR's waitlist (status waitlist), service CHK, any practitioner unless told. */
function entry(id: string, patientId: string, o: { periods?: Array<{ start?: string; end?: string }>; practitioner?: string; status?: string; type?: Trigger['type'] } = {}): Promise<void> {
  return feed(
    testTrigger({
      id: `${o.status ?? 'waitlist'}-${id}-${clock}`,
      type: o.type ?? 'appointment.booked',
      occurredAt: new Date(clock).toISOString(),
      patient: { ...testTrigger({ id: 'x' }).patient, id: patientId, identifiers: [{ value: patientId, type: 'MR' }], telecom: [{ system: 'phone', use: 'mobile', value: phoneOf(patientId) }] },
      appointment: {
        id,
        status: o.status ?? 'waitlist',
        serviceType: { code: 'CHK' },
        ...(o.practitioner !== undefined ? { practitioner: { id: o.practitioner } } : {}),
        ...(o.periods !== undefined ? { requestedPeriod: o.periods } : {}),
      },
    }),
  );
}

/** The appointment that frees the slot: booked, then cancelled. */
async function free(o: { start?: string; service?: string } = {}): Promise<void> {
  const appointment = { id: 'FREE-1', status: 'cancelled', start: o.start ?? SLOT_START, durationMinutes: 30, serviceType: { code: o.service ?? 'CHK' }, practitioner: { id: 'DR-22' } };
  await feed(testTrigger({ id: 'cancel-FREE-1', type: 'appointment.cancelled', occurredAt: new Date(clock).toISOString(), patient: { ...testTrigger({ id: 'x' }).patient, id: 'P-FREED' }, appointment }));
}

/** Runs the queued jobs that are due (repeatedly: a job may queue another due one). */
async function runDue(): Promise<void> {
  for (;;) {
    const due = jobs.filter((j) => !ran.has(j.id) && Date.parse(String(j.runAt instanceof Date ? j.runAt.toISOString() : j.runAt)) <= clock);
    if (due.length === 0) return;
    for (const job of due) {
      ran.add(job.id);
      await waitlist.run({ id: job.id, data: job.data, attempt: 1, signal: new AbortController().signal });
    }
  }
}

/** The offers of the last wave go out: a prompt opens for each, as the deliver worker's send does. */
async function send(triggers: readonly Trigger[]): Promise<void> {
  for (const t of triggers) {
    const delivery = { ...testDelivery({ ruleId: 'offer', appointmentId: t.appointment!.id, triggerType: 'appointment.waitlist_offered' }), patientId: t.patient!.id, triggerId: t.id, to: phoneOf(t.patient!.id) };
    const at = new Date(clock).toISOString();
    await store.saveRouting(t.id, [{ delivery, status: 'pending', asOf: t.occurredAt, generation: 1, updatedAt: at }], at);
    await store.finishDelivery(delivery.id, 1, { status: 'sent', at });
    const stored: StoredDelivery = { delivery, status: 'sent', asOf: t.occurredAt, generation: 1, createdAt: '', updatedAt: '' };
    await replies.sent(stored, phoneOf(t.patient!.id), clock);
  }
}

let sid = 0;
function answer(patientId: string, body: string) {
  const messageId = `SM${String(++sid).padStart(32, '0')}`;
  return replies.inboundSms({ output: 'sms', from: phoneOf(patientId), body, messageId, raw: Buffer.from(`Body=${body}&MessageSid=${messageId}`) });
}

const offeredTo = () => offered.map((t) => t.patient!.id);

/** One patient with a later appointment, the slot freed, the offer sent and answered with `body`. */
async function oneOffer(body: string): Promise<void> {
  start();
  await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
  await free();
  await runDue();
  await send(offered);
  await answer('P-1', body);
}

// Every check on both store backends: the claim is the store's (a conditional update in the answer's commit).
for (const backend of storeBackends) {
  describe.skipIf(backend.skipped)(backend.name, () => {
    beforeEach(() => openStore(backend));
    afterEach(() => cleanup());

    describe('the first yes claims the slot', () => {
      it('two yeses within a millisecond: exactly one claims and one booking is made; the other is told the slot is taken', async () => {
        start();
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-10T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
        await send(offered);

        // Both answers at the same instant, concurrently (two numbers: nothing orders them but the store).
        await Promise.all([answer('P-1', '1'), runDue(), answer('P-2', 'YES')]);
        await runDue();
        // The other is told once: by the claim's notice, or by the answer to their yes, whichever committed first.
        const accepted = answered.filter((t) => t.type === 'appointment.waitlist_accepted');
        expect(accepted).toHaveLength(1);
        const loser = accepted[0]!.patient!.id === 'P-1' ? 'P-2' : 'P-1';
        expect([...answered, ...told].filter((t) => t.type === 'appointment.waitlist_taken').map((t) => t.patient!.id)).toEqual([loser]);
        await runDue();
        expect(calls.filter((c) => c.kind === 'book')).toHaveLength(1);
        const winner = answered.find((t) => t.type === 'appointment.waitlist_accepted')!.patient!.id;
        expect(calls.map((c) => [c.kind, c.patient.id])).toEqual([
          ['book', winner],
          ['cancel', winner],
        ]);
        expect((await store.getWaitlistSlot(offered[0]!.waitlist!.slot))?.state).toBe('booked');
      });
    });

    describe('the others are told when a yes claims the slot', () => {
      it('every other patient holding an open offer is told once, and their offer closes; a yes of theirs afterwards tells them nothing again', async () => {
        start({ waves: { size: 3, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await later('L-3', 'P-3', '2030-04-18T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-1', 'P-2', 'P-3']);
        // P-3's offer SMS has not gone yet (held back): they hold nothing to be told about.
        await send(offered.slice(0, 2));
        const [o1, o2, o3] = offered.map((t) => t.appointment!.id);

        clock += MINUTE;
        await answer('P-1', '1');
        await runDue();
        expect(answered.map((t) => [t.type, t.patient!.id])).toEqual([['appointment.waitlist_accepted', 'P-1']]);
        expect(told.map((t) => t.patient!.id)).toEqual(['P-2']);
        expect(told[0]).toMatchObject({ appointment: { id: o2 }, waitlist: { offer: o2, slot: offered[0]!.waitlist!.slot }, source: { format: 'waitlist', messageType: 'WAITLIST^TAKEN' } });
        expect(await store.getWaitlistOffer(o2!)).toMatchObject({ state: 'taken' });
        expect(await store.getWaitlistOffer(o3!)).toMatchObject({ state: 'offered' });
        // P-3's held-back offer will not go now (deliver worker), and is told nothing.
        expect(await waitlist.offerClosed(o3!)).toBe('offer_closed');
        expect(await waitlist.offerClosed(o1!)).toBe('offer_closed');

        // P-2 answers yes after the notice: the SMS is kept (the prompt answered), with no second notice.
        await answer('P-2', 'YES');
        expect(answered.map((t) => t.type)).toEqual(['appointment.waitlist_accepted']);
        expect(await store.openReplyPrompts({ output: 'sms', address: phoneOf('P-2'), at: new Date(clock).toISOString() })).toEqual([]);
        // Told again by nothing: a second notice run finds no open offer.
        expect(await waitlist.tellOthers(offered[0]!.waitlist!.slot)).toEqual([]);
        expect(told).toHaveLength(1);
      });

      it('an offer that expired is not told: a yes of that patient later is, once', async () => {
        start({ waves: { size: 1, everyMinutes: 15, expiresMinutes: 10, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        await send(offered);
        clock = T0 + 15 * MINUTE;
        await runDue();
        await send(offered.slice(1));
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
        await answer('P-2', '1');
        await runDue();
        expect(told).toEqual([]);
        await answer('P-1', '1');
        expect(answered.map((t) => [t.type, t.patient!.id])).toEqual([
          ['appointment.waitlist_accepted', 'P-2'],
          ['appointment.waitlist_taken', 'P-1'],
        ]);
        expect(await store.getWaitlistOffer(offered[0]!.appointment!.id)).toMatchObject({ state: 'taken' });
      });
    });

    describe('an offer held back', () => {
      it('may go while it can be taken; not after it expired (offer_expired), nor once its slot is claimed (offer_closed)', async () => {
        start({ waves: { size: 2, everyMinutes: 60, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        const [o1, o2] = offered.map((t) => t.appointment!.id);
        expect(await waitlist.offerClosed(o1!)).toBeUndefined();
        expect(await waitlist.offerClosed('wl-unknown')).toBeUndefined();
        await send(offered.slice(0, 1));
        await answer('P-1', '1');
        expect(await waitlist.offerClosed(o2!)).toBe('offer_closed');
        clock = T0 + 30 * MINUTE;
        expect(await waitlist.offerClosed(o2!)).toBe('offer_expired');
      });
    });

    describe('the later appointment is cancelled only after the booking succeeded', () => {
      it('book applied → then cancel with pat-swl; nothing is cancelled before', async () => {
        await oneOffer('1');
        // Claimed, booking queued: nothing written yet, no cancellation queued.
        expect(calls).toEqual([]);
        expect(jobs.map((j) => j.data.kind)).not.toContain('cancel');
        await runDue();
        expect(calls.map((c) => c.kind)).toEqual(['book', 'cancel']);
        expect(calls[0]).toMatchObject({ kind: 'book', slot: { start: SLOT_START, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' } }, patient: { id: 'P-1' } });
        expect(calls[1]).toMatchObject({ kind: 'cancel', appointment: { id: 'L-1' }, reason: { code: 'pat-swl' } });
        const offer = await store.getWaitlistOffer(offered[0]!.appointment!.id);
        expect(offer).toMatchObject({ state: 'booked', bookedAs: 'made-1', currentCancelled: true, daysGained: 39 });
      });

      it('book denied → no cancellation at all, a staff task, and the slot offered on to the next patient', async () => {
        start({ waves: { size: 1, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-10T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
        await send(offered);
        results.push({ outcome: 'denied', code: 'slot_unavailable' });
        await answer('P-1', '1');
        await runDue();
        expect(calls.map((c) => c.kind)).toEqual(['book']);
        expect(await store.listStaffTasks({})).toEqual([expect.objectContaining({ kind: 'waitlist_booking_failed', patientId: 'P-1', appointmentId: 'FREE-1', code: 'slot_unavailable' })]);
        // The claim given back: the next wave went out at once, to the next patient.
        expect((await store.getWaitlistSlot(offered[0]!.waitlist!.slot))?.state).toBe('open');
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
        expect(await store.getWaitlistOffer(offered[0]!.appointment!.id)).toMatchObject({ state: 'failed' });
      });
    });

    describe('start-up repair', () => {
      it('a crash between the yes and its booking job: the repair books it once, then cancels the later appointment', async () => {
        await oneOffer('1');
        // The booking job was lost with the process: the slot is claimed and nothing was booked.
        jobs = jobs.filter((j) => j.data.kind !== 'book');
        await runDue();
        expect(calls).toEqual([]);
        await waitlist.repair();
        await waitlist.repair();
        expect(jobs.filter((j) => j.data.kind === 'book').map((j) => j.id)).toEqual([`wl-book~${offered[0]!.appointment!.id}`, `wl-book~${offered[0]!.appointment!.id}`]);
        await runDue();
        expect(calls.map((c) => c.kind)).toEqual(['book', 'cancel']);
      });
    });

    describe('start-up repair after a crash, each state', () => {
      it('an open slot whose first wave job was lost: queued again under its id, offered once', async () => {
        start();
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await free();
        const first = jobs.map((j) => j.id);
        jobs = [];
        await waitlist.repair();
        expect(jobs.map((j) => j.id)).toEqual(first);
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
      });

      it('a slot given back after a failed booking whose next wave was lost: the repair queues that wave, the next patient is offered', async () => {
        start({ waves: { size: 1, everyMinutes: 60, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        await send(offered);
        results.push({ outcome: 'denied', code: 'slot_unavailable' });
        await answer('P-1', '1');
        // The booking fails; the process dies after giving the claim back, before the wave it brings forward was queued.
        const book = jobs.find((j) => j.data.kind === 'book')!;
        ran.add(book.id);
        const before = jobs.length;
        await waitlist.run({ id: book.id, data: book.data, attempt: 1, signal: new AbortController().signal });
        const lost = jobs.splice(before);
        expect(lost.map((j) => j.data.kind)).toEqual(['wave']);
        expect((await store.getWaitlistSlot(offered[0]!.waitlist!.slot))?.state).toBe('open');
        await waitlist.repair();
        expect(jobs.slice(before).map((j) => j.id)).toEqual(lost.map((j) => j.id));
        await runDue();
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
      });

      it('a claim committed but the process died before its booking and notice: the repair books it and tells the others, once', async () => {
        start();
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        await send(offered);
        const [o1, o2] = offered.map((t) => t.appointment!.id);
        // P-1's yes committed (the claim), and nothing after it ran.
        await store.commitInbound(testRecord({ controlId: 'SM-crash', triggers: [], waitlistClaim: { slotId: offered[0]!.waitlist!.slot, offerId: o1! } }));
        await waitlist.repair();
        await waitlist.repair();
        await runDue();
        expect(told.map((t) => t.waitlist!.offer)).toEqual([o2]);
        expect(calls.map((c) => [c.kind, c.patient.id])).toEqual([
          ['book', 'P-1'],
          ['cancel', 'P-1'],
        ]);
        await waitlist.repair();
        expect(told).toHaveLength(1);
      });

      it('a booked slot whose cancellation job was lost: the repair queues it, the later appointment is cancelled once', async () => {
        await oneOffer('1');
        const book = jobs.find((j) => j.data.kind === 'book')!;
        ran.add(book.id);
        await waitlist.run({ id: book.id, data: book.data, attempt: 1, signal: new AbortController().signal });
        jobs = jobs.filter((j) => j.data.kind !== 'cancel');
        expect(calls.map((c) => c.kind)).toEqual(['book']);
        await waitlist.repair();
        await runDue();
        await waitlist.repair();
        await runDue();
        expect(calls.map((c) => c.kind)).toEqual(['book', 'cancel']);
      });
    });

    describe('the store', () => {
      it('a commit telling offers closes each in the same transaction; one no longer offered rejects it whole (OfferToldError)', async () => {
        const offer = (id: string) => ({ id, slotId: 'S@2030-03-12T09:00:00.000Z', patientId: `P-${id}`, wave: 1, state: 'offered' as const, offeredAt: new Date(T0).toISOString(), expiresAt: new Date(T0 + 30 * MINUTE).toISOString() });
        await store.addWaitlistOffers([offer('wl-a'), offer('wl-b')]);
        await store.commitInbound(testRecord({ controlId: 'told-1', triggers: [], waitlistTold: ['wl-a'] }));
        expect(await store.getWaitlistOffer('wl-a')).toMatchObject({ state: 'taken' });
        await expect(store.commitInbound(testRecord({ controlId: 'told-2', triggers: [], waitlistTold: ['wl-b', 'wl-a'] }))).rejects.toThrow(OfferToldError);
        expect(await store.getWaitlistOffer('wl-b')).toMatchObject({ state: 'offered' });
        expect(await store.findMessage('EPIC^GHH', 'told-1')).toBeDefined();
        expect(await store.findMessage('EPIC^GHH', 'told-2')).toBeUndefined();
      });

      it('a slot a yes claimed is not set back to open or closed by a wave that read it open', async () => {
        start();
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await free();
        await runDue();
        const slotId = offered[0]!.waitlist!.slot;
        await store.commitInbound(testRecord({ controlId: 'SM-yes', triggers: [], waitlistClaim: { slotId, offerId: offered[0]!.appointment!.id } }));
        await store.setWaitlistSlot(slotId, 'open', { waves: 2 });
        await store.setWaitlistSlot(slotId, 'closed', { closedReason: 'stop_reached' });
        expect(await store.getWaitlistSlot(slotId)).toMatchObject({ state: 'claimed', waves: 1, claimedBy: offered[0]!.appointment!.id });
        await store.setWaitlistSlot(slotId, 'booked', { bookedAs: 'made-1' });
        expect(await store.getWaitlistSlot(slotId)).toMatchObject({ state: 'booked', bookedAs: 'made-1' });
      });
    });

    describe('a wave run again', () => {
      it('after a crash between its commit and the slot noting it: no second offer, the next wave as planned', async () => {
        start({ waves: { size: 1, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        const slotId = offered[0]!.waitlist!.slot;
        await store.setWaitlistSlot(slotId, 'open', { waves: 0 });
        expect(await waitlist.wave(slotId)).toEqual([]);
        expect(offeredTo()).toEqual(['P-1']);
        expect((await store.getWaitlistSlot(slotId))?.waves).toBe(1);
        clock = T0 + 15 * MINUTE;
        await runDue();
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
        expect(offered[1]!.waitlist!.wave).toBe(2);
      });
    });

    describe('waves on the clock', () => {
      it('k per wave, the next after the interval, offers expire, none after the stop', async () => {
        start({ waves: { size: 1, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 } });
        for (const [i, day] of ['20', '19', '18', '17', '16'].entries()) await later(`L-${i + 1}`, `P-${i + 1}`, `2030-04-${day}T09:00:00Z`);
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
        expect(offered[0]!.waitlist).toMatchObject({ wave: 1, expiresAt: new Date(T0 + 30 * MINUTE).toISOString(), current: { id: 'L-1' } });
        await send(offered);

        // A minute before the interval: nothing more.
        clock = T0 + 14 * MINUTE;
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
        clock = T0 + 15 * MINUTE;
        await runDue();
        expect(offeredTo()).toEqual(['P-1', 'P-2']);
        expect(offered[1]!.waitlist!.wave).toBe(2);

        // P-1's yes after their offer expired claims nothing: told it is gone.
        clock = T0 + 30 * MINUTE;
        await answer('P-1', '1');
        expect(answered.map((t) => t.type)).toEqual(['appointment.waitlist_taken']);
        expect((await store.getWaitlistSlot(offered[0]!.waitlist!.slot))?.state).toBe('open');

        // The stop (slot start − 120 min): the slot closes, no offer after it.
        const stop = Date.parse(SLOT_START) - 120 * MINUTE;
        clock = stop - 1;
        await runDue();
        const before = offered.length;
        expect(offered.at(-1)!.waitlist!.expiresAt <= new Date(stop).toISOString()).toBe(true);
        clock = stop;
        await runDue();
        expect(offered).toHaveLength(before);
        expect((await store.getWaitlistSlot(offered[0]!.waitlist!.slot))).toMatchObject({ state: 'closed', closedReason: 'stop_reached' });
      });
    });

    describe('filters', () => {
      it('same service and practitioner, or a configured equivalent', async () => {
        start({ equivalents: { services: [['CHK', 'CHK-LONG']], practitioners: [] } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z', { service: 'CHK-LONG' });
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z', { service: 'DERM' });
        await later('L-3', 'P-3', '2030-04-18T09:00:00Z', { practitioner: 'DR-99' });
        await later('L-4', 'P-4', '2030-03-11T09:00:00Z'); // earlier than the slot: nothing to gain
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
      });

      it('slot.freed (time freed on a schedule, no patient) opens a slot when waitlist.on lists it; booked as that slot', async () => {
        const freed = (id: string) =>
          feed({
            id: `freed-${id}`,
            type: 'slot.freed',
            occurredAt: new Date(clock).toISOString(),
            receivedAt: new Date(clock).toISOString(),
            source: { format: 'hl7v2', sender: 'EPIC^GHH', messageType: 'SIU^S24', messageId: `S24-${id}` },
            slot: { id, status: 'free', start: SLOT_START, durationMinutes: 30, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' } },
          });
        start();
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await freed('SLOT-7');
        await runDue();
        expect(offered).toEqual([]);
        start({ on: ['appointment.cancelled', 'slot.freed'] });
        await freed('SLOT-8');
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
        expect(offered[0]).toMatchObject({ appointment: { start: SLOT_START, serviceType: { code: 'CHK' } }, waitlist: { slot: 'SLOT-8@2030-03-12T09:00:00.000Z' } });
        await send(offered);
        await answer('P-1', '1');
        await runDue();
        expect(calls.map((c) => [c.kind, c.appointment.id])).toEqual([
          ['book', 'SLOT-8'],
          ['cancel', 'L-1'],
        ]);
        expect(calls[0]).not.toHaveProperty('slot.fhirSlot');
      });

      it('a FHIR Slot gone free is booked naming that Slot (the SIU^S24 time names none)', async () => {
        start({ on: ['appointment.cancelled', 'slot.freed'] });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await feed({
          id: 'freed-fhir',
          type: 'slot.freed',
          occurredAt: new Date(clock).toISOString(),
          receivedAt: new Date(clock).toISOString(),
          source: { format: 'fhir', sender: 'ehr', messageType: 'Slot', messageId: 'Slot/SLOT-9/_history/2' },
          slot: { id: 'SLOT-9', status: 'free', start: SLOT_START, durationMinutes: 30, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' } },
        });
        await runDue();
        await send(offered);
        await answer('P-1', '1');
        await runDue();
        expect(calls.map((c) => [c.kind, c.appointment.id, c.kind === 'book' ? c.slot.fhirSlot : undefined])).toEqual([
          ['book', 'SLOT-9', 'SLOT-9'],
          ['cancel', 'L-1', undefined],
        ]);
      });

      it('minimum notice: a slot starting too soon is not offered', async () => {
        start({ minNoticeMinutes: 24 * 60 });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await free({ start: new Date(T0 + 23 * 60 * MINUTE).toISOString() });
        await runDue();
        expect(offered).toEqual([]);
        expect(jobs).toEqual([]);
      });

      it('consent: a patient whose ledger says no to care texts is not offered', async () => {
        start();
        denyConsent.add('P-1');
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-2']);
      });

      it('quiet hours: nobody is offered at 22:00 in their zone; the next wave after 08:00 is', async () => {
        quietHours = { start: '08:00', end: '21:00', channels: ['sms'] };
        clock = Date.parse('2030-03-10T22:00:00Z');
        start({ waves: { size: 2, everyMinutes: 600, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await free();
        await runDue();
        expect(offered).toEqual([]);
        clock = Date.parse('2030-03-11T08:00:00Z');
        await runDue();
        expect(offeredTo()).toEqual(['P-1']);
      });

      it('offers per patient: at most `count` in `days`', async () => {
        start({ maxOffersPerPatient: { count: 1, days: 7 } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        // P-1 had an offer of another slot yesterday.
        await store.addWaitlistOffers([{ id: 'wl-old', slotId: 'OTHER@2030-03-11T09:00:00.000Z', patientId: 'P-1', wave: 1, state: 'offered', offeredAt: new Date(T0 - 86_400_000).toISOString(), expiresAt: new Date(T0).toISOString() }]);
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-2']);
      });

      it('opt-in: only the listed patients; and never one without a mobile number', async () => {
        start({ sources: { laterAppointments: { optIn: 'listed', patients: ['P-2', 'P-3'] } } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z', { mobile: false });
        await later('L-3', 'P-3', '2030-04-18T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-3']);
      });

      it('a configured list: its entries for this service, practitioner and requested period come first; booking one cancels nothing', async () => {
        const entry = (patient: string, over: object = {}) => ({ patient, phone: phoneOf(patient), services: ['CHK-LONG'], ...over });
        start({
          equivalents: { services: [['CHK', 'CHK-LONG']], practitioners: [] },
          waves: { size: 2, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 },
          sources: {
            list: [
              entry('P-7', { practitioners: ['DR-99'] }), // another practitioner
              entry('P-8', { from: '2030-03-13T00:00:00Z' }), // wants later than the slot
              entry('P-9', { from: '2030-03-11T00:00:00Z', until: '2030-03-14T00:00:00Z', language: 'fr' }),
            ],
            laterAppointments: { optIn: 'all', patients: [] },
          },
        });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-9', 'P-1']);
        expect(offered[0]).toMatchObject({ patient: { id: 'P-9', language: 'fr', telecom: [{ system: 'phone', use: 'mobile', value: phoneOf('P-9') }] } });
        expect(offered[0]!.waitlist!.current).toBeUndefined();
        await send(offered);
        await answer('P-9', '1');
        await runDue();
        expect(calls.map((c) => [c.kind, c.patient.id])).toEqual([['book', 'P-9']]);
      });

      it("the EHR's waitlist: entries whose requested period holds the slot come after the list and before later appointments, longest waiting first", async () => {
        start({ waves: { size: 4, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 }, sources: { list: [{ patient: 'P-9', phone: phoneOf('P-9'), services: ['CHK'] }], laterAppointments: { optIn: 'all', patients: [] } } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        await entry('W-7', 'P-7', { periods: [{ start: '2030-03-11T00:00:00Z', end: '2030-03-15T00:00:00Z' }] });
        clock += MINUTE;
        await entry('W-5', 'P-5'); // no requested period: any time
        await entry('W-6', 'P-6', { periods: [{ start: '2030-03-12T08:00:00Z', end: '2030-03-12T09:10:00Z' }] }); // ends before the 30-minute slot does
        await entry('W-4', 'P-4', { practitioner: 'DR-99' }); // waits for another practitioner
        clock += MINUTE;
        await entry('W-3', 'P-3', { periods: [{ start: '2030-03-01T00:00:00Z', end: '2030-03-05T00:00:00Z' }, { start: '2030-03-12T00:00:00Z' }] });
        clock = T0;
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-9', 'P-7', 'P-5', 'P-3']);
        expect(offered[1]!.waitlist!.current).toEqual({ id: 'W-7' });
        expect(offered[1]!.waitlist!.daysGained).toBeUndefined();
      });

      it('booking a waitlist entry cancels the waitlist appointment (pat-swl) after the booking, and the entry leaves the list', async () => {
        start({ waves: { size: 1, everyMinutes: 15, expiresMinutes: 30, stopMinutesBefore: 120 } });
        await entry('W-5', 'P-5');
        await free();
        await runDue();
        await send(offered);
        await answer('P-5', '1');
        await runDue();
        expect(calls.map((c) => [c.kind, c.patient.id, c.appointment.id])).toEqual([
          ['book', 'P-5', 'FREE-1'],
          ['cancel', 'P-5', 'W-5'],
        ]);
        expect(calls[1]).toMatchObject({ reason: { code: 'pat-swl' } });
        expect(await store.waitlistEntries({ services: ['CHK'], practitioners: ['DR-22'], now: new Date(clock).toISOString(), limit: 10 })).toEqual([]);
      });

      it('an entry leaves the list when the EHR books or cancels it, or once its requested periods are over; ehrWaitlist: false uses none', async () => {
        start();
        const now = () => new Date(clock).toISOString();
        const listed = async () => (await store.waitlistEntries({ services: ['CHK'], practitioners: ['DR-22'], now: now(), limit: 10 })).map((e) => e.id);
        await entry('W-1', 'P-1');
        await entry('W-2', 'P-2');
        await entry('W-3', 'P-3', { periods: [{ end: '2030-03-11T00:00:00Z' }] });
        await entry('W-4', 'P-4', { practitioner: 'DR-22' });
        await entry('W-5', 'P-5');
        expect(await listed()).toEqual(['W-1', 'W-2', 'W-3', 'W-4', 'W-5']);
        // Booked by the EHR: with a time it becomes a later appointment (the same write ends the entry), without one it just ends.
        await later('W-5', 'P-5', '2030-04-01T09:00:00Z');
        await entry('W-1', 'P-1', { status: 'booked' });
        await entry('W-2', 'P-2', { status: 'cancelled', type: 'appointment.cancelled' });
        expect(await listed()).toEqual(['W-3', 'W-4']);
        clock = Date.parse('2030-03-11T00:00:00Z');
        expect(await listed()).toEqual(['W-4']);
        // Not used at all when switched off.
        start({ sources: { ehrWaitlist: false, laterAppointments: { optIn: 'all', patients: [] } } });
        await entry('W-8', 'P-8');
        expect(await listed()).toEqual(['W-4']);
        await free({ start: '2030-03-14T09:00:00Z' });
        await runDue();
        // W-5's later appointment is a candidate; no entry is (W-4 among them).
        expect(offeredTo()).toEqual(['P-5']);
      });

      it('sources.searchFhir: the EHR is searched before each wave, and what it found is offered in that wave; a failed search leaves the wave to what is known', async () => {
        start({ sources: { searchFhir: 'ehr-fhir', laterAppointments: { optIn: 'all', patients: [] } } });
        await later('L-1', 'P-1', '2030-04-20T09:00:00Z');
        // The search finds an entry the feed never told (its ingest hands the trigger to the waitlist, as onCommitted does).
        search = async () => {
          search = async () => {
            throw new Error('ECONNREFUSED');
          };
          void waitlist.onCommitted([]);
          await entry('W-9', 'P-9');
        };
        await free();
        await runDue();
        expect(offeredTo()).toEqual(['P-9', 'P-1']);
        // The next wave: the search fails, the wave goes out with what is known.
        await later('L-2', 'P-2', '2030-04-19T09:00:00Z');
        clock = T0 + 15 * MINUTE;
        await runDue();
        expect(offeredTo()).toEqual(['P-9', 'P-1', 'P-2']);
      });

      it('a waitlist entry noted again keeps its place (the time it was first noted)', async () => {
        start();
        await entry('W-1', 'P-1');
        clock += MINUTE;
        await entry('W-2', 'P-2');
        clock += MINUTE;
        await entry('W-1', 'P-1', { periods: [{ start: '2030-03-01T00:00:00Z' }] });
        const entries = await store.waitlistEntries({ services: ['CHK'], practitioners: ['DR-22'], now: new Date(clock).toISOString(), limit: 10 });
        expect(entries.map((e) => [e.id, e.notedAt, e.periods])).toEqual([
          ['W-1', new Date(T0).toISOString(), [{ start: '2030-03-01T00:00:00Z' }]],
          ['W-2', new Date(T0 + MINUTE).toISOString(), []],
        ]);
      });

      it('a declined offer leaves the appointment as it is', async () => {
        await oneOffer('2');
        await runDue();
        expect(answered.map((t) => t.type)).toEqual(['appointment.waitlist_declined']);
        expect(calls).toEqual([]);
        expect(await store.getWaitlistOffer(offered[0]!.appointment!.id)).toMatchObject({ state: 'declined' });
      });
    });
  });
}
