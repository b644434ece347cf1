// Admin API actions on stored messages, for an engineer after review (docs/reliability.md
// "Reprocess and release"), and the audit log that records them.
//
//   POST /api/messages/:id/reprocess   a rejected HL7v2 message, tried again with its stored
//                                      bytes and the input's settings as they are now (after
//                                      a configuration fix)
//   POST /api/messages/:id/release     a quarantined copy (same sender and MSH-10 as an
//                                      original, other bytes) accepted as a message of its own
//   GET  /api/audit?target=&limit=     who did what to which message, and when
//
// Each attempt is a new stored message beside the original (`replaces` / `replacedBy`), with
// its own ACK, triggers and routing; the original is never changed otherwise. Both need the
// `operate` scope; every request that names a message is audited with the token's name,
// refused ones with the reason code they were refused with.
import express, { type Response } from 'express';
import { AdminScope } from '../config/server-schema.ts';
import type { Logger } from '../log.ts';
import { StaleAttemptError } from '../store/common.ts';
import { ATTEMPT_FROM_STATUS, AttemptKind, AuditAction, type Store, type StoredMessage } from '../store/store.ts';
import type { Hl7Ingest, Hl7IngestSettings } from '../workers/ingest.ts';
import { callerOf, knownQuery, messageSummary, queryLimit, queryString, requireScope, type AdminCaller } from './app.ts';
import { sendProblem } from './http.ts';

export interface OperationsDeps {
  store: Store;
  log: Logger;
  hl7Ingest: Hl7Ingest;
  /** Every HL7v2 input by name, with its settings as configured now. */
  hl7Settings: ReadonlyMap<string, Hl7IngestSettings>;
  now: () => Date;
}

/** Why an attempt was refused (the audit outcome `refused:<code>`, and the log reason). */
export const AttemptRefusal = {
  UnknownMessage: 'unknown_message',
  WrongStatus: 'wrong_status',
  AlreadyReplaced: 'already_replaced',
  /** FHIR refusals are answered to the FHIR server, which resends: nothing to reprocess here. */
  NotHl7v2: 'not_hl7v2',
  /** The peer's client certificate is not stored, so the sender check cannot be made again. */
  SenderNotAllowed: 'sender_not_allowed',
  /** Only the first bytes were kept (the raw-bytes quota of refused and quarantined messages, workers/raw-quota.ts). */
  RawIncomplete: 'raw_incomplete',
  InputNotConfigured: 'input_not_configured',
  StoreUnavailable: 'store_unavailable',
} as const;
export type AttemptRefusal = (typeof AttemptRefusal)[keyof typeof AttemptRefusal];

const ACTION: Record<AttemptKind, AuditAction> = { reprocess: AuditAction.Reprocess, release: AuditAction.Release };

/** What an attempt came to: the new message, or why it was refused (audited either way, except `unavailable`). */
export type AttemptOutcome =
  | { kind: 'stored'; message: StoredMessage; replaces: string }
  | { kind: 'refused'; status: 404 | 409; code: AttemptRefusal | StaleAttemptError['reason']; detail: string }
  /** Nothing was committed (the store is unavailable): nothing to audit either. */
  | { kind: 'unavailable' };

/**
 * Reprocesses or releases stored message `id` for `caller` (the admin API and the dashboard
 * share it): checks the message can be tried again, tries it, and audits the request with the
 * caller's name — refused ones with their reason code.
 */
