// Config schema pieces every output type shares (docs/contributing.md habit 1): the instance
// name, the BAA declaration and the purposes it may carry (docs/consent.md rule 4), so each
// adapter documents them the same way.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema, SecretRef } from '../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../errors.ts';
import { AddressPolicy, isLoopbackUrl } from '../http/outbound.ts';
import { compilePath } from '../pipeline/conditions.ts';
import { PURPOSES, type Purpose } from '../types.ts';
import type { ConsentChannel, ToolConsentSignal } from './consent-sync.ts';
import type { ContactHoldingsLedger, OptOutScope, OutboundMessage, OutputDeps, SendContext } from './spec.ts';

export const outputNameSchema = {
  type: 'string',
  pattern: '^[a-z][a-z0-9-]*$',
  maxLength: 63,
  'x-hint': 'lower-case letters, digits and "-", starting with a letter',
  description: 'Unique name of this output; mapping rules name it in send.output.',
} as const satisfies JsonSchema;

/** `baa` of a provider outside CareRelay: false unless the configuration says a BAA/DPA is signed. */
export const providerBaaSchema = {
  type: 'boolean',
  default: false,
  description:
    'Set true only when a BAA/DPA covering this destination is signed: only then may it receive PHI (docs/consent.md ' +
    'rule 4; a rule that would send care fields to an output without it is refused at load).',
} as const satisfies JsonSchema;

export const allowedPurposesSchema = {
  type: 'array',
  items: { enum: [...PURPOSES] },
  uniqueItems: true,
  default: [...PURPOSES],
  description: `Purposes this output may carry (${PURPOSES.join(', ')}); a rule with another purpose is refused at load. Default: all.`,
} as const satisfies JsonSchema;

export const allowPrivateAddressesSchema = {
  type: 'array',
  default: [],
  uniqueItems: true,
  description:
    'Non-public addresses this output may connect to (IPs or CIDR blocks, e.g. 10.20.0.0/16 for an internal system, ' +
    '127.0.0.1 for a local relay). Private, loopback and link-local addresses are refused otherwise, checked on the ' +
    'addresses the host name resolves to.',
  items: { type: 'string', minLength: 2, maxLength: 49, description: 'An IPv4/IPv6 address or CIDR block.' },
} as const satisfies JsonSchema;

/**
 * Problems of a configured destination URL: not http(s), credentials in it, or plain http off
 * loopback without `allowInsecureHttp` (what is sent may be PHI or a secret).
 */
export function destinationUrlIssues(raw: string, at: readonly (string | number)[], allowInsecureHttp: boolean): InstanceCheckIssue[] {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return [{ path: at, message: `"${raw}" is not an absolute URL (expected https://host/path)` }];
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return [{ path: at, message: `must be an http(s) URL, got ${url.protocol}` }];
  if (url.username !== '' || url.password !== '') return [{ path: at, message: 'must not carry credentials; give secrets by reference' }];
  if (url.protocol === 'http:' && !allowInsecureHttp && !isLoopbackUrl(url)) {
    return [{ path: at, message: 'plain http is only for loopback addresses: use https, or set allowInsecureHttp: true for a lab' }];
  }
  return [];
}

/** Problems of an allow-list of addresses (each must be an IP or a CIDR block). */
export function allowListIssues(entries: readonly string[], at: readonly (string | number)[]): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  entries.forEach((entry, i) => {
    try {
      new AddressPolicy([entry]);
    } catch (error) {
      issues.push({ path: [...at, i], message: (error as Error).message });
    }
  });
  return issues;
}

/**
 * The unsubscribe headers of a non-care email (RFC 2369 List-Unsubscribe, RFC 8058 one-click),
 * from the message's links; undefined for care email or without links. `UnsubscribeMissing`
 * is refused first when links are required and absent.
 */
export function listUnsubscribeHeaders(message: OutboundMessage, required: boolean, missingCode: string): Record<string, string> | undefined {
  const care = message.purpose.startsWith('care.');
  if (!care && message.unsubscribe === undefined && required) {
    throw new PermanentError(missingCode, `delivery ${message.deliveryId} (${message.purpose}) has no unsubscribe link; non-care email needs one`);
  }
  if (care || message.unsubscribe === undefined) return undefined;
  const links = [`<${message.unsubscribe.url}>`, ...(message.unsubscribe.mailto ? [`<${message.unsubscribe.mailto}>`] : [])];
  return { 'List-Unsubscribe': links.join(', '), 'List-Unsubscribe-Post': 'List-Unsubscribe=One-Click' };
}

// ---------------------------------------------------------------------------------------
// What the marketing and CRM outputs share (hubspot, mailchimp, brevo, activecampaign).

