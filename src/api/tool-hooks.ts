// Where the marketing tools report opt-outs and bounces back (docs/consent.md "Tools that hold
// the contact", the "from the tool" direction), mounted under /hooks by app.ts:
//
//   POST     /hooks/hubspot/:output              JSON event batch, X-HubSpot-Signature-v3 (the app's client secret)
//   GET|POST /hooks/mailchimp/:output/:secret    GET: Mailchimp's check of a new webhook URL; POST: form
//   POST     /hooks/brevo/:output                JSON event(s), Authorization: Bearer <secret> (or Basic)
//   POST     /hooks/activecampaign/:output/:secret  form
//   POST     /hooks/sfmc/:output                 ENS: a signed batch (x-sfmc-ens-signature), or the
//                                                callback's one-time verification, confirmed at once
//
// Each output names its secret in its own configuration (webhookSecret; sfmc: ens.signatureKey),
// read at start; an output without one takes no webhook (404). Order (docs/reliability.md promise
// 11): the output, then what can be checked before a byte is read (a secret in the path or a
// header, the content type, the declared length); the body, size-limited; a signature over the
// body; only then is anything parsed or recorded. A missing credential answers 401, a wrong one
// 403, a body that is not the tool's payload 400 with the reason — nothing is recorded then.
//
// What is recorded: each report read by the tool's pure parser (outputs/*/webhooks.ts,
// outputs/sfmc/ens.ts) becomes a ledger entry through ConsentService.toolSignal — once per event
// id (tools deliver at least once: a repeat records nothing), for the patient the tool's contact
// stands for (HubSpot names it by its own id: the holdings keep the id an upsert answered with),
// never pushed back to the output it came from, and the pending deliveries it now forbids are
// suppressed before the answer. Scope (docs/consent.md "Precise semantics"): an unsubscribe stops
// the purposes the output carries, each widened as an unsubscribe link's (marketing and
// service.info together); a hard bounce makes the address unfit for every output; a spam
// complaint stops every non-care purpose.
//
// Logs: output names, reason codes and counts only.
import express, { type Request, type Response } from 'express';
import type { InstancePlan } from '../config/load.ts';
import type { SecretRef } from '../config/yaml.ts';
import type { Logger } from '../log.ts';
import { ACTIVECAMPAIGN, type ActiveCampaignConfig } from '../outputs/activecampaign/spec.ts';
import { activeCampaignWebhookSecretMatches, parseActiveCampaignWebhook } from '../outputs/activecampaign/webhooks.ts';
import { BREVO, type BrevoConfig } from '../outputs/brevo/spec.ts';
import { brevoWebhookAuthorized, parseBrevoWebhook } from '../outputs/brevo/webhooks.ts';
import { ToolSignalKind, type ToolConsentSignal } from '../outputs/consent-sync.ts';
import { HUBSPOT, hubspotWebhookSecret, type HubspotConfig } from '../outputs/hubspot/spec.ts';
import { HUBSPOT_SIGNATURE_V3_HEADER, HUBSPOT_TIMESTAMP_HEADER, HubspotSignatureCheck, parseHubspotWebhook, verifyHubspotSignatureV3 } from '../outputs/hubspot/webhooks.ts';
import { MAILCHIMP, type MailchimpConfig } from '../outputs/mailchimp/spec.ts';
import { mailchimpWebhookSecretMatches, parseMailchimpWebhook } from '../outputs/mailchimp/webhooks.ts';
import { ENS_SIGNATURE_HEADER, parseEnsNotification, verifyEnsSignature } from '../outputs/sfmc/ens.ts';
import { SFMC, sfmcContactKeyIsPatientId, type SfmcAdapter, type SfmcConfig } from '../outputs/sfmc/spec.ts';
import type { OutboundAdapter } from '../outputs/spec.ts';
import { nonCarePurposes, unsubscribeScope } from '../pipeline/consent.ts';
import { PURPOSES, type Purpose } from '../types.ts';
import type { ConsentService } from '../workers/consent.ts';
import { declaredOverLimit, limitedRawBody, refuseUnread, sendProblem } from './http.ts';

/** A secret carried in a URL or a header is at least this long (it is all that authenticates the tool). */
export const MIN_WEBHOOK_SECRET_LENGTH = 16;
/** JSON batches: HubSpot sends up to 100 events, ENS up to maxBatchSize (1,000 by default). */
const MAX_JSON_BYTES = 1024 * 1024;
const MAX_FORM_BYTES = 64 * 1024;
/** ENS verifications confirmed per output per hour at most: each costs a call to Marketing Cloud, and they come unsigned. */
const ENS_VERIFICATIONS_PER_HOUR = 10;

