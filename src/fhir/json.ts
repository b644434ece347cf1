// Reading FHIR JSON from bytes CareRelay did not write (a POSTed notification, a file).
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * JSON.parse that refuses prototype keys anywhere (docs/reliability.md "Security defaults"): a
 * `__proto__` or `constructor` member, even written with escapes, is an error, not data.
 */
export function parseFhirJson(text: string): unknown {
  return JSON.parse(text, function (key, value: unknown) {
    if (FORBIDDEN_KEYS.has(key)) throw new SyntaxError(`member "${key}" is not allowed in FHIR JSON`);
    return value;
  });
}
