// A stand-in for Twilio Programmable Messaging (REST API 2010-04-01, Messages resource), on
// 127.0.0.1 with an ephemeral port. It enforces what Twilio documents for "Create a Message":
// POST /2010-04-01/Accounts/{AccountSid}/Messages.json, HTTP Basic auth with the Account SID +
// Auth Token or an API Key SID + secret of that account (20003 / 401 otherwise), form-encoded
// body, To in E.164 (21211), From or MessagingServiceSid (21603/21604), Body 1..1,600
// characters (21602/21617), ValidityPeriod an integer 1..36,000 (21623 — Twilio's own code for
// a bad ValidityPeriod is not used by CareRelay), StatusCallback an absolute URL; errors
// answered with Twilio's JSON error body { code, message, more_info, status }.
//
// Like Twilio's test credentials it has magic numbers: +15005550001 → 21211 invalid number,
// +15005550009 → 21614 not a mobile, +15005550004 → 21610 unsubscribed recipient.
//
// It can be told to answer 429 (20429) with Retry-After, 5xx or any error, to hang or to reset
// the connection after the request, and it posts status callbacks to a message's StatusCallback,
// signed like Twilio (X-Twilio-Signature, HMAC-SHA1 written here independently of src/twilio).
import { createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Arrivals } from './arrivals.ts';
import { FaultQueue } from './faults.ts';

export interface StandInMessage {
  sid: string;
  to: string;
  from?: string;
  messagingServiceSid?: string;
  body: string;
  validityPeriod?: number;
  statusCallback?: string;
}

export interface StandInRequest {
  path: string;
  authorized: boolean;
  contentType?: string;
  form: Record<string, string>;
  /** What the stand-in answered (0: no answer). */
  status: number;
}

export type TwilioFault =
  | { kind: 'status'; status: number; code?: number; retryAfter?: string }
  | { kind: 'hang' }
  | { kind: 'reset' };

export interface TwilioStandIn {
  /** For apiBaseUrl, e.g. http://127.0.0.1:41234 */
  readonly baseUrl: string;
  readonly accountSid: string;
  readonly authToken: string;
  readonly apiKey: { sid: string; secret: string };
  readonly requests: StandInRequest[];
  readonly messages: StandInMessage[];
  failNext(fault: TwilioFault, count?: number): void;
  /** Resolves once `n` requests have arrived in full. */
  waitForRequests(n: number): Promise<void>;
  /**
   * POSTs a status callback for message `sid` to its StatusCallback, signed with the Auth
   * Token (or with `signWith`); resolves with the HTTP status CareRelay answered.
   */
  sendStatus(sid: string, status: string, options?: { errorCode?: string; signWith?: string }): Promise<number>;
  close(): Promise<void>;
}

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

function twilioSignature(token: string, url: string, params: Record<string, string>): string {
  let data = url;
  for (const key of Object.keys(params).sort()) data += key + params[key];
  return createHmac('sha1', token).update(Buffer.from(data, 'utf8')).digest('base64');
}

const MAGIC: Record<string, { code: number; message: string }> = {
  '+15005550001': { code: 21211, message: "The 'To' number +15005550001 is not a valid phone number." },
  '+15005550009': { code: 21614, message: "'To' number is not a valid mobile number" },
  '+15005550004': { code: 21610, message: 'Attempt to send to unsubscribed recipient' },
};