/** What receiving one output's webhooks needs, per tool (secrets read). */
export type ToolHook =
  | { tool: typeof HUBSPOT; clientSecret: string; subscriptions: Readonly<Partial<Record<Purpose, number>>> }
  | { tool: typeof MAILCHIMP; secret: string; listId: string; purposes: readonly Purpose[] }
  | { tool: typeof BREVO; secret: string; purposes: readonly Purpose[] }
  | { tool: typeof ACTIVECAMPAIGN; secret: string; listIds: readonly number[]; purposes: readonly Purpose[] }
  | {
      tool: typeof SFMC;
      /** Undefined until the callback's signatureKey is configured: batches are refused, verifications answered. */
      signatureKey?: string;
      /** The contact key SFMC reports (subscriberKey) is the patient id itself. */
      contactKeyIsPatientId: boolean;
      confirm: SfmcAdapter['confirmEnsCallback'];
    };

export interface ToolHooksDeps {
  /** By output name. */
  hooks: ReadonlyMap<string, ToolHook>;
  consent: Pick<ConsentService, 'toolSignal'>;
  /** The base URL the tools call (policy.publicUrl): HubSpot signs the full URL it called. */
  publicUrl: () => string;
  log: Logger;
  /** Epoch ms; injected by tests. Default Date.now. */
  now?: () => number;
}

/**
 * What an unsubscribe from an output stops: the non-care purposes it carries, each as an
 * unsubscribe link sent for it would stop (marketing and service.info together).
 */
export function unsubscribePurposes(allowed: readonly Purpose[]): Purpose[] {
  const stopped = new Set(nonCarePurposes(allowed).flatMap((p) => unsubscribeScope(p)));
  return PURPOSES.filter((p) => stopped.has(p));
}

/**
 * The signals of one report, an opt-out of a purpose widened as an unsubscribe link's (a HubSpot
 * subscription mapped to service.info also stops marketing). Repeats within the batch go; a
 * widened signal's event id is derived from its source's, so a redelivery records nothing new.
 */
export function widenOptOuts(signals: readonly ToolConsentSignal[]): ToolConsentSignal[] {
  const out: ToolConsentSignal[] = [];
  const seen = new Set<string>();
  const keep = (signal: ToolConsentSignal): void => {
    const key = JSON.stringify([signal.kind, signal.contact, signal.scope.channel ?? null, signal.scope.purpose ?? null]);
    if (seen.has(key)) return;
    seen.add(key);
    out.push(signal);
  };
  // What the tool said first, then what it implies and did not say itself.
  for (const signal of signals) keep(signal);
  for (const signal of signals) {
    const own = signal.scope.purpose;
    if (signal.kind !== ToolSignalKind.OptedOut || own === undefined) continue;
    for (const purpose of unsubscribeScope(own)) {
      if (purpose !== own) keep({ ...signal, scope: { ...signal.scope, purpose }, eventId: `${signal.eventId}~${purpose}` });
    }
  }
  return out;
}

/**
 * The webhooks of the plan's marketing outputs that configure a secret (read with `secret`);
 * `adapters`: the running outputs (sfmc confirms its callbacks through its own). Throws when a
 * secret is too short to authenticate anything.
 */
