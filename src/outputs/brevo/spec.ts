// The `brevo` output (Brevo, formerly Sendinblue): contacts, custom events, transactional email
// and transactional SMS, and opt-outs pushed as the contact's blocklist flags.
//
// Follows the Brevo API v3 (https://developers.brevo.com/reference; the OpenAPI document behind
// the official client getbrevo/brevo-node 3.0.1):
//   - "Create a contact": POST /v3/contacts { email | attributes.SMS, attributes (upper-case
//     names that exist in the account), listIds, updateEnabled: true } → 201 { id } created,
//     204 updated;
//   - "Update a contact": PUT /v3/contacts/{identifier}?identifierType=email_id|phone_id
//     { emailBlacklisted: true } / { smsBlacklisted: true } (optOut). An SMS STOP
//     (workers/consent-sync.ts) names the number that sent it: the contact Brevo holds under that
//     number is blocklisted for SMS — PUT /v3/contacts/{number}?identifierType=phone_id
//     { smsBlacklisted: true }, 404 when Brevo has no contact with it — never for email, never
//     another number. The page warns: "If a
//     blocklisted contact's email address is updated, it is going to remove that blocklisting":
//     CareRelay never sends EMAIL or SMS as attributes (the address is the key the contact is
//     matched on, refused in properties) and never sends a blocklist flag other than true, so no
//     call of this output can lift a blocklist;
//   - "Delete a contact": DELETE /v3/contacts/{identifier}?identifierType=email_id|phone_id → 204,
//     404 for a contact Brevo does not have (forget, on a GDPR erasure);
//   - webhooks ("Transactional webhooks", "Marketing webhooks", webhooks.ts): unsubscribed,
//     hard_bounce and spam events posted to /hooks/brevo/<output>, created with auth { type:
//     bearer, token: <webhookSecret> } (or the secret as the password of credentials in the URL);
//   - "Create an event": POST /v3/events { event_name, identifiers { email_id | phone_id },
//     event_date, event_properties } → 204;
//   - "Send a transactional email": POST /v3/smtp/email { sender, to, subject, htmlContent,
//     textContent, headers } → 201 { messageId }; headers.idempotencyKey carries a UUID of the
//     delivery (the field's documented example), List-Unsubscribe + one-click for non-care email;
//   - "Send SMS message to a mobile number": POST /v3/transactionalSMS/sms { sender, recipient,
//     content, type transactional|marketing } → 201 { reference, messageId, … };
//   - auth: header api-key; errors { code, message } (400 invalid_parameter, 401 unauthorized,
//     402 not_enough_credits, 403 permission_denied, 404 document_not_found);
//   - "API limits" (general tier): /v3/contacts 10 requests/s (36,000/h), /v3/events 10/s,
//     /v3/smtp/email 1,000/s, /v3/transactionalSMS/sms 150/s, per account; "Rate limit headers":
//     x-sib-ratelimit-limit, -remaining, -reset (seconds until the window resets) with a 429.
//
// Events, email and SMS have no idempotency Brevo documents the semantics of: CareRelay sends
// each at most once per delivery through its receipts ledger (send-ledger.ts sendRecorded).
//
// Failures (one call per send, never retried here):
//   429                           → RateLimitedError, after x-sib-ratelimit-reset (or Retry-After)
//   408, 502, 503, 504            → TransientError; other 5xx, timeout, reset → AmbiguousError
//   401, 402, 403, 404, other 4xx → PermanentError (Brevo's code kept as providerCode)
import { createHash } from 'node:crypto';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError } from '../../errors.ts';
import { callApi, prop, type ApiAnswer } from '../../http/json.ts';
import { headerOf, parseRetryAfter } from '../../http/outbound.ts';
import { PURPOSES, type Channel, type Purpose, type Receipt } from '../../types.ts';
import {
  allowedPurposesSchema,
  beginContactSend,
  deliveryUuid,
  destinationUrlIssues,
  holdingsOf,
  listUnsubscribeHeaders,
  mappedProperties,
  optOutReaches,
  outputNameSchema,
  propertiesSchema,
  propertyMapIssues,
  providerBaaSchema,
  providerFailure,
  secretRefKey,
  type PropertyMap,
} from '../common.ts';
import { sendRecorded } from '../send-ledger.ts';
import { ForgetOutcome, OptOutOutcome, type OutboundAdapter, type OutboundMessage, type OutputDeps, type OutputLimits, type OutputSpec, type SendContext } from '../spec.ts';

export const BREVO = 'brevo';

