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

/**
 * How the delivery engine (workers/deliver.ts, workers/output-gate.ts) runs delivery jobs:
 * workers, each output's share of them, retries, and when an output counts as failing.
 */
export const deliveriesSchema = {
  type: 'object',
  description:
    'The delivery engine: how many deliveries run at once, how long failures are retried, and when an output is ' +
    'treated as down (its circuit opens and its deliveries wait instead of holding workers).',
  default: {},
  additionalProperties: false,
  properties: {
    concurrency: {
      type: 'integer',
      minimum: 1,
      maximum: 1024,
      default: 64,
      description:
        'Deliveries handled at once (checks, rendering, the call to the output, recording the outcome). A waiting ' +
        'delivery costs memory, not a thread.',
    },
    outputConcurrency: {
      type: 'integer',
      minimum: 1,
      maximum: 1024,
      default: 16,
      description:
        'Calls one output may have in flight at once (its declared provider limit applies when lower): a slow or ' +
        'hanging provider holds at most this many of the workers; its other deliveries wait off the workers.',
    },
    leaseSeconds: {
      type: 'number',
      exclusiveMinimum: 0,
      maximum: 3600,
      default: 30,
      description:
        'How long a delivery taken by a process that died (kill -9, power loss) waits before it is taken again. ' +
        'A running process renews its leases every third of this.',
    },
    retry: {
      type: 'object',
      description:
        'Exponential backoff with full jitter: after the n-th failed attempt the next one comes at a random time ' +
        'between now and min(maxDelaySeconds, firstDelaySeconds · 2^(n−1)) later, never before a provider\'s ' +
        'Retry-After. A provider\'s "slow down" (429) and the engine\'s own waits do not use up an attempt.',
      default: {},
      additionalProperties: false,
      properties: {
        firstDelaySeconds: {
          type: 'number',
          exclusiveMinimum: 0,
          default: 5,
          description: 'Longest wait after the first failure, seconds (the backoff base).',
        },
        maxDelaySeconds: {
          type: 'number',
          exclusiveMinimum: 0,
          default: 3600,
          description: 'Longest wait between two attempts, seconds (the backoff cap).',
        },
        spanHours: {
          type: 'number',
          exclusiveMinimum: 0,
          maximum: 720,
          default: 24,
          description:
            'How long a failing delivery is retried, from its first failure: the last attempt is at the end of the ' +
            'span at the latest, then the delivery is failed (dead-lettered) with its last error, to be replayed by ' +
            'an operator (carerelay deliveries replay).',
        },
      },
    },
    circuit: {
      type: 'object',
      description:
        'A circuit breaker per output. It opens after `failures` transient or ambiguous failures in a row, or when ' +
        'at least `failureRate` of its last `window` calls failed; while open, the output\'s deliveries wait ' +
        '(counted in their retry span) instead of calling it. After openSeconds one delivery goes as a probe: ' +
        'its success closes the circuit, its failure opens it again for twice as long, up to maxOpenSeconds. ' +
        'Refusals of one message (4xx) and rate limits do not count. GET /api/outputs shows each circuit.',
      default: {},
      additionalProperties: false,
      properties: {
        failures: { type: 'integer', minimum: 1, default: 5, description: 'Failures in a row that open the circuit.' },
        failureRate: {
          type: 'number',
          exclusiveMinimum: 0,
          maximum: 1,
          default: 0.5,
          description: 'Share of failed calls among the last `window` that opens the circuit (checked once `window` calls were made).',
        },
        window: { type: 'integer', minimum: 2, default: 20, description: 'Calls the failure rate is measured over.' },
        openSeconds: { type: 'number', exclusiveMinimum: 0, default: 30, description: 'How long the circuit stays open the first time, seconds.' },
        maxOpenSeconds: {
          type: 'number',
          exclusiveMinimum: 0,
          default: 600,
          description: 'Longest open period (it doubles after each failed probe), seconds.',
        },
      },
    },
  },
} as const satisfies JsonSchema;

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
    deliveries: deliveriesSchema,
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
  readonly deliveries: DeliveriesConfig;
  readonly metrics: { readonly tokenEnv: string };
  readonly video: VideoConfig;
}

/** The `server.deliveries` block after defaults (deliveriesSchema). */
export interface DeliveriesConfig {
  readonly concurrency: number;
  readonly outputConcurrency: number;
  readonly leaseSeconds: number;
  readonly retry: { readonly firstDelaySeconds: number; readonly maxDelaySeconds: number; readonly spanHours: number };
  readonly circuit: CircuitConfig;
}

/** The defaults of deliveriesSchema (a plan without a server block, tests building plans by hand). */
export const DEFAULT_DELIVERIES: DeliveriesConfig = Object.freeze({
  concurrency: 64,
  outputConcurrency: 16,
  leaseSeconds: 30,
  retry: Object.freeze({ firstDelaySeconds: 5, maxDelaySeconds: 3600, spanHours: 24 }),
  circuit: Object.freeze({ failures: 5, failureRate: 0.5, window: 20, openSeconds: 30, maxOpenSeconds: 600 }),
});

/** `server.deliveries.circuit` after defaults. */
export interface CircuitConfig {
  readonly failures: number;
  readonly failureRate: number;
  readonly window: number;
  readonly openSeconds: number;
  readonly maxOpenSeconds: number;
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
