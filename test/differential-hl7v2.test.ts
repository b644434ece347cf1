// Differential test: CareRelay's HL7v2 parser against node-hl7-client (v3), the reference.
//
// Every message file of the sample corpus (fixtures/corpus/hl7v2/**/*.hl7) and of
// fixtures/hl7v2/**/*.hl7 (globbed when the test runs) is parsed by both. For every field the
// normalizer reads (FIELDS), every repetition, component and sub-component of the first
// occurrence of its segment is compared after unescaping. Where the parsers legitimately
// differ, the difference is named in KNOWN_DIFFERENCES with its reason; anything else fails.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Batch, FileBatch, Message, type HL7Node } from 'node-hl7-client';
import { afterAll, describe, expect, it } from 'vitest';
import { unescapeHl7 } from '../src/hl7v2/escape.ts';
import {
  Hl7ParseError,
  Hl7ParseErrorCode,
  parseHl7,
  parseHl7Batch,
  type Hl7Delimiters,
  type Hl7Message,
} from '../src/hl7v2/parse.ts';

const REPO = fileURLToPath(new URL('..', import.meta.url));
// Public sample messages from other projects, with their licences: fixtures/corpus/SOURCES.md.
const CORPUS_DIR = path.join(REPO, 'fixtures/corpus/hl7v2');
const FIXTURES_DIR = path.join(REPO, 'fixtures/hl7v2');
/** The corpus held 23 message files when this test was written; fewer means the glob broke. */
const MIN_CORPUS_FILES = 23;

/** Fields the normalizer reads ([segment, field]); all repetitions/components are compared. */
const FIELDS: ReadonlyArray<readonly [string, number]> = [
  ['MSH', 3], ['MSH', 4], ['MSH', 7], ['MSH', 9], ['MSH', 10], ['MSH', 11], ['MSH', 12], ['MSH', 15], ['MSH', 16], ['MSH', 18],
  ['EVN', 1], ['EVN', 2], ['EVN', 6],
  ['PID', 2], ['PID', 3], ['PID', 4], ['PID', 5], ['PID', 7], ['PID', 8], ['PID', 11], ['PID', 13], ['PID', 14],
  ['PID', 15], ['PID', 29], ['PID', 30],
  ['PD1', 11], ['PD1', 12], ['PD1', 13],
  ['PV1', 2], ['PV1', 3], ['PV1', 7], ['PV1', 8], ['PV1', 17], ['PV1', 19], ['PV1', 36], ['PV1', 44], ['PV1', 45],
  ['PV2', 21], ['PV2', 22],
  ['MRG', 1],
  ['SCH', 1], ['SCH', 2], ['SCH', 6], ['SCH', 7], ['SCH', 8], ['SCH', 9], ['SCH', 10], ['SCH', 11], ['SCH', 16], ['SCH', 25],
  ['TQ1', 7], ['TQ1', 8],
  ['AIS', 3], ['AIS', 4], ['AIS', 7], ['AIS', 8], ['AIS', 10],
  ['AIL', 3], ['AIL', 6], ['AIL', 12],
  ['AIP', 3], ['AIP', 6], ['AIP', 12],
  ['NTE', 3],
];

/**
 * Documented differences between the parsers. Each is checked precisely: a value may differ
 * only inside the escape sequences of that kind (each sequence is decoded by both libraries
 * on its own and compared), or, for segment-trim, only by the trailing whitespace of the
 * segment's last field. The unit tests in src/hl7v2/*.test.ts pin CareRelay's side.
 */
