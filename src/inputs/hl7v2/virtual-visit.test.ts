import { describe, expect, it } from 'vitest';
import { parseHl7, parseHl7Batch } from '../../hl7v2/parse.ts';
import { REDACTED_JOIN_URL } from '../../normalized-values.ts';
import { normalizeHl7 } from './normalize.ts';
import { redactVirtualVisit, virtualVisitOf, type VirtualVisitSetting } from './virtual-visit.ts';

const URL = 'https://vendor.example/j/42?pwd=a&b=c';
const WIRE = 'https://vendor.example/j/42?pwd=a\\T\\b=c';

function siu(extra: string[], status = 'Booked', event = 'S12'): string {
  return [
    `MSH|^~\\&|EPIC|GHH|CARERELAY|CR|20270601101500+0200||SIU^${event}|C1|P|2.5.1`,
    `SCH|P1|A1||||||||30|MIN|^^30^20270615143000+0200|||||||||||||${status}`,
    'PID|1||MRN-1^^^GHH^MR||DOE^Jane',
    ...extra,
  ].join('\r');
}

const ZVV: VirtualVisitSetting = { segment: 'ZVV', field: 2, component: 2, channel: 'zoom' };
const NOTE: VirtualVisitSetting = { nte: { prefix: 'Video:' } };

describe('virtualVisitOf', () => {
  it('reads the configured field and component, decoding escapes', () => {
    expect(virtualVisitOf(parseHl7(siu([`ZVV|1|x^${WIRE}`])), ZVV)).toMatchObject({ virtual: { channel: 'zoom', hasJoinInfo: true }, url: URL });
  });

  it('finds the note by its prefix (case ignored) and takes the first word after it', () => {
    const msg = parseHl7(siu(['NTE|1||Wheelchair access', `NTE|2||VIDEO:   ${WIRE} (join early)`]));
    expect(virtualVisitOf(msg, NOTE)).toMatchObject({ virtual: { hasJoinInfo: true }, url: URL });
  });

  it('is a video visit without join information when the value is not an https URL, and nothing when the place is empty', () => {
    expect(virtualVisitOf(parseHl7(siu(['ZVV|1|x^meeting 123'])), ZVV)).toEqual({ virtual: { channel: 'zoom', hasJoinInfo: false }, wire: 'meeting 123', value: 'meeting 123' });
    expect(virtualVisitOf(parseHl7(siu(['ZVV|1|x^http://vendor.example/j/42'])), ZVV)?.url).toBeUndefined();
    expect(virtualVisitOf(parseHl7(siu(['ZVV|1|x^'])), ZVV)).toBeUndefined();
    expect(virtualVisitOf(parseHl7(siu(['ZVV|1|x^""'])), ZVV)).toBeUndefined();
    expect(virtualVisitOf(parseHl7(siu([])), NOTE)).toBeUndefined();
  });
});

describe('HL7 normalizer and the join', () => {
  const ctx = { receivedAt: '2027-06-01T08:00:00Z', timezone: 'UTC' };

  it('puts appointment.virtual in the trigger and the URL only in joins', () => {
    const result = normalizeHl7(parseHl7(siu([`ZVV|1|x^${WIRE}`])), { ...ctx, virtualVisit: ZVV });
    if (result.kind !== 'triggers') throw new Error(result.kind);
    expect(result.triggers[0]!.appointment!.virtual).toEqual({ channel: 'zoom', hasJoinInfo: true });
    expect(JSON.stringify(result.triggers)).not.toContain('vendor.example');
    expect(result.joins).toEqual([{ appointmentId: 'A1', patientId: 'MRN-1', asOf: '2027-06-01T10:15:00+02:00', url: URL }]);
  });

  it('without the setting reads nothing; a message without the place leaves the join alone; a closed appointment clears it', () => {
    const none = normalizeHl7(parseHl7(siu([`ZVV|1|x^${WIRE}`])), ctx);
    expect(none.kind === 'triggers' && (none.triggers[0]!.appointment!.virtual ?? none.joins)).toBeUndefined();
    const silent = normalizeHl7(parseHl7(siu([])), { ...ctx, virtualVisit: ZVV });
    expect(silent.kind === 'triggers' && silent.joins).toBeUndefined();
    const cancelled = normalizeHl7(parseHl7(siu([`ZVV|1|x^${WIRE}`], 'Cancelled', 'S15')), { ...ctx, virtualVisit: ZVV });
    expect(cancelled.kind === 'triggers' && cancelled.joins).toEqual([{ appointmentId: 'A1', patientId: 'MRN-1', asOf: '2027-06-01T10:15:00+02:00' }]);
    const noUrl = normalizeHl7(parseHl7(siu(['ZVV|1|x^see the portal'])), { ...ctx, virtualVisit: ZVV });
    expect(noUrl.kind === 'triggers' && noUrl.joins).toEqual([{ appointmentId: 'A1', patientId: 'MRN-1', asOf: '2027-06-01T10:15:00+02:00' }]);
  });
});

describe('redactVirtualVisit', () => {
  it('replaces the URL in the stored bytes and keeps every other byte (Latin-1, segment ends)', () => {
    const text = siu(['NTE|1||Café au lait', `ZVV|1|x^${WIRE}|${URL}`]).replace('2.5.1', '2.5.1|||||8859/1') + '\r';
    const raw = Buffer.from(text, 'latin1');
    const out = redactVirtualVisit(raw, parseHl7(raw), ZVV);
    expect(out.toString('latin1')).toBe(text.replace(WIRE, REDACTED_JOIN_URL).replace(URL, REDACTED_JOIN_URL));
    expect(out.includes(Buffer.from('vendor.example'))).toBe(false);
    expect(out.includes(Buffer.from('Caf\xe9', 'latin1'))).toBe(true);
  });

  it('rewrites a note keeping its prefix and words, re-escaped', () => {
    const raw = Buffer.from(siu([`NTE|1||Video: ${WIRE} (join early)`]), 'utf8');
    const out = redactVirtualVisit(raw, parseHl7(raw), NOTE).toString('utf8');
    expect(out).toContain(`NTE|1||Video: ${REDACTED_JOIN_URL} (join early)`);
    expect(out).not.toContain('vendor.example');
  });

  it('works on a message taken out of a batch (stored as UTF-8) and gives the bytes back when there is no URL', () => {
    const batch = `BHS|^~\\&|EPIC\r${siu([`ZVV|1|x^${WIRE}`])}\r${siu([])}\rBTS|2\r`;
    const [first] = parseHl7Batch(Buffer.from(batch, 'latin1'));
    const raw = Buffer.from(first!.text, 'utf8');
    expect(redactVirtualVisit(raw, first!, ZVV).toString('utf8')).not.toContain('vendor.example');
    const plain = Buffer.from(siu(['ZVV|1|x^not a link']));
    expect(redactVirtualVisit(plain, parseHl7(plain), ZVV)).toBe(plain);
  });
});
