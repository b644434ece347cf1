// End-to-end test helpers: a throw-away configuration directory, the real server started
// in-process or as a child process (`node bin/carerelay.mjs start`), HL7v2 messages built
// for a test, and a raw one-frame MLLP exchange that does not depend on ACK matching.
//
// Everything listens on 127.0.0.1 with port 0; bound ports are read back from the running
// server (in-process) or from its "mllp.listening" / "http.listening" log lines (child).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Env } from '../../src/config/yaml.ts';
import { MllpFramer } from '../../src/hl7v2/mllp.ts';
import type { LogFields, Logger } from '../../src/log.ts';
import { startCarerelay, type RunningCarerelay } from '../../src/main.ts';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI_PATH = path.join(REPO_ROOT, 'bin', 'carerelay.mjs');

/** Runs `carerelay ARGS` as a user does (a child process, `env` over this one's); never throws on an exit code. */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [CLI_PATH, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

// ---------------------------------------------------------------------------------------
// Configuration directory

export interface HttpInputOptions {
  name: string;
  /** Require `Authorization: Bearer <value of this env var>`. */
  tokenEnv?: string;
}

export interface ConfigDirOptions {
  /** Plain MLLP inputs on 127.0.0.1:0. Default: one named "ehr-mllp". */
  mllpInputs?: string[];
  /** HTTP ingest inputs. Default: one named "ehr-http" without auth. */
  httpInputs?: HttpInputOptions[];
  /** Env var holding the admin token (server.admin.tokenEnv); default: CARERELAY_ADMIN_TOKEN. */
  adminTokenEnv?: string;
  /** server.admin.tokens: each token's secret read from env var `env`. */
  adminTokens?: Array<{ name: string; env: string; scopes: string[] }>;
  unknownMessageTypes?: 'accept' | 'reject';
  missingFieldAck?: 'AR' | 'AE';
  /** The inputs' ackMode; default: left out (standard). */
  ackMode?: 'standard' | 'always';
  /** Seconds; default 300. */
  idleTimeoutSeconds?: number;
  /**
   * The `policy` block's lines (indented two spaces). Default: no quiet hours and no US
   * exempt-SMS limit, so tests that are not about them do not depend on the time of day they
   * run at or on how many messages they send one patient.
   */
  policy?: string[];
  /** The `server.queue` block's lines (indented four spaces); default: none (embedded queue). */
  queue?: string[];
}

export interface TestConfigDir {
  /** The configuration directory (holds connectors/test.yaml). */
  dir: string;
  /** Absolute data directory of the embedded store. */
  dataDir: string;
  /** The SQLite file the server writes. */
  dbFile: string;
  /** Deletes the whole directory. */
  remove(): void;
}

/** Writes connectors/test.yaml into a fresh temp directory (data dir inside it). */
export function writeConfigDir(options: ConfigDirOptions = {}): TestConfigDir {
  const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-e2e-'));
  const dataDir = path.join(dir, 'data');
  mkdirSync(path.join(dir, 'connectors'));
  const common = [
    `    timezone: UTC`,
    `    unknownMessageTypes: ${options.unknownMessageTypes ?? 'accept'}`,
    `    missingFieldAck: ${options.missingFieldAck ?? 'AR'}`,
    ...(options.ackMode ? [`    ackMode: ${options.ackMode}`] : []),
  ];
  const lines = [
    'server:',
    '  http: { host: 127.0.0.1, port: 0 }',
    `  dataDir: ${JSON.stringify(dataDir)}`,
    ...(options.queue ? ['  queue:', ...options.queue] : []),
    '  admin:',
    ...(options.adminTokenEnv ? [`    tokenEnv: ${options.adminTokenEnv}`] : []),
    `    tokens: [${(options.adminTokens ?? []).map((t) => `{ name: ${t.name}, token: { env: ${t.env} }, scopes: [${t.scopes.join(', ')}] }`).join(', ')}]`,
    'policy:',
    ...(options.policy ?? ['  quietHours: { channels: [] }', '  usExemptSms: { perDay: 1000, perWeek: 1000 }']),
    'inputs:',
  ];
  for (const name of options.mllpInputs ?? ['ehr-mllp']) {
    lines.push(
      `  - name: ${name}`,
      '    type: hl7v2-mllp',
      '    host: 127.0.0.1',
      '    port: 0',
      '    plain: true',
      `    idleTimeoutSeconds: ${options.idleTimeoutSeconds ?? 300}`,
      ...common,
    );
  }
  for (const input of options.httpInputs ?? [{ name: 'ehr-http' }]) {
    lines.push(`  - name: ${input.name}`, '    type: hl7v2-http', ...common);
    if (input.tokenEnv) lines.push(`    auth: { bearerToken: { env: ${input.tokenEnv} } }`);
  }
  lines.push('outputs: []', '');
  writeFileSync(path.join(dir, 'connectors', 'test.yaml'), lines.join('\n'));
  return {
    dir,
    dataDir,
    dbFile: path.join(dataDir, 'carerelay.db'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * Writes `connectors/test.yaml` with the given text into a fresh temp directory; `{dataDir}`
 * in the text is replaced by the quoted data directory.
 */
export function writeYamlConfig(yaml: string, files: Record<string, string> = {}): TestConfigDir {
  const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-e2e-'));
  const dataDir = path.join(dir, 'data');
  mkdirSync(path.join(dir, 'connectors'));
  writeFileSync(path.join(dir, 'connectors', 'test.yaml'), yaml.replaceAll('{dataDir}', JSON.stringify(dataDir)));
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return {
    dir,
    dataDir,
    dbFile: path.join(dataDir, 'carerelay.db'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

// ---------------------------------------------------------------------------------------
// Logs

export interface LogLine {
  level: string;
  message: string;
  [field: string]: unknown;
}

/** A Logger that keeps every line in memory (what the JSON log would hold). */
export function captureLogger(): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at =
    (level: string) =>
    (message: string, fields?: LogFields): void => {
      lines.push({ level, message, ...fields });
    };
  return { lines, info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') };
}

// ---------------------------------------------------------------------------------------
// In-process server

export interface InProcessServer extends RunningCarerelay {
  logs: LogLine[];
  /** Port of the first (or named) MLLP input. */
  mllpPort(name?: string): number;
}

/** startCarerelay on `configDir` with a capturing logger; `env` replaces process.env. */
export async function startServer(config: TestConfigDir | string, env: Env = {}): Promise<InProcessServer> {
  const log = captureLogger();
  const configDir = typeof config === 'string' ? config : config.dir;
  const running = await startCarerelay({ configDir, env, log });
  return {
    ...running,
    logs: log.lines,
    mllpPort(name?: string): number {
      const port = name === undefined ? running.mllpPorts.values().next().value : running.mllpPorts.get(name);
      if (port === undefined) throw new Error(`no MLLP input ${name ?? '(any)'} is listening`);
      return port;
    },
  };
}

/**
 * Adds a confirmation due at once for every booking to a config dir, kept by an outbox
 * (idempotent by delivery id): output `hook`, rule `confirm`.
 */
export function addConfirmations(config: TestConfigDir): void {
  const connectors = path.join(config.dir, 'connectors', 'test.yaml');
  writeFileSync(connectors, readFileSync(connectors, 'utf8').replace('outputs: []', 'outputs:\n  - { name: hook, type: outbox, channel: webhook }'));
  mkdirSync(path.join(config.dir, 'mappings'), { recursive: true });
  writeFileSync(
    path.join(config.dir, 'mappings', 'confirm.yaml'),
    ['rules:', '  - id: confirm', '    on: appointment.booked', '    purpose: care.logistics', '    channel: webhook', '    send: { output: hook, fields: [appointment.start] }', '    at: now', ''].join('\n'),
  );
}

// ---------------------------------------------------------------------------------------
// Child-process server

/** Calls `onLine` with each complete line (without its LF) a text stream writes. */
export function onLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered += chunk;
    let nl = buffered.indexOf('\n');
    while (nl !== -1) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      nl = buffered.indexOf('\n');
      onLine(line);
    }
  });
}

export interface ChildServer {
  child: ChildProcess;
  pid: number;
  httpPort: number;
  mllpPorts: ReadonlyMap<string, number>;
  /** Parsed JSON log lines from stderr so far. */
  logs: LogLine[];
  /** Resolves when the process has exited (whatever the cause). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line from now on that `match` accepts. */
  nextLog(match: (line: LogLine) => boolean): Promise<LogLine>;
  /** SIGKILL: the crash under test. */
  kill(): void;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
}

export interface StartChildOptions {
  /** Added to process.env (e.g. CARERELAY_FAULT). */
  env?: Record<string, string>;
  /** Give up when the listeners are not up within this time, ms. Default 20,000. */
  startTimeoutMs?: number;
  /** More `start` arguments (e.g. --role worker --processes 2). */
  args?: string[];
  /** Resolve only once this many processes logged carerelay.started (`--processes N`). Default 1. */
  processes?: number;
}

/**
 * Spawns `node bin/carerelay.mjs start --config-dir DIR` and resolves once every MLLP
 * input and the HTTP listener have logged their bound port. Rejects (and kills the child)
 * if it exits first or the time limit passes, with its stderr in the message.
 */
export function startChildServer(config: TestConfigDir | string, options: StartChildOptions = {}): Promise<ChildServer> {
  const configDir = typeof config === 'string' ? config : config.dir;
  const env: Record<string, string | undefined> = { ...process.env, ...options.env };
  // A stray fault setting from the parent must never leak into a run that did not ask for it.
  if (options.env?.CARERELAY_FAULT === undefined) delete env.CARERELAY_FAULT;
  const child = spawn(process.execPath, [CLI_PATH, 'start', '--config-dir', configDir, ...(options.args ?? [])], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: LogLine[] = [];
  const stderr: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });

  return new Promise<ChildServer>((resolve, reject) => {
    const mllpPorts = new Map<string, number>();
    let httpPort: number | undefined;
    let started = 0;
    let settled = false;
    let waiters: Array<{ match: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
    const timer = setTimeout(() => {
      fail(new Error(`carerelay did not start within ${options.startTimeoutMs ?? 20_000} ms`));
      child.kill('SIGKILL');
    }, options.startTimeoutMs ?? 20_000);
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`${error.message}\nstderr:\n${stderr.join('').slice(-4000)}`));
    };
    child.stderr!.on('data', (chunk: Buffer | string) => stderr.push(String(chunk)));
    onLines(child.stderr!, (line) => {
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line) as LogLine;
      } catch {
        return; // not a log line (e.g. a Node warning)
      }
      logs.push(parsed);
      waiters = waiters.filter((w) => !(w.match(parsed) && (w.resolve(parsed), true)));
      if (parsed.message === 'mllp.listening') mllpPorts.set(String(parsed.input), Number(parsed.port));
      if (parsed.message === 'http.listening') httpPort = Number(parsed.port);
      if (parsed.message === 'carerelay.started') started++;
      // main.ts binds every MLLP input before the HTTP listener, so http.listening is last;
      // with several processes, each logs carerelay.started once it runs.
      if (!settled && httpPort !== undefined && (options.processes === undefined || started >= options.processes)) {
        settled = true;
        clearTimeout(timer);
        const port = httpPort;
        resolve({
          child,
          pid: child.pid!,
          httpPort: port,
          mllpPorts,
          logs,
          exited,
          nextLog: (match) => new Promise((resolveLine) => waiters.push({ match, resolve: resolveLine })),
          kill: () => {
            child.kill('SIGKILL');
          },
          stop: async () => {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
            await exited;
          },
        });
      }
    });
    void exited.then(({ code, signal }) => fail(new Error(`carerelay exited before listening (code ${code}, signal ${signal})`)));
    child.once('error', (error) => fail(error));
  });
}