const KnownDifference = {
  /** HL7 v2 §2.7.4: \.br\ is a line break. node-hl7-client returns it literally; CareRelay gives "\n". */
  LineBreak: 'escape-.br',
  /** Other formatting commands (\.sp\, \.in\, \.fi\ …) carry no text in CareRelay; node-hl7-client keeps them literally. */
  FormattingCommand: 'escape-formatting',
  /** v2.7 \P\ (truncation character): CareRelay decodes it, node-hl7-client keeps it literally. */
  Truncation: 'escape-P',
  /** \Xhh…\ runs of several bytes: CareRelay reads valid UTF-8 as UTF-8, node-hl7-client maps each byte to one char (Latin-1). */
  HexMultiByte: 'escape-X-utf8',
  /** Malformed \X…\ (odd or non-hex digits): CareRelay keeps it literally, node-hl7-client emits NUL/garbage chars. */
  HexMalformed: 'escape-X-malformed',
  /** Sequences such as \Foo\: node-hl7-client switches on the first letter only (\Foo\ → "|"); CareRelay keeps unknown sequences literally. */
  FirstLetterOnly: 'escape-first-letter',
  /** node-hl7-client trims every segment, so trailing whitespace of a segment's last field is lost; CareRelay keeps the bytes. */
  SegmentTrim: 'segment-trim',
} as const;
type KnownDifference = (typeof KnownDifference)[keyof typeof KnownDifference];

/** Input adaptations: the reference gets a slightly different text, for the reason given. */
const Adaptation = {
  /**
   * node-hl7-client splits segments on CR if the text holds any CR, else on LF; a message that
   * mixes CR with bare LF (accepted by CareRelay, docs/hl7-fhir.md "HL7v2 encoding") is handed to it
   * with every break turned into CR.
   */
  MixedLineEnds: 'mixed-line-ends-normalized',
  /** node-hl7-client takes text, not bytes: it gets the text CareRelay decoded per MSH-18 (charset.test.ts covers decoding). */
  DecodedText: 'decoded-text',
} as const;
type Adaptation = (typeof Adaptation)[keyof typeof Adaptation];

/** Parse errors CareRelay raises on input node-hl7-client accepts without checking. */
const STRICTER_REJECTIONS: ReadonlySet<Hl7ParseErrorCode> = new Set([
  // node-hl7-client does not read MSH-18.
  Hl7ParseErrorCode.UnknownCharset,
  // node-hl7-client takes MSH-2 as given (missing characters fall back to defaults).
  Hl7ParseErrorCode.BadDelimiters,
]);

/**
 * Files node-hl7-client cannot parse at all, with what CareRelay must give instead
 * (checked separately). Keyed by path relative to the corpus or fixtures folder.
 */
const REFERENCE_CANNOT_PARSE: Readonly<Record<string, (messages: Hl7Message[]) => void>> = {};

// ---------------------------------------------------------------------------------------

type Tree = string[][][]; // repetitions → components → sub-components

function listMessageFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return (readdirSync(dir, { recursive: true }) as string[])
    .filter((f) => f.endsWith('.hl7'))
    .map((f) => f.split(path.sep).join('/'))
    .sort();
}

function oursTree(msg: Hl7Message, seg: string, field: number): Tree {
  const s = msg.segment(seg);
  if (s === undefined) return [];
  const d = msg.delimiters;
  return s.repetitions(field).map((rep) => {
    const comps = rep.raw.split(d.component).length;
    const out: string[][] = [];
    for (let c = 1; c <= comps; c++) {
      const subs = rep.rawComponent(c).split(d.subcomponent).length;
      const values: string[] = [];
      for (let sub = 1; sub <= subs; sub++) values.push(rep.get(c, sub));
      out.push(values);
    }
    return out;
  });
}

function oursRawTree(msg: Hl7Message, seg: string, field: number): Tree {
  const s = msg.segment(seg);
  if (s === undefined) return [];
  const d = msg.delimiters;
  return s.repetitions(field).map((rep) => rep.raw.split(d.component).map((c) => c.split(d.subcomponent)));
}

function theirsTree(msg: Message, seg: string, field: number): Tree {
  // node-hl7-client: a field node's children are repetitions, then components, then
  // sub-components; an empty node has no children (read as one empty value).
  const children = (n: HL7Node): HL7Node[] => n.toArray();
  return children(msg.get(`${seg}.${field}`)).map((rep) => {
    const comps = children(rep);
    if (comps.length === 0) return [['']];
    return comps.map((comp) => {
      const subs = children(comp);
      return subs.length === 0 ? [''] : subs.map((sub) => sub.toString());
    });
  });
}

