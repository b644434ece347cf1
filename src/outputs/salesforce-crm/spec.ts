// The `salesforce-crm` output: the patient kept as a Contact or a Person Account in Salesforce
// (Health Cloud or core CRM), upserted by an external id field, and — for the consent ledger —
// consent mirrored to Individual / ContactPointTypeConsent / DataUsePurpose, and consent changes
// made in Salesforce read back (salesforce-crm/consent-poll.ts).
//
// Follows the Salesforce REST API (developer.salesforce.com/docs/platform/api-rest, API version
// `apiVersion`, default 62.0, at least 46.0: upsert answers carry `created`):
//   - auth: OAuth 2.0 client credentials flow (POST <My Domain>/services/oauth2/token, form
//     grant_type=client_credentials, client_id, client_secret; the connected or external client
//     app names a run-as user) or the JWT bearer flow ("OAuth 2.0 JWT Bearer Flow for
//     Server-to-Server Integration": an RS256 assertion, iss = consumer key, sub = username, aud =
//     https://login.salesforce.com or https://test.salesforce.com, exp within 3 minutes). Answers
//     carry instance_url (where API calls go) and no expires_in: the token lives as long as the
//     org's session timeout, which `tokenLifetimeSeconds` must not exceed; a 401 INVALID_SESSION_ID
//     renews it earlier (http/oauth-token.ts).
//   - "Insert or Update (Upsert) a Record Using an External ID": PATCH
//     /services/data/vXX.X/sobjects/{Contact|Account}/{externalIdField}/{key} → 201 created / 200
//     updated { id, success, errors, created }; 300 when the key matches several records; 404
//     NOT_FOUND for a wrong object or field.
//   - "Composite" (POST /services/data/vXX.X/composite { allOrNone, compositeRequest: [{ method,
//     url, referenceId, body }] }, at most 25 subrequests of which 5 queries, later ones referring
//     to earlier results as @{ref.field}; the whole series counts as one API call): used where it
//     saves calls — the Individual and the patient upserted together (the patient's IndividualId /
//     PersonIndividualId set from the first), and a consent mirrored in one call (the Individual
//     read by its external id, the DataUsePurpose found by name, the ContactPointTypeConsent
//     upserted by its external id).
//   - "Status Codes and Error Responses" ([{ message, errorCode, fields }]) and "Limit Info
//     Header" (Sforce-Limit-Info: api-usage=<used>/<allocation> on every answer, the org's rolling
//     24-hour allocation).
//   - Object Reference: Individual (LastName required), ContactPointTypeConsent (PartyId →
//     Individual, ContactPointType and CaptureContactPointType picklists Email / Phone / Web…,
//     PrivacyConsentStatus OptIn / OptOut, CaptureDate, CaptureSource, DataUsePurposeId,
//     EffectiveFrom / EffectiveTo; available with Data Protection and Privacy, API 45.0+),
//     DataUsePurpose (Name), Contact.IndividualId, Account.PersonIndividualId.
//
// Upserts by external id are idempotent: the same key is the same record, so an unknown outcome is
// retried (`idempotent`). What is sent: the `fields` map (outputs/field-map.ts) under the external
// id; the Individual gets FirstName/LastName from it; a mirrored consent gets the channel, purpose,
// status, capture date, "CareRelay: <source>" as CaptureSource and the effective dates.
//
// API usage: every answer's Sforce-Limit-Info is read; once the org has used
// `pauseAtApiUsagePercent` of its allocation, sends stop for 15 minutes with a RateLimitedError and
// no call (the allocation is shared with the org's other integrations), then one call looks again.
//
// Failures (one API call per send; a 401 renews the token and repeats it once):
//   403 REQUEST_LIMIT_EXCEEDED, the usage pause      → RateLimitedError (no time given by Salesforce)
//   503, 502, 504, 408, UNABLE_TO_LOCK_ROW           → TransientError
//   other 5xx, timeout, reset                        → AmbiguousError (retried: upserts are idempotent)
//   401 after a new token, other 403                 → PermanentError salesforce_unauthorized / _forbidden
//   300 (several records with the key), 404, 4xx    → PermanentError with Salesforce's errorCode
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { sendWithToken, type OAuthGrant } from '../../http/oauth-token.ts';
import { headerOf, type OutboundResponse } from '../../http/outbound.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { apiOutputInfo, baseUrlIssues, instanceUrl, isRecord, limitsSchema, parseJson, timeoutSecondsSchema, tokenProvider } from '../api-output.ts';
import { allowedPurposesSchema, outputNameSchema, providerBaaSchema } from '../common.ts';
import { ConsentChannel, type ConsentMirror, type ToolConsentSignal } from '../consent-sync.ts';
import { applyFieldMap, compileFieldMap, compileFieldSource, fieldMapIssues, fieldMapSchema, fieldSourceIssues, mappedValue, MessageValue } from '../field-map.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputLimits, OutputSpec, SendContext } from '../spec.ts';
import { consentQuery, consentSignals, type ConsentPollCursor, type ConsentRecord } from './consent-poll.ts';

