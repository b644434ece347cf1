// Outcome reports (docs/operations.md "Outcomes"), behind the admin token with the `read` scope:
// aggregates only — rules, arms, periods, counts and rates — never a patient or appointment id.
//
//   GET /api/outcomes?rule=&variant=&from=&to=&period=day|week|month      JSON (exact counts)
//   GET /api/outcomes.csv?…the same…                                      de-identified CSV
//                                                                         (small cells withheld)
import express, { type Request } from 'express';
import { OUTCOME_PERIODS, outcomeCsv, readOutcomes, type OutcomeLinker, type OutcomePeriod, type OutcomeReportQuery } from '../workers/outcomes.ts';
import type { Store } from '../store/store.ts';
import { knownQuery, queryString } from './app.ts';
import { sendProblem } from './http.ts';

export interface OutcomesRoutesDeps {
  store: Store;
  /** Links what is due before a report is read; absent: the report shows what is linked. */
  linker?: OutcomeLinker;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

function queryOf(req: Request): OutcomeReportQuery | string {
  knownQuery(req, ['rule', 'variant', 'from', 'to', 'period']);
  const query: OutcomeReportQuery = {};
  for (const name of ['rule', 'variant'] as const) {
    const value = queryString(req, name);
    if (value !== undefined) query[name] = value;
  }
  for (const name of ['from', 'to'] as const) {
    const value = queryString(req, name);
    if (value === undefined) continue;
    if (!DAY.test(value) || Number.isNaN(Date.parse(`${value}T00:00:00Z`))) return `${name} must be a day, YYYY-MM-DD (the appointment's day in its site's zone), e.g. 2026-01-31`;
    query[name] = value;
  }
  if (query.from !== undefined && query.to !== undefined && query.from > query.to) return `from (${query.from}) is after to (${query.to})`;
  const period = queryString(req, 'period');
  if (period !== undefined) {
    if (!(OUTCOME_PERIODS as readonly string[]).includes(period)) return `period must be one of ${OUTCOME_PERIODS.join(', ')} (or left out for the whole range)`;
    query.period = period as OutcomePeriod;
  }
  return query;
}

export function createOutcomesRouter(deps: OutcomesRoutesDeps): express.Router {
  const router = express.Router();

  router.get('/outcomes', async (req, res) => {
    const query = queryOf(req);
    if (typeof query === 'string') {
      sendProblem(res, 400, 'Bad query', query);
      return;
    }
    res.json(await readOutcomes(deps.store, deps.linker, query));
  });

  router.get('/outcomes.csv', async (req, res) => {
    const query = queryOf(req);
    if (typeof query === 'string') {
      sendProblem(res, 400, 'Bad query', query);
      return;
    }
    const csv = outcomeCsv(await readOutcomes(deps.store, deps.linker, query));
    res.setHeader('Content-Disposition', 'attachment; filename="carerelay-outcomes.csv"');
    res.type('text/csv; charset=utf-8; header=present').send(csv);
  });

  return router;
}
