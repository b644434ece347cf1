// HL7v2 ingest: bytes in, ACK out — and the ACK only after the raw message, its status and
// its triggers are durably committed (docs/architecture.md invariant 1, docs/reliability.md 1-3).
//
//   parse ─▶ sender allowed? ─▶ MSH-10 present? ─▶ resend? ─▶ normalize ─▶ stored state
//         ─▶ commit (one transaction) ─▶ ACK
//
// Answers: AA accepted (or ignored: not a trigger type); AR refused for good (unparseable,
// MLLP block characters inside, no MSH-10 or MSH-9, SIU without appointment id…; the raw
// bytes are kept for review, within the quota of raw-quota.ts); AE when the sender may retry
// (commit failed, or a conflicting resend that was quarantined, within the same quota). In enhanced mode (MSH-15/16
// valued) the commit ACK codes CA/CR/CE are used and MSH-15 decides whether an accept ACK is
// sent at all. The ACK is encoded in the character set the message was read in (MSH-18).
import { createHash, randomBytes } from 'node:crypto';
import { AckCondition, buildAck, buildBatchAck, shouldSendAcceptAck, ackModeOf, type NotAcknowledged } from '../hl7v2/ack.ts';
import { encodableText, encodeHl7Text, ianaCharset } from '../hl7v2/charset.ts';
import { hasBlockCharacter } from '../hl7v2/escape.ts';
import { Hl7ParseError, Hl7ParseErrorCode, batchHeaderOf, parseHl7, parseHl7Batch, type Hl7Message } from '../hl7v2/parse.ts';
import { applyStoredState, hl7PatientId, normalizeHl7 } from '../inputs/hl7v2/normalize.ts';
import { AckSetting, isSenderAllowed } from '../inputs/hl7v2/spec.ts';
import { redactVirtualVisit, type VirtualVisitSetting } from '../inputs/hl7v2/virtual-visit.ts';
import { TransientError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { StaleAttemptError } from '../store/common.ts';
import type { CommitOutcome, InboundRecord, MessageAttempt, Store, SubjectState } from '../store/store.ts';
import { MessageStatus, type AckCode, type Trigger, type VideoJoin } from '../types.ts';
import { joinUrls, sealJoins, type JoinVault } from '../video/seal.ts';
import { rawQuotaFor, type RejectedRawLimits } from './raw-quota.ts';

/** Per-input settings the ingest needs (from the connector config). */
export interface Hl7IngestSettings {
  input: string;
  /** IANA zone for HL7 times without an offset. */
  timezone: string;
  /** `accept`: AA and recorded as ignored; `reject`: AR. */
  unknownMessageTypes: 'accept' | 'reject';
  /** ACK code for a message missing a field a trigger needs. */
  missingFieldAck: 'AR' | 'AE';
  /**
   * `standard` (default): MSH-15 decides whether an enhanced-mode message gets its commit
   * ACK (NE never, ER on error, SU on success); `always`: every message gets one.
   */
  ackMode?: AckSetting;
  /**
   * mTLS: client-certificate CN → allowed senders ("EPIC^GHH", "EPIC^*"). When set and the
   * peer presented a certificate, a sender not listed for its CN is refused.
   */
  allowedSenders?: Readonly<Record<string, readonly string[]>>;
  /** Where this sender puts a video visit's join URL (docs/video.md); default: not read. */
  virtualVisit?: VirtualVisitSetting;
}

export interface Hl7Peer {
  /** Verified client-certificate CN (mutual TLS), if any. */
  certificateCN?: string;
  /** The peer's address (MLLP socket, HTTP client): whom a message without MSH is counted to. */
  remoteAddress?: string;
}

export interface Hl7IngestResult {
  /** ACK text to send back; undefined when MSH-15 says no accept ACK is wanted. */
  ack: string | undefined;
  /** The ACK as it goes on the wire: encoded in the message's character set (MSH-18). */
  ackBytes: Buffer | undefined;
  /** IANA name of that character set, for an HTTP Content-Type. */
  ackCharset: string;
  ackCode: AckCode;
  /** False when nothing could be committed: the caller must not claim success. */
  committed: boolean;
  /** Triggers newly committed by this call (empty for resends). */
  triggers: Trigger[];
  /** The stored message that answers (a single message only: not for batches). */
  messageId?: string;
}

export interface Hl7IngestDeps {
  store: Store;
  log: Logger;
  now?: () => Date;
  /** Called after a commit that created triggers (routing hooks in here). */
  onCommitted?: (triggers: Trigger[]) => void | Promise<void>;
  /** Bounds the raw bytes kept with rejected and quarantined messages; without it they are kept whole. */
  rejectedRaw?: RejectedRawLimits;
  /** Told of each resend answered with its stored ACK before any commit (metrics: workers/ops-events.ts). */
  onResend?: (resend: { input: string; messageType: string; ackCode: string }) => void;
  /** Seals video-visit join URLs for the store (docs/video.md); without it they are not kept. */
  video?: JoinVault;
}

/** A result before its ACK is encoded (handle() does that once, for the whole frame). */
type Answer = Omit<Hl7IngestResult, 'ackBytes' | 'ackCharset'>;

type Outcome = 'accept' | 'ignore' | 'reject' | 'retry';

const ACK_CODES: Record<'original' | 'enhanced', Record<'accept' | 'reject' | 'retry', AckCode>> = {
  original: { accept: 'AA', reject: 'AR', retry: 'AE' },
  enhanced: { accept: 'CA', reject: 'CR', retry: 'CE' },
};

/** HL7 table 0357 codes used in ERR-3. */
const ERR = {
  requiredFieldMissing: '101',
  dataTypeError: '102',
  unsupportedMessageType: '200',
  unknownKey: '204',
  duplicateKey: '205',
  internalError: '207',
} as const;

/**
 * When only the character set is wrong (an unknown MSH-18, or bytes that are not what MSH-18
 * declares), the header is still readable byte for byte: the AR can then echo MSH-10 in MSA-2
 * and address the sender, so the sender can match it. Undefined when there is no usable MSH.
 */
function headerOnly(raw: Buffer, error: Hl7ParseError): Hl7Message | undefined {
  if (error.code !== Hl7ParseErrorCode.UnknownCharset && error.code !== Hl7ParseErrorCode.BadEncoding) return undefined;
  try {
    const msg = parseHl7(raw.toString('latin1'));
    return msg.controlId === '' ? undefined : msg;
  } catch {
    return undefined;
  }
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

// ACK control ids: a random per-process prefix and a counter — unique without a random draw
// per message. 20 characters, the v2.5 length of MSH-10.
const ACK_ID_PREFIX = `CR${randomBytes(4).toString('hex')}`;
let ackCounter = 0;

function newAckControlId(): string {
  ackCounter = (ackCounter + 1) % 1e10;
  return `${ACK_ID_PREFIX}${ackCounter.toString().padStart(10, '0')}`;
}

function conflictMessage(controlId: string): string {
  return `MSH-10 ${controlId} was already used by this sender for a different message; this one is quarantined for review`;
}

/** Why a message is refused for its header alone (AR), with the ERR-3 code and ERR-2 location. */
interface Refusal {
  reason: string;
  text: string;
  errorCode: string;
  errorLocation?: string;
}

/**
 * Where the first MLLP block character (0x0B, 0x1C) of a message is, and which one; undefined
 * when there is none. The wire text is scanned, so an escaped \X1C\ (a valid HL7 way to
 * carry the byte in a value) is not one.
 */
function blockCharacterAt(msg: Hl7Message): { byte: string; segment: string; field?: number } | undefined {
  if (!hasBlockCharacter(msg.text)) return undefined;
  for (const segment of msg.segments) {
    const at = segment.raw.search(/[\x0b\x1c]/);
    if (at === -1) continue;
    const byte = segment.raw.charCodeAt(at) === 0x0b ? '0x0B' : '0x1C';
    if (at < 3 || !/^[A-Z0-9]{3}$/.test(segment.name)) return { byte, segment: 'a segment' };
    // Field number: separators before it (a header counts its MSH-1 separator as a field).
    const f = msg.delimiters.field;
    let field = 0;
    for (let i = segment.raw.indexOf(f); i !== -1 && i < at; i = segment.raw.indexOf(f, i + 1)) field++;
    const isHeader = segment.name === 'MSH' || segment.name === 'FHS' || segment.name === 'BHS';
    return { byte, segment: segment.name, field: isHeader ? field + 1 : field };
  }
  return { byte: msg.text.includes('\x0b') ? '0x0B' : '0x1C', segment: 'the message' };
}

/**
 * A header that cannot be accepted whatever the message holds: MLLP block characters inside
 * (not HL7 text, and an ACK echoing them could not be framed), a sender its client
 * certificate may not use, no MSH-10 (no dedupe possible), or no MSH-9 (required in every
 * v2.x version: without it nothing says what the message is, so it is refused rather than
 * recorded as an ignored type). Undefined when the header is usable.
 */
function headerRefusal(msg: Hl7Message, sender: string, controlId: string, senderRefused: boolean): Refusal | undefined {
  const blocked = blockCharacterAt(msg);
  if (blocked !== undefined) {
    const where = blocked.field === undefined ? blocked.segment : `${blocked.segment}-${blocked.field}`;
    const c = msg.delimiters.component;
    return {
      reason: 'mllp_block_character',
      text: `MLLP block character ${blocked.byte} in ${where} is not valid HL7 text; remove it and resend`,
      errorCode: ERR.dataTypeError,
      ...(blocked.field !== undefined && !hasBlockCharacter(c) ? { errorLocation: `${blocked.segment}${c}1${c}${blocked.field}` } : {}),
    };
  }
  if (senderRefused) {
    return { reason: 'sender_not_allowed', text: `sender ${sender} is not allowed for the client certificate presented`, errorCode: ERR.unknownKey };
  }
  if (controlId === '') {
    return {
      reason: 'missing_control_id',
      text: 'MSH-10 (message control id) is empty: the message cannot be deduplicated; resend it with a unique MSH-10',
      errorCode: ERR.requiredFieldMissing,
      errorLocation: mshLocation(msg, 10),
    };
  }
  if (msg.get('MSH-9.1') === '') {
    return {
      reason: 'missing_message_type',
      text: 'MSH-9 (message type) is empty: resend the message with its type and trigger event, e.g. SIU^S12',
      errorCode: ERR.requiredFieldMissing,
      errorLocation: mshLocation(msg, 9),
    };
  }
  return undefined;
}

/** Why a message of a batch got no ACK: what its MSH-15 asked, and what became of it. */
function unacknowledgedWhy(msg: Hl7Message, code: AckCode): string {
  const { accept } = ackModeOf(msg);
  const accepted = code === 'AA' || code === 'CA';
  switch (accept) {
    case AckCondition.Never:
      return 'MSH-15 NE';
    case AckCondition.ErrorOnly:
      return `MSH-15 ER, ${accepted ? 'accepted' : code}`;
    case AckCondition.SuccessOnly:
      return `MSH-15 SU, ${accepted ? 'accepted' : `not accepted: ${code}`}`;
    case AckCondition.Always:
      return `MSH-15 AL, ${code}`;
    default:
      accept satisfies never;
      return code;
  }
}

/** ERR-2 (ERL) of an MSH field: segment ^ sequence ^ field, in the message's own delimiters. */
function mshLocation(msg: Hl7Message, field: number): string {
  const c = msg.delimiters.component;
  return `MSH${c}1${c}${field}`;
}

function senderOf(msg: Hl7Message): string {
  return `${msg.get('MSH-3.1')}^${msg.get('MSH-4.1')}`;
}

/**
 * buildAck, as the ACK will read once encoded in `charset` (characters the set cannot carry,
 * in our own text, become "?"): the ACK stored is then the ACK sent.
 */
function ackIn(charset: string, original: Hl7Message | undefined, options: Parameters<typeof buildAck>[1]): string {
  return encodableText(buildAck(original, options), charset);
}

/** The ACK text of a result, encoded in `charset` (an HL7 character set name). */
function encoded(answer: Answer, charset: string): Hl7IngestResult {
  return {
    ...answer,
    ackBytes: answer.ack === undefined ? undefined : encodeHl7Text(answer.ack, charset),
    ackCharset: ianaCharset(charset),
  };
}

export class Hl7Ingest {
  private readonly now: () => Date;

  constructor(private readonly deps: Hl7IngestDeps) {
    this.now = deps.now ?? (() => new Date());
  }

  /**
   * Ingests one MLLP frame or HTTP body. An FHS/BHS batch is answered with a batch (BHS, one
   * ACK per inner message that wants one, BTS naming those that do not); it counts as
   * committed only if every message was.
   */
  async handle(raw: Buffer, settings: Hl7IngestSettings, peer: Hl7Peer = {}): Promise<Hl7IngestResult> {
    let messages: Hl7Message[];
    let batch;
    try {
      messages = parseHl7Batch(raw);
      batch = batchHeaderOf(raw);
    } catch (error) {
      if (!(error instanceof Hl7ParseError)) throw error;
      return this.refuseUnparseable(raw, settings, error, { peer });
    }
    if (messages.length === 0) {
      // A batch envelope with no MSH inside: nothing to acknowledge message by message.
      return this.refuseUnparseable(raw, settings, new Hl7ParseError(Hl7ParseErrorCode.NoMsh, 'the batch holds no message (no MSH segment)'), { peer });
    }
    // One decoding for the whole frame (a batch shares its first header's MSH-18).
    const charset = messages[0]!.charset;
    if (batch === undefined) return encoded(await this.handleMessage(messages[0]!, raw, settings, peer), charset);
    const results: Answer[] = [];
    for (const msg of messages) {
      // A batch of one keeps its frame as it came; each message of a larger batch keeps its own text.
      results.push(await this.handleMessage(msg, messages.length === 1 ? raw : Buffer.from(msg.text, 'utf8'), settings, peer));
    }
    const notAcknowledged: NotAcknowledged[] = [];
    results.forEach((r, i) => {
      if (r.ack === undefined) notAcknowledged.push({ controlId: messages[i]!.controlId, why: unacknowledgedWhy(messages[i]!, r.ackCode) });
    });
    const worst = results.find((r) => !r.committed) ?? results.find((r) => r.ackCode !== 'AA' && r.ackCode !== 'CA');
    const batchAck = buildBatchAck(batch, {
      acks: results.map((r) => r.ack).filter((a): a is string => a !== undefined),
      notAcknowledged,
      messageCount: messages.length,
      controlId: newAckControlId(),
      now: this.now(),
    });
    return encoded(
      {
        ack: encodableText(batchAck, charset),
        ackCode: worst?.ackCode ?? results[0]?.ackCode ?? 'AA',
        committed: results.every((r) => r.committed),
        triggers: results.flatMap((r) => r.triggers),
      },
      charset,
    );
  }

  /**
   * An operator's new attempt at a stored message (reprocess a rejected one after a
   * configuration fix, release a quarantined copy after review): its stored bytes go through
   * the same steps with `settings` as they are now, without the resend look-up (the attempt
   * is never a duplicate of the message it replaces) and without the client-certificate
   * check (the peer is not stored; the original came through it). Nothing is sent to the
   * sender; the ACK is stored and answers a later resend. Throws StaleAttemptError when the
   * message is not (or no longer) one this attempt can replace.
   */
  async attempt(raw: Buffer, settings: Hl7IngestSettings, attempt: MessageAttempt): Promise<Hl7IngestResult> {
    let messages: Hl7Message[];
    try {
      messages = parseHl7Batch(raw);
    } catch (error) {
      if (!(error instanceof Hl7ParseError)) throw error;
      return this.refuseUnparseable(raw, settings, error, { attemptOf: attempt });
    }
    if (messages.length !== 1) {
      const error = new Hl7ParseError(Hl7ParseErrorCode.NoMsh, `the stored bytes hold ${messages.length} messages, not one`);
      return this.refuseUnparseable(raw, settings, error, { attemptOf: attempt });
    }
    return encoded(await this.handleMessage(messages[0]!, raw, settings, {}, attempt), messages[0]!.charset);
  }

  private async refuseUnparseable(
    raw: Buffer,
    settings: Hl7IngestSettings,
    error: Hl7ParseError,
    { peer = {}, attemptOf }: { peer?: Hl7Peer; attemptOf?: MessageAttempt },
  ): Promise<Hl7IngestResult> {
    const header = headerOnly(raw, error);
    // The header was read byte for byte (Latin-1): answered the same way, the fields the ACK
    // echoes are the sender's own bytes whatever MSH-18 says.
    const charset = header === undefined ? 'ASCII' : '8859/1';
    const ack = ackIn(charset, header, {
      // The declared set is what could not be read: the ACK does not claim it (it is Latin-1).
      charset: '',
      code: 'AR',
      text: error.message,
      errorCode: ERR.requiredFieldMissing,
      controlId: newAckControlId(),
      now: this.now(),
    });
    const record: InboundRecord = {
      input: settings.input,
      format: 'hl7v2',
      sender: '',
      controlId: '',
      messageType: '',
      contentHash: sha256(raw),
      raw,
      status: MessageStatus.Rejected,
      ack,
      ackCode: 'AR',
      reason: error.code,
      receivedAt: this.now().toISOString(),
      triggers: [],
      subjectStates: [],
      ...(attemptOf ? { attemptOf } : {}),
      ...(header !== undefined
        ? rawQuotaFor(this.deps.rejectedRaw, 'sender', senderOf(header))
        : rawQuotaFor(this.deps.rejectedRaw, 'peer', peer.certificateCN ?? peer.remoteAddress ?? settings.input)),
    };
    let committed;
    try {
      committed = await this.deps.store.commitInbound(record);
    } catch (commitError) {
      if (commitError instanceof StaleAttemptError) throw commitError;
      this.deps.log.error('ingest.commit_failed', { input: settings.input, reason: error.code });
      return encoded({ ack: undefined, ackCode: 'AE', committed: false, triggers: [] }, charset);
    }
    this.logRawCut(settings.input, committed);
    this.deps.log.warn('ingest.rejected', { input: settings.input, reason: error.code });
    return encoded({ ack, ackCode: 'AR', committed: true, triggers: [], messageId: committed.message.id }, charset);
  }

  /** Says when the store kept only the first bytes of a row (the raw-bytes quota, raw-quota.ts). */
  private logRawCut(input: string, committed: CommitOutcome): void {
    if (committed.outcome !== 'duplicate' && committed.rawBytes !== undefined) this.deps.log.warn('ingest.raw_truncated', { input, reason: 'rejected_raw_quota', count: committed.rawBytes });
  }

  private async handleMessage(msg: Hl7Message, raw: Buffer, settings: Hl7IngestSettings, peer: Hl7Peer, attemptOf?: MessageAttempt): Promise<Answer> {
    const { store, log } = this.deps;
    const receivedAt = this.now();
    const sender = senderOf(msg);
    const messageType = msg.messageType;
    // The message's own segments, CR-joined: the same message hashes the same whether it
    // came alone or in a batch, with LF or CR segment ends, under a new batch header.
    const contentHash = sha256(Buffer.from(msg.segments.map((seg) => seg.raw).join('\r'), 'utf8'));
    const mode = ackModeOf(msg);
    let conflicting = false;
    // A sender its client certificate may not use is refused before any look-up: it learns
    // nothing about stored control ids, and its record stays outside the dedupe key (an
    // empty control id) so it cannot take the real sender's MSH-10.
    const senderRefused =
      attemptOf === undefined && !isSenderAllowed(settings.allowedSenders, peer.certificateCN, msg.get('MSH-3.1'), msg.get('MSH-4.1'));
    // A message holding MLLP block characters stays outside the dedupe key too: its MSH-10
    // may hold one, and it is refused (headerRefusal) before any look-up.
    const controlId = senderRefused || hasBlockCharacter(msg.text) ? '' : msg.controlId;
    const logFields = { input: settings.input, sender, controlId, messageType };

    // A resend of exactly the same bytes gets the original ACK again and nothing new.
    if (controlId !== '' && attemptOf === undefined) {
      const previous = await this.findPrevious(sender, controlId, settings);
      if (previous === 'failed') return this.storeUnavailable(msg, mode);
      if (previous !== undefined && previous.contentHash === contentHash) {
        this.deps.onResend?.({ input: settings.input, messageType, ackCode: previous.ackCode });
        return {
          ack: previous.ack === '' ? undefined : previous.ack,
          ackCode: previous.ackCode as AckCode,
          committed: true,
          triggers: [],
          messageId: previous.id,
        };
      }
      if (previous !== undefined) conflicting = true;
    }

    let outcome: Outcome;
    let status: MessageStatus;
    let reason: string | undefined;
    let text: string | undefined;
    let errorCode: string | undefined;
    let errorLocation: string | undefined;
    let triggers: Trigger[] = [];
    let states: SubjectState[] = [];
    let joins: VideoJoin[] = [];

    const refusal = headerRefusal(msg, sender, controlId, senderRefused);
    if (conflicting) {
      // Same sender + MSH-10, different bytes: kept in quarantine for review, never dropped
      // silently and never turned into triggers. AE: the sender should fix MSH-10.
      outcome = 'retry';
      status = MessageStatus.Quarantined;
      reason = 'conflicting_resend';
      text = conflictMessage(controlId);
      errorCode = ERR.duplicateKey;
    } else if (refusal !== undefined) {
      outcome = 'reject';
      status = MessageStatus.Rejected;
      ({ reason, text, errorCode, errorLocation } = refusal);
    } else {
      let normalized;
      try {
        normalized = await this.normalize(msg, receivedAt, settings);
      } catch (error) {
        if (!(error instanceof TransientError)) throw error;
        // The stored-state look-ups failed: the store is unavailable, so nothing can be committed.
        log.error('ingest.store_unavailable', { input: settings.input });
        return this.storeUnavailable(msg, mode);
      }
      switch (normalized.kind) {
        case 'triggers':
          outcome = 'accept';
          status = MessageStatus.Accepted;
          triggers = normalized.triggers;
          states = normalized.states;
          joins = normalized.joins ?? [];
          break;
        case 'ignored':
          if (settings.unknownMessageTypes === 'reject' && normalized.reason.startsWith('unsupported')) {
            outcome = 'reject';
            status = MessageStatus.Rejected;
            errorCode = ERR.unsupportedMessageType;
            text = `message type ${messageType} is not accepted by this input`;
          } else {
            outcome = 'ignore';
            status = MessageStatus.Ignored;
          }
          reason = normalized.reason;
          break;
        case 'rejected':
          outcome = settings.missingFieldAck === 'AE' ? 'retry' : 'reject';
          status = MessageStatus.Rejected;
          reason = 'missing_field';
          text = normalized.reason;
          errorCode = ERR.requiredFieldMissing;
          break;
        default:
          normalized satisfies never;
          throw new Error('unreachable');
      }
    }

    const ackControlId = newAckControlId();
    const ackFor = (o: Outcome, t?: string, e?: string, at?: string): { code: AckCode; text: string | undefined } => {
      const code = ACK_CODES[mode.mode][o === 'ignore' ? 'accept' : o];
      const built = ackIn(msg.charset, msg, { code, text: t, errorCode: e, errorLocation: at, controlId: ackControlId, now: receivedAt });
      const wanted = settings.ackMode === AckSetting.Always || shouldSendAcceptAck(msg, o === 'accept' || o === 'ignore');
      return { code, text: wanted ? built : undefined };
    };
    const ack = ackFor(outcome, text, errorCode, errorLocation);
    // What a copy quarantined for reusing MSH-10 is answered (AE/CE, ERR 205).
    const conflictAck = () => ackFor('retry', conflictMessage(controlId), ERR.duplicateKey);

    const record: InboundRecord = {
      input: settings.input,
      format: 'hl7v2',
      sender,
      controlId,
      messageType,
      contentHash,
      raw,
      status,
      ack: ack.text ?? '',
      ackCode: ack.code,
      reason,
      receivedAt: receivedAt.toISOString(),
      triggers,
      subjectStates: states,
    };
    // A refused message has no trigger to say whose it is: searchable by the id it names.
    if (triggers.length === 0 && !senderRefused) {
      const patientId = hl7PatientId(msg);
      if (patientId !== undefined) record.patientId = patientId;
    }
    if (joins.length > 0) {
      // docs/video.md: the join URL is committed sealed, with the message, and the stored copy
      // of the message is redacted of it (the dedupe hash above is of the bytes as received).
      record.videoJoins = sealJoins(this.deps.video, joins);
      if (settings.virtualVisit !== undefined && joinUrls(joins).length > 0) record.raw = redactVirtualVisit(raw, msg, settings.virtualVisit);
    }
    if (attemptOf !== undefined) record.attemptOf = attemptOf;
    else if (controlId !== '' && !conflicting) {
      // A twin with other bytes may commit first (a parallel connection): then this copy is
      // quarantined, and the ACK stored with it is the AE/CE the sender gets.
      record.conflictAck = () => {
        const built = conflictAck();
        return { ack: built.text ?? '', ackCode: built.code };
      };
    }

    // Counted against the sender's raw-bytes quota if the store keeps it rejected or
    // quarantined (also a copy that raced its twin): the store decides in the commit.
    Object.assign(record, rawQuotaFor(this.deps.rejectedRaw, 'sender', sender));
    let committed;
    try {
      committed = await store.commitInbound(record);
    } catch (error) {
      if (error instanceof StaleAttemptError) throw error;
      log.error('ingest.commit_failed', logFields);
      return this.storeUnavailable(msg, mode);
    }
    this.logRawCut(settings.input, committed);

    switch (committed.outcome) {
      case 'stored':
        if (status === MessageStatus.Quarantined) log.warn('ingest.quarantined', { ...logFields, reason, messageId: committed.message.id });
        // An ignored message's reason names its type in words: log only the code.
        else if (status !== MessageStatus.Accepted) log.warn('ingest.not_accepted', { ...logFields, status, reason: status === MessageStatus.Ignored ? 'not_a_trigger' : reason });
        if (triggers.length > 0) await this.deps.onCommitted?.(triggers);
        return { ack: ack.text, ackCode: ack.code, committed: true, triggers, messageId: committed.message.id };
      case 'duplicate':
        // Lost a race with a parallel resend of the same bytes: answer what was stored.
        return {
          ack: committed.message.ack === '' ? undefined : committed.message.ack,
          ackCode: committed.message.ackCode as AckCode,
          committed: true,
          triggers: [],
          messageId: committed.message.id,
        };
      case 'conflict': {
        // Normally caught by the look-up above; a conflicting message that raced its twin
        // into the store is quarantined by the store, which stored the ACK to answer (the
        // record's conflictAck), or found the same conflicting bytes quarantined before.
        log.warn('ingest.quarantined', { ...logFields, reason: 'conflicting_resend', messageId: committed.message.id });
        const stored = committed.message;
        if (stored.ackCode !== 'AA' && stored.ackCode !== 'CA') {
          return { ack: stored.ack === '' ? undefined : stored.ack, ackCode: stored.ackCode as AckCode, committed: true, triggers: [], messageId: stored.id };
        }
        // A quarantined copy is never accepted: a row stored with an accept code (by an
        // earlier version, or a store that ignores conflictAck) is answered with the AE/CE.
        const retry = conflictAck();
        return { ack: retry.text, ackCode: retry.code, committed: true, triggers: [], messageId: stored.id };
      }
      default:
        committed satisfies never;
        throw new Error('unreachable');
    }
  }

  private async findPrevious(sender: string, controlId: string, settings: Hl7IngestSettings) {
    try {
      return await this.deps.store.findMessage(sender, controlId);
    } catch {
      this.deps.log.error('ingest.store_unavailable', { input: settings.input });
      return 'failed' as const;
    }
  }

  /**
   * Normalizes, then applies stored state: an S14 with a new start becomes `rescheduled`,
   * an A04/A10 may check the patient in to a stored appointment, encounter sensitivity sticks.
   * The look-ups are fetched first because the normalizer is pure.
   */
  private async normalize(msg: Hl7Message, receivedAt: Date, settings: Hl7IngestSettings) {
    const { store } = this.deps;
    const normalized = normalizeHl7(msg, {
      receivedAt: receivedAt.toISOString(),
      timezone: settings.timezone,
      ...(settings.virtualVisit !== undefined ? { virtualVisit: settings.virtualVisit } : {}),
    });
    if (normalized.kind !== 'triggers') return normalized;
    const appointments = new Map<string, SubjectState | undefined>();
    const encounters = new Map<string, SubjectState | undefined>();
    let patientAppointments: SubjectState[] = [];
    try {
      for (const t of normalized.triggers) {
        const appointmentId = t.appointment?.id;
        if (appointmentId !== undefined && !appointments.has(appointmentId)) {
          appointments.set(appointmentId, await store.getSubjectState('appointment', appointmentId));
        }
        const encounterId = t.encounter?.id;
        if (encounterId !== undefined && !encounters.has(encounterId)) {
          encounters.set(encounterId, await store.getSubjectState('encounter', encounterId));
        }
      }
      const arrival = normalized.arrival;
      if (arrival !== undefined) patientAppointments = await store.listSubjectStates('appointment', arrival.patientId);
    } catch (error) {
      throw new TransientError('store_unavailable', 'stored state could not be read', { cause: error });
    }
    return applyStoredState(normalized, {
      appointment: (id) => appointments.get(id),
      encounter: (id) => encounters.get(id),
      appointmentsOfPatient: () => patientAppointments,
    });
  }

  private storeUnavailable(msg: Hl7Message, mode: ReturnType<typeof ackModeOf>): Answer {
    // Never AA when nothing was committed. AE tells the sender to resend later.
    const code = ACK_CODES[mode.mode].retry;
    const ack = ackIn(msg.charset, msg, {
      code,
      text: 'temporary storage failure; resend later',
      errorCode: ERR.internalError,
      controlId: newAckControlId(),
      now: this.now(),
    });
    return { ack, ackCode: code, committed: false, triggers: [] };
  }
}
