// The `activecampaign` output: contacts of an ActiveCampaign account (synced by email, with
// custom field values), tags, and tracked events; opt-outs pushed as "unsubscribed" on lists.
//
// Follows the ActiveCampaign API v3 (https://developers.activecampaign.com/reference; its
// OpenAPI document "ActiveCampaign API v3", version 3):
//   - "Sync a contact's data": POST {apiUrl}/api/3/contact/sync { contact: { email, firstName,
//     lastName, phone, fieldValues: [{ field, value }] } } — created or updated by email, 201/200
//     with contact.id;
//   - "Add a tag to a contact": POST /api/3/contactTags { contactTag: { contact, tag } } → 201.
//     It needs the contact's id, so the tag action makes two calls: the (idempotent) sync, then
//     the tag; the output declares callsPerSend 2 so the engine counts both;
//   - "Track event": POST https://trackcmp.net/event, form-encoded actid, key (the Event Key),
//     event (≤ 32 characters), eventdata, visit ({"email": …}); answer { success, message }.
//     Event Tracking must be enabled (Website → Site tracking). No idempotency key: CareRelay
//     sends each event at most once per delivery through its receipts ledger;
//   - "List contacts" (GET /api/3/contacts?email=) and "Update list status for a contact"
//     (POST /api/3/contactLists { contactList: { list, contact, status: 2 } }) for optOut.
//     Status 1 would subscribe again, even someone who unsubscribed by hand (the reference's
//     warning): CareRelay never sends it — it subscribes nobody to a list. The v3 API documents
//     no SMS status CareRelay could set (SMS unsubscribes only come back, as the sms_unsub
//     webhook): an SMS STOP is not pushed to ActiveCampaign (optOutChannels: email);
//   - "Delete a contact": DELETE /api/3/contacts/{id} → 200, after the lookup by email (forget,
//     on a GDPR erasure);
//   - webhooks (webhooks.ts): unsubscribe and sms_unsub events posted to
//     /hooks/activecampaign/<output>/<webhookSecret> (ActiveCampaign signs nothing);
//   - auth: header Api-Token (a bad one gets 403 { message: Forbidden });
//   - "Rate limits": "5 requests per second per account", shared by every key and integration;
//     429 with Retry-After, RateLimit-Limit, RateLimit-Remaining.
//
// Several outputs (or several CareRelay processes) on one account: the limit is declared with
// `account` = the API host, so the engine gives every output of the account one bucket; across
// processes, give each ratePerSecond its share (two processes: 2.5 each) — and a 429 still slows
// the output down by its Retry-After.
//
// Failures (never retried here): 429 → RateLimitedError (Retry-After); 408, 502–504 →
// TransientError; other 5xx, timeout, reset → AmbiguousError; 422 naming the email →
// RecipientError unfit; 403 (bad token), 404, other 4xx, { success: 0 } → PermanentError.
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RecipientError, RecipientSignal } from '../../errors.ts';
import { callApi, prop, type ApiAnswer } from '../../http/json.ts';
import { headerOf, parseRetryAfter } from '../../http/outbound.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import {
  allowedPurposesSchema,
  beginContactSend,
  deliveryUuid,
  destinationUrlIssues,
  holdingsOf,
  mappedProperties,
  optOutReaches,
  outputNameSchema,
  propertiesSchema,
  propertyMapIssues,
  providerBaaSchema,
  providerFailure,
  type PropertyMap,
} from '../common.ts';
import { sendRecorded } from '../send-ledger.ts';
import { ForgetOutcome, OptOutOutcome, type OutboundAdapter, type OutboundMessage, type OutputDeps, type OutputLimits, type OutputSpec, type SendContext } from '../spec.ts';

export const ACTIVECAMPAIGN = 'activecampaign';

export const ActiveCampaignAction = {
  /** Sync the contact by email (names, phone, custom field values). */
  Upsert: 'upsert',
  /** Sync the contact, then add the configured tag to it. */
  Tag: 'tag',
  /** Track an event for the contact's email (it can start an automation). */
  Event: 'event',
} as const;
export type ActiveCampaignAction = (typeof ActiveCampaignAction)[keyof typeof ActiveCampaignAction];

/** "5 requests per second per account." */
export const ACTIVECAMPAIGN_RATE_PER_SECOND = 5;

export const ActiveCampaignCode = {
  OutcomeUnknown: 'activecampaign_outcome_unknown',
  EventRefused: 'activecampaign_event_refused',
  Unfit: 'recipient_unfit',
} as const;

