// The `smtp` output: email over SMTP submission (nodemailer's SMTP transport), one connection
// per message, text + HTML parts from the rule's templates.
//
// Follows RFC 5321 (SMTP) and RFC 6409 (submission: port 587 with STARTTLS, RFC 3207; or 465
// with implicit TLS, RFC 8314), RFC 5322 (Message-ID), RFC 2369 + RFC 8058 (List-Unsubscribe,
// List-Unsubscribe-Post: List-Unsubscribe=One-Click) and RFC 3463 enhanced status codes;
// nodemailer 10 (https://nodemailer.com/smtp/, error codes in its errors module).
//
// Message-ID is derived from the delivery id (`<sha256 hex>@<domain>`), so every attempt of a
// delivery carries the same one and no patient identifier leaks into headers. Non-care email
// (purpose not care.*) carries List-Unsubscribe with the one-click header, from the
// message's unsubscribe links (the consent side builds and signs them); without links it is
// refused (permanent `unsubscribe_missing`) unless requireUnsubscribe is false.
//
// One attempt, never retried here. Failures, by where the conversation stopped:
//   RCPT TO 5xx with 5.1.x / 5.2.1 (or 550/551/553 without an enhanced code)
//                                    → RecipientError hard_bounce (+ a `bounced` receipt)
//   RCPT TO 5xx otherwise            → PermanentError smtp_recipient_refused (policy, relaying)
//   MAIL FROM / DATA 5xx, AUTH 5xx   → PermanentError (sender refused, message refused, auth)
//   421, 4xx with 4.7.x (throttling)  → RateLimitedError (SMTP gives no retry time)
//   other 4xx (greylisting, 451…)    → TransientError
//   connection lost / timeout / abort before the server said 354 to DATA
//                                    → TransientError: no message can have been taken
//   the same after 354 (the message was being or had been transferred, no final answer)
//                                    → AmbiguousError smtp_outcome_unknown: the server may
//                                      have queued it; SMTP has no idempotency, so it parks
// SMTP has no idempotency key either for a process that dies in the middle of a conversation:
// each message goes at most once per delivery through the receipts ledger (send-ledger.ts
// sendRecorded), so the next attempt after such a crash parks it instead of sending it again.
// Asynchronous bounces (DSN mail to the envelope sender) are not read.
import { createHash } from 'node:crypto';
import nodemailer from 'nodemailer';
import type { InstanceCheckIssue } from '../../config/load.ts';
import { secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import { AmbiguousError, PermanentError, RateLimitedError, RecipientError, RecipientSignal, TransientError } from '../../errors.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { allowedPurposesSchema, listUnsubscribeHeaders, outputNameSchema, providerBaaSchema } from '../common.ts';
import { sendRecorded } from '../send-ledger.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputSpec, SendContext } from '../spec.ts';

export const SMTP = 'smtp';

export const SmtpSecurity = {
  /** Port 587: plain connection upgraded with STARTTLS, which is required (RFC 3207). */
  StartTls: 'starttls',
  /** Port 465: TLS from the first byte (RFC 8314). */
  Tls: 'tls',
  /** No TLS at all: only for a relay on a loopback address. */
  None: 'none',
} as const;
export type SmtpSecurity = (typeof SmtpSecurity)[keyof typeof SmtpSecurity];

/** Failure codes of this output (safe to log). */
export const SmtpCode = {
  HardBounce: 'hard_bounce',
  RecipientRefused: 'smtp_recipient_refused',
  SenderRefused: 'smtp_sender_refused',
  MessageRefused: 'smtp_message_refused',
  AuthFailed: 'smtp_auth_failed',
  Throttled: 'smtp_throttled',
  TemporaryFailure: 'smtp_temporary_failure',
  Unreachable: 'smtp_unreachable',
  Timeout: 'smtp_timeout',
  OutcomeUnknown: 'smtp_outcome_unknown',
  Aborted: 'smtp_aborted',
  NoSubject: 'smtp_no_subject',
  NoRecipient: 'smtp_no_recipient',
  UnsubscribeMissing: 'unsubscribe_missing',
  Failed: 'smtp_failed',
} as const;

export interface SmtpConfig {
  readonly name: string;
  readonly type: typeof SMTP;
  readonly host: string;
  readonly port: number;
  readonly security: SmtpSecurity;
  readonly auth?: { readonly user: string; readonly pass: SecretRef };
  readonly tls?: { readonly ca?: SecretRef; readonly servername?: string };
  readonly from: string;
  readonly replyTo?: string;
  readonly envelopeFrom?: string;
  readonly messageIdDomain?: string;
  readonly timeoutSeconds: number;
  readonly requireUnsubscribe: boolean;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

const ADDRESS = '^[^\\s@<>]+@[^\\s@<>]+$';

export const smtpConfigSchema = {
  type: 'object',
  description: 'Sends email through an SMTP submission server (STARTTLS or TLS, optional auth).',
  additionalProperties: false,
  required: ['name', 'type', 'host', 'from'],
  properties: {
    name: outputNameSchema,
    type: { const: SMTP, description: 'Output type: smtp.' },
    host: { type: 'string', minLength: 1, description: 'SMTP server host name, e.g. smtp.example.org.' },
    port: { type: 'integer', minimum: 1, maximum: 65535, default: 587, description: 'SMTP server port: 587 with starttls, 465 with tls.' },
    security: {
      enum: Object.values(SmtpSecurity),
      default: SmtpSecurity.StartTls,
      description: 'starttls (default: the connection must be upgraded, or nothing is sent), tls (implicit TLS), none (loopback relays only).',
    },
    auth: {
      type: 'object',
      description: 'SMTP AUTH credentials (PLAIN or LOGIN, over TLS only). Absent: no AUTH.',
      additionalProperties: false,
      required: ['user', 'pass'],
      properties: {
        user: { type: 'string', minLength: 1, description: 'User name.' },
        pass: { ...secretRefSchema, description: 'Password, by reference.' },
      },
    },
    tls: {
      type: 'object',
      description: 'TLS settings. Certificates are always verified.',
      additionalProperties: false,
      properties: {
        ca: { ...secretRefSchema, description: 'PEM CA certificate(s) of a server with a private CA, by reference (usually a file).' },
        servername: { type: 'string', minLength: 1, description: 'Name the certificate must carry, when it differs from host.' },
      },
    },
    from: {
      type: 'string',
      minLength: 3,
      description: 'From header, e.g. "Clinic <appointments@clinic.example.org>".',
    },
    replyTo: { type: 'string', minLength: 3, description: 'Reply-To header. Absent: replies go to From.' },
    envelopeFrom: {
      type: 'string',
      pattern: ADDRESS,
      'x-hint': 'an address such as bounces@clinic.example.org',
      description: 'Envelope sender (MAIL FROM), where bounces go. Absent: the From address.',
    },
    messageIdDomain: {
      type: 'string',
      pattern: '^[A-Za-z0-9.-]+$',
      description: 'Domain of the Message-ID (<hash of the delivery id>@domain). Absent: the domain of the From address.',
    },
    timeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 300,
      default: 30,
      description: 'Seconds for the whole conversation, and the longest silence of the server; past it the send fails.',
    },
    requireUnsubscribe: {
      type: 'boolean',
      default: true,
      description:
        'Refuse non-care email (purpose other than care.*) that comes without an unsubscribe link: List-Unsubscribe with ' +
        'one-click (RFC 8058) is required of bulk senders and by docs/consent.md.',
    },
    baa: providerBaaSchema,
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

const LOOPBACK_HOST = /^(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1)$/;

function check(config: SmtpConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  if (config.security === SmtpSecurity.None && !LOOPBACK_HOST.test(config.host)) {
    issues.push({ path: ['security'], message: 'security: none sends mail and passwords in clear: only for a relay on a loopback host; use starttls or tls' });
  }
  if (addressOf(config.from) === undefined) issues.push({ path: ['from'], message: `"${config.from}" has no email address (e.g. "Clinic <appointments@clinic.example.org>")` });
  else if (config.messageIdDomain === undefined && domainOf(config.from) === undefined) {
    issues.push({ path: ['from'], message: 'give messageIdDomain: the From address has no domain to build Message-IDs with' });
  }
  return issues;
}

function addressOf(from: string): string | undefined {
  const angle = /<([^<>\s]+@[^<>\s]+)>\s*$/.exec(from);
  const address = angle ? angle[1] : from.trim();
  return address !== undefined && new RegExp(ADDRESS).test(address) ? address : undefined;
}

function domainOf(from: string): string | undefined {
  const domain = addressOf(from)?.split('@')[1];
  return domain !== undefined && /^[A-Za-z0-9.-]+$/.test(domain) ? domain : undefined;
}

/** `<hex>@domain`: the same for every attempt of a delivery, and no identifier in clear. */
export function messageIdFor(deliveryId: string, domain: string): string {
  return `<${createHash('sha256').update(deliveryId).digest('hex').slice(0, 40)}@${domain}>`;
}

export const smtpSpec: OutputSpec<SmtpConfig, OutputDeps> = {
  type: SMTP,
  summary: 'Email over SMTP (STARTTLS/TLS, AUTH), text + HTML, Message-ID from the delivery id, one-click unsubscribe.',
  configSchema: smtpConfigSchema,
  check,
  info: (config) => ({
    channel: 'email',
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // SMTP has no way to recognise a resend: an unknown outcome parks for review.
    idempotent: false,
  }),
  create: (config, deps) => createSmtp(config, deps),
};

/** What nodemailer puts on its errors (errors module, smtp-connection _formatError). */
interface SmtpFailure extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  command?: string;
}

export function createSmtp(config: SmtpConfig, deps: OutputDeps): OutboundAdapter {
  const info = smtpSpec.info(config);
  const domain = config.messageIdDomain ?? domainOf(config.from)!;
  const timeoutMs = config.timeoutSeconds * 1000;
  const transportOptions = {
    host: config.host,
    port: config.port,
    secure: config.security === SmtpSecurity.Tls,
    requireTLS: config.security === SmtpSecurity.StartTls,
    ignoreTLS: config.security === SmtpSecurity.None,
    ...(config.auth ? { auth: { user: config.auth.user, pass: deps.secret(config.auth.pass) } } : {}),
    tls: {
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2' as const,
      ...(config.tls?.ca ? { ca: deps.secret(config.tls.ca) } : {}),
      ...(config.tls?.servername ? { servername: config.tls.servername } : {}),
    },
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
  };

  return {
    name: config.name,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      if (message.to === undefined || message.to === '') throw new PermanentError(SmtpCode.NoRecipient, `delivery ${message.deliveryId} has no email address`);
      if (message.subject === undefined) throw new PermanentError(SmtpCode.NoSubject, `delivery ${message.deliveryId}: the email template gave no subject`);
      const unsubscribe = listUnsubscribeHeaders(message, config.requireUnsubscribe, SmtpCode.UnsubscribeMissing);
      const headers: Record<string, { prepared: true; value: string }> = {
        // RFC 3834: keeps out-of-office replies away from the sending address.
        'Auto-Submitted': { prepared: true, value: 'auto-generated' },
      };
      for (const [name, value] of Object.entries(unsubscribe ?? {})) headers[name] = { prepared: true, value };
      // The transaction log tells how far the conversation got (354: the server took DATA);
      // only that marker is kept, nothing of what is logged.
      let dataStarted = false;
      const stageLogger = {
        debug: (entry: { tnx?: string }, line?: unknown) => {
          if (entry?.tnx === 'server' && typeof line === 'string' && line.startsWith('354')) dataStarted = true;
        },
        info: () => {},
        warn: () => {},
        error: () => {},
        trace: () => {},
        fatal: () => {},
      };
      const messageId = messageIdFor(message.deliveryId, domain);
      const recorded = { output: config.name, outcomeUnknownCode: SmtpCode.OutcomeUnknown, what: 'the email', provider: config.host };
      return sendRecorded(deps, recorded, message, context, async () => {
        const transport = nodemailer.createTransport({ ...transportOptions, logger: stageLogger, transactionLog: true });
        const deadline = AbortSignal.timeout(timeoutMs);
        try {
          const sent = await transport.sendMail({
            from: config.from,
            to: message.to,
            ...(config.replyTo ? { replyTo: config.replyTo } : {}),
            ...(config.envelopeFrom ? { envelope: { from: config.envelopeFrom, to: message.to } } : {}),
            subject: message.subject,
            text: message.text,
            ...(message.html !== undefined ? { html: message.html } : {}),
            messageId,
            date: deps.now(),
            headers,
            signal: AbortSignal.any([context.signal, deadline]),
          });
          return { providerId: messageId, detail: { response: String(sent.response ?? '').slice(0, 3) } };
        } catch (raw) {
          const error = classify(raw as SmtpFailure, dataStarted, context.signal.aborted, config.host);
          if (error instanceof RecipientError) {
            // A hard bounce is the recipient's fact, recorded beside the delivery for the consent ledger.
            await deps.receipts
              .addDeliveryReceipt({ deliveryId: message.deliveryId, output: config.name, status: 'bounced', code: error.providerCode, attempt: context.attempt, at: deps.now().toISOString() })
              .catch(() => undefined);
          }
          throw error;
        } finally {
          transport.close();
        }
      });
    },
  };
}

/** RFC 3463 enhanced status code of a reply ("550 5.1.1 …"), when it has one. */
function enhancedCode(response: string | undefined): string | undefined {
  return response === undefined ? undefined : /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b/.exec(response)?.[1];
}

function isHardBounce(reply: number, enhanced: string | undefined): boolean {
  if (enhanced !== undefined) return /^5\.1\.\d+$/.test(enhanced) || enhanced === '5.2.1';
  return reply === 550 || reply === 551 || reply === 553;
}

function classify(error: SmtpFailure, dataStarted: boolean, abortedByCaller: boolean, host: string): Error {
  const reply = error.responseCode;
  const command = error.command ?? '';
  if (reply !== undefined && reply >= 400 && reply < 600) {
    const enhanced = enhancedCode(error.response);
    const where = `${host} answered ${reply}${enhanced ? ` ${enhanced}` : ''} to ${command || 'the conversation'}`;
    // 421 (closing: too busy) and 4.7.x policy answers are how submission servers throttle.
    if (reply === 421 || enhanced?.startsWith('4.7.')) return new RateLimitedError(SmtpCode.Throttled, where, { cause: error });
    if (reply < 500) return new TransientError(SmtpCode.TemporaryFailure, where, { cause: error });
    if (command.startsWith('RCPT')) {
      return isHardBounce(reply, enhanced)
        ? new RecipientError(RecipientSignal.HardBounce, SmtpCode.HardBounce, `${where}: the mailbox does not exist or refuses mail`, { cause: error, providerCode: String(reply) })
        : new PermanentError(SmtpCode.RecipientRefused, where, { cause: error });
    }
    if (command.startsWith('AUTH')) return new PermanentError(SmtpCode.AuthFailed, `${where}: check auth.user and auth.pass`, { cause: error });
    if (command.startsWith('MAIL')) return new PermanentError(SmtpCode.SenderRefused, `${where}: check from / envelopeFrom`, { cause: error });
    return new PermanentError(SmtpCode.MessageRefused, where, { cause: error });
  }
  const code = error.code ?? '';
  if (code === 'EAUTH' || code === 'ENOAUTH') return new PermanentError(SmtpCode.AuthFailed, `${host}: authentication failed`, { cause: error });
  // No final answer: what it means depends on whether the server had taken DATA.
  const timedOut = code === 'ETIMEDOUT' || (code === 'EABORT' && !abortedByCaller);
  const reason = timedOut ? SmtpCode.Timeout : code === 'EABORT' ? SmtpCode.Aborted : SmtpCode.Unreachable;
  if (dataStarted) {
    return new AmbiguousError(SmtpCode.OutcomeUnknown, `${host}: no final answer after the message was transferred (${code || 'error'}); it may have been queued`, { cause: error });
  }
  if (code === '' || code === 'ECONNECTION' || code === 'ESOCKET' || code === 'ETIMEDOUT' || code === 'EDNS' || code === 'ETLS' || code === 'EABORT' || code === 'EPROXY') {
    return new TransientError(reason, `${host}: ${reason === SmtpCode.Unreachable ? `unreachable (${code || 'error'})` : reason === SmtpCode.Timeout ? 'no answer in time' : 'aborted'}; nothing was sent`, { cause: error });
  }
  // Anything else (EPROTOCOL, EENVELOPE from the client side, EMESSAGE…) before DATA.
  return new PermanentError(SmtpCode.Failed, `${host}: ${code} before the message was sent`, { cause: error });
}
