// The short variant of the multi-process chaos run (test/soak/chaos.ts, `npm run chaos` for
// the full 10,000 messages): 2 ingest + 2 worker processes on PostgreSQL + Redis, 200 bookings
// over MLLP from senders resending what was not acknowledged, 4 SIGKILLs of random processes,
// one Redis and one PostgreSQL restart; every invariant of the full run is checked the same.
import { expect, it } from 'vitest';
import { describeWithRedis } from './helpers/redis.ts';
import { postgresSkipped } from './helpers/postgres.ts';
import { formatFigures, runChaos } from './soak/chaos.ts';

describeWithRedis.skipIf(postgresSkipped())('multi-process chaos (short)', () => {
  it('keeps every AA once and ends every delivery, repeats only under the same key, across kills and restarts', { timeout: 240_000 }, async () => {
    const figures = await runChaos({ messages: 200, kills: 4, seed: 7, senders: 4 });
    console.info(formatFigures(figures));
    expect(figures.failures).toEqual([]);
    expect(figures.kills.ingest + figures.kills.worker).toBeGreaterThanOrEqual(4);
    expect(figures).toMatchObject({ redisRestarts: 1, postgresRestarts: 1, aas: 200, stored: 200, duplicatesOtherKey: 0 });
  });
});
