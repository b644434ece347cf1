// Helpers of the consent tests over real sockets (consent-api, consent-e2e): a configuration
// directory with outputs, a policy, rules and templates, and a small HTTP client.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { writeConfigDir, type TestConfigDir } from './server.ts';

export interface ConsentConfig {
  /** Lines of the policy block (indented two spaces). */
  policy: string[];
  /** Output lines, each a YAML flow mapping. */
  outputs: string[];
  /** Input lines added before the default inputs (indented two spaces). */
  inputs?: string;
  /** The rules file. */
  rules: string;
  /** Template files by name. */
  templates: Record<string, string>;
}

/** writeConfigDir plus outputs, rules (mappings/rules.yaml) and templates. */
export function consentConfigDir(o: ConsentConfig): TestConfigDir {
  const config = writeConfigDir({ policy: o.policy });
  const connectors = path.join(config.dir, 'connectors', 'test.yaml');
  writeFileSync(
    connectors,
    readFileSync(connectors, 'utf8')
      .replace('inputs:\n', `inputs:\n${o.inputs ?? ''}`)
      .replace('outputs: []', `outputs:\n${o.outputs.map((line) => `  - ${line}`).join('\n')}`),
  );
  const templates = path.join(config.dir, 'mappings', 'templates');
  mkdirSync(templates, { recursive: true });
  writeFileSync(path.join(config.dir, 'mappings', 'rules.yaml'), o.rules);
  for (const [name, text] of Object.entries(o.templates)) writeFileSync(path.join(templates, name), text);
  return config;
}

export interface HttpAnswer {
  status: number;
  /** The body as JSON, or undefined when it is not. */
  json: any;
  text: string;
  headers: Headers;
}

/** One request; a string body is sent as is, anything else as JSON. */
export async function http(base: string, method: string, pathAndQuery: string, body?: unknown, type = 'application/json'): Promise<HttpAnswer> {
  const res = await fetch(`${base}${pathAndQuery}`, {
    method,
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': type } } : {}),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text, headers: res.headers };
}
