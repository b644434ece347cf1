// The same real-world events told twice — as HL7v2 (SIU/ADT through Hl7Ingest) and as FHIR
// (topic notifications through FhirIngest) — must give triggers equal in type,
// appointment.*, encounter.* and patient.* (docs/trigger.md, first paragraph). Each path has its
// own store, so stored state (previous start, check-in) is built by each path itself.
//
// The HL7 and FHIR versions below say exactly the same things: same patient (PID-3 MR
// identifier ↔ identifier typed MR, PID-13 CP ↔ telecom mobile), same times with offsets,
// AIL-3 ↔ Location participant, AIP-3 ↔ Practitioner participant with display "given family",
// PV1-19 ↔ Encounter.id, PV1-2 O ↔ class AMB, PV1-44/45 ↔ period, PV1-36 ↔ dischargeDisposition.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../src/fhir/client.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { Trigger } from '../src/types.ts';
import { FhirIngest } from '../src/workers/fhir-ingest.ts';
import { Hl7Ingest } from '../src/workers/ingest.ts';
import { startFhirTestServer, type FhirTestServer } from './helpers/fhir-server.ts';
import { testPatient, topicBundle, type Json } from './helpers/fhir-notifications.ts';
import { captureLogger } from './helpers/server.ts';

const PATIENT_PID = 'PID|1||MRN-p1^^^HOSP^MR||TESTPATIENT^ALEX||19800203|F|||||+15550100^PRN^CP';
const fhirPatient = testPatient('p1');

interface Step {
  /** Event name in the table. */
  event: string;
  expectedType: string;
  hl7: string[];
  fhir: Json;
}

let seq = 0;
function msh(type: string): string {
  seq += 1;
  return `MSH|^~\\&|EHR|HOSP|CARERELAY|HOSP|20260301090000+0100||${type}|EQ-${seq}|P|2.5.1`;
}

/** SCH with filler id at SCH-2 and filler status at SCH-25. */
function sch(appointmentId: string, status: string): string {
  const fields = Array<string>(26).fill('');
  fields[0] = 'SCH';
  fields[2] = appointmentId;
  fields[25] = status;
  return fields.join('|');
}

function siu(trigger: string, appointmentId: string, status: string, start: string, end: string): string[] {
  return [
    msh(`SIU^${trigger}^SIU_S12`),
    sch(appointmentId, status),
    `TQ1|||||||${start}|${end}`,
    PATIENT_PID,
    'AIL|1||CLINIC-A',
    'AIP|1||DR1^SMITH^JOHN',
  ];
}

function appointment(id: string, status: string, start: string, end: string): Json {
  return {
    resourceType: 'Appointment',
    id,
    meta: { versionId: String(++seq) },
    status,
    start,
    end,
    participant: [
      { actor: { reference: 'Patient/p1' }, status: 'accepted' },
      { actor: { reference: 'Location/CLINIC-A' }, status: 'accepted' },
      { actor: { reference: 'Practitioner/DR1', display: 'JOHN SMITH' }, status: 'accepted' },
    ],
  };
}

function adt(trigger: string, end?: string): string[] {
  const pv1 = Array<string>(46).fill('');
  pv1[0] = 'PV1';
  pv1[1] = '1';
  pv1[2] = 'O';
  pv1[3] = 'CLINIC-A';
  pv1[19] = 'V-1';
  pv1[44] = '20260310093500+0100';
  if (end !== undefined) {
    pv1[36] = '01';
    pv1[45] = end;
  }
  return [msh(`ADT^${trigger}^ADT_A01`), `EVN|${trigger}|20260310093500+0100`, PATIENT_PID, pv1.join('|')];
}

function encounter(status: string, end?: string): Json {
  return {
    resourceType: 'Encounter',
    id: 'V-1',
    meta: { versionId: String(++seq) },
    status,
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: 'Patient/p1' },
    period: { start: '2026-03-10T09:35:00+01:00', ...(end !== undefined ? { end } : {}) },
    location: [{ location: { reference: 'Location/CLINIC-A' }, status: 'active' }],
    ...(end !== undefined ? { hospitalization: { dischargeDisposition: { coding: [{ code: '01' }] } } } : {}),
  };
}

const T1 = ['20260310093000+0100', '20260310100000+0100', '2026-03-10T09:30:00+01:00', '2026-03-10T10:00:00+01:00'] as const;
const T2 = ['20260311140000+0100', '20260311143000+0100', '2026-03-11T14:00:00+01:00', '2026-03-11T14:30:00+01:00'] as const;

