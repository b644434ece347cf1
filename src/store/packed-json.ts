// JSON kept compressed in the embedded store. A trigger (about 900 bytes of JSON), a
// delivery (about 650) and a kept message repeat the same keys and shapes in every row; deflate with a preset
// dictionary of those shapes keeps a quarter of the bytes, for about 15 µs per row written
// and 7 µs per row read (measured on this project's shapes). Lists and filters never read
// this JSON: they use columns.
//
// Stored form: a BLOB whose first byte names the dictionary, then raw deflate. A TEXT value
// is plain JSON (rows written before, or any row a tool wrote by hand). A dictionary is never
// changed once released: a better one gets a new number, and every number stays readable.
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { formatAtOffset } from '../pipeline/schedule.ts';
import type { Trigger } from '../types.ts';

/** Typical content of each kind: keys, and values most rows share (deflate finds matches in it). */
const DICTIONARIES: Readonly<Record<number, Buffer>> = {
  // 1: triggers (docs/trigger.md).
  1: Buffer.from(
    '{"type":"appointment.booked","occurredAt":"","receivedAt":"","source":{"format":"hl7v2","sender":"","messageType":"SIU^S12","messageId":""},' +
      '"patient":{"id":"","identifiers":[{"value":"","system":"","type":"MR"}],"gender":"female","deceased":false,"language":"en",' +
      '"telecom":[{"system":"phone","use":"mobile","value":"+33"},{"system":"email","use":"home","value":"@example.org"}],' +
      '"name":{"family":"","given":[""]},"birthDate":"19"},"encounter":{"id":"","status":"in-progress","class":"AMB","start":"","end":"","location":{"id":"","name":""},"dischargeDisposition":""},' +
      '"appointment":{"id":"","placerId":"","status":"booked","start":"","end":"","durationMinutes":30,"previousStart":"",' +
      '"serviceType":{"code":"","display":"","system":""},"location":{"id":"","name":"","facility":""},"practitioner":{"id":"","name":""}},' +
      '"sensitivity":[]}T00:00:00+00:00T00:00:00+01:00T00:00:00+02:00:00.000Z"appointment.rescheduled""appointment.cancelled""encounter.finished"',
  ),
  // 2: deliveries (types.ts Delivery, as store/common.ts compactDeliveryJson writes it).
  2: Buffer.from(
    '{"subjectKind":"appointment","subjectId":"","step":0,"triggerId":"","triggerType":"appointment.booked","asOf":"","plannedAt":"","dueAt":"","expiresAt":"",' +
      '"purpose":"care.logistics","channel":"sms","output":"outbox-sms","template":"","to":"","payload":{"patient":{"language":"fr","name":{"given":[""]}},' +
      '"appointment":{"start":"","serviceType":{"display":""},"location":{"name":""}}},"k":["#","s","p","r","appointment.cancelled@","appointment.deleted@","appointment.noshow@"]}' +
      'T00:00:00+00:00T00:00:00+01:00T00:00:00+02:00"channel":"email","output":"outbox-email""encounter.cancelled@""encounter.discharge_cancelled@""care.followup"',
  ),
  // 3: the rendered parts of a kept message (outbox: subject, text, html).
  3: Buffer.from(
    '{"subject":"","text":"Hello ,\\n\\n","html":"<!DOCTYPE html><html><body><p>Hello ,</p>\\n<p></p>\\n<strong></strong><br><a href=\\"https://\\"></a></body></html>"}' +
      ' appointment rendez-vous your votre the le la de du at à on for pour is est booked confirmed confirmé reminder rappel please merci ' +
      'Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, January February March April May June July August September October November December ' +
      'lundi mardi mercredi jeudi vendredi samedi dimanche janvier février mars avril mai juin juillet août septembre octobre novembre décembre AM PM',
  ),
  // 4: routing explanations, as store/sqlite.ts packExplanation writes them.
  4: Buffer.from(
    '[["booking-confirmation","planned","@appointment/#0"],["sms-reminder-24h","planned","@appointment/#0","no_address"],' +
      '["email-reminder-7d","skipped",null,"condition_false","appointment.start gte occurredAt + 7d"],' +
      '["first-visit-welcome","skipped",null,"condition_false","appointment.serviceType.code in [NEWPAT, FIRSTVISIT]"],' +
      '["reminder","replanned","@encounter/#1","unchanged","same","stale","finished","not_found","cancelled","expired","revived","holdout","no_anchor"]]',
  ),
  // 5: a consent decision's notes (decisions.settings and .basis, workers/consent.ts #record):
  // the same policy settings and the same few sentences in nearly every row.
  5: Buffer.from(
    '{"region":"eu","policyVersion":"","zone":"Europe/Paris","default":"deny","quietHours":{"start":"08:00","end":"21:00","channels":["sms","email"]},' +
      '"caps":[{"purpose":"survey","channel":"email","perDay":1,"perWeek":1}],"sensitiveWindowDays":90}' +
      'America/New_YorkAmerica/ChicagoAmerica/DenverAmerica/Los_Angeles "webhook" "crm" ' +
      'FHIR Consent : permit: deny: opt-out (fhir, ) (admin, ) (sms, ) (email-link, ) (import, ) (provider, ) at granted revoked opted out ' +
      'within  days of sensitive care (appointment/encounter/); shared address: the no-name variant ' +
      'no consent record; the eu default denies marketing by sms no consent record; the us default allows care.followup by sms ' +
      '{"region":"us","policyVersion":"1","zone":"UTC","default":"allow","quietHours":{"start":"08:00","end":"21:00","channels":["sms"]},"caps":[],"usExemptSms":{"perDay":1,"perWeek":3},"sensitiveWindowDays":90}' +
      'no consent record; the us default allows care.logistics by email',
  ),
  // 6: the ACK answered to a message (messages.ack: HL7v2 text, packed by packText).
  6: Buffer.from(
    'MSH|^~\\&|CARERELAY|CR|||20260101000000+0000||ACK^A01^ACK|CR0000000000000000|P|2.3|||AL|NE\rMSA|AE|\rERR|||207^Application internal error^HL70357|E||\r' +
      'MSA|AR|\rERR|||101^Required field missing^HL70357|E||\rMSA|CA|\rMSA|CE|\rMSA|CR|\r||ACK^A04^ACK|ACK^A08^ACK|ACK^O01^ACK|ACK^R01^ACK|' +
      'MSH|^~\\&|CARERELAY|CR|||20261206080352+0000||ACK^S12^ACK|CR|P|2.5.1\rMSA|AA|',
  ),
  // 7: an appointment or encounter state's data (subject_states.data: what the inputs compare
  // between two messages about one subject, and the sensitivity that sticks to an encounter).
  7: Buffer.from(
    '{"serviceType":"http://snomed.info/sct|","locationId":null,"practitionerId":null,"virtual":"video|true","sensitivity":["restricted","R","V","PSY","HIV","SUD","ETH","SDV"]}' +
      '{"serviceType":"LOCAL|","locationId":"","practitionerId":"DR-"}',
  ),
};

