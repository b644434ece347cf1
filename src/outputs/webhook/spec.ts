// The `webhook` output: POSTs each delivery as JSON to one HTTPS endpoint (a scheduling system,
// a CRM, anything with an HTTP endpoint), signed the Standard Webhooks way.
//
// Follows Standard Webhooks 1.0 (https://www.standardwebhooks.com; spec sections "Webhook
// headers", "Signature scheme", "Retries"): headers webhook-id — the delivery id, the same on
// every attempt so the receiver drops repeats —, webhook-timestamp (Unix seconds of this
// attempt), webhook-signature ("v1,<base64 HMAC-SHA256 of id.timestamp.body>", one per
// configured secret while one is rotated; secrets are base64, with or without "whsec_").
//
// What is sent (and nothing else, invariant 6):
//   { "type": "carerelay.delivery", "deliveryId", "rule", "purpose", "fields": { …the rule's
//     send.fields… } }  plus "message": { language, subject?, text } with includeMessage.
//
// One POST per send, never retried here, on a connection kept alive between sends; redirects are
// not followed to another host; private and loopback addresses are refused unless allow-listed,
// checked when a connection is made and each time one is reused (http/outbound.ts). Answers:
//   2xx                      → accepted
//   429                      → RateLimitedError (Retry-After honoured)
//   408, 502, 503, 504       → TransientError (not processed; Retry-After honoured on 503)
//   other 5xx, no answer     → AmbiguousError (the receiver may have acted; retried because
//                              receivers dedupe on webhook-id: `idempotent` follows
//                              receiverDedupes)
// A receiver that does not dedupe (receiverDedupes: false) gets each delivery at most once
// through the receipts ledger (send-ledger.ts sendRecorded): after a crash in the middle of
// the call, the delivery is parked for review instead of posted again.
//   3xx, other 4xx           → PermanentError (the receiver refuses it as is)
//
// With `writeBack: true` it is also a write-back output (outputs/write-back.ts) for a
// scheduling system behind a webhook: a patient's answer is POSTed, signed the same way, with
// webhook-id = the operation's request id (the same on every attempt), as
//   { "type": "carerelay.appointment.confirm" | "carerelay.appointment.cancel", "requestId",
//     "appointment": { id, placerId? }, "patient": { id, identifiers }, "reason"? (cancel: pat-crs) }
// 2xx → applied; 409 or 422 → denied (`webhook_409`, `webhook_422`: the system refuses the change
// as asked, a staff task); every other answer as above.
// It also books a freed waitlist slot (docs/waitlist.md): `carerelay.appointment.book` with
// "appointment" the one that freed it and "slot": { start, end?, durationMinutes?, serviceType?,
// practitioner?, location? }; a 2xx whose JSON body has a string `appointmentId` names the
// appointment made; 409/422 → denied (the slot is not bookable). The cancellation of the patient's
// later appointment that follows is a `carerelay.appointment.cancel` with reason pat-swl.
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { AddressPolicy, headerOf, KeepAlive, parseRetryAfter, sendOnce } from '../../http/outbound.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { standardWebhooksKey, standardWebhooksSignature, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP } from '../../webhooks/standard-webhooks.ts';
import { allowedPurposesSchema, allowListIssues, allowPrivateAddressesSchema, destinationUrlIssues, outputNameSchema, providerBaaSchema } from '../common.ts';
import { sendRecorded } from '../send-ledger.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputSpec, SendContext } from '../spec.ts';
import { WriteBackKind, WriteBackOutcome, type WriteBackOperation } from '../write-back.ts';

export const WEBHOOK = 'webhook';

/** Failure codes of this output (safe to log). */
export const WebhookCode = {
  RateLimited: 'webhook_rate_limited',
  Unavailable: 'webhook_unavailable',
  ServerError: 'webhook_server_error',
  Redirect: 'webhook_redirect_refused',
  Unauthorized: 'webhook_unauthorized',
  NotFound: 'webhook_not_found',
  TooLarge: 'webhook_too_large',
  Rejected: 'webhook_rejected',
  /** An earlier attempt stopped during its call (a crash): a receiver that does not dedupe may have it. */
  OutcomeUnknown: 'webhook_outcome_unknown',
} as const;

export const WebhookChannel = { Webhook: 'webhook', Crm: 'crm' } as const;
export type WebhookChannel = (typeof WebhookChannel)[keyof typeof WebhookChannel];

export interface WebhookConfig {
  readonly name: string;
  readonly type: typeof WEBHOOK;
  readonly url: string;
  readonly secrets: readonly SecretRef[];
  readonly channel: WebhookChannel;
  readonly timeoutSeconds: number;
  readonly receiverDedupes: boolean;
  readonly includeMessage: boolean;
  readonly allowPrivateAddresses: readonly string[];
  readonly allowInsecureHttp: boolean;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
  readonly writeBack?: boolean;
}

