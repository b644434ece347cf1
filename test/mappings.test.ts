// Runs every shipped mapping test (mappings/*.test.yaml) the way `carerelay test mappings/`
// does, so a change to a rule, a template or the pipeline that breaks a shipped example
// fails CI with the readable expected/actual diff.
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runMappingTests } from '../src/workers/mapping-tests.ts';

const MAPPINGS = path.resolve(import.meta.dirname, '..', 'mappings');
const files = readdirSync(MAPPINGS).filter((name) => name.endsWith('.test.yaml')).sort();
// Connectors use ${VAR:-default}: run with the defaults, whatever the developer's shell says.
const env = {};

describe('shipped mapping tests', () => {
  it('exist beside every mapping file', () => {
    const mappings = readdirSync(MAPPINGS).filter((name) => name.endsWith('.yaml') && !name.endsWith('.test.yaml'));
    expect(mappings.length).toBeGreaterThan(0);
    for (const mapping of mappings) expect(files).toContain(mapping.replace(/\.yaml$/, '.test.yaml'));
  });

  it.each(files)('%s passes', async (file) => {
    const results = await runMappingTests(MAPPINGS, { env, files: [path.join(MAPPINGS, file)] });
    const report = results.failed.map((f) => `${f.file} — ${f.test}\n${f.diff}`).join('\n\n');
    expect(report).toBe('');
    expect(results.passed).toBeGreaterThan(0);
  });
});
