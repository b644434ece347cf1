// A stand-in for the Mailchimp Marketing API 3.0 parts the `mailchimp` output uses, on 127.0.0.1.
// Its base URL carries the data centre as a path segment (http://127.0.0.1:<port>/dc-<dc>, given
// to the output as apiBaseUrl http://127.0.0.1:<port>/dc-{dc}), so the stand-in can check what
// Mailchimp's host does: the API key's suffix names this data centre. It enforces:
//   - HTTP Basic, any user, the API key as password; a wrong key or data centre → 401 "API Key
//     Invalid";
//   - PUT /3.0/lists/{list}/members/{hash}: hash = MD5 of the lower-cased email_address;
//     email_address and status_if_new required; merge_fields only of the audience's merge tags;
//     a new member takes status_if_new, an existing one keeps its status unless `status` says
//     otherwise — and a member who unsubscribed cannot be subscribed again by the API (400
//     "Member In Compliance State"); a permanently deleted address → 400 "Forgotten Email Not
//     Subscribed"; a fake-looking address → 400 "Invalid Resource"; 200 with the member;
//   - POST …/members/{hash}/tags { tags: [{ name, status: active|inactive }] } → 204;
//   - POST …/members/{hash}/events { name 2–30 characters, properties (strings) } → 204;
//   - GET …/members/{hash}[?fields=a,b] → 200 with the member (contact_id, status,
//     sms_phone_number, sms_subscription_status… — the SMS fields are read-only here, as in the
//     reference), only the listed fields when `fields` is given;
//   - PATCH …/members/{hash} { status } → 200; a member that does not exist → 404; a body naming
//     fields the "Update list member" body does not have (the SMS fields among them) → 400;
//   - Audiences (BETA): PATCH /3.0/audiences/{audience_id = list id}/contacts/{contact_id} with
//     only the documented members (email_channel, sms_channel { sms_phone, marketing_consent
//     { status: consented|confirmed|denied|unknown, source, captured_at } }, language,
//     merge_fields, tags) → 200; `denied` unsubscribes the contact from SMS marketing; an unknown
//     contact → 404;
//   - POST …/members/{hash}/actions/delete-permanent → 204 (the address is then "forgotten": it
//     cannot be added again), 404 for a member that does not exist;
//   - audience webhooks ("Sync audience data with webhooks"): createWebhook(url) checks the URL
//     with a GET as Mailchimp does when a webhook is created (it must answer 200); a member who
//     unsubscribes (memberUnsubscribes) or is cleaned (memberCleaned) is then posted to every
//     webhook as Mailchimp posts it: form-encoded type, fired_at ("YYYY-MM-DD HH:MM:SS", UTC),
//     data[id], data[list_id], data[email], data[action] / data[reason], data[merges][…];
//   - errors as application/problem+json { type, title, status, detail, instance };
//   - at most 10 simultaneous connections per API key: the 11th gets 429.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { header, startHttpStandIn, type Answer, type HttpStandIn, type RecordedRequest } from './http-standin.ts';

export interface MailchimpMember {
  email_address: string;
  /** Mailchimp's id of the contact, channel-agnostic (the Audiences endpoints address it by this). */
  contact_id: string;
  status: string;
  merge_fields: Record<string, string>;
  language?: string;
  tags: string[];
  events: Array<{ name: string; properties: Record<string, string> }>;
  /** Set when the person signed up for SMS marketing in Mailchimp (memberSmsSignup). */
  sms_phone_number?: string;
  sms_subscription_status?: 'subscribed' | 'unsubscribed' | 'nonsubscribed' | 'pending';
}

export interface MailchimpStandIn extends HttpStandIn {
  readonly apiKey: string;
  readonly listId: string;
  /** For the output's apiBaseUrl. */
  readonly apiBaseUrl: string;
  readonly members: Map<string, MailchimpMember>;
  /** Addresses permanently deleted (GDPR): they cannot be added again by the API. */
  readonly forgotten: Set<string>;
  /** The next `n` calls are held in flight (not answered) until release(). */
  holdNext(n: number): void;
  /** Answers the next call with a 403 without a body, as Mailchimp does under load. */
  bare403Next(): void;
  /** Registers an audience webhook after Mailchimp's GET check of the URL (rejects when it does not answer 200). */
  createWebhook(url: string): Promise<void>;
  /** The member unsubscribes (from a campaign's link): status unsubscribed, posted to the webhooks; their statuses. */
  memberUnsubscribes(email: string): Promise<number[]>;
  /** The member's address is cleaned (a hard bounce, or abuse): posted to the webhooks; their statuses. */
  memberCleaned(email: string, reason: 'hard' | 'abuse'): Promise<number[]>;
  /** The member signs up for SMS marketing with this number in Mailchimp (an SMS signup form). */
  memberSmsSignup(email: string, phone: string): void;
  /** Posts the last webhook call again, as it was (Mailchimp retries a call that failed); the statuses. */
  redeliverLast(): Promise<number[]>;
}

