// Schemas of a connectors/*.yaml file and of its `server` block. Each property carries a
// description (and a default when optional): `carerelay validate` and the docs use them.

import { alertsSchema, retentionSchema } from './operations-schema.ts';
import { policySchema } from './policy-schema.ts';
import { storeSchema, type StoreConfig } from './store-schema.ts';
import { queueSchema, type QueueConfig } from './queue-schema.ts';
import { waitlistSchema } from './waitlist-schema.ts';
import { videoSchema, type VideoConfig } from './video-schema.ts';
import { nameSchema, secretRefSchema, type JsonSchema, type SecretRef } from './yaml.ts';

export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';

/**
 * What an admin token may do. Ids (message, trigger, delivery, patient and appointment ids),
 * types, statuses, times and reason codes are `read`; patient content — message bodies,
 * names, birth dates, addresses and contact points in triggers, rendered messages — needs
 * `phi` as well.
 */
export const AdminScope = {
  /** List and look up messages, triggers, deliveries and the audit log: ids, types, statuses, reasons. */
  Read: 'read',
  /** Patient content: raw messages, trigger bodies, rendered messages, the outbox, search in raw text. */
  Phi: 'phi',
  /** Act on stored messages: reprocess a rejected one, release a quarantined copy (audited). */
  Operate: 'operate',
} as const;
export type AdminScope = (typeof AdminScope)[keyof typeof AdminScope];
export const ADMIN_SCOPES: readonly AdminScope[] = Object.values(AdminScope);

export const serverSchema = {
  type: 'object',
  description: 'Process-wide settings. At most one connectors file may contain a server block.',
  additionalProperties: false,
  properties: {
    http: {
      type: 'object',
      description: 'The HTTP listener: ingest endpoints (e.g. POST /ingest/hl7v2/<name>), admin API, metrics.',
      default: {},
      additionalProperties: false,
      properties: {
        host: {
          type: 'string',
          minLength: 1,
          default: '127.0.0.1',
          description:
            'Address to listen on. 127.0.0.1 accepts local callers only (e.g. behind a reverse proxy); ' +
            '0.0.0.0 or :: exposes it to the network.',
        },
        port: {
          type: 'integer',
          minimum: 0,
          maximum: 65535,
          default: 8080,
          description: 'TCP port. 0 lets the system pick a free port (tests).',
        },
      },
    },
    dataDir: {
      type: 'string',
      minLength: 1,
      default: './data',
      description:
        'Directory of the embedded store (SQLite). A relative path is relative to the configuration ' +
        'directory (the one holding connectors/), not to the working directory, so the same config ' +
        'behaves the same wherever it is started from.',
    },
    timezone: {
      type: 'string',
      format: 'iana-timezone',
      description:
        'Former place of the organisation time zone, still read when policy.timezone is not set. ' +
        'Prefer policy.timezone (connectors/policy.yaml), beside the sites\' zones.',
    },
    rejectedRaw: {
      type: 'object',
      description:
        'How many raw bytes refused messages may keep for review: HL7 messages answered AR, quarantined copies (same ' +
        'MSH-10 or FHIR event, other bytes; answered AE) and the bodies of refused FHIR requests and rejected FHIR ' +
        'records. Past either limit such a message keeps only its first keepBytes bytes, with the SHA-256 of the ' +
        'whole and its length as received, so a flood of refused frames cannot fill the disk. Counted by the store in ' +
        'the commit (durable, shared by every process using the data directory). Accepted messages are always kept whole.',
      default: {},
      additionalProperties: false,
      properties: {
        totalBytes: {
          type: 'integer',
          minimum: 0,
          default: 1073741824,
          description: 'Raw bytes kept whole over all refused and quarantined messages (default 1 GiB).',
        },
        perSenderBytes: {
          type: 'integer',
          minimum: 0,
          default: 67108864,
          description:
            'Raw bytes kept whole per sender: MSH-3^MSH-4, or the peer address for a message without a readable MSH, ' +
            'or a FHIR input\'s server base URL (default 64 MiB).',
        },
        keepBytes: {
          type: 'integer',
          minimum: 0,
          maximum: 1048576,
          default: 4096,
          description: 'Bytes kept of a refused or quarantined message past either limit (default 4 KiB: the header and first segments).',
        },
      },
    },
    store: storeSchema,
    queue: queueSchema,
    minFreeDiskBytes: {
      type: 'integer',
      minimum: 0,
      default: 67108864,
      description:
        'GET /readyz answers 503 when the data directory\'s file system has less free space than this (default ' +
        '64 MiB), as it does when the store cannot write (read-only, full).',
    },
    metrics: {
      type: 'object',
      description: 'GET /metrics (Prometheus text format): metrics without patient data (docs/operations.md "Metrics").',
      default: {},
      additionalProperties: false,
      properties: {
        tokenEnv: {
          type: 'string',
          pattern: ENV_NAME_PATTERN,
          default: 'CARERELAY_METRICS_TOKEN',
          'x-hint': 'the name of an environment variable, not the token itself',
          description:
            'Name of the environment variable holding the bearer token a scraper presents (default CARERELAY_METRICS_TOKEN). ' +
            'It grants metrics only, not the admin API. While the variable is unset, /metrics answers loopback callers only.',
        },
      },
    },
    video: videoSchema,
    admin: {
      type: 'object',
      description: 'Admin API settings.',
      default: {},
      additionalProperties: false,
      properties: {
        tokenEnv: {
          type: 'string',
          pattern: ENV_NAME_PATTERN,
          'x-hint': 'the name of an environment variable, not the token itself',
          description:
            'Name of the environment variable holding the admin bearer token (default CARERELAY_ADMIN_TOKEN). ' +
            'That token has every scope and is named "admin" in the audit log. Without any token the admin ' +
            'API answers on localhost only.',
        },
        tokens: {
          type: 'array',
          default: [],
          description:
            'Further admin tokens, each with a name (recorded in the audit log for what it does) and the scopes ' +
            'it grants: read (ids, types, statuses, reasons), phi (patient content: raw messages, trigger ' +
            'bodies, rendered messages, raw-text search), operate (reprocess and release messages).',
          items: {
            type: 'object',
            description: 'One admin token.',
            required: ['name', 'token', 'scopes'],
            additionalProperties: false,
            properties: {
              name: nameSchema('Who holds it, e.g. "oncall"; shown in the audit log. "admin" and "local" are taken.'),
              token: { ...secretRefSchema, description: 'The bearer token, by reference.' },
              scopes: {
                type: 'array',
                minItems: 1,
                uniqueItems: true,
                description: 'What the token may do.',
                items: { type: 'string', enum: ADMIN_SCOPES, description: 'read, phi or operate.' },
              },
            },
          },
        },
      },
    },
  },
} as const satisfies JsonSchema;