/** Splits a raw value into plain text and escape sequences, as both parsers tokenize them. */
function escapePieces(raw: string, esc: string): string[] {
  const pieces: string[] = [];
  let i = 0;
  while (i < raw.length) {
    const start = raw.indexOf(esc, i);
    const end = start === -1 ? -1 : raw.indexOf(esc, start + 1);
    if (start === -1 || end === -1) {
      pieces.push(raw.slice(i));
      break;
    }
    if (start > i) pieces.push(raw.slice(i, start));
    pieces.push(raw.slice(start, end + 1));
    i = end + 1;
  }
  return pieces;
}

function classifySequence(seq: string): KnownDifference | undefined {
  const body = seq.slice(1, -1);
  if (body === '.br') return KnownDifference.LineBreak;
  if (body.startsWith('.')) return KnownDifference.FormattingCommand;
  if (body === 'P') return KnownDifference.Truncation;
  if (body.startsWith('X')) {
    return /^X(?:[0-9A-Fa-f]{2}){2,}$/.test(body) ? KnownDifference.HexMultiByte : KnownDifference.HexMalformed;
  }
  if (body.length > 1 && 'FSTRECHMNZ'.includes(body.charAt(0))) return KnownDifference.FirstLetterOnly;
  return undefined;
}

/** Why `ours` and `theirs` legitimately differ for the raw leaf `raw`, or undefined when they must not. */
function explainDifference(
  raw: string,
  ours: string,
  theirs: string,
  d: Hl7Delimiters,
  ref: Message,
  lastLeafOfSegment: boolean,
): KnownDifference[] | undefined {
  const reasons = new Set<KnownDifference>();
  let refRaw = raw;
  if (lastLeafOfSegment && raw.trimEnd() !== raw) {
    refRaw = raw.trimEnd();
    reasons.add(KnownDifference.SegmentTrim);
  }
  // The reference's value must be its own unescape of the (trimmed) raw text…
  if (ref.unescape(refRaw) !== theirs) return undefined;
  // …and each escape sequence decoded alone must agree, except for the documented kinds.
  let oursRebuilt = '';
  for (const piece of escapePieces(refRaw, d.escape)) {
    const o = unescapeHl7(piece, d);
    const t = ref.unescape(piece);
    oursRebuilt += o;
    if (o === t) continue;
    const kind = piece.startsWith(d.escape) ? classifySequence(piece) : undefined;
    if (kind === undefined) return undefined;
    reasons.add(kind);
  }
  const oursExpected = reasons.has(KnownDifference.SegmentTrim) ? unescapeHl7(raw, d) : oursRebuilt;
  return oursExpected === ours ? [...reasons] : undefined;
}

interface FileReport {
  file: string;
  outcome: 'compared' | 'both-reject' | 'stricter-reject' | 'reference-cannot-parse';
  messages: number;
  leaves: number;
  differences: Partial<Record<KnownDifference, number>>;
  adaptations: Adaptation[];
  note?: string;
}

const reports: FileReport[] = [];

function referenceMessages(text: string): Message[] {
  if (text.startsWith('FHS')) return new FileBatch({ text }).messages();
  if (text.startsWith('BHS')) return new Batch({ text }).messages();
  return [new Message({ text })];
}

