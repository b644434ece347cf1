// Config schemas of the two FHIR input types (docs/hl7-fhir.md "FHIR inputs"):
//
// - `fhir-rest-hook`: a FHIR server POSTs to POST /ingest/fhir/<name> — R4 criteria
//   rest-hooks (the resource itself, or an empty body) and topic-based notifications
//   (R4 Subscriptions Backport, R4B, R5). Callers authenticate with a bearer token, a
//   fixed header or an HMAC signature of the body (Medplum's X-Signature).
// - `fhir-poll`: for servers without subscriptions, CareRelay searches
//   `<Type>?_lastUpdated=ge<cursor>` on a timer and keeps the cursor in the store.
//
// Both name one FHIR server: the only place anything is fetched from (id-only payloads,
// patients, recovery searches, $events), with no auth, a fixed bearer token or SMART
// backend services.

import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { FhirTriggerResource } from '../../fhir/normalize.ts';
import { PayloadContent } from '../../fhir/notification.ts';
import { fhirServerSchema as sharedFhirServerSchema, type FhirServerConfig } from '../../fhir/server-config.ts';
import type { InputSpec } from '../spec.ts';

export const FHIR_REST_HOOK = 'fhir-rest-hook';
export const FHIR_POLL = 'fhir-poll';

export { PayloadContent } from '../../fhir/notification.ts';
export { FhirTriggerResource } from '../../fhir/normalize.ts';
export { SmartAlgorithmName, type FhirServerConfig } from '../../fhir/server-config.ts';

export interface FhirSubscriptionConfig {
  readonly id: string;
  readonly topic: string;
  readonly filterCriteria: readonly string[];
  readonly heartbeatPeriodSeconds: number;
  readonly payload: PayloadContent;
}

export interface FhirInboundAuthConfig {
  readonly bearer?: { readonly token: SecretRef };
  readonly header?: { readonly name: string; readonly value: SecretRef };
  readonly hmac?: { readonly secret: SecretRef; readonly header: string };
  readonly standardWebhooks?: { readonly secret: SecretRef; readonly toleranceSeconds: number };
}

export interface FhirRestHookConfig {
  readonly type: typeof FHIR_REST_HOOK;
  readonly name: string;
  readonly server: FhirServerConfig;
  readonly auth: FhirInboundAuthConfig;
  readonly subscriptions: readonly FhirSubscriptionConfig[];
  readonly maxBodyBytes: number;
  readonly searchResources: readonly FhirTriggerResource[];
  readonly searchLookbackSeconds: number;
}

export interface FhirPollConfig {
  readonly type: typeof FHIR_POLL;
  readonly name: string;
  readonly server: FhirServerConfig;
  readonly resources: readonly FhirTriggerResource[];
  readonly intervalSeconds: number;
  readonly pageSize: number;
  readonly since: string;
}

const nameSchema = {
  type: 'string',
  pattern: '^[a-z][a-z0-9-]*$',
  maxLength: 63,
  'x-hint': 'lower-case letters, digits and "-", starting with a letter',
  description: 'Unique name of this input; appears in logs, the store and (for rest-hook) the URL /ingest/fhir/<name>.',
} as const;

// FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}, never "." or ".." (path segments in a URL).
const FHIR_ID_PATTERN = '^(?!\\.{1,2}$)[A-Za-z0-9\\-.]{1,64}$';
// RFC 9110 token characters: what a header field name may be made of.
const HEADER_NAME_PATTERN = "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$";

const resourceListSchema = (description: string, defaults: FhirTriggerResource[]) =>
  ({
    type: 'array',
    minItems: 1,
    uniqueItems: true,
    default: defaults,
    description,
    items: { type: 'string', enum: Object.values(FhirTriggerResource), description: 'A FHIR resource type.' },
  }) as const;

export const fhirServerSchema = {
  ...sharedFhirServerSchema,
  description:
    'The FHIR server this input reads from: the only host CareRelay fetches from for id-only payloads, patients, ' +
    'recovery searches and $events. A reference anywhere else is refused without a request.',
} as const satisfies JsonSchema;

