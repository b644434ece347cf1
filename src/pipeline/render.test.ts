import { describe, expect, it } from 'vitest';
import { PermanentError } from '../errors.ts';
import type { Delivery } from '../types.ts';
import { compilePath, type FieldPath } from './conditions.ts';
import {
  TemplateSet,
  compileTemplate,
  matchTemplateFile,
  renderDelivery,
  renderTemplate,
  samplePayload,
  templateFileName,
  templateReads,
  type CompiledTemplate,
  type TemplatePart,
} from './render.ts';

function paths(...texts: string[]): FieldPath[] {
  return texts.map((t) => {
    const p = compilePath(t);
    if (typeof p === 'string') throw new Error(p);
    return p;
  });
}

function compile(text: string, part: TemplatePart = 'body', language?: string, name = 'reminder'): CompiledTemplate {
  const { template, issues } = compileTemplate({ name, part, language, file: templateFileName(name, part, language), text });
  if (!template) throw new Error(issues.map((i) => i.message).join('\n'));
  return template;
}

function delivery(overrides: Partial<Delivery> = {}): Delivery {
  return {
    id: 'reminder@appointment/A1#0',
    ruleId: 'reminder',
    subjectKey: 'appointment/A1',
    subjectKind: 'appointment',
    subjectId: 'A1',
    step: 0,
    patientId: 'MRN1',
    triggerId: 't1',
    triggerType: 'appointment.booked',
    asOf: '2025-06-01T09:00:00+02:00',
    plannedAt: '2025-06-09T14:30:00+02:00',
    dueAt: '2025-06-09T14:30:00+02:00',
    purpose: 'care.logistics',
    channel: 'sms',
    output: 'sms-main',
    template: 'reminder',
    to: '+33612345678',
    cancelKeys: [],
    payload: {
      patient: { name: { given: ['Claire'] }, language: 'fr' },
      appointment: { start: '2025-06-10T14:30:00+02:00' },
    },
    ...overrides,
  };
}

describe('template files', () => {
  it('names and recognises files per part and language', () => {
    expect(templateFileName('reminder', 'body')).toBe('reminder.liquid');
    expect(templateFileName('reminder', 'body', 'fr')).toBe('reminder.fr.liquid');
    expect(templateFileName('welcome', 'subject', 'en')).toBe('welcome.en.subject.liquid');
    expect(matchTemplateFile('reminder.fr.liquid', 'reminder')).toEqual({ language: 'fr', part: 'body' });
    expect(matchTemplateFile('welcome.html.liquid', 'welcome')).toEqual({ part: 'html' });
    expect(matchTemplateFile('welcome.fr.text.liquid', 'welcome')).toEqual({ language: 'fr', part: 'text' });
    // Another template whose name starts the same way is not this one.
    expect(matchTemplateFile('reminder-7d.fr.liquid', 'reminder')).toBeUndefined();
    expect(matchTemplateFile('reminder.French.liquid', 'reminder')).toBeUndefined();
  });
});

describe('compileTemplate', () => {
  it('refuses unknown filters and file includes at load time, with a position', () => {
    const bad = compileTemplate({ name: 'r', part: 'body', file: 'r.liquid', text: 'Hi\n{{ patient.name.family | shout }}' });
    expect(bad.issues).toEqual([{ file: 'r.liquid', line: 2, column: 1, message: 'template: undefined filter: shout' }]);
    const include = compileTemplate({ name: 'r', part: 'body', file: 'r.liquid', text: '{% include "footer" %}' });
    expect(include.issues[0]!.message).toMatch(/tag "include" not found: templates cannot include other files/);
  });
});

describe('templateReads', () => {
  it('allows reads inside or above allowed fields and flags everything else with its position', () => {
    const t = compile(
      'Bonjour {{ patient.name.given.first }} {{ patient.name.given[0] | size }}\n' +
        '{% for g in patient.name.given %}{{ g }}{% endfor %}{% if appointment %}{{ appointment.start | local_time }}{% endif %}\n' +
        '{{ patient.birthDate }} {{ appointment[k] }}',
    );
    const reads = templateReads(t, paths('patient.name.given', 'appointment.start'));
    const denied = reads.filter((r) => !r.allowed).map((r) => `${r.text}@${r.line}:${r.column}`);
    expect(denied).toEqual(['patient.birthDate@3:4', 'appointment[k]@3:28', 'k@3:40']);
    expect(reads.filter((r) => r.allowed).map((r) => r.text)).toContain('appointment');
  });
});

