// MLLP sender: one message in flight per connection, the ACK matched to the message.
//
// - The ACK is the frame whose MSA-2 equals the sent message's MSH-10 (HL7 v2 chapter 2,
//   "MSA-2 message control ID"); the reply to an FHS/BHS batch is the batch whose BHS-12
//   (reference batch control id) equals the sent BHS-11 (any batch when that is empty). Any
//   other frame (a stale ACK of an earlier message, an unparseable frame, a frame nobody
//   waits for) is discarded and counted, never returned.
// - A message whose MSH-15 is NE asks for no ACK: sendWithoutAck writes it and waits for none.
// - A timeout closes the connection: an ACK arriving late on it must never be taken for
//   the next message's ACK. The caller reconnects with connect().
// - A timeout or a connection lost while waiting is ambiguous (the receiver may have
//   committed the message): errors are AmbiguousError so a queue retries only what is safe
//   to resend (HL7 receivers dedupe on MSH-10). Nothing sent yet → TransientError.
import net from 'node:net';
import tls from 'node:tls';
import { AmbiguousError, TransientError } from '../errors.ts';
import { DEFAULT_MAX_FRAME_BYTES, MllpFrameTooLargeError, MllpFramer, encodeFrame } from './mllp.ts';
import { batchHeaderOf, parseHl7 } from './parse.ts';

export interface MllpClientTlsOptions {
  /** PEM CA certificate(s) trusted for the server; default: Node's bundled roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** PEM client certificate for mutual TLS (with `key`). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** SNI and certificate host name check; default: `host` when it is a name (an IP is checked against IP SANs). */
  servername?: string;
  /** Verify the server certificate. Default true; false only for testing. */
  rejectUnauthorized?: boolean;
}

export interface MllpClientOptions {
  host: string;
  port: number;
  tls?: MllpClientTlsOptions;
  /** Time allowed for TCP connect and the TLS handshake, ms. Default 10,000. */
  connectTimeoutMs?: number;
  /** Default ACK wait per send, ms. Default 30,000. */
  ackTimeoutMs?: number;
  /** Largest accepted ACK frame, bytes. Default 10 MiB. */
  maxFrameBytes?: number;
}

export interface MllpSendOptions {
  /** Time to wait for the matching ACK once the message is written, ms. */
  timeoutMs?: number;
}

export const MllpClientErrorCode = {
  NotConnected: 'mllp_not_connected',
  ConnectFailed: 'mllp_connect_failed',
  AckTimeout: 'mllp_ack_timeout',
  ConnectionClosed: 'mllp_connection_closed',
} as const;
export type MllpClientErrorCode = (typeof MllpClientErrorCode)[keyof typeof MllpClientErrorCode];

export const MLLP_CLIENT_DEFAULTS = {
  connectTimeoutMs: 10_000,
  ackTimeoutMs: 30_000,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
} as const;

/** How long close() waits for the server to close its side before destroying the socket (ms). */
const CLOSE_GRACE_MS = 2_000;

interface Waiter {
  /** What the ACK must answer, for errors: `MSH-10 "X"` or `batch BHS-11 "Y"`. */
  expected: string;
  matches: (frame: Buffer) => boolean;
  resolve: (ack: Buffer) => void;
  reject: (error: Error) => void;
}

/**
 * Which frame answers `payload`. A message: the frame whose MSA-2 is its MSH-10 ('' when it
 * has none or cannot be parsed: only an ACK with an empty MSA-2, as a receiver sends for an
 * unreadable message, matches then). A batch: the batch reply whose BHS-12 is its BHS-11.
 */
