// Hl7Ingest on a real SQLite file: batches and resends. The running server's MLLP and HTTP
// paths are tested end to end in test/server-hl7v2.test.ts.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseHl7 } from '../hl7v2/parse.ts';
import { silentLogger } from '../log.ts';
import { SqliteStore } from '../store/sqlite.ts';
import { MessageStatus } from '../types.ts';
import { Hl7Ingest, type Hl7IngestSettings } from './ingest.ts';

const settings: Hl7IngestSettings = { input: 'ehr', timezone: 'UTC', unknownMessageTypes: 'accept', missingFieldAck: 'AR' };

function s12(controlId: string, appointmentId: string): string {
  return [
    `MSH|^~\\&|EPIC|NORTH|CARERELAY|CR|20270601101500+0200||SIU^S12^SIU_S12|${controlId}|P|2.5.1`,
    `SCH|PL-${appointmentId}|${appointmentId}||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||Booked`,
    'TQ1|1||||||20270615143000+0200|20270615150000+0200',
    'PID|1||E1^^^NORTH^MR||DOE^Jane||19800101|F',
  ].join('\r');
}

const batch = (stamp: string, ...messages: string[]): Buffer =>
  Buffer.from([`BHS|^~\\&|EPIC|NORTH|||${stamp}`, ...messages, `BTS|${messages.length}`].join('\r'), 'utf8');

/** The ACK messages of a reply (a batch reply's BHS/BTS left out), as "code MSA-2". */
const acks = (text: string | undefined) =>
  (text ?? '')
    .split(/(?=MSH\||BTS\|)/)
    .filter((a) => a.startsWith('MSH'))
    .map((a) => parseHl7(a))
    .map((a) => `${a.get('MSA-1')} ${a.get('MSA-2')}`);

/** The segments of a batch reply other than the ACKs' own: BHS and BTS. */
const envelope = (text: string | undefined) => {
  const segments = (text ?? '').split('\r');
  return { bhs: segments.find((x) => x.startsWith('BHS|'))!.split('|'), bts: segments.find((x) => x.startsWith('BTS|'))!.split('|') };
};