function compareMessage(ours: Hl7Message, ref: Message, report: FileReport, where: string): void {
  const d = ours.delimiters;
  const mismatches: string[] = [];
  for (const [seg, field] of FIELDS) {
    const label = `${where} ${seg}-${field}`;
    const o = oursTree(ours, seg, field);
    const raw = oursRawTree(ours, seg, field);
    const t = theirsTree(ref, seg, field);
    const segment = ours.segment(seg);
    const isLastField = segment !== undefined && segment.fieldCount === field;
    if (o.length !== t.length) {
      // A whitespace-only last field disappears with node-hl7-client's segment trim.
      if (isLastField && t.length === 0 && segment.rawField(field).trim() === '') {
        report.differences[KnownDifference.SegmentTrim] = (report.differences[KnownDifference.SegmentTrim] ?? 0) + 1;
        continue;
      }
      mismatches.push(`${label}: ${o.length} repetitions vs ${t.length} in node-hl7-client`);
      continue;
    }
    for (let r = 0; r < o.length; r++) {
      if (o[r]!.length !== t[r]!.length) {
        mismatches.push(`${label}[${r + 1}]: ${o[r]!.length} components vs ${t[r]!.length}`);
        continue;
      }
      for (let c = 0; c < o[r]!.length; c++) {
        if (o[r]![c]!.length !== t[r]![c]!.length) {
          mismatches.push(`${label}[${r + 1}].${c + 1}: ${o[r]![c]!.length} sub-components vs ${t[r]![c]!.length}`);
          continue;
        }
        for (let s = 0; s < o[r]![c]!.length; s++) {
          report.leaves++;
          const ov = o[r]![c]![s]!;
          const tv = t[r]![c]![s]!;
          if (ov === tv) continue;
          const last = isLastField && r === o.length - 1 && c === o[r]!.length - 1 && s === o[r]![c]!.length - 1;
          const why = explainDifference(raw[r]![c]![s]!, ov, tv, d, ref, last);
          if (why === undefined) {
            mismatches.push(`${label}[${r + 1}].${c + 1}.${s + 1}: CareRelay ${JSON.stringify(ov)} vs node-hl7-client ${JSON.stringify(tv)}`);
          } else {
            for (const k of why) report.differences[k] = (report.differences[k] ?? 0) + 1;
          }
        }
      }
    }
  }
  expect(mismatches, `unexplained differences in ${where}`).toEqual([]);
}

function runFile(root: string, rel: string): void {
  runBytes(rel, readFileSync(path.join(root, rel)));
}

function runBytes(rel: string, bytes: Buffer): FileReport {
  const report: FileReport = { file: rel, outcome: 'compared', messages: 0, leaves: 0, differences: {}, adaptations: [] };
  reports.push(report);

  let ours: Hl7Message[];
  try {
    ours = parseHl7Batch(bytes);
  } catch (err) {
    if (!(err instanceof Hl7ParseError)) throw err;
    expect(Object.values(Hl7ParseErrorCode)).toContain(err.code);
    // CareRelay rejects it: the reference must reject it too, unless CareRelay is
    // documented as stricter for that reason.
    let refAccepts = false;
    try {
      const refs = referenceMessages(bytes.toString('latin1').trim());
      refs.forEach((m) => m.get('MSH.10').toString());
      refAccepts = refs.length > 0;
    } catch {
      refAccepts = false;
    }
    report.note = err.code;
    if (refAccepts) {
      expect(STRICTER_REJECTIONS.has(err.code), `${rel}: CareRelay rejects (${err.code}) what node-hl7-client accepts`).toBe(true);
      report.outcome = 'stricter-reject';
    } else {
      report.outcome = 'both-reject';
    }
    return report;
  }
  report.messages = ours.length;
  expect(ours.length).toBeGreaterThan(0);
  report.adaptations.push(Adaptation.DecodedText);

  // The reference gets the decoded text; for a batch, CareRelay's per-message texts
  // are compared against the reference's batch split.
  const fullText = ours.length === 1 ? ours[0]!.text : bytesToText(bytes, ours[0]!.charset);
  let refText = fullText;
  if (/\r(?!\n)|\r\n/.test(fullText) && /(?<!\r)\n/.test(fullText)) {
    refText = fullText.replace(/\r\n|\n/g, '\r');
    report.adaptations.push(Adaptation.MixedLineEnds);
  }

  let refs: Message[];
  try {
    refs = referenceMessages(refText.replace(/^\uFEFF/, '').trimStart());
    // node-hl7-client parses lazily: touch every segment so a failure shows here.
    for (const m of refs) m.get('MSH.10').toString();
  } catch (err) {
    report.outcome = 'reference-cannot-parse';
    report.note = (err as Error).message;
    const check = REFERENCE_CANNOT_PARSE[rel];
    expect(check, `node-hl7-client cannot parse ${rel} (${report.note}); add its expected CareRelay result to REFERENCE_CANNOT_PARSE`).toBeDefined();
    check!(ours);
    return report;
  }
  expect(refs.length, `${rel}: message count`).toBe(ours.length);
  ours.forEach((m, i) => compareMessage(m, refs[i]!, report, ours.length === 1 ? rel : `${rel}#${i + 1}`));
  return report;
}

