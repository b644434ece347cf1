// The `hubspot` output: contacts and custom behavioural events in a HubSpot account, and opt-outs
// pushed as communication subscription statuses.
//
// Follows HubSpot's public API (OpenAPI collection HubSpot/HubSpot-public-api-spec-collection;
// reference pages on developers.hubspot.com):
//   - CRM contacts v3, "Create or update a batch of contacts by unique property values":
//     POST /crm/v3/objects/contacts/batch/upsert, { inputs: [{ idProperty, id, properties,
//     objectWriteTraceId }] } (properties are strings), 200 with results[] (id, new) or 207 with
//     errors[] (docs …/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts);
//   - Events v3, "Send a custom event occurrence": POST /events/v3/send, { eventName
//     (pe<HubID>_<name>), email, uuid, occurredAt, properties }, 204 (docs …/events/send-event-
//     data/guide). The uuid "must be unique within the event type … the first will be accepted
//     and all others will be rejected": CareRelay sends a UUID derived from the delivery id
//     (common.ts deliveryUuid), the same on every attempt, so HubSpot keeps one occurrence;
//   - Communication preferences v4, "batch update subscription statuses":
//     POST /communication-preferences/v4/statuses/batch/write, { inputs: [{ subscriberIdString,
//     channel: EMAIL, statusState: UNSUBSCRIBED, subscriptionId }] } (optOut). Never
//     "unsubscribe from all": HubSpot cannot undo it, and CareRelay's ledger could not either.
//     The API keeps email statuses only: `channel` is an enum of EMAIL alone in v4 and in the
//     date-versioned 2026-03 and 2026-09 versions (PublicStatusRequest: "Currently, only EMAIL is
//     supported"), and HubSpot's SMS subscription statuses change only through its own SMS tool's
//     keywords — so an SMS STOP is not pushed to HubSpot (optOutChannels: email);
//   - CRM contacts v3, "Permanently delete a contact (GDPR-compliant)": POST
//     /crm/v3/objects/contacts/gdpr-delete { objectId: <email>, idProperty: email } → 204; an
//     address HubSpot does not know is blocklisted all the same (forget, on a GDPR erasure);
//   - Webhooks v3 (webhooks.ts): the app's contact.propertyChange events for hs_email_optout and
//     hs_email_optout_<subscription id>, signed with the app's client secret (webhookSecret),
//     received at POST /hooks/hubspot/<output> (api/tool-hooks.ts). They name the contact by
//     HubSpot's id only: an upsert records the id HubSpot answered with in the contact holdings
//     (ContactHolding.toolId), and the webhook's contact is found by it — no lookup call;
//   - OAuth v1 token endpoint (refresh_token grant, POST /oauth/v1/token) for public apps; a
//     private app's access token otherwise ("Authorization: Bearer"). Tokens are refreshed on
//     their lifetime, not on a 401 (usage guidelines);
//   - API usage guidelines: per-10-second limits per app (Free/Starter 100, Professional and
//     Enterprise 190, with the API limit increase 250) and daily limits per account (250,000 /
//     625,000 / 1,000,000, + 1,000,000 per increase pack, reset at midnight in the account's time
//     zone); 429 bodies carry policyName DAILY or TEN_SECONDLY_ROLLING; headers
//     X-HubSpot-RateLimit-Max / -Remaining / -Interval-Milliseconds / -Daily / -Daily-Remaining.
// The date-versioned paths (…/2026-03/…) take the same bodies; their event path is given two
// ways in HubSpot's pages (/events/2026-03/send and /events/custom/2026-03/send), so the v3 paths
// are used.
//
// One output does one kind of call (`action`): `upsert` the contact by a configured unique
// property — email by default, never a name —, or send the custom event `event.name`. What is
// sent is the rule's `send.to` (the email) and the fields listed in `properties`, nothing else.
//
// Failures (one call per send, never retried here):
//   429                          → RateLimitedError: Retry-After if given, else the daily reset
//                                  (policy DAILY: next midnight in timeZone) or the window
//                                  (X-HubSpot-RateLimit-Interval-Milliseconds)
//   477 (migration in progress), 408, 502, 503, 504, 521–524
//                                → TransientError (Retry-After honoured)
//   other 5xx, timeout, reset    → AmbiguousError (retried: upserts and uuid-keyed events are idempotent)
//   207/400 naming INVALID_EMAIL → RecipientError unfit
//   401, 403 (missing scope), 404, other 4xx, a 207 error
//                                → PermanentError
import { DateTime } from 'luxon';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RecipientError, RecipientSignal } from '../../errors.ts';
import { callApi, prop, type ApiAnswer } from '../../http/json.ts';
import { headerOf, parseRetryAfter } from '../../http/outbound.ts';
import { OAuthTokenProvider } from '../../http/oauth-token.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import {
  allowedPurposesSchema,
  beginContactSend,
  deliveryUuid,
  destinationUrlIssues,
  holdingsOf,
  mappedProperties,
  optOutPurposes,
  recordHolding,
  outputNameSchema,
  propertiesSchema,
  propertyMapIssues,
  providerBaaSchema,
  providerFailure,
  type PropertyMap,
} from '../common.ts';
import { ForgetOutcome, OptOutOutcome, type OptOutScope, type OutboundAdapter, type OutboundMessage, type OutputDeps, type OutputLimits, type OutputSpec, type SendContext } from '../spec.ts';

