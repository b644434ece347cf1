import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PermanentError, TransientError } from '../errors.ts';
import type { LogFields, Logger } from '../log.ts';
import type { ConsentMirror, ToolConsentSignal } from '../outputs/consent-sync.ts';
import type { HeldContact, OptOutScope } from '../outputs/spec.ts';
import { defaultPolicy } from '../pipeline/policy.ts';
import { SqliteQueue } from '../queue/sqlite.ts';
import { testDelivery, testTrigger } from '../store/conformance.ts';
import type { StoredDelivery } from '../store/store.ts';
import { openSqliteDatabase, type Database } from '../store/sqlite-db.ts';
import { SqliteStore } from '../store/sqlite.ts';
import type { ConsentEvent, Delivery, Purpose } from '../types.ts';
import { ConsentService } from './consent.ts';
import { ConsentSync, mirrorsOf, type ConsentTool, type MirrorJob, type PollCursor } from './consent-sync.ts';

const T0 = Date.parse('2030-03-15T09:00:00Z');

function entry(over: Partial<Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'>> & Pick<ConsentEvent, 'action'>): Omit<ConsentEvent, 'id' | 'recordedAt' | 'policyVersion'> {
  return { patientId: 'MRN-1', purposes: [], source: 'admin', method: 'api', at: '2030-03-15T10:00:00+01:00', ...over };
}

describe('mirrorsOf: what a ledger entry pushes to a tool', () => {
  it('one push per channel and purpose; none for keywords, no-contact flags and other channels', () => {
    expect(mirrorsOf(entry({ action: 'opt_out', channel: 'email', purposes: ['marketing', 'service.info'], source: 'email-link', method: 'one-click' }))).toEqual([
      { patientId: 'MRN-1', channel: 'email', purpose: 'marketing', status: 'opted_out', capturedAt: '2030-03-15T10:00:00+01:00', source: 'email-link', capturedVia: 'email', effectiveFrom: '2030-03-15T10:00:00+01:00' },
      { patientId: 'MRN-1', channel: 'email', purpose: 'service.info', status: 'opted_out', capturedAt: '2030-03-15T10:00:00+01:00', source: 'email-link', capturedVia: 'email', effectiveFrom: '2030-03-15T10:00:00+01:00' },
    ]);
    expect(mirrorsOf(entry({ action: 'revoke' })).map((m) => [m.channel, m.purpose, m.status])).toEqual([
      ['email', undefined, 'opted_out'],
      ['sms', undefined, 'opted_out'],
    ]);
    expect(mirrorsOf(entry({ action: 'grant', channel: 'sms', purposes: ['survey'] }))).toEqual([expect.objectContaining({ channel: 'sms', purpose: 'survey', status: 'opted_in' })]);
    expect(mirrorsOf(entry({ action: 'opt_out', patientId: undefined, address: '+15550100', output: 'sms', source: 'sms' }))).toEqual([]);
    expect(mirrorsOf(entry({ action: 'no_contact' }))).toEqual([]);
    expect(mirrorsOf(entry({ action: 'opt_in', channel: 'sms' }))).toEqual([]);
    expect(mirrorsOf(entry({ action: 'opt_out', channel: 'webhook' }))).toEqual([]);
  });
});

