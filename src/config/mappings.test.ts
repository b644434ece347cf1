import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatConfigIssue, type ConfigIssue } from '../errors.ts';
import { outputSpecs } from '../outputs/index.ts';
import { outputInfos } from '../outputs/spec.ts';
import type { OutputInfo } from '../pipeline/rule.ts';
import { loadMappings } from './mappings.ts';

const OUTPUTS: OutputInfo[] = [
  { name: 'sms', channel: 'sms', baa: true, allowedPurposes: ['care.logistics', 'care.followup'] },
  { name: 'ehr', channel: 'fhir', baa: true, allowedPurposes: [], writeBackKinds: ['confirm', 'cancel'] },
  { name: 'mail', channel: 'email', baa: true, allowedPurposes: ['care.logistics', 'care.followup', 'survey'] },
];

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'carerelay-mappings-'));
  await mkdir(path.join(dir, 'mappings', 'templates'), { recursive: true });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function write(files: Record<string, string>): Promise<void> {
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, 'mappings', name), text);
}

async function load(outputs: readonly OutputInfo[] = OUTPUTS): Promise<{ issues: ConfigIssue[]; lines: string[]; set: Awaited<ReturnType<typeof loadMappings>> }> {
  const issues: ConfigIssue[] = [];
  const set = await loadMappings({ configDir: dir, env: {}, outputs, issues });
  // Paths as shown are relative to the working directory or absolute: keep the tail only.
  const base = path.join(dir, 'mappings');
  const lines = issues
    .map((i) => formatConfigIssue({ ...i, file: path.relative(base, path.resolve(i.file)) }).replaceAll(`${base}/`, ''))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  return { issues, lines, set };
}

const GOOD = `languages: [fr]
rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send:
      output: sms
      template: reminder
      fields: [patient.language, patient.name.given, appointment.start]
    at: appointment.start - 24h
    expires: appointment.start
`;

