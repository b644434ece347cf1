// A store filled with months of history, fast: written straight through the store's own
// methods (and the queue's), as ingest, routing, the delivery worker and the consent side would
// have written it, with times spread over the past. For the retention test (5,000 messages) and
// bench/retention.ts (100,000). Each booking gives a message (with a note of random text, so the
// bytes do not compress away), its trigger and appointment state, two deliveries — a reminder
// sent (with its outbox entry, receipt, decision, disclosure and done queue job) and a survey
// suppressed — and an outcome. Among them, what retention must keep whatever its age:
//   - every 50th booking is for an appointment still to come, with its reminder pending;
//   - a quarantined copy awaiting review and a FHIR event still pending, both old;
//   - the consent ledger (an opt-out and a grant, old).
import { randomBytes } from 'node:crypto';
import { createSqliteQueue } from '../../src/queue/sqlite.ts';
import { testDelivery, testRecord, testTrigger, sha256 } from '../../src/store/conformance.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { PENDING_REASON, type DeliveryWrite, type Store } from '../../src/store/store.ts';
import type { RetentionJob, RetentionRun } from '../../src/workers/retention.ts';

const DAY = 86_400_000;

export interface HistoryOptions {
  messages: number;
  /** The history ends here (epoch ms); it starts `days` before. */
  now: number;
  days: number;
  /** Records committed per group (one fsync each). */
  chunk?: number;
}

export interface History {
  /** Appointments still to come, with a pending reminder: they and their triggers must stay. */
  upcoming: string[];
  /** The trigger ids of those bookings. */
  upcomingTriggers: string[];
  /** Ids of stored messages that must stay whole: a quarantined copy awaiting review, a pending FHIR event. */
  awaiting: string[];
  /** Audit entries written within the last day (inside any retention). */
  recentAudit: number;
}

function note(): string {
  // ~800 characters a compressor cannot shrink much (base64 of random bytes).
  return randomBytes(600).toString('base64');
}

function raw(controlId: string, appointmentId: string, patientId: string, at: number): Buffer {
  const ts = new Date(at).toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return Buffer.from(
    [
      `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|${ts}+0000||SIU^S12^SIU_S12|${controlId}|P|2.5.1`,
      `SCH|PL-${appointmentId}|${appointmentId}||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||Booked`,
      `PID|1||${patientId}^^^NORTHCLINIC^MR||HISTORY^Patient||19700101|F|||1 Rue Exemple^^Paris^^75001||^PRN^CP^^33^6^12345678`,
      `NTE|1||${note()}`,
      'AIL|1||CARDIO1^^^NORTHCLINIC',
    ].join('\r') + '\r',
  );
}