export function toolHooks(outputs: readonly InstancePlan[], secret: (ref: SecretRef) => string, adapters: ReadonlyMap<string, OutboundAdapter>): Map<string, ToolHook> {
  const hooks = new Map<string, ToolHook>();
  const read = (output: InstancePlan, ref: SecretRef, what: string): string => {
    const value = secret(ref).trim();
    if (value.length < MIN_WEBHOOK_SECRET_LENGTH) {
      throw new Error(`output "${output.name}" (${output.file}:${output.line}): ${what} is shorter than ${MIN_WEBHOOK_SECRET_LENGTH} characters; use a long random secret`);
    }
    return value;
  };
  const purposesOf = (config: { allowedPurposes?: readonly Purpose[] }) => unsubscribePurposes(config.allowedPurposes ?? PURPOSES);
  for (const output of outputs) {
    switch (output.type) {
      case HUBSPOT: {
        const config = output.config as unknown as HubspotConfig;
        const ref = hubspotWebhookSecret(config);
        if (ref) hooks.set(output.name, { tool: HUBSPOT, clientSecret: read(output, ref, 'the HubSpot app client secret'), subscriptions: config.subscriptions ?? {} });
        break;
      }
      case MAILCHIMP: {
        const config = output.config as unknown as MailchimpConfig;
        if (config.webhookSecret) hooks.set(output.name, { tool: MAILCHIMP, secret: read(output, config.webhookSecret, 'webhookSecret'), listId: config.listId, purposes: purposesOf(config) });
        break;
      }
      case BREVO: {
        const config = output.config as unknown as BrevoConfig;
        if (config.webhookSecret) hooks.set(output.name, { tool: BREVO, secret: read(output, config.webhookSecret, 'webhookSecret'), purposes: purposesOf(config) });
        break;
      }
      case ACTIVECAMPAIGN: {
        const config = output.config as unknown as ActiveCampaignConfig;
        if (config.webhookSecret) {
          hooks.set(output.name, { tool: ACTIVECAMPAIGN, secret: read(output, config.webhookSecret, 'webhookSecret'), listIds: config.listIds ?? [], purposes: purposesOf(config) });
        }
        break;
      }
      case SFMC: {
        const config = output.config as unknown as SfmcConfig;
        const adapter = adapters.get(output.name) as SfmcAdapter | undefined;
        if (config.ens && adapter) {
          hooks.set(output.name, {
            tool: SFMC,
            ...(config.ens.signatureKey ? { signatureKey: read(output, config.ens.signatureKey, 'ens.signatureKey') } : {}),
            contactKeyIsPatientId: sfmcContactKeyIsPatientId(config),
            confirm: (verification, context) => adapter.confirmEnsCallback(verification, context),
          });
        }
        break;
      }
      default:
        break;
    }
  }
  return hooks;
}

class BadPayload extends Error {}