// ---------------------------------------------------------------------------------------
// HL7v2 messages

/** "20260301101500+0000" from a Date (HL7 DTM with an explicit UTC offset). */
export function hl7Time(date: Date): string {
  return `${date.toISOString().replace(/[-:T]/g, '').slice(0, 14)}+0000`;
}

export interface SiuOptions {
  controlId: string;
  appointmentId: string;
  patientId?: string;
  /** S12 (booked, default), S14 (modified), S15 (cancelled)… */
  event?: string;
  /** Appointment start. */
  start?: Date;
  /** Minutes. */
  durationMinutes?: number;
  /** MSH-7 and the event time. */
  sentAt?: Date;
  /** MSH-15 / MSH-16 (enhanced acknowledgment mode). */
  acceptAck?: string;
  applicationAck?: string;
  /** Extra segments appended (already joined with nothing: each ends with \r). */
  extra?: string;
  sendingApp?: string;
  sendingFacility?: string;
}

/** A real-shaped SIU (SCH, TQ1, PID, RGS, AIL, AIP) with CR segment ends. */
export function siuMessage(o: SiuOptions): string {
  const event = o.event ?? 'S12';
  const start = o.start ?? new Date('2030-03-16T13:30:00Z');
  const minutes = o.durationMinutes ?? 30;
  const end = new Date(start.getTime() + minutes * 60_000);
  const sentAt = o.sentAt ?? new Date('2030-03-01T09:15:00Z');
  const patientId = o.patientId ?? 'E200001';
  const msh = [
    'MSH',
    '^~\\&',
    o.sendingApp ?? 'EPIC',
    o.sendingFacility ?? 'NORTHCLINIC',
    'CARERELAY',
    'CR',
    hl7Time(sentAt),
    '',
    `SIU^${event}^SIU_S12`,
    o.controlId,
    'P',
    '2.5.1',
    '',
    '',
    o.acceptAck ?? '',
    o.applicationAck ?? '',
  ];
  while (msh[msh.length - 1] === '') msh.pop();
  return (
    [
      msh.join('|'),
      `SCH|PL-${o.appointmentId}|${o.appointmentId}||||NEW|CHK^Annual check-up^LOCAL||${minutes}|MIN|||||||||||||||Booked`,
      `TQ1|1||||||${hl7Time(start)}|${hl7Time(end)}`,
      `PID|1||${patientId}^^^NORTHCLINIC^MR||DOE^Test||19600101|M`,
      'RGS|1',
      'AIL|1||CARDIO1^^^NORTHCLINIC',
      'AIP|1||DR-22^PETIT^Jean',
    ].join('\r') +
    '\r' +
    (o.extra ?? '')
  );
}

