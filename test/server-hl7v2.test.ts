// The running server end to end, HL7v2 over real MLLP sockets and HTTP (docs/architecture.md
// invariant 1; docs/reliability.md promises 1-3 and "Bad inputs"). One in-process server on a
// fresh temp data dir for the whole file; each test uses its own MSH-10s and appointment ids.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { MllpFramer, encodeFrame } from '../src/hl7v2/mllp.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import type { SqliteStore } from '../src/store/sqlite.ts';
import type { Trigger } from '../src/types.ts';
import {
  adtMessage,
  hl7Field,
  mllpExchange,
  siuMessage,
  startServer,
  writeConfigDir,
  type InProcessServer,
  type TestConfigDir,
} from './helpers/server.ts';

let config: TestConfigDir;
let server: InProcessServer;
let port: number;

beforeAll(async () => {
  config = writeConfigDir();
  server = await startServer(config);
  port = server.mllpPort();
});

afterAll(async () => {
  await server?.stop();
  config?.remove();
});

interface MessageSummary {
  id: string;
  controlId: string;
  sender: string;
  messageType: string;
  status: string;
  ackCode: string;
  reason?: string;
  triggerIds: string[];
}

async function api<T>(path: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${server.httpPort}${path}`);
  expect(res.status, `GET ${path}`).toBe(200);
  return (await res.json()) as T;
}

async function messagesWith(controlId: string): Promise<MessageSummary[]> {
  return (await api<{ items: MessageSummary[] }>(`/api/messages?controlId=${encodeURIComponent(controlId)}`)).items;
}

async function triggersOf(appointmentId: string): Promise<Trigger[]> {
  return (await api<{ items: Trigger[] }>(`/api/triggers?appointmentId=${encodeURIComponent(appointmentId)}`)).items;
}

async function sendOnce(message: string): Promise<Buffer> {
  const client = new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 10_000 });
  await client.connect();
  try {
    return await client.send(message);
  } finally {
    await client.close();
  }
}

function msa(ack: Buffer | string): { code: string; controlId: string; text: string } {
  const m = parseHl7(typeof ack === 'string' ? ack : ack.toString('utf8'));
  return { code: m.get('MSA-1'), controlId: m.get('MSA-2'), text: m.get('MSA-3') };
}

function sqliteDb(): SqliteStore['db'] {
  return (server.store as SqliteStore).db;
}

describe('durable HL7v2 ingest over MLLP', () => {
  it('answers AA to an S12 only with the message and its trigger stored', async () => {
    const ack = await sendOnce(siuMessage({ controlId: 'E2E-S12-1', appointmentId: 'AP-E2E-1' }));
    expect(msa(ack)).toMatchObject({ code: 'AA', controlId: 'E2E-S12-1' });
    const [stored, ...others] = await messagesWith('E2E-S12-1');
    expect(others).toHaveLength(0);
    expect(stored).toMatchObject({ status: 'accepted', ackCode: 'AA', messageType: 'SIU^S12', sender: 'EPIC^NORTHCLINIC' });
    const triggers = await triggersOf('AP-E2E-1');
    expect(triggers.map((t) => t.type)).toEqual(['appointment.booked']);
    expect(stored!.triggerIds).toEqual([triggers[0]!.id]);
    // The stored ACK is the one that was sent.
    const full = await api<{ ack: string }>(`/api/messages/${stored!.id}`);
    expect(full.ack).toBe(ack.toString('utf8'));
  });

  it('answers a resend of the same bytes with the identical ACK and stores nothing new', async () => {
    const message = siuMessage({ controlId: 'E2E-RESEND-1', appointmentId: 'AP-E2E-2' });
    const first = await sendOnce(message);
    const again = await sendOnce(message);
    expect(msa(first).code).toBe('AA');
    // Byte for byte: same MSA-2 and the same ACK MSH-10 / MSH-7.
    expect(again.equals(first)).toBe(true);
    expect(hl7Field(again, 'MSH', 10)).toBe(hl7Field(first, 'MSH', 10));
    expect(await messagesWith('E2E-RESEND-1')).toHaveLength(1);
    expect(await triggersOf('AP-E2E-2')).toHaveLength(1);
  });

  it('collapses 10 parallel sends of a new message on 10 connections into one trigger and ten identical ACKs', async () => {
    const message = siuMessage({ controlId: 'E2E-PAR-1', appointmentId: 'AP-E2E-3' });
    const clients = Array.from({ length: 10 }, () => new MllpClient({ host: '127.0.0.1', port, ackTimeoutMs: 10_000 }));
    await Promise.all(clients.map((c) => c.connect()));
    try {
      const acks = await Promise.all(clients.map((c) => c.send(message)));
      expect(msa(acks[0]!).code).toBe('AA');
      for (const ack of acks) expect(ack.toString('utf8')).toBe(acks[0]!.toString('utf8'));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    expect(await messagesWith('E2E-PAR-1')).toHaveLength(1);
    expect(await triggersOf('AP-E2E-3')).toHaveLength(1);
  });

  it('quarantines the same MSH-10 with different bytes (AE) and leaves the original untouched', async () => {
    const original = siuMessage({ controlId: 'E2E-CONFLICT-1', appointmentId: 'AP-E2E-4' });
    const conflicting = siuMessage({ controlId: 'E2E-CONFLICT-1', appointmentId: 'AP-E2E-4', start: new Date('2030-04-01T08:00:00Z') });
    const firstAck = await sendOnce(original);
    expect(msa(firstAck).code).toBe('AA');
    const conflictAck = await sendOnce(conflicting);
    expect(msa(conflictAck)).toMatchObject({ code: 'AE', controlId: 'E2E-CONFLICT-1' });
    // MSA-3 is cut at 80 characters; ERR-3 carries the whole reason (205: duplicate key).
    const err = parseHl7(conflictAck.toString('utf8'));
    expect(err.get('ERR-3.1')).toBe('205');
    expect(err.get('ERR-3.2')).toContain('quarantined');

    const quarantined = (await api<{ items: MessageSummary[] }>('/api/messages?status=quarantined')).items.filter(
      (m) => m.controlId === 'E2E-CONFLICT-1',
    );
    expect(quarantined).toHaveLength(1);
    expect(quarantined[0]!.triggerIds).toEqual([]);
    const kept = await api<{ raw: string }>(`/api/messages/${quarantined[0]!.id}`);
    expect(kept.raw).toBe(conflicting);

    const originals = (await messagesWith('E2E-CONFLICT-1')).filter((m) => m.status !== 'quarantined');
    expect(originals).toHaveLength(1);
    expect(originals[0]).toMatchObject({ status: 'accepted', ackCode: 'AA' });
    expect((await api<{ raw: string }>(`/api/messages/${originals[0]!.id}`)).raw).toBe(original);
    // Still exactly the original's trigger, with the original start.
    const triggers = await triggersOf('AP-E2E-4');
    expect(triggers).toHaveLength(1);
    expect(triggers[0]!.appointment?.start).toBe('2030-03-16T13:30:00+00:00');
    // The original's resend still gets its own AA.
    expect((await sendOnce(original)).equals(firstAck)).toBe(true);
  });

  it('turns an S14 with a new TQ1 start for a stored appointment into appointment.rescheduled with previousStart', async () => {
    const booked = siuMessage({ controlId: 'E2E-RS-1', appointmentId: 'AP-E2E-5', start: new Date('2030-05-10T08:00:00Z') });
    const moved = siuMessage({
      controlId: 'E2E-RS-2',
      appointmentId: 'AP-E2E-5',
      event: 'S14',
      start: new Date('2030-05-12T14:00:00Z'),
      sentAt: new Date('2030-03-05T08:00:00Z'),
    });
    expect(msa(await sendOnce(booked)).code).toBe('AA');
    expect(msa(await sendOnce(moved)).code).toBe('AA');
    const [latest, first] = await triggersOf('AP-E2E-5');
    expect(first!.type).toBe('appointment.booked');
    expect(latest!.type).toBe('appointment.rescheduled');
    expect(latest!.appointment).toMatchObject({ start: '2030-05-12T14:00:00+00:00', previousStart: '2030-05-10T08:00:00+00:00' });
  });

  it('sends CA in enhanced mode (MSH-15 AL) and nothing for MSH-15 NE, on a connection that stays open', async () => {
    const quiet = siuMessage({ controlId: 'E2E-ENH-NE', appointmentId: 'AP-E2E-6', acceptAck: 'NE', applicationAck: 'NE' });
    const loud = siuMessage({ controlId: 'E2E-ENH-AL', appointmentId: 'AP-E2E-7', acceptAck: 'AL', applicationAck: 'NE' });
    // Both frames in one write: the first frame back must be the AL message's commit ACK.
    const socket = net.connect({ host: '127.0.0.1', port });
    try {
      const framer = new MllpFramer({});
      const first = await new Promise<Buffer>((resolve, reject) => {
        socket.on('data', (chunk: Buffer) => {
          const frames = framer.push(chunk);
          if (frames.length > 0) resolve(frames[0]!);
        });
        socket.on('error', reject);
        socket.on('close', () => reject(new Error('connection closed without an ACK')));
        socket.on('connect', () => socket.write(Buffer.concat([encodeFrame(quiet), encodeFrame(loud)])));
      });
      expect(msa(first)).toMatchObject({ code: 'CA', controlId: 'E2E-ENH-AL' });
    } finally {
      socket.destroy();
    }
    // Both committed, the quiet one with an empty stored ACK.
    expect((await messagesWith('E2E-ENH-NE'))[0]).toMatchObject({ status: 'accepted', ackCode: 'CA' });
    expect((await messagesWith('E2E-ENH-AL'))[0]).toMatchObject({ status: 'accepted', ackCode: 'CA' });
    expect(await triggersOf('AP-E2E-6')).toHaveLength(1);
  });
});

describe('acknowledgment modes over MLLP', () => {
  it('ackMode always answers a message whose MSH-15 is NE, so a sender that waits for an ACK does not stall', async () => {
    const always = writeConfigDir({ ackMode: 'always' });
    const running = await startServer(always);
    try {
      const client = new MllpClient({ host: '127.0.0.1', port: running.mllpPort(), ackTimeoutMs: 10_000 });
      await client.connect();
      try {
        const quiet = siuMessage({ controlId: 'E2E-ALWAYS-NE', appointmentId: 'AP-E2E-ALWAYS', acceptAck: 'NE', applicationAck: 'NE' });
        expect(msa(await client.send(quiet))).toMatchObject({ code: 'CA', controlId: 'E2E-ALWAYS-NE' });
      } finally {
        await client.close();
      }
    } finally {
      await running.stop();
      always.remove();
    }
  });

  it('a batch gets a batch reply that the client matches on BHS-12, naming the message MSH-15 NE left unacknowledged', async () => {
    const quiet = siuMessage({ controlId: 'E2E-BATCH-NE', appointmentId: 'AP-E2E-B1', acceptAck: 'NE', applicationAck: 'NE' });
    const loud = siuMessage({ controlId: 'E2E-BATCH-AL', appointmentId: 'AP-E2E-B2', acceptAck: 'AL', applicationAck: 'NE' });
    const batch = `BHS|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300301091500||||E2E-BATCH-1\r${quiet}${loud}BTS|2\r`;
    const reply = (await sendOnce(batch)).toString('utf8');
    const segments = reply.split('\r');
    expect(hl7Field(reply, 'BHS', 12)).toBe('E2E-BATCH-1');
    expect(segments.filter((x) => x.startsWith('MSA|'))).toEqual([expect.stringMatching(/^MSA\|CA\|E2E-BATCH-AL/)]);
    expect(hl7Field(reply, 'BTS', 2)).toBe('E2E-BATCH-NE (MSH-15 NE)');
    expect((await messagesWith('E2E-BATCH-NE'))[0]).toMatchObject({ status: 'accepted' });
  });
});

describe('bad inputs get the ACK docs/reliability.md names', () => {
  const S12 = siuMessage({ controlId: 'E2E-BAD-TEMPLATE', appointmentId: 'AP-E2E-BAD' });
  const cases: Array<{ name: string; payload: string | Buffer; code: string; reason: string; status: string; text: RegExp }> = [
    {
      name: 'no MSH segment',
      payload: S12.slice(S12.indexOf('SCH|')).replace('AP-E2E-BAD', 'AP-E2E-NOMSH'),
      code: 'AR',
      reason: 'no_msh',
      status: 'rejected',
      text: /MSH/,
    },
    {
      name: 'wrong delimiters (MSH-2 too short)',
      payload: S12.replace('MSH|^~\\&|', 'MSH|^~|').replace('E2E-BAD-TEMPLATE', 'E2E-BAD-DELIM'),
      code: 'AR',
      reason: 'bad_delimiters',
      status: 'rejected',
      text: /MSH-2/,
    },
    {
      name: 'unknown MSH-18 charset',
      payload: Buffer.from(
        S12.replace('|2.5.1', '|2.5.1||||||KLINGON-1').replace('E2E-BAD-TEMPLATE', 'E2E-BAD-CHARSET'),
        'latin1',
      ),
      code: 'AR',
      reason: 'unknown_charset',
      status: 'rejected',
      text: /MSH-18/,
    },
    {
      name: 'missing MSH-10',
      payload: S12.replace('|E2E-BAD-TEMPLATE|', '||'),
      code: 'AR',
      reason: 'missing_control_id',
      status: 'rejected',
      text: /MSH-10/,
    },
    {
      name: 'empty MSH-9 (message type)',
      payload: S12.replace('SIU^S12^SIU_S12', '').replace('E2E-BAD-TEMPLATE', 'E2E-BAD-NOTYPE'),
      code: 'AR',
      reason: 'missing_message_type',
      status: 'rejected',
      text: /MSH-9/,
    },
    {
      name: 'SIU without an appointment id',
      payload: S12.replace('E2E-BAD-TEMPLATE', 'E2E-BAD-NOAPPT').replace('SCH|PL-AP-E2E-BAD|AP-E2E-BAD|', 'SCH|||'),
      code: 'AR',
      reason: 'missing_field',
      status: 'rejected',
      text: /SCH-/,
    },
    {
      name: 'ADT without a patient id',
      payload: adtMessage({ controlId: 'E2E-BAD-NOPID', patientId: '' }),
      code: 'AR',
      reason: 'missing_field',
      status: 'rejected',
      text: /PID-3/,
    },
    {
      name: 'unknown message type (MFN^M02)',
      payload: 'MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300301070000+0000||MFN^M02^MFN_M02|E2E-BAD-MFN|P|2.5.1\rMFI|PRA||UPD\r',
      code: 'AA',
      reason: 'unsupported',
      status: 'ignored',
      text: /^$/,
    },
  ];

  it.each(cases)('$name → $code, recorded as $status with the raw bytes kept', async ({ payload, code, reason, status, text }) => {
    const ack = await mllpExchange(port, payload);
    expect(ack, 'an ACK frame').not.toBeNull();
    const answer = msa(ack!);
    expect(answer.code).toBe(code);
    expect(answer.text).toMatch(text);
    if (code !== 'AA') {
      // ERR-3 carries the same reason (HL7 table 0357 code + text).
      expect(parseHl7(ack!.toString('utf8')).get('ERR-3.2')).toMatch(text);
    }
    // Find the stored record by its ACK (unparseable messages have no MSH-10 to search by).
    const items = (await api<{ items: MessageSummary[] }>(`/api/messages?status=${status}&limit=1000`)).items;
    const stored = [];
    for (const item of items) {
      const full = await api<{ ack: string; raw: string; rawBase64: string; reason?: string }>(`/api/messages/${item.id}`);
      if (full.ack === ack!.toString('utf8')) stored.push(full);
    }
    expect(stored).toHaveLength(1);
    expect(Buffer.from(stored[0]!.rawBase64, 'base64').equals(Buffer.isBuffer(payload) ? payload : Buffer.from(payload))).toBe(true);
    expect(stored[0]!.reason).toContain(reason);
  });

  it('names the missing field and keeps the raw text of an SIU without an appointment id (GET /api/messages/:id)', async () => {
    const payload = siuMessage({ controlId: 'E2E-BAD-NOAPPT-2', appointmentId: 'X' }).replace('SCH|PL-X|X|', 'SCH|||');
    const ack = (await mllpExchange(port, payload))!;
    expect(msa(ack).code).toBe('AR');
    expect(parseHl7(ack.toString('utf8')).get('ERR-3.2')).toContain('SCH-2');
    const [stored] = await messagesWith('E2E-BAD-NOAPPT-2');
    expect(stored).toMatchObject({ status: 'rejected', ackCode: 'AR', triggerIds: [] });
    const full = await api<{ raw: string; ack: string }>(`/api/messages/${stored!.id}`);
    expect(full.raw).toBe(payload);
    expect(full.ack).toBe(ack.toString('utf8'));
  });
});

describe('HL7v2 over HTTP', () => {
  it('returns the ACK as the body of POST /ingest/hl7v2/<name>, after the commit', async () => {
    const message = siuMessage({ controlId: 'E2E-HTTP-1', appointmentId: 'AP-E2E-HTTP-1' });
    const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/ehr-http`, {
      method: 'POST',
      headers: { 'content-type': 'x-application/hl7-v2+er7' },
      body: message,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^x-application\/hl7-v2\+er7/);
    const body = await res.text();
    expect(msa(body)).toMatchObject({ code: 'AA', controlId: 'E2E-HTTP-1' });
    const [stored] = await messagesWith('E2E-HTTP-1');
    expect(stored).toMatchObject({ status: 'accepted', ackCode: 'AA' });
    expect(await triggersOf('AP-E2E-HTTP-1')).toHaveLength(1);
    // The same bytes over MLLP are a resend of the same message: same ACK.
    expect((await sendOnce(message)).toString('utf8')).toBe(body);
  });
});

