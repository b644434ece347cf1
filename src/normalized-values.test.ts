import { describe, expect, it } from 'vitest';
import { languageCode, phoneValue, withoutControlCharacters } from './normalized-values.ts';

describe('values both inputs normalize the same way', () => {
  it('phones keep the digits and a leading "+", whatever the formatting or scheme', () => {
    expect(phoneValue('+33 6 12.34-56 (78)')).toBe('+33612345678');
    expect(phoneValue('tel:+1-608-271-9000')).toBe('+16082719000');
    expect(phoneValue('(+44) 20 7946 0000')).toBe('+442079460000');
    expect(phoneValue('555 0100 ext +2')).toBe('55501002');
    expect(phoneValue('+')).toBe('');
    expect(phoneValue('n/a')).toBe('');
  });

  it('languages become lower-case ISO 639-1', () => {
    expect(languageCode('FRE')).toBe('fr');
    expect(languageCode(' en-US ')).toBe('en');
    expect(languageCode('English')).toBeUndefined();
  });

  it('ESP, a vendor code for Spanish in PID-15, is Spanish', () => {
    expect(languageCode('ESP')).toBe('es');
    expect(languageCode('SPA')).toBe('es');
  });

  it('strings carry no control characters: each run becomes a space, in place through objects and arrays', () => {
    const value = { name: { family: 'DOE\r\nBcc: x', given: ['Te\u0000st', 'ok'] }, n: 3, ids: [{ value: 'A\u2028B\u0085' }], none: null };
    expect(withoutControlCharacters(value)).toBe(value);
    expect(value).toEqual({ name: { family: 'DOE Bcc: x', given: ['Te st', 'ok'] }, n: 3, ids: [{ value: 'A B' }], none: null });
    expect(withoutControlCharacters('\tpadded\n')).toBe('padded');
    expect(withoutControlCharacters('Zoë Müller')).toBe('Zoë Müller');
  });
});
