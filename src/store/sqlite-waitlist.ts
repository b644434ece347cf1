// The waitlist in the embedded SQLite store (store.ts WaitlistLedger; docs/waitlist.md): freed
// slots, the offers made for them, the appointments the later-appointments source draws
// candidates from, and the figures of the outcomes view. One append-only migration step of the
// store (WAITLIST_TABLES) and the step that lets `messages` hold the waves CareRelay commits.
//
// The claim. A slot row is `open` until one yes takes it: the answer's commit runs
// `UPDATE … SET state = 'claimed' WHERE id = ? AND state = 'open'` inside the store's transaction
// of that SMS (InboundRecord.waitlistClaim), and a second yes, however close behind, finds no open
// row: the store throws SlotTakenError and nothing of that commit is stored. One booking per slot
// follows from one claim per slot. A booking that fails gives the claim back (releaseClaim).
import type { Database } from './sqlite-db.ts';
import { instantMs } from './common.ts';
import { widenFormatCheck } from './sqlite-replies.ts';
import { OfferToldError, SlotTakenError, WaitlistOfferState, WaitlistSlotState, type WaitlistAppointment, type WaitlistEntry, type WaitlistFigures, type WaitlistOffer, type WaitlistSlot } from './store.ts';

export const WAITLIST_TABLES = `
  CREATE TABLE waitlist_slots (
    id TEXT PRIMARY KEY,
    start_ms INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'booked', 'closed')),
    claimed_by TEXT,
    json TEXT NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX waitlist_slots_opened ON waitlist_slots (opened_ms);

  CREATE TABLE waitlist_offers (
    id TEXT PRIMARY KEY,
    slot_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    offered_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    json TEXT NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX waitlist_offers_slot ON waitlist_offers (slot_id);
  CREATE INDEX waitlist_offers_patient ON waitlist_offers (patient_id, offered_ms);
  CREATE INDEX waitlist_offers_offered ON waitlist_offers (offered_ms);

  CREATE TABLE waitlist_appointments (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    service TEXT NOT NULL,
    practitioner TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    json TEXT NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX waitlist_appointments_match ON waitlist_appointments (service, practitioner, start_ms);
  CREATE INDEX waitlist_appointments_patient ON waitlist_appointments (patient_id);
`;

/**
 * One append-only migration step: the EHR's waitlist entries (store.ts WaitlistEntry). `until_ms`
 * is the end of the last requested period (NULL: open-ended); `noted_ms` orders the longest waiting first.
 */
export const WAITLIST_ENTRIES_TABLE = `
  CREATE TABLE waitlist_entries (
    id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    service TEXT NOT NULL,
    practitioner TEXT NOT NULL,
    noted_ms INTEGER NOT NULL,
    until_ms INTEGER,
    json TEXT NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX waitlist_entries_match ON waitlist_entries (service, noted_ms);
  CREATE INDEX waitlist_entries_until ON waitlist_entries (until_ms);
  CREATE INDEX waitlist_entries_patient ON waitlist_entries (patient_id);
`;

/** The end of an entry's last requested period in ms; null when one is open-ended (or none is given: any time). */
export function entryUntilMs(entry: WaitlistEntry): number | null {
  if (entry.periods.length === 0 || entry.periods.some((p) => p.end === undefined)) return null;
  return Math.max(...entry.periods.map((p) => instantMs(p.end!, 'entry.periods.end')));
}

/** Lets `messages.format` hold 'waitlist' (the waves of offers CareRelay commits), as sqlite-replies.ts widened it for 'sms'. */
export function widenFormatsForWaitlist(db: Database): void {
  widenFormatCheck(db, ['hl7v2', 'fhir', 'sms'], ['hl7v2', 'fhir', 'sms', 'waitlist']);
}


interface JsonRow {
  json: string;
}

