// The waitlist in the PostgreSQL store (store.ts WaitlistLedger; the embedded store's
// sqlite-waitlist.ts): the same tables and rules. The claim is the same conditional update inside
// the commit of the answer's SMS (InboundRecord.waitlistClaim): Postgres's row lock makes a second
// yes, in this process or another, find the slot no longer open (SlotTakenError, nothing stored).
import { instantMs } from './common.ts';
import type { Sql } from './postgres-commit.ts';
import { entryUntilMs, figuresOf, slotMayBecome } from './sqlite-waitlist.ts';
import { OfferToldError, SlotTakenError, WaitlistOfferState, type WaitlistAppointment, type WaitlistEntry, type WaitlistFigures, type WaitlistOffer, type WaitlistSlot, type WaitlistSlotState } from './store.ts';

/** One append-only migration step of the store (postgres.ts): the tables, and 'waitlist' messages. */
export const POSTGRES_WAITLIST_TABLES = `
  CREATE TABLE waitlist_slots (
    id TEXT PRIMARY KEY,
    start_ms BIGINT NOT NULL,
    opened_ms BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'booked', 'closed')),
    claimed_by TEXT,
    json TEXT NOT NULL
  );
  CREATE INDEX waitlist_slots_opened ON waitlist_slots (opened_ms);
  CREATE TABLE waitlist_offers (
    id TEXT PRIMARY KEY,
    slot_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    offered_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    json TEXT NOT NULL
  );
  CREATE INDEX waitlist_offers_slot ON waitlist_offers (slot_id);
  CREATE INDEX waitlist_offers_patient ON waitlist_offers (patient_id, offered_ms);
  CREATE INDEX waitlist_offers_offered ON waitlist_offers (offered_ms);
  CREATE TABLE waitlist_appointments (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    service TEXT NOT NULL,
    practitioner TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    json TEXT NOT NULL
  );
  CREATE INDEX waitlist_appointments_match ON waitlist_appointments (service, practitioner, start_ms);
  CREATE INDEX waitlist_appointments_patient ON waitlist_appointments (patient_id);

  -- The waves of offers are stored as messages (workers/waitlist.ts).
  ALTER TABLE messages DROP CONSTRAINT messages_format_check;
  ALTER TABLE messages ADD CONSTRAINT messages_format_check CHECK (format IN ('hl7v2', 'fhir', 'sms', 'waitlist'));
`;

/** One append-only migration step: the EHR's waitlist entries (sqlite-waitlist.ts WAITLIST_ENTRIES_TABLE). */
export const POSTGRES_WAITLIST_ENTRIES_TABLE = `
  CREATE TABLE waitlist_entries (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    service TEXT NOT NULL,
    practitioner TEXT NOT NULL,
    noted_ms BIGINT NOT NULL,
    until_ms BIGINT,
    json TEXT NOT NULL
  );
  CREATE INDEX waitlist_entries_match ON waitlist_entries (service, noted_ms);
  CREATE INDEX waitlist_entries_until ON waitlist_entries (until_ms);
  CREATE INDEX waitlist_entries_patient ON waitlist_entries (patient_id);
`;

interface SlotRow {
  json: string;
  state: WaitlistSlotState;
  claimed_by: string | null;
}

function slotOf(row: SlotRow): WaitlistSlot {
  return { ...(JSON.parse(row.json) as WaitlistSlot), state: row.state, ...(row.claimed_by !== null ? { claimedBy: row.claimed_by } : {}) };
}

export async function openSlot(tx: Sql, slot: WaitlistSlot): Promise<boolean> {
  return (
    (await tx.count("INSERT INTO waitlist_slots (id, start_ms, opened_ms, state, json) VALUES ($1, $2, $3, 'open', $4) ON CONFLICT (id) DO NOTHING", [
      slot.id,
      instantMs(slot.start, 'slot.start'),
      instantMs(slot.openedAt, 'slot.openedAt'),
      JSON.stringify(slot),
    ])) === 1
  );
}

export async function slot(sql: Sql, id: string): Promise<WaitlistSlot | undefined> {
  const [row] = await sql.rows<SlotRow>('SELECT json, state, claimed_by FROM waitlist_slots WHERE id = $1', [id]);
  return row === undefined ? undefined : slotOf(row);
}