export const webhookConfigSchema = {
  type: 'object',
  description: 'POSTs each delivery as signed JSON (Standard Webhooks) to one endpoint.',
  additionalProperties: false,
  required: ['name', 'type', 'url', 'secrets'],
  properties: {
    name: outputNameSchema,
    type: { const: WEBHOOK, description: 'Output type: webhook.' },
    url: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description: 'Endpoint that receives the POSTs (https; http only on loopback or with allowInsecureHttp).',
    },
    secrets: {
      type: 'array',
      minItems: 1,
      maxItems: 3,
      description:
        'Signing secrets, by reference, each base64 with or without "whsec_" (the receiver shows or accepts this form). ' +
        'Every request is signed with each of them: to rotate, add the new secret, let the receiver switch, then remove the old one.',
      items: { ...secretRefSchema, description: 'A Standard Webhooks signing secret, by reference.' },
    },
    channel: {
      enum: Object.values(WebhookChannel),
      default: WebhookChannel.Webhook,
      description: 'The channel rules name for this output: webhook, or crm for a CRM that takes webhooks.',
    },
    timeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 120,
      default: 15,
      description: 'Seconds for the whole exchange (connect, send, answer); no answer in time is an ambiguous failure.',
    },
    receiverDedupes: {
      type: 'boolean',
      default: true,
      description:
        'The receiver drops a request whose webhook-id it has already processed (Standard Webhooks asks receivers to). ' +
        'Then an attempt whose outcome is unknown is retried; set false to park such deliveries for review instead.',
    },
    includeMessage: {
      type: 'boolean',
      default: false,
      description: 'Also send the rendered message (language, subject, text) from the rule\'s template, not only the mapped fields.',
    },
    allowPrivateAddresses: allowPrivateAddressesSchema,
    allowInsecureHttp: {
      type: 'boolean',
      default: false,
      description: 'Allow plain http to a host that is not a loopback address (lab setups only).',
    },
    baa: providerBaaSchema,
    allowedPurposes: allowedPurposesSchema,
    writeBack: {
      type: 'boolean',
      default: false,
      description:
        "The endpoint is a scheduling system that takes patients' answers: a rule's reply.writeBack may name this output, and confirm / cancel " +
        'are POSTed as carerelay.appointment.confirm / .cancel (409 or 422 in answer: refused, a staff task).',
    },
  },
} as const satisfies JsonSchema;

function check(config: WebhookConfig): InstanceCheckIssue[] {
  return [...destinationUrlIssues(config.url, ['url'], config.allowInsecureHttp), ...allowListIssues(config.allowPrivateAddresses, ['allowPrivateAddresses'])];
}

export const webhookSpec: OutputSpec<WebhookConfig, OutputDeps> = {
  type: WEBHOOK,
  summary: 'POSTs each delivery as JSON signed the Standard Webhooks way (webhook-id = delivery id).',
  configSchema: webhookConfigSchema,
  check,
  info: (config) => ({
    channel: config.channel ?? WebhookChannel.Webhook,
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    idempotent: config.receiverDedupes ?? true,
    ...(config.writeBack ? { writeBackKinds: [WriteBackKind.Confirm, WriteBackKind.Cancel, WriteBackKind.Book] } : {}),
  }),
  create: (config, deps) => createWebhook(config, deps),
};

/** The JSON body of a write-back (see the top of this file). */
export function writeBackBody(op: WriteBackOperation): Buffer {
  return Buffer.from(
    JSON.stringify({
      type: `carerelay.appointment.${op.kind}`,
      requestId: op.requestId,
      appointment: { id: op.appointment.id, ...(op.appointment.placerId !== undefined ? { placerId: op.appointment.placerId } : {}) },
      patient: { id: op.patient.id, identifiers: op.patient.identifiers },
      ...(op.kind === WriteBackKind.Cancel ? { reason: op.reason } : {}),
      ...(op.kind === WriteBackKind.Book ? { slot: op.slot } : {}),
    }),
  );
}

/** The `appointmentId` a scheduling system answered a booking with, when its body says one. */
function madeAppointmentId(body: Buffer): string | undefined {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { appointmentId?: unknown };
    return typeof parsed?.appointmentId === 'string' && parsed.appointmentId !== '' && parsed.appointmentId.length <= 128 ? parsed.appointmentId : undefined;
  } catch {
    return undefined;
  }
}

/** The JSON body of a delivery (see the top of this file). */
export function webhookBody(message: OutboundMessage, includeMessage: boolean): Buffer {
  return Buffer.from(
    JSON.stringify({
      type: 'carerelay.delivery',
      deliveryId: message.deliveryId,
      rule: message.ruleId,
      purpose: message.purpose,
      fields: message.fields ?? {},
      ...(includeMessage
        ? { message: { language: message.language, ...(message.subject !== undefined ? { subject: message.subject } : {}), text: message.text } }
        : {}),
    }),
  );
}

