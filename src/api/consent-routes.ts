// The ways in of consent over HTTP (docs/consent.md), mounted by app.ts:
//
//   admin (bearer token)   POST /api/consents                       a FHIR R4 Consent (201, or 422 + OperationOutcome)
//                          POST /api/patients/:id/opt-outs          { channel?, purposes? }
//                          POST /api/patients/:id/grants            { purposes, channel, address? }
//                          POST /api/patients/:id/revocations       { purposes, channel, address? }
//                          PUT|DELETE /api/patients/:id/no-contact
//                          GET  /api/patients/:id/consent|decisions|disclosures
//                          POST /api/patients/:id/erase
//   signed                 POST /hooks/sms/:output                  Twilio's inbound SMS (X-Twilio-Signature): keywords,
//                                                                   then answers to reminders (workers/replies.ts)
//                          GET|POST /unsubscribe/:token             signed, expiring link; RFC 8058 one-click
//
// Every change takes effect before the answer: the pending deliveries it forbids are
// suppressed with their reason (workers/consent.ts). Authentication comes before any body is
// read (docs/reliability.md promise 11); bad input gets a problem document naming what is wrong.
import express, { type Request, type Response } from 'express';
import type { CarerelayPlan } from '../config/load.ts';
import type { SecretRef } from '../config/yaml.ts';
import type { Logger } from '../log.ts';
import { TWILIO, type TwilioConfig } from '../outputs/twilio/spec.ts';
import { isRecord } from '../pipeline/values.ts';
import type { Store } from '../store/store.ts';
import { TWILIO_SIGNATURE_HEADER, twilioSignatureMatches } from '../twilio/signature.ts';
import { CHANNELS, PURPOSES, type Channel, type Purpose } from '../types.ts';
import type { ConsentService } from '../workers/consent.ts';
import type { UnsubscribeLinks } from '../workers/unsubscribe.ts';
import { AdminScope } from '../config/server-schema.ts';
import { declaredOverLimit, refuseUnread, sendProblem } from './http.ts';

export interface ConsentRoutesDeps {
  consent: ConsentService;
  store: Store;
  links: UnsubscribeLinks;
  /** Twilio auth token of each SMS output with an inbound webhook. */
  smsWebhooks: ReadonlyMap<string, string>;
  /**
   * What handles a verified inbound SMS: the replies worker (keywords first, then answers and the
   * staff inbox: workers/replies.ts). Absent: the keywords alone (consent.inboundSms).
   */
  inboundSms?: (message: { output: string; from: string; body: string; messageId: string; raw: Buffer }) => Promise<{ reply?: string }>;
  /** Base URL Twilio calls (the signature covers the full URL). */
  publicUrl: () => string;
  /** The admin API's authentication (app.ts): who calls, with which scopes. */
  authenticate: express.RequestHandler;
  /** Refuses a caller without a scope (app.ts requireScope). */
  requireScope: (scope: AdminScope) => express.RequestHandler;
  log: Logger;
  now: () => number;
}

const JSON_LIMIT = 256 * 1024;
const FORM_LIMIT = 64 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

class BadBody extends Error {}

/**
 * The Auth Token each SMS output's inbound webhook is verified with: policy.smsWebhooks, and
 * for a `twilio` output not listed there, its own Auth Token (the one its status callbacks use).
 */
export function inboundSmsTokens(plan: Pick<CarerelayPlan, 'policy' | 'outputs'>, secret: (ref: SecretRef) => string): Map<string, string> {
  const tokens = new Map(plan.policy.smsWebhooks.map((w) => [w.output, secret(w.authToken)]));
  for (const output of plan.outputs) {
    const config = output.config as unknown as Partial<TwilioConfig>;
    if (output.type === TWILIO && !tokens.has(output.name) && config.authToken !== undefined) tokens.set(output.name, secret(config.authToken));
  }
  return tokens;
}