/** Failure reasons of a provider's answer (suffixes of `<type>_…`, safe to log). */
export const ProviderFailure = {
  /** 429, or the provider's own way of saying "slow down". */
  RateLimited: 'rate_limited',
  /** 408, 502, 503, 504 (and the provider's own "try later"): not processed. */
  Unavailable: 'unavailable',
  /** Another 5xx: the provider may have acted on the call. */
  ServerError: 'server_error',
  /** 401: the credentials are wrong or revoked. */
  Unauthorized: 'unauthorized',
  /** 403: the credentials lack a permission (scope). */
  Forbidden: 'forbidden',
  /** 404: the list, event or contact named does not exist at the provider. */
  NotFound: 'not_found',
  /** 3xx: not followed to another host. */
  Redirect: 'redirect_refused',
  /** Any other refusal of the call as it is. */
  Rejected: 'rejected',
  /** The rule gave no address for the contact (send.to). */
  NoContact: 'no_contact',
} as const;

/** A classified error for a provider's non-2xx answer; `what` names the call (no body, no address). */
export function providerFailure(type: string, status: number, what: string, retryAfterMs: number | undefined): Error {
  const code = (reason: string) => `${type}_${reason}`;
  const text = `${what}: HTTP ${status}`;
  if (status === 429) return new RateLimitedError(code(ProviderFailure.RateLimited), text, { retryAfterMs });
  if (status === 408 || status === 502 || status === 503 || status === 504) return new TransientError(code(ProviderFailure.Unavailable), text, { retryAfterMs });
  if (status >= 500) return new AmbiguousError(code(ProviderFailure.ServerError), `${text}; the provider may have acted on it`);
  if (status >= 300 && status < 400) return new PermanentError(code(ProviderFailure.Redirect), `${text} (a redirect, not followed): check the API base URL`);
  if (status === 401) return new PermanentError(code(ProviderFailure.Unauthorized), `${text}: check the credentials`);
  if (status === 403) return new PermanentError(code(ProviderFailure.Forbidden), `${text}: the credentials lack a permission this call needs`);
  if (status === 404) return new PermanentError(code(ProviderFailure.NotFound), `${text}: what the call names does not exist there`);
  return new PermanentError(code(ProviderFailure.Rejected), text);
}

/** A CRM output's map from CareRelay fields (trigger paths the rule's send.fields names) to the tool's property names. */
export type PropertyMap = Readonly<Record<string, string>>;

/** The `properties` config of a CRM output; `target` describes the tool's names. */
export function propertiesSchema(description: string, target: { pattern: string; hint: string }): JsonSchema {
  return {
    type: 'object',
    default: {},
    description:
      `${description} Keys are CareRelay fields (trigger paths, e.g. patient.name.given), values the tool's names. A rule may ` +
      'send only fields listed here (checked at load); nothing else of the trigger leaves.',
    propertyNames: { pattern: '^[A-Za-z][A-Za-z0-9_]*(\\.[A-Za-z][A-Za-z0-9_]*)*$' },
    additionalProperties: { type: 'string', pattern: target.pattern, 'x-hint': target.hint, description: "The tool's property name." },
  };
}

/** Problems of a property map: a key that is not a trigger path, two fields sent to one property. */
export function propertyMapIssues(map: PropertyMap, at: readonly (string | number)[]): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const seen = new Map<string, string>();
  for (const [field, target] of Object.entries(map)) {
    const path = compilePath(field);
    if (typeof path === 'string') issues.push({ path: [...at, field], atKey: true, message: path });
    const first = seen.get(target);
    if (first !== undefined) issues.push({ path: [...at, field], message: `${field} and ${first} both go to "${target}": one field per property` });
    else seen.set(target, field);
  }
  return issues;
}

/** A field of the delivery's payload by its dotted path (`patient.name.given`). */
export function fieldValue(fields: Readonly<Record<string, unknown>> | undefined, path: string): unknown {
  let value: unknown = fields;
  for (const part of path.split('.')) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

/** A field as the text a tool property takes: lists joined by spaces, a name as "given family"; undefined when empty or not text. */
export function fieldText(value: unknown): string | undefined {
  let text: string | undefined;
  if (typeof value === 'string') text = value;
  else if (typeof value === 'number' || typeof value === 'boolean') text = String(value);
  else if (Array.isArray(value)) text = value.filter((v) => typeof v === 'string').join(' ');
  else if (typeof value === 'object' && value !== null) {
    const { given, family } = value as { given?: unknown; family?: unknown };
    text = [fieldText(given), fieldText(family)].filter((v) => v !== undefined).join(' ');
  }
  const trimmed = text?.trim();
  return trimmed === undefined || trimmed === '' ? undefined : trimmed;
}

/** The mapped fields as tool properties (fields without a value are left out). */
export function mappedProperties(fields: Readonly<Record<string, unknown>> | undefined, map: PropertyMap): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [field, target] of Object.entries(map)) {
    const text = fieldText(fieldValue(fields, field));
    if (text !== undefined) out[target] = text;
  }
  return out;
}

// RFC 9562 §5.5 name-based UUID (SHA-1), in a namespace of CareRelay's own.
const DELIVERY_NAMESPACE = Buffer.from('6f0d3c2e8a4b4e1f9c7a5d2b1e0f3a4c', 'hex');

/**
 * A UUID that stands for a delivery at a provider (HubSpot's event uuid, Brevo's idempotencyKey):
 * the same on every attempt, and unlike the delivery id it says nothing about the rule or the
 * appointment it came from.
 */
