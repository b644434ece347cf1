// Every trigger CareRelay produces in its golden fixtures (HL7v2 and FHIR paths) conforms to
// the trigger JSON Schema, and the schema itself refuses what docs/trigger.md rules out.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { triggerSchema } from '../src/trigger-schema.ts';
import { TRIGGER_TYPES } from '../src/types.ts';

const fixtures = path.join(import.meta.dirname, '..', 'fixtures');
const validate = new Ajv({ allErrors: true, strict: true }).compile(triggerSchema);

function goldenTriggers(): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  for (const dir of ['hl7v2', 'fhir']) {
    for (const name of readdirSync(path.join(fixtures, dir))) {
      if (!name.endsWith('.ndjson')) continue;
      const lines = readFileSync(path.join(fixtures, dir, name), 'utf8').split('\n').filter((l) => l.trim() !== '');
      lines.forEach((line, i) => out.push([`${dir}/${name}#${i + 1}`, JSON.parse(line)]));
    }
  }
  return out;
}

describe('trigger JSON Schema', () => {
  const all = goldenTriggers();

  it('has golden triggers from both paths to check', () => {
    expect(all.filter(([n]) => n.startsWith('hl7v2/')).length).toBeGreaterThan(20);
    expect(all.filter(([n]) => n.startsWith('fhir/')).length).toBeGreaterThan(10);
  });

  it.each(all)('%s conforms', (_name, trigger) => {
    const ok = validate(trigger);
    expect(validate.errors ?? []).toEqual([]);
    expect(ok).toBe(true);
  });

  it('names every trigger type CareRelay makes, and no other', () => {
    expect([...triggerSchema.properties.type.enum].sort()).toEqual([...TRIGGER_TYPES].sort());
  });

  it('refuses an unknown type, a time without offset and a patient without deceased', () => {
    const [, sample] = all.find(([n]) => n.startsWith('hl7v2/SIU-S12-01'))!;
    const base = sample as Record<string, unknown>;
    expect(validate({ ...base, type: 'appointment.reminded' })).toBe(false);
    expect(validate({ ...base, occurredAt: '2021-09-24T09:30:00' })).toBe(false);
    const { deceased: _dropped, ...patient } = base.patient as Record<string, unknown>;
    expect(validate({ ...base, patient })).toBe(false);
  });
});

describe('slot.freed', () => {
  const [, sample] = goldenTriggers().find(([n]) => n.startsWith('hl7v2/SIU-S12-01'))!;
  const { patient, appointment: _appointment, ...rest } = sample as Record<string, unknown>;
  const freed = { ...rest, type: 'slot.freed', slot: { id: 'SLOT-1', status: 'free', start: '2026-03-17T10:00:00+01:00', practitioner: { id: 'DR-1' } } };

  it('is the one type without a patient, and it has a slot instead', () => {
    expect(validate(freed)).toBe(true);
    expect(validate({ ...freed, patient })).toBe(false);
    expect(validate({ ...rest })).toBe(false);
    const { slot: _slot, ...noSlot } = freed;
    expect(validate(noSlot)).toBe(false);
    expect(validate({ ...freed, slot: { id: 'SLOT-1', status: 'free', start: '2026-03-17T10:00:00' } })).toBe(false);
  });
});

describe('appointment.virtual', () => {
  const [, sample] = goldenTriggers().find(([n]) => n.startsWith('hl7v2/cr-siu-s12-video-zvv'))!;
  const base = sample as { appointment: Record<string, unknown> };

  it('carries the channel and whether join information was given, and never a URL', () => {
    expect(base.appointment.virtual).toEqual({ channel: 'zoom', hasJoinInfo: true });
    expect(validate(base)).toBe(true);
    // The schema is closed: a join URL cannot ride in a trigger under any name.
    for (const key of ['url', 'addressUrl', 'joinUrl']) {
      expect(validate({ ...base, appointment: { ...base.appointment, virtual: { hasJoinInfo: true, [key]: 'https://vendor.example/j/1' } } })).toBe(false);
    }
    expect(validate({ ...base, appointment: { ...base.appointment, virtual: { channel: 'zoom' } } })).toBe(false);
  });
});