export const fhirRestHookSchema = {
  type: 'object',
  description:
    'FHIR notifications POSTed to /ingest/fhir/<name> (R4 criteria rest-hook, R4 Backport, R4B and R5 topic-based); ' +
    'answered 2xx only after the notification and its triggers are committed.',
  required: ['name', 'type', 'server', 'auth'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    type: { type: 'string', const: FHIR_REST_HOOK, description: 'Input type.' },
    server: fhirServerSchema,
    auth: {
      type: 'object',
      description:
        'How the FHIR server authenticates to CareRelay: exactly one of bearer, header, hmac or standardWebhooks. ' +
        'Checked before the body is read (hmac, standardWebhooks: the signature headers must be present and, for ' +
        'standardWebhooks, the timestamp recent; the body is verified before it is parsed).',
      additionalProperties: false,
      properties: {
        bearer: {
          type: 'object',
          description: 'The server sends "Authorization: Bearer <token>" (put into the Subscription\'s channel.header).',
          required: ['token'],
          additionalProperties: false,
          properties: { token: { ...secretRefSchema, description: 'The expected token, by reference.' } },
        },
        header: {
          type: 'object',
          description: 'The server sends a fixed header, e.g. "X-Api-Key: <value>" (Subscription channel.header).',
          required: ['name', 'value'],
          additionalProperties: false,
          properties: {
            name: {
              type: 'string',
              pattern: HEADER_NAME_PATTERN,
              'x-hint': 'an HTTP header name such as X-Api-Key',
              description: 'Header name (case-insensitive).',
            },
            value: { ...secretRefSchema, description: 'The expected header value, by reference.' },
          },
        },
        hmac: {
          type: 'object',
          description:
            'The server signs the body: header = hex (or base64) HMAC-SHA256 of the raw body with a shared secret ' +
            '(Medplum: X-Signature, secret in the subscription-secret extension).',
          required: ['secret'],
          additionalProperties: false,
          properties: {
            secret: { ...secretRefSchema, description: 'The shared HMAC secret, by reference.' },
            header: {
              type: 'string',
              pattern: HEADER_NAME_PATTERN,
              default: 'x-signature',
              'x-hint': 'an HTTP header name such as X-Signature',
              description: 'Header carrying the signature (an optional "sha256=" prefix is accepted).',
            },
          },
        },
        standardWebhooks: {
          type: 'object',
          description:
            'The sender signs each request the Standard Webhooks way (https://www.standardwebhooks.com, symmetric v1): ' +
            'headers webhook-id, webhook-timestamp and webhook-signature, an HMAC-SHA256 of "id.timestamp.body". A ' +
            'timestamp further than toleranceSeconds from now is refused as stale, so a captured request cannot be ' +
            'replayed later (one replayed sooner is deduplicated by its events). Configure the ' +
            'same secret on the sending side.',
          required: ['secret'],
          additionalProperties: false,
          properties: {
            secret: {
              ...secretRefSchema,
              description: 'The signing secret, by reference: base64, with or without the "whsec_" prefix.',
            },
            toleranceSeconds: {
              type: 'integer',
              minimum: 1,
              maximum: 3600,
              default: 300,
              description: 'How far webhook-timestamp may be from this server\'s clock, either way (default 5 minutes).',
            },
          },
        },
      },
    },
    subscriptions: {
      type: 'array',
      default: [],
      description:
        'Topic-based subscriptions this input receives. A notification for a subscription not listed here is refused ' +
        '(404). `carerelay fhir subscribe --input <name>` creates them on the server.',
      items: {
        type: 'object',
        description: 'One Subscription on the server.',
        required: ['id', 'topic'],
        additionalProperties: false,
        properties: {
          id: {
            type: 'string',
            pattern: FHIR_ID_PATTERN,
            'x-hint': '1-64 of A-Z a-z 0-9 - . (not "." or "..")',
            description: 'Subscription id on the server (the last part of Subscription/<id> in notifications).',
          },
          topic: {
            type: 'string',
            format: 'uri',
            description:
              'SubscriptionTopic canonical, e.g. http://hl7.org/fhir/us/core/SubscriptionTopic/patient-data-feed.',
          },
          filterCriteria: {
            type: 'array',
            default: [],
            description: 'Backport filter criteria, e.g. "Encounter?location=Location/12".',
            items: { type: 'string', minLength: 1, description: 'One filter criterion.' },
          },
          heartbeatPeriodSeconds: {
            type: 'integer',
            minimum: 0,
            maximum: 86400,
            default: 60,
            description:
              'Heartbeat period asked of the server, seconds. Silence beyond twice this period raises a warning and starts ' +
              'a recovery. 0: no heartbeats and no silence check.',
          },
          payload: {
            type: 'string',
            enum: Object.values(PayloadContent),
            default: PayloadContent.IdOnly,
            description:
              'Payload content asked of the server: id-only (default: no patient data in the notification; CareRelay ' +
              'fetches the focus), full-resource, or empty (CareRelay searches).',
          },
        },
      },
    },
    maxBodyBytes: {
      type: 'integer',
      minimum: 1024,
      maximum: 67108864,
      default: 1048576,
      description: 'Largest accepted notification body in bytes (default 1 MiB); larger ones get 413 unread.',
    },
    searchResources: resourceListSchema(
      'Resource types searched by _lastUpdated when a notification says something changed without saying what ' +
        '(empty body, empty payload) and to recover missed events when the server has no $events.',
      [FhirTriggerResource.Appointment, FhirTriggerResource.Encounter],
    ),
    searchLookbackSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 2592000,
      default: 3600,
      description: 'How far back such a search looks when no earlier notification time is known, seconds.',
    },
  },
} as const satisfies JsonSchema;

