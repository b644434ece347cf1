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
// - Memory: a frame spanning reads is copied into one buffer per connection (mllp.ts), so
//   what a connection holds is a small multiple of the bytes it sent, however it split them.
//
// Admission (who gets a slot; docs/reliability.md "Bad inputs"):
// - `maxConnections` sockets at most, TLS handshakes in progress included. The last
//   `reservedConnections` of them are kept for trusted senders (a configured address, or a
//   client certificate whose CN is trusted), so peers that open sockets and send nothing
//   cannot lock out the EHR. A TLS handshake from an unknown address may use the reserve
//   (only the certificate says who it is); once done, an untrusted peer must fit outside it.
// - `maxConnectionsPerAddress` sockets per remote address (trusted addresses exempt).
// - A TLS handshake must finish within `tlsHandshakeTimeoutMs`, and an untrusted peer must
//   send its first byte within `firstByteTimeoutMs` of being connected; trusted senders may
//   hold an idle connection open ahead of their first message (idle timeout only).
// - The TLS listener is not half-open until the handshake is done: a peer that connects and
//   closes at once is closed at once (a half-open socket waiting for a handshake that never
//   comes sat in CLOSE-WAIT, holding a slot, for the whole handshake timeout). After the
//   handshake a half-close still gets the ACKs of the frames already sent, then we close.
// Refusals are counted (`stats()`) and reported as connection_closed events.
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
  /** A configured sender: trusted address, or client certificate with a trusted CN. */
  trusted: boolean;
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
  /** No complete frame within idleTimeoutMs, or no TLS handshake within tlsHandshakeTimeoutMs. */
  Idle: 'idle',
  /** An untrusted peer sent nothing within firstByteTimeoutMs of connecting. */
  FirstByte: 'first_byte_timeout',
  /** A frame passed maxFrameBytes. */
  TooLarge: 'too_large',
  /** maxConnections were already open; closed on accept. */
  MaxConnections: 'max_connections',
  /** maxConnectionsPerAddress were already open from this address; closed on accept. */
  PerAddress: 'per_address_limit',
  /** Only the reserved slots were left, and the peer is not a trusted sender. */
  Reserved: 'reserved_for_trusted',
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

/** Refusals on accept (or right after the TLS handshake): counted in MllpServer.stats(). */
export const MLLP_REFUSALS = [MllpCloseReason.MaxConnections, MllpCloseReason.PerAddress, MllpCloseReason.Reserved] as const;
export type MllpRefusal = (typeof MLLP_REFUSALS)[number];

/** Who may use the reserved slots and keep an idle connection open before their first message. */
export interface MllpTrustedSenders {
  /** IPv4/IPv6 addresses or CIDR subnets ("10.1.2.3", "10.1.0.0/16", "fd00::/8"). */
  addresses?: readonly string[];
  /** Client-certificate subject CNs (mutual TLS). */
  certificateCNs?: readonly string[];
}

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
  /** Open connections per remote address (trusted addresses exempt). Default 20. */
  maxConnectionsPerAddress?: number;
  /** Of maxConnections, slots only trusted senders may use. Default a tenth of maxConnections (none without trusted senders). */
  reservedConnections?: number;
  /** An untrusted peer must send a byte within this of connecting (ms). Default 10,000. */
  firstByteTimeoutMs?: number;
  /** A TLS handshake must finish within this (ms). Default 10,000. */
  tlsHandshakeTimeoutMs?: number;
  /** Configured senders: see MllpTrustedSenders. Default none. */
  trustedSenders?: MllpTrustedSenders;
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
  maxConnectionsPerAddress: number;
  /** 0 when no trusted sender is configured: nobody could use the reserve. */
  reservedConnections: number;
  firstByteTimeoutMs: number;
  tlsHandshakeTimeoutMs: number;
  trustedAddresses: net.BlockList;
  trustedCertificateCNs: ReadonlySet<string>;
  onEvent: (event: MllpServerEvent) => void;
}