function replyMatcher(payload: Buffer): Pick<Waiter, 'expected' | 'matches'> {
  let batch;
  try {
    batch = batchHeaderOf(payload);
  } catch {
    batch = undefined;
  }
  if (batch !== undefined) {
    const batchId = batch.segment.rawField(11);
    return {
      expected: `batch BHS-11 ${JSON.stringify(batchId)}`,
      matches: (frame) => {
        try {
          const reply = batchHeaderOf(frame);
          return reply !== undefined && (batchId === '' || reply.segment.rawField(12) === batchId);
        } catch {
          return false;
        }
      },
    };
  }
  let controlId = '';
  try {
    controlId = parseHl7(payload).get('MSH-10');
  } catch {
    // unparseable: only an ACK with an empty MSA-2 answers it
  }
  return {
    expected: `MSH-10 ${JSON.stringify(controlId)}`,
    matches: (frame) => {
      try {
        return parseHl7(frame).get('MSA-2') === controlId;
      } catch {
        return false;
      }
    },
  };
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`MllpClient option ${name} must be a positive whole number, got ${String(value)}`);
  }
  return value;
}

export class MllpClient {
  readonly host: string;
  readonly port: number;
  private readonly tlsOptions: MllpClientTlsOptions | undefined;
  private readonly connectTimeoutMs: number;
  private readonly ackTimeoutMs: number;
  private readonly maxFrameBytes: number;
  private socket: net.Socket | undefined;
  private framer: MllpFramer | undefined;
  private waiter: Waiter | undefined;
  private lastErrorCode: string | undefined;
  /** Serializes send(): each waits for the previous one's ACK, error or timeout. */
  private turn: Promise<void> = Promise.resolve();
  private discarded = 0;
  private connecting: Promise<void> | undefined;

