// The `carerelay` command. Each subcommand returns its exit code; output goes to stdout
// (results) and stderr (problems), never to the log.
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { isIanaTimeZone, readSecret } from './config/yaml.ts';
import { AmbiguousError, ConfigError, PermanentError, TransientError } from './errors.ts';
import { AckCondition, ackModeOf } from './hl7v2/ack.ts';
import { Hl7ParseError, parseHl7, parseHl7Batch } from './hl7v2/parse.ts';
import { MllpClient, MllpClientErrorCode } from './hl7v2/mllp-client.ts';
import { normalizeHl7 } from './inputs/hl7v2/normalize.ts';
import { FhirClient } from './fhir/client.ts';
import { normalizeFhirDocument, readFhirDocument, type FhirDocument } from './fhir/document.ts';
import { FhirNormalizeError } from './fhir/normalize.ts';
import { FhirNotificationError } from './fhir/notification.ts';
import type { Trigger } from './types.ts';
import { CONSENT_USAGE } from './cli-consent.ts';
import { STORE_USAGE } from './cli-store.ts';
import { PRUNE_USAGE } from './cli-prune.ts';

const USAGE = `Usage: carerelay <command> [options]

Commands:
  start [--config-dir DIR] [--role ingest|worker|all] [--processes N]
                                           run CareRelay with connectors/ (and mappings/) of DIR
                                           (default: the working directory); --role: ingest
                                           (listeners: commit and ACK), worker (route and
                                           deliver) or all (default); --processes N: N such
                                           processes sharing the listening ports (a split or
                                           N > 1 needs server.queue type bullmq)
  validate [--config-dir DIR] [--connect]  check the configuration and the mapping tests
                                           (*.test.yaml, not run); list every problem as
                                           file:line:column; --connect: also connect to the
                                           configured store (server.store) and the queue's Redis
                                           and check it keeps jobs (AOF, noeviction)
  normalize [--timezone ZONE] [--fhir-base URL] [--fhir-sender URL] FILE...
                                           print the triggers each file gives (NDJSON): HL7v2
                                           messages; FHIR notifications, Appointment/Encounter
                                           resources or Bundles of them (collection, searchset,
                                           transaction, batch, history); ZONE (IANA, default
                                           UTC) reads HL7 times without offset; what a FHIR
                                           file refers to and does not include is fetched from
                                           --fhir-base (also the triggers' sender)
  send --to HOST:PORT [--tls] [--ca FILE] [--cert FILE --key FILE] [--servername NAME]
       [--timeout SECONDS] FILE...         send HL7v2 files over MLLP, one in flight, and print
                                           each ACK code (exit 1 unless every ACK is AA/CA);
                                           MSH-15 NE: sent without waiting for an ACK; ER: no
                                           ACK within the timeout counts as accepted
  test [DIR | FILE] [--json]               run the mapping tests (*.test.yaml) of DIR (default:
                                           ./mappings), or the one FILE; exit 1 on any failure;
                                           --json: one line per test with every delivery
                                           (status, reason, due and sent times) and reply
  replay --dry-run [--config-dir DIR] [--timezone ZONE] [--now INSTANT] FILE...
                                           show which rules the files would fire and what would
                                           be sent when; nothing is stored or sent
  outbox [--config-dir DIR] [--output NAME] [--limit N] [--json]
                                           the messages the outbox outputs kept, newest first
                                           (reads the store; works beside a running server)
  reprocess [--config-dir DIR] [--url URL] [--token-env NAME] ID...
                                           try rejected messages again with their stored bytes
                                           and today's configuration, through the running
                                           server's admin API (audited under the token's name)
  release [--config-dir DIR] [--url URL] [--token-env NAME] ID...
                                           accept quarantined copies (same MSH-10, other bytes)
                                           as messages of their own, after review
  deliveries replay [--url URL] [--token-env NAME] ID... |
       --status failed|review [--output NAME] [--rule ID] [--since INSTANT] [--limit N]
                                           run failed (dead-lettered) or review deliveries once
                                           more with the same idempotency key, through the
                                           running server's admin API (audited)
  fhir subscribe --input NAME --endpoint URL [--config-dir DIR]
                                           create (or update) the input's Subscriptions on its
                                           FHIR server, pointing at URL/ingest/fhir/NAME, and
                                           show each one's status or failure (exit 1 if any
                                           failed; the others are still done)
${STORE_USAGE}${PRUNE_USAGE}${CONSENT_USAGE}  help                                     this text
`;

