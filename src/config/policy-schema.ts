// Schema of the `policy` block of a connectors/*.yaml file: the consent and safety settings of
// docs/consent.md and the time zones of the organisation and its sites. Every property carries
// a description and, when optional, a default (`carerelay validate` and the docs use them).
// At most one connectors file may hold the policy block; without one every default applies.
//
// The loader turns the validated block into `PolicyConfig`: the pure `PolicySettings` the
// send-time checks read (pipeline/policy.ts), plus what the ways in need (SMS webhooks,
// unsubscribe links, the public URL), which hold secrets and URLs and stay out of pipeline/.
import { CHANNELS, PURPOSES, type Channel, type Purpose } from '../types.ts';
import { DEFAULT_REPLIES, SENSITIVE_LABELS, regionDefaults, type PolicySettings, type Region, type Verdict } from '../pipeline/policy.ts';
import type { JsonSchema, SecretRef } from './yaml.ts';

const TIME_OF_DAY = { type: 'string', pattern: '^([01][0-9]|2[0-3]):[0-5][0-9]$', 'x-hint': 'a time of day as HH:MM, e.g. 08:00' } as const;

const secretSchema = (description: string) =>
  ({
    type: 'object',
    description,
    'x-secret': true,
    additionalProperties: false,
    minProperties: 1,
    maxProperties: 1,
    properties: {
      env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'Name of the environment variable holding the secret.' },
      file: { type: 'string', minLength: 1, description: 'File holding the secret (relative to the configuration directory).' },
    },
  }) as const;

const verdictPair = {
  type: 'object',
  description: 'The default for this purpose per channel (webhook, CRM and FHIR follow email).',
  additionalProperties: false,
  properties: {
    sms: { enum: ['allow', 'deny'], description: 'SMS: allow or deny without a consent record.' },
    email: { enum: ['allow', 'deny'], description: 'Email (and webhook, CRM, FHIR): allow or deny without a consent record.' },
  },
} as const;

