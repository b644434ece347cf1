// Staff tasks over HTTP (workers/replies.ts opens them), mounted by app.ts under /api behind the
// admin tokens:
//
//   read      GET  /api/tasks?status=open|done&limit=&before=   newest first; ids, kinds and codes
//   operate   POST /api/tasks/:id/done                           closes it (who: the token's name)
//
// A task names what to look at (the patient, the appointment, the reminder, the stored SMS by
// its message id) but holds no text the patient wrote: that is the message's (GET
// /api/messages/:id, phi scope).
import express, { type Request, type Response } from 'express';
import { AdminScope } from '../config/server-schema.ts';
import type { Store, StaffTaskStatus } from '../store/store.ts';
import { sendProblem } from './http.ts';

export interface TaskRoutesDeps {
  store: Pick<Store, 'listStaffTasks' | 'finishStaffTask'>;
  requireScope: (scope: AdminScope) => express.RequestHandler;
  /** The authenticated caller's name (app.ts callerOf). */
  callerName: (res: Response) => string;
  now: () => number;
}

const STATUSES: readonly StaffTaskStatus[] = ['open', 'done'];

export function createTaskRouter(deps: TaskRoutesDeps): express.Router {
  const router = express.Router();

  router.get('/tasks', async (req: Request, res: Response) => {
    const unknown = Object.keys(req.query).filter((k) => !['status', 'limit', 'before'].includes(k));
    if (unknown.length > 0) return sendProblem(res, 400, 'Bad query', `unknown filter "${unknown[0]}"; this endpoint takes status, limit, before`);
    const status = typeof req.query.status === 'string' ? req.query.status : undefined;
    if (status !== undefined && !(STATUSES as readonly string[]).includes(status)) return sendProblem(res, 400, 'Bad query', 'status must be open or done');
    const limit = typeof req.query.limit === 'string' ? Number(req.query.limit) : undefined;
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 1 || limit > 1000)) return sendProblem(res, 400, 'Bad query', 'limit must be an integer between 1 and 1000');
    const before = typeof req.query.before === 'string' && req.query.before !== '' ? req.query.before : undefined;
    const items = await deps.store.listStaffTasks({ ...(status ? { status: status as StaffTaskStatus } : {}), ...(limit ? { limit } : {}), ...(before ? { before } : {}) });
    res.json({ items, ...(items.length === (limit ?? 100) ? { next: items[items.length - 1]!.id } : {}) });
  });

  router.post('/tasks/:id/done', deps.requireScope(AdminScope.Operate), async (req: Request, res: Response) => {
    const task = await deps.store.finishStaffTask(String(req.params.id), { at: new Date(deps.now()).toISOString(), by: deps.callerName(res) });
    if (task === undefined) return sendProblem(res, 404, 'Not found', `no staff task ${String(req.params.id)}`);
    res.json(task);
  });

  return router;
}
