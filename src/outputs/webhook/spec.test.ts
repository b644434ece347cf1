import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startWebhookSink, type WebhookSink } from '../../../test/helpers/webhook-sink.ts';
import { PermanentError } from '../../errors.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import { writeBackConformanceSuite, WriteBackFault } from '../write-back-conformance.ts';
import { CANCELLED_BY_REMINDER } from '../write-back.ts';
import type { OutboundMessage, OutputDeps } from '../spec.ts';
import { createWebhook, webhookSpec, type WebhookConfig } from './spec.ts';

const SECRET = `whsec_${Buffer.alloc(32, 1).toString('base64')}`;
const OLD_SECRET = `whsec_${Buffer.alloc(32, 2).toString('base64')}`;

const message: OutboundMessage = {
  deliveryId: 'crm-sync@appointment/A1#0',
  ruleId: 'crm-sync',
  purpose: 'care.logistics',
  channel: 'webhook',
  language: 'en',
  text: '{}',
  fields: { appointment: { start: '2030-03-16T13:30:00+00:00' }, patient: { name: { given: ['Alex'] } } },
};

function deps(env: Record<string, string>): OutputDeps {
  return {
    secret: (ref) => ('env' in ref ? env[ref.env]! : ''),
    receipts: memoryReceiptLedger(),
    now: () => new Date(),
  };
}

function config(sink: WebhookSink, overrides: Partial<WebhookConfig> = {}): WebhookConfig {
  return {
    name: 'crm',
    type: 'webhook',
    url: sink.url,
    secrets: [{ env: 'WEBHOOK_SECRET' }],
    channel: 'webhook',
    timeoutSeconds: 10,
    receiverDedupes: true,
    includeMessage: false,
    allowPrivateAddresses: ['127.0.0.1'],
    allowInsecureHttp: false,
    baa: false,
    allowedPurposes: ['care.logistics'],
    ...overrides,
  };
}

outputConformanceSuite('webhook', {
  async start({ timeoutSeconds }) {
    const sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { timeoutSeconds }), deps({ WEBHOOK_SECRET: SECRET }));
    return {
      adapter,
      message,
      requests: () => sink.requests.length,
      waitForRequests: (n) => sink.waitFor(n),
      keys: () => sink.requests.map((r) => r.id ?? ''),
      retryAfterMs: 7000,
      fail(fault) {
        if (fault === StandInFault.RateLimited) sink.failNext({ kind: 'status', status: 429, retryAfter: '7' });
        else if (fault === StandInFault.Unavailable) sink.failNext({ kind: 'status', status: 503 });
        else if (fault === StandInFault.Rejected) sink.failNext({ kind: 'status', status: 400 });
        else if (fault === StandInFault.Hang) sink.failNext({ kind: 'hang' });
        else sink.failNext({ kind: 'reset' });
      },
      close: () => sink.close(),
    };
  },
});

