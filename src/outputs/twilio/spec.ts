// The `twilio` output: SMS through Twilio Programmable Messaging.
//
// Follows the Twilio REST API 2010-04-01, "Messages resource" (Create a Message:
// POST /2010-04-01/Accounts/{AccountSid}/Messages.json, form-encoded To, From or
// MessagingServiceSid, Body ≤ 1,600 characters, StatusCallback, ValidityPeriod 1–36,000 s),
// "API Keys" (HTTP Basic with Account SID + Auth Token, or API Key SID + secret), "Webhooks
// security" (X-Twilio-Signature on status callbacks, src/twilio/signature.ts), the "Error and
// Warning Dictionary" (error body { code, message, more_info, status }) and "Outbound message
// status in status callbacks" (MessageStatus, ErrorCode).
//
// ValidityPeriod is cut to the delivery's `expires`, so Twilio drops a reminder that would
// arrive too late instead of delivering it. Status callbacks go to
// <statusCallback.baseUrl>/hooks/twilio/status/<output name> (api/hooks-routes.ts) and are
// recorded as receipts of the delivery.
//
// Twilio has no idempotency key on create, so CareRelay keeps its own (the receipts ledger,
// keyed by delivery id, outputs/send-ledger.ts): before the call a `sending` receipt, after it
// `accepted` with the message SID, `refused` or `unknown`. An attempt that finds an `accepted`
// SID sends nothing and answers with it; one that finds `sending` as the last word knows an
// earlier attempt died in the middle of its call (a crash) and reports AmbiguousError without
// calling: the queue parks it (this output is not idempotent). A person who replays a parked
// delivery finds `unknown` last and sends once more, knowingly.
//
// Failures (one call, never retried here):
//   HTTP 429 or error 20429                  → RateLimitedError (Retry-After honoured)
//   21610 (recipient replied STOP)           → RecipientError opted_out
//   21211, 21614 (invalid / not a mobile)    → RecipientError unfit
//   401 / 20003                              → PermanentError twilio_unauthorized
//   other 4xx                                → PermanentError twilio_rejected (code kept)
//   503                                      → TransientError (not processed)
//   other 5xx, timeout or reset after the request left
//                                            → AmbiguousError (the message may exist)
//   refused connection, DNS, before it left  → TransientError
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, RecipientError, RecipientSignal, TransientError } from '../../errors.ts';
import { headerOf, KeepAlive, parseRetryAfter, sendOnce } from '../../http/outbound.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { allowedPurposesSchema, destinationUrlIssues, outputNameSchema, providerBaaSchema } from '../common.ts';
import { LEDGER_UNAVAILABLE, sendRecorded } from '../send-ledger.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputSpec, SendContext } from '../spec.ts';

export const TWILIO = 'twilio';

/** Twilio's documented bounds of ValidityPeriod, seconds. */
export const MAX_VALIDITY_SECONDS = 36_000;
/** Longest Body Twilio accepts, characters. */
export const MAX_BODY_CHARS = 1_600;

/** Failure codes of this output (safe to log). */
export const TwilioCode = {
  RateLimited: 'twilio_rate_limited',
  OptedOut: 'recipient_opted_out',
  Unfit: 'recipient_unfit',
  Unauthorized: 'twilio_unauthorized',
  Rejected: 'twilio_rejected',
  Unavailable: 'twilio_unavailable',
  OutcomeUnknown: 'twilio_outcome_unknown',
  Expired: 'expired',
  NoRecipient: 'twilio_no_recipient',
  BodyTooLong: 'twilio_body_too_long',
  LedgerUnavailable: LEDGER_UNAVAILABLE,
} as const;

/** Twilio error codes with a meaning for the recipient's address ("Error and Warning Dictionary"). */
const RECIPIENT_ERRORS: Readonly<Record<number, RecipientSignal>> = {
  21610: RecipientSignal.OptedOut,
  21211: RecipientSignal.Unfit,
  21614: RecipientSignal.Unfit,
};

