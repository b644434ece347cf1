// Offline FHIR files (carerelay normalize): bare resources with contained or bundled patients,
// and Bundles of every type that holds resources, on the official R4 examples
// (fixtures/corpus/fhir/r4-spec, from hl7.fhir.r4.examples 4.0.1, CC0).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { normalizeFhirDocument, readFhirDocument, type DocumentNormalizeResult } from './document.ts';
import { FhirNotificationError, type FhirResource } from './notification.ts';

const SPEC = fileURLToPath(new URL('../../fixtures/corpus/fhir/r4-spec/', import.meta.url));
const spec = (name: string): FhirResource => JSON.parse(readFileSync(`${SPEC}${name}.json`, 'utf8')) as FhirResource;
const OPTIONS = { receivedAt: '2026-03-01T08:00:00Z', sender: 'https://ehr.example.org/fhir' };

async function normalize(json: unknown, fetch?: (reference: string) => Promise<FhirResource>): Promise<DocumentNormalizeResult> {
  return normalizeFhirDocument(readFhirDocument(Buffer.from(JSON.stringify(json))), { ...OPTIONS, ...(fetch ? { fetch } : {}) });
}

function bundle(type: string, entries: Array<Record<string, unknown>>): Record<string, unknown> {
  return { resourceType: 'Bundle', type, entry: entries };
}

const summary = (r: DocumentNormalizeResult) => r.triggers.map((t) => [t.type, t.source.messageId, t.patient!.id]);

describe('readFhirDocument + normalizeFhirDocument', () => {
  it('the R4 appointment-example alone needs its Patient; fetched, it gives appointment.booked', async () => {
    const appointment = spec('Appointment-example');
    expect(await normalize(appointment)).toEqual({ triggers: [], missing: ['Patient/example'] });
    const asked: string[] = [];
    const result = await normalize(appointment, async (reference) => {
      asked.push(reference);
      return spec('Patient-example');
    });
    expect(asked).toEqual(['Patient/example']);
    expect(summary(result)).toEqual([['appointment.booked', 'Appointment/example', '12345']]);
    expect(result.triggers[0]!.appointment).toMatchObject({ id: 'example', status: 'booked', start: '2013-12-10T09:00:00Z', end: '2013-12-10T11:00:00Z' });
    expect(result.triggers[0]!.patient!.name).toEqual({ family: 'Chalmers', given: ['Peter', 'James'] });
  });

  it('a contained Patient resolves inside the resource', async () => {
    const appointment = spec('Appointment-example');
    const contained = { ...spec('Patient-example'), id: 'pat' };
    const participant = (appointment.participant as Array<Record<string, unknown>>).map((p, i) => (i === 0 ? { ...p, actor: { reference: '#pat' } } : p));
    expect(summary(await normalize({ ...appointment, contained: [contained], participant }))).toEqual([['appointment.booked', 'Appointment/example', '12345']]);
    const encounter = { ...spec('Encounter-example'), contained: [contained], subject: { reference: '#pat' } };
    expect(summary(await normalize(encounter))).toEqual([['encounter.started', 'Encounter/example', '12345']]);
    expect(await normalize({ ...encounter, contained: [] })).toEqual({ triggers: [], missing: ['#pat'] });
  });

  it.each(['collection', 'searchset', 'batch'])('a %s Bundle gives one trigger per Appointment and Encounter, patients resolved inside it', async (type) => {
    const entries = ['Appointment-example', 'Encounter-example', 'Patient-example'].map((name) => {
      const resource = spec(name);
      return { fullUrl: `http://hl7.org/fhir/${resource.resourceType}/${resource.id}`, resource, ...(type === 'searchset' ? { search: { mode: resource.resourceType === 'Patient' ? 'include' : 'match' } } : {}) };
    });
    expect(summary(await normalize(bundle(type, entries)))).toEqual([
      ['appointment.booked', 'Appointment/example', '12345'],
      ['encounter.started', 'Encounter/example', '12345'],
    ]);
  });

  it('a transaction Bundle resolves urn:uuid: references by fullUrl, typing untyped participants by what they name', async () => {
    const patientUrl = 'urn:uuid:6c2e4b0e-7c7a-4bb0-9e4a-0f7f2f3b9a11';
    const appointment = spec('Appointment-example');
    const participant = (appointment.participant as Array<Record<string, unknown>>).map((p, i) => (i === 0 ? { ...p, actor: { reference: patientUrl } } : p));
    const transaction = bundle('transaction', [
      { fullUrl: 'urn:uuid:0c3c1b9e-1d44-4c2b-b8a6-3c1a5b0f2e01', resource: { ...appointment, participant }, request: { method: 'PUT', url: 'Appointment/example' } },
      { fullUrl: patientUrl, resource: spec('Patient-example'), request: { method: 'POST', url: 'Patient' } },
      { request: { method: 'DELETE', url: 'Appointment/old' } },
    ]);
    expect(summary(await normalize(transaction))).toEqual([['appointment.booked', 'Appointment/example', '12345']]);
    // A urn: the Bundle does not define is never fetched.
    const missing = bundle('transaction', [{ fullUrl: 'urn:uuid:x', resource: { ...appointment, participant } }]);
    expect(await normalize(missing, async () => spec('Patient-example'))).toEqual({ triggers: [], missing: [patientUrl] });
  });

  it('a history Bundle is read oldest first: a booking, then its cancellation', async () => {
    const booked = { ...spec('Appointment-example'), meta: { versionId: '1', lastUpdated: '2013-10-10T08:00:00Z' } };
    const cancelled = { ...booked, status: 'cancelled', meta: { versionId: '2', lastUpdated: '2013-10-11T08:00:00Z' } };
    const history = bundle('history', [
      { fullUrl: 'http://hl7.org/fhir/Appointment/example', resource: cancelled, request: { method: 'PUT', url: 'Appointment/example' } },
      { fullUrl: 'http://hl7.org/fhir/Appointment/example', resource: booked, request: { method: 'POST', url: 'Appointment' } },
      { fullUrl: 'http://hl7.org/fhir/Patient/example', resource: spec('Patient-example') },
    ]);
    expect(summary(await normalize(history))).toEqual([
      ['appointment.booked', 'Appointment/example/_history/1', '12345'],
      ['appointment.cancelled', 'Appointment/example/_history/2', '12345'],
    ]);
  });

  it('a subscription notification is still read as one; other Bundle types are refused naming the ones read', () => {
    const notification = readFhirDocument(readFileSync(fileURLToPath(new URL('../../fixtures/corpus/fhir/backport-r4/r4-notification-full-resource.json', import.meta.url))));
    expect(notification).toMatchObject({ kind: 'notification', notification: { kind: 'topic', payload: 'full-resource' } });
    expect(() => readFhirDocument(Buffer.from(JSON.stringify(bundle('document', []))))).toThrow(FhirNotificationError);
    expect(() => readFhirDocument(Buffer.from(JSON.stringify(bundle('document', []))))).toThrow(/collection, searchset, transaction, batch, history/);
  });
});
