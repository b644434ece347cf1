// A stand-in for the Brevo API v3 parts the `brevo` output uses, on 127.0.0.1. It enforces what
// Brevo's reference and OpenAPI document:
//   - header api-key (401 { code: unauthorized }); JSON bodies;
//   - POST /v3/contacts: email, or attributes.SMS; attributes must exist in the account;
//     updateEnabled: true updates an existing contact (204), else 400 duplicate_parameter;
//     201 { id } for a new one; emailBlacklisted / smsBlacklisted set or lift the flags;
//   - PUT /v3/contacts/{identifier}?identifierType=email_id|phone_id: 404 document_not_found
//     for an unknown contact, 204 otherwise — and, as the reference warns, a blocklisted
//     contact whose EMAIL attribute is updated loses its blocklisting;
//   - DELETE /v3/contacts/{identifier}?identifierType=email_id|phone_id → 204, 404 document_not_found;
//   - webhooks ("Transactional webhooks", "Secured webhooks"): postWebhook() posts events as Brevo
//     does (JSON, one event or an array when batched) with the webhook's bearer token;
//   - POST /v3/events { event_name, identifiers (≥ 1 of contact_id, email_id, ext_id, phone_id),
//     event_date?, event_properties? } → 204;
//   - POST /v3/smtp/email { sender.email, to[].email, subject, htmlContent, headers? } → 201
//     { messageId } — a new message every time: nothing documents what idempotencyKey does;
//   - POST /v3/transactionalSMS/sms { sender ≤ 11 alphanumerics or ≤ 15 digits, recipient
//     (digits with the country code), content, type } → 201 { reference, messageId, … };
//   - limits per endpoint and second (general tier: contacts 10, events 10, email 1,000, SMS
//     150), 429 past them; x-sib-ratelimit-limit/-remaining/-reset on every answer.
import { randomBytes, randomUUID } from 'node:crypto';
import { header, startHttpStandIn, type Answer, type HttpStandIn, type RecordedRequest } from './http-standin.ts';

export interface BrevoContact {
  id: number;
  email?: string;
  attributes: Record<string, string>;
  listIds: number[];
  emailBlacklisted: boolean;
  smsBlacklisted: boolean;
}

export interface BrevoStandIn extends HttpStandIn {
  readonly apiKey: string;
  readonly contacts: BrevoContact[];
  readonly events: Array<{ event_name: string; identifiers: Record<string, string>; event_properties?: Record<string, unknown> }>;
  readonly emails: Array<{ messageId: string; to: string; subject: string; headers: Record<string, string> }>;
  readonly sms: Array<{ messageId: number; recipient: string; content: string; type: string }>;
  /** Answers the next call with Brevo's 429 and its headers (reset in `resetSeconds`). */
  rateLimitNext(resetSeconds: number): void;
  /** Posts transactional webhook events (`unsubscribed`, `hard_bounce`, …) to `url` with Authorization: Bearer `token`; the receiver's status. */
  postWebhook(url: string, token: string, events: Array<{ event: string; email: string }>): Promise<number>;
}

export interface BrevoStandInOptions {
  /** Epoch ms; default Date.now. Drives the per-second windows. */
  now?: () => number;
  /** Requests per second per endpoint group (default: the general tier). */
  perSecond?: Partial<Record<'contacts' | 'events' | 'email' | 'sms', number>>;
}

const ATTRIBUTES = new Set(['EMAIL', 'SMS', 'FIRSTNAME', 'LASTNAME', 'LANGUAGE']);

