// What every output type declares (docs/architecture.md "Interfaces", docs/contributing.md habit 1): a type
// name, a one-line summary, a JSON Schema of its instance config that both validates and
// documents, and — per configured instance — what routing and consent need to know before
// anything is sent: the channel, whether the destination is covered by a BAA/DPA (docs/consent.md
// rule 4), the purposes it may carry, and whether the provider deduplicates resends
// (docs/architecture.md invariant 4: an ambiguous failure is retried only through an idempotent
// provider).

import type { ComponentSpec, InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema } from '../config/yaml.ts';
import type { OutputInfo } from '../pipeline/rule.ts';
import type { Channel, Purpose, Receipt } from '../types.ts';

/** What routing and the send-time checks know about one configured output. */
export interface OutputInstanceInfo {
  readonly channel: Channel;
  /** Declared covered by a BAA/DPA: may receive PHI (docs/consent.md rule 4). */
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
  /** The provider deduplicates by delivery id: an ambiguous failure may be retried. */
  readonly idempotent: boolean;
}

/** A message ready to leave: rendered from the delivery's payload only (invariant 6). */
export interface OutboundMessage {
  readonly deliveryId: string;
  readonly ruleId: string;
  readonly purpose: Purpose;
  readonly channel: Channel;
  /** Recipient address (phone, email); absent for webhook/CRM destinations. */
  readonly to?: string;
  readonly language: string;
  readonly subject?: string;
  readonly text: string;
  readonly html?: string;
  /** Headers the message must carry (email: List-Unsubscribe and RFC 8058 List-Unsubscribe-Post). */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface SendContext {
  readonly deliveryId: string;
  /** 1 for the first try. */
  readonly attempt: number;
  readonly signal: AbortSignal;
}

/**
 * A running outbound adapter. It only sends and classifies its failures (TransientError,
 * AmbiguousError, PermanentError from errors.ts); it never retries by itself.
 */
export interface OutboundAdapter extends OutputInstanceInfo {
  readonly name: string;
  send(message: OutboundMessage, context: SendContext): Promise<Receipt>;
  close?(): Promise<void>;
}

/**
 * @typeParam Config the instance config after validation and defaults (frozen).
 * @typeParam Deps what the composition root hands the adapter (a sink, an HTTP client…).
 */
export interface OutputSpec<Config = unknown, Deps = unknown> extends ComponentSpec {
  /** Unique type name used as `type:` in connectors/*.yaml, e.g. `outbox`. */
  readonly type: string;
  readonly summary: string;
  readonly configSchema: JsonSchema;
  check?(config: Config): InstanceCheckIssue[];
  /** Channel, BAA coverage, purposes and idempotency of one validated instance. */
  info(config: Config): OutputInstanceInfo;
  /** Builds the adapter; nothing is sent until `send()`. */
  create?(config: Config, deps: Deps): OutboundAdapter;
}

/** A configured output as the plan holds it (InstancePlan from config/load.ts). */
export interface ConfiguredOutput {
  readonly type: string;
  readonly name: string;
  readonly config: unknown;
}

/**
 * What compileRules needs about each configured output, from the registry. Instances of an
 * unknown type are left out: the connectors loader already reported them.
 */
export function outputInfos(outputs: readonly ConfiguredOutput[], specs: readonly OutputSpec[]): OutputInfo[] {
  const infos: OutputInfo[] = [];
  for (const output of outputs) {
    const spec = specs.find((s) => s.type === output.type);
    if (!spec) continue;
    const info = spec.info(output.config);
    infos.push({ name: output.name, channel: info.channel, baa: info.baa, allowedPurposes: info.allowedPurposes });
  }
  return infos;
}
