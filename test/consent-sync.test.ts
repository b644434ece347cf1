// Consent kept in step with the tools over real sockets (docs/consent.md "Ways in"): a booking
// over MLLP upserts the patient in Salesforce; an opt-out recorded in CareRelay is pushed there
// as a ContactPointTypeConsent; a consent change made in Salesforce is read back by the poll,
// stops the pending marketing email, and is not pushed back. A HubSpot contact CareRelay created
// gets an opt-out as its subscription statuses.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { startHubspotStandIn } from './helpers/hubspot-standin.ts';
import { startSalesforceStandIn, type SalesforceStandIn } from './helpers/salesforce-standin.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const RULES = `rules:
  - id: crm-sync
    on: appointment.booked
    purpose: care.logistics
    channel: crm
    send: { output: health-cloud, fields: [patient.name.family, patient.name.given] }
    at: now
  - id: offer
    on: appointment.booked
    purpose: marketing
    channel: email
    send: { output: mail, template: offer, fields: [patient.name.given] }
    at: appointment.start - 72h
`;
const PATIENT = 'SYNC-0042';

let config: TestConfigDir | undefined;
let server: RunningCarerelay | undefined;
let logs: ReturnType<typeof captureLogger>;
let base: string;
const closers: Array<() => Promise<void>> = [];

/** Starts CareRelay with these outputs and rules (US defaults, no quiet hours). */
async function start(o: { outputs: string[]; rules: string; templates?: Record<string, string>; env: Record<string, string> }): Promise<RunningCarerelay> {
  config = consentConfigDir({ policy: ['  region: us', '  quietHours: { channels: [] }'], outputs: o.outputs, rules: o.rules, templates: o.templates ?? {} });
  logs = captureLogger();
  server = await startCarerelay({ configDir: config.dir, env: o.env, log: logs, watchMappings: false });
  base = `http://127.0.0.1:${server.httpPort}`;
  return server;
}

afterEach(async () => {
  await server?.stop();
  for (const close of closers.splice(0)) await close();
  config?.remove();
  server = undefined;
  config = undefined;
});

async function book(): Promise<void> {
  const start = new Date(Date.now() + 7 * 86_400_000);
  const text = siuMessage({ controlId: 'SYNC-1', appointmentId: 'A1', patientId: PATIENT, start, sentAt: new Date() }).replace('|19600101|M', '|19600101|F|||||^NET^Internet^Pat.Sync@Example.org');
  expect(hl7Field((await mllpExchange([...server!.mllpPorts.values()][0]!, text))!, 'MSA', 1)).toBe('AA');
  await server!.deliveries.idle();
}

const delivery = async (id: string) => (await http(base, 'GET', `/api/deliveries/${encodeURIComponent(id)}`)).json;

