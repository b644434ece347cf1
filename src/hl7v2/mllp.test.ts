import { describe, expect, it } from 'vitest';
import {
  CARRIAGE_RETURN,
  END_BLOCK,
  MllpFrameTooLargeError,
  FRAMER_INITIAL_CAPACITY,
  MllpFramer,
  START_BLOCK,
  encodeFrame,
} from './mllp.ts';

// Synthetic SIU^S12 (no real patient), CR segment ends, with a non-ASCII name to check
// that bytes pass through untouched.
const SIU = Buffer.from(
  [
    'MSH|^~\\&|EPIC|GHH|CARERELAY|GHH|20250301120000||SIU^S12|MSG00001|P|2.5.1|||AL|NE||UNICODE UTF-8',
    'SCH|A100^EPIC|F200^EPIC|||||ROUTINE|OFFICE|30|MIN|^^30^20250310090000^20250310093000',
    'PID|1||P123^^^GHH^MR||Müller^Zoë||19800101|F',
    'AIL|1||ROOM1^^^GHH',
    '',
  ].join('\r'),
  'utf8',
);

function msg(id: string): Buffer {
  return Buffer.from(`MSH|^~\\&|A|B|C|D|20250301||ADT^A08|${id}|P|2.5\rPID|1||${id}\r`);
}

describe('encodeFrame', () => {
  it('wraps the payload in SB … EB CR', () => {
    const frame = encodeFrame('MSH|x');
    expect(frame[0]).toBe(START_BLOCK);
    expect(frame.subarray(1, 6).toString()).toBe('MSH|x');
    expect([...frame.subarray(6)]).toEqual([END_BLOCK, CARRIAGE_RETURN]);
  });

  it('refuses a payload holding the end sequence, which would cut the frame', () => {
    expect(() => encodeFrame(Buffer.from([0x41, END_BLOCK, CARRIAGE_RETURN, 0x42]))).toThrow(/0x1C 0x0D at byte 1/);
  });

  it('allows a lone 0x1C, which the framer keeps as payload', () => {
    const payload = Buffer.from([0x41, END_BLOCK, 0x42, END_BLOCK]);
    expect(new MllpFramer().push(encodeFrame(payload))).toEqual([payload]);
  });
});

