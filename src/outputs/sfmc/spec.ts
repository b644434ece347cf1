// The `sfmc` output: Salesforce Marketing Cloud Engagement — a contact enters a Journey Builder
// journey (an API entry event), or gets a transactional email or SMS.
//
// Follows the Marketing Cloud Engagement REST API (developer.salesforce.com/docs/marketing/
// marketing-cloud), versions per route:
//   - auth: "Request an Access Token for Server-to-Server Integrations" — POST
//     https://<subdomain>.auth.marketingcloudapis.com/v2/token, a JSON body { grant_type:
//     client_credentials, client_id, client_secret, scope?, account_id? (the business unit's
//     MID) }, answered { access_token, token_type, expires_in (~1,079 s: tokens live 20 minutes),
//     rest_instance_url }; calls go to rest_instance_url. "Best Practices to Prevent
//     Rate-Limiting": at most one token request per 20 minutes, renew five minutes early
//     (http/oauth-token.ts does both).
//   - journey entry: "Fire an Entry Event" — POST /interaction/v1/events { ContactKey,
//     EventDefinitionKey, Data } → 201 { eventInstanceId }; 400 when the event definition key is
//     unknown or the contact is not active. Data fields must exist in the event's data extension.
//   - transactional: "sendMessageSingleRecipient" — POST /messaging/v1/email/messages/{messageKey}
//     { definitionKey, recipient: { contactKey, to, attributes } } → 202 { requestId, errorcode: 0,
//     responses: [{ messageKey }] }; SMS the same at /messaging/v1/sms/messages/{messageKey}
//     ("sendSMSMessageSingleRecipient", `to` a number in digits).
//   - Event Notification Service (ens.ts): opt-outs and hard bounces posted to /hooks/sfmc/<output>
//     (api/tool-hooks.ts). A callback registered there is verified as "Verify a Callback"
//     documents: its one-time { callbackId, verificationKey } is returned at once to POST
//     /platform/v1/ens-verify (confirmEnsCallback), and its batches are checked with the
//     signatureKey of `ens`;
//   - errors: "Handle Errors in REST API" ({ message, errorcode, documentation }), "Rate Limiting
//     Errors" (429 with errorcode 50100, Retry-After and retryAfter seconds; 50200 "temporarily
//     blocked" without), "Transactional API Response Level Error Codes" (109110
//     MCMS_UTM_Validation_DuplicateMessageKey: "messageKey reused within the past 2 days").
//
// Idempotency. A transactional send carries a message key derived from the delivery id
// (`cr-` + SHA-256 hex, 67 characters of the 100 allowed), the same on every attempt; SFMC
// refuses a key used in the business unit within the last 2 days (the best-practices page says
// 72 hours), so a repeat of a send it took is answered 109110 — which this adapter reports as
// accepted: the output is idempotent. CareRelay's automatic retries end well inside that window
// (the default retry policy gives up 9.4 h after the first failure at most); a dead-lettered
// delivery replayed by a person more than two days after an attempt whose outcome was unknown
// may be sent twice. A journey entry event has no key: CareRelay keeps its own (the receipts
// ledger, outputs/send-ledger.ts), and an unknown outcome parks the delivery for review.
//
// What is sent: the contact key (by default the patient id; with contactKey.pseudonymKey an
// HMAC-SHA256 pseudonym of it, so SFMC never holds the hospital's MRN), the definition key, the
// recipient address for transactional sends, and the `data` map (outputs/field-map.ts) as Data or
// attributes. Nothing else of the trigger.
//
// Failures (one API call per send, never retried here; a 401 renews the token and repeats the
// call once, http/oauth-token.ts):
//   429 (50100, 50200)                 → RateLimitedError (Retry-After, else the body's retryAfter)
//   408, 502, 503, 504                 → TransientError (not processed)
//   other 5xx, timeout, reset          → AmbiguousError (may have been taken)
//   400 109110 on a transactional send → accepted (an earlier attempt was taken)
//   401 after a new token, 403         → PermanentError sfmc_unauthorized / sfmc_forbidden
//   404, other 4xx                     → PermanentError (the errorcode kept)
//   token endpoint                     → as http/oauth-token.ts classifies it
import { createHash } from 'node:crypto';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { sendWithToken, type OAuthTokenProvider } from '../../http/oauth-token.ts';
import { headerOf, parseRetryAfter } from '../../http/outbound.ts';
import type { Channel, Purpose, Receipt } from '../../types.ts';
import { apiOutputInfo, baseUrlIssues, instanceUrl, isRecord, limitsSchema, parseJson, pseudonym, timeoutSecondsSchema, tokenProvider } from '../api-output.ts';
import { allowedPurposesSchema, outputNameSchema, providerBaaSchema } from '../common.ts';
import { applyFieldMap, compileFieldMap, compileFieldSource, fieldMapIssues, fieldMapSchema, fieldSourceIssues, MessageValue, type CompiledFieldMap, mappedValue } from '../field-map.ts';
import { sendRecorded } from '../send-ledger.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputLimits, OutputSpec, SendContext } from '../spec.ts';