export const SALESFORCE_CRM = 'salesforce-crm';

export const PatientObject = { Contact: 'Contact', PersonAccount: 'Account' } as const;
export type PatientObject = (typeof PatientObject)[keyof typeof PatientObject];

/** Failure codes of this output (safe to log), besides the token's (`salesforce_token_…`). */
export const SalesforceCode = {
  RateLimited: 'salesforce_rate_limited',
  UsagePaused: 'salesforce_api_usage_high',
  Unavailable: 'salesforce_unavailable',
  ServerError: 'salesforce_server_error',
  Unauthorized: 'salesforce_unauthorized',
  Forbidden: 'salesforce_forbidden',
  NotFound: 'salesforce_not_found',
  DuplicateKey: 'salesforce_duplicate_external_id',
  Rejected: 'salesforce_rejected',
  NoKey: 'salesforce_no_key',
  ConsentNotConfigured: 'salesforce_consent_not_configured',
  PurposeUnmapped: 'salesforce_purpose_unmapped',
  InstanceUrl: 'salesforce_instance_url_invalid',
  InvalidAnswer: 'salesforce_invalid_answer',
} as const;

/** The shortest session timeout an org can set: a token is never kept longer by default. */
const DEFAULT_TOKEN_LIFETIME_SECONDS = 900;
/** How long sends stop once the org's API usage reaches the configured share. */
export const USAGE_PAUSE_MS = 15 * 60_000;

/**
 * Salesforce has no per-second REST limit: it counts requests per rolling 24 h (100,000 + per
 * licence for Enterprise and up) and long-running (≥ 20 s) requests in flight (25). CareRelay's
 * defaults stay well below; set perDay to the share of the allocation CareRelay may use.
 */
export const SALESFORCE_DEFAULT_LIMITS = { ratePerSecond: 10, burst: 20, concurrency: 10 } as const satisfies OutputLimits;