describe('webhook output', () => {
  let sink: WebhookSink | undefined;
  afterEach(async () => {
    await sink?.close();
    sink = undefined;
  });

  it('posts the mapped fields with delivery id, rule and purpose, signed with every secret (rotation)', async () => {
    sink = await startWebhookSink({ secrets: [OLD_SECRET] });
    const adapter = createWebhook(config(sink, { secrets: [{ env: 'NEW' }, { env: 'OLD' }] }), deps({ NEW: SECRET, OLD: OLD_SECRET }));
    const receipt = await adapter.send(message, { deliveryId: message.deliveryId, attempt: 1, signal: new AbortController().signal });
    expect(receipt.providerId).toBe(message.deliveryId);
    const [request] = sink.requests;
    expect(request).toMatchObject({ id: message.deliveryId, signed: true, status: 204, contentType: 'application/json' });
    expect(JSON.parse(request!.body)).toEqual({
      type: 'carerelay.delivery',
      deliveryId: message.deliveryId,
      rule: 'crm-sync',
      purpose: 'care.logistics',
      fields: message.fields,
    });
  });

  it('includes the rendered message only when asked', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { includeMessage: true }), deps({ WEBHOOK_SECRET: SECRET }));
    await adapter.send({ ...message, text: 'See you soon' }, { deliveryId: message.deliveryId, attempt: 1, signal: new AbortController().signal });
    expect(JSON.parse(sink.requests[0]!.body).message).toEqual({ language: 'en', text: 'See you soon' });
  });

  it('refuses a loopback receiver that is not allow-listed, without a request', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { allowPrivateAddresses: [] }), deps({ WEBHOOK_SECRET: SECRET }));
    const error = await adapter.send(message, { deliveryId: message.deliveryId, attempt: 1, signal: new AbortController().signal }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'webhook_address_refused' });
    expect(sink.requests).toHaveLength(0);
  });

  it('does not follow a redirect to another host; a wrong secret is a permanent 401', async () => {
    const other = http.createServer((_req, res) => res.end());
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    let hit = false;
    other.on('request', () => (hit = true));
    sink = await startWebhookSink({ secrets: [SECRET] });
    sink.failNext({ kind: 'redirect', status: 307, location: `http://localhost:${(other.address() as AddressInfo).port}/x` });
    const adapter = createWebhook(config(sink), deps({ WEBHOOK_SECRET: SECRET }));
    const ctx = { deliveryId: message.deliveryId, attempt: 1, signal: new AbortController().signal };
    await expect(adapter.send(message, ctx)).rejects.toMatchObject({ code: 'webhook_redirect_refused', failureClass: 'permanent' });
    expect(hit).toBe(false);
    const wrong = createWebhook(config(sink), deps({ WEBHOOK_SECRET: OLD_SECRET }));
    await expect(wrong.send(message, ctx)).rejects.toMatchObject({ code: 'webhook_unauthorized', failureClass: 'permanent' });
    other.close();
  });

  it('posts to a receiver that does not dedupe at most once per delivery: after a crash during the call it parks', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    const ledger = memoryReceiptLedger();
    const adapter = createWebhook(config(sink, { receiverDedupes: false }), { ...deps({ WEBHOOK_SECRET: SECRET }), receipts: ledger });
    expect(adapter.idempotent).toBe(false);
    const ctx = (attempt: number) => ({ deliveryId: message.deliveryId, attempt, signal: new AbortController().signal });
    // What an attempt that died during its call leaves: `sending`, and nothing after it.
    await ledger.addDeliveryReceipt({ deliveryId: message.deliveryId, output: 'crm', status: 'sending', attempt: 1, at: new Date().toISOString() });
    await expect(adapter.send(message, ctx(2))).rejects.toMatchObject({ failureClass: 'ambiguous', code: 'webhook_outcome_unknown' });
    expect(sink.requests).toHaveLength(0);
    // Replayed by a person: posted once; a later attempt finds it accepted and posts nothing.
    expect(await adapter.send(message, ctx(3))).toMatchObject({ providerId: message.deliveryId });
    expect(await adapter.send(message, ctx(4))).toMatchObject({ providerId: message.deliveryId });
    expect(sink.requests).toHaveLength(1);
  });

  it('refuses a secret that is not a Standard Webhooks secret at start', () => {
    expect(() => createWebhook(config({ url: 'https://example.org/h' } as WebhookSink), deps({ WEBHOOK_SECRET: 'not base64!' }))).toThrow(
      /output "crm": secrets\[0\] is not a Standard Webhooks secret/,
    );
  });

  it('checks the URL and the allow-list when the config loads', () => {
    const issues = webhookSpec.check!(config({ url: 'http://crm.example.org/h' } as WebhookSink, { allowPrivateAddresses: ['intranet'] }));
    expect(issues.map((i) => i.path.join('.'))).toEqual(['url', 'allowPrivateAddresses.0']);
    expect(webhookSpec.info(config({ url: 'https://x' } as WebhookSink, { receiverDedupes: false })).idempotent).toBe(false);
  });
});

