// A stand-in for the HubSpot API parts the `hubspot` output uses, on 127.0.0.1. It enforces what
// HubSpot's OpenAPI collection and reference pages document:
//   - POST /crm/v3/objects/contacts/batch/upsert: { inputs: 1..100 × { idProperty, id, properties
//     (string values), objectWriteTraceId? } }; idProperty must be a property with unique values
//     (email, or one declared unique here); 200 { status: COMPLETE, results: [{ id, new, … }] };
//     an invalid email → 400 VALIDATION_ERROR with an INVALID_EMAIL error;
//   - POST /events/v3/send: { eventName pe<portal>_<name> of a defined event, properties
//     (strings), email | objectId | utk, uuid?, occurredAt? }; 204; an occurrence whose uuid was
//     already taken for the event type is dropped (the first is kept);
//   - POST /communication-preferences/v4/statuses/batch/write: { inputs: [{ subscriberIdString,
//     channel: EMAIL, statusState, subscriptionId (a defined subscription type) }] }; 200;
//   - POST /crm/v3/objects/contacts/gdpr-delete { objectId, idProperty? }: the contact deleted for
//     good, 204; an email it does not know is blocklisted all the same (204), an unknown id 404;
//   - webhooks (Webhooks API v3, "Validating requests"): postWebhook() sends a batch of
//     contact.propertyChange events to a URL the way HubSpot does — JSON array, signed with the
//     app's client secret: X-HubSpot-Signature-v3 = base64 HMAC-SHA256 of method + URI + body +
//     X-HubSpot-Request-Timestamp (epoch ms);
//   - POST /oauth/v1/token (refresh_token grant, form-encoded): access tokens that expire after
//     `tokenLifetimeSeconds` of the stand-in's clock; an expired or unknown token → 401;
//   - Authorization: Bearer <private app token | live OAuth token>; JSON bodies only (415);
//   - errors as HubSpot's Error body { status, message, correlationId, category, errors? };
//   - limits (usage guidelines): `perTenSeconds` requests per rolling 10 s window and `perDay`
//     per day, each refused with 429 + { errorType: RATE_LIMIT, policyName: TEN_SECONDLY_ROLLING |
//     DAILY }; X-HubSpot-RateLimit-Max/-Remaining/-Interval-Milliseconds on every answer, and
//     -Daily/-Daily-Remaining for private app calls (HubSpot omits them for OAuth).
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { header, startHttpStandIn, type Answer, type HttpStandIn, type RecordedRequest } from './http-standin.ts';

export interface HubspotStandIn extends HttpStandIn {
  readonly portalId: number;
  readonly privateAppToken: string;
  readonly oauth: { clientId: string; clientSecret: string; refreshToken: string };
  /** Contacts by id: their properties. */
  readonly contacts: Map<string, Record<string, string>>;
  /** Event occurrences kept. */
  readonly events: Array<{ eventName: string; email?: string; uuid?: string; properties: Record<string, string> }>;
  /** Subscription statuses by "email|subscriptionId". */
  readonly statuses: Map<string, string>;
  /** Access tokens issued by the token endpoint, in order. */
  readonly issuedTokens: string[];
  /** Emails blocklisted by a GDPR delete. */
  readonly gdprBlocked: Set<string>;
  /**
   * As HubSpot's webhooks: a contact.propertyChange event per change (a contact's property set to
   * `value`), posted signed to `url`; resolves with the receiver's status.
   */
  postWebhook(url: string, changes: Array<{ contactId: string; property: string; value?: string }>, options?: { clientSecret?: string; timestamp?: number }): Promise<number>;
  /** Answers the next call with HubSpot's 429 for the policy. */
  rateLimitNext(policy: 'TEN_SECONDLY_ROLLING' | 'DAILY'): void;
}