export interface SalesforceCrmConfig {
  readonly name: string;
  readonly type: typeof SALESFORCE_CRM;
  readonly myDomainUrl: string;
  readonly auth: {
    readonly clientCredentials?: { readonly clientId: string; readonly clientSecret: SecretRef };
    readonly jwtBearer?: { readonly clientId: string; readonly username: string; readonly privateKey: SecretRef; readonly audience: string; readonly tokenUrl?: string };
  };
  readonly tokenLifetimeSeconds: number;
  readonly apiVersion: string;
  readonly patient: {
    readonly object: PatientObject;
    readonly externalIdField: string;
    readonly key: string;
    readonly recordTypeId?: string;
    readonly fields: Readonly<Record<string, string>>;
  };
  readonly individual?: { readonly externalIdField: string };
  readonly consent?: {
    readonly externalIdField: string;
    readonly purposes: Readonly<Partial<Record<Purpose, string>>>;
  };
  readonly pauseAtApiUsagePercent: number;
  readonly timeoutSeconds: number;
  readonly limits: OutputLimits;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

const API_NAME = { type: 'string', pattern: '^[A-Za-z][A-Za-z0-9_]{0,79}$', 'x-hint': 'a field API name such as CareRelay_Patient_Key__c' } as const;

export const salesforceCrmConfigSchema = {
  type: 'object',
  description: 'Salesforce (Health Cloud or core CRM): the patient upserted as a Contact or Person Account by an external id, consent mirrored to ContactPointTypeConsent.',
  additionalProperties: false,
  required: ['name', 'type', 'myDomainUrl', 'auth'],
  properties: {
    name: outputNameSchema,
    type: { const: SALESFORCE_CRM, description: 'Output type: salesforce-crm.' },
    myDomainUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: 'The org\'s My Domain URL, e.g. https://northclinic.my.salesforce.com (token requests go there; API calls go to the instance_url the token answer names).',
    },
    auth: {
      type: 'object',
      additionalProperties: false,
      description: 'How CareRelay gets a token: one of clientCredentials and jwtBearer (the connected app or external client app\'s settings).',
      properties: {
        clientCredentials: {
          type: 'object',
          additionalProperties: false,
          required: ['clientId', 'clientSecret'],
          description: 'OAuth 2.0 client credentials flow (enable it on the app and set its run-as integration user).',
          properties: {
            clientId: { type: 'string', minLength: 1, maxLength: 255, description: 'The app\'s consumer key.' },
            clientSecret: { ...secretRefSchema, description: 'The app\'s consumer secret, by reference.' },
          },
        },
        jwtBearer: {
          type: 'object',
          additionalProperties: false,
          required: ['clientId', 'username', 'privateKey'],
          description: 'OAuth 2.0 JWT bearer flow: an assertion signed with the key whose certificate is uploaded to the app (the user pre-authorized).',
          properties: {
            clientId: { type: 'string', minLength: 1, maxLength: 255, description: 'The app\'s consumer key (the assertion\'s iss).' },
            username: { type: 'string', minLength: 3, maxLength: 255, description: 'The integration user\'s username (the assertion\'s sub).' },
            privateKey: { ...secretRefSchema, description: 'PEM RSA private key (2048 bits or more), by reference.' },
            audience: {
              enum: ['https://login.salesforce.com', 'https://test.salesforce.com'],
              default: 'https://login.salesforce.com',
              description: 'The assertion\'s aud: https://login.salesforce.com, or https://test.salesforce.com for a sandbox.',
            },
            tokenUrl: { type: 'string', format: 'uri', pattern: '^https?://', description: 'Token endpoint; default <myDomainUrl>/services/oauth2/token.' },
          },
        },
      },
    },
    tokenLifetimeSeconds: {
      type: 'integer',
      minimum: 60,
      maximum: 86_400,
      default: DEFAULT_TOKEN_LIFETIME_SECONDS,
      description: 'How long a token is kept (Salesforce gives no expires_in: keep this at most the org\'s session timeout). A 401 renews it sooner.',
    },
    apiVersion: { type: 'string', pattern: '^[0-9]{2}\\.0$', default: '62.0', 'x-hint': 'e.g. 62.0', description: 'REST API version, 46.0 or later.' },
    patient: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'Where the patient goes.',
      properties: {
        object: {
          enum: Object.values(PatientObject),
          default: PatientObject.Contact,
          description: 'Contact, or Account for Person Accounts (Health Cloud patients usually are).',
        },
        externalIdField: { ...API_NAME, default: 'CareRelay_Patient_Key__c', description: 'The object\'s unique, case-sensitive External ID field holding the key.' },
        key: { type: 'string', default: MessageValue.PatientId, description: `The key's value: ${MessageValue.PatientId} (default) or a trigger path the rule sends.` },
        recordTypeId: { type: 'string', pattern: '^[A-Za-z0-9]{15,18}$', description: 'RecordTypeId to create records with (a Person Account record type). Absent: the default.' },
        fields: fieldMapSchema('The record\'s fields: CareRelay field → field API name. LastName is required to create a record.', 'names'),
      },
    },
    individual: {
      type: 'object',
      additionalProperties: false,
      required: ['externalIdField'],
      description: 'Also keep an Individual (the data-privacy record) per patient, linked from the Contact (IndividualId) or Person Account (PersonIndividualId). Needed to mirror consent.',
      properties: { externalIdField: { ...API_NAME, description: 'Individual\'s External ID field holding the same key.' } },
    },
    consent: {
      type: 'object',
      additionalProperties: false,
      required: ['externalIdField'],
      description: 'Mirror the consent ledger to ContactPointTypeConsent (needs individual and Data Protection and Privacy).',
      properties: {
        externalIdField: { ...API_NAME, description: 'ContactPointTypeConsent\'s External ID field, holding "<key>:<channel>:<purpose>".' },
        purposes: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'CareRelay purpose → the Name of its DataUsePurpose record (e.g. marketing: Marketing). A consent for an unmapped purpose is refused.',
          properties: Object.fromEntries(PURPOSES.map((p) => [p, { type: 'string', minLength: 1, maxLength: 80, description: `DataUsePurpose Name for ${p}. Absent: consent for ${p} is not mirrored.` }])),
        },
      },
    },
    pauseAtApiUsagePercent: {
      type: 'integer',
      minimum: 1,
      maximum: 100,
      default: 90,
      description: 'Stop sending for 15 minutes once Sforce-Limit-Info shows the org has used this share of its daily API allocation (100: never).',
    },
    timeoutSeconds: timeoutSecondsSchema,
    limits: limitsSchema(SALESFORCE_DEFAULT_LIMITS, 'Salesforce counts API requests per rolling 24 h (shared by every integration of the org) and has no per-second limit; the defaults are CareRelay\'s own.'),
    baa: {
      ...providerBaaSchema,
      description:
        'Set true when your Salesforce BAA lists this org\'s service (Health Cloud usually is a HIPAA Covered Service; check the BAA): only then may rules send care fields here (docs/consent.md rule 4).',
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: SalesforceCrmConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const auth = config.auth ?? {};
  if ((auth.clientCredentials === undefined) === (auth.jwtBearer === undefined)) issues.push({ path: ['auth'], message: 'give exactly one of clientCredentials and jwtBearer' });
  if (Number(config.apiVersion ?? '62.0') < 46) issues.push({ path: ['apiVersion'], message: 'use API version 46.0 or later (upsert answers say whether a record was created)' });
  const patient = config.patient;
  if (!Object.values(patient?.fields ?? {}).includes('LastName')) issues.push({ path: ['patient', 'fields'], message: 'fill LastName (required to create a Contact, a Person Account or an Individual), e.g. patient.name.family: LastName' });
  issues.push(...fieldSourceIssues(patient?.key ?? MessageValue.PatientId, ['patient', 'key']));
  issues.push(...fieldMapIssues(patient?.fields ?? {}, ['patient', 'fields']));
  if (config.consent !== undefined && config.individual === undefined) issues.push({ path: ['consent'], atKey: true, message: 'consent is kept per Individual: configure individual too' });
  issues.push(...baseUrlIssues(config.myDomainUrl, ['myDomainUrl']));
  issues.push(...baseUrlIssues(auth.jwtBearer?.tokenUrl, ['auth', 'jwtBearer', 'tokenUrl']));
  return issues;
}