/** Contact fields of contact/sync a property may name, besides custom field ids. */
const CONTACT_FIELDS = ['firstName', 'lastName', 'phone'];

export interface ActiveCampaignConfig {
  readonly name: string;
  readonly type: typeof ACTIVECAMPAIGN;
  readonly apiUrl: string;
  readonly apiToken: SecretRef;
  readonly action: ActiveCampaignAction;
  readonly properties: PropertyMap;
  readonly tag?: { readonly id: number };
  readonly event?: { readonly name: string; readonly accountId: string; readonly key: SecretRef; readonly trackingUrl: string };
  readonly listIds: readonly number[];
  readonly webhookSecret?: SecretRef;
  readonly ratePerSecond: number;
  readonly timeoutSeconds: number;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const activeCampaignConfigSchema = {
  type: 'object',
  description: 'ActiveCampaign (API v3): contact sync by email, tags, tracked events; opt-outs as list unsubscribes.',
  additionalProperties: false,
  required: ['name', 'type', 'apiUrl', 'apiToken', 'action'],
  properties: {
    name: outputNameSchema,
    type: { const: ACTIVECAMPAIGN, description: 'Output type: activecampaign.' },
    apiUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: "The account's API URL (Settings → Developer), e.g. https://northclinic.api-us1.com; it names the account the 5 requests/s are shared in.",
    },
    apiToken: { ...secretRefSchema, description: 'API token (Settings → Developer), by reference.' },
    action: { enum: Object.values(ActiveCampaignAction), description: 'What each delivery does: sync the contact, sync it and add a tag, or track an event.' },
    properties: propertiesSchema('upsert and tag: contact fields firstName, lastName, phone, or a custom field id (Contacts → Fields); event: keys of the event data.', {
      pattern: '^([A-Za-z][A-Za-z0-9_]*|[1-9][0-9]*)$',
      hint: 'firstName, lastName, phone, a custom field id such as 3, or an event data key',
    }),
    tag: {
      type: 'object',
      description: 'tag: the tag added to the contact (it must exist; its id is in the tag URL in ActiveCampaign).',
      additionalProperties: false,
      required: ['id'],
      properties: { id: { type: 'integer', minimum: 1, description: 'The tag id.' } },
    },
    event: {
      type: 'object',
      description: 'event: the tracked event (Website → Site tracking → Event tracking must be on).',
      additionalProperties: false,
      required: ['name', 'accountId', 'key'],
      properties: {
        name: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,32}$', description: 'The event name, at most 32 characters.' },
        accountId: { type: 'string', pattern: '^[0-9]{1,20}$', description: 'The account id (actid) shown beside the Event Key.' },
        key: { ...secretRefSchema, description: 'The Event Key (Event tracking settings), by reference.' },
        trackingUrl: {
          type: 'string',
          format: 'uri',
          pattern: '^https?://',
          default: 'https://trackcmp.net/event',
          description: 'Event tracking endpoint (a local stand-in in tests).',
        },
      },
    },
    listIds: {
      type: 'array',
      default: [],
      uniqueItems: true,
      description: 'Opt-outs: the lists the contact is unsubscribed from (status 2). CareRelay never subscribes anyone to a list.',
      items: { type: 'integer', minimum: 1, description: 'A list id.' },
    },
    ratePerSecond: {
      type: 'number',
      exclusiveMinimum: 0,
      maximum: ACTIVECAMPAIGN_RATE_PER_SECOND,
      default: ACTIVECAMPAIGN_RATE_PER_SECOND,
      description:
        "Calls per second: ActiveCampaign allows 5 per account, whatever the key. Outputs of one account share them; when several " +
        'CareRelay processes or other integrations use the account, give each its share (e.g. 2.5 for two processes).',
    },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 15, description: 'Seconds for the whole API call; no answer in time is an ambiguous failure.' },
    webhookSecret: {
      ...secretRefSchema,
      description:
        'Unsubscribes (and SMS STOPs) made in ActiveCampaign: a random secret (16 characters or more), by reference, that is the ' +
        'last segment of the webhook URL (<publicUrl>/hooks/activecampaign/<name>/<secret>; ActiveCampaign signs nothing). Absent: no ' +
        'webhook is taken for this output (404).',
    },
    baa: providerBaaSchema,
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: ActiveCampaignConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const properties = config.properties ?? {};
  if (config.action === ActiveCampaignAction.Tag && config.tag === undefined) issues.push({ path: ['tag'], message: 'action tag needs tag: { id }' });
  if (config.action === ActiveCampaignAction.Event && config.event === undefined) issues.push({ path: ['event'], message: 'action event needs event: { name, accountId, key }' });
  if (config.action !== ActiveCampaignAction.Event) {
    for (const [field, target] of Object.entries(properties)) {
      if (!CONTACT_FIELDS.includes(target) && !/^[1-9][0-9]*$/.test(target)) {
        issues.push({ path: ['properties', field], message: `"${target}" is not a contact field (${CONTACT_FIELDS.join(', ')}) or a custom field id` });
      }
    }
  }
  issues.push(...propertyMapIssues(properties, ['properties']));
  issues.push(...destinationUrlIssues(config.apiUrl, ['apiUrl'], false));
  if (config.event !== undefined) issues.push(...destinationUrlIssues(config.event.trackingUrl, ['event', 'trackingUrl'], false));
  return issues;
}