describe('consent kept in step with tools (workers/consent-sync.ts)', () => {
  let db: Database;
  let store: SqliteStore;
  let queue: SqliteQueue<MirrorJob>;
  let consent: ConsentService;
  let sync: ConsentSync;
  let pushed: Array<{ output: string; mirror: ConsentMirror }>;
  let lines: Array<{ event: string; fields: LogFields | undefined }>;
  let refuse: (m: ConsentMirror) => Error | undefined;
  let polls: Array<{ signals: ToolConsentSignal[]; cursor: PollCursor; more: boolean }>;
  let cursors: PollCursor[];
  let queueClock = T0;

  const log: Logger = {
    info: (event, fields) => lines.push({ event, fields }),
    warn: (event, fields) => lines.push({ event, fields }),
    error: (event, fields) => lines.push({ event, fields }),
    debug() {},
  };

  function tool(name: string, withPoll = false): ConsentTool {
    return {
      async mirrorConsent(mirror) {
        const error = refuse(mirror);
        if (error) throw error;
        pushed.push({ output: name, mirror });
        return { acceptedAt: new Date(T0).toISOString() };
      },
      ...(withPoll
        ? {
            async pollConsent(cursor: PollCursor) {
              cursors.push(cursor);
              return polls.shift() ?? { signals: [], cursor, more: false };
            },
          }
        : {}),
    };
  }

  function build(tools: Map<string, ConsentTool>): void {
    queue = new SqliteQueue<MirrorJob>(db, { name: 'consent-mirror', now: () => queueClock, retry: { baseMs: 1000, capMs: 1000, maxAttempts: 3 } });
    let s: ConsentSync | undefined;
    consent = new ConsentService({
      store,
      policy: defaultPolicy({ region: 'us', timezone: 'America/New_York' }),
      output: () => undefined,
      log,
      now: () => T0,
      mirrors: { targets: (entry) => s!.targets(entry), queue: (event, outputs) => s!.queue(event, outputs) },
    });
    s = new ConsentSync({ store, consent, queue, tools, log, now: () => T0 });
    sync = s;
  }

  async function sentTo(output: string, patientId = 'MRN-1'): Promise<void> {
    await store.recordDisclosure({ deliveryId: `crm-sync@patient/${patientId}#0-${output}`, patientId, rule: 'crm-sync', purpose: 'care.logistics', channel: 'crm', output, at: '2030-03-14T09:00:00Z' });
  }

  const signal = (over: Partial<ToolConsentSignal>): ToolConsentSignal => ({
    tool: 'salesforce-crm',
    output: 'crm',
    contact: { patientId: 'MRN-1' },
    kind: 'opted_out',
    scope: { channel: 'email', purpose: 'marketing' },
    at: '2030-03-15T08:30:00Z',
    eventId: 'ev-1',
    ...over,
  });

  beforeEach(async () => {
    db = openSqliteDatabase(':memory:');
    store = new SqliteStore(db);
    await store.notePatientFacts([
      testTrigger({ id: 't1', patient: { ...testTrigger({ id: 'x' }).patient, telecom: [{ system: 'email', use: 'home', value: 'Alex@Example.org' }] } }),
      testTrigger({ id: 't2', patient: { ...testTrigger({ id: 'x' }).patient, id: 'MRN-2', telecom: [{ system: 'email', use: 'home', value: 'alex@example.org' }] } }),
    ]);
    pushed = [];
    lines = [];
    polls = [];
    cursors = [];
    refuse = () => undefined;
    queueClock = T0;
  });
  afterEach(async () => {
    await sync.stop();
    db.close();
  });

  it('pushes a patient entry to the tools that were sent something about them, never back to where it came from', async () => {
    build(new Map([['crm', tool('crm')], ['other-crm', tool('other-crm')]]));
    await sync.start();
    await sentTo('crm');
    await consent.record({ patientId: 'MRN-1', action: 'opt_out', channel: 'email', purposes: ['marketing'], source: 'admin', method: 'api' });
    await sync.idle();
    expect(pushed).toEqual([{ output: 'crm', mirror: expect.objectContaining({ patientId: 'MRN-1', channel: 'email', purpose: 'marketing', status: 'opted_out', source: 'admin' }) }]);

    // What the tool itself reported is recorded, not pushed back to it.
    pushed = [];
    await sentTo('other-crm');
    await consent.toolSignal(signal({ kind: 'opted_in', eventId: 'ev-back' }));
    await sync.idle();
    expect(pushed.map((p) => [p.output, p.mirror.status])).toEqual([['other-crm', 'opted_in']]);
    expect(await store.unqueuedConsentMirrors(10)).toEqual([]);
  });

  it('a marketing tool gets the opt-outs of the contacts it holds for the patient or a merged id, never a grant', async () => {
    const optOuts: Array<{ output: string; contact: HeldContact; scope: OptOutScope }> = [];
    const marketing = (name: string): ConsentTool => ({
      async optOut(contact, scope) {
        optOuts.push({ output: name, contact, scope });
        return 'applied';
      },
    });
    build(new Map([['hubspot', marketing('hubspot')], ['brevo', marketing('brevo')]]));
    await sync.start();
    await store.notePatientFacts([{ ...testTrigger({ id: 'm' }), type: 'patient.merged', patient: { ...testTrigger({ id: 'x' }).patient, id: 'MRN-1', mergedFrom: [{ value: 'MRN-OLD' }] }, appointment: undefined }]);
    await store.recordContactHolding({ output: 'hubspot', patientId: 'MRN-1', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await store.recordContactHolding({ output: 'hubspot', patientId: 'MRN-OLD', contactKey: 'old@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await store.recordContactHolding({ output: 'brevo', patientId: 'MRN-2', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await consent.record({ patientId: 'MRN-1', action: 'grant', channel: 'email', purposes: ['marketing'], source: 'admin', method: 'api' });
    await consent.record({ patientId: 'MRN-1', action: 'opt_out', channel: 'email', purposes: ['marketing', 'service.info'], source: 'email-link', method: 'link' });
    await sync.idle();
    expect(optOuts.map((o) => [o.output, o.contact.contactKey, o.scope.purpose]).sort()).toEqual([
      ['hubspot', 'alex@example.org', 'marketing'],
      ['hubspot', 'alex@example.org', 'service.info'],
      ['hubspot', 'old@example.org', 'marketing'],
      ['hubspot', 'old@example.org', 'service.info'],
    ]);
    expect(optOuts.every((o) => o.scope.channel === 'email')).toBe(true);
  });

  it("an SMS STOP is pushed as an SMS opt-out of its number to the tools holding the contact of the patients at that number that keep an SMS status; START never", async () => {
    const optOuts: Array<{ output: string; contact: HeldContact; scope: OptOutScope }> = [];
    const marketing = (name: string, optOutChannels?: Array<'email' | 'sms'>): ConsentTool => ({
      ...(optOutChannels ? { optOutChannels } : {}),
      async optOut(contact, scope) {
        optOuts.push({ output: name, contact, scope });
        return 'applied';
      },
    });
    build(
      new Map([
        ['mailchimp', marketing('mailchimp', ['email', 'sms'])],
        ['hubspot', marketing('hubspot', ['email'])],
        ['legacy', marketing('legacy')],
        ['brevo', marketing('brevo', ['email', 'sms'])],
        ['crm', tool('crm')],
      ]),
    );
    await sync.start();
    // MRN-1 and MRN-3 were both given the number; MRN-2 another one.
    const withPhone = (id: string, patientId: string, value: string) =>
      testTrigger({ id, patient: { ...testTrigger({ id: 'x' }).patient, id: patientId, telecom: [{ system: 'phone', use: 'mobile', value }] } });
    await store.notePatientFacts([withPhone('p1', 'MRN-1', '+1 (555) 010-0222'), withPhone('p3', 'MRN-3', '+15550100222'), withPhone('p2', 'MRN-2', '+15550100999')]);
    for (const output of ['mailchimp', 'hubspot', 'legacy']) await store.recordContactHolding({ output, patientId: 'MRN-1', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await store.recordContactHolding({ output: 'mailchimp', patientId: 'MRN-3', contactKey: 'sam@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await store.recordContactHolding({ output: 'brevo', patientId: 'MRN-2', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await sentTo('crm', 'MRN-3');

    const stop = await consent.inboundSms({ output: 'sms', from: '+15550100222', body: 'STOP', messageId: 'SM1' });
    expect(stop.reply).toBeDefined();
    await sync.idle();
    expect(optOuts.map((o) => [o.output, o.contact.patientId, o.contact.contactKey]).sort()).toEqual([
      ['mailchimp', 'MRN-1', 'alex@example.org'],
      ['mailchimp', 'MRN-3', 'sam@example.org'],
    ]);
    // The SMS channel of that number, every non-care purpose: never an email unsubscribe.
    expect(optOuts.every((o) => o.scope.channel === 'sms' && o.scope.address === '+15550100222' && o.scope.purpose === undefined)).toBe(true);
    expect(pushed).toEqual([{ output: 'crm', mirror: expect.objectContaining({ patientId: 'MRN-3', channel: 'sms', status: 'opted_out', source: 'sms', capturedVia: 'sms' }) }]);

    optOuts.length = 0;
    pushed = [];
    await consent.inboundSms({ output: 'sms', from: '+15550100222', body: 'START', messageId: 'SM2' });
    await sync.idle();
    expect(optOuts).toEqual([]);
    expect(pushed).toEqual([]);
    expect(await store.unqueuedConsentMirrors(10)).toEqual([]);
  });

  it('a send the SMS provider refused because the number said STOP there (Twilio 21610) is pushed like a STOP CareRelay received; a hard bounce is not', async () => {
    const optOuts: Array<{ output: string; contact: HeldContact; scope: OptOutScope }> = [];
    build(new Map([['mailchimp', { optOutChannels: ['email', 'sms'], optOut: async (contact, scope) => (optOuts.push({ output: 'mailchimp', contact, scope }), 'applied') } satisfies ConsentTool]]));
    await sync.start();
    await store.notePatientFacts([testTrigger({ id: 'p1', patient: { ...testTrigger({ id: 'x' }).patient, id: 'MRN-1', telecom: [{ system: 'phone', use: 'mobile', value: '+15550100222' }] } })]);
    await store.recordContactHolding({ output: 'mailchimp', patientId: 'MRN-1', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    const stored = (delivery: Delivery): StoredDelivery => ({ delivery, status: 'pending', asOf: delivery.asOf, generation: 1, createdAt: delivery.asOf, updatedAt: delivery.asOf });

    await consent.refused(stored(testDelivery({ to: '+15550100222' })), 'opted_out', '21610');
    await sync.idle();
    expect(optOuts).toEqual([{ output: 'mailchimp', contact: expect.objectContaining({ patientId: 'MRN-1', contactKey: 'alex@example.org' }), scope: { channel: 'sms', address: '+15550100222' } }]);

    optOuts.length = 0;
    await consent.refused(stored(testDelivery({ ruleId: 'survey', channel: 'email', output: 'email', to: 'alex@example.org' })), 'hard_bounce', '550');
    await sync.idle();
    expect(optOuts).toEqual([]);
  });

  it("a STOP's push recorded with the entry but not queued (a crash between) is queued at the next start, for the number's patients", async () => {
    const optOuts: Array<{ output: string; scope: OptOutScope }> = [];
    build(new Map([['mailchimp', { optOutChannels: ['email', 'sms'], optOut: async (_contact, scope) => (optOuts.push({ output: 'mailchimp', scope }), 'applied') } satisfies ConsentTool]]));
    await store.notePatientFacts([testTrigger({ id: 'p1', patient: { ...testTrigger({ id: 'x' }).patient, id: 'MRN-1', telecom: [{ system: 'phone', use: 'mobile', value: '+15550100222' }] } })]);
    await store.recordContactHolding({ output: 'mailchimp', patientId: 'MRN-1', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    await store.addConsentEvent(
      { ...entry({ action: 'opt_out', patientId: undefined, address: '+15550100222', output: 'sms', channel: 'sms', source: 'sms', method: 'keyword:STOP' }), policyVersion: '1', recordedAt: '2030-03-15T09:00:00Z' },
      ['mailchimp'],
    );
    await sync.start();
    await sync.idle();
    expect(optOuts).toEqual([{ output: 'mailchimp', scope: { channel: 'sms', address: '+15550100222' } }]);
    expect(await store.unqueuedConsentMirrors(10)).toEqual([]);
  });

  it('a tool signal by address reaches the patients whose contact that output holds', async () => {
    build(new Map());
    await store.recordContactHolding({ output: 'mailchimp', patientId: 'MRN-2', contactKey: 'alex@example.org', firstSentAt: '2030-03-01T09:00:00Z' });
    expect(await consent.toolSignal(signal({ tool: 'mailchimp', output: 'mailchimp', contact: { email: 'Alex@Example.org' }, scope: { channel: 'email' }, eventId: 'mc-1' }))).toMatchObject({ recorded: 1 });
    expect((await store.consentRecords({ patientIds: ['MRN-2'] })).events).toHaveLength(1);
    expect((await store.consentRecords({ patientIds: ['MRN-1'] })).events).toHaveLength(0);
  });

  it('a purpose the tool refuses for good is logged and skipped; a transient failure retries the entry', async () => {
    build(new Map([['crm', tool('crm')]]));
    await sync.start();
    await sentTo('crm');
    let failures = 1;
    refuse = (m) => (m.purpose === 'service.info' ? new PermanentError('salesforce_purpose_unmapped', 'unmapped') : m.purpose === 'marketing' && failures-- > 0 ? new TransientError('salesforce_unavailable', 'down') : undefined);
    await consent.record({ patientId: 'MRN-1', action: 'opt_out', channel: 'email', purposes: ['marketing', 'service.info'], source: 'email-link', method: 'link' });
    await sync.idle();
    expect(pushed).toEqual([]);
    expect((await queue.list({ state: 'pending' }))[0]).toMatchObject({ attempts: 1, lastError: { code: 'salesforce_unavailable' } });
    queueClock += 60_000;
    await queue.poke();
    await sync.idle();
    expect(pushed.map((p) => p.mirror.purpose)).toEqual(['marketing']);
    expect(lines).toContainEqual({ event: 'consent.mirror_refused', fields: { output: 'crm', entry: expect.any(String), code: 'salesforce_purpose_unmapped' } });
    expect(lines).toContainEqual({ event: 'consent.mirrored', fields: expect.objectContaining({ output: 'crm' }) });
  });

  it('a push recorded with its entry but not queued (a crash between) is queued at the next start', async () => {
    build(new Map([['crm', tool('crm')]]));
    await store.addConsentEvent({ ...entry({ action: 'revoke', channel: 'sms', purposes: ['survey'] }), policyVersion: '1', recordedAt: '2030-03-15T09:00:00Z' }, ['crm']);
    expect(pushed).toEqual([]);
    await sync.start();
    await sync.idle();
    expect(pushed).toEqual([{ output: 'crm', mirror: expect.objectContaining({ channel: 'sms', purpose: 'survey', status: 'opted_out' }) }]);
    expect(await store.unqueuedConsentMirrors(10)).toEqual([]);
  });

  it('a tool signal becomes a patient entry once per event id, covering what the tool said', async () => {
    build(new Map());
    expect(await consent.toolSignal(signal({}))).toMatchObject({ recorded: 1 });
    expect(await consent.toolSignal(signal({}))).toMatchObject({ recorded: 0 });
    // No purpose: every purpose but care; no channel: every channel.
    await consent.toolSignal(signal({ eventId: 'ev-2', scope: {} }));
    const { events } = await store.consentRecords({ patientIds: ['MRN-1'] });
    expect(events.map((e) => ({ action: e.action, channel: e.channel, purposes: e.purposes, source: e.source, method: e.method, output: e.output }))).toEqual([
      { action: 'opt_out', channel: 'email', purposes: ['marketing'], source: 'provider', method: 'salesforce-crm:opted_out', output: 'crm' },
      { action: 'opt_out', channel: undefined, purposes: expect.not.arrayContaining(['care.logistics', 'care.clinical', 'care.followup'] as Purpose[]), source: 'provider', method: 'salesforce-crm:opted_out', output: 'crm' },
    ]);
    expect(events[1]!.purposes).toContain('marketing');
    expect(events[1]!.at).toBe('2030-03-15T08:30:00Z');
  });

  it('a contact known by address only: the patients whose triggers carried it; unknown contacts change nothing', async () => {
    build(new Map());
    expect(await consent.toolSignal(signal({ tool: 'sfmc', output: 'mc', contact: { email: 'ALEX@example.org', toolId: 'sub-9' }, scope: { channel: 'email' }, eventId: 'e-1' }))).toMatchObject({ recorded: 2 });
    const { events } = await store.consentRecords({ patientIds: ['MRN-1', 'MRN-2'] });
    expect(events.map((e) => e.patientId).sort()).toEqual(['MRN-1', 'MRN-2']);
    expect(await consent.toolSignal(signal({ contact: { email: 'nobody@example.org' }, eventId: 'e-2' }))).toMatchObject({ recorded: 0 });
    expect(await consent.toolSignal(signal({ contact: { patientId: 'MRN-404' }, eventId: 'e-3' }))).toMatchObject({ recorded: 0 });
    expect(lines.filter((l) => l.event === 'consent.tool_signal_unmatched')).toHaveLength(2);
    expect(JSON.stringify(lines)).not.toContain('example.org');
  });

  it('a hard bounce stops email to the mailbox itself, for every output', async () => {
    build(new Map());
    await consent.toolSignal(signal({ tool: 'sfmc', output: 'mc', kind: 'hard_bounce', contact: { email: 'alex@example.org' }, scope: { channel: 'email' }, eventId: 'b-1' }));
    const { events } = await store.consentRecords({ patientIds: [], addresses: ['alex@example.org'] });
    expect(events).toEqual([expect.objectContaining({ address: 'alex@example.org', action: 'opt_out', channel: 'email', purposes: [], source: 'provider', method: 'sfmc:hard_bounce' })]);
    expect(events[0]!.output).toBeUndefined();
  });

  it('polls a tool from a saved cursor, a page at a time, into the ledger', async () => {
    build(new Map([['crm', tool('crm', true)]]));
    polls = [
      { signals: [signal({ eventId: 'p-1' })], cursor: { since: '2030-03-15T08:30:00Z', afterId: 'A' }, more: true },
      { signals: [signal({ eventId: 'p-2', kind: 'opted_in', scope: { channel: 'sms' } })], cursor: { since: '2030-03-15T08:31:00Z', afterId: 'B' }, more: false },
    ];
    expect(await sync.pollOnce('crm')).toEqual({ signals: 2 });
    expect(cursors).toEqual([{ since: new Date(T0 - 1000).toISOString() }, { since: '2030-03-15T08:30:00Z', afterId: 'A' }]);
    expect(await store.getCursor('consent-poll:crm')).toBe(JSON.stringify({ since: '2030-03-15T08:31:00Z', afterId: 'B' }));
    const { events } = await store.consentRecords({ patientIds: ['MRN-1'] });
    expect(events.map((e) => e.action)).toEqual(['opt_out', 'grant']);
    // The next poll starts where the last ended; a page read again records nothing twice.
    polls = [{ signals: [signal({ eventId: 'p-2', kind: 'opted_in', scope: { channel: 'sms' } })], cursor: { since: '2030-03-15T08:31:00Z', afterId: 'B' }, more: false }];
    await sync.pollOnce('crm');
    expect(cursors.at(-1)).toEqual({ since: '2030-03-15T08:31:00Z', afterId: 'B' });
    expect((await store.consentRecords({ patientIds: ['MRN-1'] })).events).toHaveLength(2);
  });
});