export async function startTwilioStandIn(): Promise<TwilioStandIn> {
  const accountSid = `AC${hex(16)}`;
  const authToken = hex(16);
  const apiKey = { sid: `SK${hex(16)}`, secret: hex(16) };
  const requests: StandInRequest[] = [];
  const messages: StandInMessage[] = [];
  const faults = new FaultQueue<TwilioFault>();
  const arrivals = new Arrivals();
  const path = `/2010-04-01/Accounts/${accountSid}/Messages.json`;
  const valid = new Set([`${accountSid}:${authToken}`, `${apiKey.sid}:${apiKey.secret}`]);

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const auth = /^Basic (.+)$/.exec(req.headers.authorization ?? '');
      const authorized = auth !== null && valid.has(Buffer.from(auth[1]!, 'base64').toString('utf8'));
      const contentType = req.headers['content-type'];
      const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      const record: StandInRequest = { path: req.url ?? '', authorized, contentType, form, status: 0 };
      requests.push(record);
      arrivals.arrive();
      const answer = (status: number, body: unknown, headers: Record<string, string> = {}) => {
        record.status = status;
        res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
      };
      const error = (status: number, code: number, message: string, headers: Record<string, string> = {}) =>
        answer(status, { code, message, more_info: `https://www.twilio.com/docs/errors/${code}`, status }, headers);

      const fault = faults.take(req, res);
      if (fault === 'handled') return;
      if (req.method !== 'POST' || req.url !== path) return error(404, 20404, 'The requested resource was not found');
      if (!authorized) return error(401, 20003, 'Authentication Error - invalid username');
      if (fault?.kind === 'status') {
        return error(fault.status, fault.code ?? (fault.status === 429 ? 20429 : 20500), 'injected', fault.retryAfter !== undefined ? { 'retry-after': fault.retryAfter } : {});
      }
      if (!(contentType ?? '').startsWith('application/x-www-form-urlencoded')) return error(415, 21100, 'Content-Type must be application/x-www-form-urlencoded');
      const to = form.To ?? '';
      if (!/^\+[1-9]\d{6,14}$/.test(to)) return error(400, 21211, `The 'To' number ${to} is not a valid phone number.`);
      if (form.From === undefined && form.MessagingServiceSid === undefined) return error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required");
      if (form.MessagingServiceSid !== undefined && !/^MG[0-9a-f]{32}$/i.test(form.MessagingServiceSid)) return error(400, 21701, 'The Messaging Service Sid is invalid');
      const body = form.Body ?? '';
      if (body === '') return error(400, 21602, 'Message body is required.');
      if (body.length > 1600) return error(400, 21617, 'The concatenated message body exceeds the 1600 character limit.');
      let validityPeriod: number | undefined;
      if (form.ValidityPeriod !== undefined) {
        validityPeriod = Number(form.ValidityPeriod);
        if (!/^\d+$/.test(form.ValidityPeriod) || validityPeriod < 1 || validityPeriod > 36000) return error(400, 21623, 'ValidityPeriod must be between 1 and 36000');
      }
      if (form.StatusCallback !== undefined) {
        try {
          new URL(form.StatusCallback);
        } catch {
          return error(400, 21609, 'Invalid StatusCallback URL');
        }
      }
      const magic = MAGIC[to];
      if (magic) return error(400, magic.code, magic.message);
      const message: StandInMessage = {
        sid: `SM${hex(16)}`,
        to,
        body,
        ...(form.From !== undefined ? { from: form.From } : {}),
        ...(form.MessagingServiceSid !== undefined ? { messagingServiceSid: form.MessagingServiceSid } : {}),
        ...(validityPeriod !== undefined ? { validityPeriod } : {}),
        ...(form.StatusCallback !== undefined ? { statusCallback: form.StatusCallback } : {}),
      };
      messages.push(message);
      answer(201, {
        sid: message.sid,
        account_sid: accountSid,
        to,
        from: form.From ?? null,
        messaging_service_sid: form.MessagingServiceSid ?? null,
        body,
        status: form.MessagingServiceSid !== undefined ? 'accepted' : 'queued',
        num_segments: '1',
        direction: 'outbound-api',
        api_version: '2010-04-01',
        error_code: null,
        error_message: null,
        uri: `${path.replace('.json', '')}/${message.sid}.json`,
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    accountSid,
    authToken,
    apiKey,
    requests,
    messages,
    failNext: (fault, count) => faults.push(fault, count),
    waitForRequests: (n) => arrivals.waitFor(n),
    async sendStatus(sid, status, options = {}) {
      const message = messages.find((m) => m.sid === sid);
      if (message?.statusCallback === undefined) throw new Error(`message ${sid} has no StatusCallback`);
      // The parameters Twilio documents for outbound message status callbacks.
      const params: Record<string, string> = {
        AccountSid: accountSid,
        ApiVersion: '2010-04-01',
        From: message.from ?? '+15005550006',
        MessageSid: sid,
        MessageStatus: status,
        SmsSid: sid,
        SmsStatus: status,
        To: message.to,
        ...(options.errorCode !== undefined ? { ErrorCode: options.errorCode } : {}),
      };
      const response = await fetch(message.statusCallback, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          'x-twilio-signature': twilioSignature(options.signWith ?? authToken, message.statusCallback, params),
        },
        body: new URLSearchParams(params).toString(),
      });
      await response.arrayBuffer();
      return response.status;
    },
    async close() {
      faults.releaseHanging();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