export const SFMC = 'sfmc';

export const SfmcMode = {
  /** A contact enters a journey through an API entry event (channel crm). */
  JourneyEvent: 'journey-event',
  /** A transactional email from a send definition (channel email). */
  TransactionalEmail: 'transactional-email',
  /** A transactional SMS from an SMS send definition (channel sms). */
  TransactionalSms: 'transactional-sms',
} as const;
export type SfmcMode = (typeof SfmcMode)[keyof typeof SfmcMode];

/** Failure codes of this output (safe to log), besides the token's (`sfmc_token_…`). */
export const SfmcCode = {
  RateLimited: 'sfmc_rate_limited',
  Blocked: 'sfmc_blocked',
  Unavailable: 'sfmc_unavailable',
  ServerError: 'sfmc_server_error',
  Unauthorized: 'sfmc_unauthorized',
  Forbidden: 'sfmc_forbidden',
  NotFound: 'sfmc_not_found',
  Rejected: 'sfmc_rejected',
  OutcomeUnknown: 'sfmc_outcome_unknown',
  NoContactKey: 'sfmc_no_contact_key',
  NoRecipient: 'sfmc_no_recipient',
  InstanceUrl: 'sfmc_instance_url_invalid',
} as const;

/** 109110 MCMS_UTM_Validation_DuplicateMessageKey ("Transactional API Response Level Error Codes"). */
export const DUPLICATE_MESSAGE_KEY = 109110;

/** Tokens live 20 minutes; the answer says 1,079 s. */
const TOKEN_LIFETIME_SECONDS = 1079;
/** "Request a new token … five minutes before the token expires." */
const REFRESH_BEFORE_SECONDS = 300;

/**
 * SFMC publishes no per-second rate (it throttles with 429 when load slows it, and sells yearly
 * API volumes by edition): CareRelay's own conservative defaults.
 */
export const SFMC_DEFAULT_LIMITS = { ratePerSecond: 10, burst: 20, concurrency: 5 } as const satisfies OutputLimits;