/** Dictionary of raw inbound messages: HL7v2 segments and FHIR notification JSON. */
const RAW_DICTIONARY = Buffer.from(
  '{"resourceType":"Bundle","type":"history","entry":[{"fullUrl":"","resource":{"resourceType":"Parameters","parameter":[{"name":"subscription","valueReference":{"reference":""}},' +
    '{"name":"topic","valueCanonical":""},{"name":"status","valueCode":"active"},{"name":"type","valueCode":"event-notification"},{"name":"notification-event","part":[{"name":"event-number","valueString":""},{"name":"focus","valueReference":{"reference":"Appointment/"}}]}]}},' +
    '{"resourceType":"Appointment","id":"","meta":{"versionId":"1"},"status":"booked","start":"","end":"","participant":[{"actor":{"reference":"Patient/"},"status":"accepted"},{"actor":{"reference":"Location/"},"status":"accepted"}]},' +
    '{"resourceType":"Patient","id":"","identifier":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"","value":""}],"name":[{"family":"","given":[""]}],"gender":"female","birthDate":"","telecom":[{"system":"phone","use":"mobile","value":""},{"system":"email","value":""}]}]}' +
    '\rEVN|\rPV1|1|O|\rPV2|\rNTE|1||\rAIG|1||\rAIP|1||\rAIL|1||\rAIS|1||\rRGS|1\rTQ1|1||||||\rPID|1||^^^^MR||^||19|F|||^^^^^^||^PRN^PH~^NET^Internet^|||||\rSCH|||||||^^||30|MIN|||||||||||||||Booked\rMSH|^~\\&|||CARERELAY||20||SIU^S12^SIU_S12||P|2.5.1|||AL|NE\r',
);

