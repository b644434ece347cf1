// Video visits, in process on a real SQLite file (docs/video.md): the HL7 ingest commits the
// join URL sealed with its message and stores the message redacted of it; CareRelay's links are
// minted, looked at and followed against the appointment as it stands, on an injected clock.
// The same over real sockets, with the running server: test/video-e2e.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REDACTED_JOIN_URL } from '../src/normalized-values.ts';
import { testDelivery } from '../src/store/conformance.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { LinkState, tokenHash } from '../src/video/link.ts';
import { JoinVault } from '../src/video/seal.ts';
import { Hl7Ingest, type Hl7IngestSettings } from '../src/workers/ingest.ts';
import { VideoLinks } from '../src/workers/video.ts';
import { captureLogger, siuMessage } from './helpers/server.ts';
import { dataDirBytes, storedValues } from './helpers/stored-text.ts';

/** A join URL no other part of a message or of CareRelay could hold by chance. */
const CANARY = 'https://canary-vendor.example/j/QX7Z-canary-9c1e?pwd=Mz5vNq&role=patient';
const CANARY_WIRE = 'https://canary-vendor.example/j/QX7Z-canary-9c1e?pwd=Mz5vNq\\T\\role=patient';
const START = new Date('2027-06-15T12:30:00Z');
const PUBLIC_URL = 'https://care.example.org';
const KEY = { id: 'k1', key: Buffer.alloc(32, 7) };

const settings: Hl7IngestSettings = {
  input: 'ehr',
  timezone: 'UTC',
  unknownMessageTypes: 'accept',
  missingFieldAck: 'AR',
  virtualVisit: { segment: 'ZVV', field: 1, channel: 'zoom' },
};

let dir: string;
let store: SqliteStore;
let clock: number;
let logs: ReturnType<typeof captureLogger>;
let ingest: Hl7Ingest;
let links: VideoLinks;

function message(controlId: string, o: { event?: string; start?: Date; zvv?: boolean; sentAt?: Date } = {}): Buffer {
  return Buffer.from(
    siuMessage({
      controlId,
      appointmentId: 'A-1',
      event: o.event ?? 'S12',
      start: o.start ?? START,
      sentAt: o.sentAt ?? new Date('2027-06-01T08:00:00Z'),
      extra: o.zvv === false ? '' : `ZVV|${CANARY_WIRE}\r`,
    }),
    'latin1',
  );
}

async function send(raw: Buffer): Promise<string> {
  const result = await ingest.handle(raw, settings);
  expect(result.committed).toBe(true);
  return result.ackCode;
}

const delivery = () => testDelivery({ appointmentId: 'A-1', ruleId: 'video-join', patientId: 'E200001' });

async function mint(): Promise<string> {
  const minted = await links.mint(delivery(), { zone: 'Europe/Paris', language: 'fr' });
  if (!('link' in minted)) throw new Error(`not minted: ${minted.unavailable}`);
  return minted.link.slice(`${PUBLIC_URL}/v/`.length);
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-video-'));
  store = SqliteStore.open(path.join(dir, 'carerelay.db'));
  logs = captureLogger();
  const vault = new JoinVault(KEY);
  ingest = new Hl7Ingest({ store, log: logs, video: vault });
  clock = START.getTime() - 30 * 60_000;
  links = new VideoLinks({ store, vault, window: { opensMinutesBefore: 60, closesMinutesAfter: 30 }, publicUrl: () => PUBLIC_URL, log: logs, now: () => clock });
});
afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('join information at ingest', () => {
  it('commits the URL sealed with its message, keeps the message redacted of it, and a resend of the same bytes is still a duplicate', async () => {
    expect(await send(message('V1'))).toBe('AA');
    const [trigger] = await store.listTriggers({ appointmentId: 'A-1' });
    expect(trigger!.appointment!.virtual).toEqual({ channel: 'zoom', hasJoinInfo: true });
    const kept = await store.getVideoJoin('A-1');
    expect(kept?.join.keyId).toBe('k1');
    expect(new JoinVault(KEY).open('A-1', kept!.join)).toBe(CANARY);

    const [stored] = await store.listMessages({ controlId: 'V1' });
    const raw = (await store.getMessage(stored!.id))!.raw.toString('latin1');
    expect(raw).toContain(`ZVV|${REDACTED_JOIN_URL}`);
    expect(raw.replace(`ZVV|${REDACTED_JOIN_URL}\r`, '')).toBe(message('V1', { zvv: false }).toString('latin1'));

    // The dedupe hash is of the bytes as received: the same bytes again are a resend.
    const again = await ingest.handle(message('V1'), settings);
    expect(again).toMatchObject({ ackCode: 'AA', triggers: [], messageId: stored!.id });
    expect(await store.listMessages({ controlId: 'V1' })).toHaveLength(1);

    // Nowhere in the data directory in clear: not in the files' bytes, not in any value once unpacked.
    expect(dataDirBytes(dir).includes(Buffer.from('canary-vendor'))).toBe(false);
    expect(storedValues(path.join(dir, 'carerelay.db')).filter((v) => v.includes('canary-vendor'))).toEqual([]);
    expect(JSON.stringify(logs.lines)).not.toContain('canary-vendor');
  });

  it('a cancel clears the join; a message without the Z-segment leaves it', async () => {
    await send(message('V1'));
    await send(message('V2', { event: 'S14', zvv: false, sentAt: new Date('2027-06-02T08:00:00Z') }));
    expect(await store.getVideoJoin('A-1')).toBeDefined();
    await send(message('V3', { event: 'S15', zvv: false, sentAt: new Date('2027-06-03T08:00:00Z') }));
    expect(await store.getVideoJoin('A-1')).toBeUndefined();
  });
});

