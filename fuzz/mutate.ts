// Seeded randomness and HL7v2 mutations for the fuzz harness (fuzz/harness.ts). Everything
// here is a pure function of the seed: a run can be replayed exactly with `--seed`.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

/** mulberry32: a small, fast, seedable PRNG (32-bit state); plenty for picking mutations. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** A child generator (for a worker), deterministic from this one. */
  fork(): Rng {
    return new Rng(Math.floor(this.next() * 4294967296));
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.next() * 256);
    return out;
  }

  /** Picks a key of `weights` with probability proportional to its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as Array<[K, number]>;
    const total = entries.reduce((sum, [, w]) => sum + w, 0);
    let r = this.next() * total;
    for (const [key, w] of entries) {
      r -= w;
      if (r < 0) return key;
    }
    return entries[entries.length - 1]![0];
  }
}

/** Every `.hl7` file under the given directories (sorted: the corpus order is part of the seed). */
export function loadCorpus(dirs: readonly string[]): Buffer[] {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const file = path.join(dir, name);
      if (statSync(file).isDirectory()) walk(file);
      else if (name.endsWith('.hl7')) files.push(file);
    }
  };
  for (const dir of dirs) walk(dir);
  return files.map((f) => readFileSync(f));
}

/** Field values that have broken parsers before: delimiters, escapes, controls, size, encodings. */
const NASTY_VALUES: readonly string[] = [
  '',
  '""',
  '|',
  '^^^^',
  '~~~',
  '\\',
  '\\E\\',
  '\\X0D0A\\',
  '\\X00\\',
  '\\X1C\\',
  '\\Xzz\\',
  '\\.br\\',
  '\\H\\bold\\N\\',
  '\\',
  '&&&',
  'Zoë Müller',
  '李小龍',
  '😀',
  '\u0000',
  '\u2028',
  '\t',
  'x'.repeat(300),
  '__proto__',
  '{{ patient.name }}',
  '<script>',
  '20300230',
  '99999999999999',
  '-1',
];

const CHARSETS: readonly string[] = ['', 'ASCII', '8859/1', '8859/15', 'UNICODE UTF-8', 'UTF-8', 'KLINGON', '8859/99', '~'];
const MESSAGE_TYPES: readonly string[] = ['SIU^S12', 'SIU^S14', 'SIU^S15', 'ADT^A01', 'ADT^A03', 'ADT^A08', 'ADT^A40', 'ORU^R01', 'ACK', '', '^', 'SIU', 'ADT^ZZZ'];
const ACK_CONDITIONS: readonly string[] = ['', 'AL', 'NE', 'ER', 'SU', 'XX'];

export const Mutation = {
  Field: 'field',
  DropSegment: 'drop_segment',
  DuplicateSegment: 'duplicate_segment',
  Truncate: 'truncate',
  FlipBytes: 'flip_bytes',
  Charset: 'charset',
  MessageType: 'message_type',
  Delimiters: 'delimiters',
  BlockCharacter: 'block_character',
  LineEndings: 'line_endings',
  EmptyControlId: 'empty_control_id',
  AckMode: 'ack_mode',
  HugeField: 'huge_field',
  None: 'none',
} as const;
export type Mutation = (typeof Mutation)[keyof typeof Mutation];

const MUTATION_WEIGHTS: Readonly<Record<Mutation, number>> = {
  field: 30,
  drop_segment: 6,
  duplicate_segment: 4,
  truncate: 5,
  flip_bytes: 5,
  charset: 6,
  message_type: 6,
  delimiters: 3,
  block_character: 3,
  line_endings: 4,
  empty_control_id: 2,
  ack_mode: 5,
  huge_field: 1,
  none: 20,
};

function splitSegments(text: string): string[] {
  return text.split(/\r\n|\r|\n/).filter((s) => s.length > 0);
}

/** Sets MSH-n (n ≥ 3) of a message whose MSH uses `|`; a shorter MSH is padded. */
export function setMshField(segments: string[], n: number, value: string): void {
  const msh = segments[0];
  if (msh === undefined || !msh.startsWith('MSH|')) return;
  const fields = msh.split('|');
  // fields[0] = "MSH", fields[1] = MSH-2; MSH-n is fields[n - 1].
  while (fields.length < n) fields.push('');
  fields[n - 1] = value;
  segments[0] = fields.join('|');
}