export async function slotsIn(sql: Sql, states: readonly WaitlistSlotState[], limit: number): Promise<WaitlistSlot[]> {
  const rows = await sql.rows<SlotRow>('SELECT json, state, claimed_by FROM waitlist_slots WHERE state = ANY($1::text[]) ORDER BY opened_ms, id LIMIT $2', [states, limit]);
  return rows.map(slotOf);
}

/** Inside a commit: takes the slot for the offer, or throws SlotTakenError. */
export async function claim(tx: Sql, slotId: string, offerId: string, at: string): Promise<void> {
  if ((await tx.count("UPDATE waitlist_slots SET state = 'claimed', claimed_by = $1 WHERE id = $2 AND state = 'open'", [offerId, slotId])) !== 1) throw new SlotTakenError(slotId);
  await setOffer(tx, offerId, WaitlistOfferState.Accepted, { acceptedAt: at });
}

/** Inside the commit that tells its patient the slot is taken: closes the offer, or throws OfferToldError. */
export async function tell(tx: Sql, offerId: string): Promise<void> {
  if ((await tx.count("UPDATE waitlist_offers SET state = 'taken' WHERE id = $1 AND state = 'offered'", [offerId])) !== 1) throw new OfferToldError(offerId);
}

export async function releaseClaim(tx: Sql, slotId: string, offerId: string): Promise<boolean> {
  return (await tx.count("UPDATE waitlist_slots SET state = 'open', claimed_by = NULL WHERE id = $1 AND claimed_by = $2 AND state = 'claimed'", [slotId, offerId])) === 1;
}

export async function setSlot(tx: Sql, id: string, state: WaitlistSlotState, patch: Partial<WaitlistSlot> = {}): Promise<void> {
  const current = await slot(tx, id);
  if (current === undefined || !slotMayBecome(current.state, state)) return;
  const { claimedBy: _claimedBy, ...rest } = { ...current, ...patch, state };
  // Only from the state read: a yes claiming the slot meanwhile (another transaction) wins.
  await tx.count('UPDATE waitlist_slots SET state = $1, json = $2 WHERE id = $3 AND state = $4', [state, JSON.stringify(rest), id, current.state]);
}

export async function addOffers(tx: Sql, offers: readonly WaitlistOffer[]): Promise<void> {
  for (const o of offers) {
    await tx.count('INSERT INTO waitlist_offers (id, slot_id, patient_id, offered_ms, state, json) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING', [
      o.id,
      o.slotId,
      o.patientId,
      instantMs(o.offeredAt, 'offer.offeredAt'),
      o.state,
      JSON.stringify(o),
    ]);
  }
}