  constructor(options: MllpClientOptions) {
    if (typeof options.host !== 'string' || options.host === '') throw new TypeError('MllpClient option host must be a host name or IP address');
    if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) {
      throw new RangeError(`MllpClient option port must be 1-65535, got ${String(options.port)}`);
    }
    this.host = options.host;
    this.port = options.port;
    this.tlsOptions = options.tls;
    this.connectTimeoutMs = positiveInteger('connectTimeoutMs', options.connectTimeoutMs ?? MLLP_CLIENT_DEFAULTS.connectTimeoutMs);
    this.ackTimeoutMs = positiveInteger('ackTimeoutMs', options.ackTimeoutMs ?? MLLP_CLIENT_DEFAULTS.ackTimeoutMs);
    this.maxFrameBytes = positiveInteger('maxFrameBytes', options.maxFrameBytes ?? MLLP_CLIENT_DEFAULTS.maxFrameBytes);
  }

  /** Frames received that were not the awaited ACK (stale, unmatched or unparseable). */
  get discardedAcks(): number {
    return this.discarded;
  }

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  /** Opens the connection (TCP, or TLS when `tls` is set). No-op when already connected. */
  connect(): Promise<void> {
    if (this.connected) return Promise.resolve();
    this.connecting ??= this.open().finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  private async open(): Promise<void> {
    const t = this.tlsOptions;
    const socket =
      t === undefined
        ? net.connect({ host: this.host, port: this.port })
        : tls.connect({
            host: this.host,
            port: this.port,
            ...(t.ca !== undefined ? { ca: t.ca } : {}),
            ...(t.cert !== undefined ? { cert: t.cert } : {}),
            ...(t.key !== undefined ? { key: t.key } : {}),
            ...(t.servername !== undefined ? { servername: t.servername } : {}),
            rejectUnauthorized: t.rejectUnauthorized ?? true,
          });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`no connection within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off('error', fail);
        socket.off(t === undefined ? 'connect' : 'secureConnect', ok);
      };
      function ok(): void {
        cleanup();
        resolve();
      }
      const fail = (error: NodeJS.ErrnoException): void => {
        cleanup();
        socket.destroy();
        reject(
          new TransientError(
            MllpClientErrorCode.ConnectFailed,
            `cannot open MLLP${t === undefined ? '' : '/TLS'} connection to ${this.host}:${this.port}: ${error.message}`,
            { cause: error },
          ),
        );
      };
      socket.once('error', fail);
      socket.once(t === undefined ? 'connect' : 'secureConnect', ok);
    });
    socket.setNoDelay(true);
    this.socket = socket;
    this.framer = new MllpFramer({ maxFrameBytes: this.maxFrameBytes });
    this.lastErrorCode = undefined;
    const framer = this.framer;
    socket.on('data', (chunk: Buffer) => this.onData(socket, framer, chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      this.lastErrorCode ??= error.code ?? 'unknown';
    });
    socket.on('close', () => this.onClose(socket));
  }

  /**
   * Sends one message and resolves with its ACK payload (unframed). Sends are queued: one
   * message in flight per connection. Rejects with AmbiguousError on timeout (the
   * connection is then closed) or when the connection closes while waiting.
   */
  send(message: Buffer | string, options: MllpSendOptions = {}): Promise<Buffer> {
    const run = this.turn.then(() => this.sendNow(message, options));
    this.turn = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /**
   * Sends one message that asks for no ACK (MSH-15 NE) and resolves once it is handed to
   * the socket: nothing tells whether the receiver committed it. Queued like send(); a frame
   * the receiver sends anyway is discarded.
   */
  sendWithoutAck(message: Buffer | string): Promise<void> {
    const run = this.turn.then(
      () =>
        new Promise<void>((resolve, reject) => {
          const socket = this.socket;
          if (socket === undefined || socket.destroyed) {
            reject(this.notConnected());
            return;
          }
          const payload = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
          socket.write(encodeFrame(payload), (error) => {
            if (error) reject(new AmbiguousError(MllpClientErrorCode.ConnectionClosed, `MLLP write to ${this.host}:${this.port} failed: ${error.message}`, { cause: error }));
            else resolve();
          });
        }),
    );
    this.turn = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  private sendNow(message: Buffer | string, options: MllpSendOptions): Promise<Buffer> {
    const timeoutMs = positiveInteger('timeoutMs', options.timeoutMs ?? this.ackTimeoutMs);
    const payload = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
    const frame = encodeFrame(payload);
    const socket = this.socket;
    if (socket === undefined || socket.destroyed) return Promise.reject(this.notConnected());
    const { expected, matches } = replyMatcher(payload);
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        // Drop the connection so a late ACK can never be read as the next message's.
        this.socket = undefined;
        socket.destroy();
        reject(
          new AmbiguousError(
            MllpClientErrorCode.AckTimeout,
            `no ACK for ${expected} from ${this.host}:${this.port} within ${timeoutMs} ms; the connection was closed (the message may have been received)`,
          ),
        );
      }, timeoutMs);
      this.waiter = {
        expected,
        matches,
        resolve: (ack) => {
          clearTimeout(timer);
          resolve(ack);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      socket.write(frame);
    });
  }

  private notConnected(): TransientError {
    return new TransientError(MllpClientErrorCode.NotConnected, `MLLP client for ${this.host}:${this.port} is not connected: call connect() first`);
  }

  private onData(socket: net.Socket, framer: MllpFramer, chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = framer.push(chunk);
    } catch (error) {
      if (!(error instanceof MllpFrameTooLargeError)) throw error;
      this.lastErrorCode = error.code;
      socket.destroy(); // onClose rejects the waiter
      return;
    }
    for (const frame of frames) {
      const waiter = this.waiter;
      if (waiter === undefined || socket !== this.socket) {
        this.discarded++;
        continue;
      }
      if (!waiter.matches(frame)) {
        this.discarded++;
        continue;
      }
      this.waiter = undefined;
      waiter.resolve(frame);
    }
  }

  private onClose(socket: net.Socket): void {
    if (this.socket !== socket) return; // an older connection (timed out or replaced)
    this.socket = undefined;
    const waiter = this.waiter;
    if (waiter === undefined) return;
    this.waiter = undefined;
    const why = this.lastErrorCode === undefined ? '' : ` (${this.lastErrorCode})`;
    waiter.reject(
      new AmbiguousError(
        MllpClientErrorCode.ConnectionClosed,
        `MLLP connection to ${this.host}:${this.port} closed${why} before the ACK for ${waiter.expected} arrived (the message may have been received)`,
      ),
    );
  }

  /** Ends the connection; a send still waiting for its ACK is rejected. */
  async close(): Promise<void> {
    const socket = this.socket;
    if (socket === undefined) return;
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    // Mark the close as ours before the socket reports it.
    this.lastErrorCode ??= 'closed_by_client';
    socket.end();
    const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
    timer.unref();
    await closed;
    clearTimeout(timer);
  }
}
