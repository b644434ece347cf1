// HL7v2 parse benchmark: µs per message to parse a message AND read the ~60 values the
// normalizer reads (every PID-3/13/14 repetition included), for CareRelay's parser and for
// node-hl7-client (the reference of test/differential-hl7v2.test.ts), over the sample corpus
// (fixtures/corpus/hl7v2/**/*.hl7) repeated. Then parse + normalizeHl7 (goal ≤ 20 µs/message).
// Each measurement: a warm-up of WARMUP messages, then MEASURED messages, best of ROUNDS
// (one round for node-hl7-client, which needs about 2 minutes for 200,000 messages here).
// Run alone with `node --expose-gc --import tsx bench/parse.ts`, or through bench/run.ts.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Message } from 'node-hl7-client';
import { parseHl7, type Hl7Message } from '../src/hl7v2/parse.ts';

const WARMUP = 20_000;
const MEASURED = 200_000;
const ROUNDS = 3;

const REPO = fileURLToPath(new URL('..', import.meta.url));
const CORPUS_DIR = path.join(REPO, 'fixtures/corpus/hl7v2');
const NORMALIZE_MODULE = path.join(REPO, 'src/inputs/hl7v2/normalize.ts');

/** Single values the normalizer reads (first occurrence, first repetition). */
const PATHS = [
  'MSH-3.1', 'MSH-4.1', 'MSH-7', 'MSH-9.1', 'MSH-9.2', 'MSH-10', 'MSH-11', 'MSH-12', 'MSH-15', 'MSH-16', 'MSH-18',
  'EVN-2', 'EVN-6',
  'PID-2', 'PID-4', 'PID-5.1', 'PID-5.2', 'PID-5.3', 'PID-7', 'PID-8', 'PID-15', 'PID-29', 'PID-30',
  'PD1-11', 'PD1-12', 'PD1-13',
  'PV1-2', 'PV1-3.1', 'PV1-3.4', 'PV1-7.1', 'PV1-7.2', 'PV1-19', 'PV1-36', 'PV1-44', 'PV1-45',
  'PV2-21', 'PV2-22', 'MRG-1',
  'SCH-1', 'SCH-2', 'SCH-7', 'SCH-8', 'SCH-9', 'SCH-10', 'SCH-11.4', 'SCH-11.5', 'SCH-16', 'SCH-25',
  'TQ1-7', 'TQ1-8',
  'AIS-3', 'AIS-4', 'AIS-10', 'AIL-3', 'AIL-6', 'AIL-12', 'AIP-3', 'AIP-6', 'AIP-12',
] as const;
/** Repeated fields read in full: [field path, components read per repetition]. */
const REPEATED: ReadonlyArray<readonly [string, number, readonly number[]]> = [
  ['PID', 3, [1, 4, 5]], // CX.1 id, CX.4 authority, CX.5 type
  ['PID', 13, [1, 2, 3, 4, 5, 6, 7, 12]], // XTN
  ['PID', 14, [1, 2, 3, 4, 5, 6, 7, 12]],
];

const THEIR_PATHS = PATHS.map((p) => p.replace('-', '.'));

/** Reads every value with CareRelay's API; returns the total length (keeps the work live). */
function readOurs(msg: Hl7Message): number {
  let n = 0;
  for (const p of PATHS) n += msg.get(p).length;
  for (const [seg, field, comps] of REPEATED) {
    const s = msg.segment(seg);
    if (s === undefined) continue;
    for (const rep of s.repetitions(field)) for (const c of comps) n += rep.get(c).length;
  }
  return n;
}

function readTheirs(msg: Message): number {
  let n = 0;
  for (const p of THEIR_PATHS) n += msg.get(p).toString().length;
  for (const [seg, field, comps] of REPEATED) {
    for (const rep of msg.get(`${seg}.${field}`).toArray()) for (const c of comps) n += rep.get(c - 1).toString().length;
  }
  return n;
}

