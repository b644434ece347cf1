// Structured logs (winston, JSON). Invariant 7: no PHI in logs. Every log call names an
// event and passes fields; only fields on the allow-list below are written, anything else
// is dropped before it reaches a transport. Values of allowed fields must be ids, codes,
// counts or addresses of peers — never names, phones, message bodies or free text taken
// from a message.
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
]);

export type LogFields = Record<string, string | number | boolean | undefined>;

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
    if (ALLOWED_FIELDS.has(key) && fields[key] !== undefined) out[key] = fields[key];
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