export function createConsentRouter(deps: ConsentRoutesDeps): express.Router {
  const { consent, store } = deps;
  const router = express.Router();

  // --- admin --------------------------------------------------------------------------------
  // Only these paths: the rest of /api is app.ts's.
  const admin = express.Router();
  router.use(['/api/consents', '/api/patients'], deps.authenticate);
  // Consent changes act on patients (operate); the views show their records and contacts (phi).
  const operate = deps.requireScope(AdminScope.Operate);
  const phi = deps.requireScope(AdminScope.Phi);
  const json: express.RequestHandler = (req, res, next) => {
    if (declaredOverLimit(req, JSON_LIMIT)) return refuseUnread(res, 413, 'Payload too large', `bodies are limited to ${JSON_LIMIT} bytes`);
    express.json({ limit: JSON_LIMIT, type: ['application/json', 'application/fhir+json'], strict: true })(req, res, next);
  };

  admin.post('/consents', operate, json, async (req, res) => {
    const outcome = await consent.fhirConsent(req.body, 'admin');
    if (outcome.kind === 'invalid') {
      res
        .status(422)
        .type(FHIR_JSON)
        .send(
          JSON.stringify({
            resourceType: 'OperationOutcome',
            issue: outcome.problems.map((p) => ({ severity: 'error', code: 'invalid', diagnostics: p.message, expression: [p.expression] })),
          }),
        );
      return;
    }
    if (outcome.kind === 'unknown_patient') {
      sendProblem(res, 404, 'Unknown patient', `no patient ${outcome.reference} is known to CareRelay (Consent.patient); send the consent after a message about the patient`);
      return;
    }
    res.status(201).location(`/api/patients/${encodeURIComponent(outcome.consent.patientId)}/consent`).json({ id: outcome.consent.id, patientId: outcome.consent.patientId, suppressed: outcome.suppressed });
  });

  /** The patient of the path, refused with 404 when CareRelay has never heard of them. */
  const patient = async (req: Request, res: Response): Promise<string | undefined> => {
    const id = String(req.params.id);
    if (await consent.knownPatient(id)) return id;
    sendProblem(res, 404, 'Unknown patient', `no patient ${id} is known to CareRelay (no message named them and the consent ledger has nothing for them)`);
    return undefined;
  };

  admin.post('/patients/:id/opt-outs', operate, json, async (req, res) => {
    const body = record(req.body);
    const channel = optionalChannel(body.channel);
    const purposes = purposeList(body.purposes, false);
    const id = await patient(req, res);
    if (id === undefined) return;
    res.status(201).json(await consent.record({ patientId: id, action: 'opt_out', ...(channel ? { channel } : {}), purposes, source: 'admin', method: 'api' }));
  });

  for (const [path, action] of [['grants', 'grant'], ['revocations', 'revoke']] as const) {
    admin.post(`/patients/:id/${path}`, operate, json, async (req, res) => {
      const body = record(req.body);
      const purposes = purposeList(body.purposes ?? (body.purpose === undefined ? undefined : [body.purpose]), true);
      const channel = optionalChannel(body.channel);
      if (channel === undefined) throw new BadBody(`channel is required: one of ${CHANNELS.join(', ')}`);
      if (body.address !== undefined && (typeof body.address !== 'string' || body.address.trim() === '')) throw new BadBody('address must be a phone number or an email address');
      const id = await patient(req, res);
      if (id === undefined) return;
      res.status(201).json(
        await consent.record({ patientId: id, action, purposes, channel, ...(typeof body.address === 'string' ? { address: body.address } : {}), source: 'admin', method: 'api' }),
      );
    });
  }

  admin.put('/patients/:id/no-contact', operate, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    res.status(201).json(await consent.record({ patientId: id, action: 'no_contact', purposes: [], source: 'admin', method: 'api' }));
  });

  admin.delete('/patients/:id/no-contact', operate, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    res.status(201).json(await consent.record({ patientId: id, action: 'contact_allowed', purposes: [], source: 'admin', method: 'api' }));
  });

  admin.get('/patients/:id/consent', phi, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    const [state, records] = await Promise.all([consent.effectiveConsent(id), store.consentRecords({ patientIds: [id] })]);
    res.json({ patientId: id, ...state, events: records.events, consents: records.consents });
  });

  admin.get('/patients/:id/decisions', phi, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    const group = await store.mergedGroup(id);
    const items = (await Promise.all(group.map((p) => store.listDecisions({ patientId: p, limit: 1000 })))).flat().sort((a, b) => b.at.localeCompare(a.at));
    res.json({ patientId: id, patientIds: group, items });
  });

  admin.get('/patients/:id/disclosures', phi, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    const group = await store.mergedGroup(id);
    // HIPAA accounting of disclosures: what was sent, when, for which purpose, through which output.
    res.json({ patientId: id, patientIds: group, items: await store.listDisclosures({ patientIds: group, limit: 1000 }), erasures: await store.listErasures(id) });
  });

  admin.post('/patients/:id/erase', operate, async (req, res) => {
    const id = await patient(req, res);
    if (id === undefined) return;
    res.json({ patientId: id, erasures: await consent.erase(id) });
  });

  router.use('/api', admin);

  // --- inbound SMS (Twilio) -----------------------------------------------------------------
  router.post('/hooks/sms/:output', (req, res, next) => {
    const token = deps.smsWebhooks.get(req.params.output);
    if (token === undefined) return refuseUnread(res, 404, 'Unknown SMS webhook', `no SMS webhook is configured for output "${req.params.output}" (policy.smsWebhooks)`);
    const signature = req.headers[TWILIO_SIGNATURE_HEADER];
    if (typeof signature !== 'string' || signature === '') return refuseUnread(res, 401, 'Unauthorized', 'the X-Twilio-Signature header is required');
    if (!req.is('application/x-www-form-urlencoded')) return refuseUnread(res, 415, 'Unsupported media type', 'Twilio posts application/x-www-form-urlencoded');
    if (declaredOverLimit(req, FORM_LIMIT)) return refuseUnread(res, 413, 'Payload too large', `bodies are limited to ${FORM_LIMIT} bytes`);
    express.text({ type: () => true, limit: FORM_LIMIT })(req, res, async (err?: unknown) => {
      if (err !== undefined) return next(err);
      try {
        const params = new URLSearchParams(typeof req.body === 'string' ? req.body : '');
        const url = `${deps.publicUrl()}${req.originalUrl}`;
        if (!twilioSignatureMatches(token, url, params, signature)) {
          deps.log.warn('sms.refused', { output: req.params.output, reason: 'bad_signature' });
          return sendProblem(res, 403, 'Forbidden', `the X-Twilio-Signature does not match this request to ${url} (check policy.publicUrl and the auth token)`);
        }
        const one = (name: string) => params.get(name) ?? undefined;
        const from = one('From');
        const messageId = one('MessageSid') ?? one('SmsSid');
        if (from === undefined || messageId === undefined) return sendProblem(res, 400, 'Bad request', 'an inbound SMS has From and MessageSid');
        const message = { output: req.params.output, from, body: one('Body') ?? '', messageId, raw: Buffer.from(typeof req.body === 'string' ? req.body : '', 'utf8') };
        const result = await (deps.inboundSms ?? ((m: typeof message) => consent.inboundSms(m)))(message);
        // TwiML: the one confirmation (no patient data in it), or nothing.
        res.status(200).type('text/xml').send(`<?xml version="1.0" encoding="UTF-8"?><Response>${result.reply ? `<Message>${xml(result.reply)}</Message>` : ''}</Response>`);
      } catch (error) {
        next(error);
      }
    });
  });

  // --- unsubscribe links --------------------------------------------------------------------
  router.get('/unsubscribe/:token', async (req, res) => {
    const found = await linkDelivery(req, res);
    if (!found) return;
    const what = describePurpose(found.purpose);
    res
      .status(200)
      .type('html')
      .send(
        page(
          'Unsubscribe',
          `<p>Stop receiving ${what} by email?</p>
<form method="post"><button name="scope" value="purpose">Unsubscribe from ${what}</button></form>
<form method="post"><button name="scope" value="all">Unsubscribe from all emails except those about my care</button></form>`,
        ),
      );
  });

  router.post('/unsubscribe/:token', (req, res, next) => {
    if (declaredOverLimit(req, FORM_LIMIT)) return refuseUnread(res, 413, 'Payload too large', `bodies are limited to ${FORM_LIMIT} bytes`);
    express.urlencoded({ extended: false, limit: FORM_LIMIT })(req, res, async (err?: unknown) => {
      if (err !== undefined) return next(err);
      try {
        const found = await linkDelivery(req, res);
        if (!found) return;
        const body = isRecord(req.body) ? req.body : {};
        // RFC 8058: a mail client's one-click POST carries List-Unsubscribe=One-Click.
        const oneClick = body['List-Unsubscribe'] === 'One-Click';
        const scope = body.scope === 'all' ? 'all' : 'purpose';
        const done = await consent.unsubscribe(found.deliveryId, oneClick ? 'purpose' : scope, oneClick ? 'one-click' : 'link');
        if (!done) return sendProblem(res, 404, 'Not found', 'the message this link belongs to is no longer known');
        res.status(200).type('html').send(page('Unsubscribed', `<p>You will receive no more ${scope === 'all' && !oneClick ? 'emails except those about your care' : `${describePurpose(found.purpose)} by email`}.</p>`));
      } catch (error) {
        next(error);
      }
    });
  });

  /** The delivery a link names, or an answer refusing it (403 forged/expired, 404 unknown). */
  async function linkDelivery(req: Request, res: Response): Promise<{ deliveryId: string; purpose: Purpose } | undefined> {
    const checked = deps.links.verify(String(req.params.token), deps.now());
    if (!checked.ok) {
      deps.log.warn('unsubscribe.refused', { reason: checked.reason });
      res.status(403).type('html').send(page('Link not valid', checked.reason === 'expired' ? '<p>This unsubscribe link has expired. Use the link of a more recent email, or contact us.</p>' : '<p>This unsubscribe link is not valid.</p>'));
      return undefined;
    }
    const stored = await store.getDelivery(checked.deliveryId);
    if (!stored) {
      sendProblem(res, 404, 'Not found', 'the message this link belongs to is no longer known');
      return undefined;
    }
    return { deliveryId: checked.deliveryId, purpose: stored.delivery.purpose };
  }

  router.use((err: unknown, _req: Request, res: Response, next: (e: unknown) => void) => {
    if (err instanceof BadBody) return sendProblem(res, 400, 'Bad request', err.message);
    next(err);
  });
  return router;
}

