import { afterEach, describe, expect, it } from 'vitest';
import { startAepStandIn, type AepStandIn, type AepStandInOptions } from '../../../test/helpers/aep-standin.ts';
import { AmbiguousError, PermanentError } from '../../errors.ts';
import { pseudonym } from '../api-output.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { adobeAepSpec, ageInYears, createAdobeAep, SHIELD_REQUIRED_FIELDS, type AdobeAepConfig } from './spec.ts';

const T0 = Date.UTC(2030, 2, 15, 9, 0, 0);

const message: OutboundMessage = {
  deliveryId: 'aep-visit@appointment/A1#0',
  ruleId: 'aep-visit',
  purpose: 'care.followup',
  channel: 'crm',
  language: 'en',
  text: '',
  fields: {
    occurredAt: '2030-03-15T08:30:00Z',
    patient: { name: { given: ['Pat'] }, language: 'en', birthDate: '1980-04-02' },
    appointment: { start: '2030-03-20T13:30:00Z' },
  },
  patientId: 'MRN-1001',
};
const ctx = (m: OutboundMessage = message, attempt = 1): SendContext => ({ deliveryId: m.deliveryId, attempt, signal: new AbortController().signal });

function config(standIn: AepStandIn, overrides: Partial<AdobeAepConfig> = {}): AdobeAepConfig {
  return {
    name: 'aep',
    type: 'adobe-aep',
    imsTokenUrl: `${standIn.baseUrl}/ims/token/v3`,
    clientId: standIn.clientId,
    clientSecret: { env: 'AEP_SECRET' },
    scopes: 'openid,AdobeID,read_organizations,additional_info.projectedProductContext,session',
    orgId: standIn.orgId,
    sandbox: 'prod',
    inletUrl: standIn.inletUrl,
    authenticated: true,
    schemaId: standIn.schemaId,
    schemaVersion: '1',
    datasetId: standIn.datasetId,
    sourceName: 'CareRelay',
    identity: { namespace: 'CareRelayId', source: '$patientId', authenticatedState: 'authenticated' },
    data: { 'patient.name.given': '_northclinic.patient.firstName', 'appointment.start': '_northclinic.appointment.start' },
    healthcareShield: { excludedLabels: ['ETH', 'SUD', 'PSY', 'PSYTHPN', 'MH', 'GDIS'], minorAgeYears: 18 },
    timeoutSeconds: 10,
    limits: { ratePerSecond: 1000, burst: 1000, concurrency: 20 },
    baa: true,
    allowedPurposes: ['care.followup', 'marketing'],
    ...overrides,
  };
}

function depsFor(standIn: AepStandIn, clock: () => number = () => T0, env: Record<string, string> = {}): OutputDeps {
  const all: Record<string, string> = { AEP_SECRET: standIn.clientSecret, PSEUDONYM_KEY: 'k3y', ...env };
  return { secret: (ref) => ('env' in ref ? all[ref.env]! : ''), receipts: memoryReceiptLedger(), now: () => new Date(clock()) };
}

outputConformanceSuite('adobe-aep', {
  async start({ timeoutSeconds }) {
    const standIn = await startAepStandIn({ now: () => T0 });
    const inlet = () => standIn.requests.filter((r) => r.path.startsWith('/collection'));
    return {
      adapter: createAdobeAep(config(standIn, { timeoutSeconds }), depsFor(standIn)),
      message,
      requests: () => inlet().length,
      waitForRequests: (n) => standIn.waitForRequests(n),
      keys: () => inlet().map((r) => r.id ?? ''),
      // Adobe documents no Retry-After on 429.
      retryAfterMs: undefined,
      fail(fault) {
        if (fault === StandInFault.RateLimited) standIn.failNext({ kind: 'status', status: 429 });
        else if (fault === StandInFault.Unavailable) standIn.failNext({ kind: 'status', status: 503 });
        else if (fault === StandInFault.Rejected) standIn.failNext({ kind: 'status', status: 400 });
        else if (fault === StandInFault.Hang) standIn.failNext({ kind: 'hang' });
        else standIn.failNext({ kind: 'reset' });
      },
      close: () => standIn.close(),
    };
  },
});