export function deliveryUuid(deliveryId: string): string {
  const hash = createHash('sha1').update(DELIVERY_NAMESPACE).update(deliveryId, 'utf8').digest();
  hash[6] = (hash[6]! & 0x0f) | 0x50;
  hash[8] = (hash[8]! & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A secret reference as text (`env:NAME`, `file:PATH`): names an account in limit declarations without reading the secret. */
export function secretRefKey(ref: SecretRef): string {
  return 'env' in ref ? `env:${ref.env}` : `file:${ref.file}`;
}

/** How a tool knows a contact: a lower-cased email address, or a phone number (digits, leading +). */
export function contactKeyOf(address: string): string {
  const trimmed = address.trim();
  return trimmed.includes('@') ? trimmed.toLowerCase() : trimmed.replace(/[^\d+]/g, '');
}

/** The message's address as a contact key, or a PermanentError when the rule gave none. */
export function contactOf(type: string, message: OutboundMessage): string {
  const key = message.to === undefined ? '' : contactKeyOf(message.to);
  if (key === '') {
    throw new PermanentError(`${type}_${ProviderFailure.NoContact}`, `delivery ${message.deliveryId} has no address for the contact: the rule needs send.to (e.g. patient.telecom[system=email].value)`);
  }
  return key;
}

/**
 * Records that the output's tool holds this patient's contact, before the call that hands it
 * over (a crash after the tool took it cannot leave it unrecorded; a holding for a call that
 * then failed is harmless: optOut answers not_held). Nothing is sent when it cannot be recorded.
 * Called again with `toolId` once the tool answered with its own id of the contact (its
 * webhooks name the contact by it).
 */
export async function recordHolding(holdings: ContactHoldingsLedger, output: string, message: OutboundMessage, contactKey: string, now: Date, toolId?: string): Promise<void> {
  if (message.patientId === undefined || message.patientId === '') return;
  try {
    await holdings.recordContactHolding({ output, patientId: message.patientId, contactKey, firstSentAt: now.toISOString(), ...(toolId !== undefined ? { toolId } : {}) });
  } catch (error) {
    throw new TransientError('holdings_unavailable', `the contact of ${message.deliveryId} cannot be recorded; nothing sent`, { cause: error });
  }
}

/**
 * What every send of a CRM output does before its call: the contact's key from send.to, a signal
 * already aborted refused before anything is recorded, then the holding recorded.
 */
export async function beginContactSend(type: string, holdings: ContactHoldingsLedger, output: string, message: OutboundMessage, context: SendContext, now: Date): Promise<string> {
  const contactKey = contactOf(type, message);
  if (context.signal.aborted) throw new TransientError(`${type}_aborted`, `send of ${message.deliveryId} aborted before it started`);
  await recordHolding(holdings, output, message, contactKey, now);
  return contactKey;
}

/** The holdings ledger of a CRM output, which refuses to start without one. */
export function holdingsOf(deps: OutputDeps, output: string): ContactHoldingsLedger {
  if (deps.holdings === undefined) throw new Error(`output "${output}": no contact holdings ledger was given (OutputDeps.holdings)`);
  return deps.holdings;
}

/** The purposes an opt-out stops among those an output carries (absent purpose: every one but care). */
export function optOutPurposes(scope: OptOutScope, purposes: readonly Purpose[]): Purpose[] {
  return purposes.filter((p) => (scope.purpose === undefined ? !p.startsWith('care.') : p === scope.purpose));
}

/** Whether an opt-out's scope reaches what an output carries: its channel and one of its purposes. */
export function optOutReaches(scope: OptOutScope, channel: 'email' | 'sms', purposes: readonly Purpose[]): boolean {
  if (scope.channel !== undefined && scope.channel !== channel) return false;
  return optOutPurposes(scope, purposes).length > 0;
}

const NON_CARE_PURPOSES: readonly Purpose[] = PURPOSES.filter((p) => !p.startsWith('care.'));

/**
 * The consent signals of one report of a tool (an unsubscribe, a bounce): one per purpose it
 * stops, or a single one without a purpose when it stops every purpose but care (a
 * ToolConsentSignal's scope names one purpose at most). `purposes` absent: every one but care.
 */
export function consentSignals(
  report: Omit<ToolConsentSignal, 'scope'> & { readonly channel?: ConsentChannel },
  purposes?: readonly Purpose[],
): ToolConsentSignal[] {
  const { channel, ...signal } = report;
  const stopped = (purposes ?? NON_CARE_PURPOSES).filter((p) => !p.startsWith('care.'));
  const scope = channel === undefined ? {} : { channel };
  if (NON_CARE_PURPOSES.every((p) => stopped.includes(p))) return [{ ...signal, scope }];
  return stopped.map((purpose) => ({ ...signal, scope: { ...scope, purpose }, eventId: `${signal.eventId}#${purpose}` }));
}

/** Constant-time comparison of a secret carried by a request (a URL path segment, a bearer token) with the configured one. */
export function secretMatches(given: string | undefined, expected: string): boolean {
  if (given === undefined || expected === '') return false;
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}
