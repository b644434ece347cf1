// One call to a JSON (or form-encoded) HTTP API, on top of sendOnce (outbound.ts): the body
// encoded, the answer's JSON parsed when there is some, nothing else. Marketing and CRM
// adapters use it for their REST calls; what an answer means stays with each adapter.
import type { IncomingHttpHeaders } from 'node:http';
import { sendOnce, type AddressPolicy } from './outbound.ts';

export interface ApiCall {
  url: URL;
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Auth and provider headers; content-type, accept and user-agent are set here. */
  headers: Record<string, string>;
  /** A JSON value, or form fields (application/x-www-form-urlencoded). Absent: no body. */
  body?: unknown;
  form?: URLSearchParams;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Error code prefix (the output type), e.g. `hubspot` → `hubspot_timeout`. */
  codePrefix: string;
  addresses?: AddressPolicy;
}

export interface ApiAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  /** The parsed JSON answer; undefined when the body is empty or not JSON. */
  json: unknown;
  /** Bytes of the answer (at most 64 KiB). */
  size: number;
}

/** Makes the call once; throws the classified errors of sendOnce when there is no answer. */
export async function callApi(call: ApiCall): Promise<ApiAnswer> {
  const headers: Record<string, string> = { accept: 'application/json', 'user-agent': 'CareRelay', ...call.headers };
  let body = Buffer.alloc(0);
  if (call.form !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded';
    body = Buffer.from(call.form.toString());
  } else if (call.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = Buffer.from(JSON.stringify(call.body));
  }
  const response = await sendOnce({
    url: call.url,
    method: call.method,
    headers,
    body,
    timeoutMs: call.timeoutMs,
    ...(call.signal !== undefined ? { signal: call.signal } : {}),
    ...(call.addresses !== undefined ? { addresses: call.addresses } : {}),
    codePrefix: call.codePrefix,
  });
  return { status: response.status, headers: response.headers, json: parseJson(response.body), size: response.body.length };
}

function parseJson(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

/** A JSON object's own property, or undefined (answers are data from elsewhere: read defensively). */
export function prop(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>)[key] : undefined;
}