export interface TwilioConfig {
  readonly name: string;
  readonly type: typeof TWILIO;
  readonly accountSid: string;
  readonly authToken?: SecretRef;
  readonly apiKey?: { readonly sid: string; readonly secret: SecretRef };
  readonly from?: string;
  readonly messagingServiceSid?: string;
  readonly statusCallback?: { readonly baseUrl: string };
  readonly maxValiditySeconds: number;
  readonly timeoutSeconds: number;
  readonly apiBaseUrl: string;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const twilioConfigSchema = {
  type: 'object',
  description: 'Sends SMS through Twilio Programmable Messaging (REST API 2010-04-01).',
  additionalProperties: false,
  required: ['name', 'type', 'accountSid'],
  properties: {
    name: outputNameSchema,
    type: { const: TWILIO, description: 'Output type: twilio.' },
    accountSid: {
      type: 'string',
      pattern: '^AC[0-9a-fA-F]{32}$',
      'x-hint': 'AC followed by 32 hex digits',
      description: 'Account SID (Twilio Console → Account info).',
    },
    authToken: {
      ...secretRefSchema,
      description:
        'Auth Token, by reference. Needed for status callbacks (Twilio signs them with it) and, without apiKey, to call the API.',
    },
    apiKey: {
      type: 'object',
      description: 'API key used to call the API instead of the Auth Token (Twilio recommends keys: they can be revoked one by one).',
      additionalProperties: false,
      required: ['sid', 'secret'],
      properties: {
        sid: { type: 'string', pattern: '^SK[0-9a-fA-F]{32}$', 'x-hint': 'SK followed by 32 hex digits', description: 'API Key SID.' },
        secret: { ...secretRefSchema, description: 'API Key secret, by reference.' },
      },
    },
    from: {
      type: 'string',
      pattern: '^(\\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$',
      'x-hint': 'an E.164 number such as +15005550006, or an alphanumeric sender id',
      description: 'Sender: a Twilio number in E.164, or an alphanumeric sender id. Give from or messagingServiceSid.',
    },
    messagingServiceSid: {
      type: 'string',
      pattern: '^MG[0-9a-fA-F]{32}$',
      'x-hint': 'MG followed by 32 hex digits',
      description: 'Messaging Service that picks the sender (and handles opt-out keywords). Give from or messagingServiceSid.',
    },
    statusCallback: {
      type: 'object',
      description:
        'Ask Twilio to report sent/delivered/undelivered/failed to <baseUrl>/hooks/twilio/status/<name>; the reports are ' +
        'verified (X-Twilio-Signature, needs authToken) and recorded on the delivery. Absent: no status callbacks.',
      additionalProperties: false,
      required: ['baseUrl'],
      properties: {
        baseUrl: {
          type: 'string',
          format: 'uri',
          pattern: '^https?://',
          description: 'Public base URL of this CareRelay as Twilio reaches it, e.g. https://carerelay.example.org (the signature covers it).',
        },
      },
    },
    maxValiditySeconds: {
      type: 'integer',
      minimum: 1,
      maximum: MAX_VALIDITY_SECONDS,
      default: MAX_VALIDITY_SECONDS,
      description: 'Longest time Twilio may keep a message queued (ValidityPeriod), seconds; a delivery\'s expires shortens it.',
    },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 120, default: 15, description: 'Seconds for the whole API call.' },
    apiBaseUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      default: 'https://api.twilio.com',
      description: 'API base URL: a regional edge (e.g. https://api.dublin.ie1.twilio.com), or a local stand-in in tests (http on loopback only).',
    },
    baa: providerBaaSchema,
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: TwilioConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  if ((config.from === undefined) === (config.messagingServiceSid === undefined)) {
    issues.push({ path: [], message: 'give exactly one of from (a sender number or id) and messagingServiceSid' });
  }
  if (config.authToken === undefined && config.apiKey === undefined) {
    issues.push({ path: [], message: 'give authToken or apiKey: { sid, secret } to call the API' });
  }
  if (config.statusCallback !== undefined && config.authToken === undefined) {
    issues.push({ path: ['statusCallback'], message: 'status callbacks are signed with the Auth Token: give authToken too' });
  }
  issues.push(...destinationUrlIssues(config.apiBaseUrl, ['apiBaseUrl'], false));
  if (config.statusCallback !== undefined) issues.push(...destinationUrlIssues(config.statusCallback.baseUrl, ['statusCallback', 'baseUrl'], false));
  return issues;
}

/** The path Twilio posts status callbacks to (mounted by api/hooks-routes.ts). */
export function twilioStatusPath(output: string): string {
  return `/hooks/twilio/status/${output}`;
}

/** The StatusCallback URL of an output: what Twilio requests, and what its signature covers. */
export function twilioStatusCallbackUrl(config: Pick<TwilioConfig, 'name' | 'statusCallback'>): string | undefined {
  if (config.statusCallback === undefined) return undefined;
  return `${config.statusCallback.baseUrl.replace(/\/+$/, '')}${twilioStatusPath(config.name)}`;
}

/**
 * ValidityPeriod for a message sent at `nowMs` that must not arrive at or after `expiresAt`:
 * whole seconds left (rounded down), at most `max`. Undefined when it can no longer arrive in time.
 */
export function validitySeconds(nowMs: number, expiresAt: string | undefined, max: number): number | undefined {
  if (expiresAt === undefined) return max;
  const left = Math.floor((Date.parse(expiresAt) - nowMs) / 1000);
  if (!Number.isFinite(left) || left < 1) return undefined;
  return Math.min(max, left);
}

export const twilioSpec: OutputSpec<TwilioConfig, OutputDeps> = {
  type: TWILIO,
  summary: 'SMS through Twilio Programmable Messaging, ValidityPeriod from expires, status callbacks recorded.',
  configSchema: twilioConfigSchema,
  check,
  info: (config) => ({
    channel: 'sms',
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // No idempotency key on create: an unknown outcome must not be sent again blindly.
    idempotent: false,
  }),
  create: (config, deps) => createTwilio(config, deps),
};

