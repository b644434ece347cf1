// Builders of FHIR notification bodies and synthetic resources for tests and benchmarks.
// Shapes follow the Subscriptions R5 Backport IG examples (R4: a `history` Bundle whose
// entry[0] is a Parameters "backport-subscription-status-r4"). All data is synthetic.

import type { TestFhirResource } from './fhir-server.ts';

export type Json = Record<string, unknown>;

export interface TestEvent {
  number: number;
  /** Instant; default 2026-03-02T09:00:00Z + number seconds. */
  timestamp?: string;
  /** Reference to the focus (absolute or relative). Absent: empty payload. */
  focus?: string;
  additionalContext?: string[];
  /** Included as the focus entry's resource (full-resource payload). */
  resource?: Json;
  /** US Core Patient Data Feed trigger codings. */
  triggers?: Array<{ system: string; code: string }>;
}

export interface TopicBundleOptions {
  /** Subscription reference, e.g. http://127.0.0.1:1234/fhir/Subscription/sub1 */
  subscription: string;
  type: 'handshake' | 'heartbeat' | 'event-notification' | 'query-status' | 'query-event';
  status?: string;
  topic?: string;
  eventsSinceSubscriptionStart?: number;
  events?: TestEvent[];
  /** Extra entries (e.g. a Patient in full-resource payloads). */
  extraEntries?: Json[];
  /** Bundle.timestamp; default the last event's timestamp, else eventTime(0). */
  timestamp?: string;
}

const PROFILE_STATUS = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4';
const PROFILE_NOTIFICATION =
  'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4';

export function eventTime(n: number): string {
  return new Date(Date.UTC(2026, 2, 2, 9, 0, 0) + n * 1000).toISOString();
}

/** An R4 Backport notification Bundle. */
export function topicBundle(options: TopicBundleOptions): Json {
  const events = options.events ?? [];
  const parameter: Json[] = [
    { name: 'subscription', valueReference: { reference: options.subscription } },
    { name: 'topic', valueCanonical: options.topic ?? 'http://example.org/SubscriptionTopic/appointment-changed' },
    { name: 'status', valueCode: options.status ?? 'active' },
    { name: 'type', valueCode: options.type },
  ];
  const since = options.eventsSinceSubscriptionStart ?? (events.length > 0 ? Math.max(...events.map((e) => e.number)) : 0);
  parameter.push({ name: 'events-since-subscription-start', valueString: String(since) });
  const entries: Json[] = [];
  for (const e of events) {
    const part: Json[] = [
      { name: 'event-number', valueString: String(e.number) },
      { name: 'timestamp', valueInstant: e.timestamp ?? eventTime(e.number) },
    ];
    if (e.focus !== undefined) {
      part.push({ name: 'focus', valueReference: { reference: e.focus } });
      const entry: Json = { fullUrl: e.focus, request: { method: 'PUT', url: e.focus } };
      if (e.resource !== undefined) entry.resource = e.resource;
      entries.push(entry);
    }
    for (const ctx of e.additionalContext ?? []) part.push({ name: 'additional-context', valueReference: { reference: ctx } });
    for (const t of e.triggers ?? []) part.push({ name: 'trigger', valueCoding: t });
    parameter.push({ name: 'notification-event', part });
  }
  return {
    resourceType: 'Bundle',
    meta: { profile: [PROFILE_NOTIFICATION] },
    type: 'history',
    timestamp: options.timestamp ?? (events.length > 0 ? (events.at(-1)!.timestamp ?? eventTime(events.at(-1)!.number)) : eventTime(0)),
    entry: [
      {
        fullUrl: 'urn:uuid:6a3f4c1e-8d2b-4f7a-9c0e-1b2d3e4f5a6b',
        resource: { resourceType: 'Parameters', meta: { profile: [PROFILE_STATUS] }, parameter },
        request: { method: 'GET', url: `${options.subscription}/$status` },
        response: { status: '200' },
      },
      ...entries,
      ...(options.extraEntries ?? []),
    ],
  };
}

export function testPatient(id: string, overrides: Json = {}): TestFhirResource {
  return {
    resourceType: 'Patient',
    id,
    identifier: [
      {
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v2-0203', code: 'MR' }] },
        system: 'HOSP',
        value: `MRN-${id}`,
      },
    ],
    name: [{ family: 'TESTPATIENT', given: ['ALEX'] }],
    gender: 'female',
    birthDate: '1980-02-03',
    telecom: [{ system: 'phone', use: 'mobile', value: '+15550100' }],
    ...overrides,
  };
}

export function testAppointment(id: string, patientRef: string, overrides: Json = {}): TestFhirResource {
  return {
    resourceType: 'Appointment',
    id,
    status: 'booked',
    start: '2026-03-10T09:30:00+01:00',
    end: '2026-03-10T10:00:00+01:00',
    participant: [
      { actor: { reference: patientRef }, status: 'accepted' },
      { actor: { reference: 'Location/CLINIC-A' }, status: 'accepted' },
    ],
    ...overrides,
  };
}

export function testEncounter(id: string, patientRef: string, overrides: Json = {}): TestFhirResource {
  return {
    resourceType: 'Encounter',
    id,
    status: 'in-progress',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: patientRef },
    period: { start: '2026-03-10T09:35:00+01:00' },
    ...overrides,
  };
}