export interface AdtOptions {
  controlId: string;
  event?: string;
  /** PID-3; '' gives an ADT without a patient id. */
  patientId?: string;
  visitId?: string;
  sentAt?: Date;
}

export function adtMessage(o: AdtOptions): string {
  const event = o.event ?? 'A01';
  const sentAt = hl7Time(o.sentAt ?? new Date('2030-03-01T09:15:00Z'));
  const pid3 = o.patientId === '' ? '' : `${o.patientId ?? 'E200001'}^^^NORTHCLINIC^MR`;
  return [
    `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|${sentAt}||ADT^${event}^ADT_${event}|${o.controlId}|P|2.5.1`,
    `EVN|${event}|${sentAt}`,
    `PID|1||${pid3}||DOE^Test||19600101|M`,
    `PV1|1|I|WARD1^101^1^NORTHCLINIC||||DR-22^PETIT^Jean||||||||||||${o.visitId ?? 'V-1'}|||||||||||||||||||||||||${sentAt}`,
    '',
  ].join('\r');
}

// ---------------------------------------------------------------------------------------
// Raw MLLP

/**
 * Opens a connection, sends `payload` framed, and resolves with the first frame received
 * back, or null when the server closes the connection without answering. Independent of
 * MllpClient's MSA-2 matching, so ACKs to unparseable messages can be read too.
 */