let dir: string;
let store: SqliteStore;
let ingest: Hl7Ingest;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-ingest-'));
  store = SqliteStore.open(path.join(dir, 'store.db'));
  ingest = new Hl7Ingest({ store, log: silentLogger });
});
afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('Hl7Ingest batches and resends', () => {
  it('a batch resent under a new batch header is a resend, not a conflict', async () => {
    const first = await ingest.handle(batch('20270601101500', s12('B1', 'A1')), settings);
    expect(acks(first.ack)).toEqual(['AA B1']);
    const again = await ingest.handle(batch('20270601111500', s12('B1', 'A1')), settings);
    expect(again).toMatchObject({ committed: true, triggers: [] });
    // The same ACK inside a new batch reply.
    const inner = (reply: string | undefined) => reply!.slice(reply!.indexOf('MSH|'), reply!.indexOf('BTS|'));
    expect(inner(again.ack)).toBe(inner(first.ack));
    expect(await store.listMessages({ status: 'quarantined' })).toEqual([]);
  });

  it('a message first sent alone, then inside a batch, is recognised as the same message', async () => {
    const alone = await ingest.handle(Buffer.from(s12('C1', 'A2'), 'utf8'), settings);
    expect(alone.ackCode).toBe('AA');
    const batched = await ingest.handle(batch('20270601101500', s12('C1', 'A2'), s12('C2', 'A3')), settings);
    expect(acks(batched.ack)).toEqual(['AA C1', 'AA C2']);
    expect(batched.triggers.map((t) => t.appointment?.id)).toEqual(['A3']);
    expect(await store.listMessages({ status: 'quarantined' })).toEqual([]);
  });

  it('the same message with LF instead of CR segment ends is a resend', async () => {
    await ingest.handle(Buffer.from(s12('L1', 'A4'), 'utf8'), settings);
    const lf = await ingest.handle(Buffer.from(s12('L1', 'A4').replace(/\r/g, '\n'), 'utf8'), settings);
    expect(lf).toMatchObject({ ackCode: 'AA', triggers: [] });
    expect(await store.listMessages({ status: 'quarantined' })).toEqual([]);
  });

  it('two different messages with one MSH-10 racing into the store: each sender gets the ACK stored with its copy', async () => {
    // Both pass the resend look-up before either commits (one group commit holds both).
    const [first, second] = await Promise.all([
      ingest.handle(Buffer.from(s12('R1', 'A7'), 'utf8'), settings),
      ingest.handle(Buffer.from(s12('R1', 'A8'), 'utf8'), settings),
    ]);
    expect([first.ackCode, second.ackCode]).toEqual(['AA', 'AE']);
    expect(second.triggers).toEqual([]);
    const ae = parseHl7(second.ack!);
    expect(ae.get('MSA-2')).toBe('R1');
    expect(ae.get('ERR-3.1')).toBe('205');
    expect(ae.get('ERR-3.2')).toContain('quarantined');

    const [quarantined] = await store.listMessages({ status: 'quarantined' });
    expect(quarantined).toMatchObject({ controlId: 'R1', ackCode: 'AE', ack: second.ack });
    const [accepted] = await store.listMessages({ status: 'accepted', controlId: 'R1' });
    expect(accepted).toMatchObject({ ackCode: 'AA', ack: first.ack });

    // The quarantined bytes sent again get the same AE, byte for byte.
    const again = await ingest.handle(Buffer.from(s12('R1', 'A8'), 'utf8'), settings);
    expect(again).toMatchObject({ ackCode: 'AE', ack: second.ack, triggers: [] });
  });

  it('a quarantined copy stored with an accept code (as earlier versions did) is still answered AE', async () => {
    const original = await ingest.handle(Buffer.from(s12('R2', 'A9'), 'utf8'), settings);
    expect(original.ackCode).toBe('AA');
    const twin = s12('R2', 'A10');
    const conflict = await store.commitInbound({
      input: 'ehr',
      format: 'hl7v2',
      sender: 'EPIC^NORTH',
      controlId: 'R2',
      messageType: 'SIU^S12',
      contentHash: createHash('sha256').update(twin).digest('hex'),
      raw: Buffer.from(twin, 'utf8'),
      status: MessageStatus.Accepted,
      ack: original.ack!,
      ackCode: 'AA',
      receivedAt: '2027-06-01T08:15:00Z',
      triggers: [],
      subjectStates: [],
    });
    expect(conflict).toMatchObject({ outcome: 'conflict', message: { status: 'quarantined', ackCode: 'AA' } });

    const resent = await ingest.handle(Buffer.from(twin, 'utf8'), settings);
    expect(resent).toMatchObject({ ackCode: 'AE', triggers: [] });
    expect(parseHl7(resent.ack!).get('ERR-3.1')).toBe('205');
    expect(await store.listMessages({ status: 'quarantined' })).toHaveLength(1);
  });

  it('a batch with no message in it is refused (AR) and kept, never answered with nothing', async () => {
    const raw = Buffer.from('BHS|^~\\&|EPIC|NORTH\rPID|1||E1||DOE^Jane\rBTS|0\r', 'utf8');
    const result = await ingest.handle(raw, settings);
    expect(result).toMatchObject({ ackCode: 'AR', committed: true });
    expect(parseHl7(result.ack!).get('MSA-3')).toContain('no message');
    const [stored] = await store.listMessages({ status: 'rejected' });
    expect((await store.getMessage(stored!.id))?.raw.equals(raw)).toBe(true);
  });

  it('an unknown MSH-18 character set gets an AR that still echoes MSH-10', async () => {
    const raw = Buffer.from(s12('K1', 'A9').replace('|P|2.5.1', '|P|2.5.1||||||KOI8-R'), 'latin1');
    const result = await ingest.handle(raw, settings);
    expect(result.ackCode).toBe('AR');
    const ack = parseHl7(result.ack!);
    expect(ack.get('MSA-2')).toBe('K1');
    expect(ack.get('MSH-5')).toBe('EPIC');
    expect(ack.get('MSA-3')).toContain('KOI8-R');
  });

  it('an empty MSH-9 is refused (AR, ERR 101 at MSH-9) and kept, not recorded as an ignored type', async () => {
    const raw = Buffer.from(s12('T9', 'A11').replace('SIU^S12^SIU_S12', ''), 'utf8');
    const result = await ingest.handle(raw, settings);
    expect(result).toMatchObject({ ackCode: 'AR', committed: true, triggers: [] });
    const ack = parseHl7(result.ack!);
    expect(ack.get('MSA-2')).toBe('T9');
    expect(ack.get('MSA-3')).toContain('MSH-9');
    expect([ack.get('ERR-2.1'), ack.get('ERR-2.3')]).toEqual(['MSH', '9']);
    expect(ack.get('ERR-3.1')).toBe('101');
    const [stored] = await store.listMessages({ controlId: 'T9' });
    expect(stored).toMatchObject({ status: 'rejected', reason: 'missing_message_type', ackCode: 'AR' });
  });
});

