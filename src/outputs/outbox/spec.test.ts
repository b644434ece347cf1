import { describe, expect, it } from 'vitest';
import { createAjv, validateWithSchema } from '../../config/yaml.ts';
import { PURPOSES } from '../../types.ts';
import type { OutboundMessage } from '../spec.ts';
import { outputInfos } from '../spec.ts';
import { createOutbox, outboxSpec, type OutboxConfig } from './spec.ts';

const message: OutboundMessage = {
  deliveryId: 'reminder@appointment/A1#0',
  ruleId: 'reminder',
  purpose: 'care.logistics',
  channel: 'sms',
  to: '+33612345678',
  language: 'fr',
  text: 'Rappel',
};

describe('outbox output', () => {
  it('fills defaults (covered, every purpose) and refuses unknown keys and channels', () => {
    const config: Record<string, unknown> = { name: 'box', type: 'outbox', channel: 'sms' };
    expect(validateWithSchema(createAjv(), outboxSpec.configSchema, config, 'c.yaml', () => undefined)).toEqual([]);
    expect(config).toEqual({ name: 'box', type: 'outbox', channel: 'sms', baa: true, allowedPurposes: [...PURPOSES] });
    const bad = { name: 'box', type: 'outbox', channel: 'fax', colour: 1 };
    const messages = validateWithSchema(createAjv(), outboxSpec.configSchema, bad, 'c.yaml', () => undefined).map((i) => i.message);
    expect(messages).toEqual(expect.arrayContaining([expect.stringMatching(/unknown key "colour"/), expect.stringMatching(/"channel" must be one of/)]));
  });

  it('gives routing its channel, coverage and purposes', () => {
    const outputs = [{ type: 'outbox', name: 'box', config: { name: 'box', type: 'outbox', channel: 'email', baa: false, allowedPurposes: ['survey'] } }, { type: 'unknown', name: 'x', config: {} }];
    expect(outputInfos(outputs, [outboxSpec as never])).toEqual([{ name: 'box', channel: 'email', baa: false, allowedPurposes: ['survey'] }]);
  });

  it('keeps the message in its sink instead of sending it', async () => {
    const kept: unknown[] = [];
    const config: OutboxConfig = { name: 'box', type: 'outbox', channel: 'sms', baa: true, allowedPurposes: PURPOSES };
    const adapter = createOutbox(config, { sink: { put: async (entry) => void kept.push(entry) }, now: () => new Date('2025-06-09T12:30:00Z') });
    const receipt = await adapter.send(message, { deliveryId: message.deliveryId, attempt: 1, signal: new AbortController().signal });
    expect(receipt).toEqual({ providerId: 'box/reminder@appointment/A1#0', acceptedAt: '2025-06-09T12:30:00.000Z' });
    expect(kept).toEqual([{ output: 'box', message, keptAt: '2025-06-09T12:30:00.000Z' }]);
    expect(adapter).toMatchObject({ channel: 'sms', baa: true, idempotent: true });
    const aborted = AbortSignal.abort();
    await expect(adapter.send(message, { deliveryId: message.deliveryId, attempt: 2, signal: aborted })).rejects.toThrow();
  });
});
