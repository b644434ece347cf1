import { generateKeyPairSync } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { startSalesforceStandIn, type SalesforceStandIn, type SalesforceStandInOptions } from '../../../test/helpers/salesforce-standin.ts';
import { PermanentError, RateLimitedError, TransientError } from '../../errors.ts';
import { memoryReceiptLedger, outputConformanceSuite, StandInFault } from '../conformance.ts';
import type { ConsentMirror } from '../consent-sync.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../spec.ts';
import { createSalesforceCrm, salesforceCrmSpec, USAGE_PAUSE_MS, type SalesforceCrmConfig } from './spec.ts';

const T0 = Date.UTC(2030, 2, 15, 9, 0, 0);

const message: OutboundMessage = {
  deliveryId: 'crm-sync@patient/P1#0',
  ruleId: 'crm-sync',
  purpose: 'care.logistics',
  channel: 'crm',
  to: 'pat@example.org',
  language: 'en',
  text: '',
  fields: { patient: { name: { family: 'Martin', given: ['Pat'] }, language: 'en', birthDate: '1980-04-02' } },
  patientId: 'MRN-1001',
};
const signal = () => new AbortController().signal;
const ctx = (m: OutboundMessage = message, attempt = 1): SendContext => ({ deliveryId: m.deliveryId, attempt, signal: signal() });

function config(standIn: SalesforceStandIn, overrides: Partial<SalesforceCrmConfig> = {}): SalesforceCrmConfig {
  return {
    name: 'health-cloud',
    type: 'salesforce-crm',
    myDomainUrl: standIn.baseUrl,
    auth: { clientCredentials: { clientId: standIn.clientId, clientSecret: { env: 'SF_SECRET' } } },
    tokenLifetimeSeconds: 900,
    apiVersion: '62.0',
    patient: {
      object: 'Contact',
      externalIdField: 'CareRelay_Patient_Key__c',
      key: '$patientId',
      fields: { 'patient.name.family': 'LastName', 'patient.name.given': 'FirstName', $to: 'Email', 'patient.birthDate': 'Birthdate' },
    },
    pauseAtApiUsagePercent: 90,
    timeoutSeconds: 10,
    limits: { ratePerSecond: 10, burst: 20, concurrency: 10 },
    baa: true,
    allowedPurposes: ['care.logistics', 'marketing', 'service.info'],
    ...overrides,
  };
}

const withConsent = (standIn: SalesforceStandIn, overrides: Partial<SalesforceCrmConfig> = {}) =>
  config(standIn, {
    individual: { externalIdField: 'CareRelay_Patient_Key__c' },
    consent: { externalIdField: 'CareRelay_Consent_Key__c', purposes: { marketing: 'Marketing', 'service.info': 'Newsletters' } },
    ...overrides,
  });

function depsFor(standIn: SalesforceStandIn, clock: () => number = () => T0, env: Record<string, string> = {}): OutputDeps {
  const all: Record<string, string> = { SF_SECRET: standIn.clientSecret, ...env };
  return { secret: (ref) => ('env' in ref ? all[ref.env]! : ''), receipts: memoryReceiptLedger(), now: () => new Date(clock()) };
}

const apiCalls = (standIn: SalesforceStandIn) => standIn.requests.filter((r) => r.path.startsWith('/services/data'));

outputConformanceSuite('salesforce-crm', {
  async start({ timeoutSeconds }) {
    const standIn = await startSalesforceStandIn({ now: () => T0 });
    return {
      adapter: createSalesforceCrm(config(standIn, { timeoutSeconds }), depsFor(standIn)),
      message,
      requests: () => apiCalls(standIn).length,
      waitForRequests: (n) => standIn.waitForRequests(n),
      // The upsert's key: the external id value in the path, the same on every attempt.
      keys: () => apiCalls(standIn).map((r) => decodeURIComponent(r.path.split('/').at(-1)!)),
      // Salesforce's daily-limit refusal (403 REQUEST_LIMIT_EXCEEDED) says no time.
      retryAfterMs: undefined,
      fail(fault) {
        if (fault === StandInFault.RateLimited) standIn.failNext({ kind: 'status', status: 403, errorCode: 'REQUEST_LIMIT_EXCEEDED' });
        else if (fault === StandInFault.Unavailable) standIn.failNext({ kind: 'status', status: 503, errorCode: 'SERVER_UNAVAILABLE' });
        else if (fault === StandInFault.Rejected) standIn.failNext({ kind: 'status', status: 400, errorCode: 'INVALID_FIELD' });
        else if (fault === StandInFault.Hang) standIn.failNext({ kind: 'hang' });
        else standIn.failNext({ kind: 'reset' });
      },
      close: () => standIn.close(),
    };
  },
});

