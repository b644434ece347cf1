// The raw-bytes quota's counters given back on PostgreSQL when counted bytes go (InboundRecord.
// rawQuota; sqlite-raw-quota.ts says why). A rejected or quarantined row that kept its bytes
// whole names the account they were counted under (messages.raw_quota); retention and erasure
// give those bytes back to the total and to that account in the caller's transaction, under
// the advisory lock the counting takes (postgres.ts rawKept): a give-back of another process
// is then never overwritten by a count read before it.
import type { Sql } from './postgres-commit.ts';
import { LOCK_SPACE } from './postgres-db.ts';
import { RAW_QUOTA_CURSOR } from './store.ts';

/**
 * Gives back the bytes of messages `ids` (those `where`, an SQL condition on `m`, accepts) that
 * were counted, and marks them uncounted; call before their bytes go, inside the transaction.
 */
export async function giveBackRawQuota(tx: Sql, ids: readonly number[], where = 'TRUE'): Promise<void> {
  if (ids.length === 0) return;
  await tx.rows('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_SPACE, RAW_QUOTA_CURSOR]);
  // A counter never goes below 0 (a row counted before a counter was reset by hand).
  await tx.count(
    `WITH counted AS (
       SELECT m.id, m.raw_quota, length(m.raw) AS size FROM messages m WHERE m.id = ANY($1::bigint[]) AND m.raw_quota IS NOT NULL AND ${where}
     ), given AS (
       SELECT key, SUM(size) AS size FROM (
         SELECT $2::text AS key, size FROM counted
         UNION ALL SELECT $2::text || ':' || raw_quota, size FROM counted
       ) AS g GROUP BY key
     ), back AS (
       UPDATE cursors c SET value = GREATEST(0, (CASE WHEN c.value ~ '^[0-9]+$' THEN c.value::bigint ELSE 0 END) - given.size)::text
         FROM given WHERE c.key = given.key RETURNING 1
     )
     UPDATE messages m SET raw_quota = NULL FROM counted WHERE m.id = counted.id`,
    [ids, RAW_QUOTA_CURSOR],
  );
}
