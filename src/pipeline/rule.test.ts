import { describe, expect, it } from 'vitest';
import { compileRules, defaultCancelOn, defaultReplanOn } from './rule.ts';
import { OUTPUTS } from './test-helpers.ts';

const reminder = {
  id: 'reminder-24h',
  on: ['appointment.booked'],
  where: { 'appointment.serviceType.code': { in: ['CARDIO'] } },
  purpose: 'care.logistics',
  channel: 'sms',
  send: { output: 'sms-main', template: 'reminder', fields: ['patient.name.given', 'appointment.start'] },
  at: 'appointment.start - 24h',
  expires: 'appointment.start',
};

function compile(...raw: unknown[]) {
  return compileRules(raw, { outputs: OUTPUTS });
}

function messages(raw: Record<string, unknown>) {
  return compile({ ...reminder, ...raw }).issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
}

describe('compileRules', () => {
  it('compiles a complete rule with defaults', () => {
    const { rules, issues } = compile(reminder);
    expect(issues).toEqual([]);
    const [rule] = rules;
    expect(rule.id).toBe('reminder-24h');
    expect(rule.on).toEqual(['appointment.booked']);
    expect(rule.send.to?.source).toBe('patient.telecom[system=phone,use=mobile].value');
    expect(rule.send.fields.map((f) => f.source)).toEqual(['patient.name.given', 'appointment.start']);
    expect(rule.at.map((a) => a.source)).toEqual(['appointment.start - 24h']);
    expect(rule.expires?.source).toBe('appointment.start');
    expect(rule.cancelOn).toEqual(['appointment.cancelled', 'appointment.deleted', 'appointment.noshow']);
    expect(rule.replanOn).toEqual(['appointment.rescheduled']);
    expect(rule.variants).toEqual([]);
    expect(rule.holdout).toBe(0);
  });

  it('accepts "on" as one string and "at" as a cadence', () => {
    const { rules, issues } = compile({ ...reminder, on: 'appointment.booked', at: ['appointment.start - 7d', 'appointment.start - 1d at 18:00'] });
    expect(issues).toEqual([]);
    expect(rules[0].at).toHaveLength(2);
  });

  it('derives cancelOn / replanOn from the trigger family', () => {
    expect(defaultCancelOn(['encounter.finished'])).toEqual(['encounter.discharge_cancelled', 'encounter.cancelled']);
    expect(defaultCancelOn(['encounter.started'])).toEqual(['encounter.cancelled']);
    expect(defaultCancelOn(['appointment.noshow'])).toEqual(['appointment.cancelled', 'appointment.deleted']);
    expect(defaultReplanOn(['appointment.booked', 'appointment.rescheduled'])).toEqual([]);
    expect(defaultReplanOn(['encounter.finished'])).toEqual([]);
    expect(defaultCancelOn(['patient.updated'])).toEqual([]);
  });

  it('refuses duplicate ids, naming the first rule', () => {
    const { rules, issues } = compile(reminder, reminder);
    expect(rules).toHaveLength(1);
    expect(issues).toEqual([{ path: [1, 'id'], message: expect.stringContaining('duplicate rule id "reminder-24h" (first used by rule #1)') }]);
  });

  it('refuses unknown keys with a suggestion', () => {
    expect(messages({ expire: 'appointment.start' })).toEqual([
      { path: '0.expire', message: expect.stringContaining('did you mean expires?') },
    ]);
    expect(messages({ send: { ...reminder.send, feilds: [] } })[0]).toEqual({ path: '0.send.feilds', message: expect.stringContaining('did you mean fields?') });
  });

  it('refuses unknown trigger types, purposes and channels', () => {
    expect(messages({ on: ['appointment.booked', 'appointment.canceled'] })).toEqual([
      { path: '0.on.1', message: expect.stringContaining('closest: appointment.cancelled') },
    ]);
    expect(messages({ purpose: 'care' })[0]).toEqual({ path: '0.purpose', message: expect.stringContaining('care.logistics, care.followup, survey') });
    expect(messages({ channel: 'pager' })[0].path).toBe('0.channel');
  });

  it('refuses slot.freed (about no patient) in on, cancelOn and replanOn, pointing to the waitlist', () => {
    expect(messages({ on: ['slot.freed'] })).toEqual([{ path: '0.on.0', message: expect.stringContaining("list it in the waitlist block's `on`") }]);
    expect(messages({ cancelOn: ['slot.freed'] })).toEqual([{ path: '0.cancelOn.0', message: expect.stringContaining('about no patient') }]);
  });

  it('checks the output: exists, same channel, purpose allowed', () => {
    expect(messages({ send: { ...reminder.send, output: 'sms-mian' } })).toEqual([
      { path: '0.send.output', message: expect.stringContaining('no output named "sms-mian"; known: sms-main') },
    ]);
    expect(messages({ channel: 'email' })).toEqual([
      { path: '0.send.output', message: 'output "sms-main" is a sms output, but the rule\'s channel is email' },
    ]);
    expect(messages({ purpose: 'marketing' })).toEqual([
      { path: '0.send.output', message: expect.stringContaining('does not allow purpose marketing') },
    ]);
  });

  it('refuses PHI to an output not covered by a BAA', () => {
    const crm = { channel: 'crm', purpose: 'marketing', send: { output: 'crm', fields: ['patient.name.given', 'appointment.serviceType.code'] } };
    expect(messages(crm)).toEqual([
      { path: '0.send.fields.1', message: expect.stringContaining('rule "reminder-24h": field appointment.serviceType.code may not go to output "crm"') },
    ]);
    expect(messages({ ...crm, send: { output: 'crm', fields: ['patient.name.given'] } })).toEqual([]);
  });

  it('refuses a holdout for care.* purposes, accepts it otherwise', () => {
    expect(messages({ holdout: 0.1 })).toEqual([{ path: '0.holdout', message: expect.stringContaining('refused for care.logistics') }]);
    expect(messages({ holdout: 0.1, purpose: 'survey' })).toEqual([]);
    expect(messages({ holdout: 1, purpose: 'survey' })[0].path).toBe('0.holdout');
  });

  it('checks variants', () => {
    const variants = [
      { id: 'a', weight: 1 },
      { id: 'a', weight: 0, at: ['appointment.start - 1d', 'appointment.start - 2d'] },
    ];
    expect(messages({ variants }).map((m) => m.path)).toEqual(['0.variants.1.id', '0.variants.1.weight', '0.variants.1.at']);
    expect(messages({ variants: [{ id: 'a', weight: 1 }] })[0].message).toContain('at least two');
  });

  it('refuses cancelOn / replanOn that overlap "on" or can never match', () => {
    expect(messages({ cancelOn: ['appointment.booked'] })[0]).toEqual({ path: '0.cancelOn.0', message: expect.stringContaining('triggers this rule') });
    expect(messages({ cancelOn: ['encounter.cancelled'] })[0]).toEqual({ path: '0.cancelOn.0', message: expect.stringContaining('could never match') });
    expect(messages({ replanOn: ['appointment.cancelled'] }).map((m) => m.path)).toEqual(['0.replanOn']);
  });

  it('refuses time anchors the trigger types never carry, and bad expressions', () => {
    expect(messages({ at: 'encounter.end + 1d' })[0]).toEqual({ path: '0.at', message: expect.stringContaining('never present on appointment.booked') });
    expect(messages({ at: ['appointment.start - 1d', 'appointment.start - 1 day'] })[0].path).toBe('0.at.1');
    expect(messages({ at: undefined })[0]).toEqual({ path: '0.at', message: expect.stringContaining('at is required') });
    // The same check for a lead time compared in `where`, however deeply nested.
    expect(messages({ where: { not: { 'appointment.start': { gte: 'encounter.end + 7d' } } } })).toEqual([
      { path: '0.where', message: expect.stringMatching(/"encounter.end" is never present on appointment.booked triggers; anchor on occurredAt instead/) },
    ]);
    expect(messages({ where: { 'appointment.start': { gte: 'occurredAt + 7d' } } })).toEqual([]);
  });

  it('maps condition issues under where, and reports every problem at once', () => {
    const { rules, issues } = compile({ ...reminder, where: { 'appointment.serviceType.cod': 'X' }, purpose: 'x', send: { output: 'nope' } });
    expect(rules).toEqual([]);
    expect(issues.map((i) => i.path.join('.'))).toEqual(['0.where.appointment.serviceType.cod', '0.purpose', '0.send.output', '0.send.template']);
  });

  it('refuses a rule that is not a mapping and bad ids', () => {
    expect(compile('reminder').issues[0]).toEqual({ path: [0], message: expect.stringContaining('must be a mapping') });
    expect(messages({ id: 'has space' })[0].path).toBe('0.id');
  });
});
