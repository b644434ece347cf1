import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  FhirNotificationError,
  readNotification,
  referenceParts,
  resolveReference,
  topicEventKey,
  topicMessageId,
  type Notification,
  type TopicNotification,
} from './notification.ts';

const fixtures = fileURLToPath(new URL('../../fixtures/fhir/', import.meta.url));

/** The Backport IG examples of the sample corpus (fixtures/corpus/fhir), copied byte for byte as fixtures/fhir/backport-r4-*. */
function corpusFile(name: string): Buffer {
  return readFileSync(`${fixtures}backport-r4-${name.replace(/^r4-notification-/, '')}`);
}

function topic(n: Notification): TopicNotification {
  expect(n.kind).toBe('topic');
  return n as TopicNotification;
}

const SUBSCRIPTION = 'https://example.org/fhir/Subscription/admission';
const ENCOUNTER = 'https://example.org/fhir/Encounter/86009987-eabe-42bf-8c02-b112b18cb616';
const PATIENT = 'https://example.org/fhir/Patient/1599eb66-431a-447c-a3de-6897fe9ae9a1';

describe('readNotification: R4 Backport IG examples (corpus)', () => {
  it('handshake: requested, no events, counter 0', () => {
    const n = topic(readNotification(corpusFile('r4-notification-handshake.json')));
    expect(n).toMatchObject({
      version: 'r4-backport',
      subscription: SUBSCRIPTION,
      topic: 'http://hl7.org/SubscriptionTopic/admission',
      status: 'requested',
      type: 'handshake',
      eventsSinceSubscriptionStart: 0,
      events: [],
      payload: 'empty',
      timestamp: '2020-05-29T11:44:13.1882432-05:00',
    });
    expect(n.resources.size).toBe(0);
  });

  it('heartbeat: active, counter 2, no events', () => {
    const n = topic(readNotification(corpusFile('r4-notification-heartbeat.json')));
    expect(n).toMatchObject({ status: 'active', type: 'heartbeat', eventsSinceSubscriptionStart: 2, events: [] });
  });

  it('empty payload: an event number and timestamp, no focus', () => {
    const n = topic(readNotification(corpusFile('r4-notification-empty.json')));
    expect(n.type).toBe('event-notification');
    expect(n.payload).toBe('empty');
    expect(n.events).toEqual([
      { eventNumber: 2, timestamp: '2020-05-29T11:44:13.1882432-05:00', additionalContext: [] },
    ]);
  });

  it('id-only payload: focus reference, no resources in the Bundle', () => {
    const n = topic(readNotification(corpusFile('r4-notification-id-only.json')));
    expect(n.payload).toBe('id-only');
    expect(n.events[0]!.focus).toBe(ENCOUNTER);
    expect(n.resources.size).toBe(0);
  });

  it('full-resource payload: the focus resolves to the inline Encounter, by fullUrl or Type/id', () => {
    const n = topic(readNotification(corpusFile('r4-notification-full-resource.json')));
    expect(n.payload).toBe('full-resource');
    expect(resolveReference(n.resources, ENCOUNTER)?.resourceType).toBe('Encounter');
    expect(resolveReference(n.resources, 'Encounter/86009987-eabe-42bf-8c02-b112b18cb616')?.id).toBe(
      '86009987-eabe-42bf-8c02-b112b18cb616',
    );
    // The status Parameters is not a payload resource.
    expect([...n.resources.values()].some((r) => r.resourceType === 'Parameters')).toBe(false);
  });

  it('multi-resource: additional-context Patient is listed and present', () => {
    const n = topic(readNotification(corpusFile('r4-notification-multi-resource.json')));
    expect(n.events[0]!.additionalContext).toEqual([PATIENT]);
    expect(resolveReference(n.resources, PATIENT)?.resourceType).toBe('Patient');
  });

  it('error status: query-status with the subscription error code', () => {
    const n = topic(readNotification(corpusFile('r4-notification-error.json')));
    expect(n).toMatchObject({ status: 'error', type: 'query-status', eventsSinceSubscriptionStart: 3, events: [] });
    expect(n.errors).toEqual([
      { system: 'http://terminology.hl7.org/CodeSystem/subscription-error', code: 'no-response' },
    ]);
  });

  it('a Subscription resource itself is a plain resource body', () => {
    const n = readNotification(corpusFile('subscription-admission.json'));
    expect(n.kind).toBe('resource');
    if (n.kind === 'resource') expect(n.resources.get('Subscription/subscription-admission')).toBe(n.resource);
  });
});

