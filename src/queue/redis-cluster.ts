// What the processes of one CareRelay installation share through its Redis, besides the queues:
//
//   RedisQueues   the connections of one process and the BullMQ queues opened on them
//   RedisLease    a duty only one process may do at a time (routing: triggers are routed in
//                 commit order, one pass at a time, docs/architecture.md invariant 2) — a key
//                 with a token and an expiry, renewed by its holder, taken over when it lapses
//   RedisSignals  announcements every process hears (pub/sub): "triggers were committed"
//                 (the router sweeps), "reload the configuration" (SIGHUP, a mapping change)
//
// Pub/sub is at-most-once: a process that was reconnecting misses a signal. Nothing depends on
// one arriving — the router also sweeps on a timer, a missed reload is one SIGHUP away — a
// signal only makes things happen sooner.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { BullMqQueue, type BullMqQueueOptions } from './bullmq.ts';
import { assertRedisDurable, connectRedis, type RedisSettings } from './redis.ts';

/** The queue connections of one process, and the queues opened on them. */
export class RedisQueues {
  /** Adds, cancels, reads (fail fast). */
  readonly connection: Redis;
  /** Takes, outcomes, renewals (wait for Redis). */
  readonly workerConnection: Redis;
  readonly prefix: string;
  readonly settings: RedisSettings;
  readonly #queues: BullMqQueue<unknown>[] = [];

  constructor(settings: RedisSettings, options: { prefix: string; name?: string }) {
    this.settings = settings;
    this.prefix = options.prefix;
    this.connection = connectRedis(settings, 'commands', options.name);
    this.workerConnection = connectRedis(settings, 'worker', options.name);
  }

  /** A BullMQ queue on this process's connections (closed with close()). */
  open<T>(name: string, options: Omit<BullMqQueueOptions, 'connection' | 'workerConnection' | 'prefix' | 'name'> = {}): BullMqQueue<T> {
    const queue = new BullMqQueue<T>({ ...options, name, prefix: this.prefix, connection: this.connection, workerConnection: this.workerConnection });
    this.#queues.push(queue as BullMqQueue<unknown>);
    return queue;
  }

  /** Throws RedisDurabilityError unless Redis keeps and never evicts jobs. */
  assertDurable(): Promise<void> {
    return assertRedisDurable(this.connection, this.settings);
  }

  /** Resolves when Redis answers (readiness). */
  async ping(): Promise<void> {
    await this.connection.ping();
  }

  /** Closes the queues (running jobs finish first), then the connections. */
  async close(): Promise<void> {
    await Promise.allSettled(this.#queues.map((q) => q.close()));
    await Promise.all([closeConnection(this.connection), closeConnection(this.workerConnection)]);
  }
}

/**
 * QUIT after the commands in flight (Redis answers them first, so they resolve rather than
 * fail with "Connection is closed"), a second at most; then the socket goes. A connection that
 * is not up (Redis away) is dropped at once.
 */
async function closeConnection(client: Redis): Promise<void> {
  if (client.status === 'ready') {
    await Promise.race([client.quit().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
  }
  client.disconnect();
}

// Renew and release only while the key still holds our token: a lease that lapsed and was
// taken by another process is never extended or deleted by its former holder.
const RENEW = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

/** One duty, one holder at a time, across processes. */
export class RedisLease {
  readonly token = randomUUID();
  constructor(
    private readonly client: Redis,
    readonly key: string,
    readonly ttlMs: number,
  ) {}

  /** Takes the lease when free (or already ours: renewed); true when held now. */
  async acquire(): Promise<boolean> {
    if ((await this.client.set(this.key, this.token, 'PX', this.ttlMs, 'NX')) === 'OK') return true;
    return this.renew();
  }

  /** Extends the lease if still ours; false when it lapsed and someone else may hold it. */
  async renew(): Promise<boolean> {
    return (await this.client.eval(RENEW, 1, this.key, this.token, this.ttlMs)) === 1;
  }

  async release(): Promise<void> {
    await this.client.eval(RELEASE, 1, this.key, this.token);
  }
}

export const ClusterSignal = {
  /** Triggers were committed: the process that routes sweeps the unrouted ones. */
  Committed: 'committed',
  /** A routing pass was saved: a worker waiting for a delivery's routing reads it again. */
  Routed: 'routed',
  /** Reload the configuration (SIGHUP or a mapping change in one process). */
  Reload: 'reload',
} as const;
export type ClusterSignal = (typeof ClusterSignal)[keyof typeof ClusterSignal];

/** Announcements between the processes of one installation (Redis pub/sub). */
export class RedisSignals {
  readonly #publisher: Redis;
  readonly #subscriber: Redis;
  readonly #channel: string;
  readonly #listeners = new Map<ClusterSignal, Set<() => void>>();
  /** This process's id: it does not hear its own announcements. */
  readonly #origin = randomUUID();
  #ready: Promise<unknown>;

  constructor(publisher: Redis, prefix: string) {
    this.#publisher = publisher;
    this.#channel = `${prefix}:signals`;
    this.#subscriber = publisher.duplicate({ maxRetriesPerRequest: null });
    this.#subscriber.on('error', () => {});
    this.#subscriber.on('message', (_channel: string, message: string) => {
      const [origin, signal] = message.split(' ');
      if (origin === this.#origin) return;
      for (const listener of this.#listeners.get(signal as ClusterSignal) ?? []) listener();
    });
    // ioredis subscribes again by itself after a reconnect.
    this.#ready = this.#subscriber.subscribe(this.#channel).catch(() => undefined);
  }

  /** Resolves once subscribed (tests wait for it before announcing from elsewhere). */
  ready(): Promise<void> {
    return this.#ready.then(() => undefined);
  }

  /** Tells every other process; never throws (a lost signal only delays). */
  publish(signal: ClusterSignal): void {
    this.#publisher.publish(this.#channel, `${this.#origin} ${signal}`).catch(() => undefined);
  }

  on(signal: ClusterSignal, listener: () => void): () => void {
    let set = this.#listeners.get(signal);
    if (!set) this.#listeners.set(signal, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  close(): void {
    this.#subscriber.disconnect();
  }
}
