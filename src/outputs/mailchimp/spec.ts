// The `mailchimp` output: members of one Mailchimp audience (list) — upserted, tagged, or given
// member events — and opt-outs pushed as the member's status.
//
// Follows the Mailchimp Marketing API 3.0 (https://mailchimp.com/developer/marketing/api/;
// Swagger description v3.0.55, basePath /3.0, host <dc>.api.mailchimp.com):
//   - "Add or update list member": PUT /3.0/lists/{list_id}/members/{subscriber_hash}, the hash
//     being the MD5 of the lower-cased address; body email_address, status_if_new (applies only
//     when the member is created), merge_fields, language. `status` is never sent, so an
//     existing member who unsubscribed is never subscribed again by CareRelay;
//   - "Add or remove member tags": POST …/members/{hash}/tags { tags: [{ name, status: active }],
//     is_syncing: false }, 204;
//   - "Add event": POST …/members/{hash}/events { name (2–30 characters), properties,
//     is_syncing: false }, 204. No idempotency key: CareRelay sends one at most once per
//     delivery through its receipts ledger (send-ledger.ts sendRecorded);
//   - "Update list member": PATCH …/members/{hash} { status: unsubscribed } (optOut, email);
//   - an SMS STOP (optOut, channel sms, workers/consent-sync.ts): the list member API only reads
//     SMS marketing status (sms_phone_number, sms_subscription_status are response fields of
//     "Get member info"; the PUT/PATCH bodies of v3.0.55 and of the official
//     mailchimp-marketing-typescript-sdk have none), so the member's contact_id and SMS number are
//     read with GET …/members/{hash}?fields=contact_id,sms_phone_number, and the status is set by
//     the Audiences endpoints (BETA, release note 2025-08-07; typescript SDK
//     PatchAudienceContactRequest): PATCH /3.0/audiences/{audience_id = list id}/contacts/
//     {contact_id} { sms_channel: { marketing_consent: { status: denied } } } → 200 — "denied is
//     accepted on PATCH/PUT only … and drives an API-initiated unsubscribe". Only when the
//     member's SMS number is the number that sent STOP: no number (Mailchimp cannot text them) or
//     another one → not_applicable; the member's email status is never touched by a STOP, and
//     CareRelay never sends Mailchimp a phone number;
//   - "Delete list member": POST …/members/{hash}/actions/delete-permanent → 204, 404 for a
//     member the audience does not have (forget, on a GDPR erasure: the address can then not be
//     imported again);
//   - audience webhooks (webhooks.ts): unsubscribe and cleaned events posted to
//     /hooks/mailchimp/<output>/<webhookSecret>, which also answers Mailchimp's validating GET;
//   - "Fundamentals": HTTP Basic with any user name and the API key, whose suffix after the
//     last "-" is the data centre of the host; "a limit of 10 simultaneous connections" per user
//     (429 past it); "at exceptionally high volumes, you may receive an HTTP 429 or 403 without a
//     JSON body" — a bare 403 is throttling, not a refusal; a 120-second timeout on calls;
//   - "Errors": application/problem+json { type, title, status, detail, instance }.
//
// Never `baa: true`: Mailchimp signs no business associate agreement and its terms forbid
// health information, so the declaration is refused at load and only what is not PHI — name,
// email, language, for marketing or service.info — can ever reach it (pipeline/coverage.ts).
//
// Failures (one call per send, never retried here):
//   429, 403 without a body       → RateLimitedError (no Retry-After is documented)
//   400 Member In Compliance State, Forgotten Email Not Subscribed
//                                 → RecipientError opted_out (the person left this audience)
//   400 Invalid Resource, "looks fake or invalid"
//                                 → RecipientError unfit
//   408, 502, 503, 504            → TransientError; other 5xx, timeout, reset → AmbiguousError
//   401, other 403, 404, other 4xx → PermanentError
import { createHash } from 'node:crypto';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RecipientError, RecipientSignal } from '../../errors.ts';
import { callApi, prop, type ApiAnswer } from '../../http/json.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import {
  allowedPurposesSchema,
  beginContactSend,
  contactKeyOf,
  deliveryUuid,
  destinationUrlIssues,
  holdingsOf,
  mappedProperties,
  optOutReaches,
  outputNameSchema,
  propertiesSchema,
  propertyMapIssues,
  providerFailure,
  secretRefKey,
  type PropertyMap,
} from '../common.ts';
import { sendRecorded } from '../send-ledger.ts';
import { ForgetOutcome, OptOutOutcome, type OutboundAdapter, type OutboundMessage, type OutputDeps, type OutputSpec, type SendContext } from '../spec.ts';