export function createToolHooksRouter(deps: ToolHooksDeps): express.Router {
  const router = express.Router();
  const now = deps.now ?? Date.now;
  const verifications = new Map<string, number[]>();

  /** The output's hook when it is of this tool; else a 404 (nothing read). */
  function hookOf<T extends ToolHook['tool']>(req: Request, res: Response, tool: T): Extract<ToolHook, { tool: T }> | undefined {
    const output = String(req.params.output);
    const hook = deps.hooks.get(output);
    if (hook?.tool === tool) return hook as Extract<ToolHook, { tool: T }>;
    refuseUnread(res, 404, 'Unknown webhook', `no ${tool} output named "${output}" takes webhooks (set its ${tool === SFMC ? 'ens block' : 'webhookSecret'})`);
    return undefined;
  }

  const refuse = (res: Response, output: string, status: 401 | 403, reason: string, detail: string): void => {
    deps.log.warn('hooks.unauthorized', { output, reason });
    refuseUnread(res, status, status === 401 ? 'Unauthorized' : 'Forbidden', detail);
  };

  /** Content type and declared length, before anything is read; false when refused. */
  const acceptable = (req: Request, res: Response, type: 'json' | 'form'): boolean => {
    const json = type === 'json';
    const mime = json ? 'application/json' : 'application/x-www-form-urlencoded';
    if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith(mime)) {
      refuseUnread(res, 415, 'Unsupported media type', `this webhook takes ${mime}`);
      return false;
    }
    const limit = json ? MAX_JSON_BYTES : MAX_FORM_BYTES;
    if (declaredOverLimit(req, limit)) {
      refuseUnread(res, 413, 'Payload too large', `a webhook body is under ${limit} bytes`);
      return false;
    }
    return true;
  };

  /** Reads the body (size-limited), then runs `handle` with it; errors go to the router's handler. */
  const withBody =
    (type: 'json' | 'form', handle: (req: Request, res: Response, body: Buffer) => Promise<void>) =>
    (req: Request, res: Response, next: (error?: unknown) => void): void => {
      limitedRawBody(type === 'json' ? MAX_JSON_BYTES : MAX_FORM_BYTES)(req, res, (error?: unknown) => {
        if (error !== undefined) return next(error);
        handle(req, res, Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)).catch(next);
      });
    };

  /** Records the signals of one report and answers with the counts (no patient data). */
  const record = async (res: Response, output: string, signals: readonly ToolConsentSignal[]): Promise<void> => {
    let recorded = 0;
    let suppressed = 0;
    const widened = widenOptOuts(signals);
    for (const signal of widened) {
      const result = await deps.consent.toolSignal(signal);
      recorded += result.recorded;
      suppressed += result.suppressed.length;
    }
    if (widened.length > 0) deps.log.info('hooks.tool_signals', { output, count: widened.length, recorded, suppressed });
    res.status(200).json({ signals: widened.length, recorded, suppressed });
  };

  /** A form-encoded report (Mailchimp, ActiveCampaign: the event's kind in `type`), parsed and recorded. */
  const formReport = (output: string, tool: string, parse: (form: URLSearchParams) => ToolConsentSignal[]) =>
    withBody('form', async (_request, response, body) => {
      const form = new URLSearchParams(body.toString('utf8'));
      if (!form.get('type')) throw new BadPayload(`${tool} webhook names its event in \`type\``);
      await record(response, output, parse(form));
    });

  const json = (body: Buffer): unknown => {
    try {
      return JSON.parse(body.toString('utf8')) as unknown;
    } catch {
      throw new BadPayload('the body is not JSON');
    }
  };
  const parsed = <T>(read: () => T): T => {
    try {
      return read();
    } catch (error) {
      throw error instanceof TypeError ? new BadPayload(error.message) : error;
    }
  };

  // --- HubSpot: webhooks v3, signature v3 over the full URL it called --------------------
  router.post('/hubspot/:output', (req, res, next) => {
    const hook = hookOf(req, res, HUBSPOT);
    if (!hook) return;
    const output = String(req.params.output);
    const signature = req.headers[HUBSPOT_SIGNATURE_V3_HEADER];
    const timestamp = req.headers[HUBSPOT_TIMESTAMP_HEADER];
    if (typeof signature !== 'string' || typeof timestamp !== 'string') {
      return refuse(res, output, 401, 'signature_missing', 'X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp are required');
    }
    if (!acceptable(req, res, 'json')) return;
    withBody('json', async (request, response, body) => {
      const uri = `${deps.publicUrl()}${request.originalUrl}`;
      const check = verifyHubspotSignatureV3({ method: request.method, uri, body, signature, timestamp }, hook.clientSecret, now());
      if (check !== HubspotSignatureCheck.Valid) {
        const detail =
          check === HubspotSignatureCheck.Stale
            ? 'X-HubSpot-Request-Timestamp is more than 5 minutes away (a replay, or a clock out of step)'
            : `X-HubSpot-Signature-v3 does not match this request to ${uri} (check policy.publicUrl and the app's client secret)`;
        return refuse(response, output, check === HubspotSignatureCheck.Missing ? 401 : 403, `signature_${check}`, detail);
      }
      await record(response, output, parsed(() => parseHubspotWebhook(json(body), output, hook.subscriptions)));
    })(req, res, next);
  });

  // --- Mailchimp: the secret is the URL's last segment -------------------------------------
  const mailchimp = (req: Request, res: Response) => {
    const hook = hookOf(req, res, MAILCHIMP);
    if (!hook) return undefined;
    if (!mailchimpWebhookSecretMatches(String(req.params.secret), hook.secret)) {
      refuse(res, String(req.params.output), 403, 'bad_secret', 'the secret in this webhook URL is not the output\'s webhookSecret');
      return undefined;
    }
    return hook;
  };
  // Mailchimp checks a webhook URL with a GET when the webhook is created: it wants a 200.
  router.get('/mailchimp/:output/:secret', (req, res) => {
    if (mailchimp(req, res)) res.status(200).type('text/plain').send('ok');
  });
  router.post('/mailchimp/:output/:secret', (req, res, next) => {
    const hook = mailchimp(req, res);
    if (!hook || !acceptable(req, res, 'form')) return;
    const output = String(req.params.output);
    formReport(output, 'a Mailchimp', (form) => parseMailchimpWebhook(form, { output, listId: hook.listId, purposes: hook.purposes }))(req, res, next);
  });

  // --- Brevo: the webhook's bearer token (or Basic credentials in its URL) -----------------
  router.post('/brevo/:output', (req, res, next) => {
    const hook = hookOf(req, res, BREVO);
    if (!hook) return;
    const output = String(req.params.output);
    const authorization = req.headers.authorization;
    if (authorization === undefined || authorization.trim() === '') {
      res.setHeader('WWW-Authenticate', 'Bearer');
      return refuse(res, output, 401, 'credentials_missing', 'create the Brevo webhook with auth { type: bearer, token: <webhookSecret> }');
    }
    if (!brevoWebhookAuthorized(authorization, { bearerToken: hook.secret }) && !brevoWebhookAuthorized(authorization, { user: 'carerelay', password: hook.secret })) {
      return refuse(res, output, 403, 'bad_credentials', 'the webhook\'s credentials are not the output\'s webhookSecret');
    }
    if (!acceptable(req, res, 'json')) return;
    withBody('json', async (_request, response, body) => {
      await record(response, output, parsed(() => parseBrevoWebhook(json(body), output, hook.purposes)));
    })(req, res, next);
  });

  // --- ActiveCampaign: the secret is the URL's last segment --------------------------------
  router.post('/activecampaign/:output/:secret', (req, res, next) => {
    const hook = hookOf(req, res, ACTIVECAMPAIGN);
    if (!hook) return;
    const output = String(req.params.output);
    if (!activeCampaignWebhookSecretMatches(String(req.params.secret), hook.secret)) {
      return refuse(res, output, 403, 'bad_secret', 'the secret in this webhook URL is not the output\'s webhookSecret');
    }
    if (!acceptable(req, res, 'form')) return;
    formReport(output, 'an ActiveCampaign', (form) => parseActiveCampaignWebhook(form, { output, listIds: hook.listIds, purposes: hook.purposes }))(req, res, next);
  });

  // --- Marketing Cloud ENS: signed batches, and the callback's unsigned verification -------
  router.post('/sfmc/:output', (req, res, next) => {
    const hook = hookOf(req, res, SFMC);
    if (!hook || !acceptable(req, res, 'json')) return;
    const output = String(req.params.output);
    withBody('json', async (request, response, body) => {
      const signature = request.headers[ENS_SIGNATURE_HEADER];
      if (typeof signature === 'string') {
        if (hook.signatureKey === undefined) {
          return refuse(response, output, 401, 'signature_key_unset', 'set the callback\'s signatureKey as ens.signatureKey of this output, then restart');
        }
        if (!verifyEnsSignature(body, signature, hook.signatureKey)) {
          return refuse(response, output, 403, 'bad_signature', 'x-sfmc-ens-signature does not match the body (check ens.signatureKey)');
        }
      }
      const notification = parseEnsNotification(body, output);
      if (notification.kind === 'invalid') throw new BadPayload(`not an Event Notification Service payload: ${notification.reason}`);
      if (notification.kind === 'verification') {
        // Unsigned by design ("Verify a Callback"): returned to Marketing Cloud at once, which
        // confirms only the key it issued; bounded so an unsigned POST cannot make calls at will.
        const hour = now() - 3_600_000;
        const recent = (verifications.get(output) ?? []).filter((t) => t > hour);
        if (recent.length >= ENS_VERIFICATIONS_PER_HOUR) {
          deps.log.warn('hooks.sfmc_verification_refused', { output, reason: 'too_many' });
          return sendProblem(response, 429, 'Too many requests', `at most ${ENS_VERIFICATIONS_PER_HOUR} callback verifications an hour`);
        }
        verifications.set(output, [...recent, now()]);
        try {
          await hook.confirm({ callbackId: notification.callbackId, verificationKey: notification.verificationKey }, { signal: AbortSignal.timeout(30_000) });
        } catch (error) {
          deps.log.warn('hooks.sfmc_verification_failed', { output, code: (error as { code?: string }).code ?? (error as Error).name });
          return sendProblem(response, 502, 'Bad gateway', 'Marketing Cloud did not confirm the callback verification (see the log for its code)');
        }
        deps.log.info('hooks.sfmc_callback_verified', { output });
        response.status(200).json({ verified: true });
        return;
      }
      if (typeof signature !== 'string') return refuse(response, output, 401, 'signature_missing', 'an event batch carries x-sfmc-ens-signature');
      // The contact key SFMC reports is the patient id unless the output sends another key.
      const signals = notification.signals.map((s) =>
        hook.contactKeyIsPatientId && s.contact.toolId !== undefined ? { ...s, contact: { ...s.contact, patientId: s.contact.toolId } } : s,
      );
      await record(response, output, signals);
    })(req, res, next);
  });

  router.use((err: unknown, req: Request, res: Response, next: (e: unknown) => void) => {
    // /<tool>/<output>[/<secret>]: the output's name for the log (never the secret).
    const [, , output = ''] = req.path.split('/');
    if (err instanceof BadPayload) {
      deps.log.warn('hooks.bad_payload', { output });
      return sendProblem(res, 400, 'Bad request', err.message);
    }
    const status = (err as { status?: number }).status;
    if (status === 413) return sendProblem(res, 413, 'Payload too large', (err as Error).message);
    if (status === 400) return sendProblem(res, 400, 'Bad request', 'the body could not be read');
    next(err);
  });
  return router;
}
