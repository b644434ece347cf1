// Video visits in the Store (docs/video.md): the sealed join URL of an appointment, written with
// the message that gave it, and the patient links by the hash of their token. Part of the shared
// suite every backend passes (conformance.ts); the sealed bytes here are synthetic.
import { describe, expect, it } from 'vitest';
import { testRecord, testTrigger } from './conformance.ts';
import { pruneAll } from './operations-conformance.ts';
import type { SealedJoin, Store, SubjectState, VideoJoinWrite, VideoLink } from './store.ts';

const sealed = (n: number): SealedJoin => ({ keyId: `k${n}`, sealed: Buffer.from([1, n, 0, 255, n]) });

function state(asOf: string, overrides: Partial<SubjectState> = {}): SubjectState {
  return { kind: 'appointment', id: 'APT-V', patientId: 'MRN-V', status: 'booked', start: '2024-01-02T10:00:00+01:00', asOf, ...overrides };
}

function join(asOf: string, join?: SealedJoin): VideoJoinWrite {
  return { appointmentId: 'APT-V', patientId: 'MRN-V', asOf, ...(join ? { join } : {}) };
}

const link = (overrides: Partial<VideoLink> = {}): VideoLink => ({
  tokenHash: 'a'.repeat(64),
  appointmentId: 'APT-V',
  patientId: 'MRN-V',
  deliveryId: 'video-join@appointment/APT-V#0',
  start: '2024-01-02T10:00:00+01:00',
  zone: 'Europe/Paris',
  language: 'fr',
  mintedAt: '2024-01-02T08:30:00Z',
  ...overrides,
});

