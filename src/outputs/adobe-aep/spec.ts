// The `adobe-aep` output: each delivery streamed into Adobe Experience Platform as an XDM
// ExperienceEvent, through an HTTP API streaming connection (inlet) into a configured dataset.
//
// Follows the Experience Platform documentation (experienceleague.adobe.com/en/docs/
// experience-platform; sources in github.com/AdobeDocs/experience-platform.en):
//   - auth: Adobe Developer Console "OAuth Server-to-Server" credentials — POST
//     https://ims-na1.adobelogin.com/ims/token/v3, form grant_type=client_credentials,
//     client_id, client_secret, scope (comma-separated, as the credential lists them) →
//     { access_token, token_type: bearer, expires_in: ~86,399 s } (no refresh token; a new one
//     before expiry, http/oauth-token.ts). JWT service-account credentials are deprecated.
//   - ingestion: "Stream time-series data" / "Create an HTTP API streaming connection" — POST
//     {inletUrl} (https://dcs.adobedc.net/collection/{inletId}), Content-Type application/json,
//     Authorization: Bearer on an authenticated connection (401 without it; Adobe recommends
//     authenticated connections for personal data), body { header: { schemaRef: { id,
//     contentType: application/vnd.adobe.xed-full+json;version=N }, imsOrgId, datasetId, source:
//     { name } }, body: { xdmMeta: { schemaRef }, xdmEntity: { _id, timestamp, eventType,
//     identityMap, … } } } → 200 { inletId, xactionId, receivedTimeMs }. The x-gw-ims-org-id,
//     x-api-key and x-sandbox-name headers of the Platform APIs are sent too (whether DCS needs
//     them is not stated).
//   - XDM ExperienceEvent class: `_id` identifies the record and is used "to prevent
//     duplication of data" — it is the delivery id, the same on every attempt (Adobe does not say
//     for how long it deduplicates: the output declares itself idempotent on that basis);
//     `timestamp` RFC 3339, in the past: the trigger's occurredAt when the rule sends it, else
//     the send time. identityMap { <namespace>: [{ id, authenticatedState, primary }] }.
//   - errors ("Streaming multiple messages", "Streaming validation"): 400 bad envelope or record,
//     401 token missing or invalid, 413 over 1 MB, 429, 500, 501, 503 ("retry at least 3 times
//     with exponential backoff"); no Retry-After or rate-limit headers are documented.
//   - guardrails ("Streaming ingestion overview"): 1,000 requests per second per org, 1 MB per
//     record (10 KB recommended).
//
// HIPAA (Adobe's Healthcare vertical blueprint, "Healthcare Shield"): Adobe signs a BAA only for
// Real-Time CDP (and Journey Optimizer, Customer Journey Analytics) with the Healthcare Shield
// add-on, in the US; even then it excludes substance-abuse, mental-health and genetic records,
// health records of minors, children's personal information, government identifiers (SSN) and
// full account or card numbers. With `baa: true` this adapter refuses (PermanentError, no call) a
// delivery whose `sensitivity` carries an excluded label, a patient under `minorAgeYears` or
// whose age is unknown (the rule must send patient.birthDate; it is read, not sent unless
// mapped), and refuses at load a map that would read an SSN (see check()). It can only see the
// labels the rule sends: a rule routed to such an output without `sensitivity` and
// `patient.birthDate` in send.fields is refused at load (SHIELD_REQUIRED_FIELDS).
//
// What is sent: the envelope above, the identity (the patient id by default, or an HMAC
// pseudonym), eventType (`carerelay.<rule id>` unless configured) and the `data` map
// (outputs/field-map.ts) written at its dotted XDM paths. Nothing else of the trigger.
//
// Failures (one call per send; a 401 renews the token and repeats the call once):
//   429                      → RateLimitedError (Retry-After if any)
//   408, 502, 503, 504       → TransientError
//   500, other 5xx, timeout, reset → AmbiguousError (retried: `_id` deduplicates)
//   401 after a new token, 403 → PermanentError aep_unauthorized / aep_forbidden
//   413                      → PermanentError aep_too_large; 400, 404, 501, other 4xx → aep_rejected
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { sendWithToken } from '../../http/oauth-token.ts';
import { headerOf, parseRetryAfter, sendOnce, type OutboundRequest } from '../../http/outbound.ts';
import type { Purpose, Receipt } from '../../types.ts';
import { apiOutputInfo, baseUrlIssues, isRecord, limitsSchema, parseJson, pseudonym, timeoutSecondsSchema, tokenProvider } from '../api-output.ts';
import { allowedPurposesSchema, outputNameSchema, providerBaaSchema } from '../common.ts';
import { applyFieldMap, compileFieldMap, compileFieldSource, fieldMapIssues, fieldMapSchema, fieldSourceIssues, mappedValue, MessageValue } from '../field-map.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputLimits, OutputSpec, SendContext } from '../spec.ts';