describe('adobe-aep output', () => {
  let standIn: AepStandIn;
  let clock = T0;
  const start = async (options: AepStandInOptions = {}) => {
    clock = T0;
    standIn = await startAepStandIn({ now: () => clock, ...options });
    return standIn;
  };
  afterEach(async () => {
    await standIn.close();
  });

  it('streams an XDM ExperienceEvent: _id = the delivery id, timestamp = occurredAt, identityMap, the mapped fields, the IMS token and Platform headers', async () => {
    await start();
    const adapter = createAdobeAep(config(standIn), depsFor(standIn, () => clock));
    const receipt = await adapter.send(message, ctx());
    expect(receipt).toMatchObject({ providerId: message.deliveryId, detail: { xactionId: expect.stringMatching(/:1:/) } });
    expect(standIn.records).toEqual([
      {
        _id: message.deliveryId,
        timestamp: '2030-03-15T08:30:00.000Z',
        eventType: 'carerelay.aep-visit',
        identityMap: { CareRelayId: [{ id: 'MRN-1001', authenticatedState: 'authenticated', primary: true }] },
        _northclinic: { patient: { firstName: 'Pat' }, appointment: { start: '2030-03-20T13:30:00Z' } },
      },
    ]);
    const request = standIn.requests.find((r) => r.path.startsWith('/collection'))!;
    expect(request.body).toMatchObject({
      header: { schemaRef: { id: standIn.schemaId, contentType: 'application/vnd.adobe.xed-full+json;version=1' }, imsOrgId: standIn.orgId, datasetId: standIn.datasetId, source: { name: 'CareRelay' } },
      body: { xdmMeta: { schemaRef: { id: standIn.schemaId } } },
    });
    expect(request.headers).toMatchObject({ 'content-type': 'application/json', 'x-gw-ims-org-id': standIn.orgId, 'x-api-key': standIn.clientId, 'x-sandbox-name': 'prod' });
    expect(request.auth).toBe('valid');
    expect(standIn.tokens.requests[0]).toMatchObject({
      contentType: 'application/x-www-form-urlencoded',
      params: { grant_type: 'client_credentials', client_id: standIn.clientId, scope: 'openid,AdobeID,read_organizations,additional_info.projectedProductContext,session' },
    });
    // The IMS token lives a day: renewed five minutes before, not sooner.
    clock = T0 + 86_000_000;
    await adapter.send({ ...message, deliveryId: 'second' }, ctx());
    expect(standIn.tokens.requests).toHaveLength(1);
    clock = T0 + 86_100_000;
    await adapter.send({ ...message, deliveryId: 'third' }, ctx());
    expect(standIn.tokens.requests).toHaveLength(2);
  });

  it('without occurredAt the event is stamped at the send; a pseudonymous identity and a fixed eventType on request', async () => {
    await start();
    const adapter = createAdobeAep(config(standIn, { eventType: 'carerelay.visit', identity: { namespace: 'CareRelayId', source: '$patientId', authenticatedState: 'ambiguous', pseudonymKey: { env: 'PSEUDONYM_KEY' } } }), depsFor(standIn));
    await adapter.send({ ...message, fields: { patient: { birthDate: '1980-04-02' } } }, ctx());
    expect(standIn.records[0]).toMatchObject({
      timestamp: new Date(T0).toISOString(),
      eventType: 'carerelay.visit',
      identityMap: { CareRelayId: [{ id: pseudonym('k3y', 'MRN-1001'), authenticatedState: 'ambiguous', primary: true }] },
    });
    expect(JSON.stringify(standIn.requests)).not.toContain('MRN-1001');
  });

  it('an unauthenticated inlet gets no token and no Authorization header', async () => {
    await start({ authenticated: false });
    const adapter = createAdobeAep(config(standIn, { authenticated: false }), depsFor(standIn));
    await adapter.send(message, ctx());
    expect(standIn.tokens.requests).toHaveLength(0);
    expect(standIn.requests[0]!.headers.authorization).toBeUndefined();
  });

  it('Healthcare Shield: with baa, excluded categories, minors and unknown ages are refused without a call', async () => {
    await start();
    const adapter = createAdobeAep(config(standIn), depsFor(standIn));
    const send = (fields: Record<string, unknown>) => adapter.send({ ...message, deliveryId: JSON.stringify(fields), fields }, ctx());
    await expect(send({ patient: { birthDate: '1980-04-02' }, sensitivity: ['PSY'] })).rejects.toMatchObject({ code: 'aep_shield_excluded_category', failureClass: 'permanent' });
    await expect(send({ patient: { birthDate: '1980-04-02' }, sensitivity: ['sud'] })).rejects.toMatchObject({ code: 'aep_shield_excluded_category' });
    // 18 on 2030-03-16: still a minor on the 15th.
    await expect(send({ patient: { birthDate: '2012-03-16' } })).rejects.toMatchObject({ code: 'aep_shield_minor' });
    await expect(send({ patient: { language: 'en' } })).rejects.toMatchObject({ code: 'aep_shield_age_unknown', message: expect.stringMatching(/list patient\.birthDate/) });
    expect(standIn.requests).toHaveLength(0);
    await send({ patient: { birthDate: '2012-03-15' }, sensitivity: ['HIV'] });
    expect(standIn.records).toHaveLength(1);
    // Without a BAA nothing is checked here (rules may send no care fields there at all).
    const plain = createAdobeAep(config(standIn, { baa: false }), depsFor(standIn));
    await plain.send({ ...message, deliveryId: 'p', fields: { patient: { name: { given: ['Pat'] } } } }, ctx());
    expect(standIn.records).toHaveLength(2);
  });

  it('ages in whole years, birthday included', () => {
    expect(ageInYears('2012-03-15', new Date(T0))).toBe(18);
    expect(ageInYears('2012-03-16', new Date(T0))).toBe(17);
    expect(ageInYears('2012-04-01', new Date(T0))).toBe(17);
    expect(ageInYears('nope', new Date(T0))).toBeUndefined();
  });

  it('classifies Adobe\'s answers: a schema refusal is permanent, 413 too large, 500 ambiguous, 401 with a new token unauthorized', async () => {
    await start({ schemaFields: ['_northclinic.patient.firstName'] });
    const adapter = createAdobeAep(config(standIn), depsFor(standIn));
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'aep_rejected', failureClass: 'permanent' });
    expect(standIn.requests.at(-1)).toMatchObject({ status: 400 });
    standIn.failNext({ kind: 'status', status: 413 });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'aep_too_large' });
    standIn.failNext({ kind: 'status', status: 500 });
    await expect(adapter.send(message, ctx())).rejects.toBeInstanceOf(AmbiguousError);
    standIn.tokens.check = () => 'invalid';
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'aep_unauthorized', failureClass: 'permanent' });
    const wrong = createAdobeAep(config(standIn), depsFor(standIn, () => T0, { AEP_SECRET: 'nope' }));
    await expect(wrong.send(message, ctx())).rejects.toBeInstanceOf(PermanentError);
  });

  it('declares crm, idempotent on _id, 1,000 calls a second; refuses SSNs in the data map under a BAA', async () => {
    await start();
    const base = config(standIn);
    expect(adobeAepSpec.info(base)).toEqual({
      channel: 'crm',
      baa: true,
      allowedPurposes: ['care.followup', 'marketing'],
      idempotent: true,
      limits: { ratePerSecond: 1000, burst: 1000, concurrency: 20 },
      // Under the BAA every rule must send what the Shield's refusals read (pipeline/coverage.ts).
      requiredFields: SHIELD_REQUIRED_FIELDS,
    });
    expect(Object.keys(SHIELD_REQUIRED_FIELDS)).toEqual(['sensitivity', 'patient.birthDate']);
    expect(adobeAepSpec.info({ ...base, baa: false }).requiredFields).toBeUndefined();
    const data = { 'patient.identifiers[type=SS].value': '_n.ssn', 'patient.identifiers.value': '_n.ids', 'patient.identifiers[type=MR].value': '_n.mrn' };
    expect(adobeAepSpec.check!({ ...base, data }).map((i) => i.path.join('.'))).toEqual(['data.patient.identifiers[type=SS].value', 'data.patient.identifiers.value']);
    expect(adobeAepSpec.check!({ ...base, baa: false, data })).toEqual([]);
  });
});
