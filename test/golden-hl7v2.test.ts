// Golden tests: every HL7v2 sample in fixtures/hl7v2 against its hand-reviewed expected
// output (fixtures/hl7v2/README.md says how each expectation was derived).
//
// For <name>.hl7 exactly one of:
//   <name>.triggers.ndjson  the triggers, one JSON per line (possibly none)
//   <name>.result.json      { kind: "rejected" | "ignored", reason, field? }
// Optional:
//   <name>.context.json     { timezone, virtualVisit? } (default UTC, no virtual visit place)
//   <name>.joins.json       the video-visit join information returned apart from the triggers
//   <name>.stored.json      { appointments: SubjectState[] } → applyStoredState, compared
//                           with <name>.stateful.ndjson
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { applyStoredState, normalizeHl7, type Hl7Normalized } from '../src/inputs/hl7v2/normalize.ts';
import type { VirtualVisitSetting } from '../src/inputs/hl7v2/virtual-visit.ts';
import type { SubjectState } from '../src/store/store.ts';
import type { Trigger } from '../src/types.ts';

const DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'hl7v2');
const RECEIVED_AT = '2026-01-01T00:00:00+00:00';
const names = readdirSync(DIR)
  .filter((f) => f.endsWith('.hl7'))
  .map((f) => f.slice(0, -4))
  .sort();

function sidecar(name: string, suffix: string): string | undefined {
  const file = path.join(DIR, `${name}.${suffix}`);
  return existsSync(file) ? readFileSync(file, 'utf8') : undefined;
}

function ndjson(text: string): Trigger[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Trigger);
}

function normalizeFixture(name: string): Hl7Normalized {
  const context = sidecar(name, 'context.json');
  const { timezone, virtualVisit } = context ? (JSON.parse(context) as { timezone: string; virtualVisit?: VirtualVisitSetting }) : { timezone: 'UTC', virtualVisit: undefined };
  return normalizeHl7(parseHl7(readFileSync(path.join(DIR, `${name}.hl7`))), { receivedAt: RECEIVED_AT, timezone, ...(virtualVisit ? { virtualVisit } : {}) });
}

describe('HL7v2 golden fixtures', () => {
  it('has fixtures (corpus samples and CareRelay cases)', () => {
    expect(names.length).toBeGreaterThanOrEqual(40);
    expect(names).toContain('SIU-S12-01');
    expect(names).toContain('adt-example');
  });

  for (const name of names) {
    it(`${name}.hl7 gives its expected output`, () => {
      const triggers = sidecar(name, 'triggers.ndjson');
      const result = sidecar(name, 'result.json');
      expect([triggers, result].filter((x) => x !== undefined), `${name}: exactly one expectation file`).toHaveLength(1);
      const actual = normalizeFixture(name);
      if (triggers !== undefined) {
        expect(actual.kind, actual.kind !== 'triggers' ? JSON.stringify(actual) : '').toBe('triggers');
        if (actual.kind === 'triggers') expect(actual.triggers).toEqual(ndjson(triggers));
        const joins = sidecar(name, 'joins.json');
        if (joins !== undefined && actual.kind === 'triggers') expect(actual.joins ?? []).toEqual(JSON.parse(joins));
      } else {
        expect(actual).toEqual(JSON.parse(result!));
      }
    });
  }

  it('is deterministic: the same bytes give the same trigger ids', () => {
    for (const name of names) {
      const a = normalizeFixture(name);
      const b = normalizeFixture(name);
      expect(b).toEqual(a);
    }
  });

  it('gives a distinct id to every trigger, although the GHH samples reuse MSH-10', () => {
    const ids: string[] = [];
    for (const name of names) {
      const r = normalizeFixture(name);
      if (r.kind === 'triggers') ids.push(...r.triggers.map((t) => t.id));
    }
    expect(ids.length).toBeGreaterThan(30);
    expect(new Set(ids).size).toBe(ids.length);
  });

  for (const name of names.filter((n) => sidecar(n, 'stored.json') !== undefined)) {
    it(`${name}.hl7 with stored state gives ${name}.stateful.ndjson`, () => {
      const stored = JSON.parse(sidecar(name, 'stored.json')!) as { appointments: SubjectState[] };
      const expected = ndjson(sidecar(name, 'stateful.ndjson')!);
      const applied = applyStoredState(normalizeFixture(name), {
        appointment: (id) => stored.appointments.find((s) => s.id === id),
        appointmentsOfPatient: (patientId) => stored.appointments.filter((s) => s.patientId === patientId),
      });
      expect(applied.kind).toBe('triggers');
      if (applied.kind === 'triggers') expect(applied.triggers).toEqual(expected);
    });
  }
});