/**
 * zlib's output chunk: its default (16 KiB) is a fresh allocation per call, garbage a few bytes
 * later; what is packed here is a few hundred bytes, and a chunk under half of Buffer.poolSize
 * comes from the shared pool. Larger outputs take more chunks; the bytes are the same.
 */
const CHUNK = 2048;

export const PackedKind = {
  Trigger: 1,
  Delivery: 2,
  Message: 3,
  Explanation: 4,
  Decision: 5,
  Ack: 6,
  State: 7,
} as const;
export type PackedKind = (typeof PackedKind)[keyof typeof PackedKind];

/**
 * Kinds whose values recur row after row: a subject state's few coded fields (the same
 * service, location and practitioner for most bookings), a routing explanation that planned
 * nothing, a consent decision's policy settings and sentences. Their packed forms are kept
 * and handed out again, so a recurring value is deflated once: a deflate costs about 12 µs
 * whatever the size (zlib sets up its state for every call), which a Map look-up does not.
 */
const RECURRING: ReadonlySet<PackedKind> = new Set([PackedKind.Explanation, PackedKind.Decision, PackedKind.State]);
/** Values longer than this are seldom repeated; they are packed every time. */
const RECURRING_MAX_CHARS = 512;
/** Packed forms kept per kind; the map starts over when full (the recurring ones come back at once). */
const RECURRING_KEPT = 256;
const recentlyPacked = new Map<PackedKind, Map<string, Buffer>>([...RECURRING].map((kind) => [kind, new Map()]));

/** `value` as JSON, compressed with the dictionary of its kind (4: the dictionary holds the shipped rules' names). */
export function packJson(kind: PackedKind, value: unknown): Buffer {
  return packJsonText(kind, JSON.stringify(value));
}

/**
 * JSON text, compressed with the dictionary of its kind. The buffer of a recurring value is
 * shared between calls: bind it to a statement, never change its bytes.
 */
export function packJsonText(kind: PackedKind, json: string): Buffer {
  const recent = json.length <= RECURRING_MAX_CHARS ? recentlyPacked.get(kind) : undefined;
  let packed = recent?.get(json);
  if (packed !== undefined) return packed;
  packed = packText(kind, json);
  if (recent !== undefined) {
    if (recent.size >= RECURRING_KEPT) recent.clear();
    recent.set(json, packed);
  }
  return packed;
}

/** `text` compressed with the dictionary of its kind (read back with unpackJson). */
export function packText(kind: PackedKind, text: string): Buffer {
  return Buffer.concat([Buffer.of(kind), deflateRawSync(Buffer.from(text, 'utf8'), { dictionary: DICTIONARIES[kind]!, chunkSize: CHUNK })]);
}

/** The JSON text of a stored value (or the text packText packed): a packed BLOB, or plain text. */
export function unpackJson(stored: string | Buffer): string {
  if (typeof stored === 'string') return stored;
  const dictionary = DICTIONARIES[stored[0]!];
  if (dictionary === undefined) throw new Error(`stored JSON packed with unknown dictionary ${stored[0]}: written by a newer CareRelay`);
  return inflateRawSync(stored.subarray(1), { dictionary, chunkSize: CHUNK }).toString('utf8');
}

