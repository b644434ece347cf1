// Readiness (GET /readyz): can this process take traffic, i.e. commit what it is sent?
//
// A store that answers reads may still be unable to write: a full disk or a read-only file
// system lets `SELECT 1` through while every commit fails, and a /readyz that said "ready"
// kept a load balancer sending traffic that could only be answered AE/503. So readiness is:
//
//   store answers ─▶ data dir has minFreeDiskBytes free ─▶ data dir writable
//                ─▶ the last write did not fail for a storage reason (else a probe write)
//
// Writes are watched where they happen: `watch()` returns the store every component uses,
// with each write method's failures and successes noted. After a storage failure (disk full,
// read-only, I/O error) the instance stays not ready until a write succeeds again; so that it
// recovers without traffic (a load balancer sends none to an instance that is not ready),
// /readyz then tries a probe write of PROBE_BYTES (a message-sized write: a tiny one can
// succeed in a file that can no longer grow).
import { constants } from 'node:fs';
import { access, statfs } from 'node:fs/promises';
import type { Store } from '../store/store.ts';

/** Why the process is not ready (safe to log and to show). */
export const NotReady = {
  /** The store does not answer at all. */
  StoreUnreachable: 'store_unreachable',
  /** The data directory's file system is (nearly) full. */
  DiskFull: 'disk_full',
  /** The data directory cannot be written (read-only mount, permissions). */
  ReadOnly: 'read_only',
  /** The last write failed for a storage reason and a probe write fails too. */
  StoreCannotWrite: 'store_cannot_write',
} as const;
export type NotReady = (typeof NotReady)[keyof typeof NotReady];

/** Store methods that write; their failures are watched. */
// 'write': the embedded queue's writes, which ride in the SQLite store's group commit.
const WRITE_METHODS = new Set<PropertyKey>(['commitInbound', 'setCursor', 'saveRouting', 'finishDelivery', 'putOutboxEntry', 'write']);

/**
 * Error codes of a store that cannot write (SQLite result codes as better-sqlite3 reports them,
 * file-system and network errno codes, PostgreSQL SQLSTATEs: insufficient resources 53xxx such
 * as disk_full, a read-only server 25006, connection exceptions 08xxx, shutdowns 57P01–57P03,
 * I/O errors 58030). A record's own fault (a constraint, a bad instant) is not one.
 */
const STORAGE_FAULT =
  /^(?:SQLITE_(?:FULL|READONLY|IOERR|CANTOPEN|BUSY|LOCKED|CORRUPT|NOTADB|PERM|PROTOCOL)|ENOSPC|EROFS|EIO|EDQUOT|EACCES|EPERM|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|53\d{3}$|25006$|08[0-9A-Z]{3}$|57P0[1-3]$|58030$)/;

const PROBE_KEY = 'readyz.probe';
/** Size of the probe write, bytes: about a large HL7 message. */
export const PROBE_BYTES = 64 * 1024;

export interface ReadinessOptions {
  /** The data directory (statfs and writability). Undefined: those checks are skipped. */
  dataDir?: string;
  /** Free bytes below which the process is not ready. */
  minFreeDiskBytes: number;
}

function storageFault(error: unknown): string | undefined {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === 'string' && STORAGE_FAULT.test(code) ? code : undefined;
}

export class StoreReadiness {
  /** The storage error code of the last failed write, until a write succeeds. */
  private failure: string | undefined;
  private probing: Promise<boolean> | undefined;

  constructor(
    private readonly store: Store,
    private readonly options: ReadinessOptions,
  ) {}

  /** The storage error code of the last failed write while no write has succeeded since. */
  get lastWriteFailure(): string | undefined {
    return this.failure;
  }

  /** The store with its writes watched: hand this one to every component. */
  watch(): Store {
    const noteSuccess = (): void => {
      this.failure = undefined;
    };
    const noteFailure = (error: unknown): never => {
      const code = storageFault(error);
      if (code !== undefined) this.failure = code;
      throw error;
    };
    return new Proxy(this.store, {
      get: (target, property) => {
        const value = Reflect.get(target, property, target) as unknown;
        if (typeof value !== 'function') return value;
        if (!WRITE_METHODS.has(property)) return value.bind(target);
        return (...args: unknown[]) =>
          (value.apply(target, args) as Promise<unknown>).then((result) => {
            noteSuccess();
            return result;
          }, noteFailure);
      },
    });
  }

  /** Undefined when ready; else why not. */
  async check(): Promise<NotReady | undefined> {
    try {
      await this.store.ping();
    } catch {
      return NotReady.StoreUnreachable;
    }
    const dir = this.options.dataDir;
    if (dir !== undefined) {
      try {
        const fs = await statfs(dir);
        if (fs.bavail * fs.bsize < this.options.minFreeDiskBytes) return NotReady.DiskFull;
      } catch {
        // statfs unsupported here: the write checks below still apply.
      }
      try {
        await access(dir, constants.W_OK);
      } catch {
        return NotReady.ReadOnly;
      }
    }
    if (this.failure !== undefined && !(await this.probe())) return NotReady.StoreCannotWrite;
    return undefined;
  }

  /** One probe write at a time, shared by concurrent checks. True when it committed. */
  private probe(): Promise<boolean> {
    this.probing ??= (async () => {
      try {
        await this.store.setCursor(PROBE_KEY, 'x'.repeat(PROBE_BYTES));
        await this.store.setCursor(PROBE_KEY, '');
        this.failure = undefined;
        return true;
      } catch (error) {
        this.failure = storageFault(error) ?? this.failure;
        return false;
      } finally {
        this.probing = undefined;
      }
    })();
    return this.probing;
  }
}