type Options = NonNullable<ParseArgsConfig['options']>;

function parse(args: string[], options: Options) {
  return parseArgs({ args, options, allowPositionals: true, strict: true });
}

/** Prints every configuration problem (file:line:column: message) and how many; exit code 1. */
function reportConfigError(error: ConfigError, consequence = ''): number {
  process.stderr.write(`${error.message}\n${error.issues.length} problem(s) found${consequence}.\n`);
  return 1;
}

function fail(message: string): number {
  process.stderr.write(`carerelay: ${message}\n`);
  return 2;
}

/** What one input file gives: its triggers, or why it cannot give any. */
type FileResult = { triggers: Trigger[] } | { rejected: string[] };

function normalizeHl7File(bytes: Buffer, timezone: string, receivedAt: string): FileResult {
  let messages;
  try {
    messages = parseHl7Batch(bytes);
  } catch (error) {
    if (error instanceof Hl7ParseError) return { rejected: [error.message] };
    throw error;
  }
  const triggers: Trigger[] = [];
  const rejected: string[] = [];
  for (const msg of messages) {
    const result = normalizeHl7(msg, { receivedAt, timezone });
    if (result.kind === 'rejected') rejected.push(result.reason);
    else if (result.kind === 'triggers') triggers.push(...result.triggers);
  }
  return rejected.length > 0 ? { rejected } : { triggers };
}

/**
 * A FHIR file: a notification, a bare resource or a Bundle of them (fhir/document.ts).
 * Offline, only what the file holds is used (contained resources and Bundle entries);
 * with `client` (--fhir-base), what it refers to and does not hold is fetched from there.
 */
async function normalizeFhirFile(bytes: Buffer, sender: string, receivedAt: string, client: FhirClient | undefined): Promise<FileResult> {
  try {
    const document = readFhirDocument(bytes);
    const result = await normalizeFhirDocument(document, {
      receivedAt,
      sender,
      ...(client !== undefined ? { fetch: (reference: string) => client.readReference(reference) } : {}),
    });
    if (result.missing.length > 0) return { rejected: result.missing.map((reference) => missingHint(reference, document, client)) };
    return { triggers: result.triggers };
  } catch (error) {
    if (error instanceof FhirNotificationError || error instanceof FhirNormalizeError) return { rejected: [error.message] };
    // A fetch from --fhir-base that failed (not found, refused, unreachable).
    if (error instanceof PermanentError || error instanceof TransientError) return { rejected: [`${error.message} (${error.code})`] };
    throw error;
  }
}

/** Why a reference the file needs is not there, and what would give it (true for this kind of file). */
function missingHint(reference: string, document: FhirDocument, client: FhirClient | undefined): string {
  if (reference.startsWith('#')) return `refers to ${reference}, which is not among the resource's contained resources`;
  if (/^urn:/i.test(reference)) return `refers to ${reference}, which is the fullUrl of no entry in the Bundle`;
  const notification = document.kind === 'notification' ? document.notification : undefined;
  const add =
    notification === undefined
      ? 'add it as an entry of the Bundle'
      : notification.kind === 'topic'
        ? 'add it to the notification Bundle as an entry whose fullUrl is that reference'
        : 'add it as a contained resource, or give a collection or transaction Bundle holding both';
  const fetch = client === undefined ? 'give --fhir-base URL to fetch it from the FHIR server that has it' : `it was not fetched from ${client.baseUrl}`;
  return `needs ${reference}, which the file does not include: ${add}, or ${fetch}`;
}

function looksLikeJson(bytes: Buffer): boolean {
  for (const byte of bytes) {
    if (byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d || byte === 0xef || byte === 0xbb || byte === 0xbf) continue;
    return byte === 0x7b; // "{"
  }
  return false;
}

