import { describe, expect, it } from 'vitest';
import { ACT_REASON_SYSTEM, CONTACT_POINT_SYSTEM, evaluateConsent, readConsent, type ConsentQuestion } from './fhir-consent.ts';

const base = { resourceType: 'Consent', status: 'active', patient: { reference: 'Patient/MRN-1' }, dateTime: '2025-06-01T10:00:00+02:00' };
const purpose = (code: string) => ({ system: ACT_REASON_SYSTEM, code });
const channel = (code: string) => ({ coding: [{ system: CONTACT_POINT_SYSTEM, code }] });
const ask = (over: Partial<ConsentQuestion> = {}): ConsentQuestion => ({
  purpose: 'marketing',
  channel: 'email',
  output: 'outbox-email',
  dataClass: 'Appointment',
  labels: [],
  at: Date.parse('2025-06-10T10:00:00+02:00'),
  ...over,
});
const read = (resource: unknown) => {
  const { consent, problems } = readConsent(resource);
  expect(problems).toEqual([]);
  return consent!;
};

describe('FHIR R4 Consent', () => {
  it('a deny provision for HMARKT denies marketing and fundraising and says nothing about care', () => {
    const c = read({ ...base, provision: { type: 'deny', purpose: [purpose('HMARKT')] } });
    expect(evaluateConsent(c, ask())).toBe('deny');
    expect(evaluateConsent(c, ask({ purpose: 'fundraising' }))).toBe('deny');
    expect(evaluateConsent(c, ask({ purpose: 'care.logistics' }))).toBeUndefined();
  });

  it('only an active consent speaks, and only within its period', () => {
    const deny = { provision: { type: 'deny', period: { start: '2025-06-05', end: '2025-06-20' } } };
    expect(evaluateConsent(read({ ...base, ...deny }), ask())).toBe('deny');
    expect(evaluateConsent(read({ ...base, ...deny }), ask({ at: Date.parse('2025-06-21T00:00:00Z') }))).toBeUndefined();
    expect(evaluateConsent(read({ ...base, ...deny, status: 'inactive' }), ask())).toBeUndefined();
    expect(evaluateConsent(read({ ...base, ...deny, status: 'proposed' }), ask())).toBeUndefined();
  });

  it('a nested provision is an exception to its parent; at one depth deny wins', () => {
    const exception = read({ ...base, provision: { type: 'deny', provision: [{ type: 'permit', purpose: [purpose('TREAT')] }] } });
    expect(evaluateConsent(exception, ask({ purpose: 'care.logistics' }))).toBe('permit');
    expect(evaluateConsent(exception, ask({ purpose: 'survey' }))).toBe('deny');
    const conflict = read({ ...base, provision: { type: 'permit', provision: [{ type: 'permit', code: [channel('email')] }, { type: 'deny', purpose: [purpose('HMARKT')] }] } });
    expect(evaluateConsent(conflict, ask())).toBe('deny');
    expect(evaluateConsent(conflict, ask({ purpose: 'survey' }))).toBe('permit');
  });

  it('matches the channel by contact-point-system code, the output by actor, the class and the labels', () => {
    const sms = read({ ...base, provision: { type: 'deny', code: [channel('sms')] } });
    expect(evaluateConsent(sms, ask({ channel: 'sms' }))).toBe('deny');
    expect(evaluateConsent(sms, ask({ channel: 'email' }))).toBeUndefined();
    const actor = read({ ...base, provision: { type: 'deny', actor: [{ reference: { reference: 'Device/crm-out' } }] } });
    expect(evaluateConsent(actor, ask({ output: 'crm-out' }))).toBe('deny');
    expect(evaluateConsent(actor, ask())).toBeUndefined();
    const cls = read({ ...base, provision: { type: 'deny', class: [{ system: 'http://hl7.org/fhir/resource-types', code: 'Encounter' }] } });
    expect(evaluateConsent(cls, ask({ dataClass: 'Encounter' }))).toBe('deny');
    expect(evaluateConsent(cls, ask())).toBeUndefined();
    const label = read({ ...base, provision: { type: 'deny', securityLabel: [{ code: 'PSY' }] } });
    expect(evaluateConsent(label, ask({ labels: ['PSY'] }))).toBe('deny');
    expect(evaluateConsent(label, ask())).toBeUndefined();
  });

  it('policyRule OPTOUT makes a deny an opt-out; without provisions OPTIN permits and OPTOUT denies everything', () => {
    const rule = (code: string) => ({ policyRule: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code }] } });
    expect(evaluateConsent(read({ ...base, ...rule('OPTOUT') }), ask())).toBe('opt_out');
    expect(evaluateConsent(read({ ...base, ...rule('OPTOUT'), provision: { type: 'deny', code: [channel('email')] } }), ask())).toBe('opt_out');
    expect(evaluateConsent(read({ ...base, ...rule('OPTIN') }), ask())).toBe('permit');
    expect(evaluateConsent(read(base), ask())).toBeUndefined();
  });

  it('names the element of each problem', () => {
    const { consent, problems } = readConsent({
      resourceType: 'Consent',
      status: 'approved',
      patient: { reference: 'Practitioner/7' },
      dateTime: 'yesterday',
      provision: { type: 'allow', period: { start: '2025-13-01' }, provision: [{ code: [channel('pigeon')] }] },
    });
    expect(consent).toBeUndefined();
    expect(problems.map((p) => p.expression)).toEqual([
      'Consent.status',
      'Consent.patient.reference',
      'Consent.dateTime',
      'Consent.provision.type',
      'Consent.provision.period.start',
      'Consent.provision.provision[0].code[0].coding',
    ]);
    expect(readConsent({ resourceType: 'Patient' }).problems.map((p) => p.expression)).toEqual(['Consent.resourceType', 'Consent.status', 'Consent.patient']);
    expect(readConsent('STOP').problems[0]!.expression).toBe('Consent');
  });
});