export const ADOBE_AEP = 'adobe-aep';

/** Failure codes of this output (safe to log), besides the token's (`aep_token_…`). */
export const AepCode = {
  RateLimited: 'aep_rate_limited',
  Unavailable: 'aep_unavailable',
  ServerError: 'aep_server_error',
  Unauthorized: 'aep_unauthorized',
  Forbidden: 'aep_forbidden',
  TooLarge: 'aep_too_large',
  Rejected: 'aep_rejected',
  NoIdentity: 'aep_no_identity',
  /** Healthcare Shield: a label of a category Adobe excludes. */
  ShieldSensitive: 'aep_shield_excluded_category',
  /** Healthcare Shield: the patient is a minor. */
  ShieldMinor: 'aep_shield_minor',
  /** Healthcare Shield: the rule did not send patient.birthDate, so a minor cannot be ruled out. */
  ShieldAgeUnknown: 'aep_shield_age_unknown',
} as const;

/** Labels (docs/trigger.md sensitivity; HL7 v3 ActCode) of what Healthcare Shield excludes: substance use, mental health, genetics. */
export const SHIELD_EXCLUDED_LABELS = ['ETH', 'SUD', 'PSY', 'PSYTHPN', 'MH', 'GDIS'] as const;
const SSN_SYSTEM = 'http://hl7.org/fhir/sid/us-ssn';

/**
 * With baa: true, what every rule routed here must send, and why: the adapter refuses the kinds
 * Healthcare Shield excludes by what the rule hands it (checked at load, pipeline/coverage.ts).
 */
export const SHIELD_REQUIRED_FIELDS: Readonly<Record<string, string>> = {
  sensitivity: "under Healthcare Shield Adobe's BAA excludes substance-use, mental-health and genetic records, which CareRelay refuses by their sensitivity labels",
  'patient.birthDate': "under Healthcare Shield Adobe's BAA excludes minors' records, which CareRelay refuses by the patient's age (it is read, not sent unless mapped)",
};

/** 1,000 requests per second per org ("Streaming ingestion overview"); concurrency is CareRelay's choice. */
export const AEP_DEFAULT_LIMITS = { ratePerSecond: 1000, burst: 1000, concurrency: 20 } as const satisfies OutputLimits;
/** IMS tokens live ~24 h (expires_in 86,399 s). */
const TOKEN_LIFETIME_SECONDS = 86_399;