export async function attemptMessage(deps: OperationsDeps, kind: AttemptKind, id: string, caller: AdminCaller): Promise<AttemptOutcome> {
  const { store, log, now } = deps;
  const refuse = async (status: 404 | 409, code: AttemptRefusal | StaleAttemptError['reason'], detail: string): Promise<AttemptOutcome> => {
    await store.appendAudit({ at: now().toISOString(), actor: caller.name, action: ACTION[kind], target: `message/${id}`, outcome: `refused:${code}` });
    log.warn(`message.${kind}_refused`, { messageId: id, actor: caller.name, reason: code });
    return { kind: 'refused', status, code, detail };
  };

  const m = await store.getMessage(id);
  if (m === undefined) return refuse(404, AttemptRefusal.UnknownMessage, `no message with id ${id}`);
  const from = ATTEMPT_FROM_STATUS[kind];
  if (m.status !== from) {
    const hint = kind === AttemptKind.Reprocess ? 'only a rejected message is reprocessed' : 'only a quarantined copy is released';
    return refuse(409, AttemptRefusal.WrongStatus, `message ${id} is ${m.status}: ${hint}`);
  }
  if (m.replacedBy !== undefined) {
    return refuse(409, AttemptRefusal.AlreadyReplaced, `message ${id} was already tried again as message ${m.replacedBy} (/api/messages/${m.replacedBy}); act on that one`);
  }
  if (m.format !== 'hl7v2') {
    return refuse(409, AttemptRefusal.NotHl7v2, `message ${id} is a FHIR request: its FHIR server resends refused notifications, so nothing is tried again here`);
  }
  if (m.reason === AttemptRefusal.SenderNotAllowed) {
    return refuse(409, AttemptRefusal.SenderNotAllowed, `message ${id} was refused for its sender's client certificate, which is not stored: have the sender resend it over an allowed connection`);
  }
  if (m.rawBytes !== undefined) {
    return refuse(409, AttemptRefusal.RawIncomplete, `message ${id} kept only its first ${m.raw.length} of ${m.rawBytes} bytes (the raw-bytes quota of refused and quarantined messages): have the sender resend it`);
  }
  const settings = deps.hl7Settings.get(m.input);
  if (settings === undefined) {
    return refuse(409, AttemptRefusal.InputNotConfigured, `input "${m.input}" that message ${id} came from is not configured any more; add it back to try the message again`);
  }

  let result;
  try {
    result = await deps.hl7Ingest.attempt(m.raw, settings, { kind, messageId: m.id, actor: caller.name });
  } catch (error) {
    // Another attempt got there first, between the checks above and the commit.
    if (error instanceof StaleAttemptError) return refuse(409, error.reason, error.message);
    throw error;
  }
  const created = result.committed && result.messageId !== undefined ? await store.getMessage(result.messageId) : undefined;
  if (created === undefined) return { kind: 'unavailable' };
  log.info(`message.${kind}`, { messageId: created.id, actor: caller.name, status: created.status });
  return { kind: 'stored', message: created, replaces: m.id };
}

export function createOperationsRouter(deps: OperationsDeps): express.Router {
  const { store } = deps;
  const router = express.Router();

  async function attempt(kind: AttemptKind, id: string, res: Response): Promise<void> {
    const outcome = await attemptMessage(deps, kind, id, callerOf(res));
    if (outcome.kind === 'refused') {
      sendProblem(res, outcome.status, outcome.status === 404 ? 'Not found' : 'Conflict', outcome.detail);
      return;
    }
    if (outcome.kind === 'unavailable') {
      res.setHeader('Retry-After', '5');
      sendProblem(res, 503, 'Service unavailable', 'the store could not commit the attempt; try again later');
      return;
    }
    const created = outcome.message;
    res
      .status(201)
      .location(`/api/messages/${created.id}`)
      .json({
        ...messageSummary(created),
        ack: created.ack,
        links: { message: `/api/messages/${created.id}`, replaces: `/api/messages/${outcome.replaces}` },
      });
  }

  router.post('/messages/:id/reprocess', requireScope(AdminScope.Operate), (req: express.Request<{ id: string }>, res) => attempt(AttemptKind.Reprocess, req.params.id, res));
  router.post('/messages/:id/release', requireScope(AdminScope.Operate), (req: express.Request<{ id: string }>, res) => attempt(AttemptKind.Release, req.params.id, res));

  router.get('/audit', async (req, res) => {
    knownQuery(req, ['target', 'limit']);
    res.json({ items: await store.listAudit({ target: queryString(req, 'target'), limit: queryLimit(req) }) });
  });

  return router;
}
