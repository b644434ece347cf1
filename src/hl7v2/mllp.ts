// MLLP (Minimal Lower Layer Protocol) framing, release 2: HL7 v2.x Implementation Guide,
// Transport Specification: MLLP (Appendix C of v2.5+).
//
//   frame = <SB 0x0B> payload <EB 0x1C><CR 0x0D>
//
// Protocol code only: no sockets, no HL7 parsing. A TCP read may hold half a frame, several
// frames, or a frame split between EB and CR; bytes outside a frame are noise.
//
// Choices where the spec leaves room (documented because senders disagree):
// - An EB not immediately followed by CR does not end the frame: it is kept as payload and
//   scanning goes on ("the frame ends with <EB><CR>"). A sender that omits the CR therefore
//   never completes a frame and is cut by the size limit or the listener's idle timeout,
//   instead of having arbitrary bytes after EB taken as the start of its next message.
// - An SB inside a frame is payload, not a restart: restarting would silently drop the
//   bytes already received.
// - Bytes between frames (before SB) are discarded and counted as noise; a LF after the
//   closing CR, sent by some interfaces, is the common case.

export const START_BLOCK = 0x0b;
export const END_BLOCK = 0x1c;
export const CARRIAGE_RETURN = 0x0d;

/** Default largest accepted payload, in bytes (10 MiB): far above real ADT/SIU/ORU sizes. */
export const DEFAULT_MAX_FRAME_BYTES = 10 * 1024 * 1024;

/** A frame's payload grew past `maxFrameBytes` before its end marker arrived. */
export class MllpFrameTooLargeError extends Error {
  readonly code = 'mllp_frame_too_large';

  constructor(
    /** The configured limit, in bytes. */
    readonly maxFrameBytes: number,
    /** Payload bytes seen for the frame when the limit was crossed (at least limit + 1). */
    readonly receivedBytes: number,
  ) {
    super(
      `MLLP frame exceeds the limit of ${maxFrameBytes} bytes (${receivedBytes} bytes received before the end marker 0x1C 0x0D); ` +
        'raise maxFrameBytes if such messages are expected, or check that the sender ends frames with 0x1C 0x0D',
    );
    this.name = 'MllpFrameTooLargeError';
  }
}

/**
 * Wraps one message in an MLLP frame. A string is encoded as UTF-8; pass a Buffer for
 * messages in another MSH-18 character set.
 *
 * Throws a RangeError when the payload contains the end sequence 0x1C 0x0D, which would cut
 * the frame short at the receiver.
 */
export function encodeFrame(message: Buffer | string): Buffer {
  const payload = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
  let at = payload.indexOf(END_BLOCK);
  while (at !== -1) {
    if (payload[at + 1] === CARRIAGE_RETURN) {
      throw new RangeError(
        `MLLP payload contains the end-of-frame sequence 0x1C 0x0D at byte ${at}; ` +
          'remove the 0x1C (file separator) character from the message text before sending',
      );
    }
    at = payload.indexOf(END_BLOCK, at + 1);
  }
  const frame = Buffer.allocUnsafe(payload.length + 3);
  frame[0] = START_BLOCK;
  payload.copy(frame, 1);
  frame[payload.length + 1] = END_BLOCK;
  frame[payload.length + 2] = CARRIAGE_RETURN;
  return frame;
}

export interface MllpFramerOptions {
  /** Largest accepted payload in bytes (SB/EB/CR not counted). Default 10 MiB. */
  maxFrameBytes?: number;
}

/**
 * First capacity of the buffer a frame spanning several reads is copied into (bytes); it
 * doubles as the frame grows, so its capacity stays below twice the bytes held.
 */
export const FRAMER_INITIAL_CAPACITY = 4096;

/**
 * Incremental MLLP decoder: feed it socket chunks, get complete payloads back.
 *
 * Linear in the bytes pushed: each byte is scanned once (the scan position survives between
 * chunks). Memory is bounded by what is held, not by how it arrived: a frame that fits in
 * one read is returned as a view of that read (no copy); a frame spanning reads is copied
 * into one buffer owned by the framer, whose capacity doubles as needed (at most twice the
 * bytes held, never past the limit). Keeping each read as its own slice instead cost about
 * a hundred bytes of object overhead per read, so a sender trickling one byte per write made
 * the listener hold ~100 bytes per byte received (and a small slice of a large read kept
 * the whole read alive, uncounted).
 * After a MllpFrameTooLargeError the framer has dropped its buffer and refuses further
 * input: the stream position is lost and the connection must be closed.
 */
export class MllpFramer {
  readonly maxFrameBytes: number;
  private inFrame = false;
  /** The unfinished frame's bytes (owned copy), or undefined while none is held. */
  private buffer: Buffer | undefined;
  /** Bytes used in `buffer`. */
  private held = 0;
  /** The previous chunk ended with an EB inside a frame (held in `buffer`): CR may follow. */
  private endBlockPending = false;
  private failure: MllpFrameTooLargeError | undefined;
  private noise = 0;

