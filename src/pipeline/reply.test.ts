import { describe, expect, it } from 'vitest';
import { compileReply, matchAnswer, offerFor, replyWordingIssues, type ReplySpec } from './reply.ts';
import type { IssuePath } from './conditions.ts';
import type { TriggerType } from '../types.ts';

const outputs = [
  { name: 'ehr', writeBackKinds: ['confirm', 'cancel'] },
  { name: 'confirm-only', writeBackKinds: ['confirm'] },
  { name: 'sms' },
];
const rule: { on: TriggerType[]; channel: string } = { on: ['appointment.booked'], channel: 'sms' };

function compile(raw: unknown, over: Partial<typeof rule> & { optOutWords?: string[] } = {}): { spec?: ReplySpec; issues: Array<{ path: IssuePath; message: string }> } {
  const issues: Array<{ path: IssuePath; message: string }> = [];
  const spec = compileReply(raw, ['reply'], { ...rule, ...over }, { outputs, optOutWords: over.optOutWords ?? [] }, issues);
  return { ...(spec ? { spec } : {}), issues };
}

const STANDARD = {
  writeBack: 'ehr',
  answers: [
    { action: 'confirm', words: [1, 'Y', 'YES', 'C'], languages: { fr: ['OUI', 'O'] } },
    { action: 'cancel', words: ['2'] },
    { action: 'reschedule', words: ['3'], via: 'link' },
  ],
};

describe('compileReply', () => {
  it('compiles answers, their language words and where a reschedule goes', () => {
    const { spec, issues } = compile(STANDARD);
    expect(issues).toEqual([]);
    expect(spec).toEqual({
      writeBack: 'ehr',
      answers: [
        { action: 'confirm', words: ['1', 'Y', 'YES', 'C'], languages: { fr: ['OUI', 'O'] } },
        { action: 'cancel', words: ['2'], languages: {} },
        { action: 'reschedule', words: ['3'], languages: {}, via: 'link' },
      ],
    });
    // A reschedule without via is a staff task.
    expect(compile({ answers: [{ action: 'reschedule', words: ['3'] }] }).spec?.answers[0]?.via).toBe('task');
  });

  it('refuses opt-out words, the tenant\'s own, START and HELP as answers, at the word', () => {
    const { issues } = compile(
      { answers: [{ action: 'cancel', words: ['CANCEL', 'stop!', 'Opt Out', '2'] }, { action: 'confirm', words: ['HELP', 'start', 'ARRET'] }] },
      { optOutWords: ['ARRET'] },
    );
    expect(issues.map((i) => i.path.join('.'))).toEqual([
      'reply.answers.0.words.0',
      'reply.answers.0.words.1',
      'reply.answers.0.words.2',
      'reply.answers.1.words.0',
      'reply.answers.1.words.1',
      'reply.answers.1.words.2',
    ]);
    expect(issues[0]!.message).toMatch(/"CANCEL" cannot be an answer: it is an opt-out keyword .*FCC 24-24/);
    expect(issues[3]!.message).toMatch(/HELP keyword/);
  });

  it('refuses a word meaning two things, in any language', () => {
    const { issues } = compile({ answers: [{ action: 'confirm', words: ['1', 'yes'] }, { action: 'cancel', words: ['YES.'] }, { action: 'reschedule', words: ['3'], languages: { fr: ['1'] } }] });
    expect(issues.map((i) => i.path.join('.'))).toEqual(['reply.answers.1.words.0', 'reply.answers.2.languages.fr.0']);
  });

  it('refuses a reply on a rule that is not an sms appointment rule, or that an answer triggers', () => {
    expect(compile(STANDARD, { channel: 'email' }).issues[0]?.message).toMatch(/only an sms rule/);
    expect(compile(STANDARD, { on: ['encounter.finished' as never] }).issues[0]?.message).toMatch(/about an appointment/);
    expect(compile(STANDARD, { on: ['appointment.confirmed' as never] }).issues[0]?.message).toMatch(/thank-you asks nothing/);
  });

  it('checks the write-back output exists and can do what is offered', () => {
    expect(compile({ ...STANDARD, writeBack: 'nope' }).issues[0]).toMatchObject({ path: ['reply', 'writeBack'], message: expect.stringMatching(/no output named "nope"/) });
    expect(compile({ ...STANDARD, writeBack: 'sms' }).issues[0]?.message).toMatch(/does not write appointments back/);
    expect(compile({ ...STANDARD, writeBack: 'confirm-only' }).issues[0]?.message).toMatch(/cannot write back a cancel/);
  });

  it('a waitlist offer answers accept and decline only, with no writeBack; a reminder never offers them', () => {
    const offer = { on: ['appointment.waitlist_offered' as TriggerType] };
    expect(compile({ answers: [{ action: 'accept', words: ['1'] }, { action: 'decline', words: ['2'] }] }, offer).issues).toEqual([]);
    expect(compile({ writeBack: 'ehr', answers: [{ action: 'confirm', words: ['1'] }] }, offer).issues.map((i) => [i.path.join('.'), i.message])).toEqual([
      ['reply.writeBack', "an accepted waitlist offer is booked through the waitlist block's `book` output (docs/waitlist.md), not a writeBack"],
      ['reply.answers.0.action', "a waitlist offer's answers are accept and decline; got confirm"],
    ]);
    expect(compile({ answers: [{ action: 'decline', words: ['2'] }] }, offer).issues.map((i) => i.message)).toEqual(['a waitlist offer needs an accept answer (e.g. { action: accept, words: ["1", YES] })']);
    expect(compile({ answers: [{ action: 'accept', words: ['1'] }] }).issues.map((i) => i.message)).toEqual([
      'accept answers a waitlist offer (a rule on appointment.waitlist_offered); a reminder\'s answers are confirm, cancel, reschedule',
    ]);
  });

  it('reports shape problems with their path', () => {
    expect(compile({ answers: [] }).issues[0]?.path).toEqual(['reply', 'answers']);
    expect(compile({ answers: [{ action: 'delete', words: ['1'] }] }).issues[0]?.path).toEqual(['reply', 'answers', 0, 'action']);
    expect(compile({ answers: [{ action: 'confirm', words: ['1'], via: 'link' }] }).issues[0]?.path).toEqual(['reply', 'answers', 0, 'via']);
    expect(compile({ answer: [] }).issues.map((i) => i.path.join('.'))).toContain('reply.answer');
  });
});

