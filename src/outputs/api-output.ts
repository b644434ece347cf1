// Pieces shared by the outputs that call a provider's JSON API with an OAuth 2.0 token (sfmc,
// salesforce-crm, adobe-aep): the `limits` block each declares for the delivery engine's token
// bucket (outputs/spec.ts OutputLimits), the per-call timeout, the token provider built from a
// config, the API host the token answer names (checked before anything is sent to it), and
// reading JSON answers.
import { createHmac } from 'node:crypto';
import type { InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema } from '../config/yaml.ts';
import { PermanentError } from '../errors.ts';
import { OAuthTokenProvider, type OAuthGrant, type OAuthToken } from '../http/oauth-token.ts';
import { destinationUrlIssues } from './common.ts';
import { PURPOSES, type Channel, type Purpose } from '../types.ts';
import type { OutputInstanceInfo, OutputLimits } from './spec.ts';

/**
 * JSON Schema of an output's `limits`, with the provider's documented defaults (`source` says
 * where they come from, or that they are CareRelay's own choice when the provider publishes none).
 */
export function limitsSchema(defaults: Required<Pick<OutputLimits, 'ratePerSecond' | 'concurrency'>> & Pick<OutputLimits, 'burst' | 'perDay'>, source: string): JsonSchema {
  return {
    type: 'object',
    additionalProperties: false,
    default: { ...defaults },
    description: `How fast CareRelay may call the API; the delivery engine enforces it in front of the output. ${source}`,
    properties: {
      ratePerSecond: { type: 'number', exclusiveMinimum: 0, maximum: 10_000, default: defaults.ratePerSecond, description: 'Sustained calls per second.' },
      burst: { type: 'integer', minimum: 1, maximum: 10_000, default: defaults.burst ?? Math.max(1, Math.ceil(defaults.ratePerSecond)), description: 'Calls that may go at once after a quiet period.' },
      concurrency: { type: 'integer', minimum: 1, maximum: 100, default: defaults.concurrency, description: 'Calls in flight at once.' },
      perDay: {
        type: 'integer',
        minimum: 0,
        default: defaults.perDay ?? 0,
        description: 'Calls per UTC day (the share of a daily allocation CareRelay may use); 0: no daily cap.',
      },
    },
  };
}

/** What one of these outputs declares (OutputSpec.info): its channel, BAA, purposes, idempotency and limits. */
export function apiOutputInfo(
  config: { readonly baa?: boolean; readonly allowedPurposes?: readonly Purpose[]; readonly limits?: OutputLimits },
  channel: Channel,
  idempotent: boolean,
  defaults: OutputLimits,
): OutputInstanceInfo {
  return { channel, baa: config.baa ?? false, allowedPurposes: config.allowedPurposes ?? PURPOSES, idempotent, limits: limitsOf(config.limits, defaults) };
}

/** The limits of a validated `limits` block, as OutputInstanceInfo carries them. */
export function limitsOf(limits: OutputLimits | undefined, defaults: OutputLimits): OutputLimits {
  const merged = { ...defaults, ...limits };
  return {
    ...(merged.ratePerSecond !== undefined ? { ratePerSecond: merged.ratePerSecond } : {}),
    ...(merged.burst !== undefined ? { burst: merged.burst } : {}),
    ...(merged.concurrency !== undefined ? { concurrency: merged.concurrency } : {}),
    ...(merged.perDay !== undefined && merged.perDay > 0 ? { perDay: merged.perDay } : {}),
  };
}

export const timeoutSecondsSchema = {
  type: 'integer',
  minimum: 1,
  maximum: 120,
  default: 15,
  description: 'Seconds for one API call (connect, send, answer); no answer in time is an ambiguous failure. Token requests get the same.',
} as const satisfies JsonSchema;

/** Problems of a configured base URL (https; http only on loopback, for a local stand-in). */
export function baseUrlIssues(raw: string | undefined, at: readonly (string | number)[]): InstanceCheckIssue[] {
  return raw === undefined ? [] : destinationUrlIssues(raw, at, false);
}

export interface TokenProviderSettings {
  readonly tokenUrl: string;
  readonly grant: OAuthGrant;
  readonly defaultLifetimeSeconds: number;
  readonly refreshBeforeSeconds: number;
  readonly timeoutSeconds: number;
  readonly codePrefix: string;
  readonly now: () => Date;
}

export function tokenProvider(settings: TokenProviderSettings): OAuthTokenProvider {
  return new OAuthTokenProvider({
    tokenUrl: new URL(settings.tokenUrl),
    grant: settings.grant,
    defaultLifetimeSeconds: settings.defaultLifetimeSeconds,
    refreshBeforeSeconds: settings.refreshBeforeSeconds,
    timeoutMs: settings.timeoutSeconds * 1000,
    codePrefix: settings.codePrefix,
    now: () => settings.now().getTime(),
  });
}

/**
 * The API base URL a token answer names (`instance_url`, `rest_instance_url`), refused unless it
 * is https (or http on loopback, for a local stand-in): a bearer token must not travel in clear.
 */
export function instanceUrl(token: OAuthToken, field: string, code: string): URL {
  const raw = token.fields[field];
  const issues = raw === undefined ? [{ message: 'missing' }] : destinationUrlIssues(raw, [], false);
  if (raw === undefined || issues.length > 0) {
    throw new PermanentError(code, `the token answer's ${field} is ${raw === undefined ? 'missing' : `not usable (${issues[0]!.message})`}`);
  }
  const url = new URL(raw);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

/** The answer body as JSON, or undefined when it is not JSON. */
export function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * A contact key or identity that does not disclose `value` (a patient id) to the tool: "cr-" + the
 * first 32 hex digits of HMAC-SHA256(secret, value). Stable while the secret is.
 */
export function pseudonym(secret: string, value: string): string {
  return `cr-${createHmac('sha256', secret).update(value, 'utf8').digest('hex').slice(0, 32)}`;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