export interface AdobeAepConfig {
  readonly name: string;
  readonly type: typeof ADOBE_AEP;
  readonly imsTokenUrl: string;
  readonly clientId: string;
  readonly clientSecret: SecretRef;
  readonly scopes: string;
  readonly orgId: string;
  readonly sandbox: string;
  readonly inletUrl: string;
  readonly authenticated: boolean;
  readonly schemaId: string;
  readonly schemaVersion: string;
  readonly datasetId: string;
  readonly sourceName: string;
  readonly eventType?: string;
  readonly identity: { readonly namespace: string; readonly source: string; readonly authenticatedState: string; readonly pseudonymKey?: SecretRef };
  readonly data: Readonly<Record<string, string>>;
  readonly healthcareShield: { readonly excludedLabels: readonly string[]; readonly minorAgeYears: number };
  readonly timeoutSeconds: number;
  readonly limits: OutputLimits;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const adobeAepConfigSchema = {
  type: 'object',
  description: 'Adobe Experience Platform: each delivery streamed as an XDM ExperienceEvent to an HTTP API streaming connection (OAuth server-to-server).',
  additionalProperties: false,
  required: ['name', 'type', 'clientId', 'clientSecret', 'orgId', 'inletUrl', 'schemaId', 'datasetId'],
  properties: {
    name: outputNameSchema,
    type: { const: ADOBE_AEP, description: 'Output type: adobe-aep.' },
    imsTokenUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      default: 'https://ims-na1.adobelogin.com/ims/token/v3',
      description: 'Adobe IMS token endpoint (a local stand-in in tests, http on loopback only).',
    },
    clientId: { type: 'string', minLength: 1, maxLength: 200, description: 'Client ID of the project\'s OAuth Server-to-Server credential (also sent as x-api-key).' },
    clientSecret: { ...secretRefSchema, description: 'Its client secret, by reference.' },
    scopes: {
      type: 'string',
      minLength: 1,
      maxLength: 1000,
      default: 'openid,AdobeID,read_organizations,additional_info.projectedProductContext,session',
      description: 'Comma-separated scopes, as the credential page of the Developer Console lists them.',
    },
    orgId: { type: 'string', pattern: '^[A-Za-z0-9]{8,40}@AdobeOrg$', 'x-hint': 'e.g. 7BF122A65C5B3FE40A494026@AdobeOrg', description: 'IMS organization id (header.imsOrgId, x-gw-ims-org-id).' },
    sandbox: { type: 'string', pattern: '^[a-z0-9-]{1,64}$', default: 'prod', description: 'Sandbox name (x-sandbox-name).' },
    inletUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: 'The streaming connection\'s inletUrl (Sources → HTTP API, or the Flow Service connection\'s auth.params.inletUrl), e.g. https://dcs.adobedc.net/collection/<inletId>.',
    },
    authenticated: {
      type: 'boolean',
      default: true,
      description: 'The connection was created with authenticationRequired: true (recommended for personal data): send the bearer token. false: send none.',
    },
    schemaId: { type: 'string', format: 'uri', pattern: '^https://ns\\.adobe\\.com/', description: 'The ExperienceEvent schema\'s $id, https://ns.adobe.com/<tenant>/schemas/<id>.' },
    schemaVersion: { type: 'string', pattern: '^[0-9]+(\\.[0-9]+)?$', default: '1', description: 'Its version (schemaRef.contentType application/vnd.adobe.xed-full+json;version=<this>).' },
    datasetId: { type: 'string', pattern: '^[A-Za-z0-9]{8,64}$', description: 'The dataset the events land in (header.datasetId).' },
    sourceName: { type: 'string', minLength: 1, maxLength: 100, default: 'CareRelay', description: 'header.source.name.' },
    eventType: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,100}$', description: 'xdmEntity.eventType. Absent: carerelay.<rule id>.' },
    identity: {
      type: 'object',
      additionalProperties: false,
      default: { namespace: 'CareRelayId', source: MessageValue.PatientId, authenticatedState: 'authenticated' },
      description: 'The identityMap entry that ties the event to a profile.',
      properties: {
        namespace: { type: 'string', pattern: '^[A-Za-z][A-Za-z0-9_]{0,63}$', default: 'CareRelayId', description: 'Identity namespace code (a custom namespace created in the sandbox).' },
        source: { type: 'string', default: MessageValue.PatientId, description: `The identity's value: ${MessageValue.PatientId} (default), ${MessageValue.To} or a trigger path the rule sends.` },
        authenticatedState: { enum: ['ambiguous', 'authenticated', 'loggedOut'], default: 'authenticated', description: 'identityMap authenticatedState.' },
        pseudonymKey: { ...secretRefSchema, description: 'A secret, by reference: when set, the identity is "cr-" + 32 hex digits of HMAC-SHA256(secret, value).' },
      },
    },
    data: fieldMapSchema('What the event carries beyond _id, timestamp, eventType and identityMap: CareRelay field → XDM path (tenant fields under _<tenant>.…).', 'dotted'),
    healthcareShield: {
      type: 'object',
      additionalProperties: false,
      default: { excludedLabels: [...SHIELD_EXCLUDED_LABELS], minorAgeYears: 18 },
      description: 'What is refused when baa is true (Healthcare Shield still excludes these categories).',
      properties: {
        excludedLabels: {
          type: 'array',
          items: { type: 'string', pattern: '^[A-Z0-9_-]{1,20}$', description: 'A sensitivity label.' },
          uniqueItems: true,
          default: [...SHIELD_EXCLUDED_LABELS],
          description: `Sensitivity labels whose deliveries are never sent (default: ${SHIELD_EXCLUDED_LABELS.join(', ')}: substance use, mental health, genetics).`,
        },
        minorAgeYears: { type: 'integer', minimum: 1, maximum: 25, default: 18, description: 'Patients younger than this are never sent (health records of minors are excluded).' },
      },
    },
    timeoutSeconds: timeoutSecondsSchema,
    limits: limitsSchema(AEP_DEFAULT_LIMITS, 'Experience Platform guides streaming clients to 1,000 requests per second per organization.'),
    baa: {
      ...providerBaaSchema,
      description:
        'Set true only when Adobe has signed a BAA for your Real-Time CDP with the Healthcare Shield add-on (US only; no BAA without it). Even then substance-abuse, mental-health and genetic records, minors and government identifiers are refused (healthcareShield).',
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: AdobeAepConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const identity = config.identity ?? { source: MessageValue.PatientId };
  issues.push(...fieldSourceIssues(identity.source, ['identity', 'source']));
  issues.push(...fieldMapIssues(config.data ?? {}, ['data']));
  if (config.baa) {
    // Healthcare Shield excludes government identifiers: no SSN, and no identifier without a type filter.
    for (const source of Object.keys(config.data ?? {})) {
      if (!source.startsWith('patient.identifiers')) continue;
      const filter = /^patient\.identifiers\[([^\]]*)\]/.exec(source)?.[1] ?? '';
      if (filter === '' || /type=SS\b/.test(filter) || filter.includes(SSN_SYSTEM)) {
        issues.push({ path: ['data', source], atKey: true, message: 'with baa (Healthcare Shield) government identifiers are excluded: map one identifier by its type, e.g. patient.identifiers[type=MR].value' });
      }
    }
  }
  issues.push(...baseUrlIssues(config.imsTokenUrl, ['imsTokenUrl']));
  issues.push(...baseUrlIssues(config.inletUrl, ['inletUrl']));
  return issues;
}