function bytesToText(bytes: Buffer, charset: string): string {
  switch (charset) {
    case 'ASCII':
    case '8859/1':
      return bytes.toString('latin1');
    case 'UTF-8':
    case 'UNICODE UTF-8':
      return bytes.toString('utf8');
    default:
      return new TextDecoder(`iso-8859-${charset.slice(5)}`).decode(bytes);
  }
}

// ---------------------------------------------------------------------------------------

const corpusFiles = listMessageFiles(CORPUS_DIR);
const fixtureFiles = listMessageFiles(FIXTURES_DIR);

describe('differential: CareRelay HL7v2 parser vs node-hl7-client', () => {
  it(`finds the sample corpus (${CORPUS_DIR})`, () => {
    expect(corpusFiles.length).toBeGreaterThanOrEqual(MIN_CORPUS_FILES);
  });

  describe('fixtures/corpus/hl7v2', () => {
    it.each(corpusFiles)('%s', (rel) => runFile(CORPUS_DIR, rel));
  });

  describe.skipIf(fixtureFiles.length === 0)('fixtures/hl7v2', () => {
    it.each(fixtureFiles)('%s', (rel) => runFile(FIXTURES_DIR, rel));
  });

  it('compares real values on the corpus (not only empty fields)', () => {
    const corpus = reports.filter((r) => corpusFiles.includes(r.file) && r.outcome === 'compared');
    expect(corpus.length).toBe(corpusFiles.length);
    // Every corpus file has a full MSH (adt-example.hl7 is nothing else: its segments are
    // space-separated, so both parsers see one long MSH); all others carry PID and more.
    for (const r of corpus) expect(r.leaves, r.file).toBeGreaterThanOrEqual(10);
    expect(corpus.reduce((n, r) => n + r.leaves, 0)).toBeGreaterThan(40 * corpusFiles.length);
    // The corpus needs no allow-list entry: both parsers agree on every compared value.
    expect(corpus.filter((r) => Object.keys(r.differences).length > 0).map((r) => r.file)).toEqual([]);
  });
});

