import { describe, expect, it } from 'vitest';
import { undocumented } from '../../test/helpers/schema-docs.ts';
import { outputSpecs } from './index.ts';

describe('output specs', () => {
  it('have unique type names, the marketing and CRM tools among them', () => {
    const types = outputSpecs.map((s) => s.type);
    expect(new Set(types).size).toBe(types.length);
    expect(types).toEqual(expect.arrayContaining(['hubspot', 'mailchimp', 'brevo', 'activecampaign']));
  });

  it('document every property of the marketing and CRM tools (description, and a default when optional)', () => {
    for (const spec of outputSpecs.filter((s) => ['hubspot', 'mailchimp', 'brevo', 'activecampaign'].includes(s.type))) {
      expect(spec.summary.length, spec.type).toBeGreaterThan(10);
      expect(undocumented(spec.configSchema), spec.type).toEqual([]);
    }
  });
});
