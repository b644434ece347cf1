// `carerelay export` / `carerelay import`: a whole store as NDJSON, one record per line, in the
// store's own vocabulary (store.ts), never a backend's rows — so a site can start embedded and
// move to PostgreSQL (docs/scale-out.md "Moving a store"). The same store exported from either
// backend gives the same lines.
//
//   {"format":"carerelay-store","version":1}           the header
//   {"kind":"message",…}  {"kind":"trigger",…} …       records, in the order KINDS lists
//   {"kind":"end","counts":{"message":12,…}}           the trailer: a file without it is cut short
//
// Records of a kind come in the order the store keeps them (ids, commit order), so the ids,
// the lists' order and the references between records (a trigger's message, an attempt's
// original, a delivery's outbox entry) are the same after an import. Both sides stream:
// nothing holds the whole store in memory. The file holds patient data: keep it as the store.
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import type { ConsentEvent, ContactHolding, DeliveryReceipt, Trigger } from '../types.ts';
import type {
  AuditEntry,
  DecisionRecord,
  Disclosure,
  ErasureRecord,
  OutboxEntry,
  RuleOutcome,
  OutcomeObservation,
  ReplyPrompt,
  StaffTask,
  StoredDelivery,
  VideoLink,
  StoredFhirConsent,
  StoredMessage,
  SubjectState,
  WaitlistAppointment,
  WaitlistEntry,
  WaitlistOffer,
  WaitlistSlot,
} from './store.ts';

export const DUMP_FORMAT = 'carerelay-store';
export const DUMP_VERSION = 1;

/** A stored message with everything its row holds. */
export interface MessageRecord extends StoredMessage {
  kind: 'message';
  /** The bytes as received, base64. */
  raw: string;
  rawBytes?: number;
  /** Whether the row holds its (sender, control id) dedupe key (false for a replaced original, a released copy). */
  keyed: boolean;
  /** The raw-bytes quota account its whole bytes were counted under (InboundRecord.rawQuota). */
  rawQuota?: string;
}

export interface TriggerRecord {
  kind: 'trigger';
  trigger: Trigger;
  messageId: string;
  /** Epoch ms of its routing; 0: routed before routing times were kept; absent: not routed yet. */
  routedMs?: number;
  /** What routing did, rule by rule (RoutingExplanation.rules). */
  routing?: RuleOutcome[];
}

export interface SubjectStateRecord {
  kind: 'subjectState';
  state: SubjectState;
  /** The message whose commit set it. */
  messageId?: string;
}

export interface CursorRecord {
  kind: 'cursor';
  key: string;
  value: string;
}

export interface OutboxRecord extends OutboxEntry {
  kind: 'outbox';
}

/** A stored delivery as it is kept. */
export interface DeliveryRecord extends StoredDelivery {
  kind: 'delivery';
  /** Its place in "newest planned first". */
  seq: number;
}

export interface ReceiptRecord extends DeliveryReceipt {
  kind: 'receipt';
}

export interface HoldingRecord extends ContactHolding {
  kind: 'holding';
}

export interface AuditRecord extends AuditEntry {
  kind: 'audit';
}

export interface ConsentEventRecord extends ConsentEvent {
  kind: 'consentEvent';
  /** Outputs the entry is still to be pushed to (Store.unqueuedConsentMirrors). */
  mirrorTo?: string[];
}

export interface FhirConsentRecord extends StoredFhirConsent {
  kind: 'fhirConsent';
}

export interface PatientRecord {
  kind: 'patient';
  id: string;
  deceased: boolean;
  firstSeenMs: number;
  erasedAt?: string;
}

export interface ContactPointRecord {
  kind: 'contactPoint';
  address: string;
  patientId: string;
}

export interface PatientLinkRecord {
  kind: 'patientLink';
  from: string;
  to: string;
}

export interface DecisionDumpRecord extends DecisionRecord {
  kind: 'decision';
}