// Shapes the corpus lacks, run through the same comparison as the files.
describe('differential: synthetic messages', () => {
  const msh = (id: string, extra = ''): string => `MSH|^~\\&|APP|FAC|RCV|RFAC|20240102030405+0100||ADT^A01^ADT_A01|${id}|P|2.5.1${extra}`;
  const body = [
    'EVN|A01|20240102030000||||20240102025900',
    'PID|1|OLD1|MRN1^^^HOSP&1.2.3&ISO^MR~SSN9^^^SSA^SS||DOE^JANE^Q^^DR~ALIAS^JJ||19800101|F|||1 MAIN ST&Apt 2^^TOWN||^PRN^PH^^1^555^1234567~^NET^Internet^jane@example.org|^WPN^CP^^^555^7654321^^^^^5557654321|fr||||||||||||||20240101|Y',
    'PD1|||||||||||02^Reminder^HL70215|Y|20240101',
    'PV1|1|I|WARD^101^A^HOSP||||1234^SMITH^JOHN^^^DR||||||||||||V123|||||||||||||||||01||||||||20240102030000|20240103040000',
    'PV2|||||||||||||||||||||Y',
  ];

  it.each([
    ['CR', '\r'],
    ['LF', '\n'],
    ['CRLF', '\r\n'],
  ])('%s-separated ADT', (_label, eol) => {
    const r = runBytes(`synthetic-${_label}`, Buffer.from([msh('C1'), ...body].join(eol) + eol));
    expect(r.outcome).toBe('compared');
    expect(r.leaves).toBeGreaterThan(60);
  });

  it('mixed CR / LF / CRLF (reference input normalized, values compared)', () => {
    const text = `${msh('C2')}\r\n${body[0]}\n${body[1]}\r${body[2]}\n${body[3]}\r${body[4]}`;
    const r = runBytes('synthetic-mixed', Buffer.from(text));
    expect(r.adaptations).toContain(Adaptation.MixedLineEnds);
    expect(r.leaves).toBeGreaterThan(60);
  });

  it('custom delimiters', () => {
    const text = [
      'MSH#$%@!#APP#FAC#####ADT$A04#C3#P#2.5',
      'PID#1##A$$$AUTH!1.2!ISO%B$$$AUTH2##DOE$JOHN@F@X##19700101#M',
      'PV1#1#O#CLINIC$$$SITE',
    ].join('\r');
    expect(runBytes('synthetic-custom-delimiters', Buffer.from(text)).leaves).toBeGreaterThan(20);
  });

  it('escapes, including the documented differences', () => {
    const text = [
      'MSH|^~\\&#|APP|FAC|||20240101||ADT^A08|C4|P|2.7',
      'PID|1||ID\\F\\1\\S\\x\\T\\y\\R\\z\\E\\^^^A||O\\XC3A9\\l\\.br\\line^Ann\\H\\e\\N\\^\\.sp\\Q^\\P\\|',
      'NTE|1||before\\X0D\\after \\Zlocal\\ \\Q\\',
    ].join('\r');
    const r = runBytes('synthetic-escapes', Buffer.from(text));
    expect(Object.keys(r.differences).sort()).toEqual(
      [KnownDifference.FormattingCommand, KnownDifference.HexMultiByte, KnownDifference.LineBreak, KnownDifference.Truncation].sort(),
    );
  });

  it('trailing whitespace at a segment end', () => {
    const r = runBytes('synthetic-trailing-space', Buffer.from(`${msh('C5')}\rPID|1||ID1||DOE  \rPV1|1|I\rPV2|||||||||||||||||||||  `));
    expect(r.differences).toEqual({ [KnownDifference.SegmentTrim]: 2 });
  });

  it('Latin-1 bytes declared 8859/1', () => {
    const bytes = Buffer.concat([
      Buffer.from(`${msh('C6', '||||||8859/1')}\rPID|1||ID1||M`, 'latin1'),
      Buffer.from([0xfc, 0x6c, 0x6c, 0x65, 0x72]), // "üller"
      Buffer.from('^Ren\xe9e', 'latin1'),
    ]);
    const r = runBytes('synthetic-latin1', bytes);
    expect(r.adaptations).toContain(Adaptation.DecodedText);
    expect(parseHl7(bytes).get('PID-5.2')).toBe('Renée');
  });

  it('FHS/BHS batch of 3 messages', () => {
    const text = [
      'FHS|^~\\&|APP|FAC',
      'BHS|^~\\&|APP|FAC',
      msh('B1'),
      body[1],
      msh('B2'),
      body[1],
      body[3],
      msh('B3'),
      'PID|1||OTHER^^^X^MR||ROE^RICHARD',
      'BTS|3',
      'FTS|1',
    ].join('\r');
    const r = runBytes('synthetic-batch', Buffer.from(text));
    expect(r.messages).toBe(3);
    expect(r.outcome).toBe('compared');
  });

  it('an unknown MSH-18 charset: CareRelay rejects, the reference does not read MSH-18', () => {
    const r = runBytes('synthetic-unknown-charset', Buffer.from(`${msh('C7', '||||||KOI8-R')}\rPID|1||ID1`));
    expect(r.outcome).toBe('stricter-reject');
    expect(r.note).toBe(Hl7ParseErrorCode.UnknownCharset);
  });

  it('no MSH: both reject', () => {
    const r = runBytes('synthetic-no-msh', Buffer.from('PID|1||ID1\rPV1|1|I'));
    expect(r.outcome).toBe('both-reject');
    expect(r.note).toBe(Hl7ParseErrorCode.NoMsh);
  });
});