export const HUBSPOT = 'hubspot';

export const HubspotAction = {
  /** Create or update the contact by idProperty (crm.objects.contacts.write). */
  Upsert: 'upsert',
  /** Record an occurrence of a custom behavioural event (analytics.behavioral_events.send). */
  Event: 'event',
} as const;
export type HubspotAction = (typeof HubspotAction)[keyof typeof HubspotAction];

export const HubspotTier = { Free: 'free', Starter: 'starter', Professional: 'professional', Enterprise: 'enterprise' } as const;
export type HubspotTier = (typeof HubspotTier)[keyof typeof HubspotTier];

/** Failure codes of this output besides common.ts ProviderFailure's (safe to log). */
export const HubspotCode = {
  NoId: 'hubspot_no_id',
  InvalidEmail: 'recipient_unfit',
} as const;

/** Requests per 10 seconds per app, and per day per account (usage guidelines). */
const TEN_SECOND_LIMIT: Readonly<Record<HubspotTier, number>> = { free: 100, starter: 100, professional: 190, enterprise: 190 };
const DAILY_LIMIT: Readonly<Record<HubspotTier, number>> = { free: 250_000, starter: 250_000, professional: 625_000, enterprise: 1_000_000 };
const INCREASE_TEN_SECOND = 250;
const INCREASE_DAILY = 1_000_000;

/** Contact properties that would name the person: never an idProperty (contacts are matched by a unique property, never by name). */
const NAME_PROPERTIES = ['firstname', 'lastname', 'name', 'full_name', 'fullname'];