describe('renderTemplate / renderDelivery', () => {
  const templates = new TemplateSet([
    compile('Rappel : RDV le {{ appointment.start | local_date }} à {{ appointment.start | local_time }}, {{ patient.name.given.first }}.', 'body', 'fr'),
    compile('Reminder: appointment on {{ appointment.start | local_date: "medium" }} at {{ appointment.start | local_time }}.'),
  ]);

  it('picks the patient language file and formats times in the zone and language', () => {
    const message = renderDelivery(templates, delivery(), { zone: 'Europe/Paris' });
    expect(message).toEqual({ language: 'fr', text: 'Rappel : RDV le mardi 10 juin 2025 à 14:30, Claire.' });
    // Same instant, another zone: the wall time follows the zone.
    expect(renderDelivery(templates, delivery(), { zone: 'America/New_York' }).text).toContain('à 08:30');
  });

  it('falls back to the default file when the language has none or is unknown', () => {
    const es = delivery({ payload: { patient: { language: 'es' }, appointment: { start: '2025-06-10T14:30:00+02:00' } } });
    expect(renderDelivery(templates, es, { zone: 'Europe/Paris' })).toEqual({ language: 'en', text: 'Reminder: appointment on Jun 10, 2025 at 2:30 PM.' });
    const none = delivery({ payload: { appointment: { start: '2025-06-10T14:30:00+02:00' } } });
    expect(renderDelivery(templates, none, { zone: 'Europe/Paris' }).language).toBe('en');
  });

  it('escapes data in HTML parts only', () => {
    const set = new TemplateSet([
      compile('RDV {{ patient.name.family }}', 'subject', undefined, 'mail'),
      compile('Bonjour {{ patient.name.family }}', 'text', undefined, 'mail'),
      compile('<p>Bonjour {{ patient.name.family }}</p>', 'html', undefined, 'mail'),
    ]);
    const d = delivery({ channel: 'email', template: 'mail', payload: { patient: { name: { family: 'O\'Neil <b>&' } } } });
    expect(renderDelivery(set, d, { zone: 'UTC' })).toEqual({
      language: 'en',
      subject: "RDV O'Neil <b>&",
      text: "Bonjour O'Neil <b>&",
      html: '<p>Bonjour O&#39;Neil &lt;b&gt;&amp;</p>',
    });
  });

  it('gives the payload as JSON when the rule has no template (webhook, crm)', () => {
    const d = delivery({ channel: 'webhook', template: undefined, payload: { appointment: { id: 'A1' } } });
    expect(renderDelivery(templates, d, { zone: 'UTC' }).text).toBe('{"appointment":{"id":"A1"}}');
  });

  it('fails permanently, naming the file and the variable only, when a field is absent', () => {
    const t = compile('Lieu : {{ appointment.location.name }}', 'body', undefined, 'where');
    const set = new TemplateSet([t]);
    const d = delivery({ template: 'where', payload: { patient: { name: { family: 'Secret-Name' } } } });
    let error: unknown;
    try {
      renderDelivery(set, d, { zone: 'UTC' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(PermanentError);
    expect((error as PermanentError).code).toBe('render_failed');
    expect((error as Error).message).toMatch(/^where\.liquid:1:\d+: undefined variable: appointment/);
    expect((error as Error).message).not.toContain('Secret-Name');
  });

  it('reads own properties only and refuses dates without an offset', () => {
    const t = compile('{{ patient.constructor }}');
    expect(() => renderTemplate(t, { patient: {} }, { zone: 'UTC', language: 'en' })).toThrow(/undefined variable/);
    const d = compile('{{ appointment.start | local_date }}');
    expect(() => renderTemplate(d, { appointment: { start: '2025-06-10T14:30' } }, { zone: 'UTC', language: 'en' })).toThrow(/time with offset/);
  });

  it('gives each date filter, style, zone and language its own text when the same time comes again', () => {
    const t = compile('{{ appointment.start | local_date }}|{{ appointment.start | local_date: "short" }}|{{ appointment.start | local_time }}|{{ appointment.start | local_format: "HH:mm" }}');
    const payload = { appointment: { start: '2025-06-10T23:30:00+02:00' } };
    for (let i = 0; i < 2; i++) {
      expect(renderTemplate(t, payload, { zone: 'Europe/Paris', language: 'en' })).toBe('Tuesday, June 10, 2025|6/10/2025|11:30 PM|23:30');
      expect(renderTemplate(t, payload, { zone: 'Europe/Paris', language: 'fr' })).toBe('mardi 10 juin 2025|10/06/2025|23:30|23:30');
      expect(renderTemplate(t, payload, { zone: 'America/New_York', language: 'en' })).toBe('Tuesday, June 10, 2025|6/10/2025|5:30 PM|17:30');
      expect(renderTemplate(t, payload, { zone: 'Asia/Tokyo', language: 'en' })).toBe('Wednesday, June 11, 2025|6/11/2025|6:30 AM|06:30');
    }
  });

  it('leaves stack traces on after a render, failed or not', () => {
    const limit = Error.stackTraceLimit;
    const t = compile('{% if appointment.location.name %}{{ appointment.location.name }}{% endif %}{{ patient.name.family }}');
    expect(renderTemplate(t, { patient: { name: { family: 'X' } } }, { zone: 'UTC', language: 'en' })).toBe('X');
    expect(Error.stackTraceLimit).toBe(limit);
    expect(() => renderTemplate(t, {}, { zone: 'UTC', language: 'en' })).toThrow(/undefined variable: patient/);
    expect(Error.stackTraceLimit).toBe(limit);
  });

  it('builds a sample payload in the payload shape for the load-time trial render', () => {
    const sample = samplePayload(paths('patient.name.given', 'patient.telecom.value', 'appointment.start', 'appointment.location'));
    expect(sample).toEqual({
      patient: { name: { given: ['sample-given'] }, telecom: [{ value: 'sample-value' }] },
      appointment: { start: '2030-01-15T09:30:00+01:00', location: { id: 'sample-id', name: 'sample-name', facility: 'sample-facility' } },
    });
  });
});