describe('CareRelay links (injected clock)', () => {
  it('GET consumes nothing: many looks, then the join works, and works again', async () => {
    await send(message('V1'));
    const token = await mint();
    for (let i = 0; i < 25; i++) expect((await links.lookup(token)).status.state).toBe(LinkState.Open);
    expect((await links.join(token)).url).toBe(CANARY);
    expect((await links.lookup(token)).status.state).toBe(LinkState.Open);
    expect((await links.join(token)).url).toBe(CANARY);
    // Only the hash is stored, with the start it was minted for.
    expect(await store.getVideoLink(tokenHash(token)!)).toMatchObject({ appointmentId: 'A-1', start: '2027-06-15T12:30:00+00:00', zone: 'Europe/Paris', language: 'fr' });
    expect(storedValues(path.join(dir, 'carerelay.db')).some((v) => v.includes(token))).toBe(false);
  });

  it('opens an hour before the visit and closes 30 minutes after its end', async () => {
    await send(message('V1'));
    const token = await mint();
    clock = START.getTime() - 61 * 60_000;
    expect((await links.lookup(token)).status).toEqual({ state: LinkState.Early, opensAt: START.getTime() - 60 * 60_000 });
    expect((await links.join(token)).url).toBeUndefined();
    clock = START.getTime() - 60 * 60_000;
    expect((await links.join(token)).url).toBe(CANARY);
    clock = START.getTime() + (30 + 30) * 60_000 - 1;
    expect((await links.join(token)).url).toBe(CANARY);
    clock += 1;
    expect(await links.join(token)).toMatchObject({ status: { state: LinkState.Ended } });
    expect((await links.join(token)).url).toBeUndefined();
  });

  it('is dead after a reschedule; a link minted for the new time works', async () => {
    await send(message('V1'));
    const token = await mint();
    const later = new Date(START.getTime() + 15 * 60_000);
    await send(message('V2', { event: 'S13', start: later, sentAt: new Date('2027-06-02T08:00:00Z') }));
    expect(await links.join(token)).toMatchObject({ status: { state: LinkState.Moved } });
    expect((await links.join(token)).url).toBeUndefined();
    const fresh = await mint();
    expect((await links.join(fresh)).url).toBe(CANARY);
  });

  it('is dead after a cancel, and no new link can be minted', async () => {
    await send(message('V1'));
    const token = await mint();
    await send(message('V2', { event: 'S15', sentAt: new Date('2027-06-02T08:00:00Z') }));
    expect(await links.join(token)).toMatchObject({ status: { state: LinkState.Cancelled } });
    expect((await links.join(token)).url).toBeUndefined();
    expect(await links.mint(delivery(), {})).toEqual({ unavailable: 'no_join_info' });
  });

  it('an unknown or malformed token is unknown; a seal whose key is gone makes the link unavailable, logged by code', async () => {
    await send(message('V1'));
    const token = await mint();
    for (const bad of ['A'.repeat(22), 'x', '../../etc/passwd']) expect((await links.lookup(bad)).status.state).toBe(LinkState.Unknown);
    const rotated = new VideoLinks({ store, vault: new JoinVault({ id: 'k2', key: Buffer.alloc(32, 9) }), window: links.window, publicUrl: () => PUBLIC_URL, log: logs, now: () => clock });
    expect(await rotated.join(token)).toMatchObject({ status: { state: LinkState.Unavailable } });
    expect(logs.lines.filter((l) => l.message === 'video.join_unreadable').map((l) => l.reason)).toEqual(['join_key_unknown']);
  });
});
