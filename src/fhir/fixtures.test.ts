// Golden files: fixtures/fhir/<name>.json (the POSTed body), optional <name>.context.json
// (receivedAt, sender, stored states, resources fetched back from the server) and
// <name>.triggers.ndjson (the expected triggers, one per line, reviewed by hand against
// docs/trigger.md); optional <name>.joins.json: the video-visit join information returned apart
// from the triggers (docs/video.md). CARERELAY_UPDATE_GOLDEN=1 rewrites the .ndjson files (and
// the .joins.json files that exist) from the code: review the diff before committing it.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { SubjectState } from '../store/store.ts';
import { normalizeNotification } from './normalize.ts';
import { readNotification, type FhirResource } from './notification.ts';

const dir = fileURLToPath(new URL('../../fixtures/fhir/', import.meta.url));
const update = process.env.CARERELAY_UPDATE_GOLDEN === '1';

interface FixtureContext {
  receivedAt: string;
  sender: string;
  previous?: SubjectState[];
  fetched?: Record<string, FhirResource>;
}

const DEFAULT_CONTEXT: FixtureContext = { receivedAt: '2021-09-23T09:30:05Z', sender: 'https://example.org/fhir' };

function run(name: string): string {
  return outputOf(name).triggers;
}

function outputOf(name: string): { triggers: string; joins: string } {
  const body = readFileSync(`${dir}${name}.json`);
  const contextFile = `${dir}${name}.context.json`;
  const context: FixtureContext = existsSync(contextFile)
    ? (JSON.parse(readFileSync(contextFile, 'utf8')) as FixtureContext)
    : DEFAULT_CONTEXT;
  const states = context.previous ?? [];
  const result = normalizeNotification(readNotification(body), {
    receivedAt: context.receivedAt,
    sender: context.sender,
    previous: (kind, id) => states.find((s) => s.kind === kind && s.id === id),
    fetched: new Map(Object.entries(context.fetched ?? {})),
  });
  return { triggers: result.triggers.map((t) => `${JSON.stringify(t)}\n`).join(''), joins: `${JSON.stringify(result.joins ?? [], null, 2)}\n` };
}

const names = readdirSync(dir)
  .filter((f) => f.endsWith('.json') && !f.endsWith('.context.json') && !f.endsWith('.joins.json'))
  .map((f) => f.slice(0, -'.json'.length))
  .sort();

describe('FHIR golden fixtures', () => {
  it('has fixtures for every corpus notification and every FHIR trigger type', () => {
    expect(names.length).toBeGreaterThanOrEqual(25);
    const types = new Set(
      names.flatMap((n) =>
        existsSync(`${dir}${n}.triggers.ndjson`)
          ? readFileSync(`${dir}${n}.triggers.ndjson`, 'utf8')
              .split('\n')
              .filter(Boolean)
              .map((line) => (JSON.parse(line) as { type: string }).type)
          : [],
      ),
    );
    expect([...types].sort()).toEqual([
      'appointment.booked',
      'appointment.cancelled',
      'appointment.checked_in',
      'appointment.deleted',
      'appointment.fulfilled',
      'appointment.modified',
      'appointment.noshow',
      'appointment.rescheduled',
      'encounter.cancelled',
      'encounter.discharge_cancelled',
      'encounter.finished',
      'encounter.planned',
      'encounter.started',
      'encounter.transferred',
      'patient.merged',
      'patient.updated',
    ]);
  });

  it.each(names)('%s', (name) => {
    const actual = run(name);
    const expectedFile = `${dir}${name}.triggers.ndjson`;
    if (update) writeFileSync(expectedFile, actual);
    expect(actual).toBe(readFileSync(expectedFile, 'utf8'));
    // Deterministic: the same input twice gives byte-identical triggers (same ids).
    expect(run(name)).toBe(actual);
    const joinsFile = `${dir}${name}.joins.json`;
    if (existsSync(joinsFile)) {
      const joins = outputOf(name).joins;
      if (update) writeFileSync(joinsFile, joins);
      expect(joins).toBe(readFileSync(joinsFile, 'utf8'));
    }
  });
});
