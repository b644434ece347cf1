// How CareRelay reaches one FHIR server, as configured (the `server` block of the FHIR inputs
// and of the FHIR write-back output): schema, config type, and the client built from it.
import { secretRefSchema, type JsonSchema, type SecretRef } from '../config/yaml.ts';
import { FhirClient, type FhirAuthConfig, type FhirClientOptions } from './client.ts';

export const SmartAlgorithmName = { RS384: 'RS384', ES384: 'ES384' } as const;
export type SmartAlgorithmName = (typeof SmartAlgorithmName)[keyof typeof SmartAlgorithmName];

export interface FhirServerConfig {
  readonly baseUrl: string;
  readonly auth?: {
    readonly bearer?: { readonly token: SecretRef };
    readonly smart?: {
      readonly tokenUrl: string;
      readonly clientId: string;
      readonly privateKey: SecretRef;
      readonly algorithm: SmartAlgorithmName;
      readonly scope: string;
    };
  };
  readonly timeoutSeconds: number;
  readonly allowInsecureHttp: boolean;
}

export const fhirServerSchema = {
  type: 'object',
  description: 'A FHIR server: its base URL (the only place requests go), how CareRelay authenticates, and a timeout.',
  required: ['baseUrl'],
  additionalProperties: false,
  properties: {
    baseUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: 'FHIR base URL, e.g. https://ehr.example.org/fhir/R4 (https; http only on loopback or with allowInsecureHttp).',
    },
    auth: {
      type: 'object',
      description: 'How CareRelay authenticates to the server: one of bearer or smart. Absent: no auth.',
      additionalProperties: false,
      properties: {
        bearer: {
          type: 'object',
          description: 'A fixed access token sent as "Authorization: Bearer <token>".',
          required: ['token'],
          additionalProperties: false,
          properties: { token: { ...secretRefSchema, description: 'The access token, by reference.' } },
        },
        smart: {
          type: 'object',
          description:
            'SMART backend services (client credentials with a signed JWT assertion, SMART App Launch IG "Backend Services").',
          required: ['tokenUrl', 'clientId', 'privateKey', 'scope'],
          additionalProperties: false,
          properties: {
            tokenUrl: { type: 'string', format: 'uri', description: 'Token endpoint (smart-configuration token_endpoint).' },
            clientId: { type: 'string', minLength: 1, description: 'Client id the EHR registered for CareRelay.' },
            privateKey: {
              ...secretRefSchema,
              description: 'PEM private key (RSA >= 2048 bits for RS384, EC P-384 for ES384), by reference.',
            },
            algorithm: {
              type: 'string',
              enum: Object.values(SmartAlgorithmName),
              default: SmartAlgorithmName.RS384,
              description: 'Signing algorithm of the client assertion.',
            },
            scope: {
              type: 'string',
              minLength: 1,
              description: 'Space-separated SMART scopes, e.g. "system/Appointment.rs system/Encounter.rs system/Patient.rs".',
            },
          },
        },
      },
    },
    timeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 300,
      default: 15,
      description: 'Seconds to wait for one answer from the server.',
    },
    allowInsecureHttp: {
      type: 'boolean',
      default: false,
      description: 'Allow plain http to a server that is not on a loopback address (lab setups only: FHIR carries patient data).',
    },
  },
} as const satisfies JsonSchema;

/**
 * The client for a configured server, secrets read through `secret` (config/yaml.ts
 * readSecret). `options` overrides client settings (an output asks for no retries).
 */
export function fhirClientFor(
  server: FhirServerConfig,
  secret: (ref: SecretRef) => string,
  options: Pick<FhirClientOptions, 'maxRetries'> = {},
): FhirClient {
  let auth: FhirAuthConfig | undefined;
  if (server.auth?.bearer) {
    auth = { kind: 'bearer', token: secret(server.auth.bearer.token) };
  } else if (server.auth?.smart) {
    const smart = server.auth.smart;
    auth = {
      kind: 'smart',
      tokenUrl: smart.tokenUrl,
      clientId: smart.clientId,
      privateKey: secret(smart.privateKey),
      algorithm: smart.algorithm,
      scope: smart.scope,
    };
  }
  return new FhirClient({
    baseUrl: server.baseUrl,
    ...(auth ? { auth } : {}),
    timeoutMs: server.timeoutSeconds * 1000,
    allowInsecureHttp: server.allowInsecureHttp,
    ...options,
  });
}
