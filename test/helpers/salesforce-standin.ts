// A stand-in for a Salesforce org's REST API on 127.0.0.1 (My Domain and instance on one port).
// It enforces what the REST API Developer Guide and the Object Reference document for the calls
// CareRelay makes:
//   - POST /services/oauth2/token: form body, client credentials or a JWT bearer assertion
//     (RS256, iss/sub/aud/exp); answers { access_token, instance_url, id, token_type, issued_at }
//     without expires_in — tokens die after the org's session timeout on the stand-in's clock;
//   - Bearer token on every API call (401 [{ errorCode: INVALID_SESSION_ID }] otherwise),
//     application/json bodies (415), /services/data/vNN.0 with NN ≥ 46;
//   - PATCH sobjects/{object}/{externalIdField}/{value}: only declared External ID fields (404
//     NOT_FOUND), known fields (400 INVALID_FIELD), restricted picklists
//     (INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST), required fields on create
//     (REQUIRED_FIELD_MISSING), references to existing records (INVALID_CROSS_REFERENCE_KEY);
//     201 { id, success, errors, created: true } or 200 with created: false;
//   - GET sobjects/{object}/{externalIdField}/{value}?fields=Id;
//   - GET query/?q=: the two queries CareRelay makes (a DataUsePurpose by name, the consent poll);
//   - POST composite: ≤ 25 subrequests, ≤ 5 queries, @{ref.path} references, allOrNone rollback
//     (the others answered PROCESSING_HALTED), the whole counted as one API call;
//   - Sforce-Limit-Info: api-usage=<used>/<allocation> on every API answer.
// Errors use Salesforce's body [{ message, errorCode, fields }]. It can be told to answer a status
// with an errorCode (403 REQUEST_LIMIT_EXCEEDED, 503…), to hang or to reset.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { Arrivals } from './arrivals.ts';
import { FaultQueue, listenOnLoopback } from './faults.ts';
import { readBody, TokenIssuer } from './oauth-standin.ts';

type SObject = Record<string, unknown> & { Id: string; LastModifiedDate: string };

const PICKLISTS: Record<string, readonly string[]> = {
  ContactPointType: ['Email', 'MailingAddress', 'Phone', 'Social', 'Web'],
  CaptureContactPointType: ['Email', 'MailingAddress', 'Phone', 'Social', 'Web'],
  PrivacyConsentStatus: ['OptIn', 'OptOut', 'Seen', 'NotSeen'],
};
const PREFIX: Record<string, string> = { Contact: '003', Account: '001', Individual: '0PK', ContactPointTypeConsent: '0ZY', DataUsePurpose: '0hP' };
const FIELDS: Record<string, readonly string[]> = {
  Contact: ['FirstName', 'LastName', 'Email', 'MobilePhone', 'Phone', 'Birthdate', 'IndividualId', 'RecordTypeId', 'HasOptedOutOfEmail'],
  Account: ['FirstName', 'LastName', 'PersonEmail', 'PersonMobilePhone', 'PersonBirthdate', 'PersonIndividualId', 'RecordTypeId'],
  Individual: ['FirstName', 'LastName'],
  ContactPointTypeConsent: ['Name', 'PartyId', 'ContactPointType', 'PrivacyConsentStatus', 'CaptureDate', 'CaptureSource', 'CaptureContactPointType', 'DataUsePurposeId', 'EffectiveFrom', 'EffectiveTo', 'DoubleConsentCaptureDate'],
  DataUsePurpose: ['Name'],
};
const REQUIRED: Record<string, readonly string[]> = {
  Contact: ['LastName'],
  Account: ['LastName'],
  Individual: ['LastName'],
  ContactPointTypeConsent: ['PartyId', 'ContactPointType', 'CaptureDate', 'CaptureSource', 'CaptureContactPointType'],
};
const REFERENCES: Record<string, string> = { IndividualId: 'Individual', PersonIndividualId: 'Individual', PartyId: 'Individual', DataUsePurposeId: 'DataUsePurpose' };

export interface SalesforceRequest {
  method: string;
  path: string;
  auth: 'valid' | 'expired' | 'invalid';
  contentType?: string;
  body: unknown;
  status: number;
}

export type SalesforceFault = { kind: 'status'; status: number; errorCode?: string } | { kind: 'hang' } | { kind: 'reset' };

