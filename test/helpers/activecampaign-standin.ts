// A stand-in for the ActiveCampaign API v3 parts the `activecampaign` output uses, and for its
// event tracking endpoint (trackcmp.net/event), on 127.0.0.1. It enforces what ActiveCampaign's
// OpenAPI document and reference pages say:
//   - header Api-Token, else 403 { message: Forbidden }; JSON bodies;
//   - POST /api/3/contact/sync { contact: { email, firstName?, lastName?, phone?, fieldValues?:
//     [{ field (an existing custom field id), value }] } }: 201 created / 200 updated, with
//     contact.id; an invalid email → 422 { errors: [{ title, code, source }] };
//   - POST /api/3/contactTags { contactTag: { contact, tag } }: the contact and the tag must
//     exist (404 / 422); 201 { contactTag } (adding a tag the contact has returns that one);
//   - GET /api/3/contacts?email=…: { contacts: [...], meta: { total } };
//   - POST /api/3/contactLists { contactList: { list, contact, status } } → 200;
//   - DELETE /api/3/contacts/{id} → 200 {}, 404 for an unknown id;
//   - webhooks ("Webhooks"): postWebhook() posts an event as ActiveCampaign does, form-encoded
//     with PHP-style keys (type, date_time, initiated_by, initiated_from, list, contact[id],
//     contact[email], contact[phone], …), to a URL that carries the secret (it signs nothing);
//   - POST /event (form-encoded actid, key, event ≤ 32 characters, visit = JSON with an email,
//     eventdata?) → 200 { success: 1, message } or { success: 0, message } for a wrong key;
//   - "5 requests per second per account": a token bucket of 5 refilled at 5 per second on the
//     stand-in's clock, across every key of the account; past it 429 with Retry-After,
//     RateLimit-Limit and RateLimit-Remaining.
import { randomBytes } from 'node:crypto';
import { header, startHttpStandIn, type Answer, type HttpStandIn, type RecordedRequest } from './http-standin.ts';

export interface AcContact {
  id: string;
  email: string;
  firstName?: string;
  lastName?: string;
  phone?: string;
  fields: Record<string, string>;
  tags: string[];
  /** list id → status ("1" subscribed, "2" unsubscribed). */
  lists: Record<string, string>;
}

export interface ActiveCampaignStandIn extends HttpStandIn {
  readonly apiToken: string;
  readonly accountId: string;
  readonly eventKey: string;
  readonly contacts: AcContact[];
  readonly events: Array<{ event: string; email: string; eventdata?: string }>;
  /** Calls the account limit let through, with the stand-in's time of each (epoch ms). */
  readonly admitted: number[];
  /** Answers the next call with ActiveCampaign's 429 and Retry-After (seconds). */
  rateLimitNext(retryAfterSeconds: number): void;
  /** The contact unsubscribes from `list` (type unsubscribe) or replies STOP to an SMS (sms_unsub): posted to `url`; its status. */
  postWebhook(url: string, type: 'unsubscribe' | 'sms_unsub', email: string, list?: string): Promise<number>;
}

export interface ActiveCampaignStandInOptions {
  /** Epoch ms; default Date.now. Drives the bucket. */
  now?: () => number;
  /** Custom field ids that exist. Default 1–3. */
  fieldIds?: string[];
  tagIds?: string[];
  listIds?: string[];
}

const RATE = 5;