// Each known difference, shown on a minimal message, so a change in either parser shows up
// here first (and the allow-list never hides a difference that no longer exists).
describe('known differences, each demonstrated', () => {
  const HEADER = 'MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5';
  const cases: ReadonlyArray<[KnownDifference, string, string, string]> = [
    // [kind, raw NTE-3, CareRelay value, node-hl7-client value]
    [KnownDifference.LineBreak, 'a\\.br\\b', 'a\nb', 'a\\.br\\b'],
    [KnownDifference.FormattingCommand, 'a\\.sp\\b', 'ab', 'a\\.sp\\b'],
    [KnownDifference.Truncation, 'a\\P\\b', 'a#b', 'a\\P\\b'],
    [KnownDifference.HexMultiByte, '\\XC3A9\\', 'é', 'Ã©'],
    [KnownDifference.FirstLetterOnly, '\\Foo\\', '\\Foo\\', '|'],
  ];

  it.each(cases)('%s', (kind, raw, oursValue, theirsValue) => {
    const text = `${HEADER}\rNTE|1||${raw}`;
    const ours = parseHl7(text);
    const ref = new Message({ text });
    expect(ours.get('NTE-3')).toBe(oursValue);
    expect(ref.get('NTE.3').toString()).toBe(theirsValue);
    expect(explainDifference(raw, oursValue, theirsValue, ours.delimiters, ref, false)).toEqual([kind]);
  });

  it('segment-trim: trailing spaces of the last field', () => {
    const text = `${HEADER}\rPID|1||ID1  \rPV1|1|I`;
    const ours = parseHl7(text);
    const ref = new Message({ text });
    expect(ours.get('PID-3')).toBe('ID1  ');
    expect(ref.get('PID.3').toString()).toBe('ID1');
    expect(explainDifference('ID1  ', 'ID1  ', 'ID1', ours.delimiters, ref, true)).toEqual([KnownDifference.SegmentTrim]);
  });

  it('mixed CR/LF: the reference alone misses LF-separated segments', () => {
    const text = `${HEADER}\rEVN|A01|20240101\nPID|1||ID1`;
    expect(parseHl7(text).get('PID-3')).toBe('ID1');
    expect(new Message({ text }).get('PID.3').toString()).toBe('');
    expect(new Message({ text: text.replace(/\r\n|\n/g, '\r') }).get('PID.3').toString()).toBe('ID1');
  });

  it('refuses a difference outside the allow-list', () => {
    const ours = parseHl7(`${HEADER}\rNTE|1||x`);
    const ref = new Message({ text: `${HEADER}\rNTE|1||x` });
    // A plain-text difference is never explained.
    expect(explainDifference('x', 'x', 'y', ours.delimiters, ref, false)).toBeUndefined();
    // A standard escape decoded differently is never explained.
    expect(explainDifference('\\F\\', '|', '\\F\\', ours.delimiters, ref, false)).toBeUndefined();
  });
});

// CARERELAY_DIFF_REPORT=1 prints the record of where the parsers part ways (stderr).
afterAll(() => {
  // One line per file that needed an allow-list entry, an adaptation other than decoding,
  // or that a parser rejected: the record of where the parsers part ways.
  const notable = reports.filter(
    (r) => r.outcome !== 'compared' || Object.keys(r.differences).length > 0 || r.adaptations.length > 1,
  );
  if (notable.length > 0 && process.env.CARERELAY_DIFF_REPORT) {
    for (const r of notable) process.stderr.write(`${JSON.stringify(r)}\n`);
  }
});