export async function startBrevoStandIn(options: BrevoStandInOptions = {}): Promise<BrevoStandIn> {
  const now = options.now ?? Date.now;
  const apiKey = `xkeysib-${randomBytes(32).toString('hex')}-${randomBytes(8).toString('hex')}`;
  const perSecond = { contacts: 10, events: 10, email: 1000, sms: 150, ...options.perSecond };
  const contacts: BrevoContact[] = [];
  const events: BrevoStandIn['events'] = [];
  const emails: BrevoStandIn['emails'] = [];
  const sms: BrevoStandIn['sms'] = [];
  const windows = new Map<string, { second: number; count: number }>();

  const error = (status: number, code: string, message: string, headers: Record<string, string> = {}): Answer => ({ status, headers, body: { code, message } });
  const rateLimited = (limit: number, resetSeconds: number): Answer =>
    error(429, 'too_many_requests', 'Too many requests', { 'x-sib-ratelimit-limit': String(limit), 'x-sib-ratelimit-remaining': '0', 'x-sib-ratelimit-reset': String(resetSeconds) });
  const find = (identifier: string, type: string | null): BrevoContact | undefined =>
    type === 'phone_id' ? contacts.find((c) => c.attributes.SMS?.replace(/^\+/, '') === identifier.replace(/^\+/, '')) : contacts.find((c) => c.email === identifier.toLowerCase());
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

  const handle = (request: RecordedRequest): Answer => {
    if (header(request, 'api-key') !== apiKey) return error(401, 'unauthorized', 'Key not found');
    const group = request.path.startsWith('/v3/contacts')
      ? 'contacts'
      : request.path === '/v3/events'
        ? 'events'
        : request.path === '/v3/smtp/email'
          ? 'email'
          : request.path === '/v3/transactionalSMS/sms'
            ? 'sms'
            : undefined;
    if (group === undefined) return error(404, 'document_not_found', 'Not found');
    const limit = perSecond[group];
    const second = Math.floor(now() / 1000);
    const window = windows.get(group);
    const count = window?.second === second ? window.count : 0;
    // The window is a second: it resets within one.
    const resetSeconds = '1';
    if (count >= limit) return rateLimited(limit, 1);
    windows.set(group, { second, count: count + 1 });
    const limits = { 'x-sib-ratelimit-limit': String(limit), 'x-sib-ratelimit-remaining': String(limit - count - 1), 'x-sib-ratelimit-reset': resetSeconds };
    const answer = (a: Answer): Answer => ({ ...a, headers: { ...limits, ...a.headers } });
    const remove = /^\/v3\/contacts\/([^/]+)$/.exec(request.path);
    if (request.method === 'DELETE' && remove) {
      const contact = find(decodeURIComponent(remove[1]!), request.query.get('identifierType'));
      if (contact === undefined) return answer(error(404, 'document_not_found', 'Contact does not exist'));
      contacts.splice(contacts.indexOf(contact), 1);
      return answer({ status: 204 });
    }
    if (!(header(request, 'content-type') ?? '').startsWith('application/json')) return answer(error(415, 'not_acceptable', 'Content-Type must be application/json'));
    const body = (request.json ?? {}) as Record<string, unknown>;

    if (request.method === 'POST' && request.path === '/v3/contacts') {
      const attributes = body.attributes ?? {};
      if (!isObject(attributes)) return answer(error(400, 'invalid_parameter', 'attributes must be an object'));
      const unknown = Object.keys(attributes).find((a) => !ATTRIBUTES.has(a));
      if (unknown !== undefined) return answer(error(400, 'invalid_parameter', `Attribute ${unknown} does not exist`));
      const email = typeof body.email === 'string' ? body.email.toLowerCase() : undefined;
      const phone = typeof attributes.SMS === 'string' ? attributes.SMS : undefined;
      if (email === undefined && phone === undefined) return answer(error(400, 'missing_parameter', 'email or attributes.SMS is required'));
      const existing = email !== undefined ? find(email, 'email_id') : find(phone!, 'phone_id');
      if (existing !== undefined && body.updateEnabled !== true) return answer(error(400, 'duplicate_parameter', 'Contact already exist'));
      const contact = existing ?? { id: contacts.length + 1, ...(email !== undefined ? { email } : {}), attributes: {}, listIds: [], emailBlacklisted: false, smsBlacklisted: false };
      Object.assign(contact.attributes, attributes);
      if (Array.isArray(body.listIds)) contact.listIds = [...new Set([...contact.listIds, ...(body.listIds as number[])])];
      if (typeof body.emailBlacklisted === 'boolean') contact.emailBlacklisted = body.emailBlacklisted;
      if (typeof body.smsBlacklisted === 'boolean') contact.smsBlacklisted = body.smsBlacklisted;
      if (existing) return answer({ status: 204 });
      contacts.push(contact);
      return answer({ status: 201, body: { id: contact.id } });
    }
    const update = /^\/v3\/contacts\/([^/]+)$/.exec(request.path);
    if (request.method === 'PUT' && update) {
      const contact = find(decodeURIComponent(update[1]!), request.query.get('identifierType'));
      if (contact === undefined) return answer(error(404, 'document_not_found', 'Contact does not exist'));
      const attributes = isObject(body.attributes) ? body.attributes : {};
      // "If a blocklisted contact's email address is updated, it is going to remove that blocklisting."
      if (typeof attributes.EMAIL === 'string' && attributes.EMAIL.toLowerCase() !== contact.email) {
        contact.email = attributes.EMAIL.toLowerCase();
        contact.emailBlacklisted = false;
      }
      if (typeof body.emailBlacklisted === 'boolean') contact.emailBlacklisted = body.emailBlacklisted;
      if (typeof body.smsBlacklisted === 'boolean') contact.smsBlacklisted = body.smsBlacklisted;
      return answer({ status: 204 });
    }
    if (request.method === 'POST' && request.path === '/v3/events') {
      const { event_name: name, identifiers, event_date: date, event_properties: properties } = body;
      if (typeof name !== 'string' || !/^[A-Za-z0-9_-]{1,255}$/.test(name)) return answer(error(400, 'invalid_parameter', 'event_name is invalid'));
      const keys = ['contact_id', 'email_id', 'ext_id', 'phone_id', 'whatsapp_id', 'landline_number_id'];
      if (!isObject(identifiers) || !Object.keys(identifiers).some((k) => keys.includes(k))) return answer(error(400, 'missing_parameter', 'identifiers: at least one is required'));
      if (date !== undefined && (typeof date !== 'string' || Number.isNaN(Date.parse(date)))) return answer(error(400, 'invalid_parameter', 'event_date is invalid'));
      if (properties !== undefined && !isObject(properties)) return answer(error(400, 'invalid_parameter', 'event_properties must be an object'));
      events.push({ event_name: name, identifiers: identifiers as Record<string, string>, ...(properties !== undefined ? { event_properties: properties } : {}) });
      return answer({ status: 204 });
    }
    if (request.method === 'POST' && request.path === '/v3/smtp/email') {
      const { sender, to, subject, htmlContent, headers } = body;
      if (!isObject(sender) || typeof sender.email !== 'string') return answer(error(400, 'missing_parameter', 'sender is required'));
      if (!Array.isArray(to) || to.length === 0 || to.some((t) => !isObject(t) || typeof t.email !== 'string')) return answer(error(400, 'missing_parameter', 'to is required'));
      if (typeof subject !== 'string' || subject === '') return answer(error(400, 'missing_parameter', 'subject is required'));
      if (typeof htmlContent !== 'string' || htmlContent === '') return answer(error(400, 'missing_parameter', 'htmlContent is required'));
      if (headers !== undefined && (!isObject(headers) || Object.values(headers).some((v) => typeof v !== 'string'))) return answer(error(400, 'invalid_parameter', 'headers must be strings'));
      const messageId = `<${randomUUID()}@smtp-relay.mailin.fr>`;
      emails.push({ messageId, to: String((to[0] as Record<string, unknown>).email), subject, headers: (headers as Record<string, string> | undefined) ?? {} });
      return answer({ status: 201, body: { messageId } });
    }
    if (request.method === 'POST' && request.path === '/v3/transactionalSMS/sms') {
      const { sender, recipient, content, type } = body;
      if (typeof sender !== 'string' || !/^([A-Za-z0-9]{1,11}|[0-9]{1,15})$/.test(sender)) return answer(error(400, 'invalid_parameter', 'sender is invalid'));
      if (typeof recipient !== 'string' || !/^[0-9]{6,15}$/.test(recipient)) return answer(error(400, 'invalid_parameter', 'recipient is invalid'));
      if (typeof content !== 'string' || content === '') return answer(error(400, 'missing_parameter', 'content is required'));
      if (type !== undefined && type !== 'transactional' && type !== 'marketing') return answer(error(400, 'invalid_parameter', 'type is invalid'));
      const messageId = 1_000 + sms.length;
      sms.push({ messageId, recipient, content, type: String(type ?? 'transactional') });
      return answer({ status: 201, body: { reference: `ab1cde2fgh3i4jklmno${messageId}`, messageId, smsCount: Math.ceil(content.length / 160), usedCredits: 1, remainingCredits: 99 } });
    }
    return answer(error(405, 'method_not_allowed', 'Method not allowed'));
  };

  const standIn = await startHttpStandIn(handle);
  return Object.assign(standIn, {
    apiKey,
    contacts,
    events,
    emails,
    sms,
    rateLimitNext(resetSeconds: number) {
      standIn.failNext({ kind: 'answer', ...rateLimited(10, resetSeconds) });
    },
    async postWebhook(url: string, token: string, list: Array<{ event: string; email: string }>) {
      const at = now();
      const body = list.map((e, i) => ({ ...e, id: 1, date: new Date(at).toISOString(), ts: Math.floor(at / 1000), ts_event: Math.floor(at / 1000), ts_epoch: at, 'message-id': `<${at}.${i}@smtp-relay.mailin.fr>`, subject: 'News', tag: '' }));
      const res = await fetch(url, { method: 'POST', body: JSON.stringify(body.length === 1 ? body[0] : body), headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } });
      await res.arrayBuffer();
      return res.status;
    },
  });
}
