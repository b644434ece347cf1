import { describe, expect, it } from 'vitest';
import type { ConsentEvent } from '../types.ts';
import { checkConsent, normalizeAddress, type ConsentCheck, type PatientRecord } from './consent.ts';
import { readConsent } from './fhir-consent.ts';
import { defaultPolicy } from './policy.ts';

const NOW = Date.parse('2025-06-10T10:00:00+02:00');
const PARIS = 'Europe/Paris';
const us = defaultPolicy({ region: 'us', timezone: PARIS });
const eu = defaultPolicy({ region: 'eu', timezone: PARIS });

let seq = 0;
function event(over: Partial<ConsentEvent> & Pick<ConsentEvent, 'action'>): ConsentEvent {
  seq++;
  return { id: `ev-${seq}`, purposes: [], source: 'admin', method: 'api', at: '2025-06-01T10:00:00+02:00', policyVersion: '1', recordedAt: `2025-06-01T10:00:${String(seq).padStart(2, '0')}Z`, ...over };
}

function patient(over: Partial<PatientRecord> = {}): PatientRecord {
  return { id: 'MRN-1', deceased: false, events: [], consents: [], ...over };
}

function check(over: Partial<ConsentCheck> = {}, delivery: Partial<ConsentCheck['delivery']> = {}): ConsentCheck {
  return {
    delivery: {
      id: 'survey@appointment/A-1#0',
      purpose: 'survey',
      channel: 'email',
      output: 'outbox-email',
      to: 'claire@example.org',
      dueAt: '2025-06-10T10:00:00+02:00',
      subjectKind: 'appointment',
      payload: { patient: { name: { given: ['Claire'] } } },
      ...delivery,
    },
    labels: [],
    output: { baa: true, allowedPurposes: ['care.logistics', 'care.followup', 'survey', 'marketing', 'service.info'] },
    zone: PARIS,
    patients: [patient()],
    addressEvents: [],
    episodes: [],
    sent: [],
    addressShared: false,
    now: NOW,
    ...over,
  };
}

const reason = (c: ConsentCheck, policy = us) => {
  const d = checkConsent(c, policy);
  return d.allow ? (d.noName ? 'allow:no-name' : 'allow') : d.reason;
};

