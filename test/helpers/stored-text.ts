// What a SQLite data directory holds, as text a reader could get at: every file's bytes as they
// are on disk, and every value of every table once unpacked (packed JSON, compressed raw
// messages). A secret that must not be kept in clear is looked for in both.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { unpackJson, unpackRaw } from '../../src/store/packed-json.ts';

/** The bytes of every file of the data directory (the database, its WAL, keys…). */
export function dataDirBytes(dataDir: string): Buffer {
  return Buffer.concat(readdirSync(dataDir).map((name) => readFileSync(path.join(dataDir, name))));
}

/** Every stored value of every table, unpacked where it is packed, as one string per value. */
export function storedValues(dbFile: string): string[] {
  const db = new BetterSqlite3(dbFile, { readonly: true, fileMustExist: true });
  try {
    const out: string[] = [];
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string }>;
    for (const { name } of tables) {
      for (const row of db.prepare(`SELECT * FROM "${name}"`).all() as Array<Record<string, unknown>>) {
        for (const value of Object.values(row)) {
          if (typeof value === 'string') out.push(value);
          else if (Buffer.isBuffer(value)) out.push(value.toString('latin1'), ...unpacked(value));
        }
      }
    }
    return out;
  } finally {
    db.close();
  }
}

function unpacked(value: Buffer): string[] {
  const out: string[] = [];
  for (const unpack of [() => unpackJson(value), () => unpackRaw(value).toString('latin1')]) {
    try {
      out.push(unpack());
    } catch {
      // not packed this way
    }
  }
  return out;
}