export interface AdminTokenConfig {
  readonly name: string;
  readonly token: SecretRef;
  readonly scopes: readonly AdminScope[];
}

/** The `server` block after defaults; `dataDir` is made absolute by the loader. */
export interface ServerConfig {
  readonly http: { readonly host: string; readonly port: number };
  readonly dataDir: string;
  /** Superseded by policy.timezone (read only when that is not set). */
  readonly timezone?: string;
  readonly rejectedRaw: { readonly totalBytes: number; readonly perSenderBytes: number; readonly keepBytes: number };
  readonly minFreeDiskBytes: number;
  /** Where messages, deliveries and the ledger are kept (config/store-schema.ts). */
  readonly store: StoreConfig;
  /** Where delivery jobs wait (config/queue-schema.ts). */
  readonly queue: QueueConfig;
  readonly admin: { readonly tokenEnv?: string; readonly tokens: readonly AdminTokenConfig[] };
  readonly metrics: { readonly tokenEnv: string };
  readonly video: VideoConfig;
}

/**
 * Top level of one connectors/*.yaml file. Each input and output is validated afterwards
 * against the schema of its `type` (src/inputs/index.ts, src/outputs registry).
 */
export const connectorFileSchema = {
  type: 'object',
  description: 'One connectors/*.yaml file. Every key is optional.',
  additionalProperties: false,
  properties: {
    server: serverSchema,
    policy: policySchema,
    alerts: alertsSchema,
    retention: retentionSchema,
    waitlist: waitlistSchema,
    inputs: {
      type: 'array',
      description: 'Inbound connectors (what the EHR sends to CareRelay). Each has a unique name and a type.',
      default: [],
      items: { type: 'object', description: 'One input; its keys depend on its type.' },
    },
    outputs: {
      type: 'array',
      description: 'Outbound adapters (where messages go). Each has a unique name and a type.',
      default: [],
      items: { type: 'object', description: 'One output; its keys depend on its type.' },
    },
  },
} as const satisfies JsonSchema;
