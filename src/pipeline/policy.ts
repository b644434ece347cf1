// The consent and safety policy settings as the send-time checks and the time-zone rules read
// them (docs/consent.md). Pure data and small pure helpers: the YAML block that fills them is
// validated by config/policy-schema.ts (with a description and a default per key); nothing
// here reads files, the environment or a clock.
//
// One block serves two jobs on purpose: the organisation's zone and the sites' zones decide
// when a message is due and how times are shown (docs/consent.md "Time arithmetic", quiet
// hours), and the same zones count caps and quiet hours, so they cannot disagree.
import type { Channel, Purpose } from '../types.ts';
import { PURPOSES } from '../types.ts';

/** Which default matrix applies to patients without a consent record (docs/consent.md "Purposes"). */
export const Region = {
  /** HIPAA / TCPA: survey and service.info email allowed with an unsubscribe link. */
  Us: 'us',
  /** GDPR: every purpose but care.* denied until the patient consents. */
  Eu: 'eu',
} as const;
export type Region = (typeof Region)[keyof typeof Region];

export type Verdict = 'allow' | 'deny';

/** The default per purpose for the two patient channels; webhook, CRM and FHIR follow email. */
export type DefaultMatrix = Readonly<Record<Purpose, { readonly sms: Verdict; readonly email: Verdict }>>;

/** A site (facility, clinic) and the zone its appointments happen in. */
export interface Site {
  /** Matches a location's facility (HL7 PL.4) or its id (PL.1 point of care, FHIR Location id). */
  readonly id: string;
  readonly timezone: string;
  /** More location ids (points of care, FHIR Location ids) that belong to this site. */
  readonly locations: readonly string[];
}

/** Local wall-clock window in which messages may go, [start, end). */
export interface QuietHours {
  /** "HH:MM", inclusive. */
  readonly start: string;
  /** "HH:MM", exclusive: its previous minute is the latest allowed one. */
  readonly end: string;
  readonly channels: readonly Channel[];
}

/** A tenant cap: at most perDay / perWeek sends of a purpose on a channel per patient. */
export interface Cap {
  readonly purpose: Purpose;
  readonly channel: Channel;
  readonly perDay?: number;
  readonly perWeek?: number;
}

export interface SensitiveSettings {
  /** Days after the end of a flagged encounter or appointment (its start while open). */
  readonly windowDays: number;
  /** Confidentiality labels that flag an encounter (trigger `sensitivity`). */
  readonly labels: readonly string[];
  /** Service codes (appointment serviceType) that flag a visit: oncology, pregnancy loss… */
  readonly services: readonly string[];
  /** Location ids standing for intensive care and similar units (the trigger carries no location type). */
  readonly locationTypes: readonly string[];
}

export interface KeywordSettings {
  /** Opt-out words of the tenant's country, besides the STOP family (France: ARRET, ARRÊT). */
  readonly optOut: readonly string[];
  /** The one confirmation each keyword gets; no patient data in them. */
  readonly replies: { readonly stop: string; readonly start: string; readonly help: string };
}

export interface PolicySettings {
  readonly region: Region;
  /** IANA zone of the organisation (tenant): the last fallback of every zone. */
  readonly timezone: string;
  readonly sites: readonly Site[];
  readonly defaults: DefaultMatrix;
  readonly quietHours: QuietHours;
  readonly caps: readonly Cap[];
  /** The US healthcare SMS exemption's own limit (care.* SMS, region us only). */
  readonly usExemptSms: { readonly perDay: number; readonly perWeek: number };
  readonly sensitive: SensitiveSettings;
  readonly keywords: KeywordSettings;
  /** Oldest suppression-cache entry care.* may rely on while the ledger cannot be read, seconds. */
  readonly failClosed: { readonly cacheMaxAgeSeconds: number };
  /** Recorded with every grant and revocation (which wording the patient agreed to). */
  readonly version: string;
}

const CARE: readonly Purpose[] = ['care.logistics', 'care.followup'];

/** Whether a purpose is care (treatment): never withheld by the default matrix or sensitive windows. */
export function isCare(purpose: string): boolean {
  return purpose.startsWith('care.');
}

/** docs/consent.md "Default when no consent record exists", per region. */
export function regionDefaults(region: Region): Record<Purpose, { sms: Verdict; email: Verdict }> {
  const out = {} as Record<Purpose, { sms: Verdict; email: Verdict }>;
  for (const purpose of PURPOSES) {
    if (CARE.includes(purpose)) out[purpose] = { sms: 'allow', email: 'allow' };
    else if (region === 'us' && (purpose === 'survey' || purpose === 'service.info')) out[purpose] = { sms: 'deny', email: 'allow' };
    else out[purpose] = { sms: 'deny', email: 'deny' };
  }
  return out;
}

/** The default verdict for a purpose and channel; webhook, CRM and FHIR follow the email column. */
export function defaultVerdict(matrix: DefaultMatrix, purpose: Purpose, channel: Channel): Verdict {
  const row = matrix[purpose];
  return channel === 'sms' ? row.sms : row.email;
}

export const DEFAULT_REPLIES = {
  stop: 'You are unsubscribed and will receive no more messages from this number. Reply START to resubscribe.',
  start: 'You are subscribed again. Reply STOP to unsubscribe.',
  help: 'Messages about your appointments. Reply STOP to unsubscribe. For help, call your clinic.',
} as const;

/** Settings with every default filled in (tests and the in-memory pipeline start from these). */
export function defaultPolicy(overrides: Partial<PolicySettings> = {}): PolicySettings {
  const region = overrides.region ?? 'us';
  return {
    region,
    timezone: 'UTC',
    sites: [],
    defaults: regionDefaults(region),
    quietHours: { start: '08:00', end: '21:00', channels: ['sms'] },
    caps: [],
    usExemptSms: { perDay: 1, perWeek: 3 },
    sensitive: { windowDays: 90, labels: SENSITIVE_LABELS, services: [], locationTypes: [] },
    keywords: { optOut: [], replies: DEFAULT_REPLIES },
    failClosed: { cacheMaxAgeSeconds: 900 },
    version: '1',
    ...overrides,
  };
}

/**
 * Confidentiality signals that flag an encounter (docs/consent.md rule 5): "restricted"
 * (PV2-22 / PD1-12 = Y), v3 Confidentiality R and V, and the v3 ActCode sensitivity codes.
 */
export const SENSITIVE_LABELS: readonly string[] = ['restricted', 'R', 'V', 'PSY', 'HIV', 'SUD', 'ETH', 'SDV'];

/** "HH:MM" → minutes after midnight; undefined when it is not a time of day. */
export function minutesOfDay(text: string): number | undefined {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(text);
  return m ? Number(m[1]) * 60 + Number(m[2]) : undefined;
}