export function mllpExchange(port: number, payload: Buffer | string, timeoutMs = 10_000, localAddress?: string): Promise<Buffer | null> {
  return new Promise<Buffer | null>((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, ...(localAddress !== undefined ? { localAddress } : {}) });
    const framer = new MllpFramer({});
    let done = false;
    const finish = (error: Error | null, frame: Buffer | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(frame);
    };
    const timer = setTimeout(() => finish(new Error(`no MLLP answer from port ${port} within ${timeoutMs} ms`), null), timeoutMs);
    // A payload may hold a lone 0x1C on purpose: framed by hand, not by encodeFrame's check.
    const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    socket.on('connect', () => socket.write(Buffer.concat([Buffer.from([0x0b]), bytes, Buffer.from([0x1c, 0x0d])])));
    socket.on('data', (chunk: Buffer) => {
      const frames = framer.push(chunk);
      if (frames.length > 0) finish(null, frames[0]!);
    });
    socket.on('error', () => {}); // a reset is reported by 'close'
    socket.on('close', () => finish(null, null));
  });
}

/** Field `n` (1-based as in HL7, MSH-1 being the separator) of segment `name` of an ER7 text. */
export function hl7Field(message: Buffer | string, name: string, n: number): string {
  const text = typeof message === 'string' ? message : message.toString('utf8');
  const segment = text.split(/\r\n|\r|\n/).find((s) => s.startsWith(`${name}|`));
  if (segment === undefined) return '';
  const fields = segment.split('|');
  // MSH-1 (and BHS-1, FHS-1) is the '|' itself, so MSH-n is fields[n - 1]; other segments: fields[n].
  return (['MSH', 'BHS', 'FHS'].includes(name) ? fields[n - 1] : fields[n]) ?? '';
}
