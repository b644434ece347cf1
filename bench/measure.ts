// What the ingest benchmarks measure besides speed, and the configuration they run: shared by
// bench/ingest.ts (MLLP) and bench/fhir.ts (FHIR notifications).
//   - commits: SQLite transactions the store committed (SqliteStore.commits: every store and
//     embedded-queue write goes through its group commit);
//   - bytes written: what this process sent to the storage layer (/proc/self/io write_bytes:
//     WAL frames and checkpoints; sockets are not counted), 0 where the kernel does not say;
//   - growth: the database's used pages (page_count − freelist_count, WAL included); for the
//     shipped mappings also per table and index (dbstat), to show where the bytes go.
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunningCarerelay } from '../src/main.ts';
import { SqliteStore } from '../src/store/sqlite.ts';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));

/** Bytes this process has written to storage so far (0 when /proc/self/io is unavailable). */
export function storageWrites(): number {
  try {
    const m = /^write_bytes:\s*(\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Used bytes of the running server's database (WAL included). */
export function databaseBytes(running: RunningCarerelay): number {
  const db = sqliteOf(running).db;
  const pageSize = db.pragma('page_size', { simple: true }) as number;
  const pages = db.pragma('page_count', { simple: true }) as number;
  const free = db.pragma('freelist_count', { simple: true }) as number;
  return (pages - free) * pageSize;
}

export function commitsOf(running: RunningCarerelay): number {
  return sqliteOf(running).commits;
}

function sqliteOf(running: RunningCarerelay): SqliteStore {
  if (!(running.store instanceof SqliteStore)) throw new Error('the benchmark measures the embedded SQLite store');
  return running.store;
}

/**
 * Bytes of each table and index of the running server's database (SQLite's dbstat: whole
 * pages, so what a table adds includes the room its pages leave free).
 */
export function tableBytes(running: RunningCarerelay): Map<string, number> {
  const rows = sqliteOf(running).db.prepare('SELECT name, SUM(pgsize) AS bytes FROM dbstat GROUP BY name').all() as Array<{ name: string; bytes: number }>;
  return new Map(rows.map((r) => [r.name, r.bytes]));
}

/** Counters read before and after a phase; `tables` only when asked for (a scan of the file). */
export interface Meter {
  commits: number;
  writes: number;
  bytes: number;
  tables?: Map<string, number>;
}

export function meter(running: RunningCarerelay | undefined, options: { tables?: boolean } = {}): Meter {
  return {
    commits: running ? commitsOf(running) : 0,
    writes: storageWrites(),
    bytes: running ? databaseBytes(running) : 0,
    ...(running && options.tables ? { tables: tableBytes(running) } : {}),
  };
}

/** Per-message figures between two meters; with tables, what each table and index grew by, largest first. */
export function perMessage(
  before: Meter,
  after: Meter,
  messages: number,
): { commitsPerMsg: number; writtenPerMsg: number; growthPerMsg: number; growthByTable?: Array<[string, number]> } {
  const per = (a: number, b: number, digits: number) => Number(((b - a) / Math.max(messages, 1)).toFixed(digits));
  const byTable =
    before.tables && after.tables
      ? [...after.tables]
          .map(([name, bytes]): [string, number] => [name, Math.round(per(before.tables!.get(name) ?? 0, bytes, 0))])
          .filter(([, grown]) => grown !== 0)
          .sort((a, b) => b[1] - a[1])
      : undefined;
  return {
    commitsPerMsg: per(before.commits, after.commits, 3),
    writtenPerMsg: Math.round(per(before.writes, after.writes, 0)),
    growthPerMsg: Math.round(per(before.bytes, after.bytes, 0)),
    ...(byTable ? { growthByTable: byTable } : {}),
  };
}

/**
 * The benchmarks' connectors lines: a server on free ports with its data in `dir`/data (and
 * `serverLines` more), one plain MLLP input `bench-mllp` in UTC.
 */
export function benchConnectorLines(dir: string, serverLines: readonly string[] = []): string[] {
  return [
    'server:',
    '  http: { host: 127.0.0.1, port: 0 }',
    `  dataDir: ${JSON.stringify(join(dir, 'data'))}`,
    ...serverLines,
    'inputs:',
    '  - name: bench-mllp',
    '    type: hl7v2-mllp',
    '    host: 127.0.0.1',
    '    port: 0',
    '    plain: true',
    '    timezone: UTC',
  ];
}

/**
 * Lays out a configuration directory in `dir`: `connectors/bench.yaml` with `lines` (server
 * block and inputs), and with `shipped` the repository's mappings/ and the connectors holding
 * the outputs they name (outbox.yaml, marketing.yaml), exactly as a user runs them.
 */
export function writeConfig(dir: string, lines: readonly string[], shipped: boolean): void {
  mkdirSync(join(dir, 'connectors'), { recursive: true });
  writeFileSync(join(dir, 'connectors', 'bench.yaml'), [...lines, ...(shipped ? [] : ['outputs: []']), ''].join('\n'));
  if (shipped) {
    // The outputs the shipped mappings name (outbox stand-ins; the adapter blocks are commented out).
    for (const file of ['outbox.yaml', 'marketing.yaml']) cpSync(join(repoRoot, 'connectors', file), join(dir, 'connectors', file));
    cpSync(join(repoRoot, 'mappings'), join(dir, 'mappings'), { recursive: true });
  }
}

/** Figures of the confirmations (rule booking-confirmation, `at: now`) kept by the outbox. */
export interface ConfirmationFigures {
  confirmations: number;
  lagP50Ms: number;
  lagP99Ms: number;
  lagMaxMs: number;
  /** Confirmations kept more than a second after their booking's ACK, or never. */
  lateOrMissing: number;
}

/**
 * Matches every outbox entry of rule booking-confirmation to the ACK time of the booking
 * (by appointment id) and reports the lag; `acked` maps appointment id → ACK wall time (ms).
 */
export async function confirmationFigures(running: RunningCarerelay, acked: ReadonlyMap<string, number>): Promise<ConfirmationFigures> {
  const db = sqliteOf(running).db;
  const rows = db
    .prepare("SELECT delivery_id AS id, kept_at AS keptAt FROM outbox WHERE delivery_id LIKE 'booking-confirmation@appointment/%'")
    .all() as Array<{ id: string; keptAt: string }>;
  const lags: number[] = [];
  for (const row of rows) {
    const appointment = decodeURIComponent(row.id.slice('booking-confirmation@appointment/'.length, row.id.lastIndexOf('#')));
    const ackMs = acked.get(appointment);
    if (ackMs !== undefined) lags.push(Date.parse(row.keptAt) - ackMs);
  }
  lags.sort((a, b) => a - b);
  const at = (p: number) => (lags.length === 0 ? 0 : lags[Math.min(lags.length - 1, Math.floor(p * lags.length))]!);
  return {
    confirmations: lags.length,
    lagP50Ms: at(0.5),
    lagP99Ms: at(0.99),
    lagMaxMs: lags.length === 0 ? 0 : lags[lags.length - 1]!,
    lateOrMissing: acked.size - lags.filter((l) => l <= 1000).length,
  };
}

/**
 * A real-shaped SIU^S12 (booking) with its own MSH-10 and appointment id, for 2030: the
 * shipped confirmation is due at once, the reminders are not.
 */
export function bookingSiu(controlId: string, n: number): string {
  const start = new Date(Date.UTC(2030, 0, 1, 8) + (n % 100_000) * 900_000).toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return (
    [
      `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300101080000+0000||SIU^S12^SIU_S12|${controlId}|P|2.5.1`,
      `SCH|PL-${controlId}|AP-${controlId}||||NEW|CHK^Annual check-up^LOCAL||30|MIN|||||||||||||||Booked`,
      `TQ1|1||||||${start}+0000`,
      `PID|1||P${n % 5_000}^^^NORTHCLINIC^MR||DOE^Test||19600101|M|||||0478000000^PRN^PH~^NET^Internet^p${n % 5_000}@example.org`,
      'RGS|1',
      'AIL|1||CARDIO1^^^NORTHCLINIC',
      'AIP|1||DR-22^PETIT^Jean',
    ].join('\r') + '\r'
  );
}