/**
 * A trigger's JSON as the embedded store keeps it: without its id, which the row's id column
 * holds (64 hex characters that do not compress); triggerOf puts it back, first.
 */
export function packTrigger(trigger: Trigger): Buffer {
  const { id: _id, ...rest } = trigger;
  return packJson(PackedKind.Trigger, rest);
}

/** A stored trigger (its row's id and JSON, packed or plain) as the trigger; rows written before packTrigger hold their id in the JSON too. */
export function triggerOf(id: string, json: string | Buffer): Trigger {
  const { id: _stored, ...rest } = JSON.parse(unpackJson(json)) as Trigger;
  return { id, ...rest } as Trigger;
}

/** Raw inbound bytes, compressed (lossless: the exact bytes come back). */
export function packRaw(raw: Buffer): Buffer {
  return deflateRawSync(raw, { dictionary: RAW_DICTIONARY, chunkSize: CHUNK });
}

export function unpackRaw(packed: Buffer): Buffer {
  return inflateRawSync(packed, { dictionary: RAW_DICTIONARY, chunkSize: CHUNK });
}

/** A SHA-256 in hex, as trigger ids are made. */
const SHA256_HEX = /^[0-9a-f]{64}$/;

/**
 * A message's trigger ids as messages.trigger_ids keeps them: 32 bytes each when every one is
 * a SHA-256 in hex (half the characters, and no JSON around them), else JSON text.
 */
export function packIds(ids: readonly string[]): string | Buffer {
  return ids.length > 0 && ids.every((id) => SHA256_HEX.test(id)) ? Buffer.from(ids.join(''), 'hex') : JSON.stringify(ids);
}

/** Instants whose text can be spelled back (years 0002–9998: away from the edges of four-digit years at any offset). */
const SPELLABLE_MS = { min: -62_104_060_800_000, max: 253_370_764_800_000 } as const;
const OFFSET = /^([+-])(\d\d):(\d\d)$/;

/** The offset in minutes an `±HH:MM` text says, or undefined when it is not one. */
function offsetMinutes(text: string): number | undefined {
  const match = OFFSET.exec(text);
  return match === null ? undefined : (match[1] === '-' ? -1 : 1) * (Number(match[2]) * 60 + Number(match[3]));
}

/**
 * An instant's text as a column beside its milliseconds keeps it: only its offset (`+01:00`)
 * when it is `ms` in formatInstant's form at that offset (what routing writes), `Z` when it is
 * toISOString's form, else the text as given. unpackInstant spells it back exactly.
 */
export function packInstant(text: string, ms: number): string {
  if (!(ms >= SPELLABLE_MS.min && ms <= SPELLABLE_MS.max)) return text;
  if (text.endsWith('Z')) return new Date(ms).toISOString() === text ? 'Z' : text;
  const offset = offsetMinutes(text.slice(-6));
  return offset !== undefined && formatAtOffset(ms, offset) === text ? text.slice(-6) : text;
}

/** The text packInstant kept, given the same milliseconds. */
export function unpackInstant(stored: string, ms: number): string {
  if (stored === 'Z') return new Date(ms).toISOString();
  const offset = offsetMinutes(stored);
  return offset === undefined ? stored : formatAtOffset(ms, offset);
}

/** A content hash as messages.content_hash keeps it: 32 bytes for a SHA-256 in hex, else the text. */
export function packHash(hash: string): string | Buffer {
  return SHA256_HEX.test(hash) ? Buffer.from(hash, 'hex') : hash;
}

/** The hash packHash kept (or text written before). */
export function unpackHash(stored: string | Buffer): string {
  return typeof stored === 'string' ? stored : stored.toString('hex');
}

/** The ids packIds kept (or JSON text written before). */
export function unpackIds(stored: string | Buffer): string[] {
  if (typeof stored === 'string') return JSON.parse(stored) as string[];
  const ids: string[] = [];
  for (let at = 0; at < stored.length; at += 32) ids.push(stored.subarray(at, at + 32).toString('hex'));
  return ids;
}
