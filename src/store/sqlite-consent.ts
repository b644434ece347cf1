// The consent ledger and the evidence in the embedded SQLite store (store.ts ConsentLedger):
// its tables (one migration step of the store, CONSENT_TABLES) and their statements. The
// SQLite store owns the database and delegates to this class; patient facts are noted inside
// the store's commit transaction, so a death or a merge committed with an ACK is never lost.
//
// Times are stored as given (ISO with offset) and, beside them, epoch ms for ordering.
// Addresses are stored normalized (pipeline/consent.ts normalizeAddress) so a number written
// "+33 6 12 34 56 78" in one feed and "+33612345678" in another is one contact point.
import { PackedKind, packJsonText, triggerOf, unpackJson } from './packed-json.ts';
import type BetterSqlite3 from 'better-sqlite3';
import { normalizeAddress } from '../pipeline/consent.ts';
import type { Channel, ConsentEvent, ConsentSource, Purpose, Trigger } from '../types.ts';
import { instantMs, listLimit } from './common.ts';
import { MAX_GROUP, consentEventSeq, decisionFromRow, eventFromRow, factsOf, withoutPersonalFields, withoutRecipient, type DecisionRow, type EventRow } from './consent-rows.ts';
import type { Database } from './sqlite-db.ts';
import { rawQuotaGiveBack } from './sqlite-raw-quota.ts';
import type { DecisionRecord, Disclosure, ErasureRecord, PatientFacts, StoredFhirConsent } from './store.ts';

/** The ledger's tables: one append-only migration step of the store (sqlite.ts). */
export const CONSENT_TABLES = `
  CREATE TABLE consent_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT,
    address TEXT,
    output TEXT,
    action TEXT NOT NULL CHECK (action IN ('grant', 'revoke', 'opt_out', 'opt_in', 'no_contact', 'contact_allowed')),
    purposes TEXT NOT NULL,
    channel TEXT,
    source TEXT NOT NULL,
    method TEXT NOT NULL,
    at TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    policy_version TEXT NOT NULL,
    reference TEXT,
    recorded_at TEXT NOT NULL,
    CHECK (patient_id IS NOT NULL OR address IS NOT NULL)
  );
  CREATE INDEX consent_events_patient ON consent_events (patient_id, at_ms) WHERE patient_id IS NOT NULL;
  CREATE INDEX consent_events_address ON consent_events (address, at_ms) WHERE address IS NOT NULL;

  CREATE TABLE fhir_consents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    effective_at TEXT NOT NULL,
    effective_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (patient_id, resource)
  );

  -- What triggers said about patients (rule 2), written in the commit of the message.
  CREATE TABLE patients (
    id TEXT PRIMARY KEY,
    deceased INTEGER NOT NULL DEFAULT 0,
    first_seen_ms INTEGER NOT NULL,
    erased_at TEXT
  ) WITHOUT ROWID;
  CREATE TABLE contact_points (
    address TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    PRIMARY KEY (address, patient_id)
  ) WITHOUT ROWID;
  CREATE INDEX contact_points_patient ON contact_points (patient_id);
  -- A40: from the merged-away id to the surviving one.
  CREATE TABLE patient_links (
    from_id TEXT NOT NULL,
    to_id TEXT NOT NULL,
    PRIMARY KEY (from_id, to_id)
  ) WITHOUT ROWID;
  CREATE INDEX patient_links_to ON patient_links (to_id);

  CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    channel TEXT NOT NULL,
    output TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ('allow', 'deny', 'move')),
    check_rule INTEGER,
    reason TEXT,
    retry_at TEXT,
    basis TEXT NOT NULL,
    records TEXT NOT NULL,
    settings TEXT NOT NULL,
    at TEXT NOT NULL
  );
  CREATE INDEX decisions_delivery ON decisions (delivery_id, seq);
  CREATE INDEX decisions_patient ON decisions (patient_id, seq);

  CREATE TABLE disclosures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    patient_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    purpose TEXT NOT NULL,
    channel TEXT NOT NULL,
    output TEXT NOT NULL,
    recipient TEXT,
    at TEXT NOT NULL,
    at_ms INTEGER NOT NULL
  );
  CREATE INDEX disclosures_patient ON disclosures (patient_id, at_ms);

  CREATE TABLE inbound_events (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE erasures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    at TEXT NOT NULL,
    cancelled TEXT NOT NULL
  );
  CREATE INDEX erasures_patient ON erasures (patient_id);

  -- Ledger entries to push to a tool that holds the contact (outputs/consent-sync.ts), written
  -- with the entry; the row goes once its mirror job is on the queue.
  CREATE TABLE consent_mirrors (
    event_seq INTEGER NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (event_seq, output)
  ) WITHOUT ROWID;
`;