/** The account's limit, keyed by the API host so every output of the account shares it. */
export function activeCampaignLimits(config: Pick<ActiveCampaignConfig, 'apiUrl' | 'action' | 'ratePerSecond'>): OutputLimits {
  const rate = config.ratePerSecond ?? ACTIVECAMPAIGN_RATE_PER_SECOND;
  let host: string;
  try {
    host = new URL(config.apiUrl).host.toLowerCase();
  } catch {
    host = config.apiUrl;
  }
  return { ratePerSecond: rate, burst: Math.max(1, Math.floor(rate)), account: `${ACTIVECAMPAIGN}:${host}`, ...(config.action === ActiveCampaignAction.Tag ? { callsPerSend: 2 } : {}) };
}

export const activeCampaignSpec: OutputSpec<ActiveCampaignConfig, OutputDeps> = {
  type: ACTIVECAMPAIGN,
  summary: 'ActiveCampaign: contact sync by email, tags or tracked events; opt-outs as list unsubscribes; 5 requests/s per account.',
  configSchema: activeCampaignConfigSchema,
  check,
  info: (config) => ({
    channel: 'crm',
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // A contact is an email address (send.to): without one there is nothing to send.
    needsAddress: true,
    // Sync is keyed by email, a tag is added once; events have no key (sent once through the ledger).
    idempotent: config.action !== ActiveCampaignAction.Event,
    limits: activeCampaignLimits(config),
    fields: Object.keys(config.properties ?? {}),
  }),
  create: (config, deps) => createActiveCampaign(config, deps),
};

function classify(answer: ApiAnswer, what: string, nowMs: number): Error {
  const [first] = (prop(answer.json, 'errors') as unknown[] | undefined) ?? [];
  if (answer.status === 422 && /email/i.test(`${String(prop(first, 'code') ?? '')} ${String(prop(first, 'title') ?? '')}`)) {
    return new RecipientError(RecipientSignal.Unfit, ActiveCampaignCode.Unfit, `${what}: HTTP 422, the email address is not accepted`, { providerCode: 'email_invalid' });
  }
  return providerFailure(ACTIVECAMPAIGN, answer.status, what, parseRetryAfter(headerOf(answer.headers, 'retry-after'), nowMs));
}