export const salesforceCrmSpec: OutputSpec<SalesforceCrmConfig, OutputDeps> = {
  type: SALESFORCE_CRM,
  summary: 'Salesforce Health Cloud / CRM: patient upsert by external id (Contact or Person Account), consent mirrored to ContactPointTypeConsent.',
  configSchema: salesforceCrmConfigSchema,
  check,
  // Idempotent: upserts by external id, a repeat updates the same record.
  info: (config) => apiOutputInfo(config, 'crm', true, SALESFORCE_DEFAULT_LIMITS),
  create: (config, deps) => createSalesforceCrm(config, deps),
};

/** A salesforce-crm adapter: send, mirrorConsent, and the consent poll (consent-poll.ts). */
export interface SalesforceCrmAdapter extends OutboundAdapter {
  mirrorConsent(consent: ConsentMirror, context: { readonly signal: AbortSignal }): Promise<Receipt>;
  /** One page of consent changes made in Salesforce after `cursor` (one query). */
  pollConsent(cursor: ConsentPollCursor, context: { readonly signal: AbortSignal }): Promise<{ signals: ToolConsentSignal[]; cursor: ConsentPollCursor; more: boolean }>;
}

/** The api-usage of a Sforce-Limit-Info header ("api-usage=18/5000"), when present. */
export function apiUsage(header: string | undefined): { used: number; allocation: number } | undefined {
  const m = /api-usage=(\d+)\/(\d+)/.exec(header ?? '');
  if (!m) return undefined;
  const allocation = Number(m[2]);
  return allocation > 0 ? { used: Number(m[1]), allocation } : undefined;
}