export interface SalesforceStandInOptions {
  now?: () => number;
  /** The org's session timeout, seconds (how long a token lives). Default 7,200. */
  sessionSeconds?: number;
  /** External ID fields per object. */
  externalIds?: Record<string, string[]>;
  /** DataUsePurpose records to start with (their Names). */
  purposes?: string[];
  /** Daily API allocation and usage so far (Sforce-Limit-Info). */
  allocation?: number;
  used?: number;
  jwt?: { publicKey: string; issuer: string; username: string };
}

export interface SalesforceStandIn {
  readonly baseUrl: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly tokens: TokenIssuer;
  readonly requests: SalesforceRequest[];
  /** API calls counted toward the allocation. */
  readonly usage: { used: number; allocation: number };
  records(object: string): SObject[];
  /** A consent change made in Salesforce (a person, a form, another integration). */
  changeConsent(consent: { individualKey: string; contactPointType: string; status: string; purposeName?: string; captureSource?: string; captureDate?: string }): SObject;
  failNext(fault: SalesforceFault, count?: number): void;
  waitForRequests(n: number): Promise<void>;
  close(): Promise<void>;
}

function sfDate(ms: number): string {
  return new Date(ms).toISOString().replace('Z', '+0000');
}

export async function startSalesforceStandIn(options: SalesforceStandInOptions = {}): Promise<SalesforceStandIn> {
  const now = options.now ?? Date.now;
  const clientId = `3MVG9${randomUUID().replace(/-/g, '').slice(0, 20)}`;
  const clientSecret = randomUUID();
  const externalIds: Record<string, string[]> = options.externalIds ?? {
    Contact: ['CareRelay_Patient_Key__c'],
    Account: ['CareRelay_Patient_Key__c'],
    Individual: ['CareRelay_Patient_Key__c'],
    ContactPointTypeConsent: ['CareRelay_Consent_Key__c'],
  };
  const store = new Map<string, Map<string, SObject>>();
  const requests: SalesforceRequest[] = [];
  const faults = new FaultQueue<SalesforceFault>();
  const arrivals = new Arrivals();
  const usage = { used: options.used ?? 0, allocation: options.allocation ?? 100_000 };
  let sequence = 0;
  let baseUrl = '';
  const table = (object: string) => {
    let t = store.get(object);
    if (!t) store.set(object, (t = new Map()));
    return t;
  };
  const newId = (object: string) => `${PREFIX[object] ?? 'a00'}${String(++sequence).padStart(12, '0')}AAA`;
  for (const name of options.purposes ?? ['Marketing', 'Newsletters']) {
    const id = newId('DataUsePurpose');
    table('DataUsePurpose').set(id, { Id: id, Name: name, LastModifiedDate: sfDate(now()) });
  }
  const tokens = new TokenIssuer({
    path: '/services/oauth2/token',
    encoding: 'form',
    clients: [{ id: clientId, secret: clientSecret }],
    ...(options.jwt ? { jwt: { publicKey: options.jwt.publicKey, issuer: options.jwt.issuer, audience: 'https://login.salesforce.com', subjects: [options.jwt.username] } } : {}),
    lifetimeSeconds: options.sessionSeconds ?? 7200,
    sendExpiresIn: false,
    now,
    fields: () => ({ instance_url: baseUrl, id: `${baseUrl}/id/00D000000000001/005000000000001`, issued_at: String(now()), signature: 'c2lnbmF0dXJl' }),
  });

  type Answer = { status: number; body: unknown };
  const err = (status: number, errorCode: string, message: string, fields: string[] = []): Answer => ({ status, body: [{ message, errorCode, fields }] });
  const findByExt = (object: string, field: string, value: string) => [...table(object).values()].filter((r) => r[field] === value);

  const upsert = (object: string, field: string, value: string, body: unknown): Answer => {
    if (!PREFIX[object] || !(externalIds[object] ?? []).includes(field)) return err(404, 'NOT_FOUND', 'The requested resource does not exist');
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return err(400, 'JSON_PARSER_ERROR', 'The body must be a JSON object');
    const values = body as Record<string, unknown>;
    for (const [name, v] of Object.entries(values)) {
      if (!(FIELDS[object] ?? []).includes(name)) return err(400, 'INVALID_FIELD', `No such column '${name}' on sobject of type ${object}`, [name]);
      if (PICKLISTS[name] && v !== null && !PICKLISTS[name]!.includes(String(v))) return err(400, 'INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST', `bad value for restricted picklist field: ${String(v)}`, [name]);
      const target = REFERENCES[name];
      if (target && v !== null && !table(target).has(String(v))) return err(400, 'INVALID_CROSS_REFERENCE_KEY', `invalid cross reference id`, [name]);
    }
    const matches = findByExt(object, field, value);
    if (matches.length > 1) return { status: 300, body: matches.map((m) => `/services/data/v62.0/sobjects/${object}/${m.Id}`) };
    const existing = matches[0];
    if (existing) {
      Object.assign(existing, values, { LastModifiedDate: sfDate(now()) });
      return { status: 200, body: { id: existing.Id, success: true, errors: [], created: false } };
    }
    const missing = (REQUIRED[object] ?? []).filter((f) => values[f] === undefined || values[f] === null || values[f] === '');
    if (missing.length > 0) return err(400, 'REQUIRED_FIELD_MISSING', `Required fields are missing: [${missing.join(', ')}]`, missing);
    const id = newId(object);
    table(object).set(id, { ...values, [field]: value, Id: id, LastModifiedDate: sfDate(now()) });
    return { status: 201, body: { id, success: true, errors: [], created: true } };
  };

  const getByExt = (object: string, field: string, value: string, wanted: string[]): Answer => {
    if (!PREFIX[object] || !(externalIds[object] ?? []).includes(field)) return err(404, 'NOT_FOUND', 'The requested resource does not exist');
    const [record] = findByExt(object, field, value);
    if (!record) return err(404, 'NOT_FOUND', 'The requested resource does not exist');
    return { status: 200, body: { attributes: { type: object, url: `/services/data/v62.0/sobjects/${object}/${record.Id}` }, ...Object.fromEntries(wanted.map((f) => [f, record[f] ?? null])) } };
  };

  const unquote = (s: string) => s.replace(/\\(['\\])/g, '$1');
  const query = (soql: string): Answer => {
    const purpose = /^SELECT Id FROM DataUsePurpose WHERE Name = '((?:[^'\\]|\\.)*)' LIMIT 1$/.exec(soql);
    if (purpose) {
      const records = [...table('DataUsePurpose').values()].filter((r) => r.Name === unquote(purpose[1]!)).slice(0, 1);
      return { status: 200, body: { totalSize: records.length, done: true, records: records.map((r) => ({ attributes: { type: 'DataUsePurpose' }, Id: r.Id })) } };
    }
    const poll =
      /^SELECT Id, LastModifiedDate, PrivacyConsentStatus, ContactPointType, CaptureDate, CaptureSource, PartyId, Party\.(\w+), DataUsePurpose\.Name FROM ContactPointTypeConsent WHERE LastModifiedDate > (\S+)(?: OR \(LastModifiedDate = (\S+) AND Id > '(\w+)'\))? ORDER BY LastModifiedDate, Id LIMIT (\d+)$/.exec(
        soql,
      );
    if (poll) {
      const [, keyField, since, same, afterId, limit] = poll;
      if (!(externalIds.Individual ?? []).includes(keyField!)) return err(400, 'INVALID_FIELD', `No such column '${keyField}' on entity 'Individual'`);
      if (same !== undefined && same !== since) return err(400, 'MALFORMED_QUERY', 'the stand-in expects the same instant twice');
      const sinceMs = Date.parse(since!);
      if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/.test(since!) || Number.isNaN(sinceMs)) return err(400, 'MALFORMED_QUERY', `line 1: invalid dateTime ${since}`);
      const at = (r: SObject) => Math.floor(Date.parse(r.LastModifiedDate.replace('+0000', 'Z')) / 1000) * 1000;
      const records = [...table('ContactPointTypeConsent').values()]
        .filter((r) => at(r) > sinceMs || (afterId !== undefined && at(r) === sinceMs && r.Id > afterId))
        .sort((a, b) => at(a) - at(b) || (a.Id < b.Id ? -1 : 1))
        .slice(0, Number(limit));
      const individual = (id: unknown) => (typeof id === 'string' ? table('Individual').get(id) : undefined);
      const purposeOf = (id: unknown) => (typeof id === 'string' ? table('DataUsePurpose').get(id) : undefined);
      return {
        status: 200,
        body: {
          totalSize: records.length,
          done: true,
          records: records.map((r) => ({
            attributes: { type: 'ContactPointTypeConsent' },
            Id: r.Id,
            LastModifiedDate: r.LastModifiedDate,
            PrivacyConsentStatus: r.PrivacyConsentStatus ?? null,
            ContactPointType: r.ContactPointType ?? null,
            CaptureDate: r.CaptureDate ?? null,
            CaptureSource: r.CaptureSource ?? null,
            PartyId: r.PartyId ?? null,
            Party: individual(r.PartyId) ? { attributes: { type: 'Individual' }, [keyField!]: individual(r.PartyId)![keyField!] ?? null } : null,
            DataUsePurpose: purposeOf(r.DataUsePurposeId) ? { attributes: { type: 'DataUsePurpose' }, Name: purposeOf(r.DataUsePurposeId)!.Name } : null,
          })),
        },
      };
    }
    return err(400, 'MALFORMED_QUERY', 'the stand-in knows two queries: a DataUsePurpose by Name and the consent poll');
  };

  /** One REST operation under /services/data/vNN.0 (also a composite subrequest). */
  const operate = (method: string, url: URL, body: unknown): Answer => {
    const m = /^\/services\/data\/v(\d{2})\.0\/(.*)$/.exec(url.pathname);
    if (!m || Number(m[1]) < 46) return err(404, 'NOT_FOUND', 'The requested resource does not exist');
    const rest = m[2]!.replace(/\/$/, '');
    const sobject = /^sobjects\/(\w+)\/(\w+)\/([^/]+)$/.exec(rest);
    if (sobject && method === 'PATCH') return upsert(sobject[1]!, sobject[2]!, decodeURIComponent(sobject[3]!), body);
    if (sobject && method === 'GET') return getByExt(sobject[1]!, sobject[2]!, decodeURIComponent(sobject[3]!), (url.searchParams.get('fields') ?? 'Id').split(','));
    if (rest === 'query' && method === 'GET') return query(url.searchParams.get('q') ?? '');
    return err(404, 'NOT_FOUND', 'The requested resource does not exist');
  };

  const resolve = (value: unknown, results: Map<string, unknown>): { value: unknown; missing?: string } => {
    if (typeof value === 'string') {
      let missing: string | undefined;
      const replaced = value.replace(/@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])+)\}/g, (_all, ref: string, path: string) => {
        let current: unknown = results.get(ref);
        for (const step of path.match(/\.[A-Za-z0-9_]+|\[\d+\]/g) ?? []) {
          const k = step.startsWith('.') ? step.slice(1) : Number(step.slice(1, -1));
          current = current !== null && typeof current === 'object' ? (current as Record<string | number, unknown>)[k] : undefined;
        }
        if (current === undefined || current === null) missing = `${ref}${path}`;
        return String(current);
      });
      return { value: replaced, ...(missing ? { missing } : {}) };
    }
    if (Array.isArray(value) || value === null || typeof value !== 'object') return { value };
    const out: Record<string, unknown> = {};
    let missing: string | undefined;
    for (const [k, v] of Object.entries(value)) {
      const r = resolve(v, results);
      out[k] = r.value;
      missing ??= r.missing;
    }
    return { value: out, ...(missing ? { missing } : {}) };
  };

  const compositeCall = (body: unknown): Answer => {
    const b = body as { allOrNone?: unknown; compositeRequest?: unknown };
    if (typeof b !== 'object' || b === null || !Array.isArray(b.compositeRequest)) return err(400, 'JSON_PARSER_ERROR', 'compositeRequest is required');
    const subs = b.compositeRequest as Array<Record<string, unknown>>;
    if (subs.length === 0 || subs.length > 25) return err(400, 'INVALID_INPUT', 'a composite request has 1 to 25 subrequests');
    if (subs.filter((s) => /\/query/.test(String(s.url))).length > 5) return err(400, 'INVALID_INPUT', 'at most 5 queries per composite request');
    const snapshot = new Map([...store].map(([k, t]) => [k, new Map([...t].map(([id, r]) => [id, { ...r }]))]));
    const results = new Map<string, unknown>();
    const responses: Array<{ body: unknown; httpHeaders: Record<string, string>; httpStatusCode: number; referenceId: string }> = [];
    let failed = false;
    for (const sub of subs) {
      const referenceId = String(sub.referenceId ?? '');
      const url = resolve(sub.url, results);
      const payload = resolve(sub.body, results);
      const missing = url.missing ?? payload.missing;
      // The stand-in's own code for a reference to nothing (the reference does not document one).
      const answer = missing !== undefined ? err(400, 'INVALID_REFERENCE', `Invalid reference specified. No value for ${missing} found`) : operate(String(sub.method), new URL(String(url.value), 'http://x'), payload.value);
      responses.push({ body: answer.body, httpHeaders: {}, httpStatusCode: answer.status, referenceId });
      if (answer.status >= 300) {
        failed = true;
        if (b.allOrNone === true) break;
      } else results.set(referenceId, answer.body);
    }
    if (failed && b.allOrNone === true) {
      store.clear();
      for (const [k, t] of snapshot) store.set(k, t);
      const halted = { body: [{ errorCode: 'PROCESSING_HALTED', message: 'The transaction was rolled back since another operation in the same transaction failed.' }], httpHeaders: {}, httpStatusCode: 400 };
      return {
        status: 200,
        body: { compositeResponse: subs.map((s, i) => (responses[i] !== undefined && responses[i]!.httpStatusCode >= 300 ? responses[i] : { ...halted, referenceId: String(s.referenceId ?? '') })) },
      };
    }
    return { status: 200, body: { compositeResponse: responses } };
  };

  const server = http.createServer((req, res) => {
    void readBody(req).then((raw) => {
      if (tokens.handle(req, raw, res)) return;
      const url = new URL(req.url ?? '/', 'http://x');
      const contentType = req.headers['content-type'];
      let body: unknown;
      try {
        body = raw.length > 0 ? JSON.parse(raw.toString('utf8')) : undefined;
      } catch {
        body = Symbol.for('unparsable');
      }
      const record: SalesforceRequest = { method: req.method ?? '', path: url.pathname + url.search, auth: tokens.check(req.headers.authorization), ...(contentType !== undefined ? { contentType } : {}), body, status: 0 };
      requests.push(record);
      arrivals.arrive();
      const send = (answer: Answer) => {
        record.status = answer.status;
        res.writeHead(answer.status, { 'content-type': 'application/json;charset=UTF-8', 'sforce-limit-info': `api-usage=${usage.used}/${usage.allocation}` }).end(JSON.stringify(answer.body));
      };
      const fault = faults.take(req, res);
      if (fault === 'handled') return;
      if (record.auth !== 'valid') return send(err(401, 'INVALID_SESSION_ID', 'Session expired or invalid'));
      usage.used += 1;
      if (fault?.kind === 'status') return send(err(fault.status, fault.errorCode ?? (fault.status >= 500 ? 'SERVER_ERROR' : 'INVALID_INPUT'), 'injected'));
      if ((req.method === 'PATCH' || req.method === 'POST') && !(contentType ?? '').startsWith('application/json')) return send(err(415, 'UNSUPPORTED_MEDIA_TYPE', 'Content-Type must be application/json'));
      if (body === Symbol.for('unparsable')) return send(err(400, 'JSON_PARSER_ERROR', 'Unexpected character'));
      if (req.method === 'POST' && /^\/services\/data\/v(\d{2})\.0\/composite\/?$/.test(url.pathname)) return send(compositeCall(body));
      send(operate(req.method ?? '', url, body));
    });
  });
  const listener = await listenOnLoopback(server);
  baseUrl = listener.baseUrl;

  return {
    baseUrl,
    clientId,
    clientSecret,
    tokens,
    requests,
    usage,
    records: (object) => [...table(object).values()],
    changeConsent(change) {
      const [individual] = findByExt('Individual', (externalIds.Individual ?? [])[0]!, change.individualKey);
      if (!individual) throw new Error(`no Individual with key ${change.individualKey}`);
      const purpose = change.purposeName === undefined ? undefined : [...table('DataUsePurpose').values()].find((p) => p.Name === change.purposeName);
      const id = newId('ContactPointTypeConsent');
      const cptc: SObject = {
        Id: id,
        PartyId: individual.Id,
        ContactPointType: change.contactPointType,
        PrivacyConsentStatus: change.status,
        CaptureDate: change.captureDate ?? sfDate(now()),
        CaptureSource: change.captureSource ?? 'Preference Center',
        CaptureContactPointType: 'Web',
        ...(purpose ? { DataUsePurposeId: purpose.Id } : {}),
        LastModifiedDate: sfDate(now()),
      };
      table('ContactPointTypeConsent').set(id, cptc);
      return cptc;
    },
    failNext: (fault, count) => faults.push(fault, count),
    waitForRequests: (n) => arrivals.waitFor(n),
    async close() {
      faults.releaseHanging();
      await listener.close();
    },
  };
}
