import { describe, expect, it } from 'vitest';
import { parseFhirJson } from './json.ts';

describe('parseFhirJson', () => {
  it('keeps ordinary documents intact', () => {
    expect(parseFhirJson('{"resourceType":"Patient","name":[{"given":["A"]}]}')).toEqual({ resourceType: 'Patient', name: [{ given: ['A'] }] });
  });

  it('refuses prototype keys, even escaped', () => {
    expect(() => parseFhirJson('{"__proto__":{"x":1}}')).toThrow(/"__proto__" is not allowed/);
    expect(() => parseFhirJson('{"a":{"\\u0063onstructor":{}}}')).toThrow(/"constructor" is not allowed/);
  });
});