export function videoConformance(getStore: () => Store): void {
  describe('video visits', () => {
    it('keeps the sealed join URL committed with its message, byte for byte, and the newest one', async () => {
      const store = getStore();
      await store.commitInbound(testRecord({ controlId: 'V1', subjectStates: [state('2024-01-01T09:00:00Z')], videoJoins: [join('2024-01-01T09:00:00Z', sealed(1))] }));
      expect(await store.getVideoJoin('APT-V')).toEqual({ appointmentId: 'APT-V', patientId: 'MRN-V', asOf: '2024-01-01T09:00:00Z', join: sealed(1) });
      await store.commitInbound(testRecord({ controlId: 'V2', subjectStates: [state('2024-01-01T10:00:00Z')], videoJoins: [join('2024-01-01T10:00:00Z', sealed(2))] }));
      expect((await store.getVideoJoin('APT-V'))?.join).toEqual(sealed(2));
      // A late, older message changes nothing, even after the join was cleared.
      await store.commitInbound(testRecord({ controlId: 'V3', subjectStates: [state('2024-01-01T09:30:00Z')], videoJoins: [join('2024-01-01T09:30:00Z', sealed(3))] }));
      expect((await store.getVideoJoin('APT-V'))?.join).toEqual(sealed(2));
      await store.commitInbound(testRecord({ controlId: 'V4', subjectStates: [state('2024-01-01T11:00:00Z', { status: 'cancelled' })], videoJoins: [join('2024-01-01T11:00:00Z')] }));
      expect(await store.getVideoJoin('APT-V')).toBeUndefined();
      await store.commitInbound(testRecord({ controlId: 'V5', subjectStates: [state('2024-01-01T10:30:00Z')], videoJoins: [join('2024-01-01T10:30:00Z', sealed(5))] }));
      expect(await store.getVideoJoin('APT-V')).toBeUndefined();
      expect(await store.getVideoJoin('NOT-KNOWN')).toBeUndefined();
    });

    it('writes nothing for a duplicate or a quarantined copy, and rejects a bad instant', async () => {
      const store = getStore();
      const first = testRecord({ controlId: 'V1', subjectStates: [state('2024-01-01T09:00:00Z')], videoJoins: [join('2024-01-01T09:00:00Z', sealed(1))] });
      await store.commitInbound(first);
      expect((await store.commitInbound({ ...first, videoJoins: [join('2024-01-01T12:00:00Z', sealed(9))] })).outcome).toBe('duplicate');
      const conflict = testRecord({ controlId: 'V1', raw: Buffer.from('other bytes'), subjectStates: [state('2024-01-01T12:00:00Z')], videoJoins: [join('2024-01-01T12:00:00Z', sealed(8))] });
      expect((await store.commitInbound(conflict)).outcome).toBe('conflict');
      expect((await store.getVideoJoin('APT-V'))?.join).toEqual(sealed(1));
      await expect(store.commitInbound(testRecord({ controlId: 'V6', videoJoins: [join('yesterday', sealed(6))] }))).rejects.toThrow();
    });

    it('keeps links by token hash, once, and refuses what is not a SHA-256 or an instant', async () => {
      const store = getStore();
      await store.putVideoLink(link());
      await store.putVideoLink(link({ deliveryId: 'other', start: '2024-02-02T10:00:00+01:00' }));
      expect(await store.getVideoLink('a'.repeat(64))).toEqual(link());
      const bare = link({ tokenHash: 'b'.repeat(64) });
      delete bare.zone;
      delete bare.language;
      await store.putVideoLink(bare);
      expect(await store.getVideoLink('b'.repeat(64))).toEqual(bare);
      expect(await store.getVideoLink('c'.repeat(64))).toBeUndefined();
      await expect(store.putVideoLink(link({ tokenHash: 'not-a-hash' }))).rejects.toThrow(RangeError);
      await expect(store.putVideoLink(link({ tokenHash: 'd'.repeat(64), mintedAt: 'now' }))).rejects.toThrow();
    });

    it("erasure drops the patient's join URLs and links", async () => {
      const store = getStore();
      const trigger = testTrigger({ id: 'trg-v', patient: { ...testTrigger({ id: 'x' }).patient, id: 'MRN-V' }, appointment: { id: 'APT-V', status: 'booked' } });
      await store.commitInbound(testRecord({ controlId: 'V1', triggers: [trigger], subjectStates: [state('2024-01-01T09:00:00Z')], videoJoins: [join('2024-01-01T09:00:00Z', sealed(1))] }));
      await store.putVideoLink(link());
      await store.putVideoLink(link({ tokenHash: 'e'.repeat(64), patientId: 'SOMEONE-ELSE', appointmentId: 'APT-W' }));
      await store.erasePatient('MRN-V', '2024-01-03T00:00:00Z');
      expect(await store.getVideoJoin('APT-V')).toBeUndefined();
      expect(await store.getVideoLink('a'.repeat(64))).toBeUndefined();
      expect(await store.getVideoLink('e'.repeat(64))).toBeDefined();
    });

    it('retention: joins and links of visits that started before the cutoff go; those of visits still to come stay', async () => {
      const store = getStore();
      const other = (id: string, start: string) => ({ kind: 'appointment' as const, id, patientId: 'MRN-V', status: 'booked', start, asOf: '2024-01-01T09:00:00Z' });
      const joinOf = (appointmentId: string, n: number): VideoJoinWrite => ({ appointmentId, patientId: 'MRN-V', asOf: '2024-01-01T09:00:00Z', join: sealed(n) });
      // APT-V started on 2 January; APT-LATER starts after the cutoff though its join is old.
      await store.commitInbound(
        testRecord({ controlId: 'V1', subjectStates: [state('2024-01-01T09:00:00Z'), other('APT-LATER', '2024-04-01T10:00:00Z')], videoJoins: [join('2024-01-01T09:00:00Z', sealed(1)), joinOf('APT-LATER', 2)] }),
      );
      await store.putVideoLink(link());
      await store.putVideoLink(link({ tokenHash: 'f'.repeat(64), appointmentId: 'APT-LATER', start: '2024-04-01T10:00:00Z' }));
      const cutoff = { before: '2024-02-01T00:00:00Z', limit: 1 };
      expect(await pruneAll(store, 'videoJoins', { ...cutoff, dryRun: true })).toBe(1);
      expect(await pruneAll(store, 'videoLinks', { ...cutoff, dryRun: true })).toBe(1);
      expect(await store.getVideoJoin('APT-V')).toBeDefined();
      expect(await pruneAll(store, 'videoJoins', cutoff)).toBe(1);
      expect(await pruneAll(store, 'videoLinks', cutoff)).toBe(1);
      expect(await store.getVideoJoin('APT-V')).toBeUndefined();
      expect(await store.getVideoLink('a'.repeat(64))).toBeUndefined();
      expect((await store.getVideoJoin('APT-LATER'))?.join).toEqual(sealed(2));
      expect(await store.getVideoLink('f'.repeat(64))).toBeDefined();
      // Once that visit is past the cutoff too, they go.
      expect(await pruneAll(store, 'videoJoins', { before: '2024-05-01T00:00:00Z' })).toBe(1);
      expect(await pruneAll(store, 'videoLinks', { before: '2024-05-01T00:00:00Z' })).toBe(1);
    });
  });
}