function record(body: unknown): Record<string, unknown> {
  if (body === undefined) return {};
  if (!isRecord(body)) throw new BadBody('the body must be a JSON object');
  return body;
}

function optionalChannel(value: unknown): Channel | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !(CHANNELS as readonly string[]).includes(value)) throw new BadBody(`channel must be one of ${CHANNELS.join(', ')}; got ${JSON.stringify(value)}`);
  return value as Channel;
}

function purposeList(value: unknown, required: boolean): Purpose[] {
  if (value === undefined) {
    if (required) throw new BadBody(`purposes (or purpose) is required: ${PURPOSES.join(', ')}`);
    return [];
  }
  if (!Array.isArray(value) || value.some((p) => typeof p !== 'string' || !(PURPOSES as readonly string[]).includes(p))) {
    throw new BadBody(`purposes must be a list of ${PURPOSES.join(', ')}; got ${JSON.stringify(value)}`);
  }
  return value as Purpose[];
}

function describePurpose(purpose: Purpose): string {
  switch (purpose) {
    case 'survey':
      return 'surveys';
    case 'marketing':
    case 'service.info':
      return 'news and offers';
    case 'research':
      return 'research invitations';
    case 'fundraising':
      return 'fundraising appeals';
    default:
      return 'these messages';
  }
}

function xml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function page(title: string, body: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>${xml(title)}</title></head><body><h1>${xml(title)}</h1>${body}</body></html>`;
}
