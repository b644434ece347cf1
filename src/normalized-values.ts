// Values every input normalizes the same way (docs/trigger.md), so the HL7v2 and FHIR paths give
// the same trigger for the same patient: language codes (PID-15, Patient.communication) and
// phone numbers (XTN, ContactPoint). Imports nothing.

/** ISO 639-2 (bibliographic and terminology codes) → ISO 639-1. */
const ISO_639_2_TO_1: Record<string, string> = {
  afr: 'af', alb: 'sq', amh: 'am', ara: 'ar', arm: 'hy', aze: 'az', baq: 'eu', bel: 'be',
  ben: 'bn', bos: 'bs', bul: 'bg', bur: 'my', cat: 'ca', ces: 'cs', chi: 'zh', cym: 'cy',
  cze: 'cs', dan: 'da', deu: 'de', dut: 'nl', ell: 'el', eng: 'en', est: 'et', eus: 'eu',
  fas: 'fa', fin: 'fi', fra: 'fr', fre: 'fr', geo: 'ka', ger: 'de', gle: 'ga', glg: 'gl',
  gre: 'el', guj: 'gu', hat: 'ht', hau: 'ha', heb: 'he', hin: 'hi', hrv: 'hr', hun: 'hu',
  hye: 'hy', ibo: 'ig', ice: 'is', ind: 'id', isl: 'is', ita: 'it', jpn: 'ja', kan: 'kn',
  kat: 'ka', kaz: 'kk', khm: 'km', kor: 'ko', kur: 'ku', lao: 'lo', lav: 'lv', lit: 'lt',
  mac: 'mk', mal: 'ml', mar: 'mr', may: 'ms', mkd: 'mk', mon: 'mn', msa: 'ms', mya: 'my',
  nep: 'ne', nld: 'nl', nno: 'nn', nob: 'nb', nor: 'no', pan: 'pa', per: 'fa', pol: 'pl',
  por: 'pt', pus: 'ps', ron: 'ro', rum: 'ro', rus: 'ru', sin: 'si', slk: 'sk', slo: 'sk',
  slv: 'sl', som: 'so', spa: 'es', sqi: 'sq', srp: 'sr', swa: 'sw', swe: 'sv', tam: 'ta',
  tel: 'te', tgl: 'tl', tha: 'th', tir: 'ti', tur: 'tr', ukr: 'uk', urd: 'ur', uzb: 'uz',
  vie: 'vi', wel: 'cy', xho: 'xh', yid: 'yi', yor: 'yo', zho: 'zh', zul: 'zu',
};

/**
 * Three-letter codes HL7 feeds send for PID-15 that are not ISO 639-2 at all: table 0296 is
 * user-defined, and some EHRs fill it with abbreviations of the language's own name. Only
 * codes that name no other ISO 639-2 language belong here.
 */
const VENDOR_LANGUAGE_CODES: Record<string, string> = {
  esp: 'es', // "Español": Spanish (ISO 639-2 spa)
};

/**
 * A language code → lower-case ISO 639-1 ("fr", "en"), as docs/trigger.md's patient.language
 * wants it: the region is dropped ("en-US", "pt_BR" → "en", "pt"), three-letter codes are
 * mapped (ENG → en, FRA/FRE → fr, and the vendor code ESP → es). A three-letter code with
 * no two-letter equivalent stays as sent, lower-cased. Anything else ("English") → undefined.
 */
export function languageCode(raw: string): string | undefined {
  const code = raw.trim();
  let end = code.length;
  for (let i = 0; i < code.length; i++) {
    const c = code.charCodeAt(i);
    if (c === 45 || c === 95) {
      end = i;
      break;
    }
  }
  const primary = code.slice(0, end).toLowerCase();
  if (primary.length < 2 || primary.length > 3) return undefined;
  for (let i = 0; i < primary.length; i++) {
    const c = primary.charCodeAt(i);
    if (c < 97 || c > 122) return undefined;
  }
  return primary.length === 3 ? (ISO_639_2_TO_1[primary] ?? VENDOR_LANGUAGE_CODES[primary] ?? primary) : primary;
}

/**
 * A phone number as triggers carry it (docs/trigger.md "Phones"): the digits and a leading '+';
 * spaces, dots, dashes, parentheses and a `tel:` scheme dropped. '' when no digit is left.
 */
export function phoneValue(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c >= 48 && c <= 57) out += raw.charAt(i);
    else if (c === 43 && out === '') out = '+';
  }
  return out === '+' ? '' : out;
}

/** C0 and C1 control characters and the Unicode line and paragraph separators, in runs. */
const CONTROL_RUNS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g;
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/**
 * Every string of a normalized result (triggers, subject states) without control characters:
 * each run becomes one space, and the value is trimmed. An HL7 `\X0D0A\` escape or a FHIR
 * string with a newline must not put CR/LF into a name that a template writes into an SMS
 * or an e-mail header (docs/trigger.md). Changes strings in place, in plain objects and
 * arrays, and returns the same value; a string alone is returned cleaned.
 */
export function withoutControlCharacters<T>(value: T): T {
  if (typeof value === 'string') return (CONTROL.test(value) ? value.replace(CONTROL_RUNS, ' ').trim() : value) as T;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = withoutControlCharacters(value[i]);
  } else if (typeof value === 'object' && value !== null) {
    const record = value as Record<string, unknown>;
    for (const key of Object.keys(record)) record[key] = withoutControlCharacters(record[key]);
  }
  return value;
}

/** Longest video-visit join URL accepted, characters (docs/video.md). */
export const MAX_JOIN_URL_LENGTH = 2048;

/**
 * `value` when it is a video-visit join URL CareRelay may send a patient to (docs/video.md): an
 * absolute https URL with a host, no spaces or control characters, at most MAX_JOIN_URL_LENGTH
 * characters. Anything else (a phone number, a meeting id, an http:// link) is not one.
 */
export function joinUrl(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const text = value.trim();
  if (text.length === 0 || text.length > MAX_JOIN_URL_LENGTH || /[\s\u0000-\u001f\u007f]/.test(text)) return undefined;
  if (!/^https:\/\//i.test(text)) return undefined;
  try {
    const url = new URL(text);
    return url.protocol === 'https:' && url.hostname !== '' ? text : undefined;
  } catch {
    return undefined;
  }
}

/** What a join URL is replaced with in a stored raw message (docs/video.md "Raw messages"): not a URL, no HL7 delimiter. */
export const REDACTED_JOIN_URL = 'urn:carerelay:redacted-join-url';