export interface DisclosureRecord extends Disclosure {
  kind: 'disclosure';
}

export interface InboundEventRecord {
  kind: 'inboundEvent';
  key: string;
  at: string;
}

export interface ErasureDumpRecord extends ErasureRecord {
  kind: 'erasure';
}

/** A kept video join URL (store.ts StoredVideoJoin), sealed as stored. */
export interface VideoJoinRecord {
  kind: 'videoJoin';
  appointmentId: string;
  patientId: string;
  asOf: string;
  keyId: string;
  /** The sealed bytes, base64. */
  sealed: string;
  /** The message that gave it. */
  messageId?: string;
}

export interface VideoLinkRecord extends VideoLink {
  kind: 'videoLink';
}

export interface OutcomeLinkRecord {
  kind: 'outcomeLink';
  appointmentId: string;
}

export interface OutcomeRecord extends OutcomeObservation {
  kind: 'outcome';
  appointmentId: string;
}

export interface ReplyPromptRecord {
  kind: 'replyPrompt';
  /** As stored: its answer once answered. */
  prompt: ReplyPrompt;
}

export interface StaffTaskRecord {
  kind: 'staffTask';
  task: StaffTask;
}

/** A freed slot as the store keeps it (its state and claim included). */
export interface WaitlistSlotRecord {
  kind: 'waitlistSlot';
  slot: WaitlistSlot;
}

/** One offer of a slot. */
export interface WaitlistOfferRecord {
  kind: 'waitlistOffer';
  offer: WaitlistOffer;
}

/** An entry of the later-appointments index. */
export interface WaitlistAppointmentRecord {
  kind: 'waitlistAppointment';
  appointment: WaitlistAppointment;
}

/** An entry of the EHR's waitlist (an appointment in status waitlist). */
export interface WaitlistEntryRecord {
  kind: 'waitlistEntry';
  entry: WaitlistEntry;
}

export type DumpRecord =
  | MessageRecord
  | TriggerRecord
  | SubjectStateRecord
  | CursorRecord
  | OutboxRecord
  | DeliveryRecord
  | ReceiptRecord
  | HoldingRecord
  | AuditRecord
  | ConsentEventRecord
  | FhirConsentRecord
  | PatientRecord
  | ContactPointRecord
  | PatientLinkRecord
  | DecisionDumpRecord
  | DisclosureRecord
  | InboundEventRecord
  | ErasureDumpRecord
  | VideoJoinRecord
  | VideoLinkRecord
  | OutcomeLinkRecord
  | OutcomeRecord
  | ReplyPromptRecord
  | StaffTaskRecord
  | WaitlistSlotRecord
  | WaitlistOfferRecord
  | WaitlistAppointmentRecord
  | WaitlistEntryRecord;

export type DumpKind = DumpRecord['kind'];

/** The kinds in file order: a record only refers to records of kinds before it (or of its own, earlier). */
export const KINDS: readonly DumpKind[] = [
  'message',
  'trigger',
  'subjectState',
  'cursor',
  'outbox',
  'delivery',
  'receipt',
  'holding',
  'audit',
  'consentEvent',
  'fhirConsent',
  'patient',
  'contactPoint',
  'patientLink',
  'decision',
  'disclosure',
  'inboundEvent',
  'erasure',
  'videoJoin',
  'videoLink',
  'replyPrompt',
  'staffTask',
  'outcomeLink',
  'outcome',
  // An offer names its slot (and triggers); the index names triggers.
  'waitlistSlot',
  'waitlistOffer',
  'waitlistAppointment',
  'waitlistEntry',
];

/** What a backend gives to export and takes to import. */
export interface DumpSource {
  /** Every record of the store, in KINDS order, each kind in the store's own order. */
  records(): AsyncIterable<DumpRecord>;
}

