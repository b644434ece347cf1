import { describe, expect, it } from 'vitest';
import { compileRules, type OutputInfo } from './rule.ts';

const OUTPUTS: OutputInfo[] = [
  { name: 'hubspot', channel: 'crm', baa: false, allowedPurposes: ['marketing', 'service.info', 'survey', 'care.followup'] },
  { name: 'crm-covered', channel: 'crm', baa: true, allowedPurposes: ['marketing', 'service.info', 'care.followup'] },
  { name: 'mapped', channel: 'crm', baa: true, allowedPurposes: ['marketing'], fields: ['patient.name.given', 'patient.language'] },
];

const rule = (purpose: string, output: string, fields: string[]) => ({
  id: 'crm-rule',
  on: 'appointment.fulfilled',
  purpose,
  channel: 'crm',
  send: { output, to: 'patient.telecom[system=email].value', fields },
  at: 'now',
});

function issues(raw: unknown) {
  return compileRules([raw], { outputs: OUTPUTS }).issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
}

describe('destination fitness at load (docs/consent.md rule 4)', () => {
  it('lets name and language go to an output without a BAA for marketing and service.info', () => {
    for (const purpose of ['marketing', 'service.info']) {
      expect(issues(rule(purpose, 'hubspot', ['patient.name', 'patient.name.given', 'patient.name.family', 'patient.language']))).toEqual([]);
    }
  });

  it('refuses each care field, naming the rule, the field and the output, at the field', () => {
    const found = issues(rule('service.info', 'hubspot', ['patient.name.given', 'appointment.start', 'appointment.location.name', 'encounter.class']));
    expect(found.map((f) => f.path)).toEqual(['0.send.fields.1', '0.send.fields.2', '0.send.fields.3']);
    expect(found[0]!.message).toBe(
      'rule "crm-rule": field appointment.start may not go to output "hubspot", which is not declared baa: true: ' +
        "appointment.start is about the patient's care, which with any patient identity is PHI (docs/consent.md rule 4)",
    );
    expect(found[2]!.message).toContain('field encounter.class may not go to output "hubspot"');
  });

  it('refuses identifiers, birth date and contact lists: name and email alone', () => {
    const found = issues(rule('marketing', 'hubspot', ['patient.id', 'patient.birthDate', 'patient.telecom', 'occurredAt']));
    expect(found.map((f) => f.path)).toEqual(['0.send.fields.0', '0.send.fields.1', '0.send.fields.2', '0.send.fields.3']);
    expect(found[0]!.message).toContain('without a BAA a marketing rule may send only patient.name, patient.name.given, patient.name.family, patient.language');
    expect(found[3]!.message).toContain("occurredAt is about the patient's care");
  });

  it('lets a survey carry no name to an output without a BAA, and no care purpose at all', () => {
    expect(issues(rule('survey', 'hubspot', ['patient.language']))).toEqual([]);
    expect(issues(rule('survey', 'hubspot', ['patient.name.given']))).toEqual([
      { path: '0.send.fields.0', message: expect.stringContaining("may send only patient.language (a survey message already concerns the patient's care)") },
    ]);
    expect(issues(rule('care.followup', 'hubspot', []))).toEqual([
      { path: '0.send.output', message: expect.stringContaining('rule "crm-rule": output "hubspot" is not declared baa: true, so it may not carry care.followup messages') },
    ]);
  });

  it('lets an output declared baa: true take care fields', () => {
    expect(issues(rule('care.followup', 'crm-covered', ['patient.id', 'appointment.start']))).toEqual([]);
  });

  it('refuses a field the output has no property for', () => {
    expect(issues(rule('marketing', 'mapped', ['patient.name.given', 'patient.language']))).toEqual([]);
    expect(issues(rule('marketing', 'mapped', ['patient.name.family']))).toEqual([
      {
        path: '0.send.fields.0',
        message: 'rule "crm-rule": output "mapped" has no property for field patient.name.family (it maps patient.name.given, patient.language): add it to the output\'s properties, or remove it from send.fields',
      },
    ]);
  });

  it("refuses a rule that does not send what the output requires, once per missing field, at send.fields", () => {
    const shielded: OutputInfo = { name: 'cdp', channel: 'crm', baa: true, allowedPurposes: ['care.followup'], requiredFields: { sensitivity: 'the labels refused', 'patient.birthDate': 'minors refused' } };
    const found = compileRules([rule('care.followup', 'cdp', ['patient.id', 'sensitivity'])], { outputs: [shielded] }).issues;
    expect(found.map((i) => [i.path.join('.'), i.message])).toEqual([['0.send.fields', 'rule "crm-rule": output "cdp" needs patient.birthDate in send.fields: minors refused']]);
    expect(compileRules([rule('care.followup', 'cdp', ['patient.id', 'sensitivity', 'patient.birthDate'])], { outputs: [shielded] }).issues).toEqual([]);
  });
});