const MERGE_TAGS = new Set(['FNAME', 'LNAME', 'ADDRESS', 'PHONE', 'BIRTHDAY']);
const STATUSES = ['subscribed', 'unsubscribed', 'cleaned', 'pending', 'transactional'];
/** The "Update list member" body (v3.0.55): nothing else is accepted. */
const PATCH_MEMBER_FIELDS = new Set(['email_address', 'email_type', 'status', 'merge_fields', 'interests', 'language', 'vip', 'location', 'marketing_permissions', 'ip_signup', 'timestamp_signup', 'ip_opt', 'timestamp_opt']);
const CONTACT_FIELDS = new Set(['email_channel', 'sms_channel', 'language', 'merge_fields', 'tags']);
const CONSENT_STATUSES = ['consented', 'confirmed', 'denied', 'unknown'];
const MAX_CONNECTIONS = 10;

export const md5 = (text: string) => createHash('md5').update(text.toLowerCase(), 'utf8').digest('hex');

export async function startMailchimpStandIn(): Promise<MailchimpStandIn> {
  const dc = 'us14';
  const apiKey = `${randomBytes(16).toString('hex')}-${dc}`;
  const listId = randomBytes(5).toString('hex');
  const members = new Map<string, MailchimpMember>();
  const forgotten = new Set<string>();
  let hold = 0;

  const problem = (status: number, title: string, detail: string): Answer => ({
    status,
    headers: { 'content-type': 'application/problem+json; charset=utf-8', 'x-request-id': randomUUID() },
    body: { type: 'https://mailchimp.com/developer/marketing/docs/errors/', title, status, detail, instance: randomUUID() },
  });
  const isStrings = (value: unknown): value is Record<string, string> =>
    typeof value === 'object' && value !== null && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');

  let standIn: HttpStandIn;
  const handle = (request: RecordedRequest): Answer | 'hang' => {
    // Requests in flight include this one.
    if (standIn.inFlight() > MAX_CONNECTIONS) return problem(429, 'Too Many Requests', 'You have exceeded the limit of 10 simultaneous connections.');
    const auth = /^Basic (.+)$/.exec(header(request, 'authorization') ?? '')?.[1];
    const password = auth === undefined ? undefined : Buffer.from(auth, 'base64').toString('utf8').split(':').slice(1).join(':');
    const match = /^\/dc-([a-z0-9]+)\/3\.0(\/.*)$/.exec(request.path);
    if (password !== apiKey || match?.[1] !== dc) {
      return problem(401, 'API Key Invalid', "Your API key may be invalid, or you've attempted to access the wrong datacenter.");
    }
    if (hold > 0) {
      hold--;
      return 'hang';
    }
    const path = match[2]!;
    const audienceContact = new RegExp(`^/audiences/${listId}/contacts/([^/]+)$`).exec(path);
    if (audienceContact !== null) {
      if (request.method !== 'PATCH') return problem(405, 'Method Not Allowed', 'The requested method and resource are not compatible.');
      if (!(header(request, 'content-type') ?? '').startsWith('application/json')) return problem(400, 'Invalid Resource', 'The request body must be JSON.');
      const target = [...members.values()].find((m) => m.contact_id === decodeURIComponent(audienceContact[1]!));
      if (target === undefined) return problem(404, 'Resource Not Found', 'The requested resource could not be found.');
      const body = (request.json ?? {}) as Record<string, unknown>;
      const sms = body.sms_channel as Record<string, unknown> | undefined;
      const consent = sms?.marketing_consent as Record<string, unknown> | undefined;
      if (
        Object.keys(body).some((k) => !CONTACT_FIELDS.has(k)) ||
        (sms !== undefined && (typeof sms !== 'object' || Object.keys(sms).some((k) => k !== 'sms_phone' && k !== 'marketing_consent'))) ||
        (consent !== undefined && (typeof consent !== 'object' || Object.keys(consent).some((k) => !['status', 'source', 'captured_at'].includes(k)) || !CONSENT_STATUSES.includes(String(consent.status))))
      ) {
        return problem(400, 'Invalid Resource', 'The resource submitted could not be validated.');
      }
      if (consent?.status === 'denied') target.sms_subscription_status = 'unsubscribed';
      return { status: 200, body: { id: target.contact_id, audience_id: listId, sms_channel: { sms_phone: target.sms_phone_number ?? '', marketing_consent: { status: target.sms_subscription_status === 'unsubscribed' ? 'denied' : 'unknown' } } } };
    }
    const member = new RegExp(`^/lists/${listId}/members/([0-9a-f]{32})(/tags|/events|/actions/delete-permanent)?$`).exec(path);
    if (member === null) return problem(404, 'Resource Not Found', 'The requested resource could not be found.');
    if (request.method !== 'GET' && request.text !== '' && !(header(request, 'content-type') ?? '').startsWith('application/json')) return problem(400, 'Invalid Resource', 'The request body must be JSON.');
    const hash = member[1]!;
    const existing = members.get(hash);
    const body = (request.json ?? {}) as Record<string, unknown>;

    if (member[2] === undefined && request.method === 'PUT') {
      const { email_address: email, status_if_new: statusIfNew, status, merge_fields: mergeFields, language } = body;
      if (typeof email !== 'string' || typeof statusIfNew !== 'string' || !STATUSES.includes(statusIfNew)) {
        return problem(400, 'Invalid Resource', 'The resource submitted could not be validated: email_address and status_if_new are required.');
      }
      if (md5(email) !== hash) return problem(400, 'Invalid Resource', 'The subscriber hash does not match the email address.');
      if (!/^[^\s@]+@[^\s@]+\.[a-z]{2,}$/i.test(email)) return problem(400, 'Invalid Resource', `${email} looks fake or invalid, please enter a real email address.`);
      if (forgotten.has(email.toLowerCase())) return problem(400, 'Forgotten Email Not Subscribed', `${email} was permanently deleted and cannot be re-imported.`);
      if (mergeFields !== undefined && (!isStrings(mergeFields) || Object.keys(mergeFields).some((k) => !MERGE_TAGS.has(k)))) {
        return problem(400, 'Invalid Resource', 'Your merge fields were invalid.');
      }
      if (status !== undefined && (typeof status !== 'string' || !STATUSES.includes(status))) return problem(400, 'Invalid Resource', 'status is invalid.');
      if (existing?.status === 'unsubscribed' && status === 'subscribed') {
        return problem(400, 'Member In Compliance State', `${email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed.`);
      }
      const next: MailchimpMember = {
        ...existing,
        email_address: email,
        contact_id: existing?.contact_id ?? randomBytes(16).toString('hex'),
        status: existing ? (typeof status === 'string' ? status : existing.status) : statusIfNew,
        merge_fields: { ...existing?.merge_fields, ...(mergeFields as Record<string, string> | undefined) },
        ...(typeof language === 'string' ? { language } : existing?.language !== undefined ? { language: existing.language } : {}),
        tags: existing?.tags ?? [],
        events: existing?.events ?? [],
      };
      members.set(hash, next);
      return { status: 200, body: { id: hash, email_address: email, unique_email_id: hash.slice(0, 10), status: next.status, merge_fields: next.merge_fields, language: next.language ?? '', list_id: listId } };
    }
    if (existing === undefined) return problem(404, 'Resource Not Found', 'The requested resource could not be found.');
    if (member[2] === '/actions/delete-permanent' && request.method === 'POST') {
      members.delete(hash);
      forgotten.add(existing.email_address.toLowerCase());
      return { status: 204 };
    }
    if (member[2] === '/tags' && request.method === 'POST') {
      const tags = body.tags;
      if (!Array.isArray(tags) || tags.some((t) => typeof t?.name !== 'string' || !['active', 'inactive'].includes(t?.status))) {
        return problem(400, 'Invalid Resource', 'tags: [{ name, status: active | inactive }] required.');
      }
      for (const tag of tags as Array<{ name: string; status: string }>) {
        existing.tags = existing.tags.filter((t) => t !== tag.name);
        if (tag.status === 'active') existing.tags.push(tag.name);
      }
      return { status: 204 };
    }
    if (member[2] === '/events' && request.method === 'POST') {
      const { name, properties } = body;
      if (typeof name !== 'string' || name.length < 2 || name.length > 30) return problem(400, 'Invalid Resource', 'name must be 2-30 characters.');
      if (properties !== undefined && !isStrings(properties)) return problem(400, 'Invalid Resource', 'properties must be strings.');
      existing.events.push({ name, properties: (properties as Record<string, string> | undefined) ?? {} });
      return { status: 204 };
    }
    if (member[2] === undefined && request.method === 'GET') {
      const all: Record<string, unknown> = { id: hash, list_id: listId, ...existing };
      const fields = request.query.get('fields');
      return { status: 200, body: fields === null ? all : Object.fromEntries(fields.split(',').filter((f) => f in all).map((f) => [f, all[f]])) };
    }
    if (member[2] === undefined && request.method === 'PATCH') {
      if (Object.keys(body).some((k) => !PATCH_MEMBER_FIELDS.has(k))) return problem(400, 'Invalid Resource', 'The resource submitted could not be validated.');
      if (typeof body.status !== 'string' || !STATUSES.includes(body.status)) return problem(400, 'Invalid Resource', 'status is invalid.');
      existing.status = body.status;
      return { status: 200, body: { id: hash, email_address: existing.email_address, status: existing.status, list_id: listId } };
    }
    return problem(405, 'Method Not Allowed', 'The requested method and resource are not compatible.');
  };

  standIn = await startHttpStandIn(handle);
  const base = standIn.baseUrl;
  const webhooks: string[] = [];
  let fired = 0;
  let last: URLSearchParams | undefined;
  const deliver = async (form: URLSearchParams): Promise<number[]> => {
    last = form;
    const statuses: number[] = [];
    for (const url of webhooks) {
      const res = await fetch(url, { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    return statuses;
  };
  const post = async (email: string, fields: Record<string, string>): Promise<number[]> => {
    const hash = md5(email);
    const member = members.get(hash);
    // Each webhook call is a second later (fired_at has whole seconds).
    const firedAt = new Date(Date.now() + 1000 * fired++).toISOString().replace('T', ' ').slice(0, 19);
    const form = new URLSearchParams({
      ...fields,
      fired_at: firedAt,
      'data[id]': hash.slice(0, 10),
      'data[list_id]': listId,
      'data[email]': member?.email_address ?? email,
      'data[email_type]': 'html',
      'data[merges][EMAIL]': member?.email_address ?? email,
      ...Object.fromEntries(Object.entries(member?.merge_fields ?? {}).map(([k, v]) => [`data[merges][${k}]`, v])),
    });
    return deliver(form);
  };
  return Object.assign(standIn, {
    apiKey,
    listId,
    apiBaseUrl: `${base}/dc-{dc}`,
    members,
    forgotten,
    holdNext(n: number) {
      hold += n;
    },
    bare403Next() {
      standIn.failNext({ kind: 'answer', status: 403 });
    },
    async createWebhook(url: string) {
      const res = await fetch(url, { method: 'GET' });
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`Mailchimp could not validate the webhook URL: GET answered ${res.status}`);
      webhooks.push(url);
    },
    async memberUnsubscribes(email: string) {
      const member = members.get(md5(email));
      if (member) member.status = 'unsubscribed';
      return post(email, { type: 'unsubscribe', 'data[action]': 'unsub', 'data[reason]': 'manual', 'data[campaign_id]': 'cb398d21d2' });
    },
    memberSmsSignup(email: string, phone: string) {
      const member = members.get(md5(email));
      if (!member) throw new Error('no such member');
      member.sms_phone_number = phone;
      member.sms_subscription_status = 'subscribed';
    },
    async redeliverLast() {
      if (last === undefined) throw new Error('no webhook call to deliver again');
      return deliver(last);
    },
    async memberCleaned(email: string, reason: 'hard' | 'abuse') {
      const member = members.get(md5(email));
      if (member) member.status = 'cleaned';
      return post(email, { type: 'cleaned', 'data[reason]': reason, 'data[campaign_id]': 'cb398d21d2' });
    },
  });
}