describe('MllpFramer', () => {
  it('gives exactly the message when the frame is split at every byte position', () => {
    const frame = encodeFrame(SIU);
    for (let cut = 0; cut <= frame.length; cut++) {
      const framer = new MllpFramer();
      const got = [...framer.push(frame.subarray(0, cut)), ...framer.push(frame.subarray(cut))];
      expect(got, `cut at ${cut}`).toEqual([SIU]);
      expect(framer.midFrame).toBe(false);
      expect(framer.noiseBytes).toBe(0);
    }
  });

  it('gives exactly the message when fed one byte at a time', () => {
    const framer = new MllpFramer();
    const got: Buffer[] = [];
    for (const byte of encodeFrame(SIU)) got.push(...framer.push(Buffer.from([byte])));
    expect(got).toEqual([SIU]);
  });

  it('splits several frames delivered in one chunk, in order', () => {
    const ids = Array.from({ length: 50 }, (_, i) => `ID${i}`);
    const chunk = Buffer.concat(ids.map((id) => encodeFrame(msg(id))));
    const got = new MllpFramer().push(chunk);
    expect(got.map((b) => b.toString())).toEqual(ids.map((id) => msg(id).toString()));
  });

  it('keeps the half frame of a frame-and-a-half for the next read', () => {
    const a = encodeFrame(msg('A'));
    const b = encodeFrame(msg('B'));
    const half = Math.floor(b.length / 2);
    const framer = new MllpFramer();
    expect(framer.push(Buffer.concat([a, b.subarray(0, half)]))).toEqual([msg('A')]);
    expect(framer.midFrame).toBe(true);
    expect(framer.bufferedBytes).toBe(half - 1);
    expect(framer.push(b.subarray(half))).toEqual([msg('B')]);
  });

  it('ends a frame whose 0x1C and 0x0D arrive in different reads', () => {
    const frame = encodeFrame(msg('A'));
    const framer = new MllpFramer();
    expect(framer.push(frame.subarray(0, -1))).toEqual([]);
    expect(framer.push(Buffer.concat([frame.subarray(-1), encodeFrame(msg('B'))]))).toEqual([msg('A'), msg('B')]);
  });

  it('keeps a 0x1C not followed by 0x0D as payload and keeps scanning (also across reads)', () => {
    const framer = new MllpFramer();
    expect(framer.push(Buffer.from([START_BLOCK, 0x41, END_BLOCK]))).toEqual([]);
    expect(framer.push(Buffer.from([0x42, END_BLOCK, 0x43, END_BLOCK]))).toEqual([]);
    expect(framer.push(Buffer.from([CARRIAGE_RETURN]))).toEqual([Buffer.from([0x41, END_BLOCK, 0x42, END_BLOCK, 0x43])]);
  });

  it('discards and counts noise bytes before 0x0B and between frames', () => {
    const framer = new MllpFramer();
    const got = framer.push(Buffer.concat([Buffer.from('\r\nxx'), encodeFrame(msg('A')), Buffer.from('\n'), encodeFrame(msg('B'))]));
    expect(got).toEqual([msg('A'), msg('B')]);
    expect(framer.noiseBytes).toBe(5);
    expect(framer.push(Buffer.from('garbage'))).toEqual([]);
    expect(framer.noiseBytes).toBe(12);
  });

  it('returns an empty payload for an empty frame', () => {
    expect(new MllpFramer().push(Buffer.from([START_BLOCK, END_BLOCK, CARRIAGE_RETURN]))).toEqual([Buffer.alloc(0)]);
  });

  it('accepts a frame of exactly maxFrameBytes, also when the end marker is split', () => {
    const payload = Buffer.alloc(100, 0x41);
    const frame = encodeFrame(payload);
    const framer = new MllpFramer({ maxFrameBytes: 100 });
    expect(framer.push(frame)).toEqual([payload]);
    expect(framer.push(frame.subarray(0, -1))).toEqual([]);
    expect(framer.push(frame.subarray(-1))).toEqual([payload]);
  });

  it('throws MllpFrameTooLargeError once the payload passes the limit, buffering nothing more', () => {
    const framer = new MllpFramer({ maxFrameBytes: 100 });
    expect(framer.push(Buffer.concat([Buffer.from([START_BLOCK]), Buffer.alloc(60, 0x41)]))).toEqual([]);
    expect(framer.bufferedBytes).toBe(60);
    let error: unknown;
    try {
      framer.push(Buffer.alloc(60, 0x41));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(MllpFrameTooLargeError);
    expect((error as MllpFrameTooLargeError).receivedBytes).toBe(120);
    expect((error as Error).message).toMatch(/limit of 100 bytes/);
    expect(framer.bufferedBytes).toBe(0);
    // The stream position is lost: the framer refuses further input.
    expect(() => framer.push(encodeFrame(msg('A')))).toThrow(MllpFrameTooLargeError);
  });

  it('detects an oversize frame that arrives complete in one chunk', () => {
    expect(() => new MllpFramer({ maxFrameBytes: 10 }).push(encodeFrame(Buffer.alloc(11, 0x41)))).toThrow(MllpFrameTooLargeError);
  });

  it('does not rescan buffered bytes: a 4 MiB frame in 1-KiB reads stays linear', () => {
    const payload = Buffer.alloc(4 * 1024 * 1024, 0x41);
    const frame = encodeFrame(payload);
    const framer = new MllpFramer();
    const got: Buffer[] = [];
    const started = process.hrtime.bigint();
    for (let i = 0; i < frame.length; i += 1024) got.push(...framer.push(frame.subarray(i, i + 1024)));
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    expect(got).toHaveLength(1);
    expect(got[0]!.equals(payload)).toBe(true);
    // 4,097 pushes; quadratic re-scanning or re-concatenation would copy ~8 GiB here.
    expect(ms).toBeLessThan(2000);
  });

  it('rejects a nonsensical limit with a clear message', () => {
    expect(() => new MllpFramer({ maxFrameBytes: 0 })).toThrow(/maxFrameBytes must be a positive whole number/);
  });

  it('holds one buffer of at most twice the bytes of a frame trickled one byte per read, never past the limit', () => {
    const framer = new MllpFramer({ maxFrameBytes: 100_000 });
    framer.push(Buffer.from([START_BLOCK]));
    expect(framer.retainedBytes).toBe(0);
    for (let i = 1; i <= 50_000; i++) {
      framer.push(Buffer.from([0x41]));
      expect(framer.retainedBytes).toBeLessThanOrEqual(Math.max(FRAMER_INITIAL_CAPACITY, 2 * framer.bufferedBytes));
    }
    expect(framer.bufferedBytes).toBe(50_000);
    for (let i = 0; i < 49_999; i++) framer.push(Buffer.from([0x41]));
    expect(framer.retainedBytes).toBeLessThanOrEqual(100_001);
    const [payload] = framer.push(Buffer.from([0x41, END_BLOCK, CARRIAGE_RETURN]));
    expect(payload!.length).toBe(100_000);
    // Between frames a connection holds nothing.
    expect(framer.retainedBytes).toBe(0);
  });

  it('copies what it keeps: a small tail of a large read does not keep the read alive', () => {
    const framer = new MllpFramer();
    const read = Buffer.concat([encodeFrame(msg('A')), Buffer.from([START_BLOCK, 0x42])]);
    framer.push(read);
    read.fill(0); // a reused read buffer must not change the frame in progress
    expect(framer.push(Buffer.from([END_BLOCK, CARRIAGE_RETURN]))).toEqual([Buffer.from('B')]);
  });
});