async function cmdNormalize(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    timezone: { type: 'string', default: 'UTC' },
    'fhir-sender': { type: 'string' },
    'fhir-base': { type: 'string' },
  });
  const timezone = values.timezone as string;
  if (!isIanaTimeZone(timezone)) return fail(`--timezone ${timezone} is not an IANA time zone (e.g. Europe/Paris)`);
  if (positionals.length === 0) return fail('normalize needs at least one FILE');
  let client: FhirClient | undefined;
  if (values['fhir-base'] !== undefined) {
    try {
      client = new FhirClient({ baseUrl: values['fhir-base'] as string });
    } catch (error) {
      return fail(`--fhir-base: ${(error as Error).message}`);
    }
  }
  // As the running server does: the triggers' source.sender is the FHIR server's base URL.
  const sender = (values['fhir-sender'] as string | undefined) ?? client?.baseUrl ?? 'urn:carerelay:cli';
  let rejectedFiles = 0;
  const receivedAt = new Date().toISOString();
  for (const file of positionals) {
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (error) {
      process.stderr.write(`${file}: cannot read (${(error as NodeJS.ErrnoException).code ?? 'error'})\n`);
      rejectedFiles++;
      continue;
    }
    const result = looksLikeJson(bytes)
      ? await normalizeFhirFile(bytes, sender, receivedAt, client)
      : normalizeHl7File(bytes, timezone, receivedAt);
    if ('rejected' in result) {
      for (const reason of result.rejected) process.stderr.write(`${file}: ${reason}\n`);
      rejectedFiles++;
      continue;
    }
    for (const t of result.triggers) process.stdout.write(`${JSON.stringify(t)}\n`);
  }
  return rejectedFiles === 0 ? 0 : 1;
}

async function cmdSend(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    to: { type: 'string' },
    tls: { type: 'boolean', default: false },
    ca: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    servername: { type: 'string' },
    timeout: { type: 'string', default: '30' },
  });
  const to = values.to as string | undefined;
  const match = to === undefined ? null : /^(.+):(\d{1,5})$/.exec(to);
  if (match === null) return fail('send needs --to HOST:PORT (e.g. --to 127.0.0.1:2575)');
  if (positionals.length === 0) return fail('send needs at least one FILE');
  const timeoutMs = Number(values.timeout) * 1000;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) return fail('--timeout must be a positive number of seconds');
  const useTls = values.tls === true || values.ca !== undefined || values.cert !== undefined;
  const client = new MllpClient({
    host: match[1]!,
    port: Number(match[2]),
    ...(useTls
      ? {
          tls: {
            ...(values.ca ? { ca: await readFile(values.ca as string) } : {}),
            ...(values.cert ? { cert: await readFile(values.cert as string) } : {}),
            ...(values.key ? { key: await readFile(values.key as string) } : {}),
            ...(values.servername ? { servername: values.servername as string } : {}),
          },
        }
      : {}),
  });
  let failures = 0;
  try {
    await client.connect();
    for (const file of positionals) {
      const bytes = await readFile(file);
      for (const msg of splitForSending(bytes)) {
        const { controlId, accept } = ackExpectation(msg);
        const line = (rest: string): void => {
          process.stdout.write(`${path.basename(file)} ${rest}\n`);
        };
        if (accept === AckCondition.Never) {
          // MSH-15 NE: the receiver must not answer (HL7 table 0155); waiting would stall.
          await client.sendWithoutAck(msg);
          line(`${controlId} - no ACK expected (MSH-15 NE)`);
          continue;
        }
        try {
          const ack = parseHl7Batch(await client.send(msg, { timeoutMs }))[0]!;
          const code = ack.get('MSA-1');
          const text = ack.get('MSA-3');
          line(`${ack.get('MSA-2')} ${code}${text ? ` ${text}` : ''}`);
          if (code !== 'AA' && code !== 'CA') failures++;
        } catch (error) {
          const timedOut = error instanceof AmbiguousError && error.code === MllpClientErrorCode.AckTimeout;
          if (timedOut && accept === AckCondition.ErrorOnly) {
            // MSH-15 ER: only an error is acknowledged, so silence until the timeout is success.
            line(`${controlId} - no error ACK within ${values.timeout} s: accepted (MSH-15 ER)`);
          } else {
            const hint = timedOut && accept === AckCondition.SuccessOnly ? ' (MSH-15 SU: only an accepted message is acknowledged)' : '';
            line(`- ERROR ${(error as Error).message}${hint}`);
            failures++;
          }
          // After a timeout the client has closed its connection: open a fresh one.
          await client.close();
          await client.connect();
        }
      }
    }
  } catch (error) {
    process.stderr.write(`carerelay: cannot send to ${to}: ${(error as Error).message}\n`);
    return 1;
  } finally {
    await client.close();
  }
  return failures === 0 ? 0 : 1;
}

