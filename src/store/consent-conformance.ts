// The consent ledger part of the Store conformance suite (store.ts ConsentLedger): every
// backend runs it from storeConformanceSuite. All data here is synthetic.
import { describe, expect, it } from 'vitest';
import type { ConsentEvent, Trigger } from '../types.ts';
import { testDelivery, testRecord, testTrigger } from './conformance.ts';
import type { Store } from './store.ts';

const AT = '2025-06-01T10:00:00+02:00';

function entry(over: Partial<Omit<ConsentEvent, 'id'>> & Pick<ConsentEvent, 'action'>): Omit<ConsentEvent, 'id'> {
  return { patientId: 'MRN-1', purposes: [], source: 'admin', method: 'api', at: AT, policyVersion: '1', recordedAt: '2025-06-01T08:00:01Z', ...over };
}

function merged(survivor: string, from: string): Trigger {
  return testTrigger({ id: `merge-${from}`, type: 'patient.merged', patient: { ...testTrigger({ id: 'x' }).patient, id: survivor, mergedFrom: [{ value: from }] }, appointment: undefined });
}

export function consentLedgerConformance(getStore: () => Store): void {
  describe('consent ledger (docs/consent.md)', () => {
    it('keeps entries with their scope and returns them by patient, and keyword entries by normalized address', async () => {
      const store = getStore();
      const grant = await store.addConsentEvent(entry({ action: 'grant', purposes: ['survey'], channel: 'email', reference: 'Consent/9' }));
      expect(grant.id).toMatch(/^[A-Za-z0-9-]+$/);
      const stop = await store.addConsentEvent({ ...entry({ action: 'opt_out', channel: 'sms', source: 'sms', method: 'keyword:STOP' }), patientId: undefined, address: '+33 6 12-34-56-78', output: 'outbox-sms' });
      expect(stop.address).toBe('+33612345678');
      await store.addConsentEvent(entry({ action: 'no_contact', patientId: 'MRN-2' }));
      const one = await store.consentRecords({ patientIds: ['MRN-1'] });
      expect(one.events).toEqual([grant]);
      const both = await store.consentRecords({ patientIds: ['MRN-1', 'MRN-2'], addresses: ['+33612345678'] });
      expect(both.events.map((e) => e.action).sort()).toEqual(['grant', 'no_contact', 'opt_out']);
      expect(both.events.find((e) => e.action === 'opt_out')).toEqual(stop);
      await expect(store.addConsentEvent({ ...entry({ action: 'opt_out' }), patientId: undefined })).rejects.toThrow(RangeError);
    });

    it('keeps the pushes of an entry to the tools holding the contact until they are queued', async () => {
      const store = getStore();
      expect(await store.unqueuedConsentMirrors(10)).toEqual([]);
      const optOut = await store.addConsentEvent(entry({ action: 'opt_out', channel: 'email', purposes: ['marketing'] }), ['crm', 'mail-tool']);
      await store.addConsentEvent(entry({ action: 'grant', channel: 'sms' }));
      const pending = await store.unqueuedConsentMirrors(10);
      expect(pending).toEqual([
        { event: optOut, output: 'crm' },
        { event: optOut, output: 'mail-tool' },
      ]);
      expect(await store.unqueuedConsentMirrors(1)).toHaveLength(1);
      await store.consentMirrorQueued(optOut.id, 'crm');
      await store.consentMirrorQueued(optOut.id, 'crm');
      expect(await store.unqueuedConsentMirrors(10)).toEqual([{ event: optOut, output: 'mail-tool' }]);
    });

    it('keeps FHIR Consents as given, once per patient and resource', async () => {
      const store = getStore();
      const resource = { resourceType: 'Consent', id: 'c1', status: 'active', patient: { reference: 'Patient/MRN-1' }, extension: [{ url: 'urn:x', valueString: 'kept' }] };
      const a = await store.addFhirConsent({ patientId: 'MRN-1', resource, effectiveAt: AT, source: 'fhir', recordedAt: '2025-06-01T08:00:01Z' });
      const again = await store.addFhirConsent({ patientId: 'MRN-1', resource, effectiveAt: AT, source: 'admin', recordedAt: '2025-06-02T08:00:01Z' });
      expect(again).toEqual(a);
      const { consents } = await store.consentRecords({ patientIds: ['MRN-1'] });
      expect(consents).toEqual([a]);
      expect(consents[0]!.resource).toEqual(resource);
    });

    it('notes what committed triggers say: deceased (sticky), contact points, merges in both directions', async () => {
      const store = getStore();
      const alive = testTrigger({ id: 'T1' });
      const dead = testTrigger({ id: 'T2', patient: { ...alive.patient, deceased: true } });
      const twin = testTrigger({ id: 'T3', patient: { ...alive.patient, id: 'MRN-9', telecom: [{ system: 'phone', use: 'mobile', value: '+1 555-0100' }] } });
      await store.commitInbound(testRecord({ controlId: 'C1', triggers: [alive, dead, twin] }));
      await store.commitInbound(testRecord({ controlId: 'C2', triggers: [testTrigger({ id: 'T4' })] }));
      expect(await store.patientFacts(['MRN-1', 'MRN-9', 'NOBODY'])).toEqual([
        { id: 'MRN-1', deceased: true },
        { id: 'MRN-9', deceased: false },
      ]);
      expect(await store.patientsAtAddress('+15550100')).toEqual(['MRN-1', 'MRN-9']);
      await store.notePatientFacts([merged('MRN-NEW', 'MRN-1'), merged('MRN-NEWER', 'MRN-NEW')]);
      expect((await store.mergedGroup('MRN-1')).sort()).toEqual(['MRN-1', 'MRN-NEW', 'MRN-NEWER']);
      expect((await store.mergedGroup('MRN-NEWER'))[0]).toBe('MRN-NEWER');
      expect(await store.mergedGroup('MRN-9')).toEqual(['MRN-9']);
    });

    it('records decisions and disclosures (once per delivery), newest first, by delivery or patient', async () => {
      const store = getStore();
      const decision = { deliveryId: 'd1', patientId: 'MRN-1', rule: 'r', purpose: 'survey' as const, channel: 'email' as const, output: 'mail', basis: 'default', records: [], settings: { region: 'eu' } };
      await store.recordDecision({ ...decision, result: 'move', checkRule: 7, reason: 'quiet_hours', retryAt: '2025-06-02T08:00:00+02:00', at: '2025-06-01T23:00:00+02:00' });
      await store.recordDecision({ ...decision, result: 'allow', records: ['ce-1'], at: '2025-06-02T08:00:00+02:00' });
      await store.recordDecision({ ...decision, deliveryId: 'd2', patientId: 'MRN-2', result: 'deny', checkRule: 2, reason: 'opted_out', at: '2025-06-02T08:00:00+02:00' });
      const d1 = await store.listDecisions({ deliveryId: 'd1' });
      expect(d1.map((d) => d.result)).toEqual(['allow', 'move']);
      expect(d1[1]).toMatchObject({ checkRule: 7, reason: 'quiet_hours', retryAt: '2025-06-02T08:00:00+02:00', settings: { region: 'eu' } });
      expect((await store.listDecisions({ patientId: 'MRN-2' })).map((d) => d.reason)).toEqual(['opted_out']);
      // The notes come back as recorded, whatever form a backend keeps them in.
      const notes = { basis: 'consent ce-1 (sms, keyword) — « oui »', settings: { region: 'us', zone: 'America/New_York', caps: [{ purpose: 'survey', channel: 'sms', perDay: 1 }], quietHours: { start: '08:00', end: '21:00', channels: ['sms'] } } };
      await store.recordDecision({ ...decision, ...notes, deliveryId: 'd4', result: 'allow', at: '2025-06-02T08:00:00+02:00' });
      expect((await store.listDecisions({ deliveryId: 'd4' }))[0]).toMatchObject({ basis: notes.basis, settings: notes.settings });
      expect((await store.listDecisions({ deliveryId: 'd1' }))[1]).toMatchObject({ basis: 'default', settings: { region: 'eu' } });

      const sent = { deliveryId: 'd1', patientId: 'MRN-1', rule: 'r', purpose: 'survey' as const, channel: 'email' as const, output: 'mail', recipient: 'a@example.org', at: '2025-06-02T08:00:00+02:00' };
      await store.recordDisclosure(sent);
      await store.recordDisclosure({ ...sent, at: '2025-06-03T08:00:00+02:00' });
      await store.recordDisclosure({ ...sent, deliveryId: 'd3', at: '2025-05-20T08:00:00+02:00' });
      expect((await store.listDisclosures({ patientIds: ['MRN-1'] })).map((d) => [d.deliveryId, d.at])).toEqual([
        ['d1', '2025-06-02T08:00:00+02:00'],
        ['d3', '2025-05-20T08:00:00+02:00'],
      ]);
      expect((await store.listDisclosures({ patientIds: ['MRN-1'], since: '2025-06-01T00:00:00Z' })).map((d) => d.deliveryId)).toEqual(['d1']);
    });

    it('remembers inbound event keys once', async () => {
      const store = getStore();
      expect(await store.noteInboundEvent('sms:SM1', AT)).toBe(true);
      expect(await store.noteInboundEvent('sms:SM1', AT)).toBe(false);
    });

    it('erases a patient: pending deliveries suppressed `erased`, bodies and personal fields gone, an erasure record kept', async () => {
      const store = getStore();
      const trigger = testTrigger({ id: 'T1' });
      const m = await store.commitInbound(testRecord({ controlId: 'C1', triggers: [trigger] }));
      await store.commitInbound(testRecord({ controlId: 'C2', triggers: [testTrigger({ id: 'T2', patient: { ...trigger.patient, id: 'MRN-OTHER' } })] }));
      const pending = testDelivery({ triggerId: 'T1' });
      const sent = testDelivery({ appointmentId: 'APT-2', triggerId: 'T1' });
      const theirs = testDelivery({ appointmentId: 'APT-3', patientId: 'MRN-OTHER', triggerId: 'T2' });
      const w = (delivery: typeof pending) => ({ delivery, status: 'pending' as const, asOf: delivery.asOf, generation: 2, updatedAt: AT });
      await store.saveRouting(['T1', 'T2'], [w(pending), w(sent), w(theirs)], AT);
      await store.finishDelivery(sent.id, 2, { status: 'sent', message: { language: 'en', to: '+15550100', text: 'Hello Alex' }, at: AT });
      await store.putOutboxEntry({ deliveryId: sent.id, output: 'sms', channel: 'sms', to: '+15550100', language: 'en', text: 'Hello Alex', keptAt: AT });
      await store.recordDisclosure({ deliveryId: sent.id, patientId: 'MRN-1', rule: 'r', purpose: 'care.logistics', channel: 'sms', output: 'sms', at: AT });
      await store.addConsentEvent(entry({ action: 'opt_out', channel: 'email' }));
      const held = { patientId: 'MRN-1', contactKey: 'alex@example.org', firstSentAt: AT };
      await store.recordContactHolding({ ...held, output: 'mailchimp' });
      await store.recordContactHolding({ ...held, output: 'hubspot', toolId: '501' });
      await store.recordContactHolding({ ...held, output: 'hubspot', contactKey: 'alex.work@example.org' });
      await store.recordContactHolding({ ...held, output: 'hubspot', patientId: 'MRN-OTHER' });

      const record = await store.erasePatient('MRN-1', '2025-06-05T10:00:00+02:00', { hubspot: 'forgotten' });
      expect(record).toEqual({
        patientId: 'MRN-1',
        at: '2025-06-05T10:00:00+02:00',
        cancelled: [{ deliveryId: pending.id, generation: 2, reason: 'erased' }],
        // Each output once, by name; its holdings are gone, another patient's stay.
        tools: [
          { output: 'hubspot', outcome: 'forgotten' },
          { output: 'mailchimp', outcome: 'not_asked' },
        ],
      });
      expect(await store.listContactHoldings({ patientId: 'MRN-1' })).toEqual([]);
      expect(await store.listContactHoldings({ output: 'hubspot', toolId: '501' })).toEqual([]);
      expect(await store.listContactHoldings({ patientId: 'MRN-OTHER' })).toHaveLength(1);
      expect(await store.listErasures('MRN-1')).toEqual([record]);
      const after = await store.getDelivery(pending.id);
      expect(after).toMatchObject({ status: 'suppressed', reason: 'erased' });
      expect(after!.delivery.payload).toEqual({});
      expect(after!.delivery.to).toBeUndefined();
      const done = await store.getDelivery(sent.id);
      expect(done).toMatchObject({ status: 'sent' });
      expect(done!.message).toBeUndefined();
      expect(await store.listOutbox({ deliveryId: sent.id })).toEqual([]);
      expect(await store.listDisclosures({ patientIds: ['MRN-1'] })).toEqual([]);
      const t = await store.getTrigger('T1');
      expect(t!.patient).toEqual({ id: 'MRN-1', identifiers: [{ value: 'MRN-1' }], deceased: false, telecom: [] });
      expect(t!.appointment?.id).toBe('APT-1');
      expect((await store.getMessage(m.message.id))!.raw.length).toBe(0);
      expect(await store.patientsAtAddress('+15550100')).toEqual(['MRN-OTHER']);
      expect(await store.patientFacts(['MRN-1'])).toEqual([{ id: 'MRN-1', deceased: false, erasedAt: '2025-06-05T10:00:00+02:00' }]);
      // Another patient's data and the ledger's objections stay.
      expect((await store.getDelivery(theirs.id))!.delivery.payload).not.toEqual({});
      expect((await store.consentRecords({ patientIds: ['MRN-1'] })).events).toHaveLength(1);
    });
  });
}