type Statements = ReturnType<typeof prepare>;

function prepare(db: Database) {
  return {
    insertEvent: db.prepare(
      `INSERT INTO consent_events (patient_id, address, output, action, purposes, channel, source, method, at, at_ms, policy_version, reference, recorded_at)
       VALUES (@patientId, @address, @output, @action, @purposes, @channel, @source, @method, @at, @atMs, @policyVersion, @reference, @recordedAt)`,
    ),
    insertConsent: db.prepare(
      `INSERT INTO fhir_consents (patient_id, resource, effective_at, effective_ms, source, recorded_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (patient_id, resource) DO UPDATE SET patient_id = excluded.patient_id RETURNING seq, effective_at, source, recorded_at`,
    ) as BetterSqlite3.Statement<unknown[], { seq: number; effective_at: string; source: ConsentSource; recorded_at: string }>,
    upsertPatient: db.prepare(
      `INSERT INTO patients (id, deceased, first_seen_ms) VALUES (?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET deceased = MAX(patients.deceased, excluded.deceased)`,
    ),
    insertContact: db.prepare('INSERT OR IGNORE INTO contact_points (address, patient_id) VALUES (?, ?)'),
    insertLink: db.prepare('INSERT OR IGNORE INTO patient_links (from_id, to_id) VALUES (?, ?)'),
    linked: db.prepare('SELECT to_id AS id FROM patient_links WHERE from_id = ? UNION SELECT from_id FROM patient_links WHERE to_id = ?') as BetterSqlite3.Statement<[string, string], { id: string }>,
    patientsAt: db.prepare('SELECT patient_id FROM contact_points WHERE address = ? ORDER BY patient_id') as BetterSqlite3.Statement<[string], { patient_id: string }>,
    patient: db.prepare('SELECT id, deceased, erased_at FROM patients WHERE id = ?') as BetterSqlite3.Statement<[string], { id: string; deceased: number; erased_at: string | null }>,
    insertDecision: db.prepare(
      `INSERT INTO decisions (delivery_id, patient_id, rule, purpose, channel, output, result, check_rule, reason, retry_at, basis, records, settings, at)
       VALUES (@deliveryId, @patientId, @rule, @purpose, @channel, @output, @result, @checkRule, @reason, @retryAt, @basis, @records, @settings, @at)`,
    ),
    insertDisclosure: db.prepare(
      `INSERT OR IGNORE INTO disclosures (delivery_id, patient_id, rule, purpose, channel, output, recipient, at, at_ms)
       VALUES (@deliveryId, @patientId, @rule, @purpose, @channel, @output, @recipient, @at, @atMs)`,
    ),
    insertMirror: db.prepare('INSERT OR IGNORE INTO consent_mirrors (event_seq, output) VALUES (?, ?)'),
    unqueuedMirrors: db.prepare(
      `SELECT e.*, m.output AS mirror_output FROM consent_mirrors m JOIN consent_events e ON e.seq = m.event_seq ORDER BY m.event_seq, m.output LIMIT ?`,
    ) as BetterSqlite3.Statement<[number], EventRow & { mirror_output: string }>,
    deleteMirror: db.prepare('DELETE FROM consent_mirrors WHERE event_seq = ? AND output = ?'),
    insertInbound: db.prepare('INSERT OR IGNORE INTO inbound_events (key, at) VALUES (?, ?)'),
    insertErasure: db.prepare('INSERT INTO erasures (patient_id, at, cancelled, tools) VALUES (?, ?, ?, ?)'),
    erasures: db.prepare('SELECT patient_id, at, cancelled, tools FROM erasures WHERE patient_id = ? ORDER BY seq') as BetterSqlite3.Statement<[string], { patient_id: string; at: string; cancelled: string; tools: string }>,
  };
}

export class SqliteConsentLedger {
  readonly #db: Database;
  readonly #s: Statements;
  /** Statements built from a list's length (IN (?, ?…)), prepared once each. */
  readonly #prepared = new Map<string, BetterSqlite3.Statement>();
  readonly #erase: (patientId: string, at: string, outcomes: Readonly<Record<string, string>>) => ErasureRecord;
  readonly #addEvent: (event: Omit<ConsentEvent, 'id'>, mirrorTo: readonly string[]) => ConsentEvent;