export const policySchema = {
  type: 'object',
  description:
    'Consent and safety settings (docs/consent.md) and the time zones of the organisation and its sites. ' +
    'At most one connectors file may contain a policy block.',
  additionalProperties: false,
  properties: {
    region: {
      enum: ['us', 'eu'],
      default: 'us',
      description:
        'Default matrix for patients without a consent record: "us" (survey and service.info email allowed with an ' +
        'unsubscribe link, everything else but care.* denied by SMS) or "eu" (every purpose but care.* denied).',
    },
    timezone: {
      type: 'string',
      format: 'iana-timezone',
      description:
        'IANA time zone of the organisation (tenant): due times, quiet hours and caps for patients whose site has no zone ' +
        'of its own. Default: server.timezone when that is set, else UTC.',
    },
    sites: {
      type: 'array',
      default: [],
      description: 'Sites (facilities, clinics) with their own time zone: appointments there are due and shown in it.',
      items: {
        type: 'object',
        description: 'One site.',
        additionalProperties: false,
        required: ['id', 'timezone'],
        properties: {
          id: { type: 'string', minLength: 1, description: 'The facility (HL7 PL.4, e.g. AIL-3.4) or location id (PL.1, FHIR Location id) that names the site.' },
          timezone: { type: 'string', format: 'iana-timezone', description: 'IANA zone of the site, e.g. Europe/Paris.' },
          locations: { type: 'array', default: [], items: { type: 'string', minLength: 1 }, description: 'More location ids (points of care, FHIR Location ids) of this site.' },
        },
      },
    },
    defaults: {
      type: 'object',
      default: {},
      description: "Overrides of the region's default matrix, per purpose (e.g. survey: { email: deny }).",
      additionalProperties: false,
      properties: Object.fromEntries(PURPOSES.map((p) => [p, verdictPair])),
    },
    quietHours: {
      type: 'object',
      default: {},
      description: "Local hours in which messages may go, in the patient's zone: [start, end).",
      additionalProperties: false,
      properties: {
        start: { ...TIME_OF_DAY, default: '08:00', description: 'First allowed minute, HH:MM local time.' },
        end: { ...TIME_OF_DAY, default: '21:00', description: 'End of the allowed window, HH:MM local time (exclusive: 21:00 means 20:59 is the last minute).' },
        channels: {
          type: 'array',
          default: ['sms'],
          items: { enum: ['sms', 'email'] },
          description: 'Channels quiet hours apply to (webhook and CRM never).',
        },
      },
    },
    caps: {
      type: 'array',
      default: [],
      description: 'Tenant caps per patient, across every output and rule, counted on the day of the actual send in the patient\'s zone (none by default).',
      items: {
        type: 'object',
        description: 'At most perDay / perWeek sends of a purpose on a channel per patient (ISO weeks, Monday start); give one or both.',
        additionalProperties: false,
        required: ['purpose', 'channel'],
        properties: {
          purpose: { enum: [...PURPOSES], description: 'The purpose counted.' },
          channel: { enum: [...CHANNELS], description: 'The channel counted.' },
          perDay: { type: 'integer', minimum: 0, description: 'Most sends per calendar day.' },
          perWeek: { type: 'integer', minimum: 0, description: 'Most sends per ISO week.' },
        },
      },
    },
    usExemptSms: {
      type: 'object',
      default: {},
      description: 'The US healthcare SMS exemption\'s own limit for care.* SMS (region us only).',
      additionalProperties: false,
      properties: {
        perDay: { type: 'integer', minimum: 0, default: 1, description: 'Most exempt SMS per patient per day.' },
        perWeek: { type: 'integer', minimum: 0, default: 3, description: 'Most exempt SMS per patient per ISO week.' },
      },
    },
    sensitive: {
      type: 'object',
      default: {},
      description: 'Sensitive care (empathic suppression): no survey, service.info, marketing or fundraising within the window.',
      additionalProperties: false,
      properties: {
        windowDays: { type: 'integer', minimum: 0, maximum: 3650, default: 90, description: 'Days from the end of the flagged encounter or appointment (its start while it is open).' },
        labels: {
          type: 'array',
          default: [...SENSITIVE_LABELS],
          items: { type: 'string', minLength: 1 },
          description: 'Confidentiality labels that flag an encounter (trigger sensitivity: restricted, R, V, PSY, HIV, SUD, ETH, SDV).',
        },
        services: { type: 'array', default: [], items: { type: 'string', minLength: 1 }, description: 'Service codes (appointment service type) that flag a visit: oncology, pregnancy loss, palliative…' },
        locationTypes: { type: 'array', default: [], items: { type: 'string', minLength: 1 }, description: 'Location ids (point of care, FHIR Location id) of intensive care and similar units.' },
      },
    },
    keywords: {
      type: 'object',
      default: {},
      description: 'SMS keywords besides STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT, "OPT OUT", START, UNSTOP and HELP.',
      additionalProperties: false,
      properties: {
        optOut: { type: 'array', default: [], items: { type: 'string', minLength: 1 }, description: "Opt-out words of the tenant's country (France: ARRET, ARRÊT), matched like STOP." },
        replies: {
          type: 'object',
          default: {},
          description: 'The one confirmation each keyword gets (no patient data).',
          additionalProperties: false,
          properties: {
            stop: { type: 'string', minLength: 1, maxLength: 320, default: DEFAULT_REPLIES.stop, description: 'Answer to an opt-out keyword.' },
            start: { type: 'string', minLength: 1, maxLength: 320, default: DEFAULT_REPLIES.start, description: 'Answer to START / UNSTOP.' },
            help: { type: 'string', minLength: 1, maxLength: 320, default: DEFAULT_REPLIES.help, description: 'Answer to HELP.' },
          },
        },
      },
    },
    smsWebhooks: {
      type: 'array',
      default: [],
      description: 'Inbound SMS (Twilio format) accepted at POST /hooks/sms/<output>, verified with X-Twilio-Signature.',
      items: {
        type: 'object',
        description: 'The inbound webhook of one SMS output.',
        additionalProperties: false,
        required: ['output', 'authToken'],
        properties: {
          output: { type: 'string', minLength: 1, description: 'The SMS output (its number) the replies come to.' },
          authToken: secretSchema('The Twilio auth token the webhook signatures are made with.'),
        },
      },
    },
    unsubscribe: {
      type: 'object',
      default: {},
      description: 'Signed, expiring unsubscribe links (and RFC 8058 one-click) in every non-care email.',
      additionalProperties: false,
      properties: {
        secret: secretSchema('Key the links are signed with. Default: a random key kept in <dataDir>/unsubscribe.key, created on first start.'),
        ttlDays: { type: 'integer', minimum: 1, maximum: 3650, default: 60, description: 'Days a link stays valid.' },
      },
    },
    publicUrl: {
      type: 'string',
      format: 'uri',
      pattern: '^https?://',
      description:
        'Base URL patients and providers reach CareRelay at (unsubscribe links are built on it; the SMS webhook signature is ' +
        'checked against it). Default: http://<server.http.host>:<server.http.port>.',
    },
    failClosed: {
      type: 'object',
      default: {},
      description: 'When the consent ledger cannot be read, only care.* goes, from a suppression cache no older than this.',
      additionalProperties: false,
      properties: {
        cacheMaxAgeSeconds: { type: 'integer', minimum: 0, default: 900, description: 'Oldest cached suppression state a care message may rely on, seconds.' },
      },
    },
    version: { type: 'string', minLength: 1, default: '1', description: 'Policy version recorded with every grant and revocation (the wording patients agreed to).' },
  },
} as const satisfies JsonSchema;