const steps: Step[] = [
  { event: 'booked', expectedType: 'appointment.booked', hl7: siu('S12', 'APT-1', 'Booked', T1[0], T1[1]), fhir: appointment('APT-1', 'booked', T1[2], T1[3]) },
  { event: 'rescheduled', expectedType: 'appointment.rescheduled', hl7: siu('S13', 'APT-1', 'Booked', T2[0], T2[1]), fhir: appointment('APT-1', 'booked', T2[2], T2[3]) },
  { event: 'checked-in', expectedType: 'appointment.checked_in', hl7: siu('S14', 'APT-1', 'Started', T2[0], T2[1]), fhir: appointment('APT-1', 'checked-in', T2[2], T2[3]) },
  { event: 'booked (2)', expectedType: 'appointment.booked', hl7: siu('S12', 'APT-2', 'Booked', T1[0], T1[1]), fhir: appointment('APT-2', 'booked', T1[2], T1[3]) },
  { event: 'cancelled', expectedType: 'appointment.cancelled', hl7: siu('S15', 'APT-2', 'Cancelled', T1[0], T1[1]), fhir: appointment('APT-2', 'cancelled', T1[2], T1[3]) },
  { event: 'booked (3)', expectedType: 'appointment.booked', hl7: siu('S12', 'APT-3', 'Booked', T1[0], T1[1]), fhir: appointment('APT-3', 'booked', T1[2], T1[3]) },
  { event: 'no-show', expectedType: 'appointment.noshow', hl7: siu('S26', 'APT-3', 'Noshow', T1[0], T1[1]), fhir: appointment('APT-3', 'noshow', T1[2], T1[3]) },
  { event: 'encounter started', expectedType: 'encounter.started', hl7: adt('A04'), fhir: encounter('in-progress') },
  { event: 'encounter finished', expectedType: 'encounter.finished', hl7: adt('A03', '20260310103000+0100'), fhir: encounter('finished', '2026-03-10T10:30:00+01:00') },
];

let dir: string;
let hl7Store: SqliteStore;
let fhirStore: SqliteStore;
let server: FhirTestServer;
let hl7: Hl7Ingest;
let fhir: FhirIngest;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'carerelay-equivalence-'));
  hl7Store = SqliteStore.open(path.join(dir, 'hl7.db'));
  fhirStore = SqliteStore.open(path.join(dir, 'fhir.db'));
  server = await startFhirTestServer();
  const log = captureLogger();
  hl7 = new Hl7Ingest({ store: hl7Store, log });
  fhir = new FhirIngest(
    { input: 'ehr-fhir', subscriptions: [{ id: 'feed', heartbeatPeriodSeconds: 0 }], searchResources: ['Appointment'], searchLookbackSeconds: 60 },
    { store: fhirStore, log, client: new FhirClient({ baseUrl: server.baseUrl, maxRetries: 0 }) },
  );
});

afterAll(async () => {
  await server.close();
  await hl7Store.close();
  await fhirStore.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The fields that must be equal whichever way the event arrived. */
function comparable(t: Trigger): unknown {
  return { type: t.type, patient: t.patient, appointment: t.appointment, encounter: t.encounter };
}

describe('HL7v2 and FHIR give equal triggers for the same event', () => {
  let eventNumber = 0;
  it.each(steps)('$event', async (step) => {
    const viaHl7 = await hl7.handle(Buffer.from(step.hl7.join('\r') + '\r'), { input: 'ehr-mllp', timezone: 'UTC', unknownMessageTypes: 'accept', missingFieldAck: 'AR' });
    expect(viaHl7.ackCode, viaHl7.ack).toBe('AA');
    eventNumber += 1;
    const focus = `${server.baseUrl}/${String(step.fhir.resourceType)}/${String(step.fhir.id)}`;
    const bundle = topicBundle({
      subscription: `${server.baseUrl}/Subscription/feed`,
      type: 'event-notification',
      events: [{ number: eventNumber, focus, resource: step.fhir }],
      extraEntries: [{ fullUrl: `${server.baseUrl}/Patient/p1`, resource: fhirPatient }],
    });
    const viaFhir = await fhir.handle(Buffer.from(JSON.stringify(bundle)));
    if (viaFhir.kind !== 'accepted') throw new Error(JSON.stringify(viaFhir));

    expect(viaHl7.triggers.map((t) => t.type)).toEqual([step.expectedType]);
    expect(viaFhir.triggers.map(comparable)).toEqual(viaHl7.triggers.map(comparable));
  });

  it('needed no fetch: both paths had everything in the message', () => {
    expect(server.requests).toEqual([]);
  });
});