export interface Mutated {
  bytes: Buffer;
  mutation: Mutation;
  /** The MSH-10 written (before any mutation that may have changed it). */
  controlId: string;
}

/**
 * One corpus message, given the control id `controlId` (so each send is a new message), then
 * mutated once. The result is what a sender might put in a frame: valid, odd, or broken.
 */
export function mutateMessage(rng: Rng, original: Buffer, controlId: string): Mutated {
  const segments = splitSegments(original.toString('latin1'));
  setMshField(segments, 10, controlId);
  const mutation = rng.weighted(MUTATION_WEIGHTS);
  const join = (eol = '\r'): string => segments.join(eol) + eol;
  switch (mutation) {
    case Mutation.Field: {
      const index = rng.int(0, segments.length - 1);
      const fields = segments[index]!.split('|');
      const at = rng.int(index === 0 ? 2 : 1, Math.max(index === 0 ? 2 : 1, fields.length));
      // MSH-10 stays ours: the run must be able to find what it sent.
      if (!(index === 0 && at === 9)) {
        while (fields.length <= at) fields.push('');
        fields[at] = rng.pick(NASTY_VALUES);
        segments[index] = fields.join('|');
      }
      return { bytes: Buffer.from(join(), 'utf8'), mutation, controlId };
    }
    case Mutation.DropSegment:
      if (segments.length > 1) segments.splice(rng.int(1, segments.length - 1), 1);
      else segments.length = 0;
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    case Mutation.DuplicateSegment: {
      const index = rng.int(0, segments.length - 1);
      segments.splice(index, 0, segments[index]!);
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    }
    case Mutation.Truncate: {
      const bytes = Buffer.from(join(), 'latin1');
      return { bytes: bytes.subarray(0, rng.int(0, bytes.length)), mutation, controlId };
    }
    case Mutation.FlipBytes: {
      const bytes = Buffer.from(join(), 'latin1');
      for (let i = rng.int(1, 4); i > 0 && bytes.length > 0; i--) bytes[rng.int(0, bytes.length - 1)] = rng.int(0, 255);
      return { bytes, mutation, controlId };
    }
    case Mutation.Charset: {
      const charset = rng.pick(CHARSETS);
      setMshField(segments, 18, charset);
      // Sometimes the bytes match the declaration, sometimes not.
      const text = join();
      const encoding: BufferEncoding = rng.chance(0.5) ? 'latin1' : 'utf8';
      return { bytes: Buffer.from(text.replace('Doe', 'Zoë'), encoding), mutation, controlId };
    }
    case Mutation.MessageType:
      setMshField(segments, 9, rng.pick(MESSAGE_TYPES));
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    case Mutation.Delimiters: {
      const swap = rng.pick(['#', '!', '@', '\x1c', '\x0b', '||', '']);
      segments[0] = segments[0]!.replace('^~\\&', rng.chance(0.5) ? `${swap}~\\&` : swap);
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    }
    case Mutation.BlockCharacter: {
      const bytes = Buffer.from(join(), 'latin1');
      const at = rng.int(0, bytes.length);
      const block = Buffer.from([rng.chance(0.5) ? 0x1c : 0x0b]);
      return { bytes: Buffer.concat([bytes.subarray(0, at), block, bytes.subarray(at)]), mutation, controlId };
    }
    case Mutation.LineEndings:
      return { bytes: Buffer.from(join(rng.pick(['\n', '\r\n', '\n\r'])), 'latin1'), mutation, controlId };
    case Mutation.EmptyControlId:
      setMshField(segments, 10, '');
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId: '' };
    case Mutation.AckMode:
      setMshField(segments, 15, rng.pick(ACK_CONDITIONS));
      setMshField(segments, 16, rng.pick(ACK_CONDITIONS));
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    case Mutation.HugeField: {
      const index = rng.int(1, Math.max(1, segments.length - 1));
      if (segments[index] !== undefined) segments[index] += `|${'Z'.repeat(rng.int(10_000, 200_000))}`;
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    }
    case Mutation.None:
      return { bytes: Buffer.from(join(), 'latin1'), mutation, controlId };
    default:
      mutation satisfies never;
      throw new Error('unreachable');
  }
}
