// Which time zone a trigger's times belong to. Two questions, two answers (docs/consent.md
// "Time arithmetic", quiet hours; mappings/README.md "Templates"):
//
//   - When is a message due, when are quiet hours, which day does a cap count? The patient's
//     zone: the address's zone → the site's → the organisation's. Addresses are not mapped to
//     zones yet, so it is the site's zone when the appointment's (or encounter's) location
//     belongs to a configured site, else the organisation's.
//   - What time does the patient read in the message? The wall-clock time of the place of the
//     appointment: the site's zone when configured, else the zone of the input that received
//     the message (its `timezone` setting), else the offset the time came with. Never the
//     server's zone: a Paris clinic's 14:30 must not read 12:30 because the server runs in UTC.
import type { LocationRef, Trigger } from '../types.ts';
import type { PolicySettings, Site } from './policy.ts';

/** The configured site of the trigger's appointment location, else of its encounter location. */
export function siteOf(trigger: Trigger, sites: readonly Site[]): Site | undefined {
  if (sites.length === 0) return undefined;
  for (const location of [trigger.appointment?.location, trigger.encounter?.location]) {
    const site = location && siteOfLocation(location, sites);
    if (site) return site;
  }
  return undefined;
}

function siteOfLocation(location: LocationRef, sites: readonly Site[]): Site | undefined {
  // The facility names the site more reliably than a point of care (PL.4 vs PL.1): tried first.
  if (location.facility !== undefined) {
    const byFacility = sites.find((s) => s.id === location.facility);
    if (byFacility) return byFacility;
  }
  return sites.find((s) => s.id === location.id || s.locations.includes(location.id));
}

/** The patient's zone: address → site → organisation (addresses are not mapped to zones yet). */
export function patientZone(trigger: Trigger, policy: Pick<PolicySettings, 'sites' | 'timezone'>): string {
  return siteOf(trigger, policy.sites)?.timezone ?? policy.timezone;
}

/**
 * The zone times are shown in: the site's, else the receiving input's, else undefined — each
 * time is then shown in the offset it came with.
 */
export function displayZone(trigger: Trigger, policy: Pick<PolicySettings, 'sites'>, inputZone?: string): string | undefined {
  return siteOf(trigger, policy.sites)?.timezone ?? inputZone;
}
