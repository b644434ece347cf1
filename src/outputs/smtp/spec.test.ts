import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeTestPki, type TestPki } from '../../../test/helpers/certs.ts';
import { startSmtpServer, type TestSmtpServer } from '../../../test/helpers/smtp.ts';
import { AmbiguousError, PermanentError, RecipientError, TransientError } from '../../errors.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { createSmtp, messageIdFor, smtpSpec, type SmtpConfig } from './spec.ts';

let pki: TestPki;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'carerelay-smtp-'));
  pki = makeTestPki(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const message: OutboundMessage = {
  deliveryId: 'booking-confirmation@appointment/A1#0',
  ruleId: 'booking-confirmation',
  purpose: 'care.logistics',
  channel: 'email',
  to: 'alex@patients.example.org',
  language: 'en',
  subject: 'Your appointment is booked',
  text: 'See you on Saturday, March 16 at 1:30 PM.',
  html: '<p>See you on <b>Saturday, March 16</b> at 1:30 PM.</p>',
};

function config(server: TestSmtpServer, overrides: Partial<SmtpConfig> = {}): SmtpConfig {
  return {
    name: 'mail',
    type: 'smtp',
    host: '127.0.0.1',
    port: server.port,
    security: 'starttls',
    auth: { user: server.user, pass: { env: 'SMTP_PASS' } },
    tls: { ca: { env: 'SMTP_CA' }, servername: 'localhost' },
    from: 'Clinic <appointments@clinic.example.org>',
    timeoutSeconds: 10,
    requireUnsubscribe: true,
    baa: true,
    allowedPurposes: ['care.logistics', 'survey'],
    ...overrides,
  };
}

function depsFor(server: TestSmtpServer, ledger = memoryReceiptLedger()): OutputDeps & { ledger: typeof ledger } {
  const env: Record<string, string> = { SMTP_PASS: server.pass, SMTP_CA: pki.ca.cert };
  return { secret: (ref) => ('env' in ref ? env[ref.env]! : ''), receipts: ledger, now: () => new Date('2030-03-01T09:00:00Z'), ledger };
}

const ctx = (attempt = 1): SendContext => ({ deliveryId: message.deliveryId, attempt, signal: new AbortController().signal });

outputConformanceSuite('smtp', {
  async start({ timeoutSeconds }) {
    const server = await startSmtpServer(pki);
    const adapter = createSmtp(config(server, { timeoutSeconds }), depsFor(server));
    return {
      adapter,
      message,
      // One SMTP transaction (MAIL FROM) per send.
      requests: () => server.transactions,
      waitForRequests: async (n) => {
        await server.waitForDataEnds(n);
      },
      keys: () => server.dataMessageIds(),
      fail(fault) {
        if (fault === StandInFault.RateLimited) server.failNext({ stage: 'mail', code: 421, message: '4.7.0 Try again later, closing connection' });
        else if (fault === StandInFault.Unavailable) server.failNext({ stage: 'data', code: 451, message: '4.3.0 Temporary local problem' });
        else if (fault === StandInFault.Rejected) server.failNext({ stage: 'data', code: 554, message: '5.6.0 Message refused' });
        else if (fault === StandInFault.Hang) server.failNext({ stage: 'data', hang: true });
        else server.failNext({ stage: 'data', drop: true });
      },
      close: () => server.close(),
    };
  },
});

describe('smtp output', () => {
  let server: TestSmtpServer;
  afterEach(async () => {
    await server.close();
  });

  it('sends text and HTML over STARTTLS with AUTH, Message-ID from the delivery id, no unsubscribe on care email', async () => {
    server = await startSmtpServer(pki);
    const adapter = createSmtp(config(server), depsFor(server));
    const receipt = await adapter.send(message, ctx());
    const [mail] = server.received;
    expect(mail!.to).toEqual(['alex@patients.example.org']);
    expect(mail!.from).toBe('appointments@clinic.example.org');
    expect(mail!.parsed.subject).toBe('Your appointment is booked');
    expect(mail!.parsed.text?.trim()).toBe(message.text);
    expect(mail!.parsed.html).toBe(message.html);
    expect(mail!.parsed.messageId).toBe(messageIdFor(message.deliveryId, 'clinic.example.org'));
    expect(receipt.providerId).toBe(mail!.parsed.messageId);
    expect(mail!.parsed.headers.get('auto-submitted')).toBe('auto-generated');
    expect(mail!.parsed.headers.has('list-unsubscribe')).toBe(false);
    // No identifier of the delivery in clear anywhere in the headers.
    expect(mail!.raw.split('\r\n\r\n')[0]).not.toContain('A1');
  });

  it('non-care email carries List-Unsubscribe and RFC 8058 one-click; without a link it is refused', async () => {
    server = await startSmtpServer(pki);
    const adapter = createSmtp(config(server), depsFor(server));
    const survey = { ...message, deliveryId: 'survey@encounter/V1#0', purpose: 'survey' as const };
    await adapter.send({ ...survey, unsubscribe: { url: 'https://carerelay.example.org/u/abc?sig=1', mailto: 'mailto:unsubscribe@clinic.example.org?subject=abc' } }, ctx());
    const head = server.received[0]!.raw.split('\r\n\r\n')[0];
    expect(head).toContain('\r\nList-Unsubscribe: <https://carerelay.example.org/u/abc?sig=1>, <mailto:unsubscribe@clinic.example.org?subject=abc>\r\n');
    expect(head).toContain('\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n');
    await expect(adapter.send(survey, ctx())).rejects.toMatchObject({ code: 'unsubscribe_missing', failureClass: 'permanent' });
    expect(server.transactions).toBe(1);
  });

  it('a 5xx to RCPT TO is a hard bounce: permanent, recorded, with the signal for the consent ledger', async () => {
    server = await startSmtpServer(pki);
    const deps = depsFor(server);
    const adapter = createSmtp(config(server), deps);
    server.failNext({ stage: 'rcpt', code: 550, message: '5.1.1 The email account that you tried to reach does not exist' });
    const error = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RecipientError);
    expect(error).toMatchObject({ signal: 'hard_bounce', code: 'hard_bounce', providerCode: '550' });
    expect(deps.ledger.receipts.filter((r) => r.status === 'bounced')).toEqual([
      { deliveryId: message.deliveryId, output: 'mail', status: 'bounced', code: '550', attempt: 1, at: '2030-03-01T09:00:00.000Z' },
    ]);
    // The send ledger (at most once per delivery) says the call was refused.
    expect(deps.ledger.receipts.map((r) => r.status)).toEqual(['sending', 'bounced', 'refused']);
    // A policy refusal (relaying denied) is permanent but says nothing about the mailbox.
    server.failNext({ stage: 'rcpt', code: 550, message: '5.7.1 Relaying denied' });
    const policy = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(policy).toBeInstanceOf(PermanentError);
    expect(policy).not.toBeInstanceOf(RecipientError);
    // Greylisting: try later.
    server.failNext({ stage: 'rcpt', code: 450, message: '4.2.0 Greylisted, try again' });
    await expect(adapter.send(message, ctx())).rejects.toBeInstanceOf(TransientError);
    expect(server.received).toHaveLength(0);
  });

  it('sends an email at most once per delivery: after a crash in the middle of the conversation it parks', async () => {
    server = await startSmtpServer(pki);
    const deps = depsFor(server);
    const adapter = createSmtp(config(server), deps);
    // What an attempt that died during its conversation leaves: `sending`, and nothing after it.
    await deps.receipts.addDeliveryReceipt({ deliveryId: message.deliveryId, output: 'mail', status: 'sending', attempt: 1, at: '2030-03-01T08:59:00.000Z' });
    await expect(adapter.send(message, ctx(2))).rejects.toMatchObject({ failureClass: 'ambiguous', code: 'smtp_outcome_unknown' });
    expect(server.received).toHaveLength(0);
    // Replayed by a person: sent once; a later attempt finds it accepted and sends nothing.
    await adapter.send(message, ctx(3));
    await adapter.send(message, ctx(4));
    expect(server.received).toHaveLength(1);
  });

  it('a connection dropped after the message was transferred is ambiguous; dropped before DATA it is transient', async () => {
    server = await startSmtpServer(pki);
    const adapter = createSmtp(config(server), depsFor(server));
    server.failNext({ stage: 'data', drop: true });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'smtp_outcome_unknown', failureClass: 'ambiguous' });
    expect(server.dataEnds).toBe(1);
    await server.close();
    // Nobody listens any more: nothing can have been sent.
    const error = await adapter.send(message, ctx(2)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransientError);
    expect(error).not.toBeInstanceOf(AmbiguousError);
    server = await startSmtpServer(pki);
  });

  it('wrong credentials are permanent; a server without a trusted certificate gets nothing', async () => {
    server = await startSmtpServer(pki);
    const wrong = createSmtp(config(server), { ...depsFor(server), secret: (ref) => ('env' in ref && ref.env === 'SMTP_CA' ? pki.ca.cert : 'nope') });
    await expect(wrong.send(message, ctx())).rejects.toMatchObject({ code: 'smtp_auth_failed', failureClass: 'permanent' });
    const untrusted = createSmtp(config(server, { tls: { ca: { env: 'OTHER_CA' } } }), {
      ...depsFor(server),
      secret: (ref) => ('env' in ref && ref.env === 'OTHER_CA' ? pki.untrustedCa.cert : server.pass),
    });
    await expect(untrusted.send(message, ctx())).rejects.toBeInstanceOf(TransientError);
    expect(server.transactions).toBe(0);
  });

  it('checks security and from when the config loads', () => {
    const base = { ...config({ port: 25 } as TestSmtpServer), host: 'smtp.example.org', security: 'none' as const, from: 'nobody' };
    expect(smtpSpec.check!(base).map((i) => i.path.join('.'))).toEqual(['security', 'from']);
  });
});
