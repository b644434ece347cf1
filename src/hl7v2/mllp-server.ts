// MLLP listener (plain TCP or TLS, optionally mutual TLS). Transport only: the handler
// decides what to store and which ACK to send; this module frames, orders and bounds.
//
// Per connection:
// - Frames are handled strictly in order, one at a time; the ACK for frame n is written
//   before frame n+1 reaches the handler. While frames wait behind the one in flight the
//   socket is paused, so a pipelining sender is held by TCP flow control, not by our memory
//   (docs/reliability.md promise 10).
// - The handler's answer is the ACK payload, or null to close without an ACK (the store
//   could not commit: the sender must keep the message and resend). A throwing handler
//   also closes without an ACK; a positive ACK is never sent for an unhandled frame.
// - Idle timeout: a connection must complete a frame within `idleTimeoutMs` of opening, of
//   its previous frame, or of its previous ACK. Silent sockets, senders stuck mid-frame and
//   slowloris senders trickling a byte at a time are all closed by the same rule. The clock
//   stops while the handler runs (our time, not the peer's).
// Events carry peer addresses, ids, counts and reason codes only, never message content.
import net from 'node:net';
import tls from 'node:tls';
import { escapeHl7 } from './escape.ts';
import { DEFAULT_MAX_FRAME_BYTES, MllpFrameTooLargeError, MllpFramer, encodeFrame } from './mllp.ts';
import { DEFAULT_DELIMITERS, parseHl7 } from './parse.ts';

export interface MllpServerTlsOptions {
  /** PEM private key of the server certificate. */
  key: string | Buffer;
  /** PEM server certificate (chain). */
  cert: string | Buffer;
  /** PEM CA certificate(s) that sign accepted client certificates. */
  ca?: string | Buffer | Array<string | Buffer>;
  /**
   * Ask senders for a client certificate. Needs `ca`; connections without a certificate
   * signed by `ca` are then refused during the handshake (mutual TLS).
   */
  requestClientCert?: boolean;
}

export interface MllpPeerCertificate {
  /** Subject common name, when present. */
  subjectCN?: string;
  /** Whole subject, e.g. "CN=epic-prod, O=Hospital". */
  subject: string;
  /** SHA-256 fingerprint as Node prints it ("AB:CD:…"). */
  fingerprint256: string;
}

export interface MllpPeer {
  remoteAddress: string;
  remotePort: number;
  /** Unique per server instance, increasing. */
  connectionId: number;
  tls: boolean;
  /** The verified client certificate (mutual TLS only). */
  certificate?: MllpPeerCertificate;
}

/**
 * Handles one message (a frame's payload). Resolves with the ACK payload to send framed;
 * with an empty payload ('' or a zero-length Buffer) to send nothing and keep the
 * connection (enhanced mode, MSH-15 NE/ER/SU: no accept ACK wanted); or with null to close
 * the connection without an ACK. Throwing also closes without an ACK.
 */
export type MllpHandler = (message: Buffer, peer: MllpPeer) => Promise<Buffer | string | null>;

export const MllpCloseReason = {
  /** The peer closed the connection. */
  Peer: 'peer',
  /** No complete frame within idleTimeoutMs (or a TLS handshake that long). */
  Idle: 'idle',
  /** A frame passed maxFrameBytes. */
  TooLarge: 'too_large',
  /** maxConnections were already open; closed on accept. */
  MaxConnections: 'max_connections',
  /** Socket error (reset, broken pipe…); `errorCode` says which. */
  Error: 'error',
  /** The handler answered null: no ACK (e.g. the store could not commit). */
  NoAck: 'no_ack',
  /** The handler threw: no ACK. */
  HandlerError: 'handler_error',
  /** TLS handshake failed (no or untrusted client certificate, protocol mismatch…). */
  TlsHandshake: 'tls_handshake',
  /** MllpServer.close() ended the connection. */
  ServerClose: 'server_close',
} as const;
export type MllpCloseReason = (typeof MllpCloseReason)[keyof typeof MllpCloseReason];

