import { describe, expect, it } from 'vitest';
import type { Trigger } from '../types.ts';
import { renderDelivery, TemplateSet, compileTemplate } from './render.ts';
import { displayZone, patientZone, siteOf } from './zones.ts';

const sites = [
  { id: 'NORTHCLINIC', timezone: 'Europe/Paris', locations: [] },
  { id: 'NYC', timezone: 'America/New_York', locations: ['MAIN-ST'] },
];

function trigger(location?: { id: string; facility?: string }, encounterLocation?: { id: string; facility?: string }): Trigger {
  return {
    id: 't1',
    type: 'appointment.booked',
    occurredAt: '2027-06-01T10:15:00+02:00',
    receivedAt: '2027-06-01T08:15:01Z',
    source: { format: 'hl7v2', sender: 'EPIC^NORTHCLINIC', messageType: 'SIU^S12', messageId: 'DEMO-0001' },
    patient: { id: 'E1001', identifiers: [{ value: 'E1001' }], deceased: false, telecom: [] },
    appointment: { id: 'AP-1001', start: '2027-06-15T14:30:00+02:00', ...(location ? { location } : {}) },
    ...(encounterLocation ? { encounter: { id: 'V1', location: encounterLocation } } : {}),
  };
}

describe('time zones of a trigger', () => {
  it('finds the site by facility first, then by location id or the site\'s extra locations', () => {
    expect(siteOf(trigger({ id: 'CARDIO1', facility: 'NORTHCLINIC' }), sites)?.id).toBe('NORTHCLINIC');
    expect(siteOf(trigger({ id: 'NYC' }), sites)?.id).toBe('NYC');
    expect(siteOf(trigger({ id: 'MAIN-ST' }), sites)?.id).toBe('NYC');
    expect(siteOf(trigger(undefined, { id: 'MAIN-ST' }), sites)?.id).toBe('NYC');
    expect(siteOf(trigger({ id: 'ELSEWHERE' }), sites)).toBeUndefined();
  });

  it("the patient's zone is the site's, else the organisation's", () => {
    expect(patientZone(trigger({ id: 'MAIN-ST' }), { sites, timezone: 'Europe/London' })).toBe('America/New_York');
    expect(patientZone(trigger({ id: 'ELSEWHERE' }), { sites, timezone: 'Europe/London' })).toBe('Europe/London');
  });

  it("a time is shown in the site's zone, else the input's, else in the offset it came with — never the server's", () => {
    expect(displayZone(trigger({ id: 'CARDIO1', facility: 'NORTHCLINIC' }), { sites }, 'UTC')).toBe('Europe/Paris');
    expect(displayZone(trigger({ id: 'ELSEWHERE' }), { sites }, 'Europe/Berlin')).toBe('Europe/Berlin');
    expect(displayZone(trigger({ id: 'ELSEWHERE' }), { sites })).toBeUndefined();
  });

  it('renders 14:30 for 20270615143000+0200 in every case of that chain (the README booking)', () => {
    const { template } = compileTemplate({ name: 'c', part: 'body', language: 'fr', file: 'c.fr.liquid', text: '{{ appointment.start | local_date }} à {{ appointment.start | local_time }}' });
    const templates = new TemplateSet([template!]);
    const delivery = {
      id: 'c@appointment/AP-1001#0',
      template: 'c',
      channel: 'sms',
      payload: { patient: { language: 'fr' }, appointment: { start: '2027-06-15T14:30:00+02:00' } },
    } as unknown as Parameters<typeof renderDelivery>[1];
    expect(renderDelivery(templates, delivery, { zone: 'Europe/Paris' }).text).toBe('mardi 15 juin 2027 à 14:30');
    // No site, no input zone: the offset the time came with (+02:00), not UTC.
    expect(renderDelivery(templates, delivery, { zone: undefined }).text).toBe('mardi 15 juin 2027 à 14:30');
    expect(renderDelivery(templates, delivery, { zone: 'UTC' }).text).toBe('mardi 15 juin 2027 à 12:30');
  });
});
