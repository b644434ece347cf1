// Outcome reports (docs/operations.md "Outcomes"), behind the admin token with the `read` scope:
// aggregates only — rules, arms, periods, counts and rates — never a patient or appointment id.
//
//   GET /api/outcomes?rule=&variant=&from=&to=&period=day|week|month      JSON (exact counts; with a
//                                                                         waitlist, its section)
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
  /** The waitlist is configured: the JSON report has a `waitlist` section (docs/waitlist.md "Outcomes"). */
  waitlist?: boolean;
}

/**
 * The waitlist's figures over the report's days (UTC): slots freed and offers made in the range,
 * what became of the offers, and the days gained by the patients booked sooner. Counts only.
 */
async function waitlistSection(store: Store, query: OutcomeReportQuery): Promise<Awaited<ReturnType<Store['waitlistFigures']>>> {
  const from = query.from !== undefined ? `${query.from}T00:00:00Z` : '1970-01-01T00:00:00Z';
  const to = query.to !== undefined ? new Date(Date.parse(`${query.to}T00:00:00Z`) + 86_400_000).toISOString() : '9999-12-31T00:00:00Z';
  return store.waitlistFigures(from, to);
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
    const report = await readOutcomes(deps.store, deps.linker, query);
    res.json(deps.waitlist ? { ...report, waitlist: await waitlistSection(deps.store, query) } : report);
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