describe('loadMappings', () => {
  it('compiles rules and their templates; test files and other templates are left alone', async () => {
    await write({
      'reminders.yaml': GOOD,
      'reminders.test.yaml': 'not: [a mapping file',
      'templates/reminder.liquid': 'Reminder {{ appointment.start | local_time }}',
      'templates/reminder.fr.liquid': 'Rappel {{ patient.name.given.first }} {{ appointment.start | local_time }}',
      'templates/unused.liquid': '{{ anything.at.all }}',
    });
    const { issues, set } = await load();
    expect(issues).toEqual([]);
    expect(set.rules.map((r) => r.id)).toEqual(['reminder']);
    expect(set.templates.languages('reminder')).toEqual(['fr']);
    expect(set.templates.size).toBe(2);
    expect(set.sources.reminder).toMatchObject({ line: 3, column: 5 });
    expect(Object.isFrozen(set.rules[0]!.send.fields)).toBe(true);
  });

  it('reports every kind of error at once, each at file:line:column', async () => {
    await write({
      'a.yaml': `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send:
      output: sms
      template: reminder
      fields: [patient.language, appointment.start]
    at: appointment.start - 24x
    colour: blue
  - id: survey
    on: appointment.fulfilled
    purpose: survey
    channel: sms
    send: { output: sms, template: survey, fields: [appointment.end] }
    at: appointment.end + 1d at 10:00
  - id: followup
    on: appointment.fulfilled
    purpose: care.followup
    channel: email
    send: { output: mail, template: followup, fields: [appointment.end] }
    at: appointment.end + 2h
    holdout: 0.1
`,
      'b.yaml': `languages: [en, fr]
rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: short, fields: [appointment.start] }
    at: appointment.start - 2h
`,
      'templates/reminder.liquid': 'Hi {{ patient.name.family }},\nsee you {{ appointment.start | local_time }}',
      'templates/reminder.fr.liquid': 'Rappel {{ appointment.start | local_time }}',
      'templates/survey.liquid': 'How was it?',
      'templates/followup.subject.liquid': 'Your visit',
      'templates/followup.text.liquid': 'Take care.',
      'templates/short.liquid': 'Soon: {{ appointment.start | local_date: "tiny" }}',
      'templates/short.fr.liquid': 'Bientôt',
    });
    const { lines } = await load();
    expect(lines).toEqual([
      'a.yaml:10:9: unknown time unit "x" in "appointment.start - 24x"; use m (minutes), h (hours), d (calendar days) or w (weeks)',
      'a.yaml:11:5: unknown key "colour"; did you mean holdout? (known: id, on, where, purpose, channel, send, at, expires, cancelOn, replanOn, variants, holdout, reply, description)',
      'a.yaml:16:21: output "sms" does not allow purpose survey (allowed: care.logistics, care.followup) (docs/consent.md rule 4)',
      'a.yaml:24:14: a holdout is refused for care.followup: care messages are not withheld to build a control group (docs/consent.md "Measuring outcomes"); use variants, or a non-care purpose',
      'b.yaml:3:9: duplicate rule id "reminder" (first used at a.yaml:2:5); ids must be unique across all mapping files',
      'b.yaml:7:36: template "short" (rule "reminder", sms) is missing templates/short.en.liquid; sms templates are short[.<lang>].liquid, with a language-less default',
      'b.yaml:7:43: template "short" exists in en, fr: add patient.language to send.fields so the patient\'s language can be chosen (without it the default file is always used)',
      'templates/reminder.liquid:1:7: reads "patient.name.family", which rule "reminder" (a.yaml:2:5) does not allow: add the field to its send.fields, or remove it from the template',
      'templates/short.liquid:1:7: trial render for rule "reminder" failed: local_date takes "short", "medium" or "long", got "tiny"',
    ]);
  });

  it('reports a missing email part and a missing default, and unknown top-level keys', async () => {
    await write({
      'c.yaml': `rule:
  - oops
rules:
  - id: welcome
    on: appointment.booked
    purpose: care.logistics
    channel: email
    send: { output: mail, template: welcome, fields: [patient.language] }
    at: now
`,
      'templates/welcome.fr.subject.liquid': 'Bienvenue',
      'templates/welcome.text.liquid': 'Welcome',
    });
    const { lines } = await load();
    expect(lines).toEqual([
      'c.yaml:1:1: unknown key "rule" (allowed: description, languages, rules)',
      'c.yaml:8:37: template "welcome" (rule "welcome", email) is missing templates/welcome.subject.liquid, templates/welcome.fr.text.liquid; email templates are welcome[.<lang>].subject.liquid and welcome[.<lang>].text.liquid (+ optional .html.liquid), with a language-less default',
    ]);
  });

  it('gives an empty set without a mappings directory', async () => {
    await rm(path.join(dir, 'mappings'), { recursive: true });
    const { issues, set } = await load();
    expect(issues).toEqual([]);
    expect(set.rules).toEqual([]);
  });

  it('a no-name variant may not read the name; a non-care email must carry its unsubscribe link, care templates cannot read it', async () => {
    await write({
      'rules.yaml': `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, noNameTemplate: reminder-noname, fields: [patient.name.given, appointment.start] }
    at: appointment.start - 24h
  - id: survey
    on: appointment.fulfilled
    purpose: survey
    channel: email
    send: { output: mail, template: survey, fields: [patient.name.given] }
    at: now
`,
      'templates/reminder.liquid': 'Hello {{ patient.name.given.first }} {{ unsubscribe_url }}',
      'templates/reminder-noname.liquid': 'Hello {{ patient.name.given.first }}, see you {{ appointment.start | local_time }}',
      'templates/survey.subject.liquid': 'How was it?',
      'templates/survey.text.liquid': 'Hello {{ patient.name.given.first }}',
    });
    const { lines } = await load();
    expect(lines).toEqual([
      expect.stringMatching(/^templates\/reminder-noname\.liquid:1:10: reads "patient\.name\.given\.first", but it is the no-name variant of rule "reminder"/),
      'templates/reminder.liquid:1:41: reads "unsubscribe_url", which only non-care emails have (rule "reminder" is sms care.logistics)',
      'templates/survey.text.liquid:1:1: rule "survey" sends survey email: its text must carry the unsubscribe link, {{ unsubscribe_url }} (docs/consent.md rule 2)',
    ]);
    await write({ 'templates/survey.text.liquid': 'Hello {{ patient.name.given.first }}. Unsubscribe: {{ unsubscribe_url }}', 'templates/reminder.liquid': 'Hi', 'templates/reminder-noname.liquid': 'Hi' });
    expect((await load()).lines).toEqual([]);
  });

  describe('replies', () => {
    const RULES = `rules:
  - id: reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [patient.language, appointment.start] }
    at: appointment.start - 24h
    reply:
      writeBack: ehr
      answers:
        - { action: confirm, words: ["1", YES], languages: { fr: [OUI] } }
        - { action: cancel, words: ["2", CANCEL] }
        - { action: reschedule, words: ["3"], via: link }
`;

    it('refuses opt-out answers at the word, opt-out words in the reply instructions at the template line, and a link nobody sends', async () => {
      await write({
        'rules.yaml': RULES,
        'templates/reminder.liquid': 'See you {{ appointment.start | local_time }}.\nReply 1 to confirm, CANCEL to cancel, 3 for another time.',
        'templates/reminder.fr.liquid': 'A demain. Répondez OUI pour confirmer, 2 pour annuler.',
      });
      const { lines } = await load();
      expect(lines).toEqual([
        expect.stringMatching(/^rules\.yaml:12:42: "CANCEL" cannot be an answer: it is an opt-out keyword/),
      ]);
      // The rule compiles once its answers are fixed: then its wording and its link are checked.
      await write({ 'rules.yaml': RULES.replace(', CANCEL]', ']') });
      expect((await load()).lines).toEqual([
        expect.stringMatching(/^rules\.yaml:13:52: rule "reminder" answers 3 with a rebooking link, but no rule listens to appointment\.reschedule_requested/),
        expect.stringMatching(/^templates\/reminder\.liquid:2:21: rule "reminder" asks for a reply, and this text tells the patient to send "CANCEL"/),
      ]);
      await write({
        'rules.yaml': RULES.replace(', CANCEL]', ']').replace('via: link', 'via: task'),
        'templates/reminder.liquid': 'See you {{ appointment.start | local_time }}.\nReply 1 to confirm, 2 to cancel, 3 for another time. Reply STOP to opt out.',
      });
      const loaded = await load();
      expect(loaded.lines).toEqual([]);
      expect(loaded.set.rules[0]!.reply).toMatchObject({ writeBack: 'ehr', answers: [{ action: 'confirm' }, { action: 'cancel' }, { action: 'reschedule', via: 'task' }] });
    });

    it('a write-back output is not a message output', async () => {
      await write({ 'rules.yaml': RULES.replace('output: sms', 'output: ehr'), 'templates/reminder.liquid': 'Reply 1' });
      expect((await load()).lines).toContainEqual(expect.stringMatching(/^rules\.yaml:6:21: output "ehr" writes answers back to the EHR and sends no messages/));
    });
  });

  it('a rule to Adobe AEP under Healthcare Shield (baa: true) must send sensitivity and patient.birthDate: refused at the rule\'s fields', async () => {
    const aep = (baa: boolean) => outputInfos([{ type: 'adobe-aep', name: 'aep', config: { name: 'aep', type: 'adobe-aep', baa, allowedPurposes: ['care.followup'] } }], outputSpecs);
    await write({
      'rules.yaml': `rules:
  - id: followup-journey
    on: encounter.finished
    purpose: care.followup
    channel: crm
    send: { output: aep, fields: [patient.id, encounter.class] }
    at: now
`,
    });
    expect((await load(aep(true))).lines).toEqual([
      // At the rule's send.fields (line 6, column 34), sorted.
      expect.stringMatching(/^rules\.yaml:6:34: rule "followup-journey": output "aep" needs patient\.birthDate in send\.fields: .*minors' records/),
      expect.stringMatching(/^rules\.yaml:6:34: rule "followup-journey": output "aep" needs sensitivity in send\.fields: under Healthcare Shield .*sensitivity labels$/),
    ]);
    await write({ 'rules.yaml': (await readFile(path.join(dir, 'mappings', 'rules.yaml'), 'utf8')).replace('encounter.class]', 'encounter.class, sensitivity, patient.birthDate]') });
    expect((await load(aep(true))).lines).toEqual([]);
    // Without the BAA a care rule may not go there at all; the Shield's fields are not asked for.
    expect((await load(aep(false))).lines).toEqual([expect.stringContaining('is not declared baa: true, so it may not carry care.followup messages')]);
  });
});

describe('send.videoLink (docs/video.md)', () => {
  const rule = (extra: string, on = 'appointment.booked', purpose = 'care.logistics', template = 'join') => `rules:
  - id: join
    on: ${on}
    purpose: ${purpose}
    channel: sms
    send: { output: sms, template: ${template}, fields: [appointment.start]${extra} }
    at: appointment.start - 30m
`;

  it('gives the templates {{ video.link }} and checks a trial render with it', async () => {
    await write({ 'v.yaml': rule(', videoLink: true'), 'templates/join.liquid': 'Join at {{ appointment.start | local_time }}: {{ video.link }}' });
    const { issues, set } = await load();
    expect(issues).toEqual([]);
    expect(set.rules[0]!.send.videoLink).toBe(true);
  });

  it('refuses the link where a rule does not declare it, and a declared link its template never shows', async () => {
    await write({ 'a.yaml': rule(''), 'templates/join.liquid': 'Join: {{ video.link }}' });
    expect((await load()).lines).toEqual([
      'templates/join.liquid:1:10: reads "video.link", which only rules with send.videoLink: true have (rule "join", a.yaml:2:5; docs/video.md)',
    ]);
    await write({ 'a.yaml': rule(', videoLink: true'), 'templates/join.liquid': 'Your visit is at {{ appointment.start | local_time }}.' });
    expect((await load()).lines).toEqual(['templates/join.liquid:1:1: rule "join" has send.videoLink: true: its message must show the link, {{ video.link }} (docs/video.md)']);
  });

  it('keeps the link to care rules about appointments, with a template', async () => {
    await write({
      'a.yaml': rule(', videoLink: true', 'encounter.finished', 'care.followup'),
      'templates/join.liquid': '{{ video.link }}',
    });
    expect((await load()).lines).toContain('a.yaml:6:82: a video link joins an appointment; encounter.finished is not about one');
    await write({ 'a.yaml': rule(', videoLink: true', 'appointment.booked', 'care.followup').replace('care.followup', 'survey'), 'templates/join.liquid': '{{ video.link }}' });
    expect((await load()).lines).toContain('a.yaml:6:82: a video link is sent for care only; purpose survey cannot carry one (use care.logistics)');
    await write({ 'a.yaml': rule(', videoLink: "yes"'), 'templates/join.liquid': '{{ video.link }}' });
    expect((await load()).lines.some((l) => l.includes('videoLink is true'))).toBe(true);
  });
});
