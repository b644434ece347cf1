// Connecting to the Redis behind the BullMQ queue, and the start-up check that it keeps what it
// is given (docs/architecture.md "Backends": AOF on, noeviction).
//
// A job CareRelay hands to Redis is a delivery to a patient or a consent push to a tool: it
// must survive a Redis restart and never be evicted. So durable mode (the default) refuses to
// start unless Redis says:
//   appendonly yes                 every write goes to the append-only file, not only to the
//                                  periodic snapshot (a crash loses at most what the fsync
//                                  policy allows, instead of minutes of jobs)
//   appendfsync everysec | always  the file is fsynced at least every second
//   maxmemory-policy noeviction    a full Redis refuses writes (the add fails and is retried)
//                                  instead of silently deleting jobs to make room
import { Redis, type RedisOptions } from 'ioredis';

/** Where the queue's Redis is and how to reach it (secrets already read). */
export interface RedisSettings {
  /** redis://[user:password@]host:port[/db] or rediss:// (TLS). */
  url: string;
  /** Overrides the URL's password (kept out of the URL: from env or a file). */
  password?: string;
}

/** What a connection is for: commands fail fast, a worker's wait for Redis to come back. */
export type RedisRole = 'commands' | 'worker';

/** The URL with its password replaced, for messages. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(an unreadable Redis URL)';
  }
}

/** Checks the URL's form; undefined when it is usable, else what is wrong and how to fix it. */
export function redisUrlProblem(url: string): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'is not a URL; expected redis://host:6379 (or rediss:// for TLS)';
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    return `has scheme ${parsed.protocol.replace(/:$/, '')}; expected redis:// or rediss:// (TLS)`;
  }
  if (parsed.hostname === '') return 'names no host; expected redis://host:6379';
  const db = parsed.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) return `has path /${db}; the path, if any, is the database number (e.g. /0)`;
  return undefined;
}

/**
 * An ioredis client for the queue. `commands` (adds, cancels, reads): a command fails after one
 * reconnect attempt, so an add during an outage fails and its caller (the router) tries again
 * later. `worker` (takes, outcomes, lease renewals): maxRetriesPerRequest null, as BullMQ
 * requires, so an outcome written during a Redis restart waits for it instead of being lost.
 */
export function connectRedis(settings: RedisSettings, role: RedisRole, name = 'carerelay'): Redis {
  const options: RedisOptions = {
    connectionName: `${name}-${role}`,
    maxRetriesPerRequest: role === 'worker' ? null : 1,
    // Reconnect forever, at most every 2 s: Redis restarts are expected events.
    retryStrategy: (times) => Math.min(times * 100, 2_000),
    ...(settings.password !== undefined ? { password: settings.password } : {}),
  };
  const client = new Redis(settings.url, options);
  // Without a listener ioredis prints every connection error; callers watch readiness instead.
  client.on('error', () => {});
  return client;
}

/** A durability setting that is not what CareRelay needs. */
export interface DurabilityProblem {
  setting: 'appendonly' | 'appendfsync' | 'maxmemory-policy';
  /** What Redis says, or undefined when it could not be read. */
  actual: string | undefined;
  /** What it must be. */
  expected: string;
  /** What the wrong value risks and how to set it. */
  fix: string;
}

const FIXES: Record<DurabilityProblem['setting'], { expected: string; accept: readonly string[]; fix: string }> = {
  appendonly: {
    expected: 'yes',
    accept: ['yes'],
    fix: 'without the append-only file a Redis restart loses every job written since the last snapshot; set `appendonly yes`',
  },
  appendfsync: {
    expected: 'everysec or always',
    accept: ['everysec', 'always'],
    fix: 'with `appendfsync no` the system decides when jobs reach the disk (often 30 s later); set `appendfsync everysec`',
  },
  'maxmemory-policy': {
    expected: 'noeviction',
    accept: ['noeviction'],
    fix: 'any other policy lets a full Redis delete queued jobs to make room; set `maxmemory-policy noeviction`',
  },
};

/**
 * Reads the three settings (CONFIG GET; where a managed Redis refuses CONFIG, what INFO tells:
 * aof_enabled and maxmemory_policy) and lists those that are not as required.
 */
export async function redisDurabilityProblems(client: Redis): Promise<DurabilityProblem[]> {
  const values = new Map<DurabilityProblem['setting'], string | undefined>();
  for (const setting of Object.keys(FIXES) as DurabilityProblem['setting'][]) {
    try {
      const reply = (await client.config('GET', setting)) as string[];
      values.set(setting, reply[1]);
    } catch {
      values.set(setting, undefined);
    }
  }
  if ([...values.values()].some((v) => v === undefined)) {
    // CONFIG is often disabled on managed services; INFO is not.
    try {
      const info = await client.info();
      const field = (name: string) => new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1]?.trim();
      if (values.get('appendonly') === undefined) {
        const aof = field('aof_enabled');
        if (aof !== undefined) values.set('appendonly', aof === '1' ? 'yes' : 'no');
      }
      if (values.get('maxmemory-policy') === undefined) values.set('maxmemory-policy', field('maxmemory_policy'));
    } catch {
      // Nothing more to read: the settings stay unknown.
    }
  }
  const problems: DurabilityProblem[] = [];
  for (const [setting, rule] of Object.entries(FIXES) as [DurabilityProblem['setting'], (typeof FIXES)[DurabilityProblem['setting']]][]) {
    const actual = values.get(setting);
    if (actual !== undefined && rule.accept.includes(actual)) continue;
    problems.push({ setting, actual, expected: rule.expected, fix: rule.fix });
  }
  return problems;
}

/** Refusal to run the queue on a Redis that may lose or evict jobs. */
export class RedisDurabilityError extends Error {
  constructor(
    readonly where: string,
    readonly problems: readonly DurabilityProblem[],
  ) {
    const lines = problems.map((p) =>
      p.actual === undefined
        ? `  - ${p.setting}: could not be read (CONFIG GET refused, INFO silent); it must be ${p.expected}: ${p.fix}`
        : `  - ${p.setting} is "${p.actual}", must be ${p.expected}: ${p.fix}`,
    );
    super(
      `Redis at ${where} is not set up to keep queued jobs:\n${lines.join('\n')}\n` +
        'Fix redis.conf (or run CONFIG SET … then CONFIG REWRITE) and start again. Only for a throwaway ' +
        'setup (development), `queue: { durable: false }` starts without this check.',
    );
    this.name = 'RedisDurabilityError';
  }
}

/** Throws RedisDurabilityError unless the Redis behind `client` keeps and never evicts jobs. */
export async function assertRedisDurable(client: Redis, settings: RedisSettings): Promise<void> {
  const problems = await redisDurabilityProblems(client);
  if (problems.length > 0) throw new RedisDurabilityError(redactRedisUrl(settings.url), problems);
}