function prepare(db: Database) {
  return {
    insertSlot: db.prepare<[string, number, number, string]>("INSERT INTO waitlist_slots (id, start_ms, opened_ms, state, json) VALUES (?, ?, ?, 'open', ?) ON CONFLICT (id) DO NOTHING"),
    slot: db.prepare<[string], JsonRow & { state: WaitlistSlotState; claimed_by: string | null }>('SELECT json, state, claimed_by FROM waitlist_slots WHERE id = ?'),
    claim: db.prepare<[string, string]>("UPDATE waitlist_slots SET state = 'claimed', claimed_by = ? WHERE id = ? AND state = 'open'"),
    tell: db.prepare<[string]>("UPDATE waitlist_offers SET state = 'taken' WHERE id = ? AND state = 'offered'"),
    release: db.prepare<[string, string]>("UPDATE waitlist_slots SET state = 'open', claimed_by = NULL WHERE id = ? AND claimed_by = ? AND state = 'claimed'"),
    setSlotState: db.prepare<[string, string, string]>('UPDATE waitlist_slots SET state = ?, json = ? WHERE id = ?'),
    insertOffer: db.prepare<[string, string, string, number, string, string]>('INSERT INTO waitlist_offers (id, slot_id, patient_id, offered_ms, state, json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING'),
    offer: db.prepare<[string], JsonRow & { state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE id = ?'),
    setOffer: db.prepare<[string, string, string]>('UPDATE waitlist_offers SET state = ?, json = ? WHERE id = ?'),
    offersOfSlot: db.prepare<[string], JsonRow & { state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE slot_id = ? ORDER BY offered_ms, id'),
    offersOfPatient: db.prepare<[string, number], { n: number }>('SELECT count(*) AS n FROM waitlist_offers WHERE patient_id = ? AND offered_ms >= ?'),
    upsertAppointment: db.prepare<[string, string, string, string, number, string]>(
      'INSERT INTO waitlist_appointments (id, patient_id, service, practitioner, start_ms, json) VALUES (?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id, service = excluded.service, practitioner = excluded.practitioner, start_ms = excluded.start_ms, json = excluded.json',
    ),
    deleteAppointment: db.prepare<[string]>('DELETE FROM waitlist_appointments WHERE id = ?'),
    upsertEntry: db.prepare<[string, string, string, string, number, number | null, string]>(
      'INSERT INTO waitlist_entries (id, patient_id, service, practitioner, noted_ms, until_ms, json) VALUES (?, ?, ?, ?, ?, ?, ?) ' +
        'ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id, service = excluded.service, practitioner = excluded.practitioner, until_ms = excluded.until_ms, ' +
        "json = json_set(excluded.json, '$.notedAt', json_extract(waitlist_entries.json, '$.notedAt'))",
    ),
    deleteEntry: db.prepare<[string]>('DELETE FROM waitlist_entries WHERE id = ?'),
    entriesOver: db.prepare<[number]>('DELETE FROM waitlist_entries WHERE until_ms <= ?'),
    eraseEntries: db.prepare<[string]>('DELETE FROM waitlist_entries WHERE patient_id = ?'),
    eraseAppointments: db.prepare<[string]>('DELETE FROM waitlist_appointments WHERE patient_id = ?'),
    eraseOffers: db.prepare<[string]>('DELETE FROM waitlist_offers WHERE patient_id = ?'),
    slotsOpened: db.prepare<[number, number], { n: number }>('SELECT count(*) AS n FROM waitlist_slots WHERE opened_ms >= ? AND opened_ms < ?'),
    offersIn: db.prepare<[number, number], JsonRow & { state: WaitlistOfferState }>('SELECT json, state FROM waitlist_offers WHERE offered_ms >= ? AND offered_ms < ?'),
  };
}

export class SqliteWaitlistLedger {
  readonly #db: Database;
  readonly #s: ReturnType<typeof prepare>;

  constructor(db: Database) {
    this.#db = db;
    this.#s = prepare(db);
  }

  openSlot(slot: WaitlistSlot): boolean {
    return this.#s.insertSlot.run(slot.id, instantMs(slot.start, 'slot.start'), instantMs(slot.openedAt, 'slot.openedAt'), JSON.stringify(slot)).changes === 1;
  }

  slot(id: string): WaitlistSlot | undefined {
    const row = this.#s.slot.get(id);
    if (row === undefined) return undefined;
    return { ...(JSON.parse(row.json) as WaitlistSlot), state: row.state, ...(row.claimed_by !== null ? { claimedBy: row.claimed_by } : {}) };
  }

  /** Inside the commit of an answer: takes the slot for the offer, or throws SlotTakenError. */
  claim(slotId: string, offerId: string, at: string): void {
    if (this.#s.claim.run(offerId, slotId).changes !== 1) throw new SlotTakenError(slotId);
    this.setOfferState(offerId, WaitlistOfferState.Accepted, { acceptedAt: at });
  }

  /** Inside the commit that tells its patient the slot is taken: closes the offer, or throws OfferToldError. */
  tell(offerId: string): void {
    if (this.#s.tell.run(offerId).changes !== 1) throw new OfferToldError(offerId);
  }

  releaseClaim(slotId: string, offerId: string): boolean {
    return this.#s.release.run(slotId, offerId).changes === 1;
  }

  setSlotState(id: string, state: WaitlistSlotState, patch: Partial<WaitlistSlot> = {}): void {
    const current = this.slot(id);
    if (current === undefined || !slotMayBecome(current.state, state)) return;
    const { claimedBy: _claimedBy, ...rest } = { ...current, ...patch, state };
    this.#s.setSlotState.run(state, JSON.stringify(rest), id);
  }

  addOffers(offers: readonly WaitlistOffer[]): void {
    for (const o of offers) this.#s.insertOffer.run(o.id, o.slotId, o.patientId, instantMs(o.offeredAt, 'offer.offeredAt'), o.state, JSON.stringify(o));
  }

  offer(id: string): WaitlistOffer | undefined {
    const row = this.#s.offer.get(id);
    return row === undefined ? undefined : { ...(JSON.parse(row.json) as WaitlistOffer), state: row.state };
  }

  setOfferState(id: string, state: WaitlistOfferState, patch: Partial<WaitlistOffer> = {}): void {
    const current = this.offer(id);
    if (current === undefined) return;
    this.#s.setOffer.run(state, JSON.stringify({ ...current, ...patch, state }), id);
  }

  offersOfSlot(slotId: string): WaitlistOffer[] {
    return this.#s.offersOfSlot.all(slotId).map((r) => ({ ...(JSON.parse(r.json) as WaitlistOffer), state: r.state }));
  }

  offersToPatientSince(patientId: string, since: string): number {
    return this.#s.offersOfPatient.get(patientId, instantMs(since, 'since'))!.n;
  }

  /** Also ends a waitlist entry of the same id: the appointment is booked now. */
  noteAppointment(appointment: WaitlistAppointment): void {
    this.#s.deleteEntry.run(appointment.id);
    this.#s.upsertAppointment.run(appointment.id, appointment.patientId, appointment.service, appointment.practitioner, instantMs(appointment.start, 'appointment.start'), JSON.stringify(appointment));
  }

  /** Also ends a waitlist entry of the same id (cancelled, deleted…). */
  forgetAppointment(id: string): void {
    this.#s.deleteEntry.run(id);
    this.#s.deleteAppointment.run(id);
  }

  noteEntry(entry: WaitlistEntry | { id: string; removed: true }): void {
    if ('removed' in entry) {
      this.#s.deleteEntry.run(entry.id);
      return;
    }
    this.#s.upsertEntry.run(entry.id, entry.patientId, entry.service, entry.practitioner, instantMs(entry.notedAt, 'entry.notedAt'), entryUntilMs(entry), JSON.stringify(entry));
  }

  /** A write: the entries over at `now` go first. */
  entries(query: { services: readonly string[]; practitioners: readonly string[]; now: string; limit: number }): WaitlistEntry[] {
    this.#s.entriesOver.run(instantMs(query.now, 'now'));
    if (query.services.length === 0) return [];
    const services = query.services.map(() => '?').join(', ');
    const practitioners = ['?', ...query.practitioners.map(() => '?')].join(', ');
    const statement = this.#db.prepare<unknown[], JsonRow>(`SELECT json FROM waitlist_entries WHERE service IN (${services}) AND practitioner IN (${practitioners}) ORDER BY noted_ms, id LIMIT ?`);
    return statement.all(...query.services, '', ...query.practitioners, query.limit).map((r) => JSON.parse(r.json) as WaitlistEntry);
  }

  laterAppointments(query: { services: readonly string[]; practitioners: readonly string[]; after: string; limit: number }): WaitlistAppointment[] {
    if (query.services.length === 0 || query.practitioners.length === 0) return [];
    const services = query.services.map(() => '?').join(', ');
    const practitioners = query.practitioners.map(() => '?').join(', ');
    // Latest first: the patient waiting longest for their visit gains the most days.
    const statement = this.#db.prepare<unknown[], JsonRow>(
      `SELECT json FROM waitlist_appointments WHERE service IN (${services}) AND practitioner IN (${practitioners}) AND start_ms > ? ORDER BY start_ms DESC, id LIMIT ?`,
    );
    return statement.all(...query.services, ...query.practitioners, instantMs(query.after, 'after'), query.limit).map((r) => JSON.parse(r.json) as WaitlistAppointment);
  }

  slotsIn(states: readonly WaitlistSlotState[], limit: number): WaitlistSlot[] {
    if (states.length === 0) return [];
    const statement = this.#db.prepare<unknown[], { id: string }>(`SELECT id FROM waitlist_slots WHERE state IN (${states.map(() => '?').join(', ')}) ORDER BY opened_ms, id LIMIT ?`);
    return statement.all(...states, limit).map((r) => this.slot(r.id)!);
  }

  figures(from: string, to: string): WaitlistFigures {
    const [fromMs, toMs] = [instantMs(from, 'from'), instantMs(to, 'to')];
    const offers = this.#s.offersIn.all(fromMs, toMs).map((r) => ({ ...(JSON.parse(r.json) as WaitlistOffer), state: r.state }));
    return figuresOf(this.#s.slotsOpened.get(fromMs, toMs)!.n, offers);
  }

  erase(patientId: string): void {
    this.#s.eraseAppointments.run(patientId);
    this.#s.eraseEntries.run(patientId);
    this.#s.eraseOffers.run(patientId);
  }
}

/**
 * Whether a slot in state `from` may be set to `to` (WaitlistLedger.setWaitlistSlot): a claim is
 * taken only by an answer's commit and given back only by releaseClaim, so a wave noting itself
 * (open → open) or closing the slot (open → closed) after a yes claimed it changes nothing, and
 * only a claimed slot becomes booked.
 */
export function slotMayBecome(from: WaitlistSlotState, to: WaitlistSlotState): boolean {
  switch (to) {
    case WaitlistSlotState.Open:
    case WaitlistSlotState.Closed:
      return from === WaitlistSlotState.Open;
    case WaitlistSlotState.Booked:
      return from === WaitlistSlotState.Claimed || from === WaitlistSlotState.Booked;
    case WaitlistSlotState.Claimed:
      return from === WaitlistSlotState.Claimed;
    default:
      return to satisfies never;
  }
}

/** The outcomes view's figures of the slots freed and the offers made in a range (both backends). */
export function figuresOf(slotsFreed: number, offers: readonly WaitlistOffer[]): WaitlistFigures {
  const booked = offers.filter((o) => o.state === WaitlistOfferState.Booked);
  const days = booked.map((o) => o.daysGained).filter((d): d is number => d !== undefined).sort((a, b) => a - b);
  return {
    slotsFreed,
    offers: offers.length,
    accepted: offers.filter((o) => o.acceptedAt !== undefined).length,
    booked: booked.length,
    declined: offers.filter((o) => o.state === WaitlistOfferState.Declined).length,
    bookingFailed: offers.filter((o) => o.state === WaitlistOfferState.Failed).length,
    daysGained: { total: round1(days.reduce((a, b) => a + b, 0)), ...(days.length > 0 ? { median: round1(median(days)) } : {}) },
  };
}

function median(sorted: readonly number[]): number {
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}