/** MSH-10 and what MSH-15 asks of the receiver (AL when the message cannot be read here). */
function ackExpectation(msg: Buffer): { controlId: string; accept: AckCondition } {
  try {
    const parsed = parseHl7(msg);
    return { controlId: parsed.controlId || '-', accept: ackModeOf(parsed).accept };
  } catch {
    return { controlId: '-', accept: AckCondition.Always };
  }
}

/** A file may hold several messages (one per MSH, or a batch): each is sent on its own. */
function splitForSending(bytes: Buffer): Buffer[] {
  try {
    const messages = parseHl7Batch(bytes);
    if (messages.length <= 1) return [bytes];
    return messages.map((m) => Buffer.from(m.text.replace(/\r?\n/g, '\r'), 'utf8'));
  } catch {
    return [bytes]; // let the receiver answer AR
  }
}

async function cmdValidate(args: string[]): Promise<number> {
  const { values } = parse(args, { 'config-dir': { type: 'string', default: '.' }, connect: { type: 'boolean', default: false } });
  const { loadConfig } = await import('./config/load.ts');
  const { checkMappingTestFiles } = await import('./workers/mapping-tests.ts');
  try {
    const plan = await loadConfig({ configDir: path.resolve(values['config-dir'] as string), env: process.env, mappingTests: checkMappingTestFiles });
    process.stdout.write(`configuration OK: ${plan.inputs.length} input(s), ${plan.outputs.length} output(s)\n`);
    if (values.connect === true) {
      const storeCode = await (await import('./cli-store.ts')).connectCheck(plan);
      const { checkQueueConnection } = await import('./queue/connect-check.ts');
      const queue = await checkQueueConnection(plan.server.queue, (ref) => readSecret(ref, process.env, plan.configDir));
      process.stdout.write(`${queue.message}\n`);
      if (storeCode !== 0 || !queue.ok) return 1;
    }
    return 0;
  } catch (error) {
    if (error instanceof ConfigError) return reportConfigError(error, '; nothing was started');
    throw error;
  }
}

