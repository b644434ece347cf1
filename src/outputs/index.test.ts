import { describe, expect, it } from 'vitest';
import { createAjv, validateWithSchema, type JsonSchema } from '../config/yaml.ts';
import { outputSpecs } from './index.ts';

/**
 * Properties (dotted paths) lacking a description, or optional without a default unless the
 * description says what absence means ("Absent: …", "Required with …", "default …").
 */
function undocumented(schema: JsonSchema, defaults: boolean, at = ''): string[] {
  const problems: string[] = [];
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  for (const [key, child] of Object.entries(properties)) {
    const where = `${at}${key}`;
    if (typeof child.description !== 'string' || child.description.length < 10) problems.push(`${where}: description`);
    const isOptionalBlock = child.type === 'object';
    const absenceExplained = /\b(Absent|Required with|default)\b/.test(String(child.description));
    if (defaults && !required.has(key) && !('default' in child) && !isOptionalBlock && child['x-secret'] !== true && !absenceExplained) problems.push(`${where}: default`);
    if (child.type === 'object' && child['x-secret'] !== true) problems.push(...undocumented(child, defaults, `${where}.`));
  }
  return problems;
}

describe('output specs', () => {
  it('have unique type names and a summary each', () => {
    const types = outputSpecs.map((s) => s.type);
    expect(new Set(types).size).toBe(types.length);
    expect(types).toEqual(expect.arrayContaining(['hubspot', 'mailchimp', 'brevo', 'activecampaign']));
    for (const spec of outputSpecs) expect(spec.summary.length, spec.type).toBeGreaterThan(10);
  });

  it('document every property: a description, and (the API outputs) a default when optional', () => {
    const withDefaults = ['sfmc', 'salesforce-crm', 'adobe-aep', 'hubspot', 'mailchimp', 'brevo', 'activecampaign'];
    const problems = outputSpecs.flatMap((spec) => undocumented(spec.configSchema, withDefaults.includes(spec.type)).map((p) => `${spec.type}.${p}`));
    expect(problems).toEqual([]);
  });
});

describe('output configs', () => {
  it('a minimal config of each new API output validates and takes its defaults', () => {
    const minimal: Record<string, Record<string, unknown>> = {
      sfmc: { name: 'm', type: 'sfmc', subdomain: 'mc1', clientId: 'c', clientSecret: { env: 'S' }, eventDefinitionKey: 'APIEvent-x' },
      'salesforce-crm': { name: 's', type: 'salesforce-crm', myDomainUrl: 'https://x.my.salesforce.com', auth: { clientCredentials: { clientId: 'c', clientSecret: { env: 'S' } } } },
      'adobe-aep': {
        name: 'a',
        type: 'adobe-aep',
        clientId: 'c',
        clientSecret: { env: 'S' },
        orgId: '7BF122A65C5B3FE40A494026@AdobeOrg',
        inletUrl: 'https://dcs.adobedc.net/collection/abc',
        schemaId: 'https://ns.adobe.com/t/schemas/1',
        datasetId: '5e72608b10f6e318ad2dee0f',
      },
    };
    for (const [type, config] of Object.entries(minimal)) {
      const spec = outputSpecs.find((s) => s.type === type)!;
      expect(validateWithSchema(createAjv(), spec.configSchema, config, 'c.yaml', () => undefined), type).toEqual([]);
      expect(config, type).toMatchObject({ baa: false, timeoutSeconds: 15, limits: expect.objectContaining({ perDay: 0 }) });
      expect(spec.info(config).limits, type).not.toHaveProperty('perDay');
    }
  });
});
