// Moving a store (docs/scale-out.md "Moving a store"): an embedded store with every kind of
// record exported to a file, imported into PostgreSQL and exported again gives the same file;
// the imported store answers as the original did and goes on from there (dedupe keys, ids).
// A damaged file imports nothing.
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hl7Bytes, testDelivery, testRecord, testTrigger } from '../src/store/conformance.ts';
import { readDump, writeDump, type DumpSource } from '../src/store/dump.ts';
import { postgresDumpSource, postgresDumpTarget } from '../src/store/postgres-dump.ts';
import { PostgresStore } from '../src/store/postgres.ts';
import { sqliteDumpSource } from '../src/store/sqlite-dump.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { Store } from '../src/store/store.ts';
import { postgresSkipped } from './helpers/postgres.ts';
import { testDatabase } from './helpers/store-backends.ts';
import { truncateAll } from './helpers/postgres.ts';

const AT = '2025-06-01T10:00:00+02:00';

/** A store holding every kind of record the dump carries, more messages than a page. */
async function fill(store: Store): Promise<void> {
  // Pages of messages (the export reads 500 rows at a time).
  await Promise.all(Array.from({ length: 1100 }, (_, i) => store.commitInbound(testRecord({ controlId: `BULK-${i}`, receivedAt: `2024-01-01T09:${String(i % 60).padStart(2, '0')}:00Z` }))));
  const booked = testTrigger({ id: 'T1', patient: { ...testTrigger({ id: 'x' }).patient, telecom: [{ system: 'phone', use: 'mobile', value: '+33 6 12 34 56 78' }] } });
  const m1 = await store.commitInbound(
    testRecord({
      controlId: 'C1',
      triggers: [booked, testTrigger({ id: 'T1b', type: 'patient.merged', appointment: undefined, patient: { ...booked.patient, id: 'MRN-NEW', mergedFrom: [{ value: 'MRN-1' }] } })],
      subjectStates: [{ kind: 'appointment', id: 'APT-1', patientId: 'MRN-1', status: 'booked', start: '2024-01-02T10:00:00+01:00', asOf: '2024-01-01T09:30:00Z', data: { sensitivity: ['restricted'] } }],
      cursors: { 'poll:ehr': '2024-01-01T09:30:00Z' },
    }),
  );
  // A quarantined copy, released; a rejected message, reprocessed; a pending FHIR event.
  const copy = await store.commitInbound(testRecord({ controlId: 'C1', raw: hl7Bytes('C1', 'B') }));
  await store.commitInbound(testRecord({ controlId: 'C1', raw: hl7Bytes('C1', 'B'), attemptOf: { kind: 'release', messageId: copy.message.id, actor: 'oncall' } }));
  const rejected = await store.commitInbound(testRecord({ controlId: 'R1', status: 'rejected', reason: 'missing_field', ackCode: 'AR', patientId: 'MRN-9', rawBytes: 99999 }));
  await store.commitInbound(testRecord({ controlId: 'R1', triggers: [testTrigger({ id: 'T-R1' })], attemptOf: { kind: 'reprocess', messageId: rejected.message.id, actor: 'oncall' } }));
  await store.commitInbound(testRecord({ controlId: 'N1', format: 'fhir', ackCode: '202', ack: '202', reason: 'trigger_pending', raw: Buffer.from('{"event":1}') }));
  await store.commitInbound(testRecord({ controlId: '', status: 'rejected', reason: 'missing_control_id', raw: Buffer.from([0, 1, 2, 0xff]) }));
  await store.appendAudit({ at: AT, actor: 'oncall', action: 'message.reprocess', target: 'message/999', outcome: 'refused:unknown_message' });

  // Deliveries: pending, cancelled, sent through the outbox (kept once), sent with its own text,
  // one with a key no column finds; routing explanations.
  const pending = testDelivery({ triggerId: 'T1' });
  const withKey = testDelivery({ appointmentId: 'APT-2', triggerId: 'T1' });
  withKey.cancelKeys = [...withKey.cancelKeys, 'campaign/spring'];
  const viaOutbox = testDelivery({ appointmentId: 'APT-3', triggerId: 'T1' });
  const own = testDelivery({ appointmentId: 'APT-4', triggerId: 'T1', ruleId: 'confirm' });
  const w = (delivery: typeof pending, status: 'pending' | 'cancelled' = 'pending') => ({ delivery, status, asOf: delivery.asOf, generation: 2, updatedAt: AT, subjectStart: '2024-01-02T10:00:00+01:00', cause: { triggerId: 'T1', change: 'added' as const } });
  await store.saveRouting(['T1', 'T1b'], [w(pending), w(withKey, 'cancelled'), w(viaOutbox), w(own)], AT, {
    explanations: [{ triggerId: 'T1', routedAt: AT, rules: [{ rule: 'reminder', outcome: 'planned', deliveryId: pending.id }, { rule: 'week', outcome: 'skipped', reason: 'condition_false', condition: 'x gte y' }] }],
  });
  const sent = { language: 'en', to: '+15550100', text: 'Hello', subject: 'S' };
  await store.putOutboxEntry({ deliveryId: viaOutbox.id, output: 'sms', channel: 'sms', keptAt: AT, ...sent });
  await store.finishDelivery(viaOutbox.id, 2, { status: 'sent', at: AT, providerId: `sms/${viaOutbox.id}`, message: sent });
  await store.finishDelivery(own.id, 2, { status: 'sent', at: AT, providerId: 'SM1', message: { language: 'fr', text: 'Salut', unsubscribe: 'https://x/u' } });
  await store.addDeliveryReceipt({ deliveryId: own.id, output: 'sms', status: 'accepted', providerId: 'SM1', attempt: 1, at: AT });
  await store.addDeliveryReceipt({ deliveryId: own.id, output: 'sms', status: 'delivered', providerId: 'SM1', at: AT });
  await store.recordContactHolding({ output: 'hubspot', patientId: 'MRN-1', contactKey: 'pat@example.org', firstSentAt: AT, toolId: '501' });
  // A video visit: the sealed join URL with its message, a patient link; outcomes, one linked.
  await store.commitInbound(
    testRecord({
      controlId: 'V1',
      triggers: [testTrigger({ id: 'T-V', type: 'appointment.noshow', appointment: { id: 'APT-V', status: 'noshow', start: '2024-01-02T10:00:00+01:00' } })],
      videoJoins: [{ appointmentId: 'APT-V', patientId: 'MRN-1', asOf: AT, join: { keyId: 'k1', sealed: Buffer.from([1, 0, 255]) } }],
    }),
  );
  await store.putVideoLink({ tokenHash: 'a'.repeat(64), appointmentId: 'APT-V', patientId: 'MRN-1', deliveryId: 'v@appointment/APT-V#0', start: '2024-01-02T10:00:00+01:00', mintedAt: AT });
  // A reply prompt still open, a staff task done.
  await store.addReplyPrompt({
    id: 'p1', output: 'sms', address: '+33 6 12 34 56 78', patientId: 'MRN-1', ruleId: 'reminder', appointmentId: 'APT-1', triggerId: 'T1',
    offer: { language: 'en', answers: [{ action: 'confirm', words: ['1'] }], writeBack: 'ehr' }, sentAt: AT, closesAt: '2030-01-01T00:00:00Z',
  });
  const task = await store.addStaffTask({ key: 'wb:p0', kind: 'write_back_denied', createdAt: AT, patientId: 'MRN-1', appointmentId: 'APT-1', output: 'ehr', code: 'appointment_fulfilled' });
  await store.finishStaffTask(task.id, { at: AT, by: 'oncall' });
  await store.saveOutcomes({ appointmentId: 'APT-DONE', version: 0 }, [{ rule: 'reminder', variant: 'b', holdout: false, sent: true, outcome: 'showed', day: '2024-01-02' }]);
  // The waitlist: a freed slot booked for one of two offers, another still open, the later-appointments index.
  const slot = { triggerId: 'T1', patientId: 'MRN-9', start: '2024-01-03T09:00:00Z', durationMinutes: 20, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' }, openedAt: AT, waves: 1 };
  await store.openWaitlistSlot({ ...slot, id: 'APT-F@2024-01-03T09:00:00Z', state: 'open' });
  await store.openWaitlistSlot({ ...slot, id: 'APT-G@2024-01-04T09:00:00Z', start: '2024-01-04T09:00:00Z', state: 'open' });
  const offer = { slotId: 'APT-F@2024-01-03T09:00:00Z', wave: 1, state: 'offered' as const, offeredAt: AT, expiresAt: '2025-06-01T11:00:00+02:00', triggerId: 'T1' };
  await store.addWaitlistOffers([
    { ...offer, id: 'wo-1', patientId: 'MRN-1', current: { id: 'APT-1', start: '2024-02-02T10:00:00+01:00', placerId: 'PL-1' }, daysGained: 30 },
    { ...offer, id: 'wo-2', patientId: 'MRN-2' },
  ]);
  await store.setWaitlistOffer('wo-1', 'booked', { acceptedAt: AT, bookedAs: 'FILL-1' });
  await store.setWaitlistSlot('APT-F@2024-01-03T09:00:00Z', 'booked', { bookedAs: 'FILL-1' });
  await store.noteWaitlistAppointment({ id: 'APT-1', placerId: 'PL-1', patientId: 'MRN-1', service: 'CHK', practitioner: 'DR-22', start: '2024-02-02T10:00:00+01:00', triggerId: 'T1' });
  await store.noteWaitlistEntry({ id: 'APT-W', patientId: 'MRN-2', service: 'CHK', practitioner: '', periods: [{ start: '2024-01-01T00:00:00Z', end: '2099-01-01T00:00:00Z' }], notedAt: '2024-01-01T08:00:00Z', triggerId: 'T1' });

  // The consent ledger and the evidence.
  await store.addConsentEvent({ patientId: 'MRN-1', action: 'opt_out', purposes: ['marketing'], channel: 'email', source: 'admin', method: 'api', at: AT, policyVersion: '1', recordedAt: AT }, ['hubspot']);
  await store.addConsentEvent({ address: '+33612345678', output: 'sms', action: 'opt_out', purposes: [], channel: 'sms', source: 'sms', method: 'keyword:STOP', at: AT, policyVersion: '1', recordedAt: AT });
  await store.addFhirConsent({ patientId: 'MRN-1', resource: { resourceType: 'Consent', id: 'c1', status: 'active', z: 1, a: [2] }, effectiveAt: AT, source: 'fhir', recordedAt: AT });
  await store.recordDecision({ deliveryId: own.id, patientId: 'MRN-1', rule: 'confirm', purpose: 'care.logistics', channel: 'sms', output: 'sms', result: 'allow', basis: 'default', records: ['ce-1'], settings: { region: 'eu' }, at: AT });
  await store.recordDisclosure({ deliveryId: own.id, patientId: 'MRN-1', rule: 'confirm', purpose: 'care.logistics', channel: 'sms', output: 'sms', recipient: '+15550100', at: AT });
  await store.noteInboundEvent('sms:SM9', AT);
  // An erasure of another patient, with what it leaves.
  await store.commitInbound(testRecord({ controlId: 'E1', triggers: [testTrigger({ id: 'T-E', patient: { ...booked.patient, id: 'MRN-GONE' } })] }));
  await store.erasePatient('MRN-GONE', AT);
  void m1;
}

async function dumpToFile(source: DumpSource, file: string): Promise<Record<string, number>> {
  const out = createWriteStream(file);
  const counts = await writeDump(source, out);
  out.end();
  await once(out, 'finish');
  return counts;
}

describe.skipIf(postgresSkipped())('export and import of a store', () => {
  let dir: string;
  let sqlite: SqliteStore;
  let first: string;
  let counts: Record<string, number>;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'carerelay-dump-'));
    sqlite = SqliteStore.open(path.join(dir, 'embedded.db'));
    await fill(sqlite);
    first = path.join(dir, 'embedded.ndjson');
    counts = await dumpToFile(sqliteDumpSource(sqlite.db), first);
  });
  afterAll(async () => {
    await sqlite.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('SQLite → file → PostgreSQL → file gives the same file, and the store answers the same', async () => {
    expect(counts).toMatchObject({ message: 1109, trigger: 5, delivery: 4, outbox: 1, consentEvent: 2, erasure: 1, videoJoin: 1, videoLink: 1, outcomeLink: 1, outcome: 1, replyPrompt: 1, staffTask: 1, waitlistSlot: 2, waitlistOffer: 2, waitlistAppointment: 1, waitlistEntry: 1 });
    const db = await testDatabase();
    await truncateAll(db.url).catch(() => {});
    const pg = await PostgresStore.open({ url: db.url });
    try {
      const target = postgresDumpTarget(pg);
      await target.assertEmpty();
      expect(await target.load(readDump(createReadStream(first)))).toEqual(counts);
      const second = path.join(dir, 'postgres.ndjson');
      await dumpToFile(postgresDumpSource(pg), second);
      expect(readFileSync(second, 'utf8')).toBe(readFileSync(first, 'utf8'));

      // The same answers…
      for (const read of [
        (s: Store) => s.listMessages({ limit: 20 }),
        (s: Store) => s.listMessages({ status: 'quarantined' }),
        (s: Store) => s.countMessages(),
        (s: Store) => s.countDeliveries(),
        (s: Store) => s.listDeliveries({}),
        (s: Store) => s.deliveriesByCancelKey('campaign/spring'),
        (s: Store) => s.listOutbox({}),
        (s: Store) => s.getRoutingExplanation('T1'),
        (s: Store) => s.getTriggerRouting('T1'),
        (s: Store) => s.listUnroutedTriggers(10),
        (s: Store) => s.unqueuedConsentMirrors(10),
        (s: Store) => s.consentRecords({ patientIds: ['MRN-1'], addresses: ['+33612345678'] }),
        (s: Store) => s.mergedGroup('MRN-1'),
        (s: Store) => s.listErasures('MRN-GONE'),
        (s: Store) => s.listAudit({}),
        (s: Store) => s.getSubjectState('appointment', 'APT-1'),
        (s: Store) => s.getCursor('poll:ehr'),
        (s: Store) => s.listContactHoldings({ output: 'hubspot', toolId: '501' }),
        (s: Store) => s.getVideoJoin('APT-V'),
        (s: Store) => s.openReplyPrompts({ output: 'sms', address: '+33612345678', at: AT }),
        (s: Store) => s.listStaffTasks({}),
        (s: Store) => s.getVideoLink('a'.repeat(64)),
        (s: Store) => s.outcomeLinksDue(10),
        (s: Store) => s.countOutcomes({}),
        (s: Store) => s.getWaitlistSlot('APT-F@2024-01-03T09:00:00Z'),
        (s: Store) => s.listWaitlistSlots({ states: ['open', 'booked'] }),
        (s: Store) => s.listWaitlistOffers('APT-F@2024-01-03T09:00:00Z'),
        (s: Store) => s.laterWaitlistAppointments({ services: ['CHK'], practitioners: ['DR-22'], after: '2024-01-01T00:00:00Z', limit: 10 }),
        (s: Store) => s.waitlistFigures('2025-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
        (s: Store) => s.waitlistEntries({ services: ['CHK'], practitioners: ['DR-22'], now: '2024-01-05T00:00:00Z', limit: 10 }),
        // The same counts (each backend orders statuses by how its rows spell them).
        async (s: Store) => (await s.deliveryTallies()).map((t) => JSON.stringify(t)).sort(),
      ]) {
        expect(await read(pg)).toEqual(await read(sqlite));
      }
      expect(await pg.waitlistEntries({ services: ['CHK'], practitioners: ['DR-22'], now: '2024-01-05T00:00:00Z', limit: 10 })).toHaveLength(1);
      const some = (await sqlite.listMessages({ controlId: 'R1' }))[0]!;
      expect(await pg.getMessage(some.id)).toEqual(await sqlite.getMessage(some.id));
      // …and it goes on from there: a resend is a duplicate of the imported message, new rows
      // take ids after the imported ones.
      const resend = await pg.commitInbound(testRecord({ controlId: 'C1', triggers: [testTrigger({ id: 'T1' })] }));
      expect(resend.outcome).toBe('duplicate');
      expect(resend.message.id).toBe((await sqlite.findMessage('EPIC^GHH', 'C1'))!.id);
      const fresh = await pg.commitInbound(testRecord({ controlId: 'NEW-1' }));
      expect(Number(fresh.message.id)).toBeGreaterThan(1109);
      const entry = await pg.addConsentEvent({ patientId: 'MRN-2', action: 'grant', purposes: [], source: 'admin', method: 'api', at: AT, policyVersion: '1', recordedAt: AT });
      expect(entry.id).toBe('ce-3');
      await expect(target.assertEmpty()).rejects.toThrow(/already holds data .*an import goes into an empty store/);
    } finally {
      await pg.close();
    }
  });

  it('a file cut short, or not an export, imports nothing', async () => {
    const db = await testDatabase();
    await truncateAll(db.url);
    const pg = await PostgresStore.open({ url: db.url });
    try {
      const lines = readFileSync(first, 'utf8').split('\n');
      const cut = path.join(dir, 'cut.ndjson');
      writeFileSync(cut, lines.slice(0, lines.length - 2).join('\n'));
      await expect(postgresDumpTarget(pg).load(readDump(createReadStream(cut)))).rejects.toThrow(/ends before its end record: it was cut short/);
      expect(await pg.listMessages({})).toEqual([]);
      const lost = [...lines.slice(0, 3), ...lines.slice(4)].join('\n');
      await expect(postgresDumpTarget(pg).load(readDump(Readable.from([lost])))).rejects.toThrow(/holds 1108 message record\(s\) where the export wrote 1109/);
      await expect(postgresDumpTarget(pg).load(readDump(Readable.from(['{"hello":1}\n'])))).rejects.toThrow(/line 1: not a CareRelay store export/);
      expect(await pg.countMessages()).toMatchObject({ accepted: 0 });
    } finally {
      await pg.close();
    }
  });
});