/** A scheduling system behind a webhook: what it accepted, by webhook-id, is what it did. */
writeBackConformanceSuite('webhook (writeBack: true)', {
  async start({ timeoutSeconds }) {
    const sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { timeoutSeconds, writeBack: true }), deps({ WEBHOOK_SECRET: SECRET }));
    const done = (type: string) => [...sink.accepted().values()].some((b) => (b as { type: string }).type === type);
    return {
      adapter,
      appointment: { id: 'A-1', placerId: 'P-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1', type: 'MR' }] },
      state: async () => ({
        confirmed: done('carerelay.appointment.confirm'),
        cancelled: done('carerelay.appointment.cancel'),
        ...(done('carerelay.appointment.cancel') ? { cancelReason: 'pat-crs' } : {}),
      }),
      // The system refuses every change now (the appointment was fulfilled on its side).
      refuse: () => sink.failNext({ kind: 'status', status: 409 }, 10),
      fail(fault) {
        if (fault === WriteBackFault.RateLimited) sink.failNext({ kind: 'status', status: 429, retryAfter: '7' });
        else if (fault === WriteBackFault.Unavailable) sink.failNext({ kind: 'status', status: 503 });
        else sink.failNext({ kind: 'hang' });
      },
      retryAfterMs: 7000,
      keys: () => sink.requests.map((r) => r.id ?? ''),
      close: () => sink.close(),
    };
  },
});

describe('webhook write-back', () => {
  let sink: WebhookSink | undefined;
  afterEach(async () => {
    await sink?.close();
    sink = undefined;
  });
  const signal = new AbortController().signal;

  it('posts a signed carerelay.appointment.cancel with the pat-crs reason; webhook-id is the request id', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { writeBack: true }), deps({ WEBHOOK_SECRET: SECRET }));
    const result = await adapter.writeBack!(
      { kind: 'cancel', requestId: 'wb~r@appointment/A-1#0', appointment: { id: 'A-1' }, patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] }, reason: CANCELLED_BY_REMINDER },
      { signal, attempt: 1 },
    );
    expect(result).toEqual({ outcome: 'applied', appointmentId: 'A-1' });
    expect(sink.requests[0]).toMatchObject({ id: 'wb~r@appointment/A-1#0', signed: true, status: 204 });
    expect(JSON.parse(sink.requests[0]!.body)).toEqual({
      type: 'carerelay.appointment.cancel',
      requestId: 'wb~r@appointment/A-1#0',
      appointment: { id: 'A-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] },
      reason: { system: 'http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason', code: 'pat-crs', display: 'Patient: Canceled via automated reminder system' },
    });
  });

  it('books a waitlist slot: a signed carerelay.appointment.book with the slot; 409 is denied (the slot is not bookable)', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    const adapter = createWebhook(config(sink, { writeBack: true }), deps({ WEBHOOK_SECRET: SECRET }));
    expect(adapter.writeBackKinds).toEqual(['confirm', 'cancel', 'book']);
    const op = {
      kind: 'book' as const,
      requestId: 'wl~wl-1',
      appointment: { id: 'FREE-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] },
      slot: { start: '2030-03-12T09:00:00Z', durationMinutes: 30, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' } },
    };
    expect(await adapter.writeBack!(op, { signal, attempt: 1 })).toEqual({ outcome: 'applied' });
    expect(sink.requests[0]).toMatchObject({ id: 'wl~wl-1', signed: true });
    expect(JSON.parse(sink.requests[0]!.body)).toEqual({
      type: 'carerelay.appointment.book',
      requestId: 'wl~wl-1',
      appointment: { id: 'FREE-1' },
      patient: { id: 'MRN-1', identifiers: [{ value: 'MRN-1' }] },
      slot: { start: '2030-03-12T09:00:00Z', durationMinutes: 30, serviceType: { code: 'CHK' }, practitioner: { id: 'DR-22' } },
    });
    sink.failNext({ kind: 'status', status: 409 });
    expect(await adapter.writeBack!(op, { signal, attempt: 2 })).toEqual({ outcome: 'denied', code: 'webhook_409' });
  });

  it('422 is denied; a webhook output without writeBack offers none', async () => {
    sink = await startWebhookSink({ secrets: [SECRET] });
    sink.failNext({ kind: 'status', status: 422 });
    const adapter = createWebhook(config(sink, { writeBack: true }), deps({ WEBHOOK_SECRET: SECRET }));
    expect(await adapter.writeBack!({ kind: 'confirm', requestId: 'x', appointment: { id: 'A' }, patient: { id: 'P', identifiers: [] } }, { signal, attempt: 1 })).toEqual({ outcome: 'denied', code: 'webhook_422' });
    const plain = createWebhook(config(sink), deps({ WEBHOOK_SECRET: SECRET }));
    expect(plain.writeBack).toBeUndefined();
    expect(plain.writeBackKinds).toBeUndefined();
  });
});