describe('consent kept in step with Salesforce', () => {
  let sf: SalesforceStandIn;
  beforeEach(async () => {
    sf = await startSalesforceStandIn({ purposes: ['Marketing'] });
    closers.push(() => sf.close());
    const crm = [
      `{ name: health-cloud, type: salesforce-crm, myDomainUrl: "${sf.baseUrl}"`,
      `auth: { clientCredentials: { clientId: ${sf.clientId}, clientSecret: { env: SF_SECRET } } }`,
      'patient: { object: Contact, externalIdField: CareRelay_Patient_Key__c, fields: { patient.name.family: LastName, patient.name.given: FirstName } }',
      'individual: { externalIdField: CareRelay_Patient_Key__c }',
      'consent: { externalIdField: CareRelay_Consent_Key__c, purposes: { marketing: Marketing } }',
      'baa: true }',
    ].join(', ');
    await start({
      outputs: [crm, '{ name: mail, type: outbox, channel: email, allowedPurposes: [marketing] }'],
      rules: RULES,
      templates: { 'offer.subject.liquid': 'Offer', 'offer.text.liquid': 'Hello {{ patient.name.given.first }}. {{ unsubscribe_url }}\n' },
      env: { SF_SECRET: sf.clientSecret },
    });
  });
  const ours = () => sf.records('ContactPointTypeConsent').filter((r) => String(r.CaptureSource).startsWith('CareRelay:'));

  it('an opt-out recorded in CareRelay is pushed to the CRM that holds the patient', async () => {
    await book();
    expect(await delivery('crm-sync@appointment/A1#0')).toMatchObject({ status: 'sent' });
    const res = await http(base, 'POST', `/api/patients/${PATIENT}/opt-outs`, { channel: 'email', purposes: ['marketing'] });
    expect(res.status).toBe(201);
    await server!.deliveries.consentSync.idle();
    const individual = sf.records('Individual').find((r) => r.CareRelay_Patient_Key__c === PATIENT)!;
    expect(ours()).toEqual([
      expect.objectContaining({ PartyId: individual.Id, ContactPointType: 'Email', PrivacyConsentStatus: 'OptOut', CaptureSource: 'CareRelay: admin', DataUsePurposeId: expect.any(String) }),
    ]);
    expect(await delivery('offer@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
  });

  it('a consent change made in Salesforce is read back: the pending marketing email stops, nothing is pushed back', async () => {
    await book();
    expect(await delivery('offer@appointment/A1#0')).toMatchObject({ status: 'pending' });
    sf.changeConsent({ individualKey: PATIENT, contactPointType: 'Email', status: 'OptOut', purposeName: 'Marketing', captureSource: 'Preference Center' });
    await server!.deliveries.consentSync.pollOnce('health-cloud');
    expect(await delivery('offer@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    const consent = (await http(base, 'GET', `/api/patients/${PATIENT}/consent`)).json;
    expect(consent.states.find((s: any) => s.purpose === 'marketing' && s.channel === 'email')).toMatchObject({ allowed: false, reason: 'opted_out', basis: expect.stringContaining('provider, salesforce-crm:opted_out') });
    await server!.deliveries.consentSync.idle();
    expect(ours()).toEqual([]);
    expect(JSON.stringify(logs.lines)).not.toContain('Preference Center');
  });
});

describe('opt-outs pushed to a marketing tool holding the contact', () => {
  it('HubSpot gets the opt-out as the subscription statuses of the contact it was handed', async () => {
    const hubspot = await startHubspotStandIn({ subscriptionIds: [111, 222] });
    closers.push(() => hubspot.close());
    await start({
      outputs: [
        [
          `{ name: hubspot, type: hubspot, portalId: ${hubspot.portalId}, auth: { privateAppToken: { env: HUBSPOT_TOKEN } }, action: upsert, idProperty: email`,
          'properties: { patient.name.given: firstname, patient.name.family: lastname }',
          `subscriptions: { service.info: 111, marketing: 222 }, apiBaseUrl: "${hubspot.baseUrl}", baa: false, allowedPurposes: [service.info, marketing] }`,
        ].join(', '),
      ],
      rules: `rules:
  - id: hubspot-sync
    on: appointment.booked
    purpose: service.info
    channel: crm
    send: { output: hubspot, to: "patient.telecom[system=email].value", fields: [patient.name.given, patient.name.family] }
    at: now
`,
      env: { HUBSPOT_TOKEN: hubspot.privateAppToken },
    });
    await book();
    expect(await delivery('hubspot-sync@appointment/A1#0')).toMatchObject({ status: 'sent' });
    expect(hubspot.statuses.size).toBe(0);
    const res = await http(base, 'POST', `/api/patients/${PATIENT}/opt-outs`, { channel: 'email' });
    expect(res.status).toBe(201);
    await server!.deliveries.consentSync.idle();
    expect(Object.fromEntries(hubspot.statuses)).toEqual({ 'pat.sync@example.org|111': 'UNSUBSCRIBED', 'pat.sync@example.org|222': 'UNSUBSCRIBED' });
    expect(JSON.stringify(logs.lines)).not.toContain('example.org');
  });
});