async function cmdTest(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean', default: false } });
  if (positionals.length > 1) return fail('test takes at most one DIR (a mappings directory) or FILE (a *.test.yaml)');
  const given = positionals[0] ?? 'mappings';
  const target = path.resolve(given);
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(target)).isDirectory();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return fail(`test: ${given} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? 'error'})`}: give a mappings directory or one of its *.test.yaml files`);
  }
  if (!isDirectory && !target.endsWith('.test.yaml')) {
    return fail(`test: ${given} is not a mapping test: give a mappings directory or a file ending in .test.yaml`);
  }
  const { runMappingTests } = await import('./workers/mapping-tests.ts');
  // One file runs against the mappings of its own directory.
  const results = isDirectory
    ? await runMappingTests(target, { env: process.env })
    : await runMappingTests(path.dirname(target), { env: process.env, files: [target] });
  if (values.json === true) {
    // One line per test: every delivery (rule, subject, patient, channel, to, status, reason,
    // due and sent times) and the keyword replies, with the diff of a failed test.
    for (const r of results.results) {
      const diff = r.ok ? undefined : results.failed.find((f) => f.file === r.file && f.test === r.test)?.diff;
      process.stdout.write(`${JSON.stringify({ ...r, ...(diff !== undefined ? { diff } : {}) })}\n`);
    }
    return results.failed.length === 0 ? 0 : 1;
  }
  for (const r of results.results) process.stdout.write(`${r.ok ? 'ok  ' : 'FAIL'} ${r.file} › ${r.test}\n`);
  for (const f of results.failed) {
    process.stdout.write(`\n--- ${f.file} › ${f.test}\n${f.diff}\n`);
  }
  process.stdout.write(`\n${results.passed} passed, ${results.failed.length} failed\n`);
  return results.failed.length === 0 ? 0 : 1;
}

async function cmdReplay(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    'dry-run': { type: 'boolean', default: false },
    'config-dir': { type: 'string', default: '.' },
    timezone: { type: 'string', default: 'UTC' },
    now: { type: 'string' },
  });
  if (values['dry-run'] !== true) {
    return fail('replay only runs with --dry-run for now (it shows what would happen; nothing is stored or sent)');
  }
  if (positionals.length === 0) return fail('replay needs at least one FILE (.hl7, .json or .ndjson)');
  const { replayDryRun } = await import('./workers/simulate.ts');
  try {
    const lines = await replayDryRun(positionals, {
      mappingsDir: path.join(path.resolve(values['config-dir'] as string), 'mappings'),
      timezone: values.timezone as string,
      ...(values.now !== undefined ? { now: values.now as string } : {}),
      env: process.env,
    });
    for (const line of lines) process.stdout.write(`${line}\n`);
    return 0;
  } catch (error) {
    if (error instanceof ConfigError) return reportConfigError(error);
    if (error instanceof RangeError) return fail(error.message);
    throw error;
  }
}

async function cmdOutbox(args: string[]): Promise<number> {
  const { values } = parse(args, {
    'config-dir': { type: 'string', default: '.' },
    output: { type: 'string' },
    limit: { type: 'string', default: '20' },
    json: { type: 'boolean', default: false },
  });
  const limit = Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) return fail('--limit must be a whole number between 1 and 1000');
  const { loadConfig } = await import('./config/load.ts');
  const { listOutbox } = await import('./workers/runtime.ts');
  try {
    const plan = await loadConfig({ configDir: path.resolve(values['config-dir'] as string), env: process.env, checkSecrets: false });
    const entries = await listOutbox({
      dataDir: plan.server.dataDir,
      limit,
      ...(values.output !== undefined ? { output: values.output as string } : {}),
      location: (await import('./workers/store-setup.ts')).storeLocation(plan, process.env),
    });
    for (const e of entries) {
      if (values.json === true) {
        process.stdout.write(`${JSON.stringify(e)}\n`);
        continue;
      }
      const header = `${e.keptAt}  ${e.output} (${e.channel}) to ${e.to ?? '-'} [${e.language}]  ${e.deliveryId}`;
      process.stdout.write(`${header}\n${e.subject !== undefined ? `  Subject: ${e.subject}\n` : ''}${e.text.replace(/^/gm, '  ')}\n\n`);
    }
    if (entries.length === 0 && values.json !== true) process.stdout.write('the outbox is empty\n');
    return 0;
  } catch (error) {
    if (error instanceof ConfigError) return reportConfigError(error);
    process.stderr.write(`carerelay: ${(error as Error).message}\n`);
    return 1;
  }
}

/**
 * `reprocess` / `release`: asks the running server (its admin API), because the attempt must
 * be routed by the running router and answered from its store; the data dir alone would
 * store triggers nobody routes until the next start.
 */
/** Options of the commands that act through the running server's admin API. */
const ADMIN_OPTIONS = {
  'config-dir': { type: 'string', default: '.' },
  url: { type: 'string' },
  'token-env': { type: 'string' },
} as const;

/**
 * Where the running server's admin API is and the token to use: --url, else `server.http` of
 * the configuration; the variable --token-env names, else `server.admin.tokenEnv`, else
 * CARERELAY_ADMIN_TOKEN. An exit code when the configuration cannot be read.
 */
async function adminApi(values: { 'config-dir'?: unknown; url?: unknown; 'token-env'?: unknown }): Promise<{ base: string; token: string | undefined } | number> {
  let base = values.url as string | undefined;
  let tokenEnv = values['token-env'] as string | undefined;
  if (base === undefined || tokenEnv === undefined) {
    const { loadConfig } = await import('./config/load.ts');
    try {
      const plan = await loadConfig({ configDir: path.resolve(values['config-dir'] as string), env: process.env, checkSecrets: false });
      const { host, port } = plan.server.http;
      // A listener on every address is reached on loopback from here.
      base ??= `http://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host}:${port}`;
      tokenEnv ??= plan.server.admin.tokenEnv;
    } catch (error) {
      if (error instanceof ConfigError) return reportConfigError(error);
      throw error;
    }
  }
  return { base, token: process.env[tokenEnv ?? 'CARERELAY_ADMIN_TOKEN'] };
}

