// The `server.store` block: where messages, triggers, deliveries, the consent ledger and the
// audit are kept (docs/architecture.md "Backends"). The embedded default is one SQLite file in
// the data dir; `postgres` keeps them in a PostgreSQL database shared by every CareRelay
// process (docs/scale-out.md).
import { secretRefSchema, type JsonSchema, type SecretRef } from './yaml.ts';

export const StoreType = {
  /** One SQLite file in the data dir: one process. */
  Sqlite: 'sqlite',
  /** A PostgreSQL database: any number of processes. */
  Postgres: 'postgres',
} as const;
export type StoreType = (typeof StoreType)[keyof typeof StoreType];

export const StoreTlsMode = {
  /** The server's certificate must chain to `ca` (else the system CAs) and name the host. */
  VerifyFull: 'verify-full',
  /** Encrypted, the certificate not checked: only where the network itself is trusted. */
  Require: 'require',
} as const;
export type StoreTlsMode = (typeof StoreTlsMode)[keyof typeof StoreTlsMode];

export const storeSchema = {
  type: 'object',
  description:
    'Where messages, triggers, deliveries, the consent ledger and the audit are kept. sqlite (default): one file in ' +
    'dataDir, one process. postgres: a PostgreSQL database shared by several CareRelay processes; its tables are ' +
    'created and upgraded at start (or by `carerelay migrate`). `carerelay export` / `import` move a store between them.',
  default: {},
  additionalProperties: false,
  properties: {
    type: {
      type: 'string',
      enum: Object.values(StoreType),
      default: StoreType.Sqlite,
      description: 'sqlite (embedded, one process) or postgres (several processes).',
    },
    url: {
      ...secretRefSchema,
      description:
        'postgres: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, by reference (it may hold a password): ' +
        '{ env: DATABASE_URL } or { file: PATH }. Read (and checked) only with type postgres.',
    },
    password: {
      ...secretRefSchema,
      description: 'postgres: the password, when it is kept apart from the URL (e.g. a mounted secret file).',
    },
    tls: {
      type: 'object',
      description:
        'postgres: TLS to the server (needed for any server beyond loopback or a trusted network). Without this ' +
        'block the connection is plain; TLS settings in the URL (sslmode…) are refused.',
      additionalProperties: false,
      properties: {
        mode: {
          type: 'string',
          enum: Object.values(StoreTlsMode),
          default: StoreTlsMode.VerifyFull,
          description:
            'verify-full (default): the server\'s certificate must be signed by `ca` (else a CA this system trusts) ' +
            'and name the URL\'s host. require: encrypted but not verified (a trusted network only).',
        },
        ca: { ...secretRefSchema, description: 'The CA certificate(s) (PEM) that signed the server\'s certificate, usually { file: PATH }.' },
        cert: { ...secretRefSchema, description: 'A client certificate (PEM), for servers that authenticate clients by certificate.' },
        key: { ...secretRefSchema, description: 'The client certificate\'s private key (PEM).' },
        servername: {
          type: 'string',
          minLength: 1,
          description: 'The name the server\'s certificate must carry, when it is not the URL\'s host.',
        },
      },
    },
    pool: {
      type: 'object',
      description: 'postgres: connections of each CareRelay process (the server\'s max_connections must hold every process\'s).',
      default: {},
      additionalProperties: false,
      properties: {
        max: {
          type: 'integer',
          minimum: 3,
          maximum: 1000,
          default: 10,
          description:
            'Connections this process opens at most (default 10, at least 3: the group commit\'s writers, the reads and ' +
            'the routing lock each need one).',
        },
        connectionTimeoutSeconds: {
          type: 'number',
          exclusiveMinimum: 0,
          maximum: 600,
          default: 10,
          description: 'How long a statement waits for a connection, seconds (default 10); past it the write fails and ingest answers AE/503.',
        },
        idleTimeoutSeconds: {
          type: 'number',
          exclusiveMinimum: 0,
          maximum: 86400,
          default: 30,
          description: 'An unused connection is closed after this many seconds (default 30).',
        },
      },
    },
  },
} as const satisfies JsonSchema;

/** The `server.store` block after defaults. */
export interface StoreConfig {
  readonly type: StoreType;
  readonly url?: SecretRef;
  readonly password?: SecretRef;
  readonly tls?: {
    readonly mode: StoreTlsMode;
    readonly ca?: SecretRef;
    readonly cert?: SecretRef;
    readonly key?: SecretRef;
    readonly servername?: string;
  };
  readonly pool: { readonly max: number; readonly connectionTimeoutSeconds: number; readonly idleTimeoutSeconds: number };
}

/** Rules across the block's fields (the loader places each at its key). */
export function storeConfigIssues(store: StoreConfig): Array<{ path: string[]; message: string }> {
  const issues: Array<{ path: string[]; message: string }> = [];
  if (store.type === StoreType.Postgres && store.url === undefined) {
    issues.push({ path: ['type'], message: 'store type postgres needs the database URL: add url: { env: DATABASE_URL } (or { file: PATH })' });
  }
  if (store.tls !== undefined && (store.tls.cert === undefined) !== (store.tls.key === undefined)) {
    issues.push({ path: ['tls'], message: 'a client certificate needs its key: give both tls.cert and tls.key, or neither' });
  }
  return issues;
}

/**
 * The block as its secrets are checked: url, password and TLS files only with type postgres, so
 * one configuration can switch its store by environment (type: ${CARERELAY_STORE:-sqlite}) and
 * start embedded without DATABASE_URL set.
 */
export function storeSecretsInUse(store: StoreConfig | undefined): Partial<StoreConfig> {
  if (store === undefined || store.type === StoreType.Postgres) return store ?? {};
  const { url: _url, password: _password, tls: _tls, ...rest } = store;
  return rest;
}
