// The marketing tools' opt-outs both ways over real sockets (docs/consent.md "Tools that hold the
// contact"): an SIU^S12 over MLLP makes HubSpot and Mailchimp hold the patient's contact; an
// opt-out recorded in CareRelay reaches those two stand-ins and no other, an SMS STOP (signed
// Twilio webhook) only the one of them that keeps an SMS status (Mailchimp); what the tools report
// back on their own webhooks (posted by the stand-ins as each tool posts them) stops the pending
// messages it forbids before the webhook is answered, is recorded once however often it comes,
// and is pushed on to the other tools holding the contact — never back to where it came from.
// Marketing Cloud's ENS callback is registered, verified and then used across a restart, as an
// operator does it. An erasure asks each tool holding the contact to forget it.
import net from 'node:net';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCarerelay, type RunningCarerelay } from '../src/main.ts';
import { twilioSignature } from '../src/twilio/signature.ts';
import { startActiveCampaignStandIn, type ActiveCampaignStandIn } from './helpers/activecampaign-standin.ts';
import { startBrevoStandIn, type BrevoStandIn } from './helpers/brevo-standin.ts';
import { consentConfigDir, http } from './helpers/consent.ts';
import { startHubspotStandIn, type HubspotStandIn } from './helpers/hubspot-standin.ts';
import { md5, startMailchimpStandIn, type MailchimpStandIn } from './helpers/mailchimp-standin.ts';
import { startSfmcStandIn, type SfmcStandIn } from './helpers/sfmc-standin.ts';
import { captureLogger, hl7Field, mllpExchange, siuMessage, type TestConfigDir } from './helpers/server.ts';

const PATIENT = 'MKT-0042';
const EMAIL = 'pat.hooks@example.org';
const PHONE = '+33611223344';
const TWILIO_TOKEN = 'twilio-hooks-token';
const MC_HOOK = 'mc-hook-secret-0123456789';
const BREVO_HOOK = 'brevo-hook-secret-0123456789';
const AC_HOOK = 'ac-hook-secret-0123456789abc';

const RULES = `rules:
  - id: hubspot-sync
    on: appointment.booked
    purpose: service.info
    channel: crm
    send: { output: hubspot, to: "patient.telecom[system=email].value", fields: [patient.name.given] }
    at: now
  - id: mailchimp-sync
    on: appointment.booked
    purpose: service.info
    channel: crm
    send: { output: mailchimp, to: "patient.telecom[system=email].value", fields: [patient.name.given] }
    at: now
  - id: sms-reminder
    on: appointment.booked
    purpose: care.logistics
    channel: sms
    send: { output: sms, template: reminder, fields: [appointment.start] }
    at: appointment.start - 24h
  - id: survey
    on: appointment.booked
    purpose: survey
    channel: email
    send: { output: mail, template: email, fields: [patient.name.given] }
    at: appointment.start - 48h
  - id: news
    on: appointment.booked
    purpose: service.info
    channel: email
    send: { output: mail, template: email, fields: [patient.name.given] }
    at: appointment.start - 72h
`;
const TEMPLATES = {
  'reminder.liquid': 'See you {{ appointment.start | local_time }}\n',
  'email.subject.liquid': 'News',
  'email.text.liquid': 'Hello {{ patient.name.given.first }}. {{ unsubscribe_url }}\n',
};

let config: TestConfigDir | undefined;
let server: RunningCarerelay | undefined;
let logs: ReturnType<typeof captureLogger>;
let base: string;
const closers: Array<() => Promise<void>> = [];

afterEach(async () => {
  await server?.stop();
  for (const close of closers.splice(0)) await close();
  config?.remove();
  server = undefined;
  config = undefined;
});

