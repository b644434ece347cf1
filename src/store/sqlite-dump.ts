// Export of the embedded store (store/dump.ts): its tables read page by page, packed values
// unpacked, so the records are the same as a PostgreSQL store's.
import type { Database } from './sqlite-db.ts';
import { afterCondition, dumpSource, type BackendRows } from './dump-tables.ts';
import type { DumpSource, MessageRecord, OutboxRecord, TriggerRecord } from './dump.ts';
import { triggerOf, unpackRaw } from './packed-json.ts';
import { OUTBOX_COLUMNS, messageFromRow, type MessageRow, type OutboxRow } from './rows.ts';
import { DELIVERY_COLUMNS, SQLITE_MESSAGE_COLUMNS, deliveryFromRow, outboxFromRow, unpackExplanation, type DeliveryRow } from './sqlite.ts';

/** The records of the embedded store on `db` (open, read-only is enough; schema up to date). */
export function sqliteDumpSource(db: Database): DumpSource {
  const outboxBySeq = db.prepare(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE seq = ?`);
  const rows: BackendRows = {
    async page(table, columns, keys, after, limit) {
      const where = after === undefined ? '' : ` WHERE ${afterCondition(keys)}`;
      // Yield to the event loop between pages: a large export must not hold the process.
      await new Promise<void>((resolve) => setImmediate(resolve));
      return db.prepare(`SELECT ${columns} FROM ${table}${where} ORDER BY ${keys.join(', ')} LIMIT ?`).all(...(after ?? []), limit) as Array<Record<string, unknown>>;
    },
    triggerOrder: 'rowid',
    messageColumns: `${SQLITE_MESSAGE_COLUMNS}, raw, raw_packed, raw_bytes, keyed, raw_quota`,
    message(row): MessageRecord {
      const raw = row.raw_packed === 1 && Buffer.isBuffer(row.raw) ? unpackRaw(row.raw) : Buffer.from(row.raw as Buffer);
      return {
        kind: 'message',
        ...messageFromRow(row as unknown as MessageRow),
        raw: raw.toString('base64'),
        ...(row.raw_bytes !== null ? { rawBytes: Number(row.raw_bytes) } : {}),
        keyed: row.keyed === 1,
      ...(row.raw_quota !== null ? { rawQuota: String(row.raw_quota) } : {}),
      };
    },
    triggerColumns: 'json, routing',
    trigger(row): TriggerRecord {
      const routedMs = row.routed_ms === null ? undefined : Number(row.routed_ms);
      return {
        kind: 'trigger',
        trigger: triggerOf(row.id as string, row.json as string | Buffer),
        messageId: String(row.message_id),
        ...(routedMs !== undefined ? { routedMs } : {}),
        ...(row.routing !== null && routedMs !== undefined ? { routing: unpackExplanation(String(row.id), row.routing as string | Buffer, routedMs).rules } : {}),
      };
    },
    outboxColumns: OUTBOX_COLUMNS,
    outbox: (row): OutboxRecord => ({ kind: 'outbox', ...outboxFromRow(row as unknown as OutboxRow<string | Buffer>) }),
    deliveryColumns: DELIVERY_COLUMNS,
    deliveryTable: 'deliveries',
    deliveryKey: 'seq',
    async deliveries(page) {
      return page.map((row) => deliveryFromRow(row as unknown as DeliveryRow, (seq) => outboxBySeq.get(seq) as OutboxRow<string | Buffer> | undefined));
    },
    bool: (value) => value === 1,
  };
  const source = dumpSource(rows);
  return {
    // One read transaction: the records of one moment, also beside a running server (WAL).
    async *records() {
      db.exec('BEGIN');
      try {
        yield* source.records();
      } finally {
        db.exec('COMMIT');
      }
    },
  };
}
