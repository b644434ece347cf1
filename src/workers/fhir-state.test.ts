// The owed-work bookkeeping of a subscription's position (pure).
import { describe, expect, it } from 'vitest';
import { oweEvent, oweGap, oweSearch, owesWork, settleEvent, settleNumbers, tidyOwed, type SubscriptionState } from './fhir-state.ts';

describe('owed work', () => {
  it('a gap already covered is not owed twice', () => {
    const state: SubscriptionState = {};
    oweGap(state, { from: 3 });
    oweGap(state, { from: 5, to: 7 });
    oweGap(state, { from: 2, to: 4 });
    expect(state.owed?.gaps).toEqual([{ from: 3 }, { from: 2, to: 4 }]);
  });

  it('numbers that arrive late leave the gaps: bounded ones split, an open one ends before them', () => {
    const state: SubscriptionState = {};
    oweGap(state, { from: 2, to: 6, after: 'T' });
    settleNumbers(state, [4, 2]);
    expect(state.owed?.gaps).toEqual([{ from: 3, to: 3, after: 'T' }, { from: 5, to: 6, after: 'T' }]);
    settleNumbers(state, [3, 5, 6]);
    expect(state.owed?.gaps).toEqual([]);
    oweGap(state, { from: 10 });
    settleNumbers(state, [13]);
    expect(state.owed?.gaps).toEqual([{ from: 10, to: 12 }]);
    settleNumbers(state, [10]);
    expect(state.owed?.gaps).toEqual([{ from: 11, to: 12 }]);
  });

  it('owed searches merge to the earlier start; one from the types\' cursors has none', () => {
    const state: SubscriptionState = {};
    oweSearch(state, undefined);
    expect(state.owed?.search).toEqual({});
    oweSearch(state, '2026-03-01T10:00:00Z');
    oweSearch(state, '2026-03-01T11:00:00+02:00');
    expect(state.owed?.search).toEqual({ since: '2026-03-01T11:00:00+02:00' });
  });

  it('tidyOwed drops what is done, and the recovery state with the last of it', () => {
    const state: SubscriptionState = { recovery: { attempts: 2, nextAt: 'x', lastError: 'fhir_unavailable', failingSince: 'y' } };
    oweEvent(state, 'sub#1');
    oweEvent(state, 'sub#1');
    expect(state.owed?.events).toEqual(['sub#1']);
    tidyOwed(state);
    expect(owesWork(state)).toBe(true);
    settleEvent(state, 'sub#1');
    tidyOwed(state);
    expect(state).toEqual({});
  });
});