export async function offer(sql: Sql, id: string): Promise<WaitlistOffer | undefined> {
  const [row] = await sql.rows<{ json: string; state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE id = $1', [id]);
  return row === undefined ? undefined : { ...(JSON.parse(row.json) as WaitlistOffer), state: row.state };
}

export async function setOffer(tx: Sql, id: string, state: WaitlistOfferState, patch: Partial<WaitlistOffer> = {}): Promise<void> {
  const current = await offer(tx, id);
  if (current === undefined) return;
  await tx.count('UPDATE waitlist_offers SET state = $1, json = $2 WHERE id = $3', [state, JSON.stringify({ ...current, ...patch, state }), id]);
}

export async function offersOfSlot(sql: Sql, slotId: string): Promise<WaitlistOffer[]> {
  const rows = await sql.rows<{ json: string; state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE slot_id = $1 ORDER BY offered_ms, id', [slotId]);
  return rows.map((r) => ({ ...(JSON.parse(r.json) as WaitlistOffer), state: r.state }));
}

export async function offersToPatientSince(sql: Sql, patientId: string, since: string): Promise<number> {
  const [row] = await sql.rows<{ n: string }>('SELECT count(*) AS n FROM waitlist_offers WHERE patient_id = $1 AND offered_ms >= $2', [patientId, instantMs(since, 'since')]);
  return Number(row?.n ?? 0);
}

/** Also ends a waitlist entry of the same id: the appointment is booked, or cancelled, now. */
export async function noteAppointment(tx: Sql, a: WaitlistAppointment | { id: string; removed: true }): Promise<void> {
  await tx.count('DELETE FROM waitlist_entries WHERE id = $1', [a.id]);
  if ('removed' in a) {
    await tx.count('DELETE FROM waitlist_appointments WHERE id = $1', [a.id]);
    return;
  }
  await tx.count(
    'INSERT INTO waitlist_appointments (id, patient_id, service, practitioner, start_ms, json) VALUES ($1, $2, $3, $4, $5, $6) ' +
      'ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id, service = excluded.service, practitioner = excluded.practitioner, start_ms = excluded.start_ms, json = excluded.json',
    [a.id, a.patientId, a.service, a.practitioner, instantMs(a.start, 'appointment.start'), JSON.stringify(a)],
  );
}

export async function noteEntry(tx: Sql, entry: WaitlistEntry | { id: string; removed: true }): Promise<void> {
  if ('removed' in entry) {
    await tx.count('DELETE FROM waitlist_entries WHERE id = $1', [entry.id]);
    return;
  }
  // A kept entry keeps the time it was first noted (its place in the list).
  await tx.count(
    'INSERT INTO waitlist_entries (id, patient_id, service, practitioner, noted_ms, until_ms, json) VALUES ($1, $2, $3, $4, $5, $6, $7) ' +
      "ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id, service = excluded.service, practitioner = excluded.practitioner, until_ms = excluded.until_ms, " +
      "json = jsonb_set(excluded.json::jsonb, '{notedAt}', waitlist_entries.json::jsonb -> 'notedAt')::text",
    [entry.id, entry.patientId, entry.service, entry.practitioner, instantMs(entry.notedAt, 'entry.notedAt'), entryUntilMs(entry), JSON.stringify(entry)],
  );
}

/** Inside a write: the entries over at `now` go, then those that match, the longest waiting first. */
export async function entries(tx: Sql, q: { services: readonly string[]; practitioners: readonly string[]; now: string; limit: number }): Promise<WaitlistEntry[]> {
  await tx.count('DELETE FROM waitlist_entries WHERE until_ms <= $1', [instantMs(q.now, 'now')]);
  if (q.services.length === 0) return [];
  const rows = await tx.rows<{ json: string }>('SELECT json FROM waitlist_entries WHERE service = ANY($1::text[]) AND practitioner = ANY($2::text[]) ORDER BY noted_ms, id LIMIT $3', [
    q.services,
    ['', ...q.practitioners],
    q.limit,
  ]);
  return rows.map((r) => JSON.parse(r.json) as WaitlistEntry);
}

export async function laterAppointments(sql: Sql, q: { services: readonly string[]; practitioners: readonly string[]; after: string; limit: number }): Promise<WaitlistAppointment[]> {
  const rows = await sql.rows<{ json: string }>(
    'SELECT json FROM waitlist_appointments WHERE service = ANY($1::text[]) AND practitioner = ANY($2::text[]) AND start_ms > $3 ORDER BY start_ms DESC, id LIMIT $4',
    [q.services, q.practitioners, instantMs(q.after, 'after'), q.limit],
  );
  return rows.map((r) => JSON.parse(r.json) as WaitlistAppointment);
}

export async function figures(sql: Sql, from: string, to: string): Promise<WaitlistFigures> {
  const [fromMs, toMs] = [instantMs(from, 'from'), instantMs(to, 'to')];
  const [slots] = await sql.rows<{ n: string }>('SELECT count(*) AS n FROM waitlist_slots WHERE opened_ms >= $1 AND opened_ms < $2', [fromMs, toMs]);
  const offers = (await sql.rows<{ json: string; state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE offered_ms >= $1 AND offered_ms < $2', [fromMs, toMs])).map((r) => ({
    ...(JSON.parse(r.json) as WaitlistOffer),
    state: r.state,
  }));
  return figuresOf(Number(slots?.n ?? 0), offers);
}

/** Inside an erasure: the patient's later appointments and offers go. */
export async function erase(tx: Sql, patientId: string): Promise<void> {
  await tx.count('DELETE FROM waitlist_appointments WHERE patient_id = $1', [patientId]);
  await tx.count('DELETE FROM waitlist_entries WHERE patient_id = $1', [patientId]);
  await tx.count('DELETE FROM waitlist_offers WHERE patient_id = $1', [patientId]);
}
