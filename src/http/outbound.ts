// One outbound HTTP request, made the way a middleware that talks to other people's servers must
// (docs/reliability.md "Security defaults", invariant 4):
//
// - exactly one request: no retry here (the queue retries, with backoff, honouring Retry-After);
// - private, loopback, link-local and other non-public addresses are refused unless allow-listed,
//   checked on every address the name resolves to and again on the socket actually connected
//   (a name that resolves to 127.0.0.1, or a DNS answer that changes between check and
//   connect, cannot slip through);
// - redirects: a 307/308 to the same origin is followed (the method and body are kept), at
//   most 3 times; any other redirect comes back as the answer, never followed to another host;
// - one deadline for the whole exchange and the caller's AbortSignal;
// - every failure says whether the request had fully left: a failure before that is
//   transient (nothing can have happened), after it ambiguous (the server may have acted);
// - connections kept alive between requests of one destination when its caller keeps them
//   (KeepAlive, one per output): the address check runs when a connection is made and again
//   each time one is reused; an idle connection is closed after a few seconds (sooner when the
//   server's Keep-Alive header says so), well before servers close theirs, so a request rarely
//   meets a connection the server is closing.
//
// Error codes are `<prefix>_<reason>` from the allow-list below; messages carry the host and
// the HTTP status, never bodies.
import dns from 'node:dns';
import http, { type IncomingHttpHeaders } from 'node:http';
import https from 'node:https';
import net, { BlockList } from 'node:net';
import { AmbiguousError, PermanentError, TransientError } from '../errors.ts';

/**
 * Retry-After (RFC 9110 §10.2.3): delay-seconds or an HTTP-date. Returns ms from `nowMs`,
 * or undefined when absent or unreadable. Never negative.
 */
export function parseRetryAfter(value: string | null | undefined, nowMs: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - nowMs);
}

const LOOPBACK_HOSTS = new Set(['localhost', '[::1]']);

/** True for http(s) URLs on a loopback address (127.0.0.0/8, ::1, localhost). */
export function isLoopbackUrl(url: URL): boolean {
  return LOOPBACK_HOSTS.has(url.hostname) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(url.hostname);
}

/** Reason codes of request failures (suffixes of `<prefix>_…`). */
export const RequestFailure = {
  /** The name or the connected address is not public and not allow-listed. */
  AddressRefused: 'address_refused',
  /** DNS failed, or the connection was refused or failed before the request left. */
  Unreachable: 'unreachable',
  /** No complete answer within the deadline. */
  Timeout: 'timeout',
  /** The connection broke after the request had left, before a complete answer. */
  ConnectionLost: 'connection_lost',
  /** The caller's signal aborted the exchange. */
  Aborted: 'aborted',
} as const;