async function cmdAttempt(kind: 'reprocess' | 'release', args: string[]): Promise<number> {
  const { values, positionals } = parse(args, ADMIN_OPTIONS);
  if (positionals.length === 0) return fail(`${kind} needs at least one message ID (see GET /api/messages)`);
  const api = await adminApi(values);
  if (typeof api === 'number') return api;
  const { base, token } = api;
  let failures = 0;
  for (const id of positionals) {
    let res: Response;
    try {
      res = await fetch(new URL(`/api/messages/${encodeURIComponent(id)}/${kind}`, base), {
        method: 'POST',
        headers: token ? { authorization: `Bearer ${token}` } : {},
      });
    } catch (error) {
      process.stderr.write(`carerelay: cannot reach the admin API at ${base}: ${(error as Error).message} (is CareRelay running? --url sets where)\n`);
      return 1;
    }
    const body = (await res.json().catch(() => ({}))) as { id?: string; status?: string; ackCode?: string; detail?: string; title?: string };
    if (res.status === 201) {
      process.stdout.write(`message ${id} ${kind === 'reprocess' ? 'reprocessed' : 'released'} as message ${body.id}: ${body.status}, ACK ${body.ackCode}\n`);
    } else {
      process.stderr.write(`message ${id}: not ${kind === 'reprocess' ? 'reprocessed' : 'released'} (${res.status}): ${body.detail ?? body.title ?? res.statusText}\n`);
      failures++;
    }
  }
  return failures === 0 ? 0 : 1;
}

/**
 * `deliveries replay ID… | --status S --output X --rule R --since T --limit N`: runs failed (or
 * review) deliveries once more through the running server (POST /api/deliveries/replay), with
 * the same idempotency key; audited under the token's name.
 */
async function cmdDeliveries(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const usage = 'usage: carerelay deliveries replay ID... | --status failed|review [--output NAME] [--rule ID] [--since INSTANT] [--limit N]';
  if (sub !== 'replay') return fail(usage);
  const { values, positionals } = parse(rest, {
    ...ADMIN_OPTIONS,
    status: { type: 'string' },
    output: { type: 'string' },
    rule: { type: 'string' },
    since: { type: 'string' },
    limit: { type: 'string' },
  });
  const filter = { status: values.status, output: values.output, rule: values.rule, since: values.since, limit: values.limit };
  const filtered = Object.values(filter).some((v) => v !== undefined);
  if (positionals.length > 0 && filtered) return fail(`give delivery IDs or a filter, not both\n${usage}`);
  if (positionals.length === 0 && !filtered) return fail(`give delivery IDs (see GET /api/deliveries?status=failed) or a filter such as --status failed\n${usage}`);
  let limit: number | undefined;
  if (values.limit !== undefined) {
    limit = Number(values.limit);
    if (!Number.isInteger(limit)) return fail('--limit must be a whole number between 1 and 1000');
  }
  const body = positionals.length > 0 ? { ids: positionals } : { ...filter, ...(limit !== undefined ? { limit } : {}) };
  const api = await adminApi(values);
  if (typeof api === 'number') return api;
  let res: Response;
  try {
    res = await fetch(new URL('/api/deliveries/replay', api.base), {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(api.token ? { authorization: `Bearer ${api.token}` } : {}) },
      body: JSON.stringify(body),
    });
  } catch (error) {
    process.stderr.write(`carerelay: cannot reach the admin API at ${api.base}: ${(error as Error).message} (is CareRelay running? --url sets where)\n`);
    return 1;
  }
  const answer = (await res.json().catch(() => ({}))) as {
    replayed?: Array<{ id: string; status: string; reason?: string }>;
    refused?: Array<{ id: string; reason: string }>;
    more?: boolean;
    detail?: string;
    title?: string;
  };
  if (res.status !== 200) {
    process.stderr.write(`carerelay: replay refused (${res.status}): ${answer.detail ?? answer.title ?? res.statusText}\n`);
    return 1;
  }
  for (const r of answer.replayed ?? []) process.stdout.write(`delivery ${r.id} replayed (was ${r.status}${r.reason ? `: ${r.reason}` : ''})\n`);
  for (const r of answer.refused ?? []) process.stderr.write(`delivery ${r.id}: not replayed (${r.reason})\n`);
  if ((answer.replayed ?? []).length === 0 && (answer.refused ?? []).length === 0) process.stdout.write('no delivery matches\n');
  if (answer.more) process.stdout.write('more deliveries match: run the command again for the next ones\n');
  return (answer.refused ?? []).length === 0 ? 0 : 1;
}