describe('readNotification: R4B and R5', () => {
  it('R5: subscription-notification Bundle with SubscriptionStatus', () => {
    const n = topic(readNotification(readFileSync(`${fixtures}r5-appointment-booked.json`)));
    expect(n).toMatchObject({
      version: 'r5',
      subscription: 'https://ehr.example.org/fhir/Subscription/appointments',
      status: 'active',
      type: 'event-notification',
      eventsSinceSubscriptionStart: 12,
      payload: 'full-resource',
    });
    expect(n.events).toEqual([
      {
        eventNumber: 12,
        timestamp: '2021-09-14T11:20:00+02:15',
        focus: 'https://ehr.example.org/fhir/Appointment/36996',
        additionalContext: ['https://ehr.example.org/fhir/Patient/pat-everyman'],
      },
    ]);
  });

  it('R4B: history Bundle with SubscriptionStatus', () => {
    const n = topic(readNotification(readFileSync(`${fixtures}r4b-appointment-cancelled.json`)));
    expect(n.version).toBe('r4b');
    expect(n.events[0]!.eventNumber).toBe(15);
  });

  it('R5 id-only: an entry with fullUrl and request but no resource is not a payload', () => {
    const n = topic(
      readNotification({
        resourceType: 'Bundle',
        type: 'subscription-notification',
        entry: [
          {
            fullUrl: 'urn:uuid:c144782b',
            resource: {
              resourceType: 'SubscriptionStatus',
              type: 'event-notification',
              eventsSinceSubscriptionStart: '2',
              notificationEvent: [{ eventNumber: '2', focus: { reference: 'http://example.org/FHIR/R5/Encounter/2' } }],
              subscription: { reference: 'http://example.org/FHIR/R5/Subscription/123' },
            },
          },
          { fullUrl: 'http://example.org/FHIR/R5/Encounter/2', request: { method: 'PUT', url: 'Encounter/2' } },
        ],
      }),
    );
    expect(n.payload).toBe('id-only');
    expect(n.status).toBeUndefined();
    expect(n.topic).toBeUndefined();
  });

  it('records history entries that are deletions', () => {
    const n = topic(readNotification(readFileSync(`${fixtures}backport-r4-appointment-deleted.json`)));
    expect(n.deleted).toEqual(['https://ehr.example.org/fhir/Appointment/36996']);
    expect(n.payload).toBe('id-only');
  });

  it('US Core Patient Data Feed: trigger codings on the event', () => {
    const n = topic(readNotification(readFileSync(`${fixtures}uscore-encounter-transfer-a02.json`)));
    expect(n.events[0]!.triggers).toEqual([
      { system: 'http://hl7.org/fhir/us/core/CodeSystem/trigger', code: 'feed-event' },
      { system: 'http://terminology.hl7.org/CodeSystem/v2-0003', code: 'A02' },
    ]);
  });
});

