import { afterEach, describe, expect, it } from 'vitest';
import { startFhirTestServer, type FhirTestServer } from '../../../test/helpers/fhir-server.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { communicationFor, createFhirCommunication, type FhirCommunicationConfig } from './spec.ts';

const message: OutboundMessage = {
  deliveryId: 'writeback@appointment/A1#0',
  ruleId: 'writeback',
  purpose: 'care.logistics',
  channel: 'fhir',
  language: 'en',
  text: 'Reminder: see you tomorrow',
  fields: { appointment: { start: '2030-03-16T13:30:00+00:00' } },
  patientId: 'P1',
  about: { kind: 'appointment', id: 'A1' },
};

function config(server: FhirTestServer, overrides: Partial<FhirCommunicationConfig> = {}): FhirCommunicationConfig {
  return {
    name: 'ehr',
    type: 'fhir-communication',
    server: { baseUrl: server.baseUrl, timeoutSeconds: 10, allowInsecureHttp: false },
    identifierSystem: 'urn:carerelay:delivery',
    references: 'literal',
    identifierSystems: {},
    medium: { code: 'ELECTRONIC', display: 'electronic data' },
    category: 'reminder',
    baa: true,
    allowedPurposes: ['care.logistics'],
    ...overrides,
  };
}

const deps: OutputDeps = { secret: () => '', receipts: memoryReceiptLedger(), now: () => new Date('2030-03-15T13:30:00Z') };
const ctx = (attempt = 1): SendContext => ({ deliveryId: message.deliveryId, attempt, signal: new AbortController().signal });

function communications(server: FhirTestServer): Array<Record<string, unknown>> {
  const found = [];
  for (let id = 1; id < 50; id++) {
    const c = server.get('Communication', String(id));
    if (c) found.push(c);
  }
  return found;
}

outputConformanceSuite('fhir-communication', {
  async start({ timeoutSeconds }) {
    const server = await startFhirTestServer();
    const adapter = createFhirCommunication(config(server, { server: { baseUrl: server.baseUrl, timeoutSeconds, allowInsecureHttp: false } }), deps);
    const creates = () => server.requests.filter((r) => r.method === 'POST' && r.path === '/fhir/Communication');
    return {
      adapter,
      message,
      requests: () => creates().length,
      waitForRequests: async (n) => {
        await server.waitForRequests(n);
      },
      // The identifier of the conditional create; the server answers the first match on a repeat.
      keys: () => creates().map((r) => r.ifNoneExist ?? ''),
      retryAfterMs: 7000,
      fail(fault) {
        if (fault === StandInFault.RateLimited) server.failNext(429, 1, 7);
        else if (fault === StandInFault.Unavailable) server.failNext(503, 1);
        else if (fault === StandInFault.Rejected) server.failNext(422, 1);
        else if (fault === StandInFault.Hang) server.hangNext(1);
        else server.resetNext(1);
      },
      close: () => server.close(),
    };
  },
});

describe('fhir-communication output', () => {
  let server: FhirTestServer;
  afterEach(async () => {
    await server.close();
  });

  it('creates a completed Communication about the appointment, with a reference to the delivery and no message text', async () => {
    server = await startFhirTestServer();
    const adapter = createFhirCommunication(config(server), deps);
    const receipt = await adapter.send(message, ctx());
    const [created] = communications(server);
    expect(receipt.providerId).toBe(`Communication/${created!.id}`);
    expect(created).toMatchObject({
      resourceType: 'Communication',
      status: 'completed',
      identifier: [{ system: 'urn:carerelay:delivery', value: message.deliveryId }],
      subject: { reference: 'Patient/P1' },
      about: [{ reference: 'Appointment/A1' }],
      sent: '2030-03-15T13:30:00.000Z',
      category: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/communication-category', code: 'reminder' }] }],
      medium: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ParticipationMode', code: 'ELECTRONIC' }] }],
      payload: [{ contentReference: { identifier: { system: 'urn:carerelay:delivery', value: message.deliveryId } } }],
    });
    expect(JSON.stringify(created)).not.toContain('Reminder');
    expect(JSON.stringify(created)).not.toContain('2030-03-16');
  });

  it('a retry after a lost answer finds the first Communication instead of making a second', async () => {
    server = await startFhirTestServer();
    const adapter = createFhirCommunication(config(server), deps);
    server.loseAnswerNext(1);
    await expect(adapter.send(message, ctx(1))).rejects.toMatchObject({ failureClass: 'ambiguous' });
    expect(communications(server)).toHaveLength(1);
    const receipt = await adapter.send(message, ctx(2));
    expect(communications(server)).toHaveLength(1);
    expect(receipt.providerId).toBe(`Communication/${communications(server)[0]!.id}`);
    expect(adapter.idempotent).toBe(true);
  });

  it('references HL7v2 ids by identifier; refuses a literal reference that is not a FHIR id', () => {
    const c = communicationFor(
      { ...message, patientId: 'MRN 7', about: { kind: 'encounter', id: 'V42' } },
      config({ baseUrl: 'https://ehr.example.org/fhir' } as unknown as FhirTestServer, { references: 'identifier', identifierSystems: { patient: 'urn:oid:1.2.3' } }),
      '2030-03-15T13:30:00Z',
    );
    expect(c.subject).toEqual({ type: 'Patient', identifier: { system: 'urn:oid:1.2.3', value: 'MRN 7' } });
    expect(c.about).toEqual([{ type: 'Encounter', identifier: { value: 'V42' } }]);
    expect(() => communicationFor({ ...message, patientId: 'MRN 7' }, config({ baseUrl: 'https://x/fhir' } as unknown as FhirTestServer), 'x')).toThrow(
      /use references: identifier/,
    );
  });
});