describe('a store that cannot commit never gives AA', () => {
  it('read-only store: AE over MLLP, 503 + Retry-After over HTTP, no ACK for an unparseable frame; resends land once after recovery', async () => {
    const message = siuMessage({ controlId: 'E2E-RO-1', appointmentId: 'AP-E2E-RO-1' });
    const viaHttp = siuMessage({ controlId: 'E2E-RO-2', appointmentId: 'AP-E2E-RO-2' });
    // SQLite's query_only refuses every write on this connection (SQLITE_READONLY), as a
    // read-only file would, while reads keep working.
    sqliteDb().pragma('query_only = ON');
    try {
      const ack = await sendOnce(message);
      expect(msa(ack)).toMatchObject({ code: 'AE', controlId: 'E2E-RO-1' });
      expect(parseHl7(ack.toString('utf8')).get('ERR-3.1')).toBe('207');

      const res = await fetch(`http://127.0.0.1:${server.httpPort}/ingest/hl7v2/ehr-http`, { method: 'POST', body: viaHttp });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(msa(await res.text()).code).toBe('AE');

      // An unparseable frame cannot be recorded either: the connection closes without an ACK
      // (never an empty answer that leaves the sender waiting).
      expect(await mllpExchange(port, 'GARBAGE-NO-MSH\r')).toBeNull();
      expect(server.logs.some((l) => l.message === 'ingest.commit_failed')).toBe(true);
    } finally {
      sqliteDb().pragma('query_only = OFF');
    }
    expect(await messagesWith('E2E-RO-1')).toHaveLength(0);

    expect(msa(await sendOnce(message)).code).toBe('AA');
    expect(msa(await sendOnce(message)).code).toBe('AA');
    expect(msa(await sendOnce(viaHttp)).code).toBe('AA');
    expect(await messagesWith('E2E-RO-1')).toHaveLength(1);
    expect(await messagesWith('E2E-RO-2')).toHaveLength(1);
    expect(await triggersOf('AP-E2E-RO-1')).toHaveLength(1);
  });

  it('full disk (max_page_count reached): AE, then the resend lands once when space is back', async () => {
    // A 64 KiB note needs new (overflow) pages, which the capped file cannot grow into. Random
    // text: the store compresses raw messages, and a repeated sentence would shrink to nothing.
    const note = `NTE|1||${randomBytes(48_000).toString('base64')}\r`;
    const message = siuMessage({ controlId: 'E2E-FULL-1', appointmentId: 'AP-E2E-FULL-1', extra: note });
    const db = sqliteDb();
    const pages = db.pragma('page_count', { simple: true }) as number;
    const previousMax = db.pragma('max_page_count', { simple: true }) as number;
    db.pragma(`max_page_count = ${pages}`);
    try {
      const ack = await sendOnce(message);
      expect(msa(ack)).toMatchObject({ code: 'AE', controlId: 'E2E-FULL-1' });
    } finally {
      db.pragma(`max_page_count = ${previousMax}`);
    }
    expect(await messagesWith('E2E-FULL-1')).toHaveLength(0);
    const ack = await sendOnce(message);
    expect(msa(ack).code).toBe('AA');
    expect((await sendOnce(message)).equals(ack)).toBe(true);
    expect(await messagesWith('E2E-FULL-1')).toHaveLength(1);
    expect(await triggersOf('AP-E2E-FULL-1')).toHaveLength(1);
  });
});