export function createActiveCampaign(config: ActiveCampaignConfig, deps: OutputDeps): OutboundAdapter {
  const info = activeCampaignSpec.info(config);
  const holdings = holdingsOf(deps, config.name);
  const apiToken = deps.secret(config.apiToken);
  const eventKey = config.event === undefined ? undefined : deps.secret(config.event.key);
  const api = `${config.apiUrl.replace(/\/+$/, '')}/api/3`;
  const timeoutMs = config.timeoutSeconds * 1000;
  const output = config.name;

  const call = (method: 'GET' | 'POST' | 'DELETE', path: string, body: unknown, signal: AbortSignal) =>
    callApi({ url: new URL(`${api}${path}`), method, headers: { 'api-token': apiToken }, body, timeoutMs, signal, codePrefix: ACTIVECAMPAIGN });
  const fail = (answer: ApiAnswer, what: string) => classify(answer, what, deps.now().getTime());

  /** contact/sync: the contact's id. */
  const sync = async (message: OutboundMessage, email: string, signal: AbortSignal): Promise<string> => {
    const mapped = mappedProperties(message.fields, config.properties);
    const contact: Record<string, unknown> = { email };
    const fieldValues: Array<{ field: string; value: string }> = [];
    for (const [target, value] of Object.entries(mapped)) {
      if (CONTACT_FIELDS.includes(target)) contact[target] = value;
      else fieldValues.push({ field: target, value });
    }
    if (fieldValues.length > 0) contact.fieldValues = fieldValues;
    const answer = await call('POST', '/contact/sync', { contact }, signal);
    if (answer.status !== 200 && answer.status !== 201) throw fail(answer, 'ActiveCampaign contact sync');
    const id = prop(prop(answer.json, 'contact'), 'id');
    if ((typeof id !== 'string' && typeof id !== 'number') || String(id) === '') throw new AmbiguousError(ActiveCampaignCode.OutcomeUnknown, `ActiveCampaign answered HTTP ${answer.status} without a contact id`);
    return String(id);
  };

  /** The id of the contact with this email ("List contacts"), undefined when the account has none. */
  const contactIdOf = async (email: string, signal: AbortSignal): Promise<string | undefined> => {
    const found = await call('GET', `/contacts?email=${encodeURIComponent(email)}`, undefined, signal);
    if (found.status !== 200) throw fail(found, 'ActiveCampaign contact lookup');
    const [first] = (prop(found.json, 'contacts') as unknown[] | undefined) ?? [];
    const id = prop(first, 'id');
    return id === undefined ? undefined : String(id);
  };

  const track = (message: OutboundMessage, email: string, context: SendContext): Promise<Receipt> =>
    sendRecorded(deps, { output, outcomeUnknownCode: ActiveCampaignCode.OutcomeUnknown, what: 'the event', provider: 'ActiveCampaign' }, message, context, async () => {
      const event = config.event!;
      const data = mappedProperties(message.fields, config.properties);
      const form = new URLSearchParams({ actid: event.accountId, key: eventKey!, event: event.name, visit: JSON.stringify({ email }) });
      if (Object.keys(data).length > 0) form.set('eventdata', JSON.stringify(data));
      const answer = await callApi({ url: new URL(event.trackingUrl), method: 'POST', headers: {}, form, timeoutMs, signal: context.signal, codePrefix: ACTIVECAMPAIGN });
      if (answer.status !== 200) throw fail(answer, 'ActiveCampaign event');
      if (prop(answer.json, 'success') !== 1) throw new PermanentError(ActiveCampaignCode.EventRefused, 'ActiveCampaign refused the event (success 0): check event.accountId, event.key and that Event tracking is on');
      return { providerId: deliveryUuid(message.deliveryId) };
    });

  return {
    name: output,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (!(message.to ?? '').includes('@')) throw new PermanentError(`${ACTIVECAMPAIGN}_no_contact`, `delivery ${message.deliveryId}: an ActiveCampaign contact is an email address; send.to gives none`);
      const email = await beginContactSend(ACTIVECAMPAIGN, holdings, output, message, context, deps.now());
      if (config.action === ActiveCampaignAction.Event) return track(message, email, context);
      const contactId = await sync(message, email, context.signal);
      if (config.action === ActiveCampaignAction.Upsert) return { providerId: contactId, acceptedAt: deps.now().toISOString() };
      const tag = String(config.tag!.id);
      const answer = await call('POST', '/contactTags', { contactTag: { contact: contactId, tag } }, context.signal);
      if (answer.status !== 201 && answer.status !== 200) throw fail(answer, 'ActiveCampaign contact tag');
      return { providerId: `${contactId}:${tag}`, acceptedAt: deps.now().toISOString() };
    },
    optOutChannels: ['email'],
    async optOut(contact, scope, context) {
      if (config.listIds.length === 0 || !contact.contactKey.includes('@') || !optOutReaches(scope, 'email', info.allowedPurposes)) return OptOutOutcome.NotApplicable;
      const id = await contactIdOf(contact.contactKey, context.signal);
      if (id === undefined) return OptOutOutcome.NotHeld;
      for (const list of config.listIds) {
        const answer = await call('POST', '/contactLists', { contactList: { list: String(list), contact: id, status: '2' } }, context.signal);
        if (answer.status !== 200 && answer.status !== 201) throw fail(answer, 'ActiveCampaign list status');
      }
      return OptOutOutcome.Applied;
    },
    async forget(contact, context) {
      if (!contact.contactKey.includes('@')) return ForgetOutcome.NotHeld;
      const id = await contactIdOf(contact.contactKey, context.signal);
      if (id === undefined) return ForgetOutcome.NotHeld;
      const answer = await call('DELETE', `/contacts/${encodeURIComponent(id)}`, undefined, context.signal);
      if (answer.status === 200 || answer.status === 204) return ForgetOutcome.Forgotten;
      if (answer.status === 404) return ForgetOutcome.NotHeld;
      throw fail(answer, 'ActiveCampaign contact delete');
    },
  };
}
