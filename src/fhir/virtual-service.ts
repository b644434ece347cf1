// Video visits in FHIR (docs/video.md): whether an Appointment is held online, and the vendor's
// join URL. Pure. The URL is a credential to the visit: it is returned apart from the trigger
// (fhir/normalize.ts puts only `appointment.virtual` in it) and redactJoinUrls takes it out of
// the raw JSON a message is stored with.
//
// Where it is read, in this order — the first source with an https join URL wins; when none
// has one, the first source found still says "video visit, no join information":
//
// 1. R5 `Appointment.virtualService` (0..*, VirtualServiceDetail): `channelType` (Coding),
//    `address[x]` as addressUrl | addressString | addressContactPoint (system url) |
//    addressExtendedContactDetail (its telecom with system url).
// 2. R4: the cross-version extension EXT_APPOINTMENT_VIRTUAL_SERVICE (package
//    hl7.fhir.uv.xver-r5.r4). It is complex; its sub-extensions are named after the R5
//    elements: `channelType` (valueCoding) and `address`. The published versions disagree on
//    `address`: the 0.0.1 snapshots slice it as `address[x]` with valueUrl | valueString |
//    valueContactPoint, 0.1.0 makes it a complex extension over ExtendedContactDetail (with a
//    `_datatype` marker) whose `telecom` sub-extensions hold ContactPoints. Both are read, and
//    so are senders that name the slice `address[x]`, `addressUrl` or `addressString`.
// 3. A contained HealthcareService whose type reads "virtual meeting room" (a type's text or
//    a coding's display; case, spacing and hyphens ignored) — found by that type, never by its
//    place in `contained` — with its telecom of system `url`.
//
// Not read: additionalInfo (a page of instructions, not a join), maxParticipants, sessionKey
// (a vendor needing one gives it inside the join URL, which is all CareRelay redirects to).
import { joinUrl, REDACTED_JOIN_URL } from '../normalized-values.ts';
import type { TriggerVirtual } from '../types.ts';

/** Canonical URL of the R5 → R4 cross-version extension for Appointment.virtualService. */
export const EXT_APPOINTMENT_VIRTUAL_SERVICE = 'http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService';

/** Type of a contained HealthcareService that stands for the visit's virtual room (compared by normalizedLabel). */
export const VIRTUAL_MEETING_ROOM = 'virtual meeting room';