export const fhirPollSchema = {
  type: 'object',
  description:
    'Polls a FHIR server without subscriptions: <Type>?_lastUpdated=ge<cursor>&_sort=_lastUpdated, paged; the cursor ' +
    'commits with each resource, and resource id + versionId dedupe what was already seen.',
  required: ['name', 'type', 'server'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    type: { type: 'string', const: FHIR_POLL, description: 'Input type.' },
    server: fhirServerSchema,
    resources: resourceListSchema('Resource types to poll.', [FhirTriggerResource.Appointment, FhirTriggerResource.Encounter]),
    intervalSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 86400,
      default: 60,
      description: 'Seconds between the end of one poll and the start of the next.',
    },
    pageSize: {
      type: 'integer',
      minimum: 1,
      maximum: 1000,
      default: 100,
      description: 'Resources asked per page (_count).',
    },
    since: {
      type: 'string',
      default: '',
      pattern: '^$|^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})$',
      'x-hint': 'an instant with offset such as 2026-01-31T08:00:00Z, or empty',
      description:
        'Where the very first poll starts (an instant). Empty: changes from the first poll on only (no history). ' +
        'Ignored once a cursor is stored.',
    },
  },
} as const satisfies JsonSchema;

function exactlyOne(
  block: Record<string, unknown> | undefined,
  keys: readonly string[],
  path: InstanceCheckIssue['path'],
  what: string,
  allowNone: boolean,
): InstanceCheckIssue[] {
  const present = keys.filter((k) => block !== undefined && block[k] !== undefined);
  if (present.length > 1) {
    return [{ path, atKey: true, message: `${what}: give only one of ${present.join(', ')}` }];
  }
  if (present.length === 0 && !allowNone) {
    return [{ path, atKey: true, message: `${what}: give one of ${keys.join(', ')} (e.g. bearer: { token: { env: FHIR_HOOK_TOKEN } })` }];
  }
  return [];
}

function checkServer(server: FhirServerConfig): InstanceCheckIssue[] {
  return exactlyOne(server.auth, ['bearer', 'smart'], ['server', 'auth'], 'server.auth', true);
}

function checkRestHook(config: FhirRestHookConfig): InstanceCheckIssue[] {
  const issues = [...checkServer(config.server)];
  issues.push(...exactlyOne(config.auth as Record<string, unknown>, ['bearer', 'header', 'hmac', 'standardWebhooks'], ['auth'], 'auth', false));
  const seen = new Map<string, number>();
  config.subscriptions.forEach((s, i) => {
    const first = seen.get(s.id);
    if (first !== undefined) {
      issues.push({ path: ['subscriptions', i, 'id'], message: `subscription id "${s.id}" is already listed at subscriptions[${first}]` });
    } else {
      seen.set(s.id, i);
    }
  });
  return issues;
}

function checkPoll(config: FhirPollConfig): InstanceCheckIssue[] {
  const issues = [...checkServer(config.server)];
  if (config.since !== '' && Number.isNaN(Date.parse(config.since))) {
    issues.push({ path: ['since'], message: `since "${config.since}" is not a valid instant` });
  }
  return issues;
}

export const fhirRestHookSpec: InputSpec<FhirRestHookConfig> = {
  type: FHIR_REST_HOOK,
  summary: 'FHIR notifications (R4 rest-hook, Backport/R4B/R5 topic-based) POSTed to /ingest/fhir/<name>; 2xx after commit.',
  configSchema: fhirRestHookSchema,
  check: checkRestHook,
};

export const fhirPollSpec: InputSpec<FhirPollConfig> = {
  type: FHIR_POLL,
  summary: 'Polls a FHIR server by _lastUpdated (Appointment, Encounter, Patient) with a durable cursor.',
  configSchema: fhirPollSchema,
  check: checkPoll,
};