/** Salesforce's error body: [{ message, errorCode, fields }]; errorCodes are upper-case constants, safe to log. */
function errorCodeOf(body: unknown): string | undefined {
  const first = Array.isArray(body) ? body[0] : body;
  const code = isRecord(first) ? first.errorCode : undefined;
  return typeof code === 'string' && /^[A-Z_]{1,80}$/.test(code) ? code : undefined;
}

const CONTACT_POINT_TYPE: Readonly<Record<ConsentChannel | 'web', string>> = { email: 'Email', sms: 'Phone', phone: 'Phone', web: 'Web' };

/** Escapes a string literal for SOQL (quote and backslash). */
export function soqlString(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function grantOf(config: SalesforceCrmConfig, deps: OutputDeps): { tokenUrl: string; grant: OAuthGrant } {
  const base = config.myDomainUrl.replace(/\/+$/, '');
  const cc = config.auth.clientCredentials;
  if (cc !== undefined) {
    return { tokenUrl: `${base}/services/oauth2/token`, grant: { kind: 'client_credentials', clientId: cc.clientId, clientSecret: deps.secret(cc.clientSecret), encoding: 'form' } };
  }
  const jwt = config.auth.jwtBearer!;
  return {
    tokenUrl: jwt.tokenUrl ?? `${base}/services/oauth2/token`,
    grant: { kind: 'jwt_bearer', issuer: jwt.clientId, subject: jwt.username, audience: jwt.audience ?? 'https://login.salesforce.com', privateKey: deps.secret(jwt.privateKey) },
  };
}

export function createSalesforceCrm(config: SalesforceCrmConfig, deps: OutputDeps): SalesforceCrmAdapter {
  const info = salesforceCrmSpec.info(config);
  const { tokenUrl, grant } = grantOf(config, deps);
  const tokens = tokenProvider({
    tokenUrl,
    grant,
    defaultLifetimeSeconds: config.tokenLifetimeSeconds,
    refreshBeforeSeconds: 60,
    timeoutSeconds: config.timeoutSeconds,
    codePrefix: 'salesforce',
    now: deps.now,
  });
  const version = `v${config.apiVersion}`;
  const data = `/services/data/${version}`;
  const patient = config.patient;
  const fields = compileFieldMap(patient.fields);
  const keySource = compileFieldSource(patient.key);
  const linkField = patient.object === PatientObject.PersonAccount ? 'PersonIndividualId' : 'IndividualId';
  let pausedUntil = 0;

  const keyOf = (message: OutboundMessage): string => {
    const value = mappedValue(keySource, message);
    if (value === undefined || value === '') throw new PermanentError(SalesforceCode.NoKey, `delivery ${message.deliveryId} has no ${patient.key} for ${patient.externalIdField}`);
    return String(value);
  };
  const upsertUrl = (object: string, field: string, key: string) => `${data}/sobjects/${object}/${field}/${encodeURIComponent(key)}`;

  /** Reads the API usage of an answer; from the threshold on, sends pause (see the top of this file). */
  const observe = (response: OutboundResponse): { used: number; allocation: number } | undefined => {
    const usage = apiUsage(headerOf(response.headers, 'sforce-limit-info'));
    if (usage !== undefined && usage.used * 100 >= usage.allocation * config.pauseAtApiUsagePercent) pausedUntil = deps.now().getTime() + USAGE_PAUSE_MS;
    return usage;
  };

  const refusal = (status: number, body: unknown): Error & { providerCode?: string } => {
    const errorCode = errorCodeOf(body);
    const what = `Salesforce answered HTTP ${status}${errorCode ? ` (${errorCode})` : ''}`;
    const withCode = <E extends Error>(error: E): E & { providerCode?: string } => Object.assign(error, errorCode ? { providerCode: errorCode } : {});
    if (errorCode === 'REQUEST_LIMIT_EXCEEDED') return withCode(new RateLimitedError(SalesforceCode.RateLimited, what));
    if (status === 408 || status === 502 || status === 503 || status === 504 || errorCode === 'UNABLE_TO_LOCK_ROW' || errorCode === 'SERVER_UNAVAILABLE') {
      return withCode(new TransientError(SalesforceCode.Unavailable, what));
    }
    if (status >= 500) return withCode(new AmbiguousError(SalesforceCode.ServerError, `${what}; it may have written the record`));
    if (status === 401) return withCode(new PermanentError(SalesforceCode.Unauthorized, `${what} with a new token: check the app and its user`));
    if (status === 403) return withCode(new PermanentError(SalesforceCode.Forbidden, `${what}: the integration user lacks access to the object or field`));
    if (status === 300) return withCode(new PermanentError(SalesforceCode.DuplicateKey, `${what}: several records have this ${patient.externalIdField}; make the field unique`));
    if (status === 404) return withCode(new PermanentError(SalesforceCode.NotFound, `${what}: check the object, the external id field and the API version`));
    return withCode(new PermanentError(SalesforceCode.Rejected, what));
  };

  /** One API call (GET, PATCH, POST of JSON) with the usage pause, the token and the 401 renewal. */
  const call = async (signal: AbortSignal, method: 'GET' | 'PATCH' | 'POST', path: string, body?: unknown) => {
    const left = pausedUntil - deps.now().getTime();
    if (left > 0) throw new RateLimitedError(SalesforceCode.UsagePaused, `the org has used ${config.pauseAtApiUsagePercent} % or more of its daily API allocation; sends resume later`, { retryAfterMs: left });
    const { response } = await sendWithToken(tokens, signal, (token) => ({
      url: new URL(path, instanceUrl(token, 'instance_url', SalesforceCode.InstanceUrl)),
      method,
      headers: {
        authorization: `Bearer ${token.accessToken}`,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        accept: 'application/json',
        'user-agent': 'CareRelay',
      },
      body: body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body)),
      timeoutMs: config.timeoutSeconds * 1000,
      codePrefix: 'salesforce',
      maxResponseBytes: 1024 * 1024,
    }));
    const usage = observe(response);
    return { status: response.status, body: parseJson(response.body), usage };
  };

  /** A composite call's subresponses by reference id; the first failing one refuses the whole. */
  const composite = async (signal: AbortSignal, compositeRequest: Array<{ method: string; url: string; referenceId: string; body?: unknown }>) => {
    const { status, body, usage } = await call(signal, 'POST', `${data}/composite`, { allOrNone: true, compositeRequest });
    if (status !== 200) throw refusal(status, body);
    const responses = isRecord(body) && Array.isArray(body.compositeResponse) ? body.compositeResponse.filter(isRecord) : [];
    if (responses.length !== compositeRequest.length) throw new AmbiguousError(SalesforceCode.InvalidAnswer, 'Salesforce answered the composite call without a response per subrequest');
    const failed = responses.filter((r) => typeof r.httpStatusCode === 'number' && r.httpStatusCode >= 300);
    // allOrNone: the others are answered PROCESSING_HALTED; the cause is the first that is not.
    const cause = failed.find((r) => errorCodeOf(r.body) !== 'PROCESSING_HALTED') ?? failed[0];
    if (cause !== undefined) throw refusal(cause.httpStatusCode as number, cause.body);
    return { byRef: new Map(responses.map((r) => [String(r.referenceId), r.body])), usage };
  };

  const receiptOf = (body: unknown, fallback: string, usage: { used: number; allocation: number } | undefined): Receipt => {
    const id = isRecord(body) && typeof body.id === 'string' ? body.id : undefined;
    return {
      providerId: id ?? fallback,
      acceptedAt: deps.now().toISOString(),
      detail: { ...(isRecord(body) && typeof body.created === 'boolean' ? { created: body.created } : {}), ...(usage ? { apiUsage: `${usage.used}/${usage.allocation}` } : {}) },
    };
  };

  return {
    name: config.name,
    ...info,

    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      const key = keyOf(message);
      const record: Record<string, unknown> = { ...applyFieldMap(fields, message), ...(patient.recordTypeId !== undefined ? { RecordTypeId: patient.recordTypeId } : {}) };
      const patientUrl = upsertUrl(patient.object, patient.externalIdField, key);
      const fallback = `${patient.object}/${patient.externalIdField}/${key}`;
      if (config.individual === undefined) {
        const { status, body, usage } = await call(context.signal, 'PATCH', patientUrl, record);
        if (status === 200 || status === 201 || status === 204) return receiptOf(body, fallback, usage);
        throw refusal(status, body);
      }
      // One call for both: the Individual first, the patient linked to it.
      const individual = { LastName: record.LastName, ...(record.FirstName !== undefined ? { FirstName: record.FirstName } : {}) };
      const { byRef, usage } = await composite(context.signal, [
        { method: 'PATCH', url: upsertUrl('Individual', config.individual.externalIdField, key), referenceId: 'individual', body: individual },
        { method: 'PATCH', url: patientUrl, referenceId: 'patient', body: { ...record, [linkField]: '@{individual.id}' } },
      ]);
      return receiptOf(byRef.get('patient'), fallback, usage);
    },

    async mirrorConsent(consent: ConsentMirror, context: { readonly signal: AbortSignal }): Promise<Receipt> {
      if (config.consent === undefined || config.individual === undefined) {
        throw new PermanentError(SalesforceCode.ConsentNotConfigured, `output "${config.name}" has no consent block: consent is not mirrored there`);
      }
      const purposeName = consent.purpose === undefined ? undefined : config.consent.purposes[consent.purpose];
      if (consent.purpose !== undefined && purposeName === undefined) {
        throw new PermanentError(SalesforceCode.PurposeUnmapped, `output "${config.name}" maps no DataUsePurpose for ${consent.purpose} (consent.purposes)`);
      }
      const consentKey = `${consent.patientId}:${consent.channel}:${consent.purpose ?? 'all'}`;
      const body: Record<string, unknown> = {
        Name: `CareRelay ${consent.channel} ${consent.purpose ?? 'all purposes'}`.slice(0, 80),
        PartyId: '@{party.Id}',
        ContactPointType: CONTACT_POINT_TYPE[consent.channel],
        PrivacyConsentStatus: consent.status === 'opted_in' ? 'OptIn' : 'OptOut',
        CaptureDate: consent.capturedAt,
        CaptureSource: `CareRelay: ${consent.source}`.slice(0, 255),
        CaptureContactPointType: CONTACT_POINT_TYPE[consent.capturedVia ?? consent.channel],
        EffectiveFrom: consent.effectiveFrom ?? consent.capturedAt,
        EffectiveTo: consent.effectiveTo ?? null,
        ...(purposeName !== undefined ? { DataUsePurposeId: '@{purpose.records[0].Id}' } : {}),
      };
      const { byRef, usage } = await composite(context.signal, [
        { method: 'GET', url: `${upsertUrl('Individual', config.individual.externalIdField, consent.patientId)}?fields=Id`, referenceId: 'party' },
        ...(purposeName !== undefined
          ? [{ method: 'GET', url: `${data}/query/?q=${encodeURIComponent(`SELECT Id FROM DataUsePurpose WHERE Name = ${soqlString(purposeName)} LIMIT 1`)}`, referenceId: 'purpose' }]
          : []),
        { method: 'PATCH', url: upsertUrl('ContactPointTypeConsent', config.consent.externalIdField, consentKey), referenceId: 'consent', body },
      ]);
      return receiptOf(byRef.get('consent'), `ContactPointTypeConsent/${config.consent.externalIdField}/${consentKey}`, usage);
    },

    async pollConsent(cursor: ConsentPollCursor, context: { readonly signal: AbortSignal }) {
      if (config.consent === undefined || config.individual === undefined) {
        throw new PermanentError(SalesforceCode.ConsentNotConfigured, `output "${config.name}" has no consent block: nothing to poll`);
      }
      const soql = consentQuery(cursor, config.individual.externalIdField);
      const { status, body } = await call(context.signal, 'GET', `${data}/query/?q=${encodeURIComponent(soql)}`);
      if (status !== 200) throw refusal(status, body);
      const records = isRecord(body) && Array.isArray(body.records) ? (body.records.filter(isRecord) as ConsentRecord[]) : [];
      return consentSignals(records, cursor, { output: config.name, individualKeyField: config.individual.externalIdField, purposes: config.consent.purposes });
    },
  };
}