/** The policy block after defaults (what the schema guarantees). */
export interface PolicyBlock {
  readonly region: Region;
  readonly timezone?: string;
  readonly sites: ReadonlyArray<{ readonly id: string; readonly timezone: string; readonly locations: readonly string[] }>;
  readonly defaults: Partial<Record<Purpose, { readonly sms?: Verdict; readonly email?: Verdict }>>;
  readonly quietHours: { readonly start: string; readonly end: string; readonly channels: readonly Channel[] };
  readonly caps: PolicySettings['caps'];
  readonly usExemptSms: { readonly perDay: number; readonly perWeek: number };
  readonly sensitive: PolicySettings['sensitive'];
  readonly keywords: PolicySettings['keywords'];
  readonly smsWebhooks: ReadonlyArray<{ readonly output: string; readonly authToken: SecretRef }>;
  readonly unsubscribe: { readonly secret?: SecretRef; readonly ttlDays: number };
  readonly publicUrl?: string;
  readonly failClosed: { readonly cacheMaxAgeSeconds: number };
  readonly version: string;
}

/** The policy of a plan: the pure settings, and what the ways in need besides. */
export interface PolicyConfig {
  readonly settings: PolicySettings;
  readonly smsWebhooks: PolicyBlock['smsWebhooks'];
  readonly unsubscribe: PolicyBlock['unsubscribe'];
  /** Without a trailing slash. */
  readonly publicUrl: string;
  /** False when publicUrl is the default (http://host:port of the listener: its bound port then). */
  readonly publicUrlConfigured: boolean;
}

/** Builds the plan's policy from a validated block (defaults applied) and the server block. */
export function policyConfigOf(block: PolicyBlock, server: { timezone?: string; http: { host: string; port: number } }): PolicyConfig {
  const defaults = regionDefaults(block.region);
  for (const [purpose, pair] of Object.entries(block.defaults) as Array<[Purpose, { sms?: Verdict; email?: Verdict }]>) {
    defaults[purpose] = { ...defaults[purpose], ...pair };
  }
  const host = server.http.host.includes(':') ? `[${server.http.host}]` : server.http.host;
  return {
    settings: {
      region: block.region,
      timezone: block.timezone ?? server.timezone ?? 'UTC',
      sites: block.sites,
      defaults,
      quietHours: block.quietHours,
      caps: block.caps,
      usExemptSms: block.usExemptSms,
      sensitive: block.sensitive,
      keywords: block.keywords,
      failClosed: block.failClosed,
      version: block.version,
    },
    smsWebhooks: block.smsWebhooks,
    unsubscribe: block.unsubscribe,
    publicUrl: (block.publicUrl ?? `http://${host}:${server.http.port}`).replace(/\/+$/, ''),
    publicUrlConfigured: block.publicUrl !== undefined,
  };
}
