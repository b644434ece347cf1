import { describe, expect, it } from 'vitest';
import type { Condition } from './conditions.ts';
import { compileCondition, compilePath, compilePattern, evaluate, MAX_SUBJECT_LENGTH, resolvePath } from './conditions.ts';
import { makeTrigger } from './test-helpers.ts';

function cond(raw: unknown): Condition {
  const { condition, issues } = compileCondition(raw, ['where']);
  expect(issues).toEqual([]);
  return condition!;
}

function issuesOf(raw: unknown) {
  return compileCondition(raw, [0, 'where']).issues;
}

const t = makeTrigger();

describe('operators', () => {
  it('eq, including the scalar shorthand and numeric codes written unquoted', () => {
    expect(evaluate(cond({ 'appointment.serviceType.code': { eq: 'CARDIO' } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.serviceType.code': 'CARDIO' }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.serviceType.code': 'ONCO' }), t)).toBe(false);
    expect(evaluate(cond({ 'patient.deceased': false }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.durationMinutes': 30 }), t)).toBe(true);
    const numeric = makeTrigger({ appointment: { serviceType: { code: '12345' } } });
    expect(evaluate(cond({ 'appointment.serviceType.code': 12345 }), numeric)).toBe(true);
  });

  it('eq on a time compares instants, whatever the offset', () => {
    expect(evaluate(cond({ 'appointment.start': '2025-06-10T12:30:00Z' }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.start': '2025-06-10T12:30:00+02:00' }), t)).toBe(false);
  });

  it('ne is exactly not eq (absent values are "not equal")', () => {
    expect(evaluate(cond({ 'patient.language': { ne: 'en' } }), t)).toBe(true);
    expect(evaluate(cond({ 'patient.language': { ne: 'fr' } }), t)).toBe(false);
    expect(evaluate(cond({ 'appointment.placerId': { ne: 'X' } }), t)).toBe(true);
  });

  it('in', () => {
    expect(evaluate(cond({ 'appointment.serviceType.code': { in: ['ONCO', 'CARDIO'] } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.serviceType.code': { in: ['ONCO', 'RAD'] } }), t)).toBe(false);
  });

  it('exists true / false, with empty strings counted as absent', () => {
    expect(evaluate(cond({ 'appointment.location': { exists: true } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.placerId': { exists: true } }), t)).toBe(false);
    expect(evaluate(cond({ 'appointment.placerId': { exists: false } }), t)).toBe(true);
    const empty = makeTrigger({ patient: { language: '' } });
    expect(evaluate(cond({ 'patient.language': { exists: true } }), empty)).toBe(false);
    expect(evaluate(cond({ encounter: { exists: false } }), t)).toBe(true);
  });

  it('gt/gte/lt/lte on numbers', () => {
    expect(evaluate(cond({ 'appointment.durationMinutes': { gte: 30 } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.durationMinutes': { gt: 30 } }), t)).toBe(false);
    expect(evaluate(cond({ 'appointment.durationMinutes': { lt: 31, gt: 29 } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.durationMinutes': { lte: 29 } }), t)).toBe(false);
  });

  it('gt/gte/lt/lte on times compare instants across offsets', () => {
    // 14:30+02:00 is 12:30Z
    expect(evaluate(cond({ 'appointment.start': { gte: '2025-06-10T12:30:00Z' } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.start': { gt: '2025-06-10T12:30:00Z' } }), t)).toBe(false);
    expect(evaluate(cond({ 'appointment.start': { lt: '2025-06-10T08:00:00-05:00' } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.start': { lte: '2025-06-10T13:29:59+01:00' } }), t)).toBe(false);
  });

  it('a time compared with a time expression over the same trigger: lead times', () => {
    // Booked 2025-06-01 09:00+02:00 for 2025-06-10 14:30+02:00: 9 days and 5.5 hours ahead.
    expect(evaluate(cond({ 'appointment.start': { gte: 'occurredAt + 7d' } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.start': { gte: 'occurredAt + 10d' } }), t)).toBe(false);
    expect(evaluate(cond({ 'appointment.start': { lt: 'occurredAt + 10d' } }), t)).toBe(true);
    expect(evaluate(cond({ 'occurredAt': { lte: 'appointment.start - 9d' } }), t)).toBe(true);
    expect(evaluate(cond({ 'occurredAt': { lte: 'appointment.start - 9d - 6h' } }), t)).toBe(false);
  });

  it('calendar steps of a time expression count in the rule zone, across a DST change', () => {
    // Paris springs forward on 2025-03-30: from Saturday 10:00 to Sunday 10:00 is 23 hours.
    const weekend = makeTrigger({ occurredAt: '2025-03-29T10:00:00+01:00', appointment: { start: '2025-03-30T10:00:00+02:00' } });
    const oneDay = cond({ 'appointment.start': { gte: 'occurredAt + 1d' } });
    expect(evaluate(oneDay, weekend, 'Europe/Paris')).toBe(true);
    expect(evaluate(oneDay, weekend, 'UTC')).toBe(false);
    expect(evaluate(cond({ 'appointment.start': { gte: 'occurredAt + 24h' } }), weekend, 'Europe/Paris')).toBe(false);
  });

  it('a time expression whose anchor the trigger lacks holds for nothing', () => {
    const lacking = cond({ 'appointment.start': { gte: 'encounter.end + 1d' } });
    expect(evaluate(lacking, t)).toBe(false);
    expect(evaluate(cond({ not: { 'appointment.start': { gte: 'encounter.end + 1d' } } }), t)).toBe(true);
  });

  it('gt/lt on dates (birthDate)', () => {
    expect(evaluate(cond({ 'patient.birthDate': { lt: '2007-06-01' } }), t)).toBe(true);
    expect(evaluate(cond({ 'patient.birthDate': { gte: '1980-04-13' } }), t)).toBe(false);
  });

  it('matches', () => {
    expect(evaluate(cond({ 'appointment.location.id': { matches: '^CARD-\\d+$' } }), t)).toBe(true);
    expect(evaluate(cond({ 'appointment.location.id': { matches: '^ONC' } }), t)).toBe(false);
  });

  it('a subject longer than the limit is never matched', () => {
    const long = makeTrigger({ appointment: { location: { id: 'X'.repeat(MAX_SUBJECT_LENGTH + 1) } } });
    const ok = makeTrigger({ appointment: { location: { id: 'X'.repeat(MAX_SUBJECT_LENGTH) } } });
    const c = cond({ 'appointment.location.id': { matches: '^X' } });
    expect(evaluate(c, ok)).toBe(true);
    expect(evaluate(c, long)).toBe(false);
  });
});

describe('all / any / not, nested', () => {
  it('a mapping with several keys means all', () => {
    expect(evaluate(cond({ 'patient.language': 'fr', 'appointment.serviceType.code': 'CARDIO' }), t)).toBe(true);
    expect(evaluate(cond({ 'patient.language': 'fr', 'appointment.serviceType.code': 'ONCO' }), t)).toBe(false);
    expect(evaluate(cond([{ 'patient.language': 'fr' }, { 'patient.gender': 'male' }]), t)).toBe(false);
  });

  it('nests all, any and not', () => {
    const c = cond({
      all: [
        { any: [{ 'patient.language': 'en' }, { 'patient.language': 'fr' }] },
        { not: { sensitivity: { in: ['PSY', 'HIV'] } } },
        { not: { any: [{ 'patient.deceased': true }, { 'appointment.status': 'cancelled' }] } },
      ],
    });
    expect(evaluate(c, t)).toBe(true);
    expect(evaluate(c, makeTrigger({ sensitivity: ['R', 'PSY'] }))).toBe(false);
    expect(evaluate(c, makeTrigger({ patient: { language: 'de' } }))).toBe(false);
    expect(evaluate(c, makeTrigger({ appointment: { status: 'cancelled' } }))).toBe(false);
  });
});

describe('paths into arrays', () => {
  it('reach every element: any element satisfies a positive test', () => {
    expect(evaluate(cond({ 'patient.telecom.use': 'mobile' }), t)).toBe(true);
    expect(evaluate(cond({ 'patient.name.given': 'Anne' }), t)).toBe(true);
    expect(evaluate(cond({ sensitivity: 'PSY' }), makeTrigger({ sensitivity: ['R', 'PSY'] }))).toBe(true);
    expect(evaluate(cond({ 'patient.telecom.value': { matches: '^\\+336' } }), t)).toBe(true);
  });

  it('ne holds only when no element equals', () => {
    expect(evaluate(cond({ 'patient.telecom.system': { ne: 'email' } }), t)).toBe(false);
    expect(evaluate(cond({ 'patient.telecom.system': { ne: 'fax' } }), t)).toBe(true);
  });

  it('without a filter, tests on different fields may hit different elements', () => {
    // home phone has use=home, email has system=email: separately each is "some element".
    expect(evaluate(cond({ 'patient.telecom.system': 'email', 'patient.telecom.use': 'mobile' }), t)).toBe(true);
  });

  it('a [key=value] filter ties tests to one element', () => {
    expect(evaluate(cond({ 'patient.telecom[system=email,use=mobile].value': { exists: true } }), t)).toBe(false);
    expect(evaluate(cond({ 'patient.telecom[system=phone,use=mobile].value': '+33612345678' }), t)).toBe(true);
    expect(evaluate(cond({ 'patient.identifiers[type=MR].value': 'MRN1' }), t)).toBe(true);
    const path = compilePath('patient.telecom[system=email].value');
    expect(typeof path === 'string' ? path : resolvePath(t, path)).toEqual(['claire@example.org']);
  });

  it('an empty array does not exist', () => {
    const none = makeTrigger({ patient: { telecom: [] } });
    expect(evaluate(cond({ 'patient.telecom': { exists: true } }), none)).toBe(false);
    expect(evaluate(cond({ 'patient.telecom': { exists: true } }), t)).toBe(true);
  });
});

describe('compile issues', () => {
  it('an unknown path names the closest known paths, at the offending key', () => {
    const issues = issuesOf({ all: [{ 'appointment.serviceType.cod': 'X' }] });
    expect(issues).toHaveLength(1);
    expect(issues[0].path).toEqual([0, 'where', 'all', 0, 'appointment.serviceType.cod']);
    expect(issues[0].message).toContain('unknown trigger path "appointment.serviceType.cod"');
    expect(issues[0].message).toContain('appointment.serviceType.code');
    expect(issuesOf({ 'patient.telephone': 'x' })[0].message).toContain('patient.telecom');
  });

  it('refuses unknown operators, wrong value types and misplaced tests, all at once', () => {
    const issues = issuesOf({
      'patient.language': { like: 'fr' },
      'appointment.durationMinutes': { gte: 'ten' },
      'patient.name.family': { gt: 'M' },
      'appointment.start': { lt: 'tomorrow' },
      'patient.deceased': 'no',
      'appointment.location': 'CARD-1',
      'patient.birthDate': { gt: '12/04/1980' },
      'appointment.status': ['booked'],
      'patient.gender': { exists: 'yes' },
      'patient.telecom[fax=1].value': { exists: true },
    });
    const at = (key: string) => issues.filter((i) => i.path.includes(key)).map((i) => i.message).join(' | ');
    expect(at('like')).toContain('unknown operator "like"');
    expect(at('appointment.durationMinutes')).toContain('holds a number');
    expect(at('patient.name.family')).toContain('compares numbers, times and dates');
    expect(at('appointment.start')).toContain('ISO-8601 instant with offset');
    expect(at('patient.deceased')).toContain('true/false');
    expect(at('appointment.location')).toContain('is an object');
    expect(at('patient.birthDate')).toContain('YYYY-MM-DD');
    expect(at('appointment.status')).toContain('in: [...]');
    expect(at('patient.gender')).toContain('exists takes true or false');
    expect(at('patient.telecom[fax=1].value')).toContain('filter key "fax"');
    expect(issues).toHaveLength(10);
  });

  it('refuses now, and text that is neither an instant nor a time expression, in time comparisons', () => {
    expect(issuesOf({ 'appointment.start': { gte: 'now + 7d' } })).toEqual([
      { path: [0, 'where', 'appointment.start', 'gte'], message: expect.stringMatching(/"now" cannot be used in a condition.*occurredAt \+ 7d/) },
    ]);
    expect(issuesOf({ 'appointment.start': { gte: 'next week' } })).toEqual([
      { path: [0, 'where', 'appointment.start', 'gte'], message: expect.stringMatching(/ISO-8601 instant with offset like .* or with a time expression over the trigger/) },
    ]);
    expect(issuesOf({ 'appointment.start': { gte: 'occurredAt + 7y' } })).toEqual([
      { path: [0, 'where', 'appointment.start', 'gte'], message: expect.stringMatching(/unknown time unit "y"/) },
    ]);
  });

  it('refuses empty all/any, empty mappings and non-mappings', () => {
    expect(issuesOf({ any: [] })[0].message).toContain('at least one');
    expect(issuesOf({})[0].message).toContain('empty condition');
    expect(issuesOf('patient.language == fr')[0].message).toContain('expected a mapping');
    expect(issuesOf({ all: { 'patient.language': 'fr' } })[0].message).toContain('takes a list');
    expect(issuesOf({ gte: 3 })[0].message).toContain('"gte" needs a trigger path');
  });
});

describe('bounded regular expressions', () => {
  it('refuses backreferences, lookaround, long and invalid patterns at compile time', () => {
    const refused = (pattern: string) => {
      const issues = issuesOf({ 'appointment.location.id': { matches: pattern } });
      expect(issues, pattern).toHaveLength(1);
      return issues[0].message;
    };
    expect(refused('^(a)\\1$')).toContain('backreferences');
    expect(refused('^(?<x>a)\\k<x>$')).toContain('backreferences');
    expect(refused('^a(?=b)')).toContain('lookahead');
    expect(refused('^a(?!b)')).toContain('lookahead');
    expect(refused('(?<=a)b')).toContain('lookbehind');
    expect(refused('(?<!a)b')).toContain('lookbehind');
    expect(refused('^' + 'a'.repeat(200))).toContain('at most 200');
    expect(refused('^(unclosed')).toContain('invalid regular expression');
  });

  it('refuses nested quantifiers and quantified alternations (exponential backtracking)', () => {
    for (const p of ['^(a+)+$', '^(a|aa)*$', '^(?:\\d*x)+$', '^(ab|cd){2,5}$']) {
      const r = compilePattern(p);
      expect(typeof r, p).toBe('string');
      expect(r as string).toContain('exponential');
    }
  });

  it('refuses patterns whose backtracking bound is too high, accepts common ones', () => {
    for (const p of ['a*a*a*b', '.*x.*y', '^a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?a?']) {
      expect(typeof compilePattern(p), p).toBe('string');
    }
    for (const p of ['^CARD', '^(CARD|ONC)-\\d+$', '^\\+33[67]\\d{8}$', 'oncolog', '^[A-Z]+-\\d+$', '^.*x.*y$', '(?:ab){1,3}', '^\\p{Lu}']) {
      expect(compilePattern(p), p).toBeInstanceOf(RegExp);
    }
  });

  it('the worst accepted patterns stay fast on the longest subject', () => {
    // Each is at the edge of what is accepted; a 1,000-character subject that fails late.
    const subject = 'a'.repeat(MAX_SUBJECT_LENGTH - 1) + '!';
    // Measured on V8 (Node 20): ^a+a+a{0,4}b ≈ 45 ms, the others < 20 ms; a refused one
    // like a*a*a*b takes over 30 s. The bound below leaves room for a loaded machine.
    for (const p of ['^a+a+a{0,4}b', '^a*a*a{0,4}b', 'a*b', '^.*a.*b', '^(?:a|b|c)a*a?a?b']) {
      const regex = compilePattern(p);
      expect(regex, p).toBeInstanceOf(RegExp);
      const started = performance.now();
      (regex as RegExp).test(subject);
      const ms = performance.now() - started;
      expect(ms, `${p} took ${ms.toFixed(1)} ms`).toBeLessThan(500);
    }
  });
});