export interface SfmcConfig {
  readonly name: string;
  readonly type: typeof SFMC;
  readonly subdomain: string;
  readonly clientId: string;
  readonly clientSecret: SecretRef;
  readonly accountId?: string;
  readonly scope?: string;
  readonly mode: SfmcMode;
  readonly eventDefinitionKey?: string;
  readonly definitionKey?: string;
  readonly contactKey: { readonly source: string; readonly pseudonymKey?: SecretRef };
  readonly data: Readonly<Record<string, string>>;
  readonly authBaseUrl?: string;
  readonly ens?: { readonly signatureKey?: SecretRef };
  readonly timeoutSeconds: number;
  readonly limits: OutputLimits;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const sfmcConfigSchema = {
  type: 'object',
  description: 'Salesforce Marketing Cloud Engagement: journey entry events, transactional email or SMS (REST API, OAuth 2.0 client credentials).',
  additionalProperties: false,
  required: ['name', 'type', 'subdomain', 'clientId', 'clientSecret'],
  properties: {
    name: outputNameSchema,
    type: { const: SFMC, description: 'Output type: sfmc.' },
    subdomain: {
      type: 'string',
      pattern: '^[A-Za-z0-9-]{1,63}$',
      'x-hint': 'the tenant subdomain, e.g. mc563885gzs27c5t9-63k636ttgm',
      description: 'Tenant subdomain of the API integration (Setup → Installed Packages → the package\'s Authentication Base URI, https://<subdomain>.auth.marketingcloudapis.com/).',
    },
    clientId: { type: 'string', minLength: 1, maxLength: 200, description: 'Client id of the installed package\'s server-to-server API integration.' },
    clientSecret: { ...secretRefSchema, description: 'Its client secret, by reference.' },
    accountId: {
      type: 'string',
      pattern: '^[0-9]{1,12}$',
      'x-hint': 'the business unit\'s MID, digits',
      description: 'MID of the business unit to act in (account_id of the token request). Absent: the package\'s default business unit.',
    },
    scope: {
      type: 'string',
      minLength: 1,
      maxLength: 500,
      description:
        'Space-separated scopes to ask for (journeys_execute for journey entry events, email_send or sms_send for transactional sends). Absent: every scope granted to the package.',
    },
    mode: {
      enum: Object.values(SfmcMode),
      default: SfmcMode.JourneyEvent,
      description: 'What a delivery becomes: journey-event (channel crm), transactional-email (channel email) or transactional-sms (channel sms).',
    },
    eventDefinitionKey: {
      type: 'string',
      pattern: '^[^.]{1,200}$',
      'x-hint': 'the entry source\'s event definition key, without a period',
      description: 'Event definition key of the journey\'s API entry source (Journey Builder → Entry Sources → API Event). Required with mode journey-event.',
    },
    definitionKey: {
      type: 'string',
      minLength: 1,
      maxLength: 200,
      description: 'Key of the transactional send definition (email or SMS). Required with the transactional modes.',
    },
    contactKey: {
      type: 'object',
      additionalProperties: false,
      default: { source: MessageValue.PatientId },
      description: 'The contact key (subscriber key) the contact is known by in SFMC.',
      properties: {
        source: {
          type: 'string',
          default: MessageValue.PatientId,
          description: `Where it comes from: ${MessageValue.PatientId} (default), ${MessageValue.To}, or a trigger path the rule sends.`,
        },
        pseudonymKey: {
          ...secretRefSchema,
          description:
            'A secret, by reference: when set, the contact key is "cr-" + the first 32 hex digits of HMAC-SHA256(secret, value), so SFMC never holds the patient id itself. Keep the secret: changing it changes every contact key.',
        },
      },
    },
    data: fieldMapSchema('What the journey event\'s Data or the transactional send\'s attributes carry: CareRelay field → data extension attribute.', 'names'),
    authBaseUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: 'Authentication base URI; default https://<subdomain>.auth.marketingcloudapis.com (a local stand-in in tests, http on loopback only).',
    },
    ens: {
      type: 'object',
      additionalProperties: false,
      description:
        'Unsubscribes and hard bounces reported by the Event Notification Service to <publicUrl>/hooks/sfmc/<name>. Set `ens: {}` ' +
        'before registering the callback (POST /platform/v1/ens-callbacks): CareRelay answers its verification at once (POST ' +
        '/platform/v1/ens-verify). Then set signatureKey from the registration\'s answer and restart; event batches are refused ' +
        '(401) until it is set. Absent: no callback is taken for this output (404).',
      properties: {
        signatureKey: {
          ...secretRefSchema,
          description: "The callback's signatureKey (shown once, in the answer to its registration), by reference: batches are signed with it (x-sfmc-ens-signature).",
        },
      },
    },
    timeoutSeconds: timeoutSecondsSchema,
    limits: limitsSchema(SFMC_DEFAULT_LIMITS, 'Marketing Cloud publishes no per-second rate (it answers 429 when it throttles and sells yearly API volumes by edition); the defaults are CareRelay\'s own.'),
    baa: {
      ...providerBaaSchema,
      description:
        'Set true only when your Salesforce BAA lists Marketing Cloud Engagement among its HIPAA Covered Services (it is not covered by default): only then may a rule send care fields here (docs/consent.md rule 4).',
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: SfmcConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const mode = config.mode ?? SfmcMode.JourneyEvent;
  if (mode === SfmcMode.JourneyEvent && config.eventDefinitionKey === undefined) issues.push({ path: [], message: 'mode journey-event needs eventDefinitionKey' });
  if (mode !== SfmcMode.JourneyEvent && config.definitionKey === undefined) issues.push({ path: [], message: `mode ${mode} needs definitionKey (the transactional send definition)` });
  issues.push(...fieldSourceIssues(config.contactKey?.source ?? MessageValue.PatientId, ['contactKey', 'source']));
  issues.push(...fieldMapIssues(config.data ?? {}, ['data']));
  issues.push(...baseUrlIssues(config.authBaseUrl, ['authBaseUrl']));
  return issues;
}

function channelOf(mode: SfmcMode): Channel {
  switch (mode) {
    case SfmcMode.JourneyEvent:
      return 'crm';
    case SfmcMode.TransactionalEmail:
      return 'email';
    case SfmcMode.TransactionalSms:
      return 'sms';
    default:
      return mode satisfies never;
  }
}

export const sfmcSpec: OutputSpec<SfmcConfig, OutputDeps> = {
  type: SFMC,
  summary: 'Salesforce Marketing Cloud: journey entry events, transactional email or SMS (message key from the delivery id).',
  configSchema: sfmcConfigSchema,
  check,
  // Transactional sends are deduplicated by their message key; entry events are not.
  info: (config) => apiOutputInfo(config, channelOf(config.mode ?? SfmcMode.JourneyEvent), (config.mode ?? SfmcMode.JourneyEvent) !== SfmcMode.JourneyEvent, SFMC_DEFAULT_LIMITS),
  create: (config, deps) => createSfmc(config, deps),
};

/** A running sfmc output: it also confirms the Event Notification Service callbacks registered for it. */
export interface SfmcAdapter extends OutboundAdapter {
  /** POST /platform/v1/ens-verify with what the callback's verification message carried; throws the errors.ts classes. */
  confirmEnsCallback(verification: { callbackId: string; verificationKey: string }, context: { readonly signal: AbortSignal }): Promise<void>;
}

/** Whether the contact key SFMC knows (an ENS subscriberKey) is the patient id itself (no pseudonym). */
export function sfmcContactKeyIsPatientId(config: Pick<SfmcConfig, 'contactKey'>): boolean {
  return (config.contactKey?.source ?? MessageValue.PatientId) === MessageValue.PatientId && config.contactKey?.pseudonymKey === undefined;
}

/** The transactional message key of a delivery: the same on every attempt, ≤ 100 characters. */
export function sfmcMessageKey(deliveryId: string): string {
  return `cr-${createHash('sha256').update(deliveryId, 'utf8').digest('hex')}`;
}

/** SFMC's error body ("Handle Errors in REST API"; transactional responses[]). */
interface SfmcAnswer {
  errorcode?: unknown;
  retryAfter?: unknown;
  responses?: unknown;
  eventInstanceId?: unknown;
  requestId?: unknown;
}

/** The errorcodes an answer carries, its own and its responses' (transactional sends). */
function errorCodes(json: SfmcAnswer): number[] {
  const codes: number[] = [];
  if (typeof json.errorcode === 'number' && json.errorcode !== 0) codes.push(json.errorcode);
  if (Array.isArray(json.responses)) {
    for (const r of json.responses) if (isRecord(r) && typeof r.errorcode === 'number' && r.errorcode !== 0) codes.push(r.errorcode);
  }
  return codes;
}

export function createSfmc(config: SfmcConfig, deps: OutputDeps): SfmcAdapter {
  const info = sfmcSpec.info(config);
  const mode = config.mode;
  const authBase = (config.authBaseUrl ?? `https://${config.subdomain}.auth.marketingcloudapis.com`).replace(/\/+$/, '');
  const tokens: OAuthTokenProvider = tokenProvider({
    tokenUrl: `${authBase}/v2/token`,
    grant: {
      kind: 'client_credentials',
      clientId: config.clientId,
      clientSecret: deps.secret(config.clientSecret),
      encoding: 'json',
      ...(config.scope !== undefined ? { scope: config.scope } : {}),
      ...(config.accountId !== undefined ? { extra: { account_id: config.accountId } } : {}),
    },
    defaultLifetimeSeconds: TOKEN_LIFETIME_SECONDS,
    refreshBeforeSeconds: REFRESH_BEFORE_SECONDS,
    timeoutSeconds: config.timeoutSeconds,
    codePrefix: SFMC,
    now: deps.now,
  });
  const data: CompiledFieldMap = compileFieldMap(config.data);
  const keySource = compileFieldSource(config.contactKey.source);
  const pseudonymSecret = config.contactKey.pseudonymKey !== undefined ? deps.secret(config.contactKey.pseudonymKey) : undefined;

  const contactKeyOf = (message: OutboundMessage): string => {
    const value = mappedValue(keySource, message);
    if (value === undefined) throw new PermanentError(SfmcCode.NoContactKey, `delivery ${message.deliveryId} has no ${config.contactKey.source} for the contact key`);
    return pseudonymSecret !== undefined ? pseudonym(pseudonymSecret, String(value)) : String(value);
  };

  /** One call: the request for a token, and the classified answer. */
  const call = async (context: { readonly signal: AbortSignal }, path: string, body: unknown) => {
    const { response } = await sendWithToken(tokens, context.signal, (token) => ({
      url: new URL(path, instanceUrl(token, 'rest_instance_url', SfmcCode.InstanceUrl)),
      headers: {
        authorization: `Bearer ${token.accessToken}`,
        'content-type': 'application/json; charset=utf-8',
        accept: 'application/json',
        'user-agent': 'CareRelay',
      },
      body: Buffer.from(JSON.stringify(body)),
      timeoutMs: config.timeoutSeconds * 1000,
      codePrefix: SFMC,
    }));
    const parsed = parseJson(response.body);
    return { status: response.status, json: (isRecord(parsed) ? parsed : {}) as SfmcAnswer, retryAfter: headerOf(response.headers, 'retry-after') };
  };

  const refusal = (status: number, json: SfmcAnswer, retryAfter: string | undefined): Error & { providerCode?: string } => {
    const codes = errorCodes(json);
    const providerCode = codes.length > 0 ? String(codes.at(-1)) : undefined;
    const what = `Marketing Cloud answered HTTP ${status}${providerCode ? ` (errorcode ${providerCode})` : ''}`;
    const withCode = <E extends Error>(error: E): E & { providerCode?: string } => Object.assign(error, providerCode ? { providerCode } : {});
    if (status === 429) {
      const retryAfterMs = parseRetryAfter(retryAfter, deps.now().getTime()) ?? (typeof json.retryAfter === 'number' && json.retryAfter >= 0 ? json.retryAfter * 1000 : undefined);
      // 50200: "Your requests are temporarily blocked" — no time given: the engine backs off.
      return withCode(new RateLimitedError(codes.includes(50200) ? SfmcCode.Blocked : SfmcCode.RateLimited, what, { retryAfterMs }));
    }
    if (status === 408 || status === 502 || status === 503 || status === 504) return withCode(new TransientError(SfmcCode.Unavailable, what, { retryAfterMs: parseRetryAfter(retryAfter, deps.now().getTime()) }));
    if (status >= 500) return withCode(new AmbiguousError(SfmcCode.ServerError, `${what}; it may have taken the request`));
    if (status === 401) return withCode(new PermanentError(SfmcCode.Unauthorized, `${what} with a new token: check the package's API integration`));
    if (status === 403) return withCode(new PermanentError(SfmcCode.Forbidden, `${what}: the package lacks the permission (journeys_execute, email_send, sms_send) or the business unit`));
    if (status === 404) return withCode(new PermanentError(SfmcCode.NotFound, `${what}: check the definition key`));
    return withCode(new PermanentError(SfmcCode.Rejected, what));
  };

  const journeyEntry = async (message: OutboundMessage, context: SendContext): Promise<Receipt> => {
    const body = { ContactKey: contactKeyOf(message), EventDefinitionKey: config.eventDefinitionKey, Data: applyFieldMap(data, message) };
    return sendRecorded(deps, { output: config.name, outcomeUnknownCode: SfmcCode.OutcomeUnknown, what: 'the journey entry', provider: 'Marketing Cloud' }, message, context, async () => {
      const { status, json, retryAfter } = await call(context, 'interaction/v1/events', body);
      if (status === 201 || status === 200) {
        if (typeof json.eventInstanceId !== 'string' || json.eventInstanceId === '') {
          throw new AmbiguousError(SfmcCode.OutcomeUnknown, `Marketing Cloud answered HTTP ${status} without an eventInstanceId`);
        }
        return { providerId: json.eventInstanceId };
      }
      throw refusal(status, json, retryAfter);
    });
  };

  const transactional = async (message: OutboundMessage, context: SendContext): Promise<Receipt> => {
    if (message.to === undefined || message.to === '') throw new PermanentError(SfmcCode.NoRecipient, `delivery ${message.deliveryId} has no recipient address`);
    const sms = mode === SfmcMode.TransactionalSms;
    const messageKey = sfmcMessageKey(message.deliveryId);
    const body = {
      definitionKey: config.definitionKey,
      recipient: {
        contactKey: contactKeyOf(message),
        // The SMS reference shows the number as digits ("15555551234").
        to: sms ? message.to.replace(/^\+/, '') : message.to,
        attributes: applyFieldMap(data, message),
      },
    };
    const { status, json, retryAfter } = await call(context, `messaging/v1/${sms ? 'sms' : 'email'}/messages/${messageKey}`, body);
    const acceptedAt = deps.now().toISOString();
    if (status === 202 || status === 200 || status === 201) {
      return { providerId: messageKey, acceptedAt, detail: { status, ...(typeof json.requestId === 'string' ? { requestId: json.requestId } : {}) } };
    }
    // The key was used within the window: this delivery was taken by an earlier attempt.
    if (status === 400 && errorCodes(json).includes(DUPLICATE_MESSAGE_KEY)) return { providerId: messageKey, acceptedAt, detail: { status, duplicate: true } };
    throw refusal(status, json, retryAfter);
  };

  return {
    name: config.name,
    ...info,
    send: (message, context) => (mode === SfmcMode.JourneyEvent ? journeyEntry(message, context) : transactional(message, context)),
    async confirmEnsCallback(verification, context) {
      const { status, json, retryAfter } = await call(context, 'platform/v1/ens-verify', { callbackId: verification.callbackId, verificationKey: verification.verificationKey });
      if (status < 200 || status >= 300) throw refusal(status, json, retryAfter);
    },
  };
}
