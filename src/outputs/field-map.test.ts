import { describe, expect, it } from 'vitest';
import { applyFieldMap, compileFieldMap, fieldMapIssues } from './field-map.ts';
import type { OutboundMessage } from './spec.ts';

const message: OutboundMessage = {
  deliveryId: 'd1',
  ruleId: 'welcome',
  purpose: 'service.info',
  channel: 'crm',
  to: 'pat@example.org',
  language: 'fr',
  text: 'Bonjour',
  fields: {
    patient: { name: { family: 'Martin', given: ['Pat', 'Alex'] }, language: 'fr', telecom: [{ system: 'email', use: 'home', value: 'pat@example.org' }, { system: 'phone', use: 'mobile', value: '+33600000000' }] },
    appointment: { durationMinutes: 30 },
  },
  patientId: 'P1',
};

describe('field maps', () => {
  it('reads trigger paths from the mapped fields and the message values; joins several values; leaves absent ones out', () => {
    const map = compileFieldMap({
      'patient.name.family': 'LastName',
      'patient.name.given': 'FirstName',
      'patient.telecom[system=phone].value': 'MobilePhone',
      'appointment.durationMinutes': 'Minutes',
      'patient.birthDate': 'Birthdate',
      $patientId: 'Key',
      $language: 'Locale',
      $subject: 'Subject',
    });
    expect(applyFieldMap(map, message)).toEqual({ LastName: 'Martin', FirstName: 'Pat Alex', MobilePhone: '+33600000000', Minutes: 30, Key: 'P1', Locale: 'fr' });
  });

  it('nothing is read outside the fields the rule sent', () => {
    const map = compileFieldMap({ 'patient.name.family': 'LastName' });
    expect(applyFieldMap(map, { ...message, fields: { patient: { language: 'fr' } } })).toEqual({});
    expect(applyFieldMap(map, { ...message, fields: undefined })).toEqual({});
  });

  it('refuses unknown paths, objects, unknown message values and a target filled twice', () => {
    expect(fieldMapIssues({ 'patient.nme': 'A', 'appointment.location': 'B', $foo: 'C', 'patient.language': 'A' }, ['data'])).toEqual([
      { path: ['data', 'patient.nme'], atKey: true, message: expect.stringMatching(/^unknown trigger path "patient.nme"; closest known: patient.name/) },
      { path: ['data', 'appointment.location'], atKey: true, message: '"appointment.location" is an object; map one of its values (e.g. appointment.location.id)' },
      { path: ['data', '$foo'], atKey: true, message: expect.stringMatching(/^"\$foo" is not a message value/) },
      { path: ['data', 'patient.language'], message: '"A" is already filled by patient.nme' },
    ]);
    expect(() => compileFieldMap({ 'patient.nme': 'A' })).toThrow(/unknown trigger path/);
  });
});