async function start(outputs: string[], env: Record<string, string>, rules = RULES): Promise<void> {
  config = consentConfigDir({
    policy: ['  region: us', '  quietHours: { channels: [] }', '  smsWebhooks: [{ output: sms, authToken: { env: TWILIO_TOKEN } }]'],
    outputs: [
      ...outputs,
      '{ name: sms, type: outbox, channel: sms, allowedPurposes: [care.logistics] }',
      '{ name: mail, type: outbox, channel: email, allowedPurposes: [care.logistics, survey, service.info, marketing] }',
    ],
    rules,
    templates: TEMPLATES,
  });
  await boot({ TWILIO_TOKEN, ...env });
}

async function boot(env: Record<string, string>): Promise<void> {
  logs = captureLogger();
  server = await startCarerelay({ configDir: config!.dir, env, log: logs, watchMappings: false });
  base = `http://127.0.0.1:${server.httpPort}`;
}

/** The patient's booking a week ahead, with a mobile number and an email; resolves once routed and due sends are done. */
async function book(appointmentId = 'A1', controlId = 'HOOKS-1'): Promise<void> {
  const text = siuMessage({ controlId, appointmentId, patientId: PATIENT, start: new Date(Date.now() + 7 * 86_400_000), sentAt: new Date() }).replace(
    '|19600101|M',
    `|19600101|F|||||${PHONE}^PRN^CP~^NET^Internet^${EMAIL}`,
  );
  expect(hl7Field((await mllpExchange([...server!.mllpPorts.values()][0]!, text))!, 'MSA', 1)).toBe('AA');
  await server!.deliveries.idle();
}

const delivery = async (id: string) => (await http(base, 'GET', `/api/deliveries/${encodeURIComponent(id)}`)).json;
const ledger = async () => (await http(base, 'GET', `/api/patients/${PATIENT}/consent`)).json.events as Array<{ source: string; method: string; output?: string; purposes: string[] }>;
const optOutWrites = (mc: MailchimpStandIn) => mc.requests.filter((r) => r.method === 'PATCH');
const expectNoContactInLogs = () => {
  const text = JSON.stringify(logs.lines);
  for (const value of [EMAIL, PHONE, PHONE.slice(1), 'Pat']) expect(text, value).not.toContain(value);
};