export interface DumpTarget {
  /** Throws when the store already holds data (an import goes into an empty store only). */
  assertEmpty(): Promise<void>;
  /** Writes every record, all or nothing; resolves with the count per kind. */
  load(records: AsyncIterable<DumpRecord>): Promise<Record<string, number>>;
}

/** Writes `source` to `out` as NDJSON (waiting when `out` is full); the count per kind. */
export async function writeDump(source: DumpSource, out: Writable): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  const write = async (line: string): Promise<void> => {
    if (!out.write(`${line}\n`)) await once(out, 'drain');
  };
  await write(JSON.stringify({ format: DUMP_FORMAT, version: DUMP_VERSION }));
  for await (const record of source.records()) {
    counts[record.kind] = (counts[record.kind] ?? 0) + 1;
    await write(JSON.stringify(record));
  }
  await write(JSON.stringify({ kind: 'end', counts }));
  return counts;
}

/** A dump file that cannot be imported: what is wrong and on which line. */
export class DumpError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(`line ${line}: ${message}`);
    this.name = 'DumpError';
  }
}

const KIND_ORDER = new Map(KINDS.map((k, i) => [k, i]));

/**
 * The records of an NDJSON dump, checked as they stream: the header, known kinds in KINDS
 * order, and the trailer's counts (a file cut short, or with lines lost, throws before the last
 * record is handed on, so an import that stops there commits nothing).
 */
export async function* readDump(input: Readable): AsyncGenerator<DumpRecord> {
  const lines = createInterface({ input, crlfDelay: Infinity });
  let n = 0;
  let header = false;
  let last = -1;
  let ended = false;
  const counts: Record<string, number> = {};
  let pending: DumpRecord | undefined;
  for await (const text of lines) {
    n++;
    if (text.trim() === '') continue;
    if (ended) throw new DumpError(n, 'data after the end record: the file was joined with another; export again');
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new DumpError(n, 'not JSON: the file is damaged (every line of an export is one JSON object)');
    }
    if (!header) {
      const h = value as { format?: unknown; version?: unknown };
      if (h?.format !== DUMP_FORMAT) throw new DumpError(n, `not a CareRelay store export (the first line must be {"format":"${DUMP_FORMAT}",…}): make one with carerelay export`);
      if (h.version !== DUMP_VERSION) throw new DumpError(n, `export format version ${String(h.version)}; this CareRelay reads version ${DUMP_VERSION}: import it with the version that exported it, or a newer one`);
      header = true;
      continue;
    }
    const record = value as { kind?: unknown; counts?: unknown };
    if (record?.kind === 'end') {
      const expected = (record.counts ?? {}) as Record<string, unknown>;
      for (const kind of new Set([...Object.keys(expected), ...Object.keys(counts)])) {
        if ((expected[kind] ?? 0) !== (counts[kind] ?? 0)) {
          throw new DumpError(n, `the file holds ${counts[kind] ?? 0} ${kind} record(s) where the export wrote ${String(expected[kind] ?? 0)}: the file is damaged; export again`);
        }
      }
      ended = true;
      continue;
    }
    const order = typeof record?.kind === 'string' ? KIND_ORDER.get(record.kind as DumpKind) : undefined;
    if (order === undefined) throw new DumpError(n, `unknown record kind ${JSON.stringify(record?.kind)} (known: ${KINDS.join(', ')})`);
    if (order < last) throw new DumpError(n, `a ${String(record.kind)} record after ${KINDS[last]} records: records must come in the order carerelay export writes them`);
    last = order;
    counts[record.kind as string] = (counts[record.kind as string] ?? 0) + 1;
    // Handed on one behind, so the last record only goes once the trailer checked out.
    if (pending !== undefined) yield pending;
    pending = value as DumpRecord;
  }
  if (!header) throw new DumpError(n, 'the file is empty: make an export with carerelay export');
  if (!ended) throw new DumpError(n, 'the file ends before its end record: it was cut short (a full disk, an interrupted copy); export again');
  if (pending !== undefined) yield pending;
}
