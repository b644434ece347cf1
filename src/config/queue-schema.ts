// The `server.queue` block: where delivery jobs wait for their time (docs/architecture.md
// "Backends"). The embedded default keeps them in the store's SQLite file; `bullmq` keeps
// them in Redis, shared by every CareRelay process (several ingest and worker processes, on
// one host or many).
import { secretRefSchema, type JsonSchema, type SecretRef } from './yaml.ts';

export const QueueType = {
  /** SQLite tables in the store's file (data dir): one process. */
  Sqlite: 'sqlite',
  /** BullMQ on Redis: any number of processes. */
  BullMq: 'bullmq',
} as const;
export type QueueType = (typeof QueueType)[keyof typeof QueueType];

export const queueSchema = {
  type: 'object',
  description:
    'Where delivery jobs wait for their due time. sqlite (default): in the embedded store\'s file, one process. ' +
    'bullmq: in Redis through BullMQ, shared by several CareRelay processes (`carerelay start --role ingest|worker`, ' +
    '`--processes N`); Redis must keep what it is given (appendonly yes, appendfsync everysec or always, ' +
    'maxmemory-policy noeviction), checked at every start.',
  default: {},
  additionalProperties: false,
  properties: {
    type: {
      type: 'string',
      enum: Object.values(QueueType),
      default: QueueType.Sqlite,
      description: 'sqlite (embedded, one process) or bullmq (Redis, several processes).',
    },
    url: {
      ...secretRefSchema,
      description:
        'bullmq: the Redis URL, by reference (it may hold a password): { env: REDIS_URL } or { file: PATH }. ' +
        'redis://host:6379[/db], or rediss:// for TLS. Read (and checked) only with type bullmq.',
    },
    password: {
      ...secretRefSchema,
      description: 'bullmq: the Redis password (AUTH), when it is kept apart from the URL.',
    },
    prefix: {
      type: 'string',
      pattern: '^[A-Za-z0-9_.{}-]{1,64}$',
      default: 'carerelay',
      'x-hint': 'letters, digits, "_", ".", "-" (braces for a Redis Cluster hash tag), no ":"',
      description:
        'bullmq: prefix of every key CareRelay writes, so several installations can share one Redis. ' +
        'For Redis Cluster wrap it in braces (e.g. "{carerelay}") so each queue\'s keys share a slot.',
    },
    leaseSeconds: {
      type: 'number',
      minimum: 1,
      maximum: 3600,
      default: 30,
      description:
        'bullmq: how long what a vanished process held stays held: the jobs it was running (their Redis locks, ' +
        'renewed every third of this while it runs) and the routing duty of several processes. A job comes back ' +
        'to another worker within about twice this; shorter fails over sooner, but a process stalled longer than ' +
        'this (a long GC pause, a host cut off) loses what it held and may repeat a send (idempotency keys hold).',
    },
    durable: {
      type: 'boolean',
      default: true,
      description:
        'bullmq: refuse to start unless Redis keeps and never evicts jobs (appendonly yes, appendfsync everysec or ' +
        'always, maxmemory-policy noeviction). false is for a throwaway development Redis only: a restart of it may ' +
        'lose planned messages (logged at every start).',
    },
  },
} as const satisfies JsonSchema;

/** The `server.queue` block after defaults. */
export interface QueueConfig {
  readonly type: QueueType;
  readonly url?: SecretRef;
  readonly password?: SecretRef;
  readonly prefix: string;
  readonly leaseSeconds: number;
  readonly durable: boolean;
}

/** Rules across the block's fields (the loader places each at its key). */
export function queueConfigIssues(queue: QueueConfig): Array<{ path: string[]; message: string }> {
  const issues: Array<{ path: string[]; message: string }> = [];
  if (queue.type === QueueType.BullMq && queue.url === undefined) {
    issues.push({ path: ['type'], message: 'queue type bullmq needs the Redis URL: add url: { env: REDIS_URL } (or { file: PATH })' });
  }
  return issues;
}

/**
 * The block as its secrets are checked: url and password only with type bullmq, so one
 * configuration can switch its queue by environment (type: ${CARERELAY_QUEUE:-sqlite}) and
 * start embedded without REDIS_URL set.
 */
export function queueSecretsInUse(queue: QueueConfig | undefined): Partial<QueueConfig> {
  if (queue === undefined || queue.type === QueueType.BullMq) return queue ?? {};
  const { url: _url, password: _password, ...rest } = queue;
  return rest;
}
