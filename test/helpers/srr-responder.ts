// A scheduling system's MLLP listener for tests (HL7 v2.5 chapter 10), on 127.0.0.1 with an
// ephemeral port: it takes SRM^S03 (modify: here, the patient confirmed) and SRM^S04 (cancel)
// requests and answers each with an SRR whose MSA-2 is the request's MSH-10 and whose MSA-1
// says what it did — AA done, AE denied (an appointment it does not know, one it was told to
// refuse), AR refused (not an SRM^S03/S04, or an ARQ without ARQ-2 or without the persons v2.5
// requires in ARQ-15 and ARQ-19). Framing and parsing are written here independently of
// src/hl7v2, so a bug there cannot hide behind the same bug here.
//
// SRM^S01 (request new appointment booking, §10.3.1) books a slot it offers (`offer(start)`,
// start as AIS-4, YYYYMMDDHHMMSS+0000): it checks the documented structure — MSH, ARQ (ARQ-1
// placer appointment id required, ARQ-2 empty: the filler assigns it, ARQ-15/19 persons), PID,
// then RGS followed by the resources, AIS required with AIS-1 set id, AIS-3 the service and
// AIS-4 the start; AIL/AIP after RGS with their id in field 3 — else AR. A slot it does not
// offer (or no longer: it was booked) is AE. Booked: SRR^S01 with MSA AA and SCH (SCH-1 the
// placer id, SCH-2 the filler id it made, FILL-<n>); the same placer id again is answered with
// the same booking (it books once).
//
// It can be told to hang (read a request, never answer), to answer a stale SRR (another MSA-2)
// before the right one, and to stop listening (connections refused) until resumed.
import net from 'node:net';
import { Arrivals } from './arrivals.ts';

const START = 0x0b;
const END = Buffer.from([0x1c, 0x0d]);

export interface ReceivedSrm {
  raw: string;
  /** MSH-9 as sent, e.g. SRM^S03^SRM_S01. */
  type: string;
  controlId: string;
  /** ARQ fields by number (1-based). */
  arq: Record<number, string>;
  /** PID-3 as sent. */
  patient: string;
  /** MSA-1 answered ('' when none). */
  answered: string;
}

export interface ScheduledAppointment {
  confirmed: boolean;
  cancelled: boolean;
  /** ARQ-6.1 of the cancellation. */
  cancelReason?: string;
}

export interface BookedSlot {
  /** ARQ-1.1 */
  placerId: string;
  filler: string;
  /** AIS-4 */
  start: string;
  /** AIS-3 as sent. */
  service: string;
  /** PID-3, AIP-3, AIL-3 as sent. */
  patient: string;
  practitioner?: string;
  location?: string;
}

export interface SrrResponder {
  readonly port: number;
  readonly received: ReceivedSrm[];
  /** Slots it made by S01. */
  readonly booked: BookedSlot[];
  /** Offers a slot starting at `start` (AIS-4 form) for booking. */
  offer(start: string): void;
  /** Appointments it holds, by filler id (ARQ-2). */
  readonly appointments: Map<string, ScheduledAppointment & { refuse?: boolean }>;
  hangNext(): void;
  staleNext(): void;
  /** Stops listening: connections are refused until resume(). */
  pause(): Promise<void>;
  resume(): Promise<void>;
  waitFor(n: number): Promise<void>;
  close(): Promise<void>;
}

function fields(segment: string): string[] {
  return segment.split('|');
}

