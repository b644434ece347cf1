// Config schema pieces every output type shares (docs/contributing.md habit 1): the instance
// name, the BAA declaration and the purposes it may carry (docs/consent.md rule 4), so each
// adapter documents them the same way.
import type { InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema } from '../config/yaml.ts';
import { AddressPolicy, isLoopbackUrl } from '../http/outbound.ts';
import { PURPOSES } from '../types.ts';

export const outputNameSchema = {
  type: 'string',
  pattern: '^[a-z][a-z0-9-]*$',
  maxLength: 63,
  'x-hint': 'lower-case letters, digits and "-", starting with a letter',
  description: 'Unique name of this output; mapping rules name it in send.output.',
} as const satisfies JsonSchema;

/** `baa` of a provider outside CareRelay: false unless the configuration says a BAA/DPA is signed. */
export const providerBaaSchema = {
  type: 'boolean',
  default: false,
  description:
    'Set true only when a BAA/DPA covering this destination is signed: only then may it receive PHI (docs/consent.md ' +
    'rule 4; a rule that would send care fields to an output without it is refused at load).',
} as const satisfies JsonSchema;

export const allowedPurposesSchema = {
  type: 'array',
  items: { enum: [...PURPOSES] },
  uniqueItems: true,
  default: [...PURPOSES],
  description: `Purposes this output may carry (${PURPOSES.join(', ')}); a rule with another purpose is refused at load. Default: all.`,
} as const satisfies JsonSchema;

export const allowPrivateAddressesSchema = {
  type: 'array',
  default: [],
  uniqueItems: true,
  description:
    'Non-public addresses this output may connect to (IPs or CIDR blocks, e.g. 10.20.0.0/16 for an internal system, ' +
    '127.0.0.1 for a local relay). Private, loopback and link-local addresses are refused otherwise, checked on the ' +
    'addresses the host name resolves to.',
  items: { type: 'string', minLength: 2, maxLength: 49, description: 'An IPv4/IPv6 address or CIDR block.' },
} as const satisfies JsonSchema;

/**
 * Problems of a configured destination URL: not http(s), credentials in it, or plain http off
 * loopback without `allowInsecureHttp` (what is sent may be PHI or a secret).
 */
export function destinationUrlIssues(raw: string, at: readonly (string | number)[], allowInsecureHttp: boolean): InstanceCheckIssue[] {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return [{ path: at, message: `"${raw}" is not an absolute URL (expected https://host/path)` }];
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return [{ path: at, message: `must be an http(s) URL, got ${url.protocol}` }];
  if (url.username !== '' || url.password !== '') return [{ path: at, message: 'must not carry credentials; give secrets by reference' }];
  if (url.protocol === 'http:' && !allowInsecureHttp && !isLoopbackUrl(url)) {
    return [{ path: at, message: 'plain http is only for loopback addresses: use https, or set allowInsecureHttp: true for a lab' }];
  }
  return [];
}

/** Problems of an allow-list of addresses (each must be an IP or a CIDR block). */
export function allowListIssues(entries: readonly string[], at: readonly (string | number)[]): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  entries.forEach((entry, i) => {
    try {
      new AddressPolicy([entry]);
    } catch (error) {
      issues.push({ path: [...at, i], message: (error as Error).message });
    }
  });
  return issues;
}
