// Sealing video-visit join URLs at rest (docs/video.md "Keys"). A join URL lets whoever holds it
// into the patient's visit: the store keeps it only sealed, with AES-256-GCM under a key that
// lives outside the database (server.video.key, from env or a file), and it is opened only at
// the moment a patient presses "Join".
//
//   sealed = 0x01 | IV (12 random bytes) | GCM tag (16) | ciphertext
//   AAD    = "carerelay-video-join.v1" NUL <appointment id>
//
// The AAD binds a sealed URL to its appointment: a row copied onto another appointment does not
// open. Each sealed value names the key id it was sealed with, so keys rotate without a
// migration: new values are sealed with the current key, and previous keys (server.video
// .previousKeys) still open what they sealed until those appointments are past.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { SealedJoin, VideoJoinWrite } from '../store/store.ts';
import type { VideoJoin } from '../types.ts';

const VERSION = 0x01;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
const CONTEXT = 'carerelay-video-join.v1';

export interface JoinKey {
  /** Stored with every value it seals (a short name: "k1", "2025-06"). */
  id: string;
  /** 32 bytes. */
  key: Buffer;
}

/** Why a sealed join URL cannot be opened (safe to log: codes only). */
export const VaultReason = {
  /** Sealed with a key id this process does not hold (removed from previousKeys too early). */
  UnknownKey: 'join_key_unknown',
  /** The bytes are not what the key sealed for this appointment (tampered, truncated, moved). */
  Unreadable: 'join_unreadable',
} as const;
export type VaultReason = (typeof VaultReason)[keyof typeof VaultReason];

export class VaultError extends Error {
  constructor(readonly code: VaultReason) {
    super(code === VaultReason.UnknownKey ? 'the join URL was sealed with a key that is not configured' : 'the sealed join URL cannot be opened with its key');
  }
}

function aad(appointmentId: string): Buffer {
  return Buffer.from(`${CONTEXT}\u0000${appointmentId}`, 'utf8');
}

/** Seals and opens join URLs with the current key and the previous ones. */
export class JoinVault {
  readonly #current: JoinKey;
  readonly #keys = new Map<string, Buffer>();

  constructor(current: JoinKey, previous: readonly JoinKey[] = []) {
    for (const k of [current, ...previous]) {
      if (k.key.length !== KEY_BYTES) throw new RangeError(`video key "${k.id}" is ${k.key.length} bytes; AES-256 needs ${KEY_BYTES}`);
      if (this.#keys.has(k.id)) throw new RangeError(`video key id "${k.id}" is given twice; each key needs its own id`);
      this.#keys.set(k.id, k.key);
    }
    this.#current = current;
  }

  /** The id new values are sealed with. */
  get keyId(): string {
    return this.#current.id;
  }

  seal(appointmentId: string, url: string): SealedJoin {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#current.key, iv);
    cipher.setAAD(aad(appointmentId));
    const body = Buffer.concat([cipher.update(url, 'utf8'), cipher.final()]);
    return { keyId: this.#current.id, sealed: Buffer.concat([Buffer.of(VERSION), iv, cipher.getAuthTag(), body]) };
  }

  /** The URL; throws VaultError when the key is unknown or the bytes do not open for this appointment. */
  open(appointmentId: string, join: SealedJoin): string {
    const key = this.#keys.get(join.keyId);
    if (key === undefined) throw new VaultError(VaultReason.UnknownKey);
    const box = join.sealed;
    if (box.length < 1 + IV_BYTES + TAG_BYTES || box[0] !== VERSION) throw new VaultError(VaultReason.Unreadable);
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, box.subarray(1, 1 + IV_BYTES));
      decipher.setAAD(aad(appointmentId));
      decipher.setAuthTag(box.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES));
      return Buffer.concat([decipher.update(box.subarray(1 + IV_BYTES + TAG_BYTES)), decipher.final()]).toString('utf8');
    } catch {
      throw new VaultError(VaultReason.Unreadable);
    }
  }
}

/**
 * A key as configured: 32 bytes written as 64 hex digits or as base64 (44 characters, `=` padded,
 * or base64url). Throws an Error saying what was given and how to make a good one; `what`
 * names the setting in it. The error never repeats the value.
 */
export function parseJoinKey(text: string, what: string): Buffer {
  const value = text.trim();
  let key: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(value)) key = Buffer.from(value, 'hex');
  else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(value)) key = Buffer.from(value.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (key === undefined || key.length !== KEY_BYTES) {
    throw new Error(`${what} must be 32 random bytes written as 64 hex digits or 44 base64 characters (got ${value.length} characters); make one with: openssl rand -hex 32`);
  }
  return key;
}

/** Key id of the key kept in the data directory when server.video.key is not set. */
export const DATA_DIR_KEY_ID = 'datadir';

/**
 * The key used when server.video.key is not set: 32 random bytes in `<dataDir>/video.key`
 * (created on first use, readable by this user only). It keeps the example running without a
 * secret; it protects a copy of the database file alone, not of the whole data directory, so a
 * deployment sets server.video.key from a secret store (docs/video.md "Keys").
 */
export function dataDirJoinKey(dataDir: string): JoinKey {
  const file = path.join(dataDir, 'video.key');
  if (!existsSync(file)) {
    mkdirSync(dataDir, { recursive: true });
    try {
      writeFileSync(file, `${randomBytes(KEY_BYTES).toString('hex')}\n`, { flag: 'wx', mode: 0o600 });
    } catch (error) {
      // Another process created it first: use theirs.
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    chmodSync(file, 0o600);
  }
  return { id: DATA_DIR_KEY_ID, key: parseJoinKey(readFileSync(file, 'utf8'), file) };
}

/**
 * What the ingest commits for the join information a normalizer returned: each URL sealed, each
 * clear kept as a clear. Without a vault (a component run without one: tests) a join holding a
 * URL is left out, never written as a clear.
 */
export function sealJoins(vault: JoinVault | undefined, joins: readonly VideoJoin[] | undefined): VideoJoinWrite[] {
  const out: VideoJoinWrite[] = [];
  for (const j of joins ?? []) {
    const base = { appointmentId: j.appointmentId, patientId: j.patientId, asOf: j.asOf };
    if (j.url === undefined) out.push(base);
    else if (vault !== undefined) out.push({ ...base, join: vault.seal(j.appointmentId, j.url) });
  }
  return out;
}

/** The join URLs among `joins` (what the stored raw message is redacted of). */
export function joinUrls(joins: readonly VideoJoin[] | undefined): string[] {
  return (joins ?? []).flatMap((j) => (j.url === undefined ? [] : [j.url]));
}