export const BrevoAction = {
  /** Create or update the contact (attributes, lists). */
  Upsert: 'upsert',
  /** Record a custom event on the contact (it can start an automation). */
  Event: 'event',
  /** Send the rendered email as a transactional email. */
  Email: 'email',
  /** Send the rendered text as a transactional SMS. */
  Sms: 'sms',
} as const;
export type BrevoAction = (typeof BrevoAction)[keyof typeof BrevoAction];

/** Brevo's general-tier limits per second, by endpoint ("API limits"). */
export const BREVO_RATE_PER_SECOND: Readonly<Record<BrevoAction, number>> = { upsert: 10, event: 10, email: 1000, sms: 150 };
/** Which of Brevo's limits an action draws from. */
const ENDPOINT_GROUP: Readonly<Record<BrevoAction, string>> = { upsert: 'contacts', event: 'events', email: 'smtp-email', sms: 'transactional-sms' };

export const BrevoCode = {
  OutcomeUnknown: 'brevo_outcome_unknown',
  NoSubject: 'brevo_no_subject',
  UnsubscribeMissing: 'unsubscribe_missing',
  Expired: 'expired',
} as const;

export interface BrevoConfig {
  readonly name: string;
  readonly type: typeof BREVO;
  readonly apiKey: SecretRef;
  readonly action: BrevoAction;
  readonly listIds: readonly number[];
  readonly properties: PropertyMap;
  readonly event?: { readonly name: string };
  readonly email?: { readonly sender: { readonly email: string; readonly name?: string }; readonly requireUnsubscribe: boolean };
  readonly sms?: { readonly sender: string };
  readonly ratePerSecond: number;
  readonly webhookSecret?: SecretRef;
  readonly apiBaseUrl: string;
  readonly timeoutSeconds: number;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const brevoConfigSchema = {
  type: 'object',
  description: 'Brevo (API v3): contact upsert, custom events, transactional email or SMS; opt-outs as blocklist flags.',
  additionalProperties: false,
  required: ['name', 'type', 'apiKey', 'action'],
  properties: {
    name: outputNameSchema,
    type: { const: BREVO, description: 'Output type: brevo.' },
    apiKey: { ...secretRefSchema, description: 'API key (xkeysib-…; Settings → SMTP & API → API keys), by reference.' },
    action: {
      enum: Object.values(BrevoAction),
      description: 'What each delivery does: upsert the contact, record a custom event, send a transactional email, or a transactional SMS.',
    },
    listIds: {
      type: 'array',
      default: [],
      uniqueItems: true,
      description: 'upsert: the contact lists the contact joins (Contacts → Lists → id).',
      items: { type: 'integer', minimum: 1, description: 'A list id.' },
    },
    properties: propertiesSchema('upsert: contact attributes (FIRSTNAME, LASTNAME…; never EMAIL or SMS); event: event properties.', {
      pattern: '^[A-Za-z][A-Za-z0-9_]*$',
      hint: 'an attribute name such as FIRSTNAME, or an event property name',
    }),
    event: {
      type: 'object',
      description: 'event: the custom event.',
      additionalProperties: false,
      required: ['name'],
      properties: { name: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,255}$', description: 'Its name (letters, digits, "-", "_").' } },
    },
    email: {
      type: 'object',
      description: 'email: the sender of the transactional emails (a sender verified in Brevo).',
      additionalProperties: false,
      required: ['sender'],
      properties: {
        sender: {
          type: 'object',
          description: 'The From of the emails.',
          additionalProperties: false,
          required: ['email'],
          properties: {
            email: { type: 'string', format: 'email', description: 'Sender address.' },
            name: { type: 'string', default: '', description: 'Sender name shown to the patient; empty: the address alone.' },
          },
        },
        requireUnsubscribe: {
          type: 'boolean',
          default: true,
          description: 'Refuse non-care email without an unsubscribe link (List-Unsubscribe with one-click).',
        },
      },
    },
    sms: {
      type: 'object',
      description: 'sms: the sender of the SMS.',
      additionalProperties: false,
      required: ['sender'],
      properties: {
        sender: {
          type: 'string',
          pattern: '^([A-Za-z0-9]{1,11}|[0-9]{1,15})$',
          'x-hint': 'up to 11 letters and digits, or up to 15 digits',
          description: 'Sender name or number.',
        },
      },
    },
    ratePerSecond: {
      type: 'number',
      minimum: 0,
      default: 0,
      description:
        "Calls per second the engine allows; 0: Brevo's general-tier limit for the action (contacts 10, events 10, email 1,000, " +
        'SMS 150). Set your plan\'s figure (Advanced and Extended plans allow more); outputs of one key share it.',
    },
    apiBaseUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      default: 'https://api.brevo.com',
      description: 'API base URL (a local stand-in in tests: http on loopback only).',
    },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 15, description: 'Seconds for the whole API call; no answer in time is an ambiguous failure.' },
    webhookSecret: {
      ...secretRefSchema,
      description:
        'Unsubscribes, hard bounces and spam complaints reported by Brevo: a random secret (16 characters or more), by reference, ' +
        'given to Brevo as the webhook\'s bearer token (auth { type: bearer, token }) for <publicUrl>/hooks/brevo/<name> — or as the ' +
        'password of the URL\'s credentials (user carerelay). Absent: no webhook is taken for this output (404).',
    },
    baa: providerBaaSchema,
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

/** Attributes that hold the contact's addresses: updating them can lift a blocklist (Brevo "Update a contact"). */
const ADDRESS_ATTRIBUTES = ['EMAIL', 'SMS', 'WHATSAPP', 'LANDLINE_NUMBER'];

function check(config: BrevoConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const properties = config.properties ?? {};
  if (config.action === BrevoAction.Event && config.event === undefined) issues.push({ path: ['event'], message: 'action event needs event: { name }' });
  if (config.action === BrevoAction.Email && config.email === undefined) issues.push({ path: ['email'], message: 'action email needs email: { sender: { email } }' });
  if (config.action === BrevoAction.Sms && config.sms === undefined) issues.push({ path: ['sms'], message: 'action sms needs sms: { sender }' });
  if ((config.action === BrevoAction.Email || config.action === BrevoAction.Sms) && Object.keys(properties).length > 0) {
    issues.push({ path: ['properties'], message: `action ${config.action} sends the rendered message, not properties: remove them` });
  }
  for (const [field, target] of Object.entries(properties)) {
    if (config.action === BrevoAction.Upsert && !/^[A-Z][A-Z0-9_]*$/.test(target)) issues.push({ path: ['properties', field], message: `"${target}": Brevo attribute names are upper-case` });
    if (ADDRESS_ATTRIBUTES.includes(target.toUpperCase())) {
      issues.push({ path: ['properties', field], message: `"${target}" is an address attribute: the address is the rule's send.to, and updating it can lift the contact's blocklist` });
    }
  }
  issues.push(...propertyMapIssues(properties, ['properties']));
  issues.push(...destinationUrlIssues(config.apiBaseUrl, ['apiBaseUrl'], false));
  return issues;
}

function channelOf(action: BrevoAction): Channel {
  return action === BrevoAction.Email ? 'email' : action === BrevoAction.Sms ? 'sms' : 'crm';
}

/** The limits of one output: its action's endpoint limit, shared by the outputs of the same key. */
export function brevoLimits(config: Pick<BrevoConfig, 'action' | 'apiKey' | 'ratePerSecond'>): OutputLimits {
  const rate = config.ratePerSecond > 0 ? config.ratePerSecond : BREVO_RATE_PER_SECOND[config.action];
  return { ratePerSecond: rate, burst: rate, account: `${BREVO}:${secretRefKey(config.apiKey)}:${ENDPOINT_GROUP[config.action]}` };
}

export const brevoSpec: OutputSpec<BrevoConfig, OutputDeps> = {
  type: BREVO,
  summary: 'Brevo: contact upsert, custom events, transactional email or SMS; opt-outs as blocklist flags (never lifted).',
  configSchema: brevoConfigSchema,
  check,
  info: (config) => ({
    channel: channelOf(config.action),
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // A contact is its email address or phone number (send.to): without one there is nothing to send.
    needsAddress: true,
    // Contacts are matched on their address; events, email and SMS are sent once through the ledger.
    idempotent: config.action === BrevoAction.Upsert,
    limits: brevoLimits({ ...config, ratePerSecond: config.ratePerSecond ?? 0 }),
    ...(config.action === BrevoAction.Upsert || config.action === BrevoAction.Event ? { fields: Object.keys(config.properties ?? {}) } : {}),
  }),
  create: (config, deps) => createBrevo(config, deps),
};

/** How long a 429 says to wait: Retry-After, else x-sib-ratelimit-reset (seconds). */
export function brevoRetryAfterMs(answer: Pick<ApiAnswer, 'headers'>, nowMs: number): number | undefined {
  const retryAfter = parseRetryAfter(headerOf(answer.headers, 'retry-after'), nowMs);
  if (retryAfter !== undefined) return retryAfter;
  const reset = Number(headerOf(answer.headers, 'x-sib-ratelimit-reset'));
  return Number.isFinite(reset) && reset >= 0 ? Math.ceil(reset * 1000) : undefined;
}

function classify(answer: ApiAnswer, what: string, nowMs: number): Error {
  const code = prop(answer.json, 'code');
  const error = providerFailure(BREVO, answer.status, typeof code === 'string' ? `${what} (${code})` : what, answer.status === 429 ? brevoRetryAfterMs(answer, nowMs) : parseRetryAfter(headerOf(answer.headers, 'retry-after'), nowMs));
  return typeof code === 'string' && /^[a-z_]{1,40}$/.test(code) ? Object.assign(error, { providerCode: code }) : error;
}

// 3GPP TS 23.038 (GSM 03.38) default alphabet and its extension table: text outside them needs a
// unicode SMS (70 characters a part instead of 160).
const GSM7 = new Set(
  '@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !"#¤%&\'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€',
);

/** Whether an SMS text fits the GSM 7-bit alphabet. */
export function isGsm7(text: string): boolean {
  for (const char of text) if (!GSM7.has(char)) return false;
  return true;
}

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function createBrevo(config: BrevoConfig, deps: OutputDeps): OutboundAdapter {
  const info = brevoSpec.info(config);
  const holdings = holdingsOf(deps, config.name);
  const apiKey = deps.secret(config.apiKey);
  const base = config.apiBaseUrl.replace(/\/+$/, '');
  const timeoutMs = config.timeoutSeconds * 1000;
  const output = config.name;
  const once = (what: string) => ({ output, outcomeUnknownCode: BrevoCode.OutcomeUnknown, what, provider: 'Brevo' });

  const call = (method: 'POST' | 'PUT' | 'DELETE', path: string, body: unknown, signal: AbortSignal) =>
    callApi({ url: new URL(`${base}${path}`), method, headers: { 'api-key': apiKey }, body, timeoutMs, signal, codePrefix: BREVO });
  const fail = (answer: ApiAnswer, what: string) => classify(answer, what, deps.now().getTime());
  const accepted = (providerId: string, detail?: Record<string, unknown>): Receipt & { providerId: string } => ({
    providerId,
    acceptedAt: deps.now().toISOString(),
    ...(detail ? { detail } : {}),
  });

  const upsert = async (message: OutboundMessage, key: string, signal: AbortSignal): Promise<Receipt> => {
    const attributes: Record<string, string> = mappedProperties(message.fields, config.properties);
    const isEmail = key.includes('@');
    const body = {
      ...(isEmail ? { email: key } : {}),
      attributes: isEmail ? attributes : { ...attributes, SMS: key },
      ...(config.listIds.length > 0 ? { listIds: config.listIds } : {}),
      updateEnabled: true,
    };
    const answer = await call('POST', '/v3/contacts', body, signal);
    if (answer.status !== 201 && answer.status !== 204) throw fail(answer, 'Brevo contact upsert');
    const id = prop(answer.json, 'id');
    // A 204 (updated) has no body: the contact is named by its address's hash, whichever answer came.
    return accepted(createHash('md5').update(key).digest('hex'), { created: answer.status === 201, ...(typeof id === 'number' ? { contactId: id } : {}) });
  };

  const event = (message: OutboundMessage, key: string, context: SendContext): Promise<Receipt> =>
    sendRecorded(deps, once('the event'), message, context, async () => {
      const body = {
        event_name: config.event!.name,
        identifiers: key.includes('@') ? { email_id: key } : { phone_id: key },
        event_date: deps.now().toISOString(),
        event_properties: mappedProperties(message.fields, config.properties),
      };
      const answer = await call('POST', '/v3/events', body, context.signal);
      if (answer.status !== 204 && answer.status !== 200 && answer.status !== 201) throw fail(answer, 'Brevo event');
      return accepted(deliveryUuid(message.deliveryId));
    });

  const email = (message: OutboundMessage, key: string, context: SendContext): Promise<Receipt> => {
    if (message.subject === undefined) throw new PermanentError(BrevoCode.NoSubject, `delivery ${message.deliveryId}: the email template gave no subject`);
    const unsubscribe = listUnsubscribeHeaders(message, config.email!.requireUnsubscribe ?? true, BrevoCode.UnsubscribeMissing);
    return sendRecorded(deps, once('the email'), message, context, async () => {
      const body = {
        sender: config.email!.sender.name ? config.email!.sender : { email: config.email!.sender.email },
        to: [{ email: key }],
        subject: message.subject,
        // htmlContent is required without a Brevo template: the text, escaped, when the template has no HTML part.
        htmlContent: message.html ?? `<pre>${escapeHtml(message.text)}</pre>`,
        textContent: message.text,
        headers: { idempotencyKey: deliveryUuid(message.deliveryId), ...unsubscribe },
      };
      const answer = await call('POST', '/v3/smtp/email', body, context.signal);
      const messageId = prop(answer.json, 'messageId');
      if (answer.status !== 201 && answer.status !== 200) throw fail(answer, 'Brevo transactional email');
      if (typeof messageId !== 'string' || messageId === '') throw new AmbiguousError(BrevoCode.OutcomeUnknown, `Brevo answered HTTP ${answer.status} without a messageId`);
      return accepted(messageId);
    });
  };

  const sms = (message: OutboundMessage, key: string, context: SendContext): Promise<Receipt> => {
    if (message.expiresAt !== undefined && Date.parse(message.expiresAt) <= deps.now().getTime()) {
      throw new PermanentError(BrevoCode.Expired, `delivery ${message.deliveryId} can no longer arrive before it expires`);
    }
    return sendRecorded(deps, once('the SMS'), message, context, async () => {
      const body = {
        sender: config.sms!.sender,
        recipient: key.replace(/^\+/, ''),
        content: message.text,
        type: message.purpose.startsWith('care.') ? 'transactional' : 'marketing',
        ...(isGsm7(message.text) ? {} : { unicodeEnabled: true }),
      };
      const answer = await call('POST', '/v3/transactionalSMS/sms', body, context.signal);
      const id = prop(answer.json, 'messageId') ?? prop(answer.json, 'reference');
      if (answer.status !== 201 && answer.status !== 200) throw fail(answer, 'Brevo transactional SMS');
      if ((typeof id !== 'number' && typeof id !== 'string') || id === '') throw new AmbiguousError(BrevoCode.OutcomeUnknown, `Brevo answered HTTP ${answer.status} without a messageId`);
      return accepted(String(id), { smsCount: prop(answer.json, 'smsCount') });
    });
  };

  return {
    name: output,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      const key = await beginContactSend(BREVO, holdings, output, message, context, deps.now());
      switch (config.action) {
        case BrevoAction.Upsert:
          return upsert(message, key, context.signal);
        case BrevoAction.Event:
          return event(message, key, context);
        case BrevoAction.Email:
          return email(message, key, context);
        case BrevoAction.Sms:
          return sms(message, key, context);
        default:
          return config.action satisfies never;
      }
    },
    optOutChannels: ['email', 'sms'],
    async optOut(contact, scope, context) {
      if (!optOutReaches(scope, 'email', info.allowedPurposes) && !optOutReaches(scope, 'sms', info.allowedPurposes)) return OptOutOutcome.NotApplicable;
      // A keyword's SMS opt-out belongs to its number: the contact under that number, whatever key this output holds.
      const key = scope.channel === 'sms' && scope.address !== undefined ? scope.address : contact.contactKey;
      const isEmail = key.includes('@');
      // Only ever true: a blocklist is lifted in Brevo by a person, never by CareRelay.
      const flags = {
        ...(scope.channel === undefined || scope.channel === 'email' ? { emailBlacklisted: true } : {}),
        ...(scope.channel === undefined || scope.channel === 'sms' ? { smsBlacklisted: true } : {}),
      };
      const identifier = encodeURIComponent(isEmail ? key : key.replace(/^\+/, ''));
      const answer = await call('PUT', `/v3/contacts/${identifier}?identifierType=${isEmail ? 'email_id' : 'phone_id'}`, flags, context.signal);
      if (answer.status === 204 || answer.status === 200) return OptOutOutcome.Applied;
      if (answer.status === 404) return OptOutOutcome.NotHeld;
      throw fail(answer, 'Brevo contact blocklist');
    },
    async forget(contact, context) {
      const isEmail = contact.contactKey.includes('@');
      const identifier = encodeURIComponent(isEmail ? contact.contactKey : contact.contactKey.replace(/^\+/, ''));
      const answer = await call('DELETE', `/v3/contacts/${identifier}?identifierType=${isEmail ? 'email_id' : 'phone_id'}`, undefined, context.signal);
      if (answer.status === 204 || answer.status === 200) return ForgetOutcome.Forgotten;
      if (answer.status === 404) return ForgetOutcome.NotHeld;
      throw fail(answer, 'Brevo contact delete');
    },
  };
}