async function cmdFhir(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'subscribe') return fail('usage: carerelay fhir subscribe --input NAME --endpoint URL [--config-dir DIR]');
  const { values } = parse(rest, {
    input: { type: 'string' },
    endpoint: { type: 'string' },
    'config-dir': { type: 'string', default: '.' },
  });
  if (values.input === undefined) return fail('fhir subscribe needs --input NAME (a fhir-rest-hook input)');
  if (values.endpoint === undefined) {
    return fail('fhir subscribe needs --endpoint URL: the public base URL the FHIR server reaches CareRelay at');
  }
  const { fhirSubscribe } = await import('./workers/fhir-subscribe.ts');
  try {
    const outcomes = await fhirSubscribe({
      configDir: path.resolve(values['config-dir'] as string),
      env: process.env,
      input: values.input as string,
      endpointBaseUrl: values.endpoint as string,
    });
    // Every subscription is reported, done or not; exit 1 when any failed.
    for (const o of outcomes) (o.ok ? process.stdout : process.stderr).write(`${o.text}\n`);
    return outcomes.every((o) => o.ok) ? 0 : 1;
  } catch (error) {
    if (error instanceof ConfigError) return reportConfigError(error);
    process.stderr.write(`carerelay: fhir subscribe failed: ${(error as Error).message}\n`);
    return 1;
  }
}

async function cmdStart(args: string[]): Promise<number> {
  const { values } = parse(args, {
    'config-dir': { type: 'string', default: '.' },
    role: { type: 'string', default: 'all' },
    processes: { type: 'string', default: '1' },
  });
  const { ROLES } = await import('./workers/runtime.ts');
  const role = values.role as string;
  if (!(ROLES as readonly string[]).includes(role)) return fail(`--role ${role}: expected one of ${ROLES.join(', ')}`);
  const processes = Number(values.processes);
  if (!Number.isInteger(processes) || processes < 1 || processes > 256) return fail(`--processes ${values.processes as string}: expected a whole number from 1 to 256`);
  const configDir = path.resolve(values['config-dir'] as string);
  if (processes > 1) {
    // Checked once here, so a configuration error is reported once and nothing starts.
    const { loadConfig } = await import('./config/load.ts');
    try {
      const plan = await loadConfig({ configDir, env: process.env });
      if (plan.server.queue.type !== 'bullmq') return fail('--processes N needs the queue on Redis: set server.queue type: bullmq (the embedded queue serves one process)');
    } catch (error) {
      if (error instanceof ConfigError) return reportConfigError(error, '; nothing was started');
      throw error;
    }
    const { runProcesses } = await import('./processes.ts');
    const { createLogger } = await import('./log.ts');
    return runProcesses({ count: processes, args: ['start', '--config-dir', configDir, '--role', role], log: createLogger() });
  }
  const { startCarerelay } = await import('./main.ts');
  try {
    const running = await startCarerelay({
      configDir,
      env: process.env,
      handleSignals: true,
      role: role as (typeof ROLES)[number],
    });
    await running.stopped;
    // One of `--processes N`: the channel to the supervising process would keep it alive.
    if (process.connected) process.disconnect();
    return 0;
  } catch (error) {
    if (error instanceof ConfigError) return reportConfigError(error, '; nothing was started');
    process.stderr.write(`carerelay: ${(error as Error).message}\n`);
    return 1;
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'start':
        return await cmdStart(rest);
      case 'validate':
        return await cmdValidate(rest);
      case 'normalize':
        return await cmdNormalize(rest);
      case 'send':
        return await cmdSend(rest);
      case 'test':
        return await cmdTest(rest);
      case 'replay':
        return await cmdReplay(rest);
      case 'outbox':
        return await cmdOutbox(rest);
      case 'reprocess':
      case 'release':
        return await cmdAttempt(command, rest);
      case 'deliveries':
        return await cmdDeliveries(rest);
      case 'fhir':
        return await cmdFhir(rest);
      case 'migrate':
        return await (await import('./cli-store.ts')).cmdMigrate(rest);
      case 'export':
        return await (await import('./cli-store.ts')).cmdExport(rest);
      case 'import':
        return await (await import('./cli-store.ts')).cmdImport(rest);
      case 'prune':
        return await (await import('./cli-prune.ts')).cmdPrune(rest);
      case 'consent':
      case 'patient':
        return await (await import('./cli-consent.ts')).cmdConsent(command, rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        return fail(`unknown command "${command}"\n\n${USAGE}`);
    }
  } catch (error) {
    if (error instanceof TypeError && 'code' in error && String((error as { code: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      return fail(`${error.message}\n\n${USAGE}`);
    }
    throw error;
  }
}
