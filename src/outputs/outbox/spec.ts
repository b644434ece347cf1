// The `outbox` output: keeps the rendered message instead of sending it. It stands in for a
// real SMS, email, webhook or CRM adapter (its `channel` says which) so mappings can be
// written, tested and run end to end before a provider is wired: the composition root
// hands it a sink (the store, or memory in tests) and every "send" lands there.

import type { JsonSchema } from '../../config/yaml.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { allowedPurposesSchema, outputNameSchema } from '../common.ts';
import type { OutboundAdapter, OutboundMessage, OutputSpec, SendContext } from '../spec.ts';

export const OUTBOX = 'outbox';

/** The channels an outbox can stand in for (a FHIR write-back has no message to keep). */
export const OutboxChannel = {
  Sms: 'sms',
  Email: 'email',
  Webhook: 'webhook',
  Crm: 'crm',
} as const;
export type OutboxChannel = (typeof OutboxChannel)[keyof typeof OutboxChannel];

export interface OutboxConfig {
  readonly name: string;
  readonly type: typeof OUTBOX;
  readonly channel: OutboxChannel;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

/** Where kept messages go. Must be durable before it resolves when used by a server. */
export interface OutboxSink {
  put(entry: { output: string; message: OutboundMessage; keptAt: string }): Promise<void>;
}

export interface OutboxDeps {
  sink: OutboxSink;
  now?: () => Date;
}

export const outboxConfigSchema = {
  type: 'object',
  description: 'Keeps rendered messages instead of sending them (a stand-in for a real adapter).',
  additionalProperties: false,
  required: ['name', 'type', 'channel'],
  properties: {
    name: outputNameSchema,
    type: { const: OUTBOX, description: 'Output type: outbox.' },
    channel: {
      enum: Object.values(OutboxChannel),
      description: 'The channel this outbox stands in for: sms, email, webhook or crm. Rules of that channel may use it.',
    },
    baa: {
      type: 'boolean',
      default: true,
      description:
        'Covered by a BAA/DPA, so it may receive PHI (docs/consent.md rule 4). An outbox keeps messages in ' +
        "CareRelay's own store, hence true by default; set false to rehearse a non-covered destination.",
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

export const outboxSpec: OutputSpec<OutboxConfig, OutboxDeps> = {
  type: OUTBOX,
  summary: 'Keeps the rendered message (for tests and rehearsals) instead of sending it.',
  configSchema: outboxConfigSchema,
  info: (config) => ({
    channel: config.channel,
    baa: config.baa ?? true,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // Kept by delivery id: a second "send" of the same delivery replaces the first.
    idempotent: true,
  }),
  create: (config, deps) => createOutbox(config, deps),
};

export function createOutbox(config: OutboxConfig, deps: OutboxDeps): OutboundAdapter {
  const info = outboxSpec.info(config);
  const now = deps.now ?? (() => new Date());
  return {
    name: config.name,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      context.signal.throwIfAborted();
      const keptAt = now().toISOString();
      await deps.sink.put({ output: config.name, message, keptAt });
      return { providerId: `${config.name}/${message.deliveryId}`, acceptedAt: keptAt };
    },
  };
}
