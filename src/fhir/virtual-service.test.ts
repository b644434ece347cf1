import { describe, expect, it } from 'vitest';
import { REDACTED_JOIN_URL } from '../normalized-values.ts';
import { EXT_APPOINTMENT_VIRTUAL_SERVICE, redactJoinUrls, redactJoinUrlsIn, virtualServiceOf } from './virtual-service.ts';

const URL_A = 'https://vendor.example/j/123?pwd=abc&x=1';

describe('virtualServiceOf', () => {
  it('says nothing for an in-person appointment', () => {
    expect(virtualServiceOf({ resourceType: 'Appointment', status: 'booked' })).toBeUndefined();
  });

  it('reads every R5 address[x] form and the channel', () => {
    expect(virtualServiceOf({ virtualService: [{ channelType: { code: 'zoom' }, addressUrl: URL_A }] })).toEqual({ virtual: { channel: 'zoom', hasJoinInfo: true }, url: URL_A });
    expect(virtualServiceOf({ virtualService: [{ addressString: ` ${URL_A} ` }] })?.url).toBe(URL_A);
    expect(virtualServiceOf({ virtualService: [{ addressContactPoint: { system: 'url', value: URL_A } }] })?.url).toBe(URL_A);
    expect(virtualServiceOf({ virtualService: [{ addressExtendedContactDetail: { telecom: [{ system: 'phone', value: '+331' }, { system: 'url', value: URL_A }] } }] })?.url).toBe(URL_A);
  });

  it('is a video visit without join information when the address is not an https URL', () => {
    for (const detail of [{ channelType: { code: 'whatsapp' }, addressString: '+33612345678' }, { addressUrl: 'http://vendor.example/j/1' }, { addressUrl: 'https://' }, { addressUrl: 'https://a b.example/' }, { addressContactPoint: { system: 'phone', value: URL_A } }]) {
      expect(virtualServiceOf({ virtualService: [detail] })).toMatchObject({ virtual: { hasJoinInfo: false } });
      expect(virtualServiceOf({ virtualService: [detail] })?.url).toBeUndefined();
    }
    expect(virtualServiceOf({ virtualService: [{ addressUrl: `https://vendor.example/${'x'.repeat(2100)}` }] })?.url).toBeUndefined();
  });

  it('takes the first source with a join URL: a later virtualService entry, then the R4 extension', () => {
    const ext = { url: EXT_APPOINTMENT_VIRTUAL_SERVICE, extension: [{ url: 'channelType', valueCoding: { code: 'ms-teams' } }, { url: 'address[x]', valueUrl: 'https://teams.example/1' }] };
    expect(virtualServiceOf({ virtualService: [{ channelType: { code: 'zoom' } }, { addressUrl: URL_A }], extension: [ext] })?.url).toBe(URL_A);
    expect(virtualServiceOf({ virtualService: [{ channelType: { code: 'zoom' } }], extension: [ext] })).toEqual({ virtual: { channel: 'ms-teams', hasJoinInfo: true }, url: 'https://teams.example/1' });
    // None has one: the first says it is a video visit.
    expect(virtualServiceOf({ virtualService: [{ channelType: { code: 'zoom' } }] })).toEqual({ virtual: { channel: 'zoom', hasJoinInfo: false } });
  });

  it('reads both published layouts of the cross-version extension, and senders that name the slice after the R5 type', () => {
    const snapshot = { url: EXT_APPOINTMENT_VIRTUAL_SERVICE, extension: [{ url: 'address', valueUrl: URL_A }] };
    const stu = {
      url: EXT_APPOINTMENT_VIRTUAL_SERVICE,
      extension: [
        { url: '_datatype', valueString: 'VirtualServiceDetail' },
        { url: 'address', extension: [{ url: '_datatype', valueString: 'ExtendedContactDetail' }, { url: 'telecom', valueContactPoint: { system: 'url', value: URL_A } }] },
      ],
    };
    const named = { url: EXT_APPOINTMENT_VIRTUAL_SERVICE, extension: [{ url: 'addressContactPoint', valueContactPoint: { system: 'url', value: URL_A } }] };
    for (const ext of [snapshot, stu, named]) expect(virtualServiceOf({ extension: [ext] })?.url).toBe(URL_A);
    // Another extension's address is not a join.
    expect(virtualServiceOf({ extension: [{ url: 'http://example.org/other', extension: [{ url: 'address', valueUrl: URL_A }] }] })).toBeUndefined();
  });

  it('finds the virtual meeting room among contained resources by its type, not its position', () => {
    const room = (type: object) => ({ resourceType: 'HealthcareService', id: 'r', type: [type], telecom: [{ system: 'url', value: URL_A }] });
    const other = { resourceType: 'HealthcareService', id: 'o', type: [{ text: 'Front desk' }], telecom: [{ system: 'url', value: 'https://clinic.example/' }] };
    expect(virtualServiceOf({ contained: [other, room({ text: 'Virtual Meeting Room' })] })).toEqual({ virtual: { hasJoinInfo: true }, url: URL_A });
    expect(virtualServiceOf({ contained: [room({ coding: [{ code: 'x', display: 'virtual-meeting  room' }] }), other] })?.url).toBe(URL_A);
    expect(virtualServiceOf({ contained: [other] })).toBeUndefined();
    expect(virtualServiceOf({ contained: [{ ...room({ text: 'Virtual Meeting Room' }), resourceType: 'Location' }] })).toBeUndefined();
  });
});

describe('redactJoinUrls', () => {
  it('replaces the URL wherever a JSON string holds it, escaped or not, and leaves every other byte', () => {
    const text = `{"a":"${URL_A}","b":"https:\\/\\/vendor.example\\/j\\/123?pwd=abc\\u0026x=1","c":"see ${URL_A} now","d":"https://vendor.example/j/1234"}`;
    const out = redactJoinUrls(text, [URL_A]);
    expect(JSON.parse(out)).toEqual({ a: REDACTED_JOIN_URL, b: REDACTED_JOIN_URL, c: `see ${REDACTED_JOIN_URL} now`, d: 'https://vendor.example/j/1234' });
    expect(out.endsWith(',"d":"https://vendor.example/j/1234"}')).toBe(true);
    expect(out).not.toContain('pwd=abc');
  });

  it('gives the same text (and the same buffer) back when there is nothing to redact', () => {
    const text = '{"resourceType":"Appointment","note":"in \\"quotes\\""}';
    expect(redactJoinUrls(text, [URL_A])).toBe(text);
    expect(redactJoinUrls(text, [])).toBe(text);
    const raw = Buffer.from(text);
    expect(redactJoinUrlsIn(raw, [URL_A])).toBe(raw);
    expect(redactJoinUrlsIn(Buffer.from(`\uFEFF{"u":"${URL_A}","é":"ü"}`), [URL_A]).toString('utf8')).toBe(`\uFEFF{"u":"${REDACTED_JOIN_URL}","é":"ü"}`);
  });
});
