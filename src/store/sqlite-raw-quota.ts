// The raw-bytes quota's counters given back when a counted row loses its bytes (InboundRecord.
// rawQuota; docs/reliability.md "Bad inputs"). A rejected or quarantined row that kept its
// bytes whole names the account they were counted under (messages.raw_quota); retention
// (clearing old bodies, pruning old records) and erasure give those bytes back to the total
// and to that account in the same transaction, so the quota bounds the bytes kept now, not
// every byte ever refused: without it, once a gigabyte had been refused in the life of a
// data dir, every later refusal would keep only its first bytes.
import type { Database } from './sqlite-db.ts';
import { RAW_QUOTA_CURSOR } from './store.ts';

/** Migration step of the store (append-only): the account a row's whole bytes were counted under. */
export const RAW_QUOTA_SCHEMA = `
  ALTER TABLE messages ADD COLUMN raw_quota TEXT;
`;

/** Gives back the bytes message `id` was counted for, if any; call before its bytes go. Inside the caller's transaction. */
export function rawQuotaGiveBack(db: Database): (id: number) => void {
  const counted = db.prepare<[number], { account: string; size: number }>(
    'SELECT raw_quota AS account, length(raw_unpacked(raw, raw_packed)) AS size FROM messages WHERE id = ? AND raw_quota IS NOT NULL',
  );
  // A counter never goes below 0 (a row counted before a counter was reset by hand).
  const giveBack = db.prepare<[number, string]>(
    "UPDATE cursors SET value = CAST(MAX(0, CAST(value AS INTEGER) - ?) AS TEXT) WHERE key = ?",
  );
  const uncount = db.prepare<[number]>('UPDATE messages SET raw_quota = NULL WHERE id = ?');
  return (id) => {
    const row = counted.get(id);
    if (row === undefined) return;
    giveBack.run(row.size, RAW_QUOTA_CURSOR);
    giveBack.run(row.size, `${RAW_QUOTA_CURSOR}:${row.account}`);
    uncount.run(id);
  };
}