export function createWebhook(config: WebhookConfig, deps: OutputDeps): OutboundAdapter {
  const info = webhookSpec.info(config);
  const keys = config.secrets.map((ref, i) => {
    const key = standardWebhooksKey(deps.secret(ref));
    if (key === undefined) {
      throw new Error(`output "${config.name}": secrets[${i}] is not a Standard Webhooks secret (base64, with or without "whsec_")`);
    }
    return key;
  });
  const url = new URL(config.url);
  const addresses = new AddressPolicy(config.allowPrivateAddresses);
  // This output's own kept-alive connections (their addresses checked at connect and reuse).
  const keepAlive = new KeepAlive();
  /** One signed POST; `id` is the webhook-id (the same on every attempt). */
  const post = (id: string, body: Buffer, signal: AbortSignal, now: Date) => {
    const timestamp = String(Math.floor(now.getTime() / 1000));
    return sendOnce({
      url,
      headers: {
        'content-type': 'application/json',
        'user-agent': 'CareRelay',
        [WEBHOOK_ID]: id,
        [WEBHOOK_TIMESTAMP]: timestamp,
        [WEBHOOK_SIGNATURE]: standardWebhooksSignature(keys, id, timestamp, body),
      },
      body,
      timeoutMs: config.timeoutSeconds * 1000,
      signal,
      addresses,
      codePrefix: 'webhook',
      maxResponseBytes: 1024,
      keepAlive,
    });
  };
  /** A delivery's POST: accepted, or the failure its answer means. */
  const deliver = async (message: OutboundMessage, context: SendContext): Promise<Receipt> => {
    const body = webhookBody(message, config.includeMessage);
    const now = deps.now();
    const id = message.deliveryId;
    const response = await post(id, body, context.signal, now);
    const status = response.status;
    if (status >= 200 && status < 300) return { providerId: id, acceptedAt: now.toISOString(), detail: { status } };
    throw classifyAnswer(status, headerOf(response.headers, 'retry-after'), now.getTime(), url.host);
  };
  return {
    name: config.name,
    ...info,
    async close() {
      keepAlive.close();
    },
    ...(config.writeBack
      ? {
          async writeBack(op, context) {
            const now = deps.now();
            const response = await post(op.requestId, writeBackBody(op), context.signal, now);
            const status = response.status;
            if (status >= 200 && status < 300) {
              if (op.kind !== WriteBackKind.Book) return { outcome: WriteBackOutcome.Applied, appointmentId: op.appointment.id };
              const made = madeAppointmentId(response.body);
              return { outcome: WriteBackOutcome.Applied, ...(made !== undefined ? { appointmentId: made } : {}) };
            }
            if (status === 409 || status === 422) return { outcome: WriteBackOutcome.Denied, code: `webhook_${status}` };
            throw classifyAnswer(status, headerOf(response.headers, 'retry-after'), now.getTime(), url.host);
          },
        }
      : {}),
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (!info.idempotent) {
        const recorded = { output: config.name, outcomeUnknownCode: WebhookCode.OutcomeUnknown, what: 'the webhook', provider: url.host };
        return sendRecorded(deps, recorded, message, context, async () => {
          const receipt = await deliver(message, context);
          return { providerId: receipt.providerId!, ...(receipt.detail ? { detail: receipt.detail } : {}) };
        });
      }
      return deliver(message, context);
    },
  };
}

function classifyAnswer(status: number, retryAfter: string | undefined, nowMs: number, host: string): Error {
  const retryAfterMs = parseRetryAfter(retryAfter, nowMs);
  const what = `${host} answered HTTP ${status}`;
  if (status === 429) return new RateLimitedError(WebhookCode.RateLimited, what, { retryAfterMs });
  if (status === 408 || status === 502 || status === 503 || status === 504) return new TransientError(WebhookCode.Unavailable, what, { retryAfterMs });
  if (status >= 500) return new AmbiguousError(WebhookCode.ServerError, `${what}; it may have processed the request`);
  if (status >= 300 && status < 400) return new PermanentError(WebhookCode.Redirect, `${what} (a redirect, not followed): configure the final URL`);
  if (status === 401 || status === 403) return new PermanentError(WebhookCode.Unauthorized, `${what}: check the signing secrets configured on both sides`);
  if (status === 404 || status === 410) return new PermanentError(WebhookCode.NotFound, `${what}: check the url`);
  if (status === 413) return new PermanentError(WebhookCode.TooLarge, what);
  return new PermanentError(WebhookCode.Rejected, what);
}
