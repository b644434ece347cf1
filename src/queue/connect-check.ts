// `carerelay validate --connect`: reaches the queue's Redis with the configuration's settings
// and checks that it keeps what it is given, as `start` will (queue/redis.ts).
import type { QueueConfig } from '../config/queue-schema.ts';
import type { SecretRef } from '../config/yaml.ts';
import { connectRedis, redactRedisUrl, redisDurabilityProblems, RedisDurabilityError, redisUrlProblem } from './redis.ts';

/** What validate prints, and whether it passed. */
export async function checkQueueConnection(queue: QueueConfig, secret: (ref: SecretRef) => string): Promise<{ ok: boolean; message: string }> {
  if (queue.type !== 'bullmq') return { ok: true, message: 'queue: embedded (SQLite in the data directory), nothing to connect to' };
  const url = secret(queue.url!);
  const problem = redisUrlProblem(url);
  if (problem !== undefined) return { ok: false, message: `queue: server.queue.url ${problem}` };
  const where = redactRedisUrl(url);
  const client = connectRedis({ url, ...(queue.password ? { password: secret(queue.password) } : {}) }, 'commands', 'carerelay-validate');
  try {
    try {
      await client.ping();
    } catch (error) {
      return { ok: false, message: `queue: Redis at ${where} is not reachable (${(error as Error).message}): start it, or fix server.queue.url` };
    }
    const problems = await redisDurabilityProblems(client);
    if (problems.length === 0) {
      return { ok: true, message: `queue: Redis at ${where} reachable; appendonly yes, appendfsync everysec or always, maxmemory-policy noeviction` };
    }
    const refusal = new RedisDurabilityError(where, problems);
    return { ok: !queue.durable, message: queue.durable ? `queue: ${refusal.message}` : `queue: reachable; not durable, accepted by durable: false:\n${refusal.message}` };
  } finally {
    client.disconnect();
  }
}