describe('marketing tools kept in step with the ledger, over real sockets', () => {
  let hubspot: HubspotStandIn;
  let mailchimp: MailchimpStandIn;
  let brevo: BrevoStandIn;
  let ac: ActiveCampaignStandIn;

  beforeEach(async () => {
    [hubspot, mailchimp, brevo, ac] = await Promise.all([startHubspotStandIn({ subscriptionIds: [111, 222] }), startMailchimpStandIn(), startBrevoStandIn(), startActiveCampaignStandIn({ listIds: ['2'] })]);
    closers.push(() => hubspot.close(), () => mailchimp.close(), () => brevo.close(), () => ac.close());
    await start(
      [
        `{ name: hubspot, type: hubspot, portalId: ${hubspot.portalId}, auth: { privateAppToken: { env: HUBSPOT_TOKEN } }, webhookSecret: { env: HUBSPOT_APP_SECRET }, action: upsert, properties: { patient.name.given: firstname }, subscriptions: { service.info: 111, marketing: 222 }, apiBaseUrl: "${hubspot.baseUrl}", allowedPurposes: [service.info, marketing] }`,
        `{ name: mailchimp, type: mailchimp, apiKey: { env: MC_KEY }, listId: "${mailchimp.listId}", action: upsert, statusIfNew: subscribed, properties: { patient.name.given: FNAME }, apiBaseUrl: "${mailchimp.apiBaseUrl}", webhookSecret: { env: MC_HOOK }, allowedPurposes: [survey, service.info, marketing] }`,
        `{ name: brevo, type: brevo, apiKey: { env: BREVO_KEY }, action: upsert, apiBaseUrl: "${brevo.baseUrl}", webhookSecret: { env: BREVO_HOOK }, allowedPurposes: [service.info, marketing] }`,
        `{ name: ac, type: activecampaign, apiUrl: "${ac.baseUrl}", apiToken: { env: AC_TOKEN }, action: upsert, listIds: [2], webhookSecret: { env: AC_HOOK }, allowedPurposes: [service.info, marketing] }`,
      ],
      {
        HUBSPOT_TOKEN: hubspot.privateAppToken,
        HUBSPOT_APP_SECRET: hubspot.oauth.clientSecret,
        MC_KEY: mailchimp.apiKey,
        MC_HOOK,
        BREVO_KEY: brevo.apiKey,
        BREVO_HOOK,
        AC_TOKEN: ac.apiToken,
        AC_HOOK,
      },
    );
    await book();
    // HubSpot and Mailchimp now hold the contact; Brevo and ActiveCampaign do not.
    expect(await delivery('hubspot-sync@appointment/A1#0')).toMatchObject({ status: 'sent' });
    expect(await delivery('mailchimp-sync@appointment/A1#0')).toMatchObject({ status: 'sent' });
    expect(mailchimp.members.get(md5(EMAIL))).toMatchObject({ status: 'subscribed' });
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'pending' });
  });

  it('an SMS STOP reaches, as an SMS opt-out of that number, the tool holding the contact that keeps an SMS status; an email opt-out reaches HubSpot and Mailchimp and no other', async () => {
    // The patient signed up for Mailchimp's SMS marketing with the same number (CareRelay never
    // hands Mailchimp a number).
    mailchimp.memberSmsSignup(EMAIL, PHONE);
    // STOP: the number opts out of this sender's SMS (docs/consent.md "Scope of an opt-out") —
    // the pending SMS stops at once — and of SMS marketing at the tools holding the contact.
    const params = { MessageSid: 'SMhooks1', AccountSid: 'AChooks', From: PHONE, To: '+33700000000', Body: 'STOP' };
    const stop = await fetch(`${base}/hooks/sms/sms`, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilioSignature(TWILIO_TOKEN, `${base}/hooks/sms/sms`, params) },
    });
    expect(stop.status).toBe(200);
    expect(await delivery('sms-reminder@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    await server!.deliveries.consentSync.idle();
    // Mailchimp: the member's SMS marketing consent, by its contact id — never its email status.
    const member = mailchimp.members.get(md5(EMAIL))!;
    expect(optOutWrites(mailchimp).map((r) => [r.path, r.json])).toEqual([
      [`/dc-us14/3.0/audiences/${mailchimp.listId}/contacts/${member.contact_id}`, { sms_channel: { marketing_consent: { status: 'denied' } } }],
    ]);
    expect(member).toMatchObject({ status: 'subscribed', sms_subscription_status: 'unsubscribed' });
    // HubSpot holds the contact but its API keeps no SMS status: not told (nor of email).
    expect(hubspot.statuses.size).toBe(0);
    expect(hubspot.requests.filter((r) => r.path.startsWith('/communication-preferences'))).toEqual([]);
    // Brevo and ActiveCampaign do not hold the contact: nothing.
    expect(brevo.requests).toEqual([]);
    expect(ac.requests).toEqual([]);
    // The surveys and newsletters by email go on.
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'pending' });

    // The patient opts out of email: pushed to the two tools holding the contact, and only them.
    const res = await http(base, 'POST', `/api/patients/${PATIENT}/opt-outs`, { channel: 'email' });
    expect(res.status).toBe(201);
    await server!.deliveries.consentSync.idle();
    expect(Object.fromEntries(hubspot.statuses)).toEqual({ [`${EMAIL}|111`]: 'UNSUBSCRIBED', [`${EMAIL}|222`]: 'UNSUBSCRIBED' });
    expect(mailchimp.members.get(md5(EMAIL))!.status).toBe('unsubscribed');
    expect(optOutWrites(mailchimp)).toHaveLength(2);
    expect(brevo.requests).toEqual([]);
    expect(ac.requests).toEqual([]);
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expectNoContactInLogs();
  });

  it("an unsubscribe webhook from the Mailchimp stand-in suppresses the next survey email with opted_out; pushed to HubSpot, not back to Mailchimp; recorded once", async () => {
    await expect(mailchimp.createWebhook(`${base}/hooks/mailchimp/mailchimp/guessed-secret-00000`)).rejects.toThrow(/GET answered 403/);
    await mailchimp.createWebhook(`${base}/hooks/mailchimp/mailchimp/${MC_HOOK}`);
    const before = (await ledger()).length;

    expect(await mailchimp.memberUnsubscribes(EMAIL)).toEqual([200]);
    // Suppressed before the webhook was answered, with the decision that says why.
    const survey = await delivery('survey@appointment/A1#0');
    expect(survey).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(survey.decisions[0]).toMatchObject({ result: 'deny', checkRule: 2, reason: 'opted_out' });
    // The audience carries newsletters too: an unsubscribe stops them (marketing and service.info together).
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('sms-reminder@appointment/A1#0')).toMatchObject({ status: 'pending' });
    const entries = (await ledger()).slice(before);
    expect(entries.map((e) => [e.source, e.method, e.output, e.purposes.join()])).toEqual([
      ['provider', 'mailchimp:opted_out', 'mailchimp', 'survey'],
      ['provider', 'mailchimp:opted_out', 'mailchimp', 'service.info'],
      ['provider', 'mailchimp:opted_out', 'mailchimp', 'marketing'],
    ]);

    await server!.deliveries.consentSync.idle();
    expect(Object.fromEntries(hubspot.statuses)).toEqual({ [`${EMAIL}|111`]: 'UNSUBSCRIBED', [`${EMAIL}|222`]: 'UNSUBSCRIBED' });
    expect(optOutWrites(mailchimp)).toEqual([]);

    // Mailchimp delivers the same call again: nothing new is recorded.
    expect(await mailchimp.redeliverLast()).toEqual([200]);
    expect(await ledger()).toHaveLength(before + 3);
    expectNoContactInLogs();
  });

  it('a HubSpot opt-out webhook names the contact by its HubSpot id: the holdings find the patient; pushed to Mailchimp, not back', async () => {
    const [contactId] = [...hubspot.contacts.keys()];
    const url = `${base}/hooks/hubspot/hubspot`;
    // Forged (another app's secret): refused, nothing changes.
    expect(await hubspot.postWebhook(url, [{ contactId: contactId!, property: 'hs_email_optout_111' }], { clientSecret: 'another-app-client-secret' })).toBe(403);
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'pending' });

    expect(await hubspot.postWebhook(url, [{ contactId: contactId!, property: 'hs_email_optout_111' }])).toBe(200);
    // Subscription 111 is the newsletter (service.info): it stops service.info and marketing, not surveys.
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'pending' });
    await server!.deliveries.consentSync.idle();
    expect(mailchimp.members.get(md5(EMAIL))!.status).toBe('unsubscribed');
    expect(hubspot.statuses.size).toBe(0);
    expectNoContactInLogs();
  });

  it('a Brevo hard bounce makes the address unfit for every output; an ActiveCampaign unsubscribe finds the patient by the address', async () => {
    expect(await brevo.postWebhook(`${base}/hooks/brevo/brevo`, 'guessed-secret-00000000', [{ event: 'hard_bounce', email: EMAIL }])).toBe(403);
    expect(await brevo.postWebhook(`${base}/hooks/brevo/brevo`, BREVO_HOOK, [{ event: 'hard_bounce', email: EMAIL }])).toBe(200);
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('news@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('sms-reminder@appointment/A1#0')).toMatchObject({ status: 'pending' });
    // The bounce is the mailbox's (an address entry for every output), not a choice of the patient's.
    expect((await ledger()).filter((e) => e.source === 'provider')).toEqual([]);

    // ActiveCampaign never held this contact: the address its report names finds the patient.
    expect(await ac.postWebhook(`${base}/hooks/activecampaign/ac/${AC_HOOK}`, 'unsubscribe', EMAIL, '2')).toBe(200);
    expect((await ledger()).filter((e) => e.method === 'activecampaign:opted_out').map((e) => e.purposes.join())).toEqual(['service.info', 'marketing']);
  });

  it('an erasure asks HubSpot and Mailchimp to forget the contact and names them in the erasure record', async () => {
    const res = await http(base, 'POST', `/api/patients/${PATIENT}/erase`);
    expect(res.status).toBe(200);
    expect(res.json.erasures[0].tools).toEqual([
      { output: 'hubspot', outcome: 'forgotten' },
      { output: 'mailchimp', outcome: 'forgotten' },
    ]);
    expect(hubspot.contacts.size).toBe(0);
    expect(hubspot.gdprBlocked).toEqual(new Set([EMAIL]));
    expect(mailchimp.members.size).toBe(0);
    expect(mailchimp.forgotten).toEqual(new Set([EMAIL]));
    expect(await server!.store.listContactHoldings({ patientId: PATIENT })).toEqual([]);
    expect((await http(base, 'GET', `/api/patients/${PATIENT}/disclosures`)).json.erasures[0].tools).toHaveLength(2);
    expectNoContactInLogs();
  });
});