describe('Hl7Ingest acknowledgment modes', () => {
  const enhanced = (controlId: string, appointmentId: string, accept: string) =>
    s12(controlId, appointmentId).replace('|P|2.5.1', `|P|2.5.1|||${accept}|NE`);

  it('a batch is answered with a batch: BHS-12 echoes its BHS-11, BTS-1 counts the ACKs', async () => {
    const raw = Buffer.from(['BHS|^~\\&|EPIC|NORTH|CARERELAY|CR|20270601101500||||BATCH-7', s12('Q1', 'B1'), s12('Q2', 'B2'), 'BTS|2'].join('\r'), 'utf8');
    const result = await ingest.handle(raw, settings);
    expect(acks(result.ack)).toEqual(['AA Q1', 'AA Q2']);
    const { bhs, bts } = envelope(result.ack);
    expect(bhs.slice(2, 6)).toEqual(['CARERELAY', 'CR', 'EPIC', 'NORTH']);
    expect(bhs[11]).toBe('BATCH-7'); // BHS-12 (bhs[n] is BHS-(n+1))
    expect(bts.slice(1)).toEqual(['2']);
  });

  it('a batch reply names the messages MSH-15 kept from being acknowledged, and why', async () => {
    const raw = batch('20270601101500', enhanced('N1', 'C1', 'NE'), enhanced('N2', 'C2', 'AL'), enhanced('N3', 'C3', 'ER'), enhanced('N4', 'C4', 'SU'));
    const result = await ingest.handle(raw, settings);
    expect(result).toMatchObject({ committed: true, ackCode: 'CA' });
    expect(acks(result.ack)).toEqual(['CA N2', 'CA N4']);
    const { bhs, bts } = envelope(result.ack);
    expect(bhs[9]).toBe('2 of 4 message(s) not acknowledged, as their MSH-15 asked');
    expect(bts[1]).toBe('2');
    expect(bts[2]).toBe('N1 (MSH-15 NE), N3 (MSH-15 ER, accepted)');
  });

  it('a batch whose every message says NE still gets a reply, so a sender waiting for one does not stall', async () => {
    const result = await ingest.handle(batch('20270601101500', enhanced('Z1', 'D1', 'NE')), settings);
    expect(acks(result.ack)).toEqual([]);
    expect(envelope(result.ack).bts.slice(1)).toEqual(['0', 'Z1 (MSH-15 NE)']);
  });

  it('a long list of unacknowledged messages is cut at a whole entry with the count of the rest', async () => {
    const many = Array.from({ length: 9 }, (_, i) => enhanced(`LONG-CONTROL-ID-${i}`, `E${i}`, 'NE'));
    const result = await ingest.handle(batch('20270601101500', ...many), settings);
    const list = envelope(result.ack).bts[2]!;
    expect(list.length).toBeLessThanOrEqual(80);
    expect(list).toMatch(/^LONG-CONTROL-ID-0 \(MSH-15 NE\), .*, \+\d more$/);
  });

  it('ackMode always acknowledges a message whose MSH-15 is NE (CA), and stores that ACK', async () => {
    const standard = await ingest.handle(Buffer.from(enhanced('A1', 'F1', 'NE'), 'utf8'), settings);
    expect(standard).toMatchObject({ ack: undefined, ackCode: 'CA', committed: true });
    const always = await ingest.handle(Buffer.from(enhanced('A2', 'F2', 'NE'), 'utf8'), { ...settings, ackMode: 'always' });
    expect(always.ackCode).toBe('CA');
    expect(parseHl7(always.ack!).get('MSA-2')).toBe('A2');
    const [stored] = await store.listMessages({ controlId: 'A2' });
    expect(stored!.ack).toBe(always.ack);
    // In a batch nothing is left unacknowledged then.
    const batched = await ingest.handle(batch('20270601101500', enhanced('A3', 'F3', 'NE')), { ...settings, ackMode: 'always' });
    expect(acks(batched.ack)).toEqual(['CA A3']);
    expect(envelope(batched.ack).bts.slice(1)).toEqual(['1']);
  });
});