describe('salesforce-crm output', () => {
  let standIn: SalesforceStandIn;
  let clock = T0;
  const start = async (options: SalesforceStandInOptions = {}) => {
    clock = T0;
    standIn = await startSalesforceStandIn({ now: () => clock, ...options });
    return standIn;
  };
  afterEach(async () => {
    await standIn.close();
  });

  it('upserts the Contact by its external id: created, then updated, the same record; reads Sforce-Limit-Info', async () => {
    await start({ used: 41, allocation: 1000 });
    const adapter = createSalesforceCrm(config(standIn), depsFor(standIn));
    const first = await adapter.send(message, ctx());
    expect(standIn.requests.at(-1)).toMatchObject({ method: 'PATCH', path: '/services/data/v62.0/sobjects/Contact/CareRelay_Patient_Key__c/MRN-1001', contentType: 'application/json', status: 201 });
    expect(first.detail).toEqual({ created: true, apiUsage: '42/1000' });
    const second = await adapter.send({ ...message, fields: { patient: { name: { family: 'Martin-Lee', given: ['Pat'] } } } }, ctx(message, 2));
    expect(second.providerId).toBe(first.providerId);
    expect(second.detail).toMatchObject({ created: false });
    expect(standIn.records('Contact')).toEqual([
      expect.objectContaining({ Id: first.providerId, LastName: 'Martin-Lee', FirstName: 'Pat', Email: 'pat@example.org', Birthdate: '1980-04-02', CareRelay_Patient_Key__c: 'MRN-1001' }),
    ]);
    expect(standIn.tokens.requests[0]).toMatchObject({ contentType: 'application/x-www-form-urlencoded', params: { grant_type: 'client_credentials', client_id: standIn.clientId } });
  });

  it('with an Individual: one composite call upserts both and links them (Person Account: PersonIndividualId, RecordTypeId)', async () => {
    await start();
    const adapter = createSalesforceCrm(
      withConsent(standIn, {
        patient: {
          object: 'Account',
          externalIdField: 'CareRelay_Patient_Key__c',
          key: '$patientId',
          recordTypeId: '012000000000001AAA',
          fields: { 'patient.name.family': 'LastName', 'patient.name.given': 'FirstName', $to: 'PersonEmail' },
        },
      }),
      depsFor(standIn),
    );
    const receipt = await adapter.send(message, ctx());
    expect(apiCalls(standIn).map((r) => `${r.method} ${r.path}`)).toEqual(['POST /services/data/v62.0/composite']);
    const [individual] = standIn.records('Individual');
    expect(individual).toMatchObject({ LastName: 'Martin', FirstName: 'Pat', CareRelay_Patient_Key__c: 'MRN-1001' });
    expect(standIn.records('Account')).toEqual([
      expect.objectContaining({ Id: receipt.providerId, LastName: 'Martin', PersonEmail: 'pat@example.org', PersonIndividualId: individual!.Id, RecordTypeId: '012000000000001AAA' }),
    ]);
  });

  it('a failing half of the composite call leaves nothing written and says why', async () => {
    await start();
    const adapter = createSalesforceCrm(withConsent(standIn, { patient: { ...config(standIn).patient, fields: { 'patient.name.family': 'LastName', 'patient.language': 'Languages__c' } } }), depsFor(standIn));
    const error = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'salesforce_rejected', providerCode: 'INVALID_FIELD' });
    expect(standIn.records('Individual')).toEqual([]);
  });

  it('JWT bearer: the org verifies the RS256 assertion; no expires_in, so the token is kept tokenLifetimeSeconds and a 401 renews it once', async () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
    // The org's session timeout (10 min) is shorter than the configured lifetime (15 min).
    await start({ sessionSeconds: 600, jwt: { publicKey: rsa.publicKey, issuer: '3MVG9-app', username: 'carerelay@northclinic.example' } });
    const adapter = createSalesforceCrm(
      config(standIn, { auth: { jwtBearer: { clientId: '3MVG9-app', username: 'carerelay@northclinic.example', privateKey: { env: 'SF_KEY' }, audience: 'https://login.salesforce.com' } } }),
      depsFor(standIn, () => clock, { SF_KEY: rsa.privateKey }),
    );
    await adapter.send(message, ctx());
    expect(standIn.tokens.requests[0]!.params.grant_type).toBe('urn:ietf:params:oauth:grant-type:jwt-bearer');
    clock = T0 + 700_000;
    await adapter.send(message, ctx());
    expect(apiCalls(standIn).map((r) => `${r.auth}/${r.status}`)).toEqual(['valid/201', 'expired/401', 'valid/200']);
    expect(standIn.tokens.requests).toHaveLength(2);
  });

  it('pauses sends once the org has used pauseAtApiUsagePercent of its allocation, then looks again', async () => {
    await start({ used: 88, allocation: 100 });
    const adapter = createSalesforceCrm(config(standIn), depsFor(standIn, () => clock));
    await adapter.send(message, ctx());
    await adapter.send(message, ctx());
    expect(standIn.usage.used).toBe(90);
    const paused = await adapter.send(message, ctx()).catch((e: unknown) => e);
    expect(paused).toBeInstanceOf(RateLimitedError);
    expect(paused).toMatchObject({ code: 'salesforce_api_usage_high', retryAfterMs: USAGE_PAUSE_MS });
    expect(apiCalls(standIn)).toHaveLength(2);
    clock = T0 + USAGE_PAUSE_MS;
    standIn.usage.used = 10;
    await adapter.send(message, ctx());
    await adapter.send(message, ctx());
    expect(apiCalls(standIn)).toHaveLength(4);
  });

  it('classifies Salesforce errors: several records with the key, row lock, wrong field, refused credentials', async () => {
    await start();
    const adapter = createSalesforceCrm(config(standIn), depsFor(standIn));
    standIn.failNext({ kind: 'status', status: 300 });
    await expect(adapter.send(message, ctx())).rejects.toMatchObject({ code: 'salesforce_duplicate_external_id', failureClass: 'permanent' });
    standIn.failNext({ kind: 'status', status: 400, errorCode: 'UNABLE_TO_LOCK_ROW' });
    await expect(adapter.send(message, ctx())).rejects.toBeInstanceOf(TransientError);
    const wrongField = createSalesforceCrm(config(standIn, { patient: { ...config(standIn).patient, externalIdField: 'Patient_Key__c' } }), depsFor(standIn));
    await expect(wrongField.send(message, ctx())).rejects.toMatchObject({ code: 'salesforce_not_found', providerCode: 'NOT_FOUND' });
    const wrongSecret = createSalesforceCrm(config(standIn), depsFor(standIn, () => T0, { SF_SECRET: 'nope' }));
    await expect(wrongSecret.send(message, ctx())).rejects.toMatchObject({ code: 'salesforce_token_invalid_client', failureClass: 'permanent' });
    await expect(adapter.send({ ...message, patientId: undefined }, ctx())).rejects.toMatchObject({ code: 'salesforce_no_key' });
  });

  describe('consent', () => {
    const optOut: ConsentMirror = { patientId: 'MRN-1001', channel: 'email', purpose: 'marketing', status: 'opted_out', capturedAt: '2030-03-15T08:59:00.000Z', source: 'unsubscribe_link' };

    it('mirrors a ledger decision to ContactPointTypeConsent in one call: the Individual, the DataUsePurpose, capture source and dates', async () => {
      await start();
      const adapter = createSalesforceCrm(withConsent(standIn), depsFor(standIn));
      await adapter.send(message, ctx());
      const receipt = await adapter.mirrorConsent(optOut, { signal: signal() });
      const [individual] = standIn.records('Individual');
      const marketing = standIn.records('DataUsePurpose').find((p) => p.Name === 'Marketing');
      expect(standIn.records('ContactPointTypeConsent')).toEqual([
        expect.objectContaining({
          Id: receipt.providerId,
          CareRelay_Consent_Key__c: 'MRN-1001:email:marketing',
          PartyId: individual!.Id,
          ContactPointType: 'Email',
          PrivacyConsentStatus: 'OptOut',
          DataUsePurposeId: marketing!.Id,
          CaptureDate: '2030-03-15T08:59:00.000Z',
          CaptureSource: 'CareRelay: unsubscribe_link',
          CaptureContactPointType: 'Email',
          EffectiveFrom: '2030-03-15T08:59:00.000Z',
        }),
      ]);
      expect(apiCalls(standIn).map((r) => r.path)).toEqual(['/services/data/v62.0/composite', '/services/data/v62.0/composite']);
      // The same decision again, then a re-grant by SMS: still one record per channel and purpose.
      await adapter.mirrorConsent(optOut, { signal: signal() });
      await adapter.mirrorConsent({ ...optOut, status: 'opted_in', source: 'sms_keyword', capturedVia: 'sms' }, { signal: signal() });
      expect(standIn.records('ContactPointTypeConsent')).toEqual([expect.objectContaining({ PrivacyConsentStatus: 'OptIn', CaptureContactPointType: 'Phone', CaptureSource: 'CareRelay: sms_keyword' })]);
      // A channel-wide SMS opt-out has no purpose.
      await adapter.mirrorConsent({ ...optOut, channel: 'sms', purpose: undefined }, { signal: signal() });
      expect(standIn.records('ContactPointTypeConsent')[1]).toMatchObject({ CareRelay_Consent_Key__c: 'MRN-1001:sms:all', ContactPointType: 'Phone' });
      expect(standIn.records('ContactPointTypeConsent')[1]!.DataUsePurposeId).toBeUndefined();
    });

    it('refuses an unmapped purpose without a call, and a patient Salesforce does not hold without writing anything', async () => {
      await start();
      const adapter = createSalesforceCrm(withConsent(standIn), depsFor(standIn));
      await expect(adapter.mirrorConsent({ ...optOut, purpose: 'research' }, { signal: signal() })).rejects.toMatchObject({ code: 'salesforce_purpose_unmapped' });
      expect(apiCalls(standIn)).toHaveLength(0);
      await expect(adapter.mirrorConsent({ ...optOut, patientId: 'MRN-9' }, { signal: signal() })).rejects.toMatchObject({ code: 'salesforce_not_found', failureClass: 'permanent' });
      expect(standIn.records('ContactPointTypeConsent')).toEqual([]);
      const plain = createSalesforceCrm(config(standIn), depsFor(standIn));
      await expect(plain.mirrorConsent!(optOut, { signal: signal() })).rejects.toMatchObject({ code: 'salesforce_consent_not_configured' });
    });

    it('polls the consent changes made in Salesforce, not the ones CareRelay mirrored, page by page', async () => {
      await start();
      const adapter = createSalesforceCrm(withConsent(standIn), depsFor(standIn));
      await adapter.send(message, ctx());
      await adapter.mirrorConsent(optOut, { signal: signal() });
      clock = T0 + 60_000;
      const change = standIn.changeConsent({ individualKey: 'MRN-1001', contactPointType: 'Email', status: 'OptOut', purposeName: 'Newsletters', captureDate: '2030-03-15T09:00:30.000+0000' });
      standIn.changeConsent({ individualKey: 'MRN-1001', contactPointType: 'Phone', status: 'Seen' });
      const first = await adapter.pollConsent({ since: '2030-03-15T08:00:00.000Z' }, { signal: signal() });
      expect(first.signals).toEqual([
        {
          tool: 'salesforce-crm',
          output: 'health-cloud',
          contact: { patientId: 'MRN-1001', toolId: standIn.records('Individual')[0]!.Id },
          kind: 'opted_out',
          scope: { channel: 'email', purpose: 'service.info' },
          at: '2030-03-15T09:00:30.000Z',
          eventId: `salesforce:${change.Id}:${change.LastModifiedDate}`,
        },
      ]);
      expect(first.more).toBe(false);
      expect(decodeURIComponent(apiCalls(standIn).at(-1)!.path)).toContain('FROM ContactPointTypeConsent WHERE LastModifiedDate > 2030-03-15T08:00:00Z ORDER BY LastModifiedDate, Id LIMIT 200');
      const again = await adapter.pollConsent(first.cursor, { signal: signal() });
      expect(again.signals).toEqual([]);
      expect(again.cursor).toEqual(first.cursor);
      // A change in the same second as the cursor, after its record, is still read.
      const sameSecond = standIn.changeConsent({ individualKey: 'MRN-1001', contactPointType: 'Email', status: 'OptIn' });
      const third = await adapter.pollConsent(again.cursor, { signal: signal() });
      expect(third.signals.map((s) => s.eventId)).toEqual([`salesforce:${sameSecond.Id}:${sameSecond.LastModifiedDate}`]);
      expect(third.signals[0]).toMatchObject({ kind: 'opted_in', scope: { channel: 'email' } });
    });
  });

  it('declares crm, idempotent upserts and its limits; checks the config', async () => {
    await start();
    const base = config(standIn);
    expect(salesforceCrmSpec.info(base)).toEqual({
      channel: 'crm',
      baa: true,
      allowedPurposes: ['care.logistics', 'marketing', 'service.info'],
      idempotent: true,
      limits: { ratePerSecond: 10, burst: 20, concurrency: 10 },
    });
    const issues = salesforceCrmSpec.check!({
      ...base,
      auth: {},
      apiVersion: '45.0',
      patient: { ...base.patient, fields: { 'patient.name.given': 'FirstName' } },
      consent: { externalIdField: 'X__c', purposes: {} },
    });
    expect(issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([
      'auth: give exactly one of clientCredentials and jwtBearer',
      'apiVersion: use API version 46.0 or later (upsert answers say whether a record was created)',
      'patient.fields: fill LastName (required to create a Contact, a Person Account or an Individual), e.g. patient.name.family: LastName',
      'consent: consent is kept per Individual: configure individual too',
    ]);
  });
});