/** Twilio's error body ("Error and Warning Dictionary"). */
interface TwilioErrorBody {
  code?: unknown;
  status?: unknown;
}

export function createTwilio(config: TwilioConfig, deps: OutputDeps): OutboundAdapter {
  const info = twilioSpec.info(config);
  const [user, password] = config.apiKey
    ? [config.apiKey.sid, deps.secret(config.apiKey.secret)]
    : [config.accountSid, deps.secret(config.authToken!)];
  const authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const url = new URL(`${config.apiBaseUrl.replace(/\/+$/, '')}/2010-04-01/Accounts/${config.accountSid}/Messages.json`);
  const statusCallback = twilioStatusCallbackUrl(config);
  const output = config.name;
  // Connections to the API kept alive between messages (a TLS handshake per SMS otherwise).
  const keepAlive = new KeepAlive();

  return {
    name: output,
    ...info,
    async close() {
      keepAlive.close();
    },
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (message.to === undefined || message.to === '') throw new PermanentError(TwilioCode.NoRecipient, `delivery ${message.deliveryId} has no phone number`);
      if (message.text.length > MAX_BODY_CHARS) {
        throw new PermanentError(TwilioCode.BodyTooLong, `delivery ${message.deliveryId}: the text has ${message.text.length} characters; Twilio takes ${MAX_BODY_CHARS}`);
      }
      const validity = validitySeconds(deps.now().getTime(), message.expiresAt, config.maxValiditySeconds);
      if (validity === undefined) throw new PermanentError(TwilioCode.Expired, `delivery ${message.deliveryId} can no longer arrive before it expires`);
      const to = message.to;

      // Our own idempotency key: the receipts ledger (outputs/send-ledger.ts).
      return sendRecorded(deps, { output, outcomeUnknownCode: TwilioCode.OutcomeUnknown, what: 'the SMS', provider: 'Twilio' }, message, context, async () => {
        const form = new URLSearchParams({ To: to, Body: message.text });
        if (config.messagingServiceSid !== undefined) form.set('MessagingServiceSid', config.messagingServiceSid);
        else form.set('From', config.from!);
        form.set('ValidityPeriod', String(validity));
        if (statusCallback !== undefined) form.set('StatusCallback', statusCallback);

        const response = await sendOnce({
          url,
          headers: { authorization, 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', 'user-agent': 'CareRelay' },
          body: Buffer.from(form.toString()),
          timeoutMs: config.timeoutSeconds * 1000,
          signal: context.signal,
          codePrefix: 'twilio',
          keepAlive,
        });
        const { status, body } = response;
        const json = parseJson(body);
        if (status === 201 || status === 200) {
          const sid = typeof json.sid === 'string' && /^(SM|MM)[0-9a-fA-F]{32}$/.test(json.sid) ? json.sid : undefined;
          if (sid === undefined) throw new AmbiguousError(TwilioCode.OutcomeUnknown, `Twilio answered HTTP ${status} without a message SID`);
          return { providerId: sid, detail: { validitySeconds: validity } };
        }
        throw classifyAnswer(status, json, parseRetryAfter(headerOf(response.headers, 'retry-after'), deps.now().getTime()));
      });
    },
  };
}

function parseJson(body: Buffer): Record<string, unknown> & TwilioErrorBody {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function classifyAnswer(status: number, json: TwilioErrorBody, retryAfterMs: number | undefined): Error & { providerCode?: string } {
  const code = typeof json.code === 'number' && Number.isInteger(json.code) ? json.code : undefined;
  const providerCode = code === undefined ? undefined : String(code);
  const what = `Twilio answered HTTP ${status}${providerCode ? ` (error ${providerCode})` : ''}`;
  const withCode = <E extends Error>(error: E): E & { providerCode?: string } => Object.assign(error, providerCode ? { providerCode } : {});
  if (status === 429 || code === 20429) return withCode(new RateLimitedError(TwilioCode.RateLimited, what, { retryAfterMs }));
  const signal = code === undefined ? undefined : RECIPIENT_ERRORS[code];
  if (signal !== undefined && status >= 400 && status < 500) {
    return new RecipientError(signal, signal === RecipientSignal.OptedOut ? TwilioCode.OptedOut : TwilioCode.Unfit, what, { providerCode });
  }
  if (status === 401 || code === 20003) return withCode(new PermanentError(TwilioCode.Unauthorized, `${what}: check accountSid and the credentials`));
  if (status === 503) return withCode(new TransientError(TwilioCode.Unavailable, what, { retryAfterMs }));
  if (status >= 500) return withCode(new AmbiguousError(TwilioCode.OutcomeUnknown, `${what}; the message may have been created`));
  return withCode(new PermanentError(TwilioCode.Rejected, what));
}
