// Checks that a component's JSON Schema documents itself (docs/contributing.md habit 1): a
// description on every property, and a default on every optional one.
import type { JsonSchema } from '../../src/config/yaml.ts';

/** Properties (dotted paths) lacking a description, or optional without a default. */
export function undocumented(schema: JsonSchema, at = ''): string[] {
  const problems: string[] = [];
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  for (const [key, child] of Object.entries(properties)) {
    const where = `${at}${key}`;
    if (typeof child.description !== 'string' || child.description.length < 10) problems.push(`${where}: description`);
    // Optional blocks (tls, auth, a secret reference) are absent by default: nothing to default.
    const isOptionalBlock = child.type === 'object';
    if (!required.has(key) && !('default' in child) && !isOptionalBlock) problems.push(`${where}: default`);
    // A secret reference's env/file are alternatives, documented by the reference itself.
    if (child.type === 'object' && child['x-secret'] !== true) problems.push(...undocumented(child, `${where}.`));
  }
  return problems;
}
