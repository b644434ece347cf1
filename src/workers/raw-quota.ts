// A quota on the raw bytes kept with rejected messages (docs/reliability.md "Bad inputs").
//
// A refused message keeps its raw bytes for review, but a sender (or anyone reaching the port)
// can refuse-flood: 9 MiB junk frames wrote 2.5 GB in 20 s, and a full disk then fails every
// sender's commits. So the bytes kept whole are counted per sender and in total; past either
// limit a rejected message keeps only its first `keepBytes` bytes (with the SHA-256 of the
// whole, already its content hash) and the stored length as received. Accepted messages are
// never touched: nothing accepted is ever cut.
//
// The counters live in the store's durable cursors, written in the same transaction as the
// record they count (InboundRecord.cursors), so they survive restarts; each process keeps
// them in memory after the first read. `charge` is synchronous and called right before
// commitInbound, so counters are queued in commit order and the last one written is the
// highest. Several processes sharing one store would each add to their own copy and the last
// write wins: the quota then holds per process (the embedded store has one).
import { createHash } from 'node:crypto';
import type { Store } from '../store/store.ts';

export interface RejectedRawLimits {
  /** Raw bytes kept whole over all rejected messages. */
  totalBytes: number;
  /** Raw bytes kept whole per sender (MSH-3^MSH-4; the peer for a message without MSH). */
  perSenderBytes: number;
  /** Bytes kept of a rejected message past either limit. */
  keepBytes: number;
}

export const REJECTED_RAW_DEFAULTS: Readonly<RejectedRawLimits> = Object.freeze({
  totalBytes: 1024 * 1024 * 1024,
  perSenderBytes: 64 * 1024 * 1024,
  keepBytes: 4096,
});

/** Cursor holding the total; per-sender cursors add `:<account>`. */
export const REJECTED_RAW_CURSOR = 'quota.rejected-raw-bytes';

/** An account name longer than this (a sender with a 1 MB MSH-3) is replaced by its hash. */
const MAX_ACCOUNT_LENGTH = 100;

export interface RawCharge {
  /** What to store: the message, or its first keepBytes bytes. */
  raw: Buffer;
  /** The length as received, when `raw` holds only the first bytes. */
  receivedBytes?: number;
  /** Counter values to commit with the record (InboundRecord.cursors). */
  cursors: Record<string, string>;
  /** Gives the bytes back: the record was not stored (commit failed, duplicate, quarantined). */
  refund(): void;
}

/** The account of a sender or peer, bounded in length. */
export function rawQuotaAccount(kind: 'sender' | 'peer', name: string): string {
  const bounded = name.length <= MAX_ACCOUNT_LENGTH ? name : `sha256:${createHash('sha256').update(name).digest('hex').slice(0, 32)}`;
  return `${kind}:${bounded}`;
}

export class RejectedRawQuota {
  /** Bytes kept whole, by cursor key; loaded from the store on first use. */
  private readonly used = new Map<string, number>();
  private readonly loading = new Map<string, Promise<void>>();

  constructor(
    private readonly store: Pick<Store, 'getCursor'>,
    readonly limits: RejectedRawLimits = REJECTED_RAW_DEFAULTS,
  ) {}

  /** Reads the counters `charge(account, …)` needs. Rejects when the store cannot be read. */
  async load(account: string): Promise<void> {
    await Promise.all([this.loadKey(REJECTED_RAW_CURSOR), this.loadKey(`${REJECTED_RAW_CURSOR}:${account}`)]);
  }

  private loadKey(key: string): Promise<void> {
    if (this.used.has(key)) return Promise.resolve();
    let pending = this.loading.get(key);
    if (pending === undefined) {
      pending = this.store
        .getCursor(key)
        .then((value) => {
          const n = Number(value ?? '0');
          if (!this.used.has(key)) this.used.set(key, Number.isSafeInteger(n) && n >= 0 ? n : 0);
        })
        .finally(() => this.loading.delete(key));
      this.loading.set(key, pending);
    }
    return pending;
  }

  /**
   * Decides what a rejected message keeps, and counts it. Synchronous; `load(account)` must
   * have resolved first. Call it right before commitInbound and refund when nothing was stored.
   */
  charge(account: string, raw: Buffer): RawCharge {
    const totalKey = REJECTED_RAW_CURSOR;
    const accountKey = `${REJECTED_RAW_CURSOR}:${account}`;
    const total = this.used.get(totalKey);
    const mine = this.used.get(accountKey);
    if (total === undefined || mine === undefined) throw new Error(`RejectedRawQuota.charge(${account}) before load()`);
    const size = raw.length;
    // A message no longer than keepBytes is kept whole (cutting it would keep the same), and
    // counted: a flood of small refusals fills the quota for the large ones that follow.
    const over = total + size > this.limits.totalBytes || mine + size > this.limits.perSenderBytes;
    if (over && size > this.limits.keepBytes) {
      return { raw: raw.subarray(0, this.limits.keepBytes), receivedBytes: size, cursors: {}, refund: () => {} };
    }
    this.used.set(totalKey, total + size);
    this.used.set(accountKey, mine + size);
    let refunded = false;
    return {
      raw,
      cursors: { [totalKey]: String(total + size), [accountKey]: String(mine + size) },
      refund: () => {
        if (refunded) return;
        refunded = true;
        this.used.set(totalKey, (this.used.get(totalKey) ?? size) - size);
        this.used.set(accountKey, (this.used.get(accountKey) ?? size) - size);
      },
    };
  }
}
