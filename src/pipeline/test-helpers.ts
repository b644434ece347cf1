// Trigger and rule builders for the pipeline's unit tests (not used at run time).
import type { PatientTrigger, Trigger, TriggerAppointment, TriggerEncounter, TriggerPatient, TriggerType } from '../types.ts';
import type { OutputInfo, Rule } from './rule.ts';
import { compileRules } from './rule.ts';

export interface TriggerOverrides {
  id?: string;
  type?: TriggerType;
  occurredAt?: string;
  receivedAt?: string;
  patient?: Partial<TriggerPatient>;
  appointment?: Partial<TriggerAppointment> | null;
  encounter?: Partial<TriggerEncounter>;
  sensitivity?: string[];
}

export function makeTrigger(o: TriggerOverrides = {}): PatientTrigger {
  const trigger: PatientTrigger = {
    id: o.id ?? 'trg-1',
    type: o.type ?? 'appointment.booked',
    occurredAt: o.occurredAt ?? '2025-06-01T09:00:00+02:00',
    receivedAt: o.receivedAt ?? o.occurredAt ?? '2025-06-01T09:00:05+02:00',
    source: { format: 'hl7v2', sender: 'EPIC^GHH', messageType: 'SIU^S12', messageId: 'MSG1' },
    patient: {
      id: 'MRN1',
      identifiers: [{ value: 'MRN1', type: 'MR', system: 'urn:ghh' }, { value: '1850399', type: 'SS' }],
      name: { family: 'Martin', given: ['Claire', 'Anne'] },
      birthDate: '1980-04-12',
      gender: 'female',
      language: 'fr',
      deceased: false,
      telecom: [
        { system: 'phone', use: 'home', value: '+33140000000' },
        { system: 'phone', use: 'mobile', value: '+33612345678' },
        { system: 'email', use: 'home', value: 'claire@example.org' },
      ],
      ...o.patient,
    },
  };
  if (o.appointment !== null) {
    trigger.appointment = {
      id: 'A100',
      status: 'booked',
      start: '2025-06-10T14:30:00+02:00',
      end: '2025-06-10T15:00:00+02:00',
      durationMinutes: 30,
      serviceType: { code: 'CARDIO', display: 'Cardiology' },
      location: { id: 'CARD-1', name: 'Cardiology, building B' },
      practitioner: { id: 'P9', name: 'Dr Lebrun' },
      ...o.appointment,
    };
  }
  if (o.encounter) trigger.encounter = { ...o.encounter };
  if (o.sensitivity) trigger.sensitivity = o.sensitivity;
  return trigger;
}

export const OUTPUTS: OutputInfo[] = [
  { name: 'sms-main', channel: 'sms', baa: true, allowedPurposes: ['care.logistics', 'care.followup', 'survey'] },
  { name: 'mail', channel: 'email', baa: true, allowedPurposes: ['care.logistics', 'care.followup', 'survey', 'service.info', 'marketing'] },
  { name: 'crm', channel: 'crm', baa: false, allowedPurposes: ['marketing', 'service.info'] },
];

/** Compiles raw rules and fails loudly on any issue (tests of valid rules). */
export function rules(...raw: unknown[]): Rule[] {
  const { rules: compiled, issues } = compileRules(raw, { outputs: OUTPUTS });
  if (issues.length > 0) throw new Error(issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n'));
  return compiled;
}