/** What an Appointment says about a video visit. */
export interface VirtualService {
  virtual: TriggerVirtual;
  /** The https join URL, when one was given. */
  url?: string;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function contactPointUrl(value: unknown): string | undefined {
  if (!isObject(value)) return undefined;
  // ContactPoint.system `url`; a sender that leaves the system out but gives an https value is read too.
  if (value.system !== undefined && value.system !== 'url') return undefined;
  return joinUrl(value.value);
}

function firstUrl(values: unknown[]): string | undefined {
  for (const v of values) {
    const url = contactPointUrl(v);
    if (url !== undefined) return url;
  }
  return undefined;
}

/** The code of a Coding (or of a CodeableConcept's first coding, tolerated). */
function codeOf(value: unknown): string | undefined {
  const coding = isObject(value) && Array.isArray(value.coding) ? value.coding.find(isObject) : value;
  return isObject(coding) && typeof coding.code === 'string' && coding.code.trim() !== '' ? coding.code.trim() : undefined;
}

function found(channel: string | undefined, url: string | undefined): VirtualService {
  return { virtual: { ...(channel !== undefined ? { channel } : {}), hasJoinInfo: url !== undefined }, ...(url !== undefined ? { url } : {}) };
}

/** R5 VirtualServiceDetail. */
function fromDetail(detail: Json): VirtualService {
  const url =
    joinUrl(detail.addressUrl) ??
    joinUrl(detail.addressString) ??
    contactPointUrl(detail.addressContactPoint) ??
    (isObject(detail.addressExtendedContactDetail) ? firstUrl(list(detail.addressExtendedContactDetail.telecom)) : undefined);
  return found(codeOf(detail.channelType), url);
}

const ADDRESS_SLICES = new Set(['address', 'address[x]', 'addressUrl', 'addressString', 'addressContactPoint']);

/** The cross-version extension (either published layout of its `address`). */
function fromExtension(extension: Json): VirtualService {
  let channel: string | undefined;
  let url: string | undefined;
  for (const sub of list(extension.extension)) {
    if (!isObject(sub) || typeof sub.url !== 'string') continue;
    if (sub.url === 'channelType') channel ??= codeOf(sub.valueCoding ?? sub.valueCodeableConcept);
    else if (ADDRESS_SLICES.has(sub.url) && url === undefined) {
      url = joinUrl(sub.valueUrl) ?? joinUrl(sub.valueUri) ?? joinUrl(sub.valueString) ?? contactPointUrl(sub.valueContactPoint);
      // 0.1.0: `address` is itself complex (ExtendedContactDetail): its `telecom` sub-extensions.
      if (url === undefined) {
        url = firstUrl(
          list(sub.extension)
            .filter((inner): inner is Json => isObject(inner) && inner.url === 'telecom')
            .map((inner) => inner.valueContactPoint),
        );
      }
    }
  }
  return found(channel, url);
}

/** "Virtual-Meeting  Room" → "virtual meeting room". */
function normalizedLabel(text: unknown): string | undefined {
  return typeof text === 'string' ? text.toLowerCase().replace(/[\s_-]+/g, ' ').trim() : undefined;
}

function isMeetingRoom(service: Json): boolean {
  for (const type of list(service.type)) {
    if (!isObject(type)) continue;
    if (normalizedLabel(type.text) === VIRTUAL_MEETING_ROOM) return true;
    if (list(type.coding).some((c) => isObject(c) && normalizedLabel(c.display) === VIRTUAL_MEETING_ROOM)) return true;
  }
  return false;
}

/**
 * What an Appointment says about a video visit, undefined when it says nothing (an
 * in-person visit). See the top of this file for the sources and their order.
 */
export function virtualServiceOf(appointment: Json): VirtualService | undefined {
  const candidates: VirtualService[] = [];
  for (const detail of list(appointment.virtualService)) if (isObject(detail)) candidates.push(fromDetail(detail));
  for (const ext of list(appointment.extension)) {
    if (isObject(ext) && ext.url === EXT_APPOINTMENT_VIRTUAL_SERVICE) candidates.push(fromExtension(ext));
  }
  for (const contained of list(appointment.contained)) {
    if (isObject(contained) && contained.resourceType === 'HealthcareService' && isMeetingRoom(contained)) {
      candidates.push(found(undefined, firstUrl(list(contained.telecom))));
    }
  }
  return candidates.find((c) => c.url !== undefined) ?? candidates[0];
}

/** A JSON string token: quotes and everything between them, escapes included. */
const JSON_STRING = /"(?:[^"\\\u0000-\u001f]|\\.)*"/g;

/**
 * The JSON text with every string that holds one of `urls` rewritten, the URL replaced by
 * REDACTED_JOIN_URL, and every other byte as it was. Strings are decoded before they are
 * compared, so an escaped form (`https:\/\/…`, `\u0026`) is found too. Keys are strings as
 * well; a key that holds a join URL is redacted like a value. Unchanged text comes back as is.
 */
export function redactJoinUrls(text: string, urls: readonly string[]): string {
  const secrets = urls.filter((u) => u !== '');
  if (secrets.length === 0) return text;
  return text.replace(JSON_STRING, (token) => {
    let value: string;
    try {
      value = token.includes('\\') ? (JSON.parse(token) as string) : token.slice(1, -1);
    } catch {
      return token;
    }
    if (!secrets.some((s) => value.includes(s))) return token;
    let redacted = value;
    for (const s of secrets) redacted = redacted.split(s).join(REDACTED_JOIN_URL);
    return JSON.stringify(redacted);
  });
}

/** The stored bytes of a FHIR message (UTF-8 JSON) with its join URLs redacted (redactJoinUrls); `raw` itself when nothing changed. */
export function redactJoinUrlsIn(raw: Buffer, urls: readonly string[]): Buffer {
  if (urls.length === 0) return raw;
  const text = raw.toString('utf8');
  const redacted = redactJoinUrls(text, urls);
  return redacted === text ? raw : Buffer.from(redacted, 'utf8');
}