export const MLLP_SERVER_DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  idleTimeoutMs: 300_000,
  maxConnections: 200,
  maxConnectionsPerAddress: 20,
  /** reservedConnections defaults to this share of maxConnections (20 of 200). */
  reservedShare: 0.1,
  firstByteTimeoutMs: 10_000,
  tlsHandshakeTimeoutMs: 10_000,
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
  const maxConnections = positiveInteger('maxConnections', options.maxConnections ?? MLLP_SERVER_DEFAULTS.maxConnections, 'connections');
  const trustedAddresses = trustedAddressList(options.trustedSenders?.addresses ?? []);
  const trustedCertificateCNs = new Set(options.trustedSenders?.certificateCNs ?? []);
  const anyTrusted = (options.trustedSenders?.addresses ?? []).length > 0 || trustedCertificateCNs.size > 0;
  const reserved = options.reservedConnections ?? Math.floor(maxConnections * MLLP_SERVER_DEFAULTS.reservedShare);
  if (!Number.isSafeInteger(reserved) || reserved < 0 || reserved >= maxConnections) {
    throw new RangeError(
      `MllpServer option reservedConnections must be a whole number from 0 to maxConnections - 1 (${maxConnections - 1}), got ${String(reserved)}`,
    );
  }
  return {
    handler: options.handler,
    host: options.host ?? MLLP_SERVER_DEFAULTS.host,
    port,
    tls: tlsOptions,
    maxFrameBytes: positiveInteger('maxFrameBytes', options.maxFrameBytes ?? MLLP_SERVER_DEFAULTS.maxFrameBytes, 'bytes'),
    idleTimeoutMs: positiveInteger('idleTimeoutMs', options.idleTimeoutMs ?? MLLP_SERVER_DEFAULTS.idleTimeoutMs, 'milliseconds'),
    maxConnections,
    maxConnectionsPerAddress: positiveInteger(
      'maxConnectionsPerAddress',
      options.maxConnectionsPerAddress ?? MLLP_SERVER_DEFAULTS.maxConnectionsPerAddress,
      'connections',
    ),
    reservedConnections: anyTrusted ? reserved : 0,
    firstByteTimeoutMs: positiveInteger('firstByteTimeoutMs', options.firstByteTimeoutMs ?? MLLP_SERVER_DEFAULTS.firstByteTimeoutMs, 'milliseconds'),
    tlsHandshakeTimeoutMs: positiveInteger(
      'tlsHandshakeTimeoutMs',
      options.tlsHandshakeTimeoutMs ?? MLLP_SERVER_DEFAULTS.tlsHandshakeTimeoutMs,
      'milliseconds',
    ),
    trustedAddresses,
    trustedCertificateCNs,
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

/** A BlockList (used as an allow-list) of addresses and CIDR subnets; throws naming a bad entry. */
function trustedAddressList(entries: readonly string[]): net.BlockList {
  const list = new net.BlockList();
  for (const entry of entries) {
    const [address, bits, ...rest] = entry.trim().split('/');
    const family = net.isIPv4(address ?? '') ? 'ipv4' : net.isIPv6(address ?? '') ? 'ipv6' : undefined;
    const prefix = bits === undefined ? undefined : Number(bits);
    const maxPrefix = family === 'ipv4' ? 32 : 128;
    if (
      family === undefined ||
      rest.length > 0 ||
      (prefix !== undefined && (!/^\d{1,3}$/.test(bits!) || prefix > maxPrefix))
    ) {
      throw new RangeError(
        `MllpServer trusted address ${JSON.stringify(entry)} is not an IP address or CIDR subnet (e.g. "10.1.2.3", "10.1.0.0/16", "fd00::/8")`,
      );
    }
    if (prefix === undefined) list.addAddress(address!, family);
    else list.addSubnet(address!, prefix, family);
  }
  return list;
}

/** Whether `address` (as a socket reports it, IPv4-mapped IPv6 included) is in `list`. */
function isListed(list: net.BlockList, address: string): boolean {
  if (address === '') return false;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped !== null) return list.check(mapped[1]!, 'ipv4');
  return list.check(address, net.isIPv6(address) ? 'ipv6' : 'ipv4');
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

  /** Payload bytes of the unfinished frame. */
  get bufferedBytes(): number {
    return this.framer.bufferedBytes;
  }

  /** Memory held for the unfinished frame (MllpFramer.retainedBytes). */
  get retainedBytes(): number {
    return this.framer.retainedBytes;
  }
  private pumping = false;
  private socketClosed = false;
  /** Set once we decided to close; later frames are ignored. */
  private closeReason: MllpCloseReason | undefined;

  /** Why the connection closed (once it did). */
  get closedFor(): MllpCloseReason | undefined {
    return this.closeReason;
  }
  private errorCode: string | undefined;
  /** server.close(): finish the frame in flight, then end. */
  private draining = false;
  private peerEnded = false;
  private waitingDrain = false;
  private messages = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Running until the first byte arrives (untrusted peers only). */
  private firstByteTimer: NodeJS.Timeout | undefined;
  private resolveFinished!: () => void;

  constructor(
    private readonly socket: net.Socket,
    private readonly options: NormalizedMllpServerOptions,
    connectionId: number,
    trusted: boolean,
    certificate: MllpPeerCertificate | undefined,
    private readonly onGone: (c: Connection) => void,
  ) {
    const isTls = socket instanceof tls.TLSSocket;
    this.peer = Object.freeze({
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
      connectionId,
      tls: isTls,
      ...(certificate !== undefined ? { certificate: Object.freeze(certificate) } : {}),
      trusted,
    });
    // Half-open from here on (see the module comment): a sender that half-closes after its
    // last frame still gets the ACKs, and onEnd closes our side once they are written.
    socket.allowHalfOpen = true;
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
    if (!trusted) {
      this.firstByteTimer = setTimeout(() => {
        this.firstByteTimer = undefined;
        this.abort(MllpCloseReason.FirstByte);
      }, options.firstByteTimeoutMs);
    }
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
    if (this.firstByteTimer !== undefined) {
      clearTimeout(this.firstByteTimer);
      this.firstByteTimer = undefined;
    }
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
          await writableAgain(this.socket);
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
    if (this.firstByteTimer !== undefined) clearTimeout(this.firstByteTimer);
    this.firstByteTimer = undefined;
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

/** What MllpServer.stats() reports. */
export interface MllpServerStats {
  /** Open sockets, TLS handshakes in progress included. */
  sockets: number;
  /** Of those, trusted senders. */
  trusted: number;
  /** Connections past the TCP (and TLS) handshake. */
  connections: number;
  /** Payload bytes of unfinished frames, over all connections. */
  bufferedBytes: number;
  /** Memory held for those frames (MllpFramer.retainedBytes summed). */
  retainedBytes: number;
  /** Connections refused since the server started, by reason. */
  refused: Record<MllpRefusal, number>;
  /** Untrusted connections closed for sending nothing within firstByteTimeoutMs. */
  firstByteTimeouts: number;
}

/** Admission state of one accepted TCP socket (see the module comment). */
interface Slot {
  readonly address: string;
  /** Trusted address, or (after the TLS handshake) a trusted certificate CN. */
  trusted: boolean;
  /** Admitted into the reserved slots pending its TLS handshake. */
  inReserve: boolean;
  /** Counted in the per-address table (untrusted address). */
  readonly perAddress: boolean;
}

/**
 * MLLP listener. `listen()` binds; `close()` stops accepting, lets in-flight handlers finish
 * and their ACKs go out, then ends every connection.
 */
export class MllpServer {
  readonly options: NormalizedMllpServerOptions;
  private readonly server: net.Server;
  /** Does the TLS handshakes of admitted sockets (never listens itself). */
  private readonly tlsServer: tls.Server | undefined;
  private readonly connections = new Set<Connection>();
  /** Every accepted TCP socket, including TLS handshakes not yet finished. */
  private readonly rawSockets = new Map<net.Socket, Slot>();
  /** Admission slots by "address|port" (how a TLS socket finds its TCP socket's slot). */
  private readonly slotsByPeer = new Map<string, Slot>();
  private readonly perAddress = new Map<string, number>();
  /** Untrusted sockets outside the reserve (at most maxConnections - reservedConnections). */
  private unreserved = 0;
  private trustedCount = 0;
  private readonly refused: Record<MllpRefusal, number> = { max_connections: 0, per_address_limit: 0, reserved_for_trusted: 0 };
  private firstByteTimeouts = 0;
  private nextConnectionId = 1;
  private boundPort: number | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: MllpServerOptions) {
    this.options = normalizeMllpServerOptions(options);
    const o = this.options;
    // Admission runs on every TCP socket before any TLS byte is read; an admitted socket is
    // then handed to the TLS server (emit('connection'), the documented way to give a server
    // a socket), so a refused one costs no handshake. Not half-open until a Connection takes
    // the socket (module comment).
    this.server = net.createServer({ allowHalfOpen: false }, (socket) => this.admit(socket));
    if (o.tls !== undefined) {
      const mutual = o.tls.requestClientCert === true;
      const tlsServer = tls.createServer({
        key: o.tls.key,
        cert: o.tls.cert,
        ...(o.tls.ca !== undefined ? { ca: o.tls.ca } : {}),
        requestCert: mutual,
        rejectUnauthorized: mutual,
        minVersion: 'TLSv1.2',
        handshakeTimeout: Math.min(o.tlsHandshakeTimeoutMs, o.idleTimeoutMs),
        allowHalfOpen: false,
      });
      tlsServer.on('secureConnection', (socket: tls.TLSSocket) => this.acceptSecure(socket));
      tlsServer.on('tlsClientError', (error: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
        const code = error.code ?? 'unknown';
        o.onEvent({
          type: MllpServerEventType.ConnectionClosed,
          connectionId: this.nextConnectionId++,
          remoteAddress: socket.remoteAddress ?? '',
          remotePort: socket.remotePort ?? 0,
          reason: code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? MllpCloseReason.Idle : MllpCloseReason.TlsHandshake,
          messages: 0,
          errorCode: code,
        });
        socket.destroy();
      });
      this.tlsServer = tlsServer;
    }
  }

  private admit(socket: net.Socket): void {
    socket.on('error', () => {}); // reported through the TLS socket / Connection
    const o = this.options;
    const address = socket.remoteAddress ?? '';
    const trusted = isListed(o.trustedAddresses, address);
    let refusal: MllpRefusal | undefined;
    let inReserve = false;
    if (this.rawSockets.size >= o.maxConnections) {
      refusal = MllpCloseReason.MaxConnections;
    } else if (!trusted && (this.perAddress.get(address) ?? 0) >= o.maxConnectionsPerAddress) {
      refusal = MllpCloseReason.PerAddress;
    } else if (!trusted && this.unreserved >= o.maxConnections - o.reservedConnections) {
      // Only the reserve is left. A TLS peer may still hold a trusted certificate: let it
      // try, held to the handshake deadline, and decide once the certificate is known.
      if (o.tls !== undefined && o.trustedCertificateCNs.size > 0) inReserve = true;
      else refusal = MllpCloseReason.Reserved;
    }
    if (refusal !== undefined || this.closing !== undefined) {
      if (refusal !== undefined) this.refuse(socket, address, refusal);
      socket.destroy();
      return;
    }
    const slot: Slot = { address, trusted, inReserve, perAddress: !trusted };
    this.rawSockets.set(socket, slot);
    const key = peerKey(socket);
    this.slotsByPeer.set(key, slot);
    if (trusted) this.trustedCount++;
    else {
      this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1);
      if (!inReserve) this.unreserved++;
    }
    socket.once('close', () => {
      this.rawSockets.delete(socket);
      if (this.slotsByPeer.get(key) === slot) this.slotsByPeer.delete(key);
      if (slot.trusted) this.trustedCount--;
      else if (!slot.inReserve) this.unreserved--;
      if (slot.perAddress) {
        const left = (this.perAddress.get(address) ?? 1) - 1;
        if (left > 0) this.perAddress.set(address, left);
        else this.perAddress.delete(address);
      }
    });
    if (this.tlsServer !== undefined) this.tlsServer.emit('connection', socket);
    else this.accept(socket, slot, undefined);
  }

  private refuse(socket: net.Socket, address: string, reason: MllpRefusal): void {
    this.refused[reason]++;
    this.options.onEvent({
      type: MllpServerEventType.ConnectionClosed,
      connectionId: this.nextConnectionId++,
      remoteAddress: address,
      remotePort: socket.remotePort ?? 0,
      reason,
      messages: 0,
    });
  }

  private slotOf(socket: net.Socket): Slot | undefined {
    return this.slotsByPeer.get(peerKey(socket));
  }

  /** After the TLS handshake: a trusted certificate moves the peer to the trusted side. */
  private acceptSecure(socket: tls.TLSSocket): void {
    const slot = this.slotOf(socket);
    const certificate = peerCertificate(socket);
    if (slot !== undefined && !slot.trusted) {
      const cn = certificate?.subjectCN;
      if (cn !== undefined && this.options.trustedCertificateCNs.has(cn)) {
        if (!slot.inReserve) this.unreserved--;
        slot.trusted = true;
        slot.inReserve = false;
        this.trustedCount++;
      } else if (slot.inReserve) {
        // Not a trusted sender: it may stay only if a slot outside the reserve is free now.
        if (this.unreserved >= this.options.maxConnections - this.options.reservedConnections) {
          this.refuse(socket, slot.address, MllpCloseReason.Reserved);
          socket.destroy();
          return;
        }
        slot.inReserve = false;
        this.unreserved++;
      }
    }
    this.accept(socket, slot, certificate);
  }

  private accept(socket: net.Socket, slot: Slot | undefined, certificate: MllpPeerCertificate | undefined): void {
    if (this.closing !== undefined || socket.destroyed) {
      socket.destroy();
      return;
    }
    const connection = new Connection(socket, this.options, this.nextConnectionId++, slot?.trusted ?? false, certificate, (c) => {
      this.connections.delete(c);
      if (c.closedFor === MllpCloseReason.FirstByte) this.firstByteTimeouts++;
    });
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

  /** Counters and memory accounting: what an operator (or the fuzzer) watches. */
  stats(): MllpServerStats {
    let bufferedBytes = 0;
    let retainedBytes = 0;
    for (const c of this.connections) {
      bufferedBytes += c.bufferedBytes;
      retainedBytes += c.retainedBytes;
    }
    return {
      sockets: this.rawSockets.size,
      trusted: this.trustedCount,
      connections: this.connections.size,
      bufferedBytes,
      retainedBytes,
      refused: { ...this.refused },
      firstByteTimeouts: this.firstByteTimeouts,
    };
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
      for (const socket of this.rawSockets.keys()) socket.destroy();
      await stopped;
    })();
    return this.closing;
  }
}

/** Resolves once `socket` drained its write buffer, or closed. */
export function writableAgain(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

function peerKey(socket: net.Socket): string {
  return `${socket.remoteAddress ?? ''}|${socket.remotePort ?? 0}`;
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
