// A FHIR JSON file read offline (`carerelay normalize`): what a server would POST (a topic
// notification, an R4 rest-hook resource), and also what people have at hand — a bare
// Appointment or Encounter from the spec or an EHR export, or a Bundle of them (collection,
// searchset, transaction, batch, history) with the resources they refer to.
//
// The HTTP endpoint does not use this: it takes notifications and rest-hook resources
// only (notification.ts); a searchset POSTed to it is refused.
import type { SubjectState } from '../store/store.ts';
import type { Trigger } from '../types.ts';
import { decodeFhirJson, FhirEncodingError, parseFhirJson } from './json.ts';
import { normalizeNotification } from './normalize.ts';
import { FhirNotificationError, readNotification, type FhirResource, type Notification } from './notification.ts';

/** Bundle.type values whose entries are resources to normalize (FHIR R4 bundle-type). */
export const RESOURCE_BUNDLE_TYPES: readonly string[] = ['collection', 'searchset', 'transaction', 'batch', 'history'];

/** Resource types that give one trigger each when found in a Bundle. */
const SUBJECT_TYPES = new Set(['Appointment', 'Encounter']);

export type FhirDocument =
  /** A topic notification, an R4 rest-hook resource or an empty body: read as a server would. */
  | { kind: 'notification'; notification: Notification }
  /**
   * A Bundle of resources: `subjects` are its Appointments and Encounters, in the order they
   * happened (a history Bundle lists the newest first: it is reversed); `resources` every
   * entry by fullUrl and by Type/id, to resolve references inside the Bundle.
   */
  | { kind: 'bundle'; bundleType: string; subjects: FhirResource[]; resources: Map<string, FhirResource> };

/**
 * Reads a FHIR JSON file: strict UTF-8, prototype keys refused. A `history` Bundle whose
 * first entry is a subscription status is a notification; any other Bundle of a type in
 * RESOURCE_BUNDLE_TYPES is a bundle of resources. Throws FhirNotificationError (what and where).
 */
export function readFhirDocument(bytes: Uint8Array): FhirDocument {
  let json: unknown;
  try {
    const text = decodeFhirJson(bytes);
    json = text.trim() === '' ? undefined : parseFhirJson(text);
  } catch (error) {
    if (error instanceof FhirEncodingError) throw new FhirNotificationError('body', error.message);
    throw new FhirNotificationError('body', `not valid JSON (${(error as Error).message})`);
  }
  if (!isObject(json) || json.resourceType !== 'Bundle' || isNotificationBundle(json)) {
    return { kind: 'notification', notification: readNotification(json) };
  }
  const type = json.type;
  if (typeof type !== 'string' || !RESOURCE_BUNDLE_TYPES.includes(type)) {
    throw new FhirNotificationError(
      'type',
      `a Bundle of type '${String(type)}' is not read here: give a subscription notification, a resource, ` +
        `or a Bundle of type ${RESOURCE_BUNDLE_TYPES.join(', ')}`,
    );
  }
  const resources = new Map<string, FhirResource>();
  const subjects: FhirResource[] = [];
  const entries = Array.isArray(json.entry) ? (json.entry as unknown[]) : [];
  entries.forEach((entry, i) => {
    if (!isObject(entry) || entry.resource === undefined) return; // a DELETE in a transaction or history
    if (!isObject(entry.resource) || typeof entry.resource.resourceType !== 'string') {
      throw new FhirNotificationError(`entry[${i}].resource.resourceType`, 'missing');
    }
    const resource = entry.resource as FhirResource;
    if (typeof entry.fullUrl === 'string') resources.set(entry.fullUrl, resource);
    if (typeof resource.id === 'string') {
      const key = `${resource.resourceType}/${resource.id}`;
      if (!resources.has(key)) resources.set(key, resource);
    }
    // An OperationOutcome of a searchset (search.mode outcome) or an _include is context only.
    const mode = isObject(entry.search) ? entry.search.mode : undefined;
    if (SUBJECT_TYPES.has(resource.resourceType) && (mode === undefined || mode === 'match')) subjects.push(resource);
  });
  // FHIR R4 §3.1.0.7 (history): "sorted with oldest versions last".
  if (type === 'history') subjects.reverse();
  return { kind: 'bundle', bundleType: type, subjects, resources };
}

/** A `history` or `subscription-notification` Bundle whose entry[0] is a subscription status. */
function isNotificationBundle(bundle: Record<string, unknown>): boolean {
  if (bundle.type === 'subscription-notification') return true;
  if (bundle.type !== 'history' || !Array.isArray(bundle.entry)) return false;
  const first = bundle.entry[0] as unknown;
  const type = isObject(first) && isObject(first.resource) ? first.resource.resourceType : undefined;
  return type === 'Parameters' || type === 'SubscriptionStatus';
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export interface DocumentNormalizeOptions {
  receivedAt: string;
  /** source.sender (the FHIR server's base URL when known). */
  sender: string;
  timezone?: string;
  /** Fetches what the file refers to and does not include (`--fhir-base`); absent: offline. */
  fetch?: (reference: string) => Promise<FhirResource>;
}

export interface DocumentNormalizeResult {
  triggers: Trigger[];
  /** References the file needs and does not include (offline, or not fetchable): no triggers then. */
  missing: string[];
}

/** Rounds of fetching at most: focus → its patient → a merged patient's survivor. */
const FETCH_ROUNDS = 3;

/**
 * The triggers a document gives: a notification as the server would read it, a Bundle as
 * one resource notification per Appointment/Encounter (states carried from one to the next,
 * references resolved inside the Bundle first). What is missing is fetched with `fetch`
 * when given (its errors propagate), else returned in `missing`.
 */
export async function normalizeFhirDocument(document: FhirDocument, options: DocumentNormalizeOptions): Promise<DocumentNormalizeResult> {
  const fetched = new Map<string, FhirResource>();
  for (let round = 0; ; round++) {
    const result = normalizeOnce(document, options, fetched);
    const fetchable = result.missing.filter((ref) => !ref.startsWith('#') && !/^urn:/i.test(ref));
    if (result.missing.length === 0 || options.fetch === undefined || fetchable.length < result.missing.length || round >= FETCH_ROUNDS) {
      return result;
    }
    for (const reference of fetchable) {
      const resource = await options.fetch(reference);
      fetched.set(reference, resource);
      if (typeof resource.id === 'string') fetched.set(`${resource.resourceType}/${resource.id}`, resource);
    }
  }
}

function normalizeOnce(document: FhirDocument, options: DocumentNormalizeOptions, fetched: Map<string, FhirResource>): DocumentNormalizeResult {
  const base = { receivedAt: options.receivedAt, sender: options.sender, fetched, ...(options.timezone !== undefined ? { timezone: options.timezone } : {}) };
  if (document.kind === 'notification') {
    const { triggers, missing } = normalizeNotification(document.notification, base);
    return { triggers: missing.length > 0 ? [] : triggers, missing };
  }
  const states = new Map<string, SubjectState>();
  const out: DocumentNormalizeResult = { triggers: [], missing: [] };
  for (const resource of document.subjects) {
    const result = normalizeNotification(
      { kind: 'resource', resource, resources: document.resources },
      { ...base, previous: (kind, id) => states.get(`${kind}/${id}`) },
    );
    out.missing.push(...result.missing);
    out.triggers.push(...result.triggers);
    for (const state of result.states) states.set(`${state.kind}/${state.id}`, state);
  }
  if (out.missing.length > 0) return { triggers: [], missing: [...new Set(out.missing)] };
  return out;
}
