// HL7v2 TS/DTM values → ISO-8601 (docs/trigger.md "Times").
//
// Wire format: YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]. Output rules:
// - instants always carry an explicit offset, written ±hh:mm (UTC is "+00:00", never "Z",
//   so every trigger time has the same shape);
// - the sender's offset is kept as given (no conversion to UTC);
// - precision is kept down to the second; a value with minutes only gets ":00" seconds;
//   fractional seconds keep the digits sent;
// - a value without an offset is read in the sender's configured IANA zone (luxon), never
//   in the host's zone; a date-only value becomes midnight in that zone (or at the given
//   offset).
// The common case (explicit offset) is a plain string transform: no Date, no luxon.
import { DateTime } from 'luxon';

const MINUTE_MS = 60_000;

interface TsParts {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  /** Digits after the decimal point, as sent ('' when none). */
  fraction: string;
  /** Number of date/time digits sent: 4, 6, 8, 10, 12 or 14. */
  digits: number;
  /** Offset in minutes east of UTC, undefined when the value has none. */
  offsetMinutes: number | undefined;
}

function isDigits(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

function num(text: string, from: number, to: number): number {
  let n = 0;
  for (let i = from; i < to; i++) n = n * 10 + (text.charCodeAt(i) - 48);
  return n;
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

/** Splits and range-checks a TS; undefined when it is not a valid HL7 timestamp. */
function parseTs(raw: string): TsParts | undefined {
  const text = raw.trim();
  if (text.length < 4) return undefined;
  // The offset starts at the first sign after the year; 'Z' is tolerated for UTC.
  let end = text.length;
  let offsetMinutes: number | undefined;
  for (let i = 4; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 43 /* + */ || c === 45 /* - */ || c === 90 /* Z */) {
      end = i;
      offsetMinutes = parseOffset(text.slice(i));
      if (offsetMinutes === undefined) return undefined;
      break;
    }
  }
  const dot = text.indexOf('.');
  const dateEnd = dot !== -1 && dot < end ? dot : end;
  const digits = dateEnd;
  if (digits !== 4 && digits !== 6 && digits !== 8 && digits !== 10 && digits !== 12 && digits !== 14) return undefined;
  if (!isDigits(text, 0, digits)) return undefined;
  let fraction = '';
  if (dateEnd !== end) {
    // Fractional seconds are only valid after full seconds.
    if (digits !== 14) return undefined;
    fraction = text.slice(dateEnd + 1, end);
    if (fraction === '' || !isDigits(fraction, 0, fraction.length)) return undefined;
  }
  const parts: TsParts = {
    year: num(text, 0, 4),
    month: digits >= 6 ? num(text, 4, 6) : 1,
    day: digits >= 8 ? num(text, 6, 8) : 1,
    hour: digits >= 10 ? num(text, 8, 10) : 0,
    minute: digits >= 12 ? num(text, 10, 12) : 0,
    second: digits >= 14 ? num(text, 12, 14) : 0,
    fraction,
    digits,
    offsetMinutes,
  };
  if (parts.month < 1 || parts.month > 12) return undefined;
  if (parts.day < 1 || parts.day > daysInMonth(parts.year, parts.month)) return undefined;
  if (parts.hour > 23 || parts.minute > 59 || parts.second > 59) return undefined;
  return parts;
}

/** "+0215" / "-05" / "+02:15" / "Z" → minutes east of UTC. */
function parseOffset(text: string): number | undefined {
  if (text === 'Z') return 0;
  const sign = text.charCodeAt(0) === 45 ? -1 : 1;
  const body = text.length === 6 && text.charAt(3) === ':' ? text.slice(1, 3) + text.slice(4) : text.slice(1);
  if ((body.length !== 4 && body.length !== 2) || !isDigits(body, 0, body.length)) return undefined;
  const hours = num(body, 0, 2);
  const minutes = body.length === 4 ? num(body, 2, 4) : 0;
  if (hours > 14 || minutes > 59) return undefined;
  return sign * (hours * 60 + minutes);
}

function pad2(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

function pad4(n: number): string {
  return n < 10 ? `000${n}` : n < 100 ? `00${n}` : n < 1000 ? `0${n}` : String(n);
}

/** Minutes east of UTC → "+hh:mm" / "-hh:mm" ("+00:00" for UTC). */
export function formatOffset(minutes: number): string {
  const sign = minutes < 0 ? '-' : '+';
  const abs = Math.abs(minutes);
  return `${sign}${pad2(Math.floor(abs / 60))}:${pad2(abs % 60)}`;
}

const UTC_ZONES = new Set(['UTC', 'Etc/UTC', 'GMT', 'Etc/GMT', 'Z', 'utc']);

function formatInstant(p: TsParts, offsetMinutes: number): string {
  const frac = p.fraction === '' ? '' : `.${p.fraction}`;
  return `${pad4(p.year)}-${pad2(p.month)}-${pad2(p.day)}T${pad2(p.hour)}:${pad2(p.minute)}:${pad2(p.second)}${frac}${formatOffset(offsetMinutes)}`;
}

/**
 * An HL7 TS/DTM as an ISO-8601 instant with an explicit offset, or undefined when the
 * value is empty or not a valid timestamp. `zone` (IANA) applies only when the value has
 * no offset. Values with less than a day of precision (YYYY, YYYYMM) start at the first
 * day of that period.
 */
export function hl7Instant(raw: string, zone: string): string | undefined {
  if (raw === '') return undefined;
  const p = parseTs(raw);
  if (p === undefined) return undefined;
  if (p.offsetMinutes !== undefined) return formatInstant(p, p.offsetMinutes);
  if (UTC_ZONES.has(zone)) return formatInstant(p, 0);
  const key = `${zone}|${p.year}-${p.month}-${p.day}T${p.hour}`;
  const cached = offsetCache.get(key);
  if (cached !== undefined) return formatInstant(p, cached);
  const dt = DateTime.fromObject(
    { year: p.year, month: p.month, day: p.day, hour: p.hour, minute: p.minute, second: p.second },
    { zone },
  );
  if (!dt.isValid) return undefined;
  // A wall-clock time inside a DST gap does not exist; luxon moves it forward. Write the
  // moved time so that the clock time and the offset agree (and do not cache that hour).
  if (dt.hour !== p.hour || dt.minute !== p.minute || dt.day !== p.day) {
    return formatInstant({ ...p, year: dt.year, month: dt.month, day: dt.day, hour: dt.hour, minute: dt.minute }, dt.offset);
  }
  if (offsetCache.size >= OFFSET_CACHE_MAX) offsetCache.clear();
  offsetCache.set(key, dt.offset);
  return formatInstant(p, dt.offset);
}

/**
 * Zone offsets by zone and local hour: building a luxon DateTime costs ~20 µs, and a feed's
 * times without offset fall in few distinct hours. Offsets change on hour boundaries in
 * the tz database's current rules; hours inside a DST gap are never cached.
 */
const offsetCache = new Map<string, number>();
const OFFSET_CACHE_MAX = 10_000;

/**
 * An HL7 date (PID-7 birth date) as YYYY-MM-DD, keeping a shorter precision as sent
 * (YYYY, YYYY-MM: valid FHIR dates). Any time or offset part is ignored: a birth date is
 * the calendar date the sender wrote.
 */
export function hl7Date(raw: string): string | undefined {
  if (raw === '') return undefined;
  const p = parseTs(raw);
  if (p === undefined) return undefined;
  if (p.digits === 4) return pad4(p.year);
  if (p.digits === 6) return `${pad4(p.year)}-${pad2(p.month)}`;
  return `${pad4(p.year)}-${pad2(p.month)}-${pad2(p.day)}`;
}

// --- arithmetic on the instants produced above -------------------------------------------

// "YYYY-MM-DDTHH:MM:SS[.f+]±hh:mm" — the only shape hl7Instant produces; FHIR inputs may
// store "Z" instants in SubjectState, so Z is accepted too.
function splitInstant(iso: string): { localMs: number; fraction: string; offsetMinutes: number } | undefined {
  if (iso.length < 20 || iso.charAt(10) !== 'T') return undefined;
  const year = num(iso, 0, 4);
  const month = num(iso, 5, 7);
  const day = num(iso, 8, 10);
  const hour = num(iso, 11, 13);
  const minute = num(iso, 14, 16);
  const second = num(iso, 17, 19);
  let i = 19;
  let fraction = '';
  if (iso.charAt(i) === '.') {
    let j = i + 1;
    while (j < iso.length && iso.charCodeAt(j) >= 48 && iso.charCodeAt(j) <= 57) j++;
    fraction = iso.slice(i + 1, j);
    i = j;
  }
  const offsetMinutes = parseOffset(iso.slice(i));
  if (offsetMinutes === undefined) return undefined;
  const localMs = Date.UTC(year, month - 1, day, hour, minute, second);
  return Number.isFinite(localMs) ? { localMs, fraction, offsetMinutes } : undefined;
}

/** Epoch milliseconds of an ISO instant (undefined when it is not one). */
export function instantMs(iso: string): number | undefined {
  const s = splitInstant(iso);
  if (s !== undefined) {
    const frac = s.fraction === '' ? 0 : Number(`0.${s.fraction}`) * 1000;
    return s.localMs + frac - s.offsetMinutes * MINUTE_MS;
  }
  const parsed = Date.parse(iso);
  return Number.isFinite(parsed) ? parsed : undefined;
}

/** `iso` + `minutes`, written at the same offset and precision as `iso`. */
export function addMinutes(iso: string, minutes: number): string | undefined {
  const s = splitInstant(iso);
  if (s === undefined) return undefined;
  const d = new Date(s.localMs + minutes * MINUTE_MS);
  const frac = s.fraction === '' ? '' : `.${s.fraction}`;
  return (
    `${pad4(d.getUTCFullYear())}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}` +
    `T${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}${frac}${formatOffset(s.offsetMinutes)}`
  );
}

/** Whole minutes from `start` to `end`, rounded to the nearest minute. */
export function minutesBetween(start: string, end: string): number | undefined {
  const a = instantMs(start);
  const b = instantMs(end);
  if (a === undefined || b === undefined) return undefined;
  return Math.round((b - a) / MINUTE_MS);
}
