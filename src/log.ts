// Structured logs (winston, JSON). Invariant 7: no PHI in logs. Every log call names an
// event and passes fields; only fields on the allow-list below are written, anything else
// is dropped before it reaches a transport. Values of allowed fields must be ids, codes,
// counts or addresses of peers — never names, phones, message bodies or free text taken
// from a message. Ids taken from a message (MSH-3/4/9/10) are the sender's to choose, so
// every string value is bounded here: control characters replaced, and cut at
// MAX_LOGGED_CHARS (a 1 MB MSH-10 once made a 1 MB log line).
import winston from 'winston';

const ALLOWED_FIELDS = new Set([
  'input',
  'output',
  'rule',
  'messageId',
  'controlId',
  'sender',
  'messageType',
  'triggerId',
  'triggerCount',
  'deliveryId',
  'status',
  'ackCode',
  'reason',
  'code',
  'peer',
  'connectionId',
  'port',
  'host',
  'count',
  'durationMs',
  'attempt',
  'file',
  'line',
  'column',
  'path',
  'issues',
  'actor',
  'dataDir',
  'signal',
  'version',
  'url',
  'role',
  'pid',
  'prefix',
]);

export type LogFields = Record<string, string | number | boolean | undefined>;

/** Longest logged string value, in characters; ids and codes are far shorter. */
export const MAX_LOGGED_CHARS = 64;
/** Fields that hold paths or URLs of our own configuration: allowed longer. */
const LONG_FIELDS: Readonly<Record<string, number>> = { url: 256, file: 256, dataDir: 256 };

/**
 * A string value as logged: C0/C1 control characters (and the Unicode line separators) become
 * "?", and a value longer than `max` is cut, ending in "…(+N)" with N the characters left out.
 */
export function boundedLogValue(value: string, max: number = MAX_LOGGED_CHARS): string {
  let out = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(value) ? value.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, '?') : value;
  if (out.length > max) out = `${out.slice(0, max)}…(+${out.length - max})`;
  return out;
}

export interface Logger {
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  debug(event: string, fields?: LogFields): void;
}

function pickAllowed(fields: LogFields | undefined): LogFields {
  const out: LogFields = {};
  if (fields === undefined) return out;
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (!ALLOWED_FIELDS.has(key) || value === undefined) continue;
    out[key] = typeof value === 'string' ? boundedLogValue(value, LONG_FIELDS[key] ?? MAX_LOGGED_CHARS) : value;
  }
  return out;
}

export function createLogger(options: { level?: string; stream?: NodeJS.WritableStream } = {}): Logger {
  const transport = options.stream
    ? new winston.transports.Stream({ stream: options.stream })
    : new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] });
  const w = winston.createLogger({
    level: options.level ?? process.env.CARERELAY_LOG_LEVEL ?? 'info',
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [transport],
  });
  const at =
    (level: 'info' | 'warn' | 'error' | 'debug') =>
    (event: string, fields?: LogFields): void => {
      w.log(level, event, pickAllowed(fields));
    };
  return { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') };
}

/** A logger that drops everything (CLI commands that print results, tests). */
export const silentLogger: Logger = { info() {}, warn() {}, error() {}, debug() {} };
