// Schema of `server.video` (docs/video.md): the key that seals vendors' join URLs in the store,
// with the previous keys that still open what they sealed, and when CareRelay's own patient
// links open and close around a visit.
import { parseJoinKey } from '../video/seal.ts';
import { secretRefSchema, type SecretRef } from './yaml.ts';

const KEY_ID = { type: 'string', pattern: '^[A-Za-z0-9._-]{1,32}$', 'x-hint': 'letters, digits, ".", "_" or "-", at most 32' } as const;

export const videoSchema = {
  type: 'object',
  description:
    "Video visits (docs/video.md): the key sealing vendors' join URLs in the store, and when CareRelay's own patient links " +
    '(GET /v/<token>) open and close around a visit.',
  default: {},
  additionalProperties: false,
  properties: {
    key: {
      ...secretRefSchema,
      description:
        'AES-256-GCM key sealing join URLs: 32 random bytes written as 64 hex digits or 44 base64 characters (openssl rand -hex 32), ' +
        'by reference. Default: a random key kept in <dataDir>/video.key, created on first start, which protects a copy of the ' +
        'database file alone, not of the whole data directory: set this key from a secret store in a deployment.',
    },
    keyId: { ...KEY_ID, default: 'k1', description: 'Name stored with every URL the key seals, so keys can rotate (default "k1").' },
    previousKeys: {
      type: 'array',
      default: [],
      description:
        'Keys that sealed URLs still stored: they open them, and nothing new is sealed with them. Keep a key here until the ' +
        'visits it sealed are past.',
      items: {
        type: 'object',
        required: ['id', 'key'],
        additionalProperties: false,
        description: 'One earlier key.',
        properties: {
          id: { ...KEY_ID, description: 'The keyId it was used with.' },
          key: { ...secretRefSchema, description: 'The key, by reference (64 hex digits or 44 base64 characters).' },
        },
      },
    },
    opensMinutesBefore: {
      type: 'integer',
      minimum: 0,
      maximum: 1440,
      default: 60,
      description: 'Minutes before the start of the visit from which a patient link lets the patient join (default 60).',
    },
    closesMinutesAfter: {
      type: 'integer',
      minimum: 0,
      maximum: 1440,
      default: 30,
      description: 'Minutes after the end of the visit (its start when no end is known) until which a link works (default 30).',
    },
  },
} as const;

/** `server.video` after defaults. */
export interface VideoConfig {
  readonly key?: SecretRef;
  readonly keyId: string;
  readonly previousKeys: ReadonlyArray<{ readonly id: string; readonly key: SecretRef }>;
  readonly opensMinutesBefore: number;
  readonly closesMinutesAfter: number;
}

/**
 * What is wrong with the configured keys: each reads to 32 bytes, and no key id is used twice.
 * `read` resolves a reference, undefined when it cannot (the loader reports unreadable secrets
 * of the server block on its own); paths are relative to `server.video`.
 */
export function videoKeyProblems(video: VideoConfig, read: (ref: SecretRef) => string | undefined): Array<{ path: Array<string | number>; message: string }> {
  const problems: Array<{ path: Array<string | number>; message: string }> = [];
  const check = (ref: SecretRef, path: Array<string | number>): void => {
    const text = read(ref);
    if (text === undefined) return;
    try {
      parseJoinKey(text, `server.video.${path.join('.')}`);
    } catch (error) {
      problems.push({ path, message: (error as Error).message });
    }
  };
  if (video.key !== undefined) check(video.key, ['key']);
  const seen = new Set([video.keyId]);
  video.previousKeys.forEach((k, i) => {
    if (seen.has(k.id)) problems.push({ path: ['previousKeys', i, 'id'], message: `key id "${k.id}" is used twice; every key needs its own id (the current key is "${video.keyId}")` });
    seen.add(k.id);
    check(k.key, ['previousKeys', i, 'key']);
  });
  return problems;
}