export async function startActiveCampaignStandIn(options: ActiveCampaignStandInOptions = {}): Promise<ActiveCampaignStandIn> {
  const now = options.now ?? Date.now;
  const apiToken = randomBytes(32).toString('hex');
  const accountId = '1234567';
  const eventKey = randomBytes(20).toString('hex');
  const fieldIds = new Set(options.fieldIds ?? ['1', '2', '3']);
  const tagIds = new Set(options.tagIds ?? ['20']);
  const listIds = new Set(options.listIds ?? ['2']);
  const contacts: AcContact[] = [];
  const events: ActiveCampaignStandIn['events'] = [];
  const admitted: number[] = [];
  const contactTags: Array<{ id: string; contact: string; tag: string }> = [];
  let tokens = RATE;
  let refilledAt = now();

  const rateLimited = (retryAfter: number): Answer => ({
    status: 429,
    headers: { 'retry-after': String(retryAfter), 'ratelimit-limit': String(RATE), 'ratelimit-remaining': '0' },
    body: { message: 'Too Many Requests' },
  });
  const unprocessable = (title: string, pointer: string, code?: string): Answer => ({
    status: 422,
    body: { errors: [{ title, detail: '', ...(code ? { code } : {}), source: { pointer } }] },
  });
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const view = (c: AcContact) => ({ id: c.id, email: c.email, firstName: c.firstName ?? '', lastName: c.lastName ?? '', phone: c.phone ?? '' });

  const handle = (request: RecordedRequest): Answer => {
    // The account's limit: every call, API or tracking, whatever the key.
    const t = now();
    tokens = Math.min(RATE, tokens + ((t - refilledAt) / 1000) * RATE);
    refilledAt = t;
    if (tokens < 1) return rateLimited(1);
    tokens -= 1;
    admitted.push(t);

    if (request.method === 'POST' && request.path === '/event') {
      const form = request.form;
      if (form === undefined) return { status: 400, body: { success: 0, message: 'form-encoded body expected' } };
      if (form.get('actid') !== accountId || form.get('key') !== eventKey) return { status: 200, body: { success: 0, message: 'Invalid key' } };
      const event = form.get('event') ?? '';
      let email: unknown;
      try {
        email = (JSON.parse(form.get('visit') ?? '') as { email?: unknown }).email;
      } catch {
        email = undefined;
      }
      if (event === '' || event.length > 32 || typeof email !== 'string') return { status: 200, body: { success: 0, message: 'event and visit are required' } };
      events.push({ event, email, ...(form.get('eventdata') !== null ? { eventdata: form.get('eventdata')! } : {}) });
      return { status: 200, body: { success: 1, message: 'Event spawned' } };
    }

    if (header(request, 'api-token') !== apiToken) return { status: 403, body: { message: 'Forbidden' } };
    if (request.method === 'GET' && request.path === '/api/3/contacts') {
      const email = request.query.get('email')?.toLowerCase();
      const found = contacts.filter((c) => email === undefined || c.email === email);
      return { status: 200, body: { contacts: found.map(view), meta: { total: String(found.length) } } };
    }
    const remove = /^\/api\/3\/contacts\/([^/]+)$/.exec(request.path);
    if (request.method === 'DELETE' && remove) {
      const contact = contacts.find((c) => c.id === decodeURIComponent(remove[1]!));
      if (contact === undefined) return { status: 404, body: { message: `No Result found for Subscriber with id ${remove[1]}` } };
      contacts.splice(contacts.indexOf(contact), 1);
      return { status: 200, body: {} };
    }
    if (request.method !== 'POST') return { status: 404, body: { message: 'Not Found' } };
    if (!(header(request, 'content-type') ?? '').startsWith('application/json')) return { status: 400, body: {} };
    const body = (request.json ?? {}) as Record<string, unknown>;

    if (request.path === '/api/3/contact/sync') {
      const contact = body.contact;
      if (!isObject(contact) || typeof contact.email !== 'string') return unprocessable('Email address is required.', '/data/attributes/email', 'field_missing');
      const email = contact.email.toLowerCase();
      if (!/^[^\s@]+@[^\s@]+\.[a-z]{2,}$/i.test(email)) return unprocessable('Email address is not valid.', '/data/attributes/email', 'email_invalid');
      const values = contact.fieldValues ?? [];
      if (!Array.isArray(values) || values.some((v) => !isObject(v) || !fieldIds.has(String(v.field)) || typeof v.value !== 'string')) {
        return unprocessable('Field does not exist.', '/data/attributes/fieldValues');
      }
      let stored = contacts.find((c) => c.email === email);
      const created = stored === undefined;
      stored ??= { id: String(contacts.length + 1), email, fields: {}, tags: [], lists: {} };
      if (created) contacts.push(stored);
      for (const key of ['firstName', 'lastName', 'phone'] as const) if (typeof contact[key] === 'string') stored[key] = contact[key] as string;
      for (const v of values as Array<{ field: string; value: string }>) stored.fields[String(v.field)] = v.value;
      return { status: created ? 201 : 200, body: { fieldValues: Object.entries(stored.fields).map(([field, value]) => ({ contact: stored.id, field, value })), contact: view(stored) } };
    }
    if (request.path === '/api/3/contactTags') {
      const link = body.contactTag;
      if (!isObject(link) || link.contact === undefined) return unprocessable('Missing attribute', '/data/attributes/contact');
      const contact = contacts.find((c) => c.id === String(link.contact));
      if (contact === undefined) return { status: 404, body: { message: `No Result found for Subscriber with id ${String(link.contact)}` } };
      if (!tagIds.has(String(link.tag))) return unprocessable('Tag does not exist', '/data/attributes/tag');
      let existing = contactTags.find((l) => l.contact === contact.id && l.tag === String(link.tag));
      if (existing === undefined) {
        existing = { id: String(contactTags.length + 1), contact: contact.id, tag: String(link.tag) };
        contactTags.push(existing);
        contact.tags.push(String(link.tag));
      }
      return { status: 201, body: { contactTag: { ...existing, cdate: new Date(t).toISOString(), links: {} } } };
    }
    if (request.path === '/api/3/contactLists') {
      const link = body.contactList;
      if (!isObject(link) || !['1', '2'].includes(String(link.status))) return unprocessable('status must be 1 or 2', '/data/attributes/status');
      const contact = contacts.find((c) => c.id === String(link.contact));
      if (contact === undefined) return { status: 404, body: { message: 'Contact not found' } };
      if (!listIds.has(String(link.list))) return unprocessable('List does not exist', '/data/attributes/list');
      contact.lists[String(link.list)] = String(link.status);
      return { status: 200, body: { contactList: { contact: contact.id, list: String(link.list), status: String(link.status) } } };
    }
    return { status: 404, body: { message: 'Not Found' } };
  };

  const standIn = await startHttpStandIn(handle);
  return Object.assign(standIn, {
    apiToken,
    accountId,
    eventKey,
    contacts,
    events,
    admitted,
    rateLimitNext(retryAfterSeconds: number) {
      standIn.failNext({ kind: 'answer', ...rateLimited(retryAfterSeconds) });
    },
    async postWebhook(url: string, type: 'unsubscribe' | 'sms_unsub', email: string, list = '1') {
      const contact = contacts.find((c) => c.email === email.toLowerCase());
      if (contact && type === 'unsubscribe') contact.lists[list] = '2';
      const form = new URLSearchParams({
        type,
        date_time: new Date(now()).toISOString().replace('Z', '+00:00'),
        initiated_by: 'customer',
        initiated_from: 'web',
        list,
        'contact[id]': contact?.id ?? '0',
        'contact[email]': email,
        'contact[phone]': contact?.phone ?? '',
        'contact[first_name]': contact?.firstName ?? '',
        'contact[tags]': contact?.tags.join(', ') ?? '',
      });
      const res = await fetch(url, { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      await res.arrayBuffer();
      return res.status;
    },
  });
}
