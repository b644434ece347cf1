// The waitlist's retention in the Store conformance suite (store.ts RetentionKind `waitlist`):
// every backend runs it from storeConformanceSuite. All data here is synthetic.
import { describe, expect, it } from 'vitest';
import { pruneAll } from './operations-conformance.ts';
import type { Store, WaitlistOffer, WaitlistSlot } from './store.ts';

function slot(id: string, start: string, openedAt: string): WaitlistSlot {
  return { id, state: 'open', triggerId: 'trg-1', patientId: 'MRN-9', start, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' }, openedAt, waves: 1 };
}

function offer(id: string, slotId: string, offeredAt: string): WaitlistOffer {
  return { id, slotId, patientId: 'MRN-1', wave: 1, state: 'offered', offeredAt, expiresAt: offeredAt };
}

export function waitlistRetentionConformance(getStore: () => Store): void {
  describe('waitlist retention', () => {
    it('slots that started before the cutoff go with their offers, then index entries that did; later ones stay, in batches and dry runs alike', async () => {
      const store = getStore();
      // Opened before the cutoff: two started before it (one booked), one starts after it.
      await store.openWaitlistSlot(slot('A@1', '2025-06-02T09:00:00Z', '2025-06-01T09:00:00Z'));
      await store.openWaitlistSlot(slot('B@1', '2025-06-03T09:00:00Z', '2025-06-01T10:00:00Z'));
      await store.openWaitlistSlot(slot('C@1', '2025-07-02T09:00:00Z', '2025-06-30T09:00:00Z'));
      await store.addWaitlistOffers([offer('o-a1', 'A@1', '2025-06-01T09:00:00Z'), offer('o-a2', 'A@1', '2025-06-01T09:00:00Z'), offer('o-c1', 'C@1', '2025-06-30T09:00:00Z')]);
      await store.setWaitlistSlot('B@1', 'booked', { bookedAs: 'NEW-1' });
      const later = (id: string, start: string) => ({ id, patientId: 'MRN-1', service: 'CHK', practitioner: 'DR-22', start, triggerId: 'trg-1' });
      for (const [id, start] of [['L-1', '2025-06-10T09:00:00Z'], ['L-2', '2025-08-01T09:00:00Z'], ['L-3', '2025-06-20T09:00:00Z'], ['L-4', '2025-09-01T09:00:00Z']] as const) {
        await store.noteWaitlistAppointment(later(id, start));
      }
      const cutoff = { before: '2025-07-01T00:00:00Z', limit: 1 };
      // Two slots, two index entries.
      expect(await pruneAll(store, 'waitlist', { ...cutoff, dryRun: true })).toBe(4);
      expect(await store.getWaitlistSlot('A@1')).toBeDefined();
      expect(await pruneAll(store, 'waitlist', cutoff)).toBe(4);
      expect(await store.getWaitlistSlot('A@1')).toBeUndefined();
      expect(await store.getWaitlistSlot('B@1')).toBeUndefined();
      expect(await store.listWaitlistOffers('A@1')).toEqual([]);
      expect((await store.getWaitlistSlot('C@1'))?.state).toBe('open');
      expect((await store.listWaitlistOffers('C@1')).map((o) => o.id)).toEqual(['o-c1']);
      expect(await store.getWaitlistOffer('o-a1')).toBeUndefined();
      const left = await store.laterWaitlistAppointments({ services: ['CHK'], practitioners: ['DR-22'], after: '2025-01-01T00:00:00Z', limit: 10 });
      expect(left.map((a) => a.id).sort()).toEqual(['L-2', 'L-4']);
      expect(await pruneAll(store, 'waitlist', { before: '2025-07-01T00:00:00Z' })).toBe(0);
    });
  });
}