export const adobeAepSpec: OutputSpec<AdobeAepConfig, OutputDeps> = {
  type: ADOBE_AEP,
  summary: 'Adobe Experience Platform: XDM ExperienceEvents streamed to an HTTP API inlet (_id = delivery id).',
  configSchema: adobeAepConfigSchema,
  check,
  // Idempotent: `_id` is the delivery id, which Adobe uses to prevent duplicate records.
  info: (config) => ({ ...apiOutputInfo(config, 'crm', true, AEP_DEFAULT_LIMITS), ...(config.baa === true ? { requiredFields: SHIELD_REQUIRED_FIELDS } : {}) }),
  create: (config, deps) => createAdobeAep(config, deps),
};

/** Whole years between `birthDate` (YYYY-MM-DD) and `now`, or undefined when it is not a date. */
export function ageInYears(birthDate: string, now: Date): number | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(birthDate);
  if (!m) return undefined;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  let age = now.getUTCFullYear() - y;
  if (now.getUTCMonth() + 1 < mo || (now.getUTCMonth() + 1 === mo && now.getUTCDate() < d)) age -= 1;
  return age;
}

/** Why Healthcare Shield excludes this delivery (a code of AepCode), or undefined. */
export function shieldExclusion(message: OutboundMessage, shield: AdobeAepConfig['healthcareShield'], now: Date): string | undefined {
  const fields = message.fields ?? {};
  const labels = Array.isArray(fields.sensitivity) ? fields.sensitivity.filter((l): l is string => typeof l === 'string') : [];
  if (labels.some((l) => shield.excludedLabels.includes(l.toUpperCase()))) return AepCode.ShieldSensitive;
  const patient = isRecord(fields.patient) ? fields.patient : {};
  const age = typeof patient.birthDate === 'string' ? ageInYears(patient.birthDate, now) : undefined;
  if (age === undefined) return AepCode.ShieldAgeUnknown;
  if (age < shield.minorAgeYears) return AepCode.ShieldMinor;
  return undefined;
}

/** Sets `value` at a dotted path of `target`, making the objects on the way. */
function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const steps = path.split('.');
  let node = target;
  for (const step of steps.slice(0, -1)) {
    if (!isRecord(node[step])) node[step] = {};
    node = node[step] as Record<string, unknown>;
  }
  node[steps.at(-1)!] = value;
}