export const MllpServerEventType = {
  ConnectionOpened: 'connection_opened',
  ConnectionClosed: 'connection_closed',
  Noise: 'noise',
} as const;
export type MllpServerEventType = (typeof MllpServerEventType)[keyof typeof MllpServerEventType];

interface PeerAddress {
  connectionId: number;
  remoteAddress: string;
  remotePort: number;
}

export type MllpServerEvent =
  | (PeerAddress & { type: typeof MllpServerEventType.ConnectionOpened; tls: boolean })
  | (PeerAddress & {
      type: typeof MllpServerEventType.ConnectionClosed;
      reason: MllpCloseReason;
      /** Messages handled on this connection (ACKed, or answered with nothing by request). */
      messages: number;
      /** Node/OpenSSL error code for `error` and `tls_handshake`. */
      errorCode?: string;
    })
  | (PeerAddress & {
      type: typeof MllpServerEventType.Noise;
      /** Bytes discarded outside frames in this read. */
      bytes: number;
    });

/** An event minus the peer fields the connection fills in. */
type EventWithoutPeer = MllpServerEvent extends infer E ? (E extends unknown ? Omit<E, keyof PeerAddress> : never) : never;

export interface MllpServerOptions {
  handler: MllpHandler;
  /** Interface to bind. Default 127.0.0.1 (loopback only; set 0.0.0.0 to accept others). */
  host?: string;
  /** TCP port; 0 (default) picks a free one, read it from listen() or `port`. */
  port?: number;
  /** Serve MLLP over TLS (recommended outside loopback). */
  tls?: MllpServerTlsOptions;
  /** Largest accepted message in bytes. Default 10 MiB. */
  maxFrameBytes?: number;
  /** See the module comment. Default 300,000 ms (5 minutes). */
  idleTimeoutMs?: number;
  /** Open connections (including TLS handshakes in progress). Default 200; extra ones are closed at once. */
  maxConnections?: number;
  /** Connection and noise events; must not throw (errors are swallowed). */
  onEvent?: (event: MllpServerEvent) => void;
}

export interface NormalizedMllpServerOptions {
  handler: MllpHandler;
  host: string;
  port: number;
  tls: MllpServerTlsOptions | undefined;
  maxFrameBytes: number;
  idleTimeoutMs: number;
  maxConnections: number;
  onEvent: (event: MllpServerEvent) => void;
}

export const MLLP_SERVER_DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  idleTimeoutMs: 300_000,
  maxConnections: 200,
} as const;

/** How long a gracefully ended connection may take to close before it is destroyed (ms). */
const SHUTDOWN_GRACE_MS = 2_000;

function positiveInteger(name: string, value: number, unit: string): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`MllpServer option ${name} must be a positive whole number of ${unit}, got ${String(value)}`);
  }
  return value;
}

/** Applies defaults and checks every option; throws a RangeError/TypeError naming the option. */
export function normalizeMllpServerOptions(options: MllpServerOptions): NormalizedMllpServerOptions {
  if (typeof options.handler !== 'function') {
    throw new TypeError('MllpServer option handler must be a function (message, peer) => Promise<ACK | null>');
  }
  const port = options.port ?? MLLP_SERVER_DEFAULTS.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`MllpServer option port must be 0-65535 (0 = any free port), got ${String(port)}`);
  }
  const tlsOptions = options.tls;
  if (tlsOptions !== undefined) {
    if (!tlsOptions.key || !tlsOptions.cert) {
      throw new TypeError('MllpServer option tls needs both key and cert (PEM)');
    }
    if (tlsOptions.requestClientCert === true && !tlsOptions.ca) {
      throw new TypeError('MllpServer option tls.requestClientCert needs tls.ca: the CA certificate that signs accepted client certificates');
    }
  }
  const onEvent = options.onEvent;
  return {
    handler: options.handler,
    host: options.host ?? MLLP_SERVER_DEFAULTS.host,
    port,
    tls: tlsOptions,
    maxFrameBytes: positiveInteger('maxFrameBytes', options.maxFrameBytes ?? MLLP_SERVER_DEFAULTS.maxFrameBytes, 'bytes'),
    idleTimeoutMs: positiveInteger('idleTimeoutMs', options.idleTimeoutMs ?? MLLP_SERVER_DEFAULTS.idleTimeoutMs, 'milliseconds'),
    maxConnections: positiveInteger('maxConnections', options.maxConnections ?? MLLP_SERVER_DEFAULTS.maxConnections, 'connections'),
    onEvent:
      onEvent === undefined
        ? () => {}
        : (event) => {
            try {
              onEvent(event);
            } catch {
              // A monitoring hook must not take connections down with it.
            }
          },
  };
}