describe('send-time checks (docs/consent.md rules 2–8)', () => {
  it('without a record the region default decides: US allows survey email, EU denies it; care always goes', () => {
    expect(reason(check(), us)).toBe('allow');
    expect(reason(check(), eu)).toBe('no_consent');
    expect(reason(check({}, { channel: 'sms', to: '+33612345678' }), us)).toBe('no_consent');
    expect(reason(check({}, { purpose: 'care.logistics' }), eu)).toBe('allow');
    expect(reason(check({}, { purpose: 'marketing' }), us)).toBe('no_consent');
    // Webhook and CRM follow the email column.
    expect(reason(check({}, { channel: 'webhook', to: undefined }), us)).toBe('allow');
  });

  it('rule 2 in its order: deceased before opted_out before no_contact', () => {
    const all = patient({ deceased: true, events: [event({ action: 'opt_out', channel: 'email' }), event({ action: 'no_contact' })] });
    expect(reason(check({ patients: [all] }))).toBe('deceased');
    expect(reason(check({ patients: [{ ...all, deceased: false }] }))).toBe('opted_out');
    expect(reason(check({ patients: [patient({ events: [event({ action: 'no_contact' })] })] }))).toBe('no_contact');
    expect(reason(check({ patients: [patient({ events: [event({ action: 'no_contact' }), event({ action: 'contact_allowed', at: '2025-06-02T10:00:00+02:00' })] })] }))).toBe('allow');
  });

  it('the latest applicable record wins: a grant after a revocation allows, a revocation after a grant denies', () => {
    const grant = event({ action: 'grant', purposes: ['survey'], channel: 'email', at: '2025-06-01T10:00:00+02:00' });
    const revoke = event({ action: 'revoke', purposes: ['survey'], channel: 'email', at: '2025-06-05T10:00:00+02:00' });
    expect(reason(check({ patients: [patient({ events: [grant, revoke] })] }), eu)).toBe('consent_denied');
    expect(reason(check({ patients: [patient({ events: [revoke, { ...grant, at: '2025-06-06T10:00:00+02:00' }] })] }), eu)).toBe('allow');
    // A record for another purpose or channel does not apply.
    expect(reason(check({ patients: [patient({ events: [event({ action: 'revoke', purposes: ['marketing'], channel: 'email' })] })] }), us)).toBe('allow');
    expect(reason(check({ patients: [patient({ events: [event({ action: 'revoke', purposes: ['survey'], channel: 'sms' })] })] }), us)).toBe('allow');
  });

  it('an email link opt-out for surveys stops surveys only; "all" stops every non-care email, not care', () => {
    const surveys = event({ action: 'opt_out', purposes: ['survey'], channel: 'email', source: 'email-link', method: 'link' });
    expect(reason(check({ patients: [patient({ events: [surveys] })] }))).toBe('opted_out');
    expect(reason(check({ patients: [patient({ events: [surveys] })] }, { purpose: 'service.info' }))).toBe('allow');
    const all = event({ action: 'opt_out', purposes: ['survey', 'service.info', 'marketing', 'research', 'fundraising'], channel: 'email', source: 'email-link', method: 'link' });
    expect(reason(check({ patients: [patient({ events: [all] })] }, { purpose: 'service.info' }))).toBe('opted_out');
    expect(reason(check({ patients: [patient({ events: [all] })] }, { purpose: 'care.logistics' }))).toBe('allow');
  });

  it('an SMS keyword belongs to the number and its output; START lifts it, and nothing else', () => {
    const to = '+33 6 12 34 56 78';
    const stop = event({ action: 'opt_out', address: normalizeAddress(to), output: 'outbox-sms', channel: 'sms', source: 'sms', method: 'keyword:STOP' });
    const sms = { channel: 'sms' as const, to, purpose: 'care.logistics' as const, output: 'outbox-sms' };
    expect(reason(check({ addressEvents: [stop] }, sms))).toBe('opted_out');
    expect(reason(check({ addressEvents: [stop] }, { ...sms, output: 'other-sms' }))).toBe('allow');
    expect(reason(check({ addressEvents: [stop] }, { ...sms, to: '+33699999999' }))).toBe('allow');
    const start = event({ action: 'opt_in', address: normalizeAddress(to), output: 'outbox-sms', channel: 'sms', source: 'sms', method: 'keyword:START', at: '2025-06-02T10:00:00+02:00' });
    expect(reason(check({ addressEvents: [stop, start] }, sms))).toBe('allow');
    // START does not lift an admin opt-out of the patient.
    const admin = event({ action: 'opt_out', channel: 'sms' });
    expect(reason(check({ addressEvents: [stop, start], patients: [patient({ events: [admin] })] }, sms))).toBe('opted_out');
  });

  it('merged patients: the stricter state wins (opt-out > deny > permit > none)', () => {
    const permit = patient({ id: 'NEW', events: [event({ action: 'grant', purposes: ['survey'], channel: 'email', at: '2025-06-09T10:00:00+02:00' })] });
    const deny = patient({ id: 'OLD', events: [event({ action: 'revoke', purposes: ['survey'], channel: 'email' })] });
    const optOut = patient({ id: 'OLDER', events: [event({ action: 'opt_out', channel: 'email' })] });
    expect(reason(check({ patients: [permit, deny] }), eu)).toBe('consent_denied');
    expect(reason(check({ patients: [permit, deny, optOut] }), eu)).toBe('opted_out');
    expect(reason(check({ patients: [permit, patient({ id: 'OLD' })] }), eu)).toBe('allow');
  });

  it('FHIR Consents: latest dateTime wins across consents and ledger entries; OPTOUT is an opt-out', () => {
    const consent = (dateTime: string, type: 'deny' | 'permit', rule?: string) => ({
      id: `c-${dateTime}`,
      at: Date.parse(dateTime),
      consent: readConsent({
        resourceType: 'Consent',
        status: 'active',
        patient: { reference: 'Patient/MRN-1' },
        dateTime,
        ...(rule ? { policyRule: { coding: [{ code: rule }] } } : {}),
        provision: { type, purpose: [{ code: 'HOPERAT' }] },
      }).consent!,
    });
    expect(reason(check({ patients: [patient({ consents: [consent('2025-06-01T00:00:00Z', 'deny'), consent('2025-06-03T00:00:00Z', 'permit')] })] }), eu)).toBe('allow');
    expect(reason(check({ patients: [patient({ consents: [consent('2025-06-05T00:00:00Z', 'deny'), consent('2025-06-03T00:00:00Z', 'permit')] })] }), eu)).toBe('consent_denied');
    expect(reason(check({ patients: [patient({ consents: [consent('2025-06-05T00:00:00Z', 'deny', 'OPTOUT')] })] }), eu)).toBe('opted_out');
    const grantLater = event({ action: 'grant', purposes: ['survey'], channel: 'email', at: '2025-06-06T00:00:00Z' });
    expect(reason(check({ patients: [patient({ events: [grantLater], consents: [consent('2025-06-05T00:00:00Z', 'deny')] })] }), eu)).toBe('allow');
  });

  it('rule 4: the output must allow the purpose and be covered for care details', () => {
    expect(reason(check({ output: { baa: true, allowedPurposes: ['care.logistics'] } }))).toBe('destination_not_covered');
    expect(reason(check({ output: { baa: false, allowedPurposes: ['survey'] } }, { payload: { appointment: { start: '2025-06-09T10:00:00+02:00' } } }))).toBe('destination_not_covered');
    expect(reason(check({ output: { baa: false, allowedPurposes: ['survey'] } }))).toBe('allow');
  });

  it('rule 5: no survey within the window after sensitive care; care still goes; the window ends', () => {
    const psy = { key: 'encounter/V1', status: 'finished', start: Date.parse('2025-05-01T10:00:00Z'), end: Date.parse('2025-05-03T10:00:00Z'), labels: ['PSY'], serviceCodes: [], locationIds: [] };
    expect(reason(check({ episodes: [psy] }))).toBe('sensitive_window');
    expect(reason(check({ episodes: [psy] }, { purpose: 'care.followup' }))).toBe('allow');
    expect(reason(check({ episodes: [psy], now: Date.parse('2025-08-02T10:00:00Z') }, { dueAt: '2025-08-02T10:00:00Z' }))).toBe('allow');
    const onco = { ...psy, labels: [], serviceCodes: ['http://loinc|ONCO'] };
    expect(reason(check({ episodes: [onco] }))).toBe('allow');
    expect(reason(check({ episodes: [onco] }), { ...us, sensitive: { ...us.sensitive, services: ['ONCO'] } })).toBe('sensitive_window');
    // Still open (no end): 90 days from its start.
    expect(reason(check({ episodes: [{ ...psy, end: undefined, status: 'in-progress' }] }))).toBe('sensitive_window');
    expect(reason(check({ episodes: [{ ...psy, status: 'cancelled' }] }))).toBe('allow');
  });

  it('rule 6: tenant caps per purpose and channel, and the US exempt-SMS limit, per patient per day and ISO week', () => {
    const capped = { ...us, caps: [{ purpose: 'survey' as const, channel: 'email' as const, perDay: 1, perWeek: 2 }] };
    const sent = (iso: string, purpose = 'survey' as const, channel = 'email' as const) => ({ at: Date.parse(iso), purpose, channel });
    expect(reason(check({ sent: [sent('2025-06-10T08:00:00+02:00')] }), capped)).toBe('frequency_cap');
    expect(reason(check({ sent: [sent('2025-06-09T23:30:00+02:00')] }), capped)).toBe('allow'); // yesterday in Paris
    expect(reason(check({ sent: [sent('2025-06-09T10:00:00+02:00'), sent('2025-06-08T10:00:00+02:00')] }), capped)).toBe('allow'); // Sunday: last ISO week
    expect(reason(check({ sent: [sent('2025-06-09T10:00:00+02:00'), sent('2025-06-09T11:00:00+02:00')] }), capped)).toBe('frequency_cap');
    const sms = { purpose: 'care.logistics' as const, channel: 'sms' as const, to: '+33612345678' };
    const careSms = (iso: string) => sent(iso, 'care.logistics' as never, 'sms' as never);
    expect(reason(check({ sent: [careSms('2025-06-10T08:00:00+02:00')] }, sms), us)).toBe('frequency_cap');
    expect(reason(check({ sent: [careSms('2025-06-10T08:00:00+02:00')] }, sms), eu)).toBe('allow');
    expect(reason(check({ sent: ['2025-06-09', '2025-06-08', '2025-06-07'].map((d) => careSms(`${d}T10:00:00+02:00`)) }, sms), us)).toBe('allow');
    expect(reason(check({ sent: ['2025-06-09', '2025-06-09', '2025-06-09'].map((d, i) => careSms(`${d}T1${i}:00:00+02:00`)) }, sms), us)).toBe('frequency_cap');
  });

  it('rule 6: the day and week of a cap follow the check from one day to the next in the same zone', () => {
    const capped = { ...us, caps: [{ purpose: 'survey' as const, channel: 'email' as const, perDay: 1 }] };
    const sent = [{ at: Date.parse('2025-06-10T08:00:00+02:00'), purpose: 'survey' as const, channel: 'email' as const }];
    const on = (iso: string) => check({ sent, now: Date.parse(iso) }, { dueAt: iso });
    expect(reason(on('2025-06-10T10:00:00+02:00'), capped)).toBe('frequency_cap');
    expect(reason(on('2025-06-11T10:00:00+02:00'), capped)).toBe('allow');
    expect(reason(on('2025-06-10T23:30:00+02:00'), capped)).toBe('frequency_cap');
    expect(reason(on('2025-06-09T10:00:00+02:00'), capped)).toBe('allow');
  });

  it('rule 7: at night an SMS moves to 08:00 with retryAt, or expires; the cap counts the day it would go', () => {
    const night = Date.parse('2025-06-10T23:00:00+02:00');
    const sms = { purpose: 'care.followup' as const, channel: 'sms' as const, to: '+33612345678', dueAt: '2025-06-10T23:00:00+02:00' };
    const moved = checkConsent(check({ now: night }, sms), eu);
    expect(moved).toMatchObject({ allow: false, rule: 7, reason: 'quiet_hours', retryAt: '2025-06-11T08:00:00+02:00' });
    expect(reason(check({ now: night }, { ...sms, expiresAt: '2025-06-11T07:00:00+02:00' }), eu)).toBe('expired');
    const capped = { ...eu, caps: [{ purpose: 'care.followup' as const, channel: 'sms' as const, perDay: 1 }] };
    expect(reason(check({ now: night, sent: [{ at: Date.parse('2025-06-10T12:00:00+02:00'), purpose: 'care.followup', channel: 'sms' }] }, sms), capped)).toBe('quiet_hours');
    expect(reason(check({ now: night, sent: [{ at: Date.parse('2025-06-11T07:59:00+02:00'), purpose: 'care.followup', channel: 'sms' }] }, sms), capped)).toBe('frequency_cap');
  });

  it('rule 8: no address; a shared one takes the no-name variant, else it is suppressed', () => {
    expect(reason(check({}, { to: undefined }))).toBe('no_address');
    expect(reason(check({ addressShared: true }))).toBe('shared_address');
    expect(reason(check({ addressShared: true }, { noNameTemplate: 'survey-noname' }))).toBe('allow:no-name');
  });

  it('rule 8: a CRM output needs an address only when it says so (a marketing tool keyed by email)', () => {
    const crm = { channel: 'crm' as const, to: undefined };
    const keyedByPatient = { baa: true, allowedPurposes: ['survey'] };
    expect(reason(check({ output: keyedByPatient }, crm))).toBe('allow');
    expect(reason(check({ output: { ...keyedByPatient, needsAddress: true } }, crm))).toBe('no_address');
    expect(checkConsent(check({ output: { ...keyedByPatient, needsAddress: true } }, crm), us)).toMatchObject({ rule: 8, basis: 'no recipient address (output outbox-email keys its contacts by address)' });
    expect(reason(check({ output: { ...keyedByPatient, needsAddress: true } }, { channel: 'crm', to: 'claire@example.org' }))).toBe('allow');
  });

  it('the first denial wins and says which rule, with the records used', () => {
    const revoke = event({ action: 'revoke', purposes: ['survey'], channel: 'email' });
    const d = checkConsent(check({ patients: [patient({ events: [revoke] })], addressShared: true, output: { baa: true, allowedPurposes: [] } }), us);
    expect(d).toMatchObject({ allow: false, rule: 3, reason: 'consent_denied', records: [revoke.id] });
  });
});