export interface HubspotStandInOptions {
  /** Epoch ms; default Date.now. Drives the 10-s window, the day and token expiry. */
  now?: () => number;
  perTenSeconds?: number;
  perDay?: number;
  tokenLifetimeSeconds?: number;
  /** Custom properties declared with unique values. */
  uniqueProperties?: string[];
  /** Custom event internal names defined in the account (without the pe<portal>_ prefix). */
  events?: string[];
  subscriptionIds?: number[];
}

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export async function startHubspotStandIn(options: HubspotStandInOptions = {}): Promise<HubspotStandIn> {
  const now = options.now ?? Date.now;
  const portalId = 1234567;
  const privateAppToken = `pat-na1-${randomUUID()}`;
  const oauth = { clientId: randomUUID(), clientSecret: randomUUID(), refreshToken: `na1-${randomUUID()}` };
  const perTenSeconds = options.perTenSeconds ?? 100;
  const perDay = options.perDay ?? 250_000;
  const unique = new Set(['email', 'hs_object_id', ...(options.uniqueProperties ?? [])]);
  const definedEvents = new Set((options.events ?? ['newsletter_invitation']).map((e) => `pe${portalId}_${e}`));
  const subscriptionIds = new Set(options.subscriptionIds ?? [111, 222]);
  const contacts = new Map<string, Record<string, string>>();
  const byKey = new Map<string, string>();
  const events: HubspotStandIn['events'] = [];
  const uuids = new Set<string>();
  const statuses = new Map<string, string>();
  const gdprBlocked = new Set<string>();
  let webhookEventId = 1000;
  const tokens = new Map<string, number>();
  const issuedTokens: string[] = [];
  const window: number[] = [];
  let day = '';
  let dayCount = 0;

  const error = (status: number, category: string, message: string, extra: Record<string, unknown> = {}): Answer => ({
    status,
    body: { status: 'error', message, correlationId: randomUUID(), category, ...extra },
  });
  const rateLimited = (policy: 'TEN_SECONDLY_ROLLING' | 'DAILY'): Answer => ({
    status: 429,
    headers:
      policy === 'DAILY'
        ? { 'x-hubspot-ratelimit-daily': String(perDay), 'x-hubspot-ratelimit-daily-remaining': '0' }
        : { 'x-hubspot-ratelimit-max': String(perTenSeconds), 'x-hubspot-ratelimit-remaining': '0', 'x-hubspot-ratelimit-interval-milliseconds': '10000' },
    body: {
      status: 'error',
      message: policy === 'DAILY' ? 'You have reached your daily limit.' : 'You have reached your ten_secondly_rolling limit.',
      errorType: 'RATE_LIMIT',
      correlationId: randomUUID(),
      policyName: policy,
      requestId: randomUUID(),
    },
  });
  const isStrings = (value: unknown): value is Record<string, string> =>
    typeof value === 'object' && value !== null && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');

  const handle = (request: RecordedRequest): Answer => {
    if (request.method === 'POST' && request.path === '/oauth/v1/token') {
      const form = request.form;
      if (form === undefined) return { status: 415, body: { status: 'error', message: 'form-encoded body expected' } };
      if (form.get('grant_type') !== 'refresh_token' || form.get('client_id') !== oauth.clientId || form.get('client_secret') !== oauth.clientSecret || form.get('refresh_token') !== oauth.refreshToken) {
        return { status: 400, body: { status: 'BAD_REFRESH_TOKEN', message: 'missing or unknown refresh token' } };
      }
      const token = `CJ${randomBytes(12).toString('hex')}`;
      const lifetime = options.tokenLifetimeSeconds ?? 1800;
      tokens.set(token, now() + lifetime * 1000);
      issuedTokens.push(token);
      return { status: 200, body: { token_type: 'bearer', refresh_token: oauth.refreshToken, access_token: token, expires_in: lifetime } };
    }

    const bearer = /^Bearer (.+)$/.exec(header(request, 'authorization') ?? '')?.[1];
    const isPrivate = bearer === privateAppToken;
    const oauthExpiry = bearer === undefined ? undefined : tokens.get(bearer);
    if (!isPrivate && (oauthExpiry === undefined || now() >= oauthExpiry)) {
      return error(401, 'INVALID_AUTHENTICATION', 'Authentication credentials not found.');
    }
    // Limits: a rolling 10-second window per app and a daily count per account.
    const t = now();
    while (window.length > 0 && window[0]! <= t - 10_000) window.shift();
    const today = new Date(t).toISOString().slice(0, 10);
    if (today !== day) [day, dayCount] = [today, 0];
    if (dayCount >= perDay) return rateLimited('DAILY');
    if (window.length >= perTenSeconds) return rateLimited('TEN_SECONDLY_ROLLING');
    window.push(t);
    dayCount++;
    const limitHeaders: Record<string, string> = {
      'x-hubspot-ratelimit-max': String(perTenSeconds),
      'x-hubspot-ratelimit-remaining': String(perTenSeconds - window.length),
      'x-hubspot-ratelimit-interval-milliseconds': '10000',
      ...(isPrivate ? { 'x-hubspot-ratelimit-daily': String(perDay), 'x-hubspot-ratelimit-daily-remaining': String(perDay - dayCount) } : {}),
    };
    const withLimits = (answer: Answer): Answer => ({ ...answer, headers: { ...limitHeaders, ...answer.headers } });

    if (!(header(request, 'content-type') ?? '').startsWith('application/json')) return withLimits(error(415, 'VALIDATION_ERROR', 'Content-Type must be application/json'));
    const body = request.json as Record<string, unknown> | undefined;
    if (request.method !== 'POST') return withLimits(error(405, 'METHOD_NOT_ALLOWED', 'method not allowed'));

    if (request.path === '/crm/v3/objects/contacts/batch/upsert') {
      const inputs = body?.inputs;
      if (!Array.isArray(inputs) || inputs.length === 0 || inputs.length > 100) return withLimits(error(400, 'VALIDATION_ERROR', 'inputs: 1 to 100 items required'));
      const results: unknown[] = [];
      for (const input of inputs as Array<Record<string, unknown>>) {
        const { idProperty, id, properties } = input;
        if (typeof idProperty !== 'string' || typeof id !== 'string' || id === '' || !isStrings(properties)) {
          return withLimits(error(400, 'VALIDATION_ERROR', 'each input needs idProperty, id and properties (string values)'));
        }
        if (!unique.has(idProperty)) return withLimits(error(400, 'VALIDATION_ERROR', `Property "${idProperty}" is not a unique identifier property`));
        const email = idProperty === 'email' ? id : properties.email;
        if (email !== undefined && !EMAIL.test(email)) {
          return withLimits(
            error(400, 'VALIDATION_ERROR', 'Property values were not valid', {
              errors: [{ message: 'Email address is invalid', code: 'INVALID_EMAIL', context: { propertyName: ['email'] } }],
            }),
          );
        }
        const key = `${idProperty}\u0000${id}`;
        let contactId = byKey.get(key);
        const created = contactId === undefined;
        if (contactId === undefined) {
          contactId = String(100 + contacts.size);
          byKey.set(key, contactId);
          contacts.set(contactId, {});
        }
        const stored = { ...contacts.get(contactId), ...properties, [idProperty]: id };
        contacts.set(contactId, stored);
        results.push({ id: contactId, properties: stored, createdAt: new Date(t).toISOString(), updatedAt: new Date(t).toISOString(), archived: false, new: created, ...(input.objectWriteTraceId !== undefined ? { objectWriteTraceId: input.objectWriteTraceId } : {}) });
      }
      const at = new Date(t).toISOString();
      return withLimits({ status: 200, body: { status: 'COMPLETE', results, requestedAt: at, startedAt: at, completedAt: at } });
    }

    if (request.path === '/events/v3/send') {
      const { eventName, properties, email, uuid, occurredAt } = body ?? {};
      if (typeof eventName !== 'string' || !definedEvents.has(eventName)) return withLimits(error(400, 'VALIDATION_ERROR', `Event ${String(eventName)} is not defined`));
      if (!isStrings(properties)) return withLimits(error(400, 'VALIDATION_ERROR', 'properties: string values required'));
      if (typeof email !== 'string' || !EMAIL.test(email)) return withLimits(error(400, 'VALIDATION_ERROR', 'email, objectId or utk required'));
      if (occurredAt !== undefined && (typeof occurredAt !== 'string' || Number.isNaN(Date.parse(occurredAt)))) return withLimits(error(400, 'VALIDATION_ERROR', 'occurredAt must be a date-time'));
      const dedupe = typeof uuid === 'string' ? `${eventName}\u0000${uuid}` : undefined;
      if (dedupe === undefined || !uuids.has(dedupe)) {
        if (dedupe !== undefined) uuids.add(dedupe);
        events.push({ eventName, email, ...(typeof uuid === 'string' ? { uuid } : {}), properties });
      }
      return withLimits({ status: 204 });
    }

    if (request.path === '/crm/v3/objects/contacts/gdpr-delete') {
      const { objectId, idProperty } = body ?? {};
      if (typeof objectId !== 'string' || objectId === '') return withLimits(error(400, 'VALIDATION_ERROR', 'objectId required'));
      if (idProperty !== undefined && idProperty !== 'email') return withLimits(error(400, 'VALIDATION_ERROR', 'idProperty must be email'));
      const id = idProperty === 'email' ? byKey.get(`email\u0000${objectId}`) : contacts.has(objectId) ? objectId : undefined;
      if (id === undefined) {
        if (idProperty !== 'email') return withLimits(error(404, 'OBJECT_NOT_FOUND', 'resource not found'));
        gdprBlocked.add(objectId);
        return withLimits({ status: 204 });
      }
      const email = contacts.get(id)?.email;
      contacts.delete(id);
      for (const [key, value] of byKey) if (value === id) byKey.delete(key);
      if (email !== undefined) gdprBlocked.add(email);
      return withLimits({ status: 204 });
    }

    if (request.path === '/communication-preferences/v4/statuses/batch/write') {
      const inputs = body?.inputs;
      if (!Array.isArray(inputs) || inputs.length === 0) return withLimits(error(400, 'VALIDATION_ERROR', 'inputs required'));
      const results: unknown[] = [];
      for (const input of inputs as Array<Record<string, unknown>>) {
        const { subscriberIdString, channel, statusState, subscriptionId } = input;
        if (typeof subscriberIdString !== 'string' || channel !== 'EMAIL' || !['SUBSCRIBED', 'UNSUBSCRIBED', 'NOT_SPECIFIED'].includes(String(statusState))) {
          return withLimits(error(400, 'VALIDATION_ERROR', 'subscriberIdString, channel EMAIL and statusState required'));
        }
        if (typeof subscriptionId !== 'number' || !subscriptionIds.has(subscriptionId)) return withLimits(error(400, 'VALIDATION_ERROR', `unknown subscription ${String(subscriptionId)}`));
        const key = `${subscriberIdString}|${subscriptionId}`;
        const unchanged = statuses.get(key) === statusState;
        statuses.set(key, String(statusState));
        results.push({
          subscriberIdString,
          subscriptionId,
          channel,
          status: statusState,
          source: 'INTEGRATION',
          timestamp: new Date(t).toISOString(),
          setStatusSuccessReason: unchanged ? 'NO_STATUS_CHANGE' : 'REQUESTED_CHANGE_OCCURRED',
        });
      }
      return withLimits({ status: 200, body: { status: 'COMPLETE', results } });
    }
    return withLimits(error(404, 'OBJECT_NOT_FOUND', 'resource not found'));
  };

  const standIn = await startHttpStandIn(handle);
  return Object.assign(standIn, {
    portalId,
    privateAppToken,
    oauth,
    contacts,
    events,
    statuses,
    issuedTokens,
    gdprBlocked,
    async postWebhook(url: string, changes: Array<{ contactId: string; property: string; value?: string }>, o: { clientSecret?: string; timestamp?: number } = {}) {
      const occurredAt = now();
      const body = JSON.stringify(
        changes.map((c) => ({
          eventId: webhookEventId++,
          subscriptionId: 4242,
          portalId,
          appId: 777,
          occurredAt,
          subscriptionType: 'contact.propertyChange',
          attemptNumber: 0,
          objectId: Number(c.contactId),
          propertyName: c.property,
          propertyValue: c.value ?? 'true',
          changeSource: 'EMAIL',
          sourceId: 'unsubscribe-link',
        })),
      );
      const timestamp = String(o.timestamp ?? now());
      const signature = createHmac('sha256', o.clientSecret ?? oauth.clientSecret).update(`POST${url}${body}${timestamp}`, 'utf8').digest('base64');
      const res = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json', 'x-hubspot-signature-v3': signature, 'x-hubspot-request-timestamp': timestamp } });
      await res.arrayBuffer();
      return res.status;
    },
    rateLimitNext(policy: 'TEN_SECONDLY_ROLLING' | 'DAILY') {
      standIn.failNext({ kind: 'answer', ...rateLimited(policy) });
    },
  });
}