// Addresses that are not on the public Internet (IANA special-purpose registries).
const NON_PUBLIC = new BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, 'ipv4');
}
for (const [network, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  NON_PUBLIC.addSubnet(network, prefix, 'ipv6');
}

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is checked as the IPv4 address it carries. */
function normalizeAddress(address: string): { address: string; type: 'ipv4' | 'ipv6' } | undefined {
  const bare = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(bare);
  if (mapped) return { address: mapped[1]!, type: 'ipv4' };
  const family = net.isIP(bare);
  if (family === 4) return { address: bare, type: 'ipv4' };
  if (family === 6) return { address: bare, type: 'ipv6' };
  return undefined;
}

/**
 * Which addresses a destination may be reached at: every public address, plus the
 * allow-listed ones (IPs or CIDR blocks, e.g. `127.0.0.1`, `10.20.0.0/16`, `fd00::/8`).
 */
export class AddressPolicy {
  readonly #allowed = new BlockList();

  /** Throws a RangeError naming the entry when one is not an IP or a CIDR block. */
  constructor(allowList: readonly string[] = []) {
    for (const entry of allowList) {
      const [ip, bits, extra] = entry.split('/');
      const normalized = ip === undefined ? undefined : normalizeAddress(ip);
      const max = normalized?.type === 'ipv4' ? 32 : 128;
      const prefix = bits === undefined ? max : Number(bits);
      if (normalized === undefined || extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > max) {
        throw new RangeError(`"${entry}" is not an IP address or CIDR block (e.g. 127.0.0.1 or 10.0.0.0/8)`);
      }
      this.#allowed.addSubnet(normalized.address, prefix, normalized.type);
    }
  }

  /** Whether `address` may be connected to. Anything that is not an IP address is refused. */
  permits(address: string): boolean {
    const normalized = normalizeAddress(address);
    if (normalized === undefined) return false;
    if (this.#allowed.check(normalized.address, normalized.type)) return true;
    return !NON_PUBLIC.check(normalized.address, normalized.type);
  }
}

/** Idle kept-alive connections are closed after this long, ms (a server's Keep-Alive hint shortens it). */
export const KEEP_ALIVE_IDLE_MS = 4_000;

/**
 * The kept-alive connections of one destination's requests (an output's). Connections are not
 * shared between outputs, so one output's allow-list never lets another's request through.
 */
export class KeepAlive {
  readonly #http: http.Agent;
  readonly #https: https.Agent;

  constructor(options: { idleMs?: number; maxSockets?: number } = {}) {
    // lifo: the connection used last goes first, the ones left idle age out.
    const agentOptions = { keepAlive: true, timeout: options.idleMs ?? KEEP_ALIVE_IDLE_MS, scheduling: 'lifo' as const, ...(options.maxSockets ? { maxSockets: options.maxSockets } : {}) };
    this.#http = new http.Agent(agentOptions);
    this.#https = new https.Agent(agentOptions);
  }

  agentFor(url: URL): http.Agent {
    return url.protocol === 'https:' ? this.#https : this.#http;
  }

  /** Closes every kept connection (the output stops). */
  close(): void {
    this.#http.destroy();
    this.#https.destroy();
  }
}

export interface OutboundRequest {
  url: URL;
  /** Default POST. A GET sends an empty body. */
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  headers: Record<string, string>;
  body: Buffer;
  /** Deadline for the whole exchange (connect, send, answer), ms. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Undefined: any address (a provider's fixed API host). */
  addresses?: AddressPolicy;
  /** Error code prefix, e.g. `webhook` → `webhook_timeout`. */
  codePrefix: string;
  /** Answer bytes kept (the rest is not read). Default 65,536. */
  maxResponseBytes?: number;
  /** Keep connections between requests (the caller's own pool); default a fresh connection per request. */
  keepAlive?: KeepAlive;
}

export interface OutboundResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** At most maxResponseBytes. */
  body: Buffer;
  /** The URL that answered (after same-origin 307/308 redirects). */
  url: URL;
}

const MAX_SAME_ORIGIN_REDIRECTS = 3;

class AddressRefused extends Error {
  override readonly name = 'AddressRefused';
}

/**
 * Makes one request (plus at most 3 same-origin 307/308 hops) and returns the answer, whatever
 * its status; throws a classified error when there is no answer.
 */
export async function sendOnce(request: OutboundRequest): Promise<OutboundResponse> {
  let url = request.url;
  for (let hop = 0; ; hop++) {
    const response = await exchange({ ...request, url });
    const location = response.headers.location;
    if ((response.status === 307 || response.status === 308) && location !== undefined && hop < MAX_SAME_ORIGIN_REDIRECTS) {
      let target: URL | undefined;
      try {
        target = new URL(location, url);
      } catch {
        target = undefined;
      }
      if (target !== undefined && target.origin === url.origin && target.username === '' && target.password === '') {
        url = target;
        continue;
      }
    }
    return response;
  }
}

function exchange(request: OutboundRequest): Promise<OutboundResponse> {
  const { url, codePrefix: prefix } = request;
  const code = (reason: string) => `${prefix}_${reason}`;
  const host = url.host;
  return new Promise<OutboundResponse>((resolve, reject) => {
    const policy = request.addresses;
    const literal = normalizeAddress(url.hostname);
    if (policy !== undefined && literal !== undefined && !policy.permits(literal.address)) {
      reject(new PermanentError(code(RequestFailure.AddressRefused), `${host} is not a public address; allow-list it to send there`));
      return;
    }
    if (request.signal?.aborted) {
      reject(new TransientError(code(RequestFailure.Aborted), `request to ${host} aborted before it started`));
      return;
    }
    let sent = false;
    let settled = false;
    const fail = (error: Error): void => {
      if (settled) return;
      settled = true;
      cleanup();
      req.destroy();
      reject(error);
    };
    const lookup: net.LookupFunction = (hostname, options, callback) => {
      dns.lookup(hostname, { all: true, family: options.family ?? 0, hints: options.hints ?? 0 }, (error, addresses) => {
        if (error) {
          callback(error, '', 4);
          return;
        }
        const usable = policy === undefined ? addresses : addresses.filter((a) => policy.permits(a.address));
        if (usable.length === 0) {
          callback(new AddressRefused(`${hostname} resolves only to non-public addresses`) as NodeJS.ErrnoException, '', 4);
          return;
        }
        if (options.all) (callback as unknown as (e: null, a: dns.LookupAddress[]) => void)(null, usable);
        else callback(null, usable[0]!.address, usable[0]!.family);
      });
    };
    const transport = url.protocol === 'https:' ? https : http;
    const req = transport.request(url, {
      method: request.method ?? 'POST',
      headers: { ...request.headers, 'content-length': String(request.body.length) },
      lookup,
      // Without the caller's pool, a fresh connection per request.
      agent: request.keepAlive?.agentFor(url) ?? false,
    });
    const timer = setTimeout(() => {
      fail(
        sent
          ? new AmbiguousError(code(RequestFailure.Timeout), `no answer from ${host} within ${request.timeoutMs} ms; the request had left`)
          : new TransientError(code(RequestFailure.Timeout), `no connection to ${host} within ${request.timeoutMs} ms`),
      );
    }, request.timeoutMs);
    const onAbort = (): void => {
      fail(
        sent
          ? new AmbiguousError(code(RequestFailure.Aborted), `request to ${host} aborted after it had left`)
          : new TransientError(code(RequestFailure.Aborted), `request to ${host} aborted before it left`),
      );
    };
    request.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      request.signal?.removeEventListener('abort', onAbort);
    };
    req.on('socket', (socket) => {
      if (policy === undefined) return;
      // The address actually connected, whatever resolved it: when the connection is made, and
      // for a kept-alive one at every reuse.
      const check = (): void => {
        const remote = socket.remoteAddress;
        if (remote !== undefined && !policy.permits(remote)) {
          fail(new PermanentError(code(RequestFailure.AddressRefused), `${host} connected to a non-public address; allow-list it to send there`));
        }
      };
      if ((socket as net.Socket).connecting) socket.once('connect', check);
      else check();
    });
    req.on('finish', () => {
      sent = true;
    });
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error instanceof AddressRefused || error.cause instanceof AddressRefused) {
        fail(new PermanentError(code(RequestFailure.AddressRefused), `${host} resolves only to non-public addresses; allow-list them to send there`));
      } else if (sent) {
        fail(new AmbiguousError(code(RequestFailure.ConnectionLost), `connection to ${host} lost after the request had left (${error.code ?? 'error'})`, { cause: error }));
      } else {
        fail(new TransientError(code(RequestFailure.Unreachable), `${host} unreachable (${error.code ?? 'error'})`, { cause: error }));
      }
    });
    req.on('response', (res) => {
      const limit = request.maxResponseBytes ?? 65_536;
      const chunks: Buffer[] = [];
      let size = 0;
      const done = (): void => {
        if (settled) return;
        settled = true;
        cleanup();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), url });
      };
      res.on('data', (chunk: Buffer) => {
        if (size >= limit) return;
        chunks.push(chunk.subarray(0, limit - size));
        size += chunk.length;
        if (size >= limit) {
          // Enough: the status is known and the rest is not ours to read.
          res.destroy();
          done();
        }
      });
      res.on('end', done);
      res.on('error', (error: NodeJS.ErrnoException) => {
        fail(new AmbiguousError(code(RequestFailure.ConnectionLost), `connection to ${host} lost while reading the answer (${error.code ?? 'error'})`, { cause: error }));
      });
      res.on('close', () => {
        if (!res.complete) fail(new AmbiguousError(code(RequestFailure.ConnectionLost), `connection to ${host} lost while reading the answer`));
      });
    });
    req.end(request.body);
  });
}

/** The answer's header as one string (the first of a repeated one). */
export function headerOf(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}