export const MAILCHIMP = 'mailchimp';

export const MailchimpAction = {
  /** Add or update the member (merge fields, language); a new member gets statusIfNew. */
  Upsert: 'upsert',
  /** Make the configured tags active on the member. */
  Tags: 'tags',
  /** Add a member event (it can start a Customer Journey). */
  Event: 'event',
} as const;
export type MailchimpAction = (typeof MailchimpAction)[keyof typeof MailchimpAction];

export const MailchimpStatusIfNew = { Pending: 'pending', Subscribed: 'subscribed', Transactional: 'transactional' } as const;
export type MailchimpStatusIfNew = (typeof MailchimpStatusIfNew)[keyof typeof MailchimpStatusIfNew];

/** Mailchimp's documented cap on simultaneous connections per user. */
export const MAILCHIMP_MAX_CONNECTIONS = 10;

export const MailchimpCode = {
  OptedOut: 'recipient_opted_out',
  Unfit: 'recipient_unfit',
  OutcomeUnknown: 'mailchimp_outcome_unknown',
  BadKey: 'mailchimp_api_key_invalid',
} as const;

export interface MailchimpConfig {
  readonly name: string;
  readonly type: typeof MAILCHIMP;
  readonly apiKey: SecretRef;
  readonly listId: string;
  readonly action: MailchimpAction;
  readonly statusIfNew: MailchimpStatusIfNew;
  readonly properties: PropertyMap;
  readonly tags: readonly string[];
  readonly event?: { readonly name: string };
  readonly webhookSecret?: SecretRef;
  readonly maxConnections: number;
  readonly apiBaseUrl: string;
  readonly timeoutSeconds: number;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const mailchimpConfigSchema = {
  type: 'object',
  description: 'Members of one Mailchimp audience (Marketing API 3.0): upsert, tags or member events; opt-outs as member status.',
  additionalProperties: false,
  required: ['name', 'type', 'apiKey', 'listId', 'action'],
  properties: {
    name: outputNameSchema,
    type: { const: MAILCHIMP, description: 'Output type: mailchimp.' },
    apiKey: { ...secretRefSchema, description: 'API key (Profile → Extras → API keys), by reference; it ends with the data centre, e.g. …-us14.' },
    listId: {
      type: 'string',
      pattern: '^[0-9a-zA-Z]{1,32}$',
      'x-hint': 'the audience id, e.g. a6b5da1054',
      description: 'The audience (list) id: Audience → Settings → Audience name and defaults → Audience ID.',
    },
    action: { enum: Object.values(MailchimpAction), description: 'What each delivery does: upsert the member, make tags active on it, or add a member event.' },
    statusIfNew: {
      enum: Object.values(MailchimpStatusIfNew),
      default: MailchimpStatusIfNew.Pending,
      description:
        'upsert: the status of a member CareRelay creates. pending (default) makes Mailchimp ask the person to confirm (double ' +
        'opt-in); subscribed when the consent was captured elsewhere. An existing member keeps its status.',
    },
    properties: propertiesSchema('upsert: merge tags (FNAME, LNAME…) or language (the member\'s language); event: event properties.', {
      pattern: '^([A-Z][A-Z0-9_]{0,9}|language)$',
      hint: 'a merge tag such as FNAME, or language',
    }),
    tags: {
      type: 'array',
      default: [],
      uniqueItems: true,
      description: 'tags: the tags made active on the member (created when missing). Never a tag that says anything about care.',
      items: { type: 'string', minLength: 1, maxLength: 100, description: 'A tag name.' },
    },
    event: {
      type: 'object',
      description: 'event: the member event to add.',
      additionalProperties: false,
      required: ['name'],
      properties: { name: { type: 'string', pattern: '^[A-Za-z0-9_-]{2,30}$', description: 'Its name, 2–30 characters (letters, digits, "_", "-").' } },
    },
    maxConnections: {
      type: 'integer',
      minimum: 1,
      maximum: MAILCHIMP_MAX_CONNECTIONS,
      default: MAILCHIMP_MAX_CONNECTIONS,
      description: 'Calls in flight at once (Mailchimp allows 10 per user, shared by every integration of the account: lower it when others use the same account).',
    },
    apiBaseUrl: {
      type: 'string',
      pattern: '^https?://.*\\{dc\\}',
      default: 'https://{dc}.api.mailchimp.com',
      'x-hint': 'a URL with {dc}, replaced by the data centre the API key ends with',
      description: 'API base URL; {dc} is the data centre taken from the API key (a local stand-in in tests).',
    },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 15, description: 'Seconds for the whole call (Mailchimp stops calls at 120 s); no answer in time is an ambiguous failure.' },
    webhookSecret: {
      ...secretRefSchema,
      description:
        "Unsubscribes and cleaned addresses made in Mailchimp: a random secret (16 characters or more), by reference, that is the last " +
        'segment of the webhook URL given to Mailchimp (<publicUrl>/hooks/mailchimp/<name>/<secret>; Mailchimp signs nothing). ' +
        'Absent: no webhook is taken for this output (404).',
    },
    baa: { type: 'boolean', default: false, description: 'Always false: Mailchimp signs no BAA, so it never receives PHI (true is refused).' },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: MailchimpConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  if (config.baa === true) {
    issues.push({
      path: ['baa'],
      message: 'Mailchimp signs no business associate agreement and its terms forbid health information: it can never be declared baa: true (send it name, email and language only, for marketing or service.info)',
    });
  }
  if (config.action === MailchimpAction.Event && config.event === undefined) issues.push({ path: ['event'], message: 'action event needs event: { name: <2–30 characters> }' });
  if (config.action === MailchimpAction.Tags && (config.tags ?? []).length === 0) issues.push({ path: ['tags'], message: 'action tags needs at least one tag' });
  if (config.action === MailchimpAction.Tags && Object.keys(config.properties ?? {}).length > 0) issues.push({ path: ['properties'], message: 'action tags sends no properties: remove them' });
  if (config.action === MailchimpAction.Event) {
    for (const [field, target] of Object.entries(config.properties ?? {})) {
      if (target === 'language') issues.push({ path: ['properties', field], message: 'language is a member field: an event property needs another name' });
    }
  }
  issues.push(...propertyMapIssues(config.properties ?? {}, ['properties']));
  issues.push(...destinationUrlIssues((config.apiBaseUrl ?? '').replace('{dc}', 'us1'), ['apiBaseUrl'], false));
  return issues;
}

export const mailchimpSpec: OutputSpec<MailchimpConfig, OutputDeps> = {
  type: MAILCHIMP,
  summary: 'Mailchimp audience members: upsert (status_if_new), tags or member events; opt-outs as unsubscribed. Never a BAA.',
  configSchema: mailchimpConfigSchema,
  check,
  info: (config) => ({
    channel: 'crm',
    baa: false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // A member is an email address (send.to): without one there is nothing to send.
    needsAddress: true,
    // The member is addressed by its hash and tags are declarative; events have no key (sent once through the ledger).
    idempotent: config.action !== MailchimpAction.Event,
    limits: { concurrency: config.maxConnections ?? MAILCHIMP_MAX_CONNECTIONS, account: `${MAILCHIMP}:${secretRefKey(config.apiKey)}` },
    fields: Object.keys(config.properties ?? {}),
  }),
  create: (config, deps) => createMailchimp(config, deps),
};

/** Mailchimp's subscriber hash: hex MD5 of the lower-cased address. */
export function subscriberHash(email: string): string {
  return createHash('md5').update(email.trim().toLowerCase(), 'utf8').digest('hex');
}

/**
 * Whether the SMS number Mailchimp holds for a member is the number that sent STOP (E.164).
 * Mailchimp's is "a US phone number", which may come without its country code: +1 is assumed then.
 */
export function sameSmsNumber(held: string, number: string): boolean {
  const digits = (text: string) => contactKeyOf(text).replace(/^\+/, '');
  const mine = digits(held);
  return mine !== '' && (mine === digits(number) || (mine.length === 10 && `1${mine}` === digits(number)));
}

/** The data centre an API key ends with (`…-us14` → `us14`); undefined when the key has none. */
export function dataCentreOf(apiKey: string): string | undefined {
  return /^[0-9a-f]{32}-([a-z]{2,4}[0-9]{1,3})$/.exec(apiKey.trim())?.[1];
}

function classify(answer: ApiAnswer, what: string): Error {
  const { status, json } = answer;
  // "At exceptionally high volumes, you may receive an HTTP 429 or 403 without a JSON body."
  if (status === 403 && answer.size === 0) return providerFailure(MAILCHIMP, 429, `${what} (HTTP 403 without a body: throttled)`, undefined);
  const title = String(prop(json, 'title') ?? '');
  const detail = String(prop(json, 'detail') ?? '');
  if (status === 400 && (title === 'Member In Compliance State' || title === 'Forgotten Email Not Subscribed')) {
    return new RecipientError(RecipientSignal.OptedOut, MailchimpCode.OptedOut, `${what}: HTTP 400 ${title}`, { providerCode: title === 'Forgotten Email Not Subscribed' ? 'forgotten_email' : 'compliance_state' });
  }
  if (status === 400 && title === 'Invalid Resource' && /fake or invalid/i.test(detail)) {
    return new RecipientError(RecipientSignal.Unfit, MailchimpCode.Unfit, `${what}: HTTP 400, the address is not accepted`, { providerCode: 'invalid_email' });
  }
  return providerFailure(MAILCHIMP, status, title === '' ? what : `${what} (${title})`, undefined);
}

export function createMailchimp(config: MailchimpConfig, deps: OutputDeps): OutboundAdapter {
  if (config.baa === true) throw new Error(`output "${config.name}": Mailchimp can never be declared baa: true`);
  const info = mailchimpSpec.info(config);
  const holdings = holdingsOf(deps, config.name);
  const apiKey = deps.secret(config.apiKey);
  const dc = dataCentreOf(apiKey);
  if (dc === undefined) throw new Error(`output "${config.name}": the Mailchimp API key does not end with its data centre (…-us14); copy the whole key`);
  const root = `${config.apiBaseUrl.replace('{dc}', dc).replace(/\/+$/, '')}/3.0`;
  const base = `${root}/lists/${encodeURIComponent(config.listId)}/members`;
  const authorization = `Basic ${Buffer.from(`carerelay:${apiKey}`).toString('base64')}`;
  const timeoutMs = config.timeoutSeconds * 1000;
  const output = config.name;

  const call = (method: 'GET' | 'PUT' | 'POST' | 'PATCH', path: string, body: unknown, signal: AbortSignal, url = `${base}${path}`) =>
    callApi({ url: new URL(url), method, headers: { authorization }, body, timeoutMs, signal, codePrefix: MAILCHIMP });

  /** An SMS STOP: the member's SMS marketing status, when its SMS number is the one that sent it (see the top of this file). */
  const smsOptOut = async (email: string, number: string, signal: AbortSignal): Promise<OptOutOutcome> => {
    const read = await call('GET', `/${subscriberHash(email)}?fields=contact_id,sms_phone_number`, undefined, signal);
    if (read.status === 404) return OptOutOutcome.NotHeld;
    if (read.status !== 200) throw classify(read, 'Mailchimp member');
    const contactId = prop(read.json, 'contact_id');
    const smsNumber = prop(read.json, 'sms_phone_number');
    if (typeof smsNumber !== 'string' || !sameSmsNumber(smsNumber, number)) return OptOutOutcome.NotApplicable;
    if (typeof contactId !== 'string' || contactId === '') throw new AmbiguousError(`${MAILCHIMP}_no_contact_id`, 'Mailchimp member: HTTP 200 without a contact_id');
    const url = `${root}/audiences/${encodeURIComponent(config.listId)}/contacts/${encodeURIComponent(contactId)}`;
    const answer = await call('PATCH', '', { sms_channel: { marketing_consent: { status: 'denied' } } }, signal, url);
    if (answer.status === 200) return OptOutOutcome.Applied;
    if (answer.status === 404) return OptOutOutcome.NotHeld;
    throw classify(answer, 'Mailchimp SMS marketing consent');
  };

  const send = async (message: OutboundMessage, email: string, hash: string, context: SendContext): Promise<Receipt> => {
    const mapped = mappedProperties(message.fields, config.properties);
    if (config.action === MailchimpAction.Upsert) {
      const { language, ...mergeFields } = mapped;
      const body = { email_address: email, status_if_new: config.statusIfNew, merge_fields: mergeFields, ...(language !== undefined ? { language } : {}) };
      const answer = await call('PUT', `/${hash}`, body, context.signal);
      if (answer.status !== 200) throw classify(answer, 'Mailchimp member upsert');
      const status = prop(answer.json, 'status');
      return { providerId: String(prop(answer.json, 'id') ?? hash), acceptedAt: deps.now().toISOString(), detail: { ...(typeof status === 'string' ? { memberStatus: status } : {}) } };
    }
    if (config.action === MailchimpAction.Tags) {
      const answer = await call('POST', `/${hash}/tags`, { tags: config.tags.map((name) => ({ name, status: 'active' })), is_syncing: false }, context.signal);
      if (answer.status !== 204 && answer.status !== 200) throw classify(answer, 'Mailchimp member tags');
      return { providerId: hash, acceptedAt: deps.now().toISOString() };
    }
    return sendRecorded(deps, { output, outcomeUnknownCode: MailchimpCode.OutcomeUnknown, what: 'the member event', provider: 'Mailchimp' }, message, context, async () => {
      const answer = await call('POST', `/${hash}/events`, { name: config.event!.name, properties: mapped, is_syncing: false }, context.signal);
      if (answer.status !== 204 && answer.status !== 200) throw classify(answer, 'Mailchimp member event');
      return { providerId: deliveryUuid(message.deliveryId) };
    });
  };

  return {
    name: output,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (!(message.to ?? '').includes('@')) throw new PermanentError(`${MAILCHIMP}_no_contact`, `delivery ${message.deliveryId}: a Mailchimp member is an email address; send.to gives none`);
      const email = await beginContactSend(MAILCHIMP, holdings, output, message, context, deps.now());
      return send(message, email, subscriberHash(email), context);
    },
    optOutChannels: ['email', 'sms'],
    async optOut(contact, scope, context) {
      if (!contact.contactKey.includes('@')) return OptOutOutcome.NotApplicable;
      if (scope.channel === 'sms') {
        // SMS marketing only ever reaches the number that said STOP; an opt-out without one (admin) has no number to stop.
        if (scope.address === undefined || !optOutReaches(scope, 'sms', info.allowedPurposes)) return OptOutOutcome.NotApplicable;
        return smsOptOut(contact.contactKey, scope.address, context.signal);
      }
      if (!optOutReaches(scope, 'email', info.allowedPurposes)) return OptOutOutcome.NotApplicable;
      const answer = await call('PATCH', `/${subscriberHash(contact.contactKey)}`, { status: 'unsubscribed' }, context.signal);
      if (answer.status === 200) return OptOutOutcome.Applied;
      if (answer.status === 404) return OptOutOutcome.NotHeld;
      throw classify(answer, 'Mailchimp member status');
    },
    async forget(contact, context) {
      if (!contact.contactKey.includes('@')) return ForgetOutcome.NotHeld;
      const answer = await call('POST', `/${subscriberHash(contact.contactKey)}/actions/delete-permanent`, undefined, context.signal);
      if (answer.status === 204 || answer.status === 200) return ForgetOutcome.Forgotten;
      if (answer.status === 404) return ForgetOutcome.NotHeld;
      throw classify(answer, 'Mailchimp permanent delete');
    },
  };
}