  constructor(db: Database) {
    this.#db = db;
    this.#s = prepare(db);
    this.#addEvent = db.transaction((event: Omit<ConsentEvent, 'id'>, mirrorTo: readonly string[]) => this.#addEventInTransaction(event, mirrorTo)).immediate;
    this.#erase = db.transaction((patientId: string, at: string, outcomes: Readonly<Record<string, string>>) => this.#eraseInTransaction(patientId, at, outcomes)).immediate;
  }

  addConsentEvent(event: Omit<ConsentEvent, 'id'>, mirrorTo: readonly string[] = []): ConsentEvent {
    return this.#addEvent(event, mirrorTo);
  }

  #addEventInTransaction(event: Omit<ConsentEvent, 'id'>, mirrorTo: readonly string[]): ConsentEvent {
    const atMs = instantMs(event.at, 'event.at');
    instantMs(event.recordedAt, 'event.recordedAt');
    if (event.patientId === undefined && event.address === undefined) throw new RangeError('a consent entry belongs to a patient or to an address');
    const address = event.address === undefined ? undefined : normalizeAddress(event.address);
    const info = this.#s.insertEvent.run({
      patientId: event.patientId ?? null,
      address: address ?? null,
      output: event.output ?? null,
      action: event.action,
      purposes: JSON.stringify(event.purposes),
      channel: event.channel ?? null,
      source: event.source,
      method: event.method,
      at: event.at,
      atMs,
      policyVersion: event.policyVersion,
      reference: event.reference ?? null,
      recordedAt: event.recordedAt,
    });
    for (const output of mirrorTo) this.#s.insertMirror.run(info.lastInsertRowid, output);
    return { ...event, ...(address !== undefined ? { address } : {}), id: `ce-${info.lastInsertRowid}` };
  }

  /** Mirrors recorded with their entries and not yet on the queue, oldest first. */
  unqueuedConsentMirrors(limit: number): Array<{ event: ConsentEvent; output: string }> {
    return this.#s.unqueuedMirrors.all(limit).map((row) => ({ event: eventFromRow(row), output: row.mirror_output }));
  }

  consentMirrorQueued(eventId: string, output: string): void {
    this.#s.deleteMirror.run(consentEventSeq(eventId), output);
  }

  addFhirConsent(consent: Omit<StoredFhirConsent, 'id'>): StoredFhirConsent {
    const effectiveMs = instantMs(consent.effectiveAt, 'effectiveAt');
    const row = this.#s.insertConsent.get(consent.patientId, JSON.stringify(consent.resource), consent.effectiveAt, effectiveMs, consent.source, consent.recordedAt)!;
    // A resend of the same resource keeps the first record (its id and times).
    return { ...consent, id: `fc-${row.seq}`, effectiveAt: row.effective_at, source: row.source, recordedAt: row.recorded_at };
  }

  consentRecords(query: { patientIds: readonly string[]; addresses?: readonly string[] }): { events: ConsentEvent[]; consents: StoredFhirConsent[] } {
    const ids = [...new Set(query.patientIds)];
    const addresses = [...new Set((query.addresses ?? []).map(normalizeAddress))];
    const events: ConsentEvent[] = [];
    if (ids.length > 0) events.push(...(this.#rows(`SELECT * FROM consent_events WHERE patient_id IN (${marks(ids)}) ORDER BY at_ms, seq`, ids) as EventRow[]).map(eventFromRow));
    if (addresses.length > 0) {
      events.push(...(this.#rows(`SELECT * FROM consent_events WHERE address IN (${marks(addresses)}) AND patient_id IS NULL ORDER BY at_ms, seq`, addresses) as EventRow[]).map(eventFromRow));
    }
    const consents =
      ids.length === 0
        ? []
        : (
            this.#rows(`SELECT seq, patient_id, resource, effective_at, source, recorded_at FROM fhir_consents WHERE patient_id IN (${marks(ids)}) ORDER BY effective_ms, seq`, ids) as Array<{
              seq: number;
              patient_id: string;
              resource: string;
              effective_at: string;
              source: ConsentSource;
              recorded_at: string;
            }>
          ).map((r) => ({ id: `fc-${r.seq}`, patientId: r.patient_id, resource: JSON.parse(r.resource) as Record<string, unknown>, effectiveAt: r.effective_at, source: r.source, recordedAt: r.recorded_at }));
    return { events, consents };
  }

  /** Inside the caller's transaction (commitInbound) or its own statement (notePatientFacts). */
  noteFacts(triggers: readonly Trigger[], seenMs: number): void {
    const facts = factsOf(triggers);
    for (const [id, deceased] of facts.patients) this.#s.upsertPatient.run(id, deceased ? 1 : 0, seenMs);
    for (const { address, patientId } of facts.contacts) this.#s.insertContact.run(address, patientId);
    for (const { from, to } of facts.links) this.#s.insertLink.run(from, to);
  }

  notePatientFacts(triggers: readonly Trigger[], nowMs: number): void {
    this.#db.transaction(() => this.noteFacts(triggers, nowMs))();
  }

  patientFacts(patientIds: readonly string[]): PatientFacts[] {
    const out: PatientFacts[] = [];
    for (const id of new Set(patientIds)) {
      const row = this.#s.patient.get(id);
      if (row) out.push({ id: row.id, deceased: row.deceased === 1, ...(row.erased_at !== null ? { erasedAt: row.erased_at } : {}) });
    }
    return out;
  }

  mergedGroup(patientId: string): string[] {
    const group = [patientId];
    const seen = new Set(group);
    for (let i = 0; i < group.length && group.length < MAX_GROUP; i++) {
      for (const { id } of this.#s.linked.all(group[i]!, group[i]!)) {
        if (!seen.has(id)) {
          seen.add(id);
          group.push(id);
        }
      }
    }
    return group;
  }

  patientsAtAddress(address: string): string[] {
    return this.#s.patientsAt.all(normalizeAddress(address)).map((r) => r.patient_id);
  }

  recordDecision(d: Omit<DecisionRecord, 'id'>): void {
    instantMs(d.at, 'decision.at');
    this.#s.insertDecision.run({
      deliveryId: d.deliveryId,
      patientId: d.patientId,
      rule: d.rule,
      purpose: d.purpose,
      channel: d.channel,
      output: d.output,
      result: d.result,
      checkRule: d.checkRule ?? null,
      reason: d.reason ?? null,
      retryAt: d.retryAt ?? null,
      basis: packJsonText(PackedKind.Decision, JSON.stringify(d.basis)),
      records: JSON.stringify(d.records),
      settings: packJsonText(PackedKind.Decision, JSON.stringify(d.settings)),
      at: d.at,
    });
  }

  listDecisions(query: { deliveryId?: string; patientId?: string; limit?: number }): DecisionRecord[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (query.deliveryId !== undefined) {
      where.push('delivery_id = ?');
      params.push(query.deliveryId);
    }
    if (query.patientId !== undefined) {
      where.push('patient_id = ?');
      params.push(query.patientId);
    }
    const sql = `SELECT * FROM decisions${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
    return (this.#rows(sql, [...params, listLimit(query.limit)]) as DecisionRow[]).map(decisionFromRow);
  }

  recordDisclosure(d: Disclosure): void {
    this.#s.insertDisclosure.run({ ...d, recipient: d.recipient ?? null, atMs: instantMs(d.at, 'disclosure.at') });
  }

  listDisclosures(query: { patientIds: readonly string[]; since?: string; limit?: number }): Disclosure[] {
    const ids = [...new Set(query.patientIds)];
    if (ids.length === 0) return [];
    const since = query.since === undefined ? -Infinity : instantMs(query.since, 'since');
    const rows = this.#rows(
      `SELECT delivery_id, patient_id, rule, purpose, channel, output, recipient, at FROM disclosures WHERE patient_id IN (${marks(ids)}) AND at_ms >= ? ORDER BY at_ms DESC, seq DESC LIMIT ?`,
      [...ids, since === -Infinity ? Number.MIN_SAFE_INTEGER : since, listLimit(query.limit)],
    ) as Array<{ delivery_id: string; patient_id: string; rule: string; purpose: Purpose; channel: Channel; output: string; recipient: string | null; at: string }>;
    return rows.map((r) => ({ deliveryId: r.delivery_id, patientId: r.patient_id, rule: r.rule, purpose: r.purpose, channel: r.channel, output: r.output, ...(r.recipient !== null ? { recipient: r.recipient } : {}), at: r.at }));
  }

  noteInboundEvent(key: string, at: string): boolean {
    instantMs(at, 'at');
    return this.#s.insertInbound.run(key, at).changes > 0;
  }

  erasePatient(patientId: string, at: string, outcomes: Readonly<Record<string, string>> = {}): ErasureRecord {
    instantMs(at, 'at');
    return this.#erase(patientId, at, outcomes);
  }

  listErasures(patientId: string): ErasureRecord[] {
    return this.#s.erasures.all(patientId).map((r) => ({
      patientId: r.patient_id,
      at: r.at,
      cancelled: JSON.parse(r.cancelled) as ErasureRecord['cancelled'],
      tools: JSON.parse(r.tools) as ErasureRecord['tools'],
    }));
  }

  #eraseInTransaction(patientId: string, at: string, outcomes: Readonly<Record<string, string>>): ErasureRecord {
    const db = this.#db;
    const deliveries = db.prepare('SELECT seq, id, status, generation, json FROM deliveries WHERE patient_id = ?').all(patientId) as Array<{ seq: number; id: string; status: string; generation: number; json: string | Buffer }>;
    const cancelled: ErasureRecord['cancelled'] = [];
    const updateDelivery = db.prepare(
      `UPDATE deliveries SET status = CASE WHEN status IN ('pending', 'cancelled') THEN 'suppressed' ELSE status END,
         reason = CASE WHEN status IN ('pending', 'cancelled') THEN 'erased' ELSE reason END,
         json = ?, message = NULL, updated_at = ? WHERE seq = ?`,
    );
    const deleteOutbox = db.prepare('DELETE FROM outbox WHERE delivery_id = ?');
    for (const d of deliveries) {
      if (d.status === 'pending') cancelled.push({ deliveryId: d.id, generation: d.generation, reason: 'erased' });
      // Stored packed (packed-json.ts); written back as plain JSON text, which the store reads too.
      updateDelivery.run(JSON.stringify(withoutRecipient(JSON.parse(unpackJson(d.json)) as Record<string, unknown>)), at, d.seq);
      deleteOutbox.run(d.id);
    }
    // Triggers keep what the still-current checks and routing need (ids, types, times, status);
    // the patient's personal fields go. Their messages lose their bytes, and so do quarantined
    // copies of those messages (same sender and control id).
    const triggers = db.prepare('SELECT id, message_id, json FROM triggers WHERE patient_id = ?').all(patientId) as Array<{ id: string; message_id: number; json: string | Buffer }>;
    const updateTrigger = db.prepare('UPDATE triggers SET json = ? WHERE id = ?');
    const messageIds = new Set<number>();
    for (const t of triggers) {
      updateTrigger.run(JSON.stringify(withoutPersonalFields(triggerOf(t.id, t.json))), t.id);
      messageIds.add(t.message_id);
    }
    const erasedWith = db.prepare<[number, number], { id: number }>(
      `SELECT id FROM messages WHERE id = ? OR (status = 'quarantined' AND control_id <> '' AND (sender, control_id) = (SELECT sender, control_id FROM messages WHERE id = ?))`,
    );
    const eraseMessage = db.prepare<[number]>(`UPDATE messages SET raw = X'', raw_packed = NULL WHERE id = ?`);
    // A quarantined copy counted under the raw-bytes quota gives its bytes back (sqlite-raw-quota.ts).
    const giveBack = rawQuotaGiveBack(db);
    for (const id of messageIds) {
      for (const row of erasedWith.all(id, id)) {
        giveBack(row.id);
        eraseMessage.run(row.id);
      }
    }
    db.prepare('DELETE FROM decisions WHERE patient_id = ?').run(patientId);
    db.prepare('DELETE FROM disclosures WHERE patient_id = ?').run(patientId);
    db.prepare('DELETE FROM contact_points WHERE patient_id = ?').run(patientId);
    // The tools that held the patient's contact: named in the record (an operator acts on what
    // they did not forget), their holdings gone with the addresses.
    const held = db.prepare('SELECT DISTINCT output FROM contact_holdings WHERE patient_id = ? ORDER BY output').all(patientId) as Array<{ output: string }>;
    const tools: ErasureRecord['tools'] = held.map(({ output }) => ({ output, outcome: outcomes[output] ?? 'not_asked' }));
    db.prepare('DELETE FROM contact_holdings WHERE patient_id = ?').run(patientId);
    db.prepare('DELETE FROM video_joins WHERE patient_id = ?').run(patientId);
    db.prepare('DELETE FROM video_links WHERE patient_id = ?').run(patientId);
    db.prepare(`INSERT INTO patients (id, deceased, first_seen_ms, erased_at) VALUES (?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET erased_at = excluded.erased_at`).run(
      patientId,
      instantMs(at, 'at'),
      at,
    );
    this.#s.insertErasure.run(patientId, at, JSON.stringify(cancelled), JSON.stringify(tools));
    return { patientId, at, cancelled, tools };
  }

  #rows(sql: string, params: readonly unknown[]): unknown[] {
    let stmt = this.#prepared.get(sql);
    if (stmt === undefined) {
      stmt = this.#db.prepare(sql);
      // A bound: lists longer than a merge group are rare; their statements are not kept.
      if (this.#prepared.size < 200) this.#prepared.set(sql, stmt);
    }
    return stmt.all(...params);
  }
}

/** `?, ?, ?` for a list of parameters. */
function marks(list: readonly unknown[]): string {
  return list.map(() => '?').join(', ');
}