/** Writes the history into `store` (and, the embedded store, its database's queue tables). */
export async function writeHistory(store: Store, options: HistoryOptions): Promise<History> {
  const { messages, now, days } = options;
  const chunk = options.chunk ?? 250;
  const start = now - days * DAY;
  const step = (days * DAY) / messages;
  const embedded = store instanceof SqliteStore ? embeddedQueue(store) : undefined;
  const upcoming: string[] = [];
  const upcomingTriggers: string[] = [];

  for (let first = 0; first < messages; first += chunk) {
    const batch = Array.from({ length: Math.min(chunk, messages - first) }, (_, k) => first + k);
    await Promise.all(
      batch.map(async (i) => {
        const at = Math.round(start + i * step);
        const iso = new Date(at).toISOString();
        const controlId = `H${i}`;
        const appointmentId = `HA${i}`;
        const patientId = `HP${i % 997}`;
        const future = i % 50 === 0;
        const appointmentStart = new Date(future ? now + 30 * DAY : at + 3 * DAY).toISOString();
        const trigger = testTrigger({
          id: `ht-${i}`,
          occurredAt: iso,
          receivedAt: iso,
          patient: { ...testTrigger({ id: 'x' }).patient, id: patientId },
          appointment: { id: appointmentId, status: 'booked', start: appointmentStart },
        });
        const bytes = raw(controlId, appointmentId, patientId, at);
        await store.commitInbound(
          testRecord({
            controlId,
            raw: bytes,
            contentHash: sha256(bytes),
            receivedAt: iso,
            triggers: [trigger],
            subjectStates: [{ kind: 'appointment', id: appointmentId, patientId, status: 'booked', start: appointmentStart, asOf: iso }],
          }),
        );
        const reminder = testDelivery({ appointmentId, ruleId: 'reminder', patientId, triggerId: trigger.id, asOf: iso, dueAt: iso, plannedAt: iso });
        const survey = testDelivery({ appointmentId, ruleId: 'survey', patientId, triggerId: trigger.id, asOf: iso, dueAt: iso, plannedAt: iso, purpose: 'survey', channel: 'email' });
        const write = (d: typeof reminder): DeliveryWrite => ({ delivery: d, status: 'pending', asOf: iso, generation: 0, updatedAt: iso, cause: { triggerId: trigger.id, change: 'added' } });
        await store.saveRouting(trigger.id, [write(reminder), write(survey)], iso);
        await embedded?.add(reminder.id, survey.id, iso);
        if (future) {
          upcoming.push(appointmentId);
          upcomingTriggers.push(trigger.id);
          await embedded?.pastJobs(at, { created: `${reminder.id}~0`, done: `${survey.id}~0` });
          await store.finishDelivery(survey.id, 0, { status: 'suppressed', reason: 'no_consent', at: iso });
          return;
        }
        const text = `Reminder: your appointment on ${appointmentStart.slice(0, 10)} at North Clinic. ${note().slice(0, 200)}`;
        await store.putOutboxEntry({ deliveryId: reminder.id, output: 'sms', channel: 'sms', to: '+33612345678', language: 'en', text, keptAt: iso });
        await store.finishDelivery(reminder.id, 0, { status: 'sent', at: iso, providerId: `SM${i}`, message: { language: 'en', to: '+33612345678', text } });
        await store.finishDelivery(survey.id, 0, { status: 'suppressed', reason: 'no_consent', at: iso });
        await store.addDeliveryReceipt({ deliveryId: reminder.id, output: 'sms', status: 'accepted', providerId: `SM${i}`, at: iso });
        const ref = { deliveryId: reminder.id, patientId, rule: 'reminder', purpose: 'care.logistics', channel: 'sms', output: 'sms' } as const;
        await store.recordDecision({ ...ref, result: 'allow', basis: 'care.logistics by sms: allowed', records: [], settings: { region: 'eu' }, at: iso });
        await store.recordDecision({ ...ref, deliveryId: survey.id, rule: 'survey', purpose: 'survey', channel: 'email', result: 'deny', checkRule: 3, reason: 'no_consent', basis: 'no record', records: [], settings: { region: 'eu' }, at: iso });
        await store.recordDisclosure({ ...ref, recipient: '+33612345678', at: iso });
        await embedded?.pastJobs(at, { done: `${reminder.id}~0` }, { done: `${survey.id}~0` });
        await store.saveOutcomes({ appointmentId, version: 0 }, [{ rule: 'reminder', holdout: false, sent: true, outcome: 'showed', day: appointmentStart.slice(0, 10) }]);
      }),
    );
  }
  await embedded?.close();

  // What must stay whatever its age.
  const old = new Date(start).toISOString();
  const original = testRecord({ controlId: 'H0', receivedAt: old });
  const conflict = await store.commitInbound({ ...original, raw: Buffer.from('MSH|^~\\&|EPIC|NORTHCLINIC|||20200101||SIU^S12|H0|P|2.5.1\rNTE|1||conflicting copy\r'), contentHash: 'conflicting', receivedAt: old });
  const pending = await store.commitInbound(testRecord({ controlId: 'FHIR-PENDING', sender: 'https://ehr.example.org/fhir', reason: PENDING_REASON, receivedAt: old }));
  await store.addConsentEvent({ patientId: 'HP1', action: 'opt_out', purposes: [], channel: 'sms', source: 'admin', method: 'api', at: old, policyVersion: '1', recordedAt: old });
  await store.addConsentEvent({ patientId: 'HP2', action: 'grant', purposes: ['survey'], channel: 'email', source: 'admin', method: 'api', at: old, policyVersion: '1', recordedAt: old });
  // Appended in time order, as the audit log is.
  await store.appendAudit({ at: old, actor: 'oncall', action: 'message.release', target: 'message/2', outcome: 'stored' });
  for (let i = 3; i > 0; i--) await store.appendAudit({ at: new Date(now - 3_600_000 * i).toISOString(), actor: 'oncall', action: 'message.reprocess', target: 'message/1', outcome: 'refused:wrong_status' });
  return { upcoming, upcomingTriggers, awaiting: [conflict.message.id, pending.message.id], recentAudit: 3 };
}

/** The embedded queue's jobs of the history, in the store's file, dated in the past. */
function embeddedQueue(store: SqliteStore) {
  const queue = createSqliteQueue<unknown>(store.db, { name: 'deliveries', committer: store });
  const setDone = store.db.prepare("UPDATE queue_jobs SET state = 'done', created_at = ?, updated_at = ? WHERE queue = 'deliveries' AND id = ?");
  const setCreated = store.db.prepare("UPDATE queue_jobs SET created_at = ?, updated_at = ? WHERE queue = 'deliveries' AND id = ?");
  // History, not traffic: no fsync per commit while it is written (the store's setting comes back after).
  const synchronous = store.db.pragma('synchronous', { simple: true });
  store.db.pragma('synchronous = OFF');
  return {
    add: (reminder: string, survey: string, iso: string) =>
      queue.addMany([
        { id: `${reminder}~0`, data: { deliveryId: reminder, generation: 0 }, runAt: iso },
        { id: `${survey}~0`, data: { deliveryId: survey, generation: 0 }, runAt: iso },
      ]),
    pastJobs: (at: number, ...jobs: Array<{ created?: string; done?: string }>) =>
      store.write(() => {
        for (const job of jobs) {
          if (job.created !== undefined) setCreated.run(at, at, job.created);
          if (job.done !== undefined) setDone.run(at, at, job.done);
        }
      }),
    close: async () => {
      await queue.close();
      store.db.pragma(`synchronous = ${synchronous}`);
    },
  };
}

/**
 * A retention run with a message arriving while it runs: the message's commit resolves
 * between the run's batches (ingest is not held until the run ends).
 */
export async function runWithIngest(job: RetentionJob, store: Store, now: number): Promise<{ run: RetentionRun; committedBeforeRunEnded: boolean }> {
  let ended = false;
  const running = job.run().then((r) => {
    ended = true;
    return r;
  });
  await store.commitInbound(testRecord({ controlId: 'DURING', receivedAt: new Date(now).toISOString() }));
  const committedBeforeRunEnded = !ended;
  return { run: await running, committedBeforeRunEnded };
}