describe('Marketing Cloud ENS: registered, verified, then signed batches', () => {
  it('answers the callback verification at once; after the signature key is configured, an unsubscribe stops the pending email', async () => {
    const sfmc: SfmcStandIn = await startSfmcStandIn();
    closers.push(() => sfmc.close());
    // The callback URL must not change across the restart: a fixed port.
    const port = await freePort();
    const sfmcOutput = (ens: string) =>
      `{ name: sfmc, type: sfmc, subdomain: mc-test, clientId: ${sfmc.clientId}, clientSecret: { env: SFMC_SECRET }, authBaseUrl: "${sfmc.baseUrl}", eventDefinitionKey: APIEvent-carerelay, ens: ${ens}, allowedPurposes: [service.info, marketing] }`;
    await start([sfmcOutput('{}')], { SFMC_SECRET: sfmc.clientSecret }, RULES.replace(/ {2}- id: hubspot-sync[\s\S]*?(?= {2}- id: sms-reminder)/, ''));
    const connectors = path.join(config!.dir, 'connectors', 'test.yaml');
    writeFileSync(connectors, readFileSync(connectors, 'utf8').replace('port: 0 }', `port: ${port} }`));
    await server!.stop();
    await boot({ TWILIO_TOKEN, SFMC_SECRET: sfmc.clientSecret });
    await book();

    const { callbackId, signatureKey, status } = await sfmc.registerCallback(`${base}/hooks/sfmc/sfmc`);
    expect(status).toBe(200);
    expect(sfmc.verifiedCallbacks).toEqual(new Set([callbackId]));
    const unsubscribe = { eventCategoryType: 'EngagementEvents.EmailUnsubscribe', timestampUTC: Date.now(), info: { to: EMAIL, subscriberKey: PATIENT, unsubscribeDate: Date.now(), unsubscribeMethod: 'Click' } };
    // Before the key is configured, batches are refused and nothing changes.
    expect(await sfmc.postEvents(callbackId, [unsubscribe])).toBe(401);
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'pending' });

    writeFileSync(connectors, readFileSync(connectors, 'utf8').replace('ens: {}', 'ens: { signatureKey: { env: SFMC_ENS_KEY } }'));
    await server!.stop();
    await boot({ TWILIO_TOKEN, SFMC_SECRET: sfmc.clientSecret, SFMC_ENS_KEY: signatureKey });
    expect(await sfmc.postEvents(callbackId, [unsubscribe])).toBe(200);
    expect(await delivery('survey@appointment/A1#0')).toMatchObject({ status: 'suppressed', reason: 'opted_out' });
    expect(await delivery('sms-reminder@appointment/A1#0')).toMatchObject({ status: 'pending' });
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