describe('offers and answers', () => {
  const spec = compile(STANDARD).spec!;

  it('offers the words of every language plus the message language\'s own', () => {
    expect(offerFor(spec, 'fr').answers[0]!.words).toEqual(['1', 'Y', 'YES', 'C', 'OUI', 'O']);
    expect(offerFor(spec, 'en').answers[0]!.words).toEqual(['1', 'Y', 'YES', 'C']);
  });

  it('matches like the keywords: case, spaces and punctuation around ignored; sentences are not answers', () => {
    const fr = offerFor(spec, 'fr');
    expect(matchAnswer(fr, ' oui! ')).toEqual({ action: 'confirm', answer: 'OUI' });
    expect(matchAnswer(fr, '2.')).toEqual({ action: 'cancel', answer: '2' });
    expect(matchAnswer(fr, '3')).toEqual({ action: 'reschedule', answer: '3', via: 'link' });
    expect(matchAnswer(offerFor(spec, 'en'), 'oui')).toBeUndefined();
    expect(matchAnswer(fr, 'yes I will come')).toBeUndefined();
    expect(matchAnswer(fr, '4')).toBeUndefined();
  });
});

describe('replyWordingIssues', () => {
  const offer = offerFor(compile(STANDARD).spec!, 'en');
  const check = (text: string, optOut: string[] = []) => replyWordingIssues(text, offer, optOut, 'reminder');

  it('accepts the usual wording: digits for actions, STOP for opting out', () => {
    expect(check('Hi {{ patient.name.given.first }}, see you tomorrow. Reply 1 to confirm, 2 to cancel, 3 to reschedule. Reply STOP to opt out.')).toEqual([]);
    expect(check('Reply YES to confirm. Text STOP to stop receiving messages.')).toEqual([]);
  });

  it('refuses an opt-out word the patient is told to send for an action: in capitals, in quotes, after a reply verb', () => {
    const capitals = check('Reply 1 to confirm or CANCEL to cancel.');
    expect(capitals).toHaveLength(1);
    expect(capitals[0]).toMatchObject({ line: 1, column: 23 });
    expect(capitals[0]!.message).toMatch(/tells the patient to send "CANCEL".*FCC 24-24/);
    expect(check('Reply 1 to confirm,\nor "cancel" to cancel.')[0]).toMatchObject({ line: 2, column: 5 });
    expect(check('Reply 1 to confirm; text cancel to call it off')).toHaveLength(1);
    expect(check('Reply 1 to confirm; reply with end to cancel')).toHaveLength(1);
    expect(check('Reply 1 to confirm or STOP to cancel your visit')).toHaveLength(1);
    expect(check('Reply 1 to confirm or OPT OUT to cancel')).toHaveLength(1);
    expect(check('Répondez 1 pour confirmer, ou ARRET pour annuler', ['ARRET'])).toHaveLength(1);
  });

  it('leaves the word in a sentence alone, and Liquid variables out of it', () => {
    expect(check('Reply 2 to cancel; please cancel at least a day ahead. {{ appointment.location.name | default: "END" }}')).toEqual([]);
  });

  it('asks that the text names at least one offered answer', () => {
    const issues = check('See you tomorrow.');
    expect(issues).toHaveLength(1);
    expect(issues[0]!.message).toMatch(/names none of its answers/);
  });
});