function loadCorpus(): Buffer[] {
  if (!existsSync(CORPUS_DIR)) throw new Error(`the sample corpus is missing at ${CORPUS_DIR}`);
  const files = (readdirSync(CORPUS_DIR, { recursive: true }) as string[]).filter((f) => f.endsWith('.hl7')).sort();
  if (files.length === 0) throw new Error(`no .hl7 file under ${CORPUS_DIR}`);
  return files.map((f) => readFileSync(path.join(CORPUS_DIR, f)));
}

/** Best-of-ROUNDS µs per message of `run(i)` over MEASURED calls, after WARMUP calls. */
function measure(count: number, run: (i: number) => number, rounds = ROUNDS): { us: number; check: number } {
  let check = 0;
  for (let i = 0; i < WARMUP; i++) check += run(i % count);
  let best = Infinity;
  for (let round = 0; round < rounds; round++) {
    (globalThis as { gc?: () => void }).gc?.();
    check = 0;
    const start = performance.now();
    for (let i = 0; i < MEASURED; i++) check += run(i % count);
    best = Math.min(best, performance.now() - start);
  }
  return { us: (best * 1_000) / MEASURED, check };
}

type NormalizeFn = (msg: Hl7Message, ctx: { receivedAt: string; timezone: string }) => { kind: string };

async function loadNormalize(): Promise<NormalizeFn | undefined> {
  if (!existsSync(NORMALIZE_MODULE)) return undefined;
  const mod = (await import(pathToFileURL(NORMALIZE_MODULE).href)) as { normalizeHl7?: NormalizeFn };
  return mod.normalizeHl7;
}

export async function benchParse(): Promise<Record<string, number>> {
  const bytes = loadCorpus();
  const texts = bytes.map((b) => parseHl7(b).text);
  const count = bytes.length;

  const fromBytes = measure(count, (i) => readOurs(parseHl7(bytes[i]!)));
  const fromText = measure(count, (i) => readOurs(parseHl7(texts[i]!)));
  const reference = measure(count, (i) => readTheirs(new Message({ text: texts[i]! })), 1);
  // Both read the same values on the corpus (test/differential-hl7v2.test.ts): a different
  // total means one of them skipped work.
  if (fromText.check !== reference.check) {
    throw new Error(`CareRelay read ${fromText.check} characters, node-hl7-client ${reference.check}: the readers differ`);
  }

  const figures: Record<string, number> = {
    hl7_messages_per_run: MEASURED,
    hl7_corpus_messages: count,
    hl7_parse_read_us_carerelay_bytes: round(fromBytes.us),
    hl7_parse_read_us_carerelay_text: round(fromText.us),
    hl7_parse_read_us_node_hl7_client: round(reference.us),
  };

  const normalize = await loadNormalize();
  if (normalize !== undefined) {
    const ctx = { receivedAt: '2024-01-01T00:00:00.000Z', timezone: 'Europe/Paris' };
    const normalized = measure(count, (i) => normalize(parseHl7(bytes[i]!), ctx).kind.length);
    figures.hl7_parse_normalize_us = round(normalized.us);
  }
  return figures;
}

function round(us: number): number {
  return Number(us.toFixed(2));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const figures = await benchParse();
  const rows: Array<[string, string]> = [
    ['CareRelay parseHl7(bytes) + read', `${figures.hl7_parse_read_us_carerelay_bytes} µs/msg`],
    ['CareRelay parseHl7(text) + read', `${figures.hl7_parse_read_us_carerelay_text} µs/msg`],
    ['node-hl7-client Message(text) + read', `${figures.hl7_parse_read_us_node_hl7_client} µs/msg`],
    [
      'CareRelay parseHl7(bytes) + normalizeHl7',
      figures.hl7_parse_normalize_us === undefined ? 'n/a (no normalize.ts)' : `${figures.hl7_parse_normalize_us} µs/msg (goal ≤ 20)`,
    ],
  ];
  console.log(`${figures.hl7_corpus_messages} corpus messages, ${MEASURED.toLocaleString('en')} messages per measurement, best of ${ROUNDS} (node-hl7-client: 1)`);
  for (const [name, value] of rows) console.log(`${name.padEnd(42)} ${value}`);
}