export async function startSrrResponder(): Promise<SrrResponder> {
  const received: ReceivedSrm[] = [];
  const appointments = new Map<string, ScheduledAppointment & { refuse?: boolean }>();
  const arrivals = new Arrivals();
  const sockets = new Set<net.Socket>();
  let hang = 0;
  let stale = 0;

  /** What each control id was answered: a resend of one (same MSH-10) gets the same answer, and nothing is done twice. */
  const answered = new Map<string, string>();
  const replies = new Map<string, string>();
  const free = new Set<string>();
  const booked: BookedSlot[] = [];
  /** An S01: its structure, then the booking (AA with the SCH), or AE. */
  const book = (segments: string[], arq: Record<number, string>, patient: string): { code: string; sch?: string } => {
    const names = segments.map((s) => s.slice(0, 3));
    const rgs = names.indexOf('RGS');
    const ais = segments.filter((s) => s.startsWith('AIS|')).map(fields);
    const resources = ['AIS', 'AIL', 'AIP', 'AIG'];
    const ordered = names[0] === 'MSH' && names[1] === 'ARQ' && rgs > names.indexOf('PID') && names.every((n, i) => !resources.includes(n) || i > rgs);
    const placerId = (arq[1] ?? '').split('^')[0] ?? '';
    if (!ordered || placerId === '' || arq[2] !== undefined || !person(arq[15]) || !person(arq[19]) || patient === '') return { code: 'AR' };
    if (ais.length === 0 || ais.some((f) => f[1] === undefined || f[1] === '' || (f[3] ?? '') === '' || (f[4] ?? '') === '')) return { code: 'AR' };
    const located = segments.filter((s) => s.startsWith('AIL|') || s.startsWith('AIP|')).map(fields);
    if (located.some((f) => (f[3] ?? '') === '')) return { code: 'AR' };
    const again = booked.find((b) => b.placerId === placerId);
    const start = ais[0]![4]!;
    if (again === undefined && !free.has(start)) return { code: 'AE' };
    const made = again ?? {
      placerId,
      filler: `FILL-${booked.length + 1}`,
      start,
      service: ais[0]![3]!,
      patient,
      ...(located.find((f) => f[0] === 'AIP') ? { practitioner: located.find((f) => f[0] === 'AIP')![3]! } : {}),
      ...(located.find((f) => f[0] === 'AIL') ? { location: located.find((f) => f[0] === 'AIL')![3]! } : {}),
    };
    if (again === undefined) {
      free.delete(start);
      booked.push(made);
      appointments.set(made.filler, { confirmed: false, cancelled: false });
    }
    return { code: 'AA', sch: `SCH|${placerId}|${made.filler}` };
  };
  const person = (value: string | undefined) => value !== undefined && value.replace(/\^/g, '') !== '';
  const answer = (raw: string): { reply?: string; record: ReceivedSrm } => {
    const segments = raw.split('\r').filter((s) => s !== '');
    const msh = fields(segments.find((s) => s.startsWith('MSH|')) ?? 'MSH|');
    // MSH-1 is the field separator itself: MSH-n is index n - 1 of the split.
    const type = msh[8] ?? '';
    const controlId = msh[9] ?? '';
    const arqFields = fields(segments.find((s) => s.startsWith('ARQ|')) ?? 'ARQ');
    const arq: Record<number, string> = {};
    arqFields.forEach((value, i) => {
      if (i > 0 && value !== '') arq[i] = value;
    });
    const pid = fields(segments.find((s) => s.startsWith('PID|')) ?? 'PID');
    const record: ReceivedSrm = { raw, type, controlId, arq, patient: pid[3] ?? '', answered: '' };
    const event = /^SRM\^(S0[134])\^SRM_S01$/.exec(type)?.[1];
    const earlier = answered.get(controlId);
    if (earlier !== undefined) {
      record.answered = earlier;
      return { reply: earlier === '' ? undefined : replies.get(controlId), record };
    }
    let code = 'AA';
    let sch: string | undefined;
    if (event === 'S01') ({ code, sch } = book(segments, arq, record.patient));
    else if (event === undefined || arq[2] === undefined || !person(arq[15]) || !person(arq[19]) || !segments.some((s) => s.startsWith('RGS|'))) code = 'AR';
    else {
      const appointment = appointments.get(arq[2]);
      if (appointment === undefined || appointment.refuse || appointment.cancelled) code = 'AE';
      else if (event === 'S03') appointment.confirmed = true;
      else {
        appointment.cancelled = true;
        appointment.cancelReason = (arq[6] ?? '').split('^')[0];
      }
    }
    record.answered = code;
    answered.set(controlId, code);
    replies.set(controlId, srr(event, controlId, code, sch));
    return { reply: replies.get(controlId), record };
  };
  const srr = (event: string | undefined, controlId: string, code: string, sch?: string) =>
    `MSH|^~\\&|SCHED|HOSP|CARERELAY|CARERELAY|20300101000000||SRR^${event ?? 'S03'}^SRR_S01|SRR-${controlId}|P|2.5\rMSA|${code}|${controlId}\r${sch !== undefined ? `${sch}\r` : ''}`;

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const start = buffer.indexOf(START);
        const end = buffer.indexOf(END, start + 1);
        if (start < 0 || end < 0) break;
        const raw = buffer.subarray(start + 1, end).toString('utf8');
        buffer = buffer.subarray(end + END.length);
        const { reply, record } = answer(raw);
        received.push(record);
        arrivals.arrive();
        if (hang > 0) {
          hang--;
          // Never answered: a resend is processed as new.
          answered.delete(record.controlId);
          record.answered = '';
          continue;
        }
        if (stale > 0) {
          stale--;
          socket.write(Buffer.concat([Buffer.from([START]), Buffer.from('MSH|^~\\&|SCHED|HOSP|||20300101000000||SRR^S03^SRR_S01|OLD|P|2.5\rMSA|AA|SOMETHING-ELSE\r'), END]));
        }
        if (reply !== undefined) socket.write(Buffer.concat([Buffer.from([START]), Buffer.from(reply), END]));
      }
    });
  });
  const listen = (port: number) => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  await listen(0);
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    received,
    booked,
    offer: (start) => void free.add(start),
    appointments,
    hangNext: () => void hang++,
    staleNext: () => void stale++,
    async pause() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
    resume: () => listen(port),
    waitFor: (n) => arrivals.waitFor(n),
    async close() {
      for (const s of sockets) s.destroy();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
