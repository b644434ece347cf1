// POST /hooks/twilio/status/<output>: where Twilio reports what became of an SMS the `twilio`
// output sent (Twilio docs, "Outbound message status in status callbacks": form-encoded
// MessageSid, MessageStatus, ErrorCode, …, signed with X-Twilio-Signature).
//
// Order (docs/reliability.md promise 11): the output must be configured for callbacks, the
// signature header present, the body form-encoded and within 64 KiB — all before a byte is
// read. Then the signature is verified over the URL Twilio was given (the output's
// statusCallback URL, not the one a proxy forwarded) and the form, and only then is anything
// looked up. A final status (sent, delivered, undelivered, failed) is recorded as a receipt of
// the delivery that got that message SID; Twilio repeats callbacks, and a repeat records
// nothing new. Other statuses (queued, sending, …) are acknowledged and not kept.
import express from 'express';
import type { InstancePlan } from '../config/load.ts';
import type { SecretRef } from '../config/yaml.ts';
import type { Logger } from '../log.ts';
import { TWILIO, twilioStatusCallbackUrl, type TwilioConfig } from '../outputs/twilio/spec.ts';
import type { Store } from '../store/store.ts';
import { TWILIO_SIGNATURE_HEADER, twilioSignatureMatches } from '../twilio/signature.ts';
import type { ReceiptStatus } from '../types.ts';
import { declaredOverLimit, refuseUnread } from './http.ts';

/** A twilio output that asked for status callbacks. */
export interface TwilioStatusHook {
  /** The Auth Token Twilio signs callbacks with. */
  authToken: string;
  /** The StatusCallback URL given to Twilio (what the signature covers). */
  url: string;
}

export interface HooksDeps {
  /** By output name. */
  twilioStatus: ReadonlyMap<string, TwilioStatusHook>;
  store: Pick<Store, 'addDeliveryReceipt' | 'listDeliveryReceipts'>;
  log: Logger;
  /** Epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
}

/** Twilio MessageStatus values recorded on the delivery, and the receipt status each becomes. */
const RECORDED_STATUS: Readonly<Record<string, ReceiptStatus>> = {
  sent: 'sent',
  delivered: 'delivered',
  undelivered: 'undelivered',
  failed: 'failed',
};

const MAX_BODY_BYTES = 64 * 1024;
const MESSAGE_SID = /^(SM|MM)[0-9a-fA-F]{32}$/;

export function createHooksRouter(deps: HooksDeps): express.Router {
  const router = express.Router();
  const now = deps.now ?? Date.now;

  router.post('/twilio/status/:output', (req, res, next) => {
    const output = req.params.output;
    const hook = deps.twilioStatus.get(output);
    if (hook === undefined) {
      refuseUnread(res, 404, 'Unknown output', `no twilio output named "${output}" takes status callbacks`);
      return;
    }
    const signature = req.headers[TWILIO_SIGNATURE_HEADER];
    if (typeof signature !== 'string' || signature === '') {
      deps.log.warn('hooks.unauthorized', { output, reason: 'signature_missing' });
      refuseUnread(res, 401, 'Unauthorized', 'the X-Twilio-Signature header is required');
      return;
    }
    if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded')) {
      refuseUnread(res, 415, 'Unsupported media type', 'Twilio posts application/x-www-form-urlencoded');
      return;
    }
    if (declaredOverLimit(req, MAX_BODY_BYTES)) {
      refuseUnread(res, 413, 'Payload too large', `a status callback is under ${MAX_BODY_BYTES} bytes`);
      return;
    }
    express.raw({ type: () => true, limit: MAX_BODY_BYTES })(req, res, async (err?: unknown) => {
      if (err !== undefined) {
        refuseUnread(res, 400, 'Bad request', 'the body could not be read');
        return;
      }
      const form = new URLSearchParams((Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)).toString('utf8'));
      // The query Twilio requested is part of what it signed.
      const query = req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?')) : '';
      if (!twilioSignatureMatches(hook.authToken, hook.url + query, form, signature)) {
        deps.log.warn('hooks.unauthorized', { output, reason: 'bad_signature' });
        refuseUnread(res, 401, 'Unauthorized', 'X-Twilio-Signature does not match the URL and the form (check statusCallback.baseUrl and the Auth Token)');
        return;
      }
      const sid = form.get('MessageSid') ?? '';
      const status = RECORDED_STATUS[form.get('MessageStatus') ?? ''];
      if (!MESSAGE_SID.test(sid)) {
        refuseUnread(res, 400, 'Bad request', 'MessageSid is missing or not a message SID');
        return;
      }
      try {
        if (status !== undefined) {
          const [sent] = await deps.store.listDeliveryReceipts({ output, providerId: sid });
          if (sent === undefined) {
            // Not a message this output recorded (another system shares the number, or its
            // receipt could not be written): nothing to attach it to.
            deps.log.warn('hooks.twilio_unknown_message', { output, status });
          } else {
            const code = form.get('ErrorCode') ?? '';
            await deps.store.addDeliveryReceipt({
              deliveryId: sent.deliveryId,
              output,
              status,
              providerId: sid,
              ...(/^\d{1,6}$/.test(code) ? { code } : {}),
              at: new Date(now()).toISOString(),
            });
          }
        }
        res.status(204).end();
      } catch (error) {
        next(error);
      }
    });
  });

  return router;
}

/** The status hooks of the plan's twilio outputs that ask for callbacks (secrets read with `secret`). */
export function twilioStatusHooks(outputs: readonly InstancePlan[], secret: (ref: SecretRef) => string): Map<string, TwilioStatusHook> {
  const hooks = new Map<string, TwilioStatusHook>();
  for (const output of outputs) {
    if (output.type !== TWILIO) continue;
    const config = output.config as unknown as TwilioConfig;
    const url = twilioStatusCallbackUrl(config);
    // The spec's check() requires authToken with statusCallback.
    if (url !== undefined && config.authToken !== undefined) hooks.set(output.name, { authToken: secret(config.authToken), url });
  }
  return hooks;
}
