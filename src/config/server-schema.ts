// Schemas of a connectors/*.yaml file and of its `server` block. Each property carries a
// description (and a default when optional): `carerelay validate` and the docs use them.

import { policySchema } from './policy-schema.ts';
import type { JsonSchema } from './yaml.ts';

export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';

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
            'Name of the environment variable holding the admin bearer token. Without it the admin API ' +
            'answers on localhost only.',
        },
      },
    },
  },
} as const satisfies JsonSchema;

/** The `server` block after defaults; `dataDir` is made absolute by the loader. */
export interface ServerConfig {
  readonly http: { readonly host: string; readonly port: number };
  readonly dataDir: string;
  /** Superseded by policy.timezone (read only when that is not set). */
  readonly timezone?: string;
  readonly admin: { readonly tokenEnv?: string };
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