  constructor(options: MllpFramerOptions = {}) {
    const max = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(`MllpFramer maxFrameBytes must be a positive whole number of bytes, got ${String(max)}`);
    }
    this.maxFrameBytes = max;
  }

  /** Bytes discarded so far because they arrived outside a frame (before an SB). */
  get noiseBytes(): number {
    return this.noise;
  }

  /** True while a frame has started (SB seen) and has not ended. */
  get midFrame(): boolean {
    return this.inFrame;
  }

  /** Payload bytes buffered for the unfinished frame. */
  get bufferedBytes(): number {
    return this.held;
  }

  /**
   * Memory the framer keeps for the unfinished frame, in bytes: the capacity of its one
   * buffer (0 between frames). At most max(FRAMER_INITIAL_CAPACITY, 2 × bufferedBytes) and
   * never more than maxFrameBytes + 1.
   */
  get retainedBytes(): number {
    return this.buffer === undefined ? 0 : this.buffer.length;
  }

  /**
   * Consumes one chunk and returns the payloads of the frames it completed, in order.
   * A payload may be a view into the pushed chunk (no copy when a frame fits in one read):
   * do not reuse or mutate chunks after pushing them.
   * Throws MllpFrameTooLargeError (carrying nothing of the payload) when the current frame
   * passes `maxFrameBytes`; frames completed earlier in the same chunk are then lost with
   * the connection, which the sender will retransmit since it got no ACK.
   */
  push(chunk: Buffer): Buffer[] {
    if (this.failure !== undefined) throw this.failure;
    const out: Buffer[] = [];
    let pos = 0;
    const len = chunk.length;

    if (this.endBlockPending && len > 0) {
      this.endBlockPending = false;
      if (chunk[0] === CARRIAGE_RETURN) {
        // EB was the last byte of the previous chunk and is in `buffer`: drop it.
        out.push(this.finish(null, 0, 0, 1));
        pos = 1;
      }
      // Otherwise the held EB is payload and scanning continues below.
    }

    while (pos < len) {
      if (!this.inFrame) {
        const start = chunk.indexOf(START_BLOCK, pos);
        if (start === -1) {
          this.noise += len - pos;
          break;
        }
        this.noise += start - pos;
        this.inFrame = true;
        pos = start + 1;
        continue;
      }

      // Inside a frame: find EB followed by CR. `segStart` is the first payload byte of this
      // chunk not yet stored; `scan` where the next EB search begins.
      const segStart = pos;
      let scan = pos;
      let ended = false;
      while (scan < len) {
        const eb = chunk.indexOf(END_BLOCK, scan);
        if (eb === -1) break;
        if (eb + 1 === len) {
          // EB is the chunk's last byte: keep it as payload for now and decide on the
          // next chunk (0x1C and 0x0D may arrive in different reads).
          this.store(chunk, segStart, len, 1);
          this.endBlockPending = true;
          return out;
        }
        if (chunk[eb + 1] === CARRIAGE_RETURN) {
          out.push(this.finish(chunk, segStart, eb, 0));
          pos = eb + 2;
          ended = true;
          break;
        }
        scan = eb + 1; // a lone EB is payload
      }
      if (!ended) {
        this.store(chunk, segStart, len);
        break;
      }
    }
    return out;
  }

  /**
   * Copies chunk[from, to) into the current frame's buffer, enforcing the size limit before
   * buffering. `heldEndBlock` is 1 when the last byte is an EB that may yet turn out to be
   * the end marker (held, but not counted against the limit).
   */
  private store(chunk: Buffer, from: number, to: number, heldEndBlock = 0): void {
    const size = this.held + (to - from);
    this.checkSize(size - heldEndBlock);
    if (to > from) {
      this.reserve(size);
      chunk.copy(this.buffer!, this.held, from, to);
      this.held = size;
    }
  }

  /** Makes `buffer` hold at least `size` bytes: doubling, capped at the limit (+1 held EB). */
  private reserve(size: number): void {
    const capacity = this.buffer === undefined ? 0 : this.buffer.length;
    if (size <= capacity) return;
    const cap = this.maxFrameBytes + 1;
    const next = Math.min(cap, Math.max(size, FRAMER_INITIAL_CAPACITY, capacity * 2));
    const grown = Buffer.allocUnsafe(next);
    if (this.buffer !== undefined && this.held > 0) this.buffer.copy(grown, 0, 0, this.held);
    this.buffer = grown;
  }

  /**
   * Completes the current frame with chunk[from, to) and returns its payload, dropping
   * `trim` bytes from the end (the held EB when the CR came in a later chunk).
   */
  private finish(chunk: Buffer | null, from: number, to: number, trim: number): Buffer {
    const size = this.held + (to - from) - trim;
    this.checkSize(size);
    let payload: Buffer;
    if (this.held === 0) {
      // Whole frame inside one chunk: a view, no copy.
      payload = chunk === null ? Buffer.alloc(0) : chunk.subarray(from, to);
    } else {
      if (chunk !== null && to > from) {
        this.reserve(this.held + (to - from));
        chunk.copy(this.buffer!, this.held, from, to);
      }
      // The buffer goes with the payload: the next frame starts a new one, and a connection
      // between frames holds nothing.
      payload = this.buffer!.subarray(0, size);
    }
    this.buffer = undefined;
    this.held = 0;
    this.inFrame = false;
    return payload;
  }

  private checkSize(size: number): void {
    if (size > this.maxFrameBytes) {
      this.buffer = undefined;
      this.held = 0;
      this.inFrame = false;
      this.endBlockPending = false;
      this.failure = new MllpFrameTooLargeError(this.maxFrameBytes, size);
      throw this.failure;
    }
  }
}