function describeSubject(subject: Record<string, string | string[]> | undefined): string {
  if (subject === undefined) return '';
  return Object.entries(subject)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`)
    .join(', ');
}

function peerCertificate(socket: tls.TLSSocket): MllpPeerCertificate | undefined {
  if (!socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  if (cert === null || cert.fingerprint256 === undefined) return undefined;
  const subject = cert.subject as unknown as Record<string, string | string[]> | undefined;
  const cn = subject?.CN;
  return {
    ...(cn !== undefined ? { subjectCN: Array.isArray(cn) ? cn[0] : cn } : {}),
    subject: describeSubject(subject),
    fingerprint256: cert.fingerprint256,
  };
}

class Connection {
  readonly peer: MllpPeer;
  /** Resolves once the socket is closed and no handler runs any more. */
  readonly finished: Promise<void>;
  private readonly framer: MllpFramer;
  private readonly queue: Buffer[] = [];

  /** Frames received and waiting behind the one being handled. */
  get queuedFrames(): number {
    return this.queue.length;
  }
  private pumping = false;
  private socketClosed = false;
  /** Set once we decided to close; later frames are ignored. */
  private closeReason: MllpCloseReason | undefined;
  private errorCode: string | undefined;
  /** server.close(): finish the frame in flight, then end. */
  private draining = false;
  private peerEnded = false;
  private waitingDrain = false;
  private messages = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private resolveFinished!: () => void;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: NormalizedMllpServerOptions,
    connectionId: number,
    private readonly onGone: (c: Connection) => void,
  ) {
    const isTls = socket instanceof tls.TLSSocket;
    const certificate = isTls ? peerCertificate(socket) : undefined;
    this.peer = Object.freeze({
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      connectionId,
      tls: isTls,
      ...(certificate !== undefined ? { certificate: Object.freeze(certificate) } : {}),
    });
    this.framer = new MllpFramer({ maxFrameBytes: options.maxFrameBytes });
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
    socket.setNoDelay(true); // ACKs are small; Nagle + delayed ACK would add ~40 ms each
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('error', (error: NodeJS.ErrnoException) => {
      this.errorCode ??= error.code ?? 'unknown';
    });
    socket.on('close', () => this.onClose());
    this.emit({ type: MllpServerEventType.ConnectionOpened, tls: isTls });
    this.armIdle();
  }

  private emit(event: EventWithoutPeer): void {
    this.options.onEvent({
      connectionId: this.peer.connectionId,
      remoteAddress: this.peer.remoteAddress,
      remotePort: this.peer.remotePort,
      ...event,
    } as MllpServerEvent);
  }

  private onData(chunk: Buffer): void {
    if (this.closeReason !== undefined || this.draining) return; // discard: no more frames accepted
    const noiseBefore = this.framer.noiseBytes;
    let frames: Buffer[];
    try {
      frames = this.framer.push(chunk);
    } catch (error) {
      if (error instanceof MllpFrameTooLargeError) {
        this.abort(MllpCloseReason.TooLarge);
        return;
      }
      throw error;
    } finally {
      const noise = this.framer.noiseBytes - noiseBefore;
      if (noise > 0) this.emit({ type: MllpServerEventType.Noise, bytes: noise });
    }
    if (frames.length === 0) return;
    for (const frame of frames) this.queue.push(frame);
    // Frames wait behind the one being handled: stop reading until the pump takes them, so
    // a sender that keeps writing cannot grow this queue without bound.
    this.updateFlow();
    // While a handler runs the idle clock is stopped (a slow commit is our time, not the
    // peer's); the pump re-arms it after each ACK.
    if (!this.pumping) this.armIdle();
    void this.pump();
  }

  private onEnd(): void {
    this.peerEnded = true;
    // Frames already received still get their ACKs; the pump ends the socket afterwards.
    if (!this.pumping && this.queue.length === 0) this.socket.end();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0 && this.closeReason === undefined && !this.draining) {
        const message = this.queue.shift()!;
        this.updateFlow();
        this.stopIdle();
        let ack: Buffer | string | null;
        let frame: Buffer | undefined;
        try {
          ack = await this.options.handler(message, this.peer);
          if (ack === null) {
            this.abort(MllpCloseReason.NoAck);
            return;
          }
          if (ack.length > 0) frame = encodeFrame(ack);
        } catch {
          this.abort(MllpCloseReason.HandlerError);
          return;
        }
        if (this.socketClosed || this.closeReason !== undefined) return; // peer gone or too_large meanwhile
        this.messages++;
        this.armIdle();
        if (frame !== undefined && !this.socket.write(frame)) {
          // The peer does not read its ACKs: handle nothing more until it does (or idles out).
          this.waitingDrain = true;
          this.updateFlow();
          await new Promise<void>((resolve) => {
            const done = (): void => {
              this.socket.off('drain', done);
              this.socket.off('close', done);
              resolve();
            };
            this.socket.on('drain', done);
            this.socket.on('close', done);
          });
          this.waitingDrain = false;
        }
      }
      if (this.draining || (this.peerEnded && this.queue.length === 0)) this.endGracefully();
      else this.updateFlow();
    } finally {
      this.pumping = false;
      this.maybeFinished();
    }
  }

  /** Pause reading while frames wait or ACKs are not being read: bounded memory per peer. */
  private updateFlow(): void {
    if (this.socketClosed) return;
    if (this.queue.length > 0 || this.waitingDrain) this.socket.pause();
    else this.socket.resume();
  }

  private armIdle(): void {
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      this.abort(MllpCloseReason.Idle);
    }, this.options.idleTimeoutMs);
  }

  private stopIdle(): void {
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Close now, dropping frames not yet handled (they were never ACKed). */
  abort(reason: MllpCloseReason): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    this.queue.length = 0;
    this.stopIdle();
    this.socket.destroy();
  }

  /** server.close(): let the frame in flight finish and its ACK go out, then end. */
  shutdown(): void {
    if (this.closeReason !== undefined || this.draining) return;
    this.draining = true;
    this.queue.length = 0;
    if (!this.pumping) this.endGracefully();
  }

  private endGracefully(): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = this.draining ? MllpCloseReason.ServerClose : MllpCloseReason.Peer;
    this.stopIdle();
    // Keep reading (and discarding) so unread input does not turn our FIN into a reset
    // that could destroy the last ACK in flight.
    this.socket.resume();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), SHUTDOWN_GRACE_MS).unref();
  }

  private onClose(): void {
    this.socketClosed = true;
    this.stopIdle();
    this.queue.length = 0;
    let reason = this.closeReason;
    if (reason === undefined) reason = this.errorCode !== undefined ? MllpCloseReason.Error : MllpCloseReason.Peer;
    this.closeReason = reason;
    this.emit({
      type: MllpServerEventType.ConnectionClosed,
      reason,
      messages: this.messages,
      ...(this.errorCode !== undefined && reason === MllpCloseReason.Error ? { errorCode: this.errorCode } : {}),
    });
    this.maybeFinished();
  }

  private maybeFinished(): void {
    if (this.socketClosed && !this.pumping) {
      this.onGone(this);
      this.resolveFinished();
    }
  }
}

/**
 * MLLP listener. `listen()` binds; `close()` stops accepting, lets in-flight handlers finish
 * and their ACKs go out, then ends every connection.
 */
export class MllpServer {
  readonly options: NormalizedMllpServerOptions;
  private readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  /** Every accepted TCP socket, including TLS handshakes not yet finished. */
  private readonly rawSockets = new Set<net.Socket>();
  private nextConnectionId = 1;
  private boundPort: number | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: MllpServerOptions) {
    this.options = normalizeMllpServerOptions(options);
    const o = this.options;
    if (o.tls === undefined) {
      this.server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    } else {
      const mutual = o.tls.requestClientCert === true;
      const server = tls.createServer({
        key: o.tls.key,
        cert: o.tls.cert,
        ...(o.tls.ca !== undefined ? { ca: o.tls.ca } : {}),
        requestCert: mutual,
        rejectUnauthorized: mutual,
        minVersion: 'TLSv1.2',
        // A handshake is held to the same clock as an idle connection.
        handshakeTimeout: o.idleTimeoutMs,
        allowHalfOpen: true,
      });
      server.on('secureConnection', (socket: tls.TLSSocket) => this.accept(socket));
      server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
        o.onEvent({
          type: MllpServerEventType.ConnectionClosed,
          connectionId: this.nextConnectionId++,
          remoteAddress: socket.remoteAddress ?? '',
          remotePort: socket.remotePort ?? 0,
          reason: error.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? MllpCloseReason.Idle : MllpCloseReason.TlsHandshake,
          messages: 0,
          errorCode: error.code ?? 'unknown',
        });
        socket.destroy();
      });
      this.server = server;
    }
    // Node closes connections past this count on accept and reports them as 'drop'.
    this.server.maxConnections = o.maxConnections;
    this.server.on('drop', (data?: net.DropArgument) => {
      o.onEvent({
        type: MllpServerEventType.ConnectionClosed,
        connectionId: this.nextConnectionId++,
        remoteAddress: data?.remoteAddress ?? '',
        remotePort: data?.remotePort ?? 0,
        reason: MllpCloseReason.MaxConnections,
        messages: 0,
      });
    });
    this.server.on('connection', (socket: net.Socket) => {
      this.rawSockets.add(socket);
      socket.once('close', () => this.rawSockets.delete(socket));
      socket.on('error', () => {}); // reported through the TLS socket / Connection
    });
  }

  private accept(socket: net.Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const connection = new Connection(socket, this.options, this.nextConnectionId++, (c) => this.connections.delete(c));
    this.connections.add(connection);
  }

  /** Binds host:port. Resolves with the bound port (useful with port 0). */
  listen(): Promise<{ port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', onError);
        this.boundPort = (this.server.address() as net.AddressInfo).port;
        resolve({ port: this.boundPort });
      });
    });
  }

  /** The bound port; throws before listen() resolved. */
  get port(): number {
    if (this.boundPort === undefined) throw new Error('MllpServer is not listening: await listen() first');
    return this.boundPort;
  }

  /** Connections past the TCP (and TLS) handshake that are still open. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Frames received but not handled yet, over all connections (bounded by back-pressure). */
  get queuedFrames(): number {
    let n = 0;
    for (const c of this.connections) n += c.queuedFrames;
    return n;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => {
        if (!this.server.listening) resolve();
        else this.server.close(() => resolve());
      });
      for (const c of this.connections) c.shutdown();
      await Promise.all([...this.connections].map((c) => c.finished));
      // What is left are TLS handshakes that never completed: nothing to finish there.
      for (const socket of this.rawSockets) socket.destroy();
      await stopped;
    })();
    return this.closing;
  }
}

/**
 * Bare MLLP listener for benchmarks: same transport as the durable listener, no parsing
 * beyond MSH-10, no storage. Answers each frame with a minimal AA whose MSA-2 echoes the
 * message's MSH-10 (MllpClient matches on it); an unparseable frame gets AA with empty MSA-2.
 */
export async function startEchoMllpServer(
  options: Omit<MllpServerOptions, 'handler'> = {},
): Promise<MllpServer> {
  let counter = 0;
  const server = new MllpServer({
    ...options,
    handler: async (message) => {
      let controlId = '';
      try {
        controlId = parseHl7(message).controlId;
      } catch {
        // No MSH: answer anyway, this listener measures transport only.
      }
      const id = escapeHl7(controlId, DEFAULT_DELIMITERS);
      const stamp = new Date().toISOString().replace(/\D/g, '').slice(0, 14);
      counter++;
      return `MSH|^~\\&|CARERELAY|ECHO|||${stamp}||ACK|ECHO${counter}|P|2.5\rMSA|AA|${id}\r`;
    },
  });
  await server.listen();
  return server;
}
