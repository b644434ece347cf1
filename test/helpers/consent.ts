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

/**
 * consentConfigDir for patients answering by SMS (EU policy, no quiet hours): output `sms` on
 * the Twilio stand-in, its inbound webhook signed with TWILIO_AUTH_TOKEN, and output `ehr`, a
 * fhir-appointment on the FHIR stand-in (bearer FHIR_TOKEN), matched by identifier.
 */
export function smsAndEhrConfigDir(
  standIns: { twilio: { accountSid: string; baseUrl: string }; fhir: { baseUrl: string } },
  o: Pick<ConsentConfig, 'rules' | 'templates'>,
): TestConfigDir {
  const { twilio, fhir } = standIns;
  return consentConfigDir({
    policy: ['  region: eu', '  quietHours: { channels: [] }', '  smsWebhooks: [{ output: sms, authToken: { env: TWILIO_AUTH_TOKEN } }]'],
    outputs: [
      `{ name: sms, type: twilio, accountSid: ${twilio.accountSid}, authToken: { env: TWILIO_AUTH_TOKEN }, from: "+15005550006", apiBaseUrl: "${twilio.baseUrl}", baa: true }`,
      `{ name: ehr, type: fhir-appointment, appointments: identifier, server: { baseUrl: "${fhir.baseUrl}", auth: { bearer: { token: { env: FHIR_TOKEN } } } } }`,
    ],
    ...o,
  });
}