export interface HubspotConfig {
  readonly name: string;
  readonly type: typeof HUBSPOT;
  readonly portalId: number;
  readonly auth: {
    readonly privateAppToken?: SecretRef;
    readonly oauth?: { readonly clientId: string; readonly clientSecret: SecretRef; readonly refreshToken: SecretRef; readonly tokenUrl: string };
  };
  readonly action: HubspotAction;
  readonly idProperty: string;
  readonly event?: { readonly name: string };
  readonly properties: PropertyMap;
  readonly subscriptions: Readonly<Partial<Record<Purpose, number>>>;
  readonly webhookSecret?: SecretRef;
  readonly tier: HubspotTier;
  readonly apiLimitIncreasePacks: number;
  readonly timeZone: string;
  readonly apiBaseUrl: string;
  readonly timeoutSeconds: number;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

const PROPERTY_NAME = { pattern: '^[a-z][a-z0-9_]*$', hint: "a HubSpot property's internal name, e.g. firstname" };

export const hubspotConfigSchema = {
  type: 'object',
  description: 'Contacts and custom events in HubSpot (CRM v3, Events v3), opt-outs as subscription statuses (v4).',
  additionalProperties: false,
  required: ['name', 'type', 'portalId', 'auth', 'action'],
  properties: {
    name: outputNameSchema,
    type: { const: HUBSPOT, description: 'Output type: hubspot.' },
    portalId: {
      type: 'integer',
      minimum: 1,
      description: 'The HubSpot account id (HubID, shown in the account menu): names the account whose limits this output shares, and prefixes event names (pe<HubID>_…).',
    },
    auth: {
      type: 'object',
      description: 'How to call the API: a private app access token, or a public app installed by OAuth (give exactly one).',
      additionalProperties: false,
      properties: {
        privateAppToken: { ...secretRefSchema, description: 'Access token of a private app of this account (Settings → Integrations → Private apps), by reference.' },
        oauth: {
          type: 'object',
          description: 'A public app: its client id and secret and the refresh token its installation gave; access tokens are refreshed before they expire.',
          additionalProperties: false,
          required: ['clientId', 'clientSecret', 'refreshToken'],
          properties: {
            clientId: { type: 'string', minLength: 1, description: "The app's client id." },
            clientSecret: { ...secretRefSchema, description: "The app's client secret, by reference (also what HubSpot signs webhooks with)." },
            refreshToken: { ...secretRefSchema, description: 'The refresh token of the installation in this account, by reference.' },
            tokenUrl: {
              type: 'string',
              format: 'uri',
              pattern: '^https?://',
              default: 'https://api.hubapi.com/oauth/v1/token',
              description: 'OAuth token endpoint (a local stand-in in tests).',
            },
          },
        },
      },
    },
    action: {
      enum: Object.values(HubspotAction),
      description: 'What each delivery does: upsert (create or update the contact) or event (record a custom behavioural event occurrence).',
    },
    idProperty: {
      type: 'string',
      pattern: PROPERTY_NAME.pattern,
      default: 'email',
      description:
        'upsert: the contact property with unique values the contact is matched on (email, or a custom property created with ' +
        '"unique values"); its value is send.to for email, else the field mapped to it in properties. Never a name.',
    },
    event: {
      type: 'object',
      description: 'event: the custom event (Data Management → Custom events; Enterprise).',
      additionalProperties: false,
      required: ['name'],
      properties: {
        name: {
          type: 'string',
          pattern: '^(pe[0-9]+_)?[a-z0-9_]{1,100}$',
          description: 'Its internal name, e.g. newsletter_invitation (pe<portalId>_ is added when missing).',
        },
      },
    },
    properties: propertiesSchema('upsert: contact properties; event: event properties.', PROPERTY_NAME),
    subscriptions: {
      type: 'object',
      default: {},
      description:
        'Opt-outs: the email subscription type id (Settings → Marketing → Email → Subscription types) that each purpose is sent ' +
        'under, e.g. { service.info: 123456 }. An opt-out of a purpose sets that subscription to UNSUBSCRIBED; without an entry ' +
        'nothing is changed in HubSpot.',
      propertyNames: { enum: [...PURPOSES] },
      additionalProperties: { type: 'integer', minimum: 1, description: 'A subscription type id.' },
    },
    webhookSecret: {
      ...secretRefSchema,
      description:
        "Opt-outs made in HubSpot: the client secret of the app whose webhooks are sent to POST /hooks/hubspot/<name> (HubSpot signs " +
        'them with it, X-HubSpot-Signature-v3), by reference. Default: auth.oauth.clientSecret. Without either, no webhook is taken ' +
        'for this output (404). Point the webhook at the output that upserts contacts: it knows their HubSpot ids.',
    },
    tier: {
      enum: Object.values(HubspotTier),
      default: HubspotTier.Starter,
      description: "The account's tier, for the documented limits the engine enforces (per 10 s per app, per day per account).",
    },
    apiLimitIncreasePacks: {
      type: 'integer',
      minimum: 0,
      maximum: 2,
      default: 0,
      description: 'API limit increase packs bought (250 requests per 10 s, +1,000,000 a day each).',
    },
    timeZone: {
      type: 'string',
      format: 'iana-timezone',
      default: 'UTC',
      description: "The account's time zone (Settings → Account defaults): the daily limit resets at its midnight.",
    },
    apiBaseUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      default: 'https://api.hubapi.com',
      description: 'API base URL (a local stand-in in tests: http on loopback only).',
    },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 15, description: 'Seconds for the whole API call; no answer in time is an ambiguous failure.' },
    baa: {
      ...providerBaaSchema,
      description:
        "Set true only when HubSpot's BAA (Sensitive Data Terms, Enterprise) covers this use: only then may care fields go to it " +
        '(docs/consent.md rule 4; a rule sending them to an output without it is refused at load).',
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

/** The secret HubSpot signs this output's webhooks with: webhookSecret, else the OAuth app's client secret; undefined: none taken. */
export function hubspotWebhookSecret(config: Pick<HubspotConfig, 'webhookSecret' | 'auth'>): SecretRef | undefined {
  return config.webhookSecret ?? config.auth.oauth?.clientSecret;
}

/** The event's fully qualified name (pe<HubID>_<name>). */
export function hubspotEventName(portalId: number, name: string): string {
  return /^pe[0-9]+_/.test(name) ? name : `pe${portalId}_${name}`;
}

function check(config: HubspotConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const auth = config.auth ?? {};
  if ((auth.privateAppToken === undefined) === (auth.oauth === undefined)) issues.push({ path: ['auth'], message: 'give exactly one of privateAppToken and oauth' });
  if (config.action === HubspotAction.Event) {
    if (config.event === undefined) issues.push({ path: ['event'], message: 'action event needs event: { name: <internal name of the custom event> }' });
    else if (/^pe[0-9]+_/.test(config.event.name) && !config.event.name.startsWith(`pe${config.portalId}_`)) {
      issues.push({ path: ['event', 'name'], message: `the event belongs to another account than portalId ${config.portalId}` });
    }
  }
  const properties = config.properties ?? {};
  for (const [field, target] of Object.entries(properties)) {
    if (target === 'email') issues.push({ path: ['properties', field], message: "the contact's email is the rule's send.to: do not map a field to it" });
    if (target.startsWith('hs_email_optout')) issues.push({ path: ['properties', field], message: 'opt-outs go to HubSpot as subscription statuses (optOut), never as a property' });
  }
  if (config.action === HubspotAction.Upsert) {
    const idProperty = config.idProperty ?? 'email';
    if (NAME_PROPERTIES.includes(idProperty) || Object.entries(properties).some(([field, target]) => target === idProperty && field.startsWith('patient.name'))) {
      issues.push({ path: ['idProperty'], message: `contacts are matched on a property with unique values, never a name; "${idProperty}" holds a name` });
    } else if (idProperty !== 'email' && !Object.values(properties).includes(idProperty)) {
      issues.push({ path: ['idProperty'], message: `no field is mapped to "${idProperty}" in properties: its value would be missing` });
    }
  }
  issues.push(...propertyMapIssues(properties, ['properties']));
  issues.push(...destinationUrlIssues(config.apiBaseUrl, ['apiBaseUrl'], false));
  if (auth.oauth !== undefined) issues.push(...destinationUrlIssues(auth.oauth.tokenUrl, ['auth', 'oauth', 'tokenUrl'], false));
  return issues;
}

/** The limits the engine enforces in front of an output (usage guidelines; shared by the account's outputs). */
export function hubspotLimits(config: Pick<HubspotConfig, 'portalId' | 'tier' | 'apiLimitIncreasePacks'>): OutputLimits {
  const tier = config.tier ?? HubspotTier.Starter;
  const packs = config.apiLimitIncreasePacks ?? 0;
  const perTenSeconds = packs > 0 ? INCREASE_TEN_SECOND : TEN_SECOND_LIMIT[tier];
  return {
    ratePerSecond: perTenSeconds / 10,
    burst: perTenSeconds,
    perDay: DAILY_LIMIT[tier] + packs * INCREASE_DAILY,
    account: `${HUBSPOT}:${config.portalId}`,
  };
}

export const hubspotSpec: OutputSpec<HubspotConfig, OutputDeps> = {
  type: HUBSPOT,
  summary: 'HubSpot: contact upsert by a unique property or custom behavioural events; opt-outs as subscription statuses.',
  configSchema: hubspotConfigSchema,
  check,
  info: (config) => ({
    channel: 'crm',
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // A contact is upserted by its email address (send.to): without one there is nothing to send.
    needsAddress: true,
    // Upserts match on a unique property; events carry a uuid HubSpot keeps once.
    idempotent: true,
    limits: hubspotLimits(config),
    fields: Object.keys(config.properties ?? {}),
  }),
  create: (config, deps) => createHubspot(config, deps),
};

/** Milliseconds until the next midnight in `zone` (when HubSpot's daily count resets). */
export function msUntilMidnight(nowMs: number, zone: string): number {
  const now = DateTime.fromMillis(nowMs, { zone });
  return now.startOf('day').plus({ days: 1 }).toMillis() - nowMs;
}

/** How long a 429 says to wait: Retry-After, else the daily reset or the rolling window. */
export function hubspotRetryAfterMs(answer: Pick<ApiAnswer, 'headers' | 'json'>, nowMs: number, zone: string): number | undefined {
  const retryAfter = parseRetryAfter(headerOf(answer.headers, 'retry-after'), nowMs);
  if (retryAfter !== undefined) return retryAfter;
  if (prop(answer.json, 'policyName') === 'DAILY' || headerOf(answer.headers, 'x-hubspot-ratelimit-daily-remaining') === '0') return msUntilMidnight(nowMs, zone);
  const interval = Number(headerOf(answer.headers, 'x-hubspot-ratelimit-interval-milliseconds'));
  return Number.isFinite(interval) && interval > 0 ? interval : undefined;
}

/** What the rate-limit headers of a successful answer say (kept in the receipt's detail). */
function rateDetail(answer: ApiAnswer): Record<string, number> {
  const detail: Record<string, number> = {};
  const remaining = Number(headerOf(answer.headers, 'x-hubspot-ratelimit-remaining') ?? NaN);
  const daily = Number(headerOf(answer.headers, 'x-hubspot-ratelimit-daily-remaining') ?? NaN);
  if (Number.isFinite(remaining)) detail.rateLimitRemaining = remaining;
  if (Number.isFinite(daily)) detail.dailyRemaining = daily;
  return detail;
}

/** A HubSpot error body (Error / StandardError): every field optional ("treat all as optional"). */
function mentionsInvalidEmail(error: unknown): boolean {
  return JSON.stringify(error ?? {}).includes('INVALID_EMAIL');
}

function classify(answer: ApiAnswer, what: string, nowMs: number, zone: string): Error {
  const { status } = answer;
  if (status === 429) return providerFailure(HUBSPOT, 429, what, hubspotRetryAfterMs(answer, nowMs, zone));
  const retryAfterMs = parseRetryAfter(headerOf(answer.headers, 'retry-after'), nowMs);
  // 477: a portal migration is under way; 521–524: the CDN in front of the API could not reach it.
  if (status === 477 || (status >= 521 && status <= 524)) return providerFailure(HUBSPOT, 503, what, retryAfterMs);
  if (status >= 400 && status < 500 && mentionsInvalidEmail(answer.json)) {
    return new RecipientError(RecipientSignal.Unfit, HubspotCode.InvalidEmail, `${what}: HTTP ${status}, the email address is invalid`, { providerCode: 'INVALID_EMAIL' });
  }
  return providerFailure(HUBSPOT, status, what, retryAfterMs);
}

export function createHubspot(config: HubspotConfig, deps: OutputDeps): OutboundAdapter {
  const info = hubspotSpec.info(config);
  const holdings = holdingsOf(deps, config.name);
  const base = config.apiBaseUrl.replace(/\/+$/, '');
  const timeoutMs = config.timeoutSeconds * 1000;
  const token = accessToken(config, deps, timeoutMs);
  const output = config.name;

  const call = async (path: string, body: unknown, signal: AbortSignal): Promise<ApiAnswer> =>
    callApi({
      url: new URL(`${base}${path}`),
      method: 'POST',
      headers: { authorization: `Bearer ${await token(signal)}` },
      body,
      timeoutMs,
      signal,
      codePrefix: HUBSPOT,
    });

  const upsert = async (message: OutboundMessage, email: string, context: SendContext): Promise<Receipt> => {
    const properties: Record<string, string> = { ...mappedProperties(message.fields, config.properties), email };
    const id = config.idProperty === 'email' ? email : properties[config.idProperty];
    if (id === undefined) throw new PermanentError(HubspotCode.NoId, `delivery ${message.deliveryId} gives no value for ${config.idProperty}, the property contacts are matched on`);
    const what = 'HubSpot contact upsert';
    const answer = await call('/crm/v3/objects/contacts/batch/upsert', { inputs: [{ idProperty: config.idProperty, id, properties, objectWriteTraceId: deliveryUuid(message.deliveryId) }] }, context.signal);
    const nowMs = deps.now().getTime();
    const [error] = (prop(answer.json, 'errors') as unknown[] | undefined) ?? [];
    if (answer.status === 207 || (answer.status === 200 && error !== undefined)) {
      // The one input failed (multi-status): the error says why.
      if (mentionsInvalidEmail(error)) throw new RecipientError(RecipientSignal.Unfit, HubspotCode.InvalidEmail, `${what}: the email address is invalid`, { providerCode: 'INVALID_EMAIL' });
      throw new PermanentError(`${HUBSPOT}_rejected`, `${what}: HTTP 207, ${String(prop(error, 'category') ?? 'error')}`);
    }
    if (answer.status !== 200 && answer.status !== 201) throw classify(answer, what, nowMs, config.timeZone);
    const [result] = (prop(answer.json, 'results') as unknown[] | undefined) ?? [];
    const contactId = prop(result, 'id');
    if (typeof contactId !== 'string' || contactId === '') throw new AmbiguousError(`${HUBSPOT}_outcome_unknown`, `${what}: HTTP ${answer.status} without a contact id`);
    // HubSpot's webhooks name the contact by this id only: kept with the holding to find the
    // patient again (not recorded: TransientError, and the upsert, idempotent, goes again).
    await recordHolding(holdings, output, message, email, deps.now(), contactId);
    return { providerId: contactId, acceptedAt: deps.now().toISOString(), detail: { created: prop(result, 'new') === true, ...rateDetail(answer) } };
  };

  const event = async (message: OutboundMessage, email: string, context: SendContext): Promise<Receipt> => {
    const uuid = deliveryUuid(message.deliveryId);
    const body = {
      eventName: hubspotEventName(config.portalId, config.event!.name),
      email,
      uuid,
      occurredAt: deps.now().toISOString(),
      properties: mappedProperties(message.fields, config.properties),
    };
    const answer = await call('/events/v3/send', body, context.signal);
    if (answer.status !== 204 && answer.status !== 200) throw classify(answer, 'HubSpot event', deps.now().getTime(), config.timeZone);
    return { providerId: uuid, acceptedAt: deps.now().toISOString(), detail: rateDetail(answer) };
  };

  return {
    name: output,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      const email = await beginContactSend(HUBSPOT, holdings, output, message, context, deps.now());
      return config.action === HubspotAction.Event ? event(message, email, context) : upsert(message, email, context);
    },
    optOutChannels: ['email'],
    async optOut(contact, scope: OptOutScope, context) {
      // Email subscriptions only (channel EMAIL is the API's one channel), for the purposes mapped to one.
      if ((scope.channel !== undefined && scope.channel !== 'email') || !contact.contactKey.includes('@')) return OptOutOutcome.NotApplicable;
      const purposes = optOutPurposes(scope, Object.keys(config.subscriptions) as Purpose[]);
      const ids = [...new Set(purposes.map((p) => config.subscriptions[p]).filter((id): id is number => id !== undefined))];
      if (ids.length === 0) return OptOutOutcome.NotApplicable;
      const inputs = ids.map((subscriptionId) => ({ subscriberIdString: contact.contactKey, channel: 'EMAIL', statusState: 'UNSUBSCRIBED', subscriptionId }));
      const answer = await call('/communication-preferences/v4/statuses/batch/write', { inputs }, context.signal);
      const errors = (prop(answer.json, 'errors') as unknown[] | undefined) ?? [];
      if ((answer.status === 200 || answer.status === 207) && errors.length === 0) return OptOutOutcome.Applied;
      if (answer.status === 207) throw new PermanentError(`${HUBSPOT}_rejected`, `HubSpot subscription status: HTTP 207, ${String(prop(errors[0], 'category') ?? 'error')}`);
      throw classify(answer, 'HubSpot subscription status', deps.now().getTime(), config.timeZone);
    },
    async forget(contact, context) {
      // The holdings' key is the contact's email (send.to), whatever property upserts match on.
      if (!contact.contactKey.includes('@')) return ForgetOutcome.NotHeld;
      const answer = await call('/crm/v3/objects/contacts/gdpr-delete', { objectId: contact.contactKey, idProperty: 'email' }, context.signal);
      if (answer.status === 204 || answer.status === 200) return ForgetOutcome.Forgotten;
      if (answer.status === 404) return ForgetOutcome.NotHeld;
      throw classify(answer, 'HubSpot GDPR delete', deps.now().getTime(), config.timeZone);
    },
  };
}

/** The bearer token of each call: the private app's, or an OAuth access token kept and refreshed before it expires. */
function accessToken(config: HubspotConfig, deps: OutputDeps, timeoutMs: number): (signal: AbortSignal) => Promise<string> {
  if (config.auth.privateAppToken !== undefined) {
    const fixed = deps.secret(config.auth.privateAppToken);
    return async () => fixed;
  }
  const oauth = config.auth.oauth!;
  const provider = new OAuthTokenProvider({
    tokenUrl: new URL(oauth.tokenUrl),
    grant: { kind: 'refresh_token', clientId: oauth.clientId, clientSecret: deps.secret(oauth.clientSecret), refreshToken: deps.secret(oauth.refreshToken) },
    // HubSpot's access tokens live 30 minutes (expires_in says so); renewed a minute before.
    defaultLifetimeSeconds: 1800,
    refreshBeforeSeconds: 60,
    timeoutMs,
    codePrefix: HUBSPOT,
    now: () => deps.now().getTime(),
  });
  return async (signal) => (await provider.token(signal)).accessToken;
}
