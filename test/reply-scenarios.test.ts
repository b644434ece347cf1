// The reply scenario suite: test/reply-scenarios/mappings/*.test.yaml are mapping tests of
// patients answering reminders (the inbound order, staff tasks, write-backs). They run against
// the simulated EHR, and the confirmations run once more with each write-back output for real,
// against a local stand-in of its EHR interface, which must then hold the confirmation.
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.ts';
import { readSecret } from '../src/config/yaml.ts';
import { outputSpecs } from '../src/outputs/index.ts';
import { createOutputs } from '../src/workers/runtime.ts';
import { runMappingTests } from '../src/workers/mapping-tests.ts';
import { memoryReceiptLedger } from '../src/outputs/conformance.ts';
import type { OutboundAdapter } from '../src/outputs/spec.ts';
import { startFhirAppointmentStandIn, startOracleAppointmentStandIn, type AppointmentStandIn } from './helpers/appointment-standins.ts';
import { startSrrResponder, type SrrResponder } from './helpers/srr-responder.ts';
import { startWebhookSink, type WebhookSink } from './helpers/webhook-sink.ts';

const ROOT = path.resolve(import.meta.dirname, 'reply-scenarios');
const DIR = path.join(ROOT, 'mappings');
const WEBHOOK_SECRET = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;

describe('reply scenarios (mapping tests)', () => {
  it('every scenario passes against the simulated EHR', async () => {
    const results = await runMappingTests(DIR, { env: {} });
    expect(results.failed.map((f) => `${f.file} — ${f.test}\n${f.diff}`).join('\n\n')).toBe('');
    expect(results.passed).toBeGreaterThanOrEqual(17);
    expect([...new Set(results.results.map((r) => path.basename(r.file)))].sort()).toEqual(['confirm-each-style.test.yaml', 'inbound.test.yaml', 'write-back.test.yaml']);
  });

  describe('confirmations written back through each real output', () => {
    let fhir: AppointmentStandIn;
    let oracle: AppointmentStandIn;
    let srr: SrrResponder;
    let sink: WebhookSink;
    let adapters: Map<string, OutboundAdapter>;
    let env: Record<string, string>;

    beforeEach(async () => {
      [fhir, oracle, srr, sink] = await Promise.all([startFhirAppointmentStandIn(), startOracleAppointmentStandIn(), startSrrResponder(), startWebhookSink({ secrets: [WEBHOOK_SECRET] })]);
      fhir.book('F-FHIR', 'MRN-FHIR');
      oracle.book('F-ORACLE', 'MRN-ORACLE');
      srr.appointments.set('F-SRM', { confirmed: false, cancelled: false });
      env = {
        FHIR_BASE: fhir.baseUrl,
        FHIR_TOKEN: fhir.token,
        ORACLE_BASE: oracle.baseUrl,
        ORACLE_TOKEN: oracle.token,
        SRM_PORT: String(srr.port),
        WEBHOOK_URL: sink.url,
        WEBHOOK_SECRET,
      };
      const plan = await loadConfig({ configDir: ROOT, env });
      adapters = createOutputs(plan.outputs, outputSpecs, { secret: (ref: Parameters<typeof readSecret>[0]) => readSecret(ref, env, ROOT), receipts: memoryReceiptLedger(), now: () => new Date() });
    });
    afterEach(async () => {
      await Promise.all([...adapters.values()].map((a) => a.close?.()));
      await Promise.all([fhir.close(), oracle.close(), srr.close(), sink.close()]);
    });

    it('FHIR participant accepted, Millennium patient-status accepted, SRM^S03 answered AA, the webhook accepted', async () => {
      const results = await runMappingTests(DIR, {
        env,
        files: [path.join(DIR, 'confirm-each-style.test.yaml')],
        writeBack: (output, operation) => adapters.get(output)!.writeBack!(operation, { signal: new AbortController().signal, attempt: 1 }),
      });
      expect(results.failed.map((f) => `${f.test}\n${f.diff}`).join('\n\n')).toBe('');
      expect(results.passed).toBe(4);

      expect(fhir.state('F-FHIR')).toEqual({ confirmed: true, cancelled: false });
      expect(fhir.writes().map((w) => [w.method, w.headers['if-match']])).toEqual([['PUT', 'W/"1"']]);
      expect(oracle.state('F-ORACLE')).toEqual({ confirmed: true, cancelled: false });
      expect(JSON.parse(oracle.writes()[0]!.text)).toEqual([{ op: 'replace', path: '/patient-status', value: 'accepted' }]);
      expect(srr.received).toEqual([expect.objectContaining({ type: 'SRM^S03^SRM_S01', arq: expect.objectContaining({ 1: 'P-SRM', 2: 'F-SRM' }), patient: 'MRN-SRM^^^GHH^MR', answered: 'AA' })]);
      expect(srr.appointments.get('F-SRM')?.confirmed).toBe(true);
      expect([...sink.accepted().values()]).toEqual([expect.objectContaining({ type: 'carerelay.appointment.confirm', appointment: { id: 'F-HOOK', placerId: 'P-HOOK' } })]);
      expect(sink.requests[0]).toMatchObject({ signed: true });
    });
  });
});
