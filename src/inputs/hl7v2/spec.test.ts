import { describe, expect, it } from 'vitest';
import type { JsonSchema } from '../../config/yaml.ts';
import { inputSpecs } from '../index.ts';
import { isSenderAllowed } from './spec.ts';

/** Properties (dotted paths) lacking a description, or optional without a default. */
function undocumented(schema: JsonSchema, at = ''): string[] {
  const problems: string[] = [];
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  for (const [key, child] of Object.entries(properties)) {
    const where = `${at}${key}`;
    if (typeof child.description !== 'string' || child.description.length < 10) problems.push(`${where}: description`);
    // Optional blocks (tls, auth, a secret reference) are absent by default: nothing to default.
    const alternatives = (child.anyOf ?? []) as JsonSchema[];
    const isOptionalBlock = child.type === 'object' || alternatives.some((a) => a.type === 'object');
    if (!required.has(key) && !('default' in child) && !isOptionalBlock) problems.push(`${where}: default`);
    // A secret reference's env/file are alternatives, documented by the reference itself.
    if (child.type === 'object' && child['x-secret'] !== true) problems.push(...undocumented(child, `${where}.`));
  }
  return problems;
}

describe('input specs', () => {
  it('document every property (description, and a default when optional)', () => {
    for (const spec of inputSpecs) {
      expect(spec.summary.length, spec.type).toBeGreaterThan(10);
      expect(undocumented(spec.configSchema), spec.type).toEqual([]);
    }
  });

  it('have unique type names', () => {
    const types = inputSpecs.map((s) => s.type);
    expect(new Set(types).size).toBe(types.length);
    expect(types).toEqual(expect.arrayContaining(['hl7v2-mllp', 'hl7v2-http']));
  });
});

describe('isSenderAllowed', () => {
  const allowed = { 'epic.example.org': ['EPIC^GHH', 'LAB^*'], 'any.example.org': ['*^*'] };

  it('allows everything without a map', () => {
    expect(isSenderAllowed(undefined, undefined, 'EPIC', 'GHH')).toBe(true);
  });

  it('matches MSH-3^MSH-4 per certificate, with * wildcards', () => {
    expect(isSenderAllowed(allowed, 'epic.example.org', 'EPIC', 'GHH')).toBe(true);
    expect(isSenderAllowed(allowed, 'epic.example.org', 'EPIC', 'OTHER')).toBe(false);
    expect(isSenderAllowed(allowed, 'epic.example.org', 'LAB', 'ANY')).toBe(true);
    expect(isSenderAllowed(allowed, 'any.example.org', 'X', 'Y')).toBe(true);
  });

  it('refuses unknown certificates and inherited keys', () => {
    expect(isSenderAllowed(allowed, 'rogue.example.org', 'EPIC', 'GHH')).toBe(false);
    expect(isSenderAllowed(allowed, undefined, 'EPIC', 'GHH')).toBe(false);
    expect(isSenderAllowed(allowed, 'constructor', 'EPIC', 'GHH')).toBe(false);
  });
});