export function createAdobeAep(config: AdobeAepConfig, deps: OutputDeps): OutboundAdapter {
  const info = adobeAepSpec.info(config);
  const tokens = config.authenticated
    ? tokenProvider({
        tokenUrl: config.imsTokenUrl,
        grant: { kind: 'client_credentials', clientId: config.clientId, clientSecret: deps.secret(config.clientSecret), scope: config.scopes, encoding: 'form' },
        defaultLifetimeSeconds: TOKEN_LIFETIME_SECONDS,
        refreshBeforeSeconds: 300,
        timeoutSeconds: config.timeoutSeconds,
        codePrefix: 'aep',
        now: deps.now,
      })
    : undefined;
  const inlet = new URL(config.inletUrl);
  const schemaRef = { id: config.schemaId, contentType: `application/vnd.adobe.xed-full+json;version=${config.schemaVersion}` };
  const data = compileFieldMap(config.data);
  const identitySource = compileFieldSource(config.identity.source);
  const pseudonymSecret = config.identity.pseudonymKey !== undefined ? deps.secret(config.identity.pseudonymKey) : undefined;

  const eventOf = (message: OutboundMessage): Record<string, unknown> => {
    const value = mappedValue(identitySource, message);
    if (value === undefined) throw new PermanentError(AepCode.NoIdentity, `delivery ${message.deliveryId} has no ${config.identity.source} for the identity`);
    const id = pseudonymSecret !== undefined ? pseudonym(pseudonymSecret, String(value)) : String(value);
    const now = deps.now();
    const occurredAt = typeof message.fields?.occurredAt === 'string' ? Date.parse(message.fields.occurredAt) : Number.NaN;
    const entity: Record<string, unknown> = {};
    for (const [path, mapped] of Object.entries(applyFieldMap(data, message))) setPath(entity, path, mapped);
    Object.assign(entity, {
      _id: message.deliveryId,
      // In the past, and the same on every attempt when the rule sends occurredAt.
      timestamp: new Date(Number.isNaN(occurredAt) || occurredAt > now.getTime() ? now.getTime() : occurredAt).toISOString(),
      eventType: config.eventType ?? `carerelay.${message.ruleId}`,
      identityMap: { [config.identity.namespace]: [{ id, authenticatedState: config.identity.authenticatedState, primary: true }] },
    });
    return {
      header: { schemaRef, imsOrgId: config.orgId, datasetId: config.datasetId, source: { name: config.sourceName } },
      body: { xdmMeta: { schemaRef }, xdmEntity: entity },
    };
  };

  const refusal = (status: number, retryAfter: string | undefined): Error => {
    const what = `Experience Platform answered HTTP ${status}`;
    const retryAfterMs = parseRetryAfter(retryAfter, deps.now().getTime());
    if (status === 429) return new RateLimitedError(AepCode.RateLimited, what, { retryAfterMs });
    if (status === 408 || status === 502 || status === 503 || status === 504) return new TransientError(AepCode.Unavailable, what, { retryAfterMs });
    if (status >= 500 && status !== 501) return new AmbiguousError(AepCode.ServerError, `${what}; it may have taken the event`);
    if (status === 401) return new PermanentError(AepCode.Unauthorized, `${what} with a new token: check the credential and that the connection is authenticated`);
    if (status === 403) return new PermanentError(AepCode.Forbidden, `${what}: the credential lacks access to the organization or sandbox`);
    if (status === 413) return new PermanentError(AepCode.TooLarge, `${what}: the record is over 1 MB`);
    return new PermanentError(AepCode.Rejected, `${what}: check the schema, the dataset and the data map`);
  };

  return {
    name: config.name,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (config.baa) {
        const excluded = shieldExclusion(message, config.healthcareShield, deps.now());
        if (excluded !== undefined) {
          throw new PermanentError(excluded, `delivery ${message.deliveryId} is of a kind Healthcare Shield excludes (${excluded}); it is not sent to Adobe${excluded === AepCode.ShieldAgeUnknown ? ': list patient.birthDate in the rule\'s send.fields' : ''}`);
        }
      }
      const body = Buffer.from(JSON.stringify(eventOf(message)));
      const request = (accessToken?: string): OutboundRequest => ({
        url: inlet,
        headers: {
          'content-type': 'application/json',
          ...(accessToken !== undefined ? { authorization: `Bearer ${accessToken}` } : {}),
          'x-gw-ims-org-id': config.orgId,
          'x-api-key': config.clientId,
          'x-sandbox-name': config.sandbox,
          'user-agent': 'CareRelay',
        },
        body,
        timeoutMs: config.timeoutSeconds * 1000,
        codePrefix: 'aep',
      });
      const response = tokens !== undefined ? (await sendWithToken(tokens, context.signal, (token) => request(token.accessToken))).response : await sendOnce({ ...request(), signal: context.signal });
      if (response.status === 200 || response.status === 201 || response.status === 202) {
        const json = parseJson(response.body);
        return { providerId: message.deliveryId, acceptedAt: deps.now().toISOString(), detail: { ...(isRecord(json) && typeof json.xactionId === 'string' ? { xactionId: json.xactionId } : {}) } };
      }
      throw refusal(response.status, headerOf(response.headers, 'retry-after'));
    },
  };
}
