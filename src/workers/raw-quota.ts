// The quota on the raw bytes kept with refused messages (docs/reliability.md "Bad inputs").
//
// A refused message keeps its raw bytes for review, but a sender (or anyone reaching the port)
// can refuse-flood: 9 MiB junk frames wrote 2.5 GB in 20 s, and a full disk then fails every
// sender's commits. So the bytes kept whole by rows stored `rejected` (an HL7 AR, a FHIR
// request refused 4xx/503 or a FHIR record rejected) or `quarantined` (same control id, other
// bytes) are counted per sender and in total; past either limit such a row keeps only its
// first `keepBytes` bytes (with the SHA-256 of the whole, already its content hash) and its
// length as received. Accepted messages are never touched: nothing accepted is ever cut.
//
// The workers only say which account a record counts against (InboundRecord.rawQuota); the
// store decides and counts in the transaction that writes the row (store/common.ts
// rawQuotaPlan), from durable counters shared by every process using it. So the quota holds
// across restarts and processes, and a row not stored (a duplicate, a failed commit) counts
// nothing. Bytes go back to the counters when retention or an erasure clears them
// (store/sqlite-raw-quota.ts).
import { createHash } from 'node:crypto';
import type { RawQuota } from '../store/store.ts';

export interface RejectedRawLimits {
  /** Raw bytes kept whole over all rejected and quarantined rows. */
  totalBytes: number;
  /** Raw bytes kept whole per sender (MSH-3^MSH-4; the peer for a message without MSH; a FHIR input's server). */
  perSenderBytes: number;
  /** Bytes kept of a rejected or quarantined row past either limit. */
  keepBytes: number;
}

export const REJECTED_RAW_DEFAULTS: Readonly<RejectedRawLimits> = Object.freeze({
  totalBytes: 1024 * 1024 * 1024,
  perSenderBytes: 64 * 1024 * 1024,
  keepBytes: 4096,
});

/** An account name longer than this (a sender with a 1 MB MSH-3) is replaced by its hash. */
const MAX_ACCOUNT_LENGTH = 100;

/** The account of a sender or peer, bounded in length. */
export function rawQuotaAccount(kind: 'sender' | 'peer', name: string): string {
  const bounded = name.length <= MAX_ACCOUNT_LENGTH ? name : `sha256:${createHash('sha256').update(name).digest('hex').slice(0, 32)}`;
  return `${kind}:${bounded}`;
}

/** InboundRecord.rawQuota for a record of `account` under `limits` (none: no quota). */
export function rawQuotaFor(limits: RejectedRawLimits | undefined, kind: 'sender' | 'peer', name: string): { rawQuota?: RawQuota } {
  if (limits === undefined) return {};
  const { totalBytes, perSenderBytes, keepBytes } = limits;
  return { rawQuota: { account: rawQuotaAccount(kind, name), totalBytes, perSenderBytes, keepBytes } };
}
