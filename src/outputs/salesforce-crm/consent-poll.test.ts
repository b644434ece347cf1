import { describe, expect, it } from 'vitest';
import { CONSENT_POLL_PAGE, consentQuery, consentSignals, soqlDateTime, type ConsentRecord } from './consent-poll.ts';

const options = { output: 'hc', individualKeyField: 'CareRelay_Patient_Key__c', purposes: { marketing: 'Marketing' } };
const record = (over: Partial<Record<keyof ConsentRecord, unknown>> = {}): ConsentRecord => ({
  Id: '0ZY000000000001AAA',
  LastModifiedDate: '2030-03-15T09:01:02.000+0000',
  PrivacyConsentStatus: 'OptOut',
  ContactPointType: 'Email',
  CaptureDate: '2030-03-15T09:00:00.000+0000',
  CaptureSource: 'Preference Center',
  PartyId: '0PK000000000001AAA',
  Party: { CareRelay_Patient_Key__c: 'MRN-1' },
  DataUsePurpose: { Name: 'Marketing' },
  ...over,
});

describe('Salesforce consent poll', () => {
  it('builds the page query after a cursor, with SOQL dateTime literals', () => {
    expect(soqlDateTime('2030-03-15T09:01:02.000+0000')).toBe('2030-03-15T09:01:02Z');
    expect(soqlDateTime('2030-03-15T10:01:02+01:00')).toBe('2030-03-15T09:01:02Z');
    expect(() => soqlDateTime('yesterday')).toThrow(RangeError);
    expect(consentQuery({ since: '2030-03-15T09:01:02.000+0000', afterId: '0ZY000000000001AAA' }, 'Key__c')).toBe(
      'SELECT Id, LastModifiedDate, PrivacyConsentStatus, ContactPointType, CaptureDate, CaptureSource, PartyId, Party.Key__c, DataUsePurpose.Name ' +
        "FROM ContactPointTypeConsent WHERE LastModifiedDate > 2030-03-15T09:01:02Z OR (LastModifiedDate = 2030-03-15T09:01:02Z AND Id > '0ZY000000000001AAA') " +
        'ORDER BY LastModifiedDate, Id LIMIT 200',
    );
    // Nothing from outside gets into the query text.
    expect(() => consentQuery({ since: '2030-03-15T09:00:00Z' }, "Key__c FROM X WHERE '1'='1'")).toThrow(RangeError);
    expect(consentQuery({ since: '2030-03-15T09:00:00Z', afterId: "x' OR Id != '" }, 'Key__c')).not.toContain("x'");
  });

  it('normalizes opt-outs and opt-ins; skips CareRelay\'s own records, statuses that say nothing, unmapped purposes', () => {
    const page = consentSignals(
      [
        record(),
        record({ Id: '0ZY000000000002AAA', CaptureSource: 'CareRelay: sms_keyword' }),
        record({ Id: '0ZY000000000003AAA', PrivacyConsentStatus: 'Seen' }),
        record({ Id: '0ZY000000000004AAA', DataUsePurpose: { Name: 'Research' } }),
        record({ Id: '0ZY000000000005AAA', PrivacyConsentStatus: 'OptIn', ContactPointType: 'Phone', DataUsePurpose: null, Party: null, CaptureDate: null }),
        record({ Id: '0ZY000000000006AAA', ContactPointType: 'MailingAddress' }),
      ],
      { since: '2030-03-15T09:00:00Z' },
      options,
    );
    expect(page.signals).toEqual([
      {
        tool: 'salesforce-crm',
        output: 'hc',
        contact: { patientId: 'MRN-1', toolId: '0PK000000000001AAA' },
        kind: 'opted_out',
        scope: { channel: 'email', purpose: 'marketing' },
        at: '2030-03-15T09:00:00.000Z',
        eventId: 'salesforce:0ZY000000000001AAA:2030-03-15T09:01:02.000+0000',
      },
      {
        tool: 'salesforce-crm',
        output: 'hc',
        contact: { toolId: '0PK000000000001AAA' },
        kind: 'opted_in',
        scope: { channel: 'phone' },
        at: '2030-03-15T09:01:02.000Z',
        eventId: 'salesforce:0ZY000000000005AAA:2030-03-15T09:01:02.000+0000',
      },
    ]);
    // The cursor passes every record read, used or not.
    expect(page.cursor).toEqual({ since: '2030-03-15T09:01:02.000+0000', afterId: '0ZY000000000006AAA' });
    expect(page.more).toBe(false);
  });

  it('a full page means more may follow; an empty page keeps the cursor', () => {
    const full = Array.from({ length: CONSENT_POLL_PAGE }, (_, i) => record({ Id: `0ZY${String(i).padStart(12, '0')}AAA` }));
    expect(consentSignals(full, { since: '2030-01-01T00:00:00Z' }, options).more).toBe(true);
    expect(consentSignals([], { since: '2030-01-01T00:00:00Z' }, options)).toEqual({ signals: [], cursor: { since: '2030-01-01T00:00:00Z' }, more: false });
  });
});
