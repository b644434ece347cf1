// Reading what a FHIR server POSTs to a subscriber endpoint.
//
// Three shapes arrive (docs/hl7-fhir.md "FHIR inputs"):
// - topic-based notifications: a Bundle whose entry[0] is the subscription status —
//   R4 Subscriptions Backport IG (Bundle.type `history`, entry[0] a `Parameters` profiled
//   as backport-subscription-status-r4), R4B (`history` + `SubscriptionStatus`) and R5
//   (`subscription-notification` + `SubscriptionStatus`);
// - an R4 criteria rest-hook: the changed resource itself;
// - an empty body (the subscriber is expected to search).
// Only the shape is read here; turning resources into triggers is normalize.ts.
import { PermanentError } from '../errors.ts';
import { decodeFhirJson, FhirEncodingError, parseFhirJson } from './json.ts';

/** Any FHIR resource as JSON. Only `resourceType` is guaranteed (checked on read). */
export interface FhirResource {
  resourceType: string;
  id?: string;
  meta?: {
    versionId?: string;
    lastUpdated?: string;
    security?: FhirCoding[];
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

export interface FhirCoding {
  system?: string;
  version?: string;
  code?: string;
  display?: string;
}

export const NotificationVersion = {
  R4Backport: 'r4-backport',
  R4B: 'r4b',
  R5: 'r5',
} as const;
export type NotificationVersion = (typeof NotificationVersion)[keyof typeof NotificationVersion];

/** SubscriptionStatus.type (R5 `subscription-notification-type`). */
export const NotificationType = {
  Handshake: 'handshake',
  Heartbeat: 'heartbeat',
  EventNotification: 'event-notification',
  QueryStatus: 'query-status',
  QueryEvent: 'query-event',
} as const;
export type NotificationType = (typeof NotificationType)[keyof typeof NotificationType];
const NOTIFICATION_TYPES: readonly string[] = Object.values(NotificationType);

/** SubscriptionStatus.status (R5 `subscription-status`; R4 Subscription.status plus R5's entered-in-error). */
export const SubscriptionStatusCode = {
  Requested: 'requested',
  Active: 'active',
  Error: 'error',
  Off: 'off',
  EnteredInError: 'entered-in-error',
} as const;
export type SubscriptionStatusCode =
  (typeof SubscriptionStatusCode)[keyof typeof SubscriptionStatusCode];
const SUBSCRIPTION_STATUSES: readonly string[] = Object.values(SubscriptionStatusCode);

/**
 * What the notification carries, deduced from the Bundle (the Subscription's declared
 * payload content is not repeated in the notification): no focus at all → `empty`; a focus
 * whose resource is in the Bundle → `full-resource`; focus references only → `id-only`.
 */
export const PayloadContent = {
  Empty: 'empty',
  IdOnly: 'id-only',
  FullResource: 'full-resource',
} as const;
export type PayloadContent = (typeof PayloadContent)[keyof typeof PayloadContent];

export interface NotificationEvent {
  /** Monotonic per subscription; gaps mean missed events (recover with $events / search). */
  eventNumber: number;
  /** When the event happened (an instant with offset), when the server says so. */
  timestamp?: string;
  /** Reference to the resource the event is about; absent for `empty` payloads. */
  focus?: string;
  additionalContext: string[];
  /** US Core Patient Data Feed `trigger` parts (e.g. v2-0003|A01); R4 Backport only. */
  triggers?: FhirCoding[];
}

/** A topic-based notification (R4 Backport, R4B or R5). */
export interface TopicNotification {
  kind: 'topic';
  version: NotificationVersion;
  /** The Subscription reference as sent (often absolute: https://host/fhir/Subscription/x). */
  subscription: string;
  /** Topic canonical; may be absent (the Backport IG says SHOULD NOT for `empty` payloads). */
  topic?: string;
  /** Subscription status; required in the R4 Backport profile, optional in R4B/R5. */
  status?: SubscriptionStatusCode;
  type: NotificationType;
  /** Count of events since the subscription started (sent as a string: integer64). */
  eventsSinceSubscriptionStart?: number;
  events: NotificationEvent[];
  payload: PayloadContent;
  /** Bundle entries other than the status: fullUrl → resource, and also `Type/id` → resource. */
  resources: Map<string, FhirResource>;
  /** fullUrl (else request.url) of history entries that record a DELETE (no resource). */
  deleted: string[];
  /** Bundle.timestamp: last fallback for occurredAt (docs/trigger.md). */
  timestamp?: string;
  /** Subscription error codes (status `error`), when the server gives them. */
  errors?: FhirCoding[];
}

/** An R4 criteria rest-hook: the body is the changed resource itself. */
export interface ResourceNotification {
  kind: 'resource';
  resource: FhirResource;
  /** The resource under `Type/id` (and its contained resources are not expanded). */
  resources: Map<string, FhirResource>;
}

/** An empty body (criteria rest-hook with no payload): the subscriber searches. */
export interface EmptyNotification {
  kind: 'empty';
}

export type Notification = TopicNotification | ResourceNotification | EmptyNotification;

/** A body that is not a notification CareRelay can read. `path` says where (JSON-path-like). */
export class FhirNotificationError extends PermanentError {
  readonly path: string;

  constructor(path: string, problem: string) {
    super('fhir_notification_invalid', `${path}: ${problem}`);
    this.path = path;
  }
}

const BACKPORT_STATUS_PROFILE_HINT =
  'expected Parameters (R4 Subscriptions Backport) or SubscriptionStatus (R4B/R5)';

/**
 * Reads a POSTed FHIR body. `body` may be the parsed JSON (an object), a JSON text or the raw
 * bytes (strict UTF-8, prototype keys refused); undefined, null, an empty text/buffer or `{}`
 * count as an empty body. A JSON text holding a string, null, a number or an array is not.
 * Throws FhirNotificationError naming what is wrong and where.
 */
export function readNotification(body: unknown): Notification {
  const json = parseBody(body);
  if (json === undefined) return { kind: 'empty' };
  if (!isObject(json)) {
    throw new FhirNotificationError('body', `expected a JSON object (a FHIR resource), got ${describe(json)}`);
  }
  if (Object.keys(json).length === 0) return { kind: 'empty' };
  const resourceType = json.resourceType;
  if (typeof resourceType !== 'string' || resourceType === '') {
    throw new FhirNotificationError('resourceType', 'missing (the body is not a FHIR resource)');
  }
  if (resourceType !== 'Bundle') {
    const resource = json as FhirResource;
    const resources = new Map<string, FhirResource>();
    if (typeof resource.id === 'string') resources.set(`${resourceType}/${resource.id}`, resource);
    return { kind: 'resource', resource, resources };
  }
  return readBundle(json);
}

function readBundle(bundle: Record<string, unknown>): TopicNotification {
  const type = bundle.type;
  if (typeof type !== 'string') throw new FhirNotificationError('type', 'missing (Bundle.type)');
  if (type !== 'history' && type !== 'subscription-notification') {
    throw new FhirNotificationError(
      'type',
      `a Bundle of type '${type}' is not a subscription notification ` +
        `(expected 'history' for R4/R4B or 'subscription-notification' for R5)`,
    );
  }
  const entries = bundle.entry;
  if (!Array.isArray(entries) || entries.length === 0) {
    throw new FhirNotificationError('entry', 'missing (a notification Bundle has the subscription status as entry[0])');
  }
  const first = entries[0];
  if (!isObject(first) || !isObject(first.resource)) {
    throw new FhirNotificationError('entry[0].resource', `missing; ${BACKPORT_STATUS_PROFILE_HINT}`);
  }
  const statusResource = first.resource;
  const statusType = statusResource.resourceType;

  let status: StatusFields;
  let version: NotificationVersion;
  if (statusType === 'Parameters') {
    if (type !== 'history') {
      throw new FhirNotificationError(
        'entry[0].resource',
        `a Parameters status belongs in an R4 'history' Bundle, not '${type}' (R5 uses SubscriptionStatus)`,
      );
    }
    version = NotificationVersion.R4Backport;
    status = readParametersStatus(statusResource, 'entry[0].resource');
  } else if (statusType === 'SubscriptionStatus') {
    version = type === 'history' ? NotificationVersion.R4B : NotificationVersion.R5;
    status = readSubscriptionStatus(statusResource, 'entry[0].resource');
  } else {
    throw new FhirNotificationError(
      'entry[0].resource.resourceType',
      `'${String(statusType)}': ${BACKPORT_STATUS_PROFILE_HINT}`,
    );
  }

  const resources = new Map<string, FhirResource>();
  const deleted: string[] = [];
  for (let i = 1; i < entries.length; i++) {
    const entry: unknown = entries[i];
    const where = `entry[${i}]`;
    if (!isObject(entry)) throw new FhirNotificationError(where, `expected an object, got ${describe(entry)}`);
    const fullUrl = optionalString(entry.fullUrl, `${where}.fullUrl`);
    const request = isObject(entry.request) ? entry.request : undefined;
    if (entry.resource === undefined) {
      // id-only payloads list the focus as an entry with fullUrl + request and no resource;
      // a history entry with method DELETE records a deletion.
      if (request?.method === 'DELETE') {
        const url = fullUrl ?? (typeof request.url === 'string' ? request.url : undefined);
        if (url !== undefined) deleted.push(url);
      }
      continue;
    }
    if (!isObject(entry.resource) || typeof entry.resource.resourceType !== 'string') {
      throw new FhirNotificationError(`${where}.resource.resourceType`, 'missing');
    }
    const resource = entry.resource as FhirResource;
    if (fullUrl !== undefined) resources.set(fullUrl, resource);
    if (typeof resource.id === 'string') {
      const key = `${resource.resourceType}/${resource.id}`;
      if (!resources.has(key)) resources.set(key, resource);
    }
  }

  const notification: TopicNotification = {
    kind: 'topic',
    version,
    subscription: status.subscription,
    type: status.type,
    events: status.events,
    payload: PayloadContent.Empty,
    resources,
    deleted,
  };
  if (status.topic !== undefined) notification.topic = status.topic;
  if (status.status !== undefined) notification.status = status.status;
  if (status.eventsSinceSubscriptionStart !== undefined) {
    notification.eventsSinceSubscriptionStart = status.eventsSinceSubscriptionStart;
  }
  const timestamp = optionalString(bundle.timestamp, 'timestamp');
  if (timestamp !== undefined) notification.timestamp = timestamp;
  if (status.errors.length > 0) notification.errors = status.errors;
  notification.payload = deducePayload(notification);
  return notification;
}

function deducePayload(n: TopicNotification): PayloadContent {
  const focused = n.events.filter((e) => e.focus !== undefined);
  if (focused.length === 0) return PayloadContent.Empty;
  return focused.some((e) => resolveReference(n.resources, e.focus!) !== undefined)
    ? PayloadContent.FullResource
    : PayloadContent.IdOnly;
}

interface StatusFields {
  subscription: string;
  topic?: string;
  status?: SubscriptionStatusCode;
  type: NotificationType;
  eventsSinceSubscriptionStart?: number;
  events: NotificationEvent[];
  errors: FhirCoding[];
}

// --- R4 Backport: Parameters ------------------------------------------------------------

interface Param {
  name: string;
  [key: string]: unknown;
}

function readParametersStatus(params: Record<string, unknown>, where: string): StatusFields {
  if (!Array.isArray(params.parameter)) {
    throw new FhirNotificationError(`${where}.parameter`, 'missing (the subscription status parameters)');
  }
  const list = asParams(params.parameter, `${where}.parameter`);
  const one = (name: string): Param | undefined => {
    const found = list.filter((p) => p.name === name);
    if (found.length > 1) {
      throw new FhirNotificationError(`${where}.parameter[${name}]`, `appears ${found.length} times, expected at most once`);
    }
    return found[0];
  };
  const path = (name: string): string => `${where}.parameter[${name}]`;

  const subscriptionParam = one('subscription');
  if (!subscriptionParam) throw new FhirNotificationError(path('subscription'), 'missing');
  const subscription = referenceOf(subscriptionParam.valueReference, `${path('subscription')}.valueReference`);

  const topicParam = one('topic');
  const topic = topicParam
    ? requiredString(topicParam.valueCanonical ?? topicParam.valueUri, `${path('topic')}.valueCanonical`)
    : undefined;

  const statusParam = one('status');
  if (!statusParam) throw new FhirNotificationError(path('status'), 'missing');
  const status = codeIn(statusParam.valueCode, SUBSCRIPTION_STATUSES, `${path('status')}.valueCode`) as SubscriptionStatusCode;

  const typeParam = one('type');
  if (!typeParam) throw new FhirNotificationError(path('type'), 'missing');
  const type = codeIn(typeParam.valueCode, NOTIFICATION_TYPES, `${path('type')}.valueCode`) as NotificationType;

  const sinceParam = one('events-since-subscription-start');
  const eventsSinceSubscriptionStart = sinceParam
    ? eventCount(firstValue(sinceParam, ['valueString', 'valueInteger64', 'valueUnsignedInt', 'valueInteger']),
        `${path('events-since-subscription-start')}.valueString`)
    : undefined;

  const events: NotificationEvent[] = [];
  list.forEach((p, index) => {
    if (p.name !== 'notification-event') return;
    events.push(readParametersEvent(p, `${where}.parameter[${index}]`));
  });

  const errors: FhirCoding[] = [];
  for (const p of list) {
    if (p.name === 'error') errors.push(...codingsOf(p.valueCodeableConcept));
  }

  const out: StatusFields = { subscription, status, type, events, errors };
  if (topic !== undefined) out.topic = topic;
  if (eventsSinceSubscriptionStart !== undefined) out.eventsSinceSubscriptionStart = eventsSinceSubscriptionStart;
  return out;
}

function readParametersEvent(param: Param, where: string): NotificationEvent {
  const partsPath = `${where}.part`;
  if (!Array.isArray(param.part)) {
    throw new FhirNotificationError(partsPath, 'missing (notification-event needs at least event-number)');
  }
  const parts = asParams(param.part, partsPath);
  const named = (name: string): Param[] => parts.filter((p) => p.name === name);
  const single = (name: string): Param | undefined => {
    const found = named(name);
    if (found.length > 1) {
      throw new FhirNotificationError(`${partsPath}[${name}]`, `appears ${found.length} times, expected at most once`);
    }
    return found[0];
  };

  const numberPart = single('event-number');
  if (!numberPart) throw new FhirNotificationError(`${partsPath}[event-number]`, 'missing');
  const eventNumber = eventCount(
    firstValue(numberPart, ['valueString', 'valueInteger64', 'valueUnsignedInt', 'valueInteger', 'valuePositiveInt']),
    `${partsPath}[event-number].valueString`,
  );
  const event: NotificationEvent = { eventNumber, additionalContext: [] };

  const timestampPart = single('timestamp');
  if (timestampPart) {
    event.timestamp = instant(
      firstValue(timestampPart, ['valueInstant', 'valueDateTime']),
      `${partsPath}[timestamp].valueInstant`,
    );
  }
  const focusPart = single('focus');
  if (focusPart) event.focus = referenceOf(focusPart.valueReference, `${partsPath}[focus].valueReference`);
  for (const p of named('additional-context')) {
    event.additionalContext.push(referenceOf(p.valueReference, `${partsPath}[additional-context].valueReference`));
  }
  const triggers = named('trigger')
    .map((p) => p.valueCoding)
    .filter(isObject)
    .map((c) => toCoding(c));
  if (triggers.length > 0) event.triggers = triggers;
  return event;
}

function asParams(list: unknown[], where: string): Param[] {
  return list.map((p, i) => {
    if (!isObject(p) || typeof p.name !== 'string') {
      throw new FhirNotificationError(`${where}[${i}].name`, 'missing');
    }
    return p as Param;
  });
}

function firstValue(p: Param, keys: readonly string[]): unknown {
  for (const key of keys) if (p[key] !== undefined) return p[key];
  return undefined;
}

// --- R4B / R5: SubscriptionStatus -------------------------------------------------------

function readSubscriptionStatus(res: Record<string, unknown>, where: string): StatusFields {
  const subscription = referenceOf(res.subscription, `${where}.subscription`);
  const type = codeIn(res.type, NOTIFICATION_TYPES, `${where}.type`) as NotificationType;
  const out: StatusFields = { subscription, type, events: [], errors: [] };
  if (res.status !== undefined) {
    out.status = codeIn(res.status, SUBSCRIPTION_STATUSES, `${where}.status`) as SubscriptionStatusCode;
  }
  const topic = optionalString(res.topic, `${where}.topic`);
  if (topic !== undefined) out.topic = topic;
  if (res.eventsSinceSubscriptionStart !== undefined) {
    out.eventsSinceSubscriptionStart = eventCount(res.eventsSinceSubscriptionStart, `${where}.eventsSinceSubscriptionStart`);
  }
  if (res.notificationEvent !== undefined) {
    if (!Array.isArray(res.notificationEvent)) {
      throw new FhirNotificationError(`${where}.notificationEvent`, `expected an array, got ${describe(res.notificationEvent)}`);
    }
    res.notificationEvent.forEach((raw: unknown, i) => {
      const at = `${where}.notificationEvent[${i}]`;
      if (!isObject(raw)) throw new FhirNotificationError(at, `expected an object, got ${describe(raw)}`);
      if (raw.eventNumber === undefined) throw new FhirNotificationError(`${at}.eventNumber`, 'missing');
      const event: NotificationEvent = {
        eventNumber: eventCount(raw.eventNumber, `${at}.eventNumber`),
        additionalContext: [],
      };
      if (raw.timestamp !== undefined) event.timestamp = instant(raw.timestamp, `${at}.timestamp`);
      if (raw.focus !== undefined) event.focus = referenceOf(raw.focus, `${at}.focus`);
      if (raw.additionalContext !== undefined) {
        if (!Array.isArray(raw.additionalContext)) {
          throw new FhirNotificationError(`${at}.additionalContext`, 'expected an array of references');
        }
        raw.additionalContext.forEach((ref: unknown, j) => {
          event.additionalContext.push(referenceOf(ref, `${at}.additionalContext[${j}]`));
        });
      }
      out.events.push(event);
    });
  }
  if (Array.isArray(res.error)) {
    for (const concept of res.error) out.errors.push(...codingsOf(concept));
  }
  return out;
}

// --- references -------------------------------------------------------------------------

/**
 * Finds a referenced resource in a notification's resources: the exact fullUrl first, then
 * `Type/id` (a relative reference, an absolute one on another base, or one with /_history/).
 */
export function resolveReference(
  resources: Map<string, FhirResource>,
  reference: string,
): FhirResource | undefined {
  const exact = resources.get(reference);
  if (exact) return exact;
  // Only a relative reference may match by Type/id: an absolute one names its server, and a
  // resource of the same type and id from another server is another resource (another
  // patient). Absolute references resolve by their full URL only.
  if (/^[a-z][a-z0-9+.-]*:/i.test(reference)) return undefined;
  const parts = referenceParts(reference);
  return parts ? resources.get(`${parts.type}/${parts.id}`) : undefined;
}

/**
 * `Type` and `id` of a literal reference (`Patient/1`, `https://h/fhir/Patient/1`,
 * `Patient/1/_history/2`). Undefined for urn:uuid:, contained (`#x`) and malformed ones.
 */
export function referenceParts(reference: string): { type: string; id: string } | undefined {
  const withoutHistory = reference.replace(/\/_history\/[^/]+$/, '');
  const match = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/.exec(withoutHistory);
  return match && isFhirId(match[2]!) ? { type: match[1]!, id: match[2]! } : undefined;
}

/**
 * FHIR R4 §2.1.27.5 id: 1-64 of `A-Z a-z 0-9 - .`. The pattern lets `.` and `..` through,
 * but in a URL they are path segments that name another resource (`[base]/Patient/..` is
 * `[base]/`): never an id.
 */
export function isFhirId(value: string): boolean {
  return /^[A-Za-z0-9\-.]{1,64}$/.test(value) && value !== '.' && value !== '..';
}

/** `<subscription id>#<event number>`: FHIR source.messageId for topic notifications (docs/trigger.md). */
export function topicMessageId(subscription: string, eventNumber: number): string {
  const id = referenceParts(subscription)?.id ?? subscription;
  return `${id}#${eventNumber}`;
}

/**
 * The key a topic event is stored and deduplicated under, and its triggers' ids derive
 * from: topicMessageId in the subscription's first numbering (epoch 0), `<id>@<epoch>#<n>`
 * after the server restarted its event numbering (a re-created subscription, a server that
 * lost its counters), so that the new event n is not mistaken for the old one. '@' cannot
 * occur in a FHIR id.
 */
export function topicEventKey(subscription: string, eventNumber: number, epoch = 0): string {
  if (epoch === 0) return topicMessageId(subscription, eventNumber);
  const id = referenceParts(subscription)?.id ?? subscription;
  return `${id}@${epoch}#${eventNumber}`;
}

/**
 * The part of a multi-event notification Bundle that concerns one event: the status with
 * only this event, and the entries of its focus and context. Kept as that event's raw body.
 */
export function eventSlice(bundle: Record<string, unknown>, event: NotificationEvent): Buffer {
  const entries = Array.isArray(bundle.entry) ? (bundle.entry as Array<Record<string, unknown>>) : [];
  const [statusEntry, ...rest] = entries;
  const statusResource = { ...((statusEntry?.resource as Record<string, unknown> | undefined) ?? {}) };
  const numberOf = (value: unknown): number => Number(value);
  if (Array.isArray(statusResource.parameter)) {
    statusResource.parameter = (statusResource.parameter as Array<Record<string, unknown>>).filter((p) => {
      if (p?.name !== 'notification-event') return true;
      const parts = Array.isArray(p.part) ? (p.part as Array<Record<string, unknown>>) : [];
      const numberPart = parts.find((x) => x?.name === 'event-number');
      return numberOf(numberPart?.valueString ?? numberPart?.valueInteger64 ?? numberPart?.valueUnsignedInt ?? numberPart?.valueInteger) === event.eventNumber;
    });
  }
  if (Array.isArray(statusResource.notificationEvent)) {
    statusResource.notificationEvent = (statusResource.notificationEvent as Array<Record<string, unknown>>).filter(
      (e) => numberOf(e?.eventNumber) === event.eventNumber,
    );
  }
  const wanted = [event.focus, ...event.additionalContext]
    .filter((r): r is string => r !== undefined)
    .map((r) => referenceParts(r))
    .filter((p) => p !== undefined)
    .map((p) => `${p.type}/${p.id}`);
  const related = rest.filter((entry) => {
    const url = typeof entry?.fullUrl === 'string' ? entry.fullUrl : undefined;
    const parts = url ? referenceParts(url) : undefined;
    const resource = entry?.resource as FhirResource | undefined;
    const key = parts ? `${parts.type}/${parts.id}` : resource ? `${resource.resourceType}/${String(resource.id)}` : '';
    return wanted.includes(key);
  });
  return Buffer.from(
    JSON.stringify({
      resourceType: 'Bundle',
      type: bundle.type,
      ...(bundle.timestamp !== undefined ? { timestamp: bundle.timestamp } : {}),
      entry: [{ ...statusEntry, resource: statusResource }, ...related],
    }),
  );
}

// --- small readers ------------------------------------------------------------------------

function parseBody(body: unknown): unknown {
  if (body === undefined || body === null) return undefined;
  let text: string | undefined;
  if (typeof body === 'string') text = body.replace(/^\uFEFF/, '');
  else if (body instanceof Uint8Array) {
    try {
      text = decodeFhirJson(body);
    } catch (error) {
      if (error instanceof FhirEncodingError) throw new FhirNotificationError('body', error.message);
      throw error;
    }
  }
  if (text === undefined) return body;
  if (text.trim() === '') return undefined;
  try {
    // A JSON text that is a string or null is not a resource: the caller sees it as such
    // (never parsed a second time, never read as "no body").
    return parseFhirJson(text);
  } catch (error) {
    throw new FhirNotificationError('body', `not valid JSON (${(error as Error).message}); send application/fhir+json`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  return typeof value === 'string' ? 'a string' : `a ${typeof value}`;
}

function optionalString(value: unknown, where: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new FhirNotificationError(where, `expected a string, got ${describe(value)}`);
  return value;
}

function requiredString(value: unknown, where: string): string {
  if (value === undefined || value === '') throw new FhirNotificationError(where, 'missing');
  return optionalString(value, where)!;
}

function codeIn(value: unknown, allowed: readonly string[], where: string): string {
  const code = requiredString(value, where);
  if (!allowed.includes(code)) {
    throw new FhirNotificationError(where, `'${code}' is not one of ${allowed.join(' | ')}`);
  }
  return code;
}

function referenceOf(value: unknown, where: string): string {
  if (!isObject(value)) throw new FhirNotificationError(`${where}.reference`, 'missing');
  return requiredString(value.reference, `${where}.reference`);
}

/** Event numbers and counts are integer64, sent as strings in JSON (numbers tolerated). */
function eventCount(value: unknown, where: string): number {
  if (value === undefined) throw new FhirNotificationError(where, 'missing');
  const text = typeof value === 'number' ? String(value) : value;
  if (typeof text !== 'string' || !/^\d+$/.test(text.trim())) {
    throw new FhirNotificationError(where, `expected a non-negative integer, got ${typeof value === 'string' ? `'${value}'` : describe(value)}`);
  }
  const n = Number(text.trim());
  if (!Number.isSafeInteger(n)) throw new FhirNotificationError(where, `'${text}' is too large`);
  return n;
}

/** An instant with a time zone (FHIR `instant`), kept as sent. */
function instant(value: unknown, where: string): string {
  const text = requiredString(value, where);
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(text)) {
    throw new FhirNotificationError(where, `'${text}' is not a FHIR instant (YYYY-MM-DDThh:mm:ss[.s]+zz:zz)`);
  }
  return text;
}

function toCoding(c: Record<string, unknown>): FhirCoding {
  const coding: FhirCoding = {};
  if (typeof c.system === 'string') coding.system = c.system;
  if (typeof c.version === 'string') coding.version = c.version;
  if (typeof c.code === 'string') coding.code = c.code;
  if (typeof c.display === 'string') coding.display = c.display;
  return coding;
}

function codingsOf(concept: unknown): FhirCoding[] {
  if (!isObject(concept) || !Array.isArray(concept.coding)) return [];
  return concept.coding.filter(isObject).map(toCoding);
}