describe('readNotification: body forms', () => {
  it.each([undefined, null, '', '  \n', Buffer.alloc(0), {}])('empty body %#', (body) => {
    expect(readNotification(body)).toEqual({ kind: 'empty' });
  });

  it('reads JSON text and bytes the same as parsed JSON', () => {
    const text = corpusFile('r4-notification-heartbeat.json').toString('utf8');
    const fromText = topic(readNotification(text));
    const fromBytes = topic(readNotification(Buffer.from(text)));
    const fromJson = topic(readNotification(JSON.parse(text)));
    expect(fromText).toEqual(fromJson);
    expect(fromBytes).toEqual(fromJson);
  });

  it('a JSON text holding a string or null is not a body, and its content is never parsed again', () => {
    const inner = '{"resourceType":"Appointment","__proto__":{"polluted":true}}';
    expect(() => readNotification(JSON.stringify(inner))).toThrow(/body: expected a JSON object \(a FHIR resource\), got a string/);
    expect(() => readNotification(Buffer.from('null'))).toThrow(/got null/);
    expect(() => readNotification(inner)).toThrow(/"__proto__" is not allowed/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('bytes that are not UTF-8 are refused, saying where', () => {
    // "Müller" in Latin-1: 0xFC is not UTF-8.
    const latin1 = Buffer.concat([Buffer.from('{"resourceType":"Patient","name":[{"family":"M'), Buffer.from([0xfc]), Buffer.from('ller"}]}')]);
    expect(() => readNotification(latin1)).toThrow(/body: the bytes are not valid UTF-8 \(byte 46\)/);
  });

  it('a criteria rest-hook resource is returned as is', () => {
    const n = readNotification({ resourceType: 'Appointment', id: 'a1', status: 'booked' });
    expect(n).toMatchObject({ kind: 'resource', resource: { id: 'a1' } });
  });
});

describe('readNotification: bad shapes say what and where', () => {
  const heartbeat = (): Record<string, any> =>
    JSON.parse(corpusFile('r4-notification-heartbeat.json').toString('utf8')) as Record<string, any>;
  const error = (body: unknown): FhirNotificationError => {
    try {
      readNotification(body);
    } catch (e) {
      expect(e).toBeInstanceOf(FhirNotificationError);
      return e as FhirNotificationError;
    }
    throw new Error('expected a FhirNotificationError');
  };

  it('invalid JSON', () => {
    expect(error('{"resourceType": ').message).toMatch(/^body: not valid JSON/);
  });

  it('not an object', () => {
    expect(error([1, 2]).message).toBe('body: expected a JSON object (a FHIR resource), got an array');
  });

  it('no resourceType', () => {
    expect(error({ id: 'x' }).message).toBe('resourceType: missing (the body is not a FHIR resource)');
  });

  it('a Bundle that is not a notification', () => {
    expect(error({ resourceType: 'Bundle', type: 'transaction', entry: [] }).message).toMatch(
      /^type: a Bundle of type 'transaction' is not a subscription notification/,
    );
  });

  it('no entries', () => {
    expect(error({ resourceType: 'Bundle', type: 'history' }).path).toBe('entry');
  });

  it('entry[0] is not a status resource', () => {
    const e = error({ resourceType: 'Bundle', type: 'history', entry: [{ resource: { resourceType: 'Encounter' } }] });
    expect(e.message).toBe(
      "entry[0].resource.resourceType: 'Encounter': expected Parameters (R4 Subscriptions Backport) or SubscriptionStatus (R4B/R5)",
    );
  });

  it('Parameters status inside an R5 Bundle', () => {
    const body = heartbeat();
    body.type = 'subscription-notification';
    expect(error(body).path).toBe('entry[0].resource');
  });

  it('parameter[type] missing', () => {
    const body = heartbeat();
    body.entry[0].resource.parameter = body.entry[0].resource.parameter.filter((p: { name: string }) => p.name !== 'type');
    const e = error(body);
    expect(e.message).toBe('entry[0].resource.parameter[type]: missing');
    expect(e.code).toBe('fhir_notification_invalid');
    expect(e.failureClass).toBe('permanent');
  });

  it('parameter[type] with an unknown code', () => {
    const body = heartbeat();
    body.entry[0].resource.parameter.find((p: { name: string }) => p.name === 'type').valueCode = 'ping';
    expect(error(body).message).toBe(
      "entry[0].resource.parameter[type].valueCode: 'ping' is not one of handshake | heartbeat | event-notification | query-status | query-event",
    );
  });

  it('parameter[subscription] without a reference', () => {
    const body = heartbeat();
    body.entry[0].resource.parameter[0].valueReference = { display: 'x' };
    expect(error(body).message).toBe('entry[0].resource.parameter[subscription].valueReference.reference: missing');
  });

  it('a repeated single parameter', () => {
    const body = heartbeat();
    body.entry[0].resource.parameter.push({ name: 'status', valueCode: 'off' });
    expect(error(body).message).toBe('entry[0].resource.parameter[status]: appears 2 times, expected at most once');
  });

  it('event-number that is not a number', () => {
    const body = JSON.parse(corpusFile('r4-notification-id-only.json').toString('utf8'));
    const event = body.entry[0].resource.parameter.find((p: { name: string }) => p.name === 'notification-event');
    event.part[0].valueString = 'two';
    expect(error(body).message).toBe(
      "entry[0].resource.parameter[5].part[event-number].valueString: expected a non-negative integer, got 'two'",
    );
  });

  it('event without event-number', () => {
    const body = JSON.parse(corpusFile('r4-notification-id-only.json').toString('utf8'));
    const event = body.entry[0].resource.parameter.find((p: { name: string }) => p.name === 'notification-event');
    event.part.shift();
    expect(error(body).message).toBe('entry[0].resource.parameter[5].part[event-number]: missing');
  });

  it('a timestamp without a time zone', () => {
    const body = JSON.parse(corpusFile('r4-notification-empty.json').toString('utf8'));
    const event = body.entry[0].resource.parameter.find((p: { name: string }) => p.name === 'notification-event');
    event.part[1].valueInstant = '2020-05-29T11:44:13';
    expect(error(body).path).toBe('entry[0].resource.parameter[5].part[timestamp].valueInstant');
  });

  it('R5 SubscriptionStatus without subscription, or event without eventNumber', () => {
    const status = (extra: Record<string, unknown>) => ({
      resourceType: 'Bundle',
      type: 'subscription-notification',
      entry: [{ resource: { resourceType: 'SubscriptionStatus', type: 'event-notification', ...extra } }],
    });
    expect(error(status({})).message).toBe('entry[0].resource.subscription.reference: missing');
    expect(
      error(status({ subscription: { reference: 'Subscription/1' }, notificationEvent: [{ focus: { reference: 'Encounter/1' } }] }))
        .message,
    ).toBe('entry[0].resource.notificationEvent[0].eventNumber: missing');
  });
});

describe('references', () => {
  it('referenceParts handles relative, absolute and versioned references', () => {
    expect(referenceParts('Patient/1')).toEqual({ type: 'Patient', id: '1' });
    expect(referenceParts('https://h.example/fhir/R4/Encounter/a-b.c')).toEqual({ type: 'Encounter', id: 'a-b.c' });
    expect(referenceParts('Appointment/7/_history/3')).toEqual({ type: 'Appointment', id: '7' });
    expect(referenceParts('urn:uuid:1234')).toBeUndefined();
    expect(referenceParts('#contained')).toBeUndefined();
    expect(referenceParts('Patient/.')).toBeUndefined();
    expect(referenceParts('https://h.example/fhir/Patient/..')).toBeUndefined();
  });

  it('topicEventKey is topicMessageId in the first numbering, <id>@<epoch>#<n> after a restart', () => {
    expect(topicEventKey(SUBSCRIPTION, 2)).toBe('admission#2');
    expect(topicEventKey(SUBSCRIPTION, 2, 0)).toBe('admission#2');
    expect(topicEventKey('Subscription/abc', 2, 3)).toBe('abc@3#2');
  });

  it('topicMessageId is <subscription id>#<event number>', () => {
    expect(topicMessageId(SUBSCRIPTION, 2)).toBe('admission#2');
    expect(topicMessageId('Subscription/abc', 10)).toBe('abc#10');
  });
});

describe('resolveReference', () => {
  it('matches a relative reference by Type/id, an absolute one only by its full URL', async () => {
    const { resolveReference } = await import('./notification.ts');
    const local = { resourceType: 'Patient', id: 'p1' };
    const resources = new Map([
      ['https://ehr.example.org/fhir/Patient/p1', local],
      ['Patient/p1', local],
    ]);
    expect(resolveReference(resources, 'Patient/p1')).toBe(local);
    expect(resolveReference(resources, 'https://ehr.example.org/fhir/Patient/p1')).toBe(local);
    // Same type and id on another server: another patient, never this one.
    expect(resolveReference(resources, 'https://evil.example/fhir/Patient/p1')).toBeUndefined();
  });
});
