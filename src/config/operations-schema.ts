// Schemas of the `alerts` and `retention` blocks of a connectors/*.yaml file (docs/operations.md).
// Every property carries a description and a default (`carerelay validate` and the docs use
// them). At most one connectors file may hold each block; without one every default applies.
import type { JsonSchema } from './yaml.ts';

const minutes = (description: string, fallback: number, minimum = 0) => ({ type: 'integer', minimum, maximum: 525600, default: fallback, description }) as const;

export const alertsSchema = {
  type: 'object',
  description:
    'Alerts on what an integration engineer must look at (docs/operations.md "Alerts"): each condition alerts once when ' +
    'it starts and once more when it clears, through outputs of type webhook (signed) or smtp. No patient data.',
  additionalProperties: false,
  properties: {
    notify: {
      type: 'array',
      default: [],
      description: 'Where alerts go: outputs of type webhook or smtp (an smtp one with the address to write to). None: alerts are only logged.',
      items: {
        type: 'object',
        description: 'One destination.',
        required: ['output'],
        additionalProperties: false,
        properties: {
          output: { type: 'string', minLength: 1, description: 'A configured output of type webhook or smtp, not one whose failures you alert on.' },
          to: { type: 'string', format: 'email', description: 'For an smtp output: the address alerts are written to (on-call list).' },
        },
      },
    },
    checkEverySeconds: { type: 'integer', minimum: 1, maximum: 3600, default: 30, description: 'How often conditions are checked.' },
    silentInput: {
      type: 'object',
      default: {},
      description: 'An input that has received nothing for a while (measured from its last message, or from the start).',
      additionalProperties: false,
      properties: {
        afterMinutes: minutes('Minutes without a message before an input counts as silent; 0 turns the alert off.', 60),
        inputs: {
          type: 'object',
          default: {},
          description: 'Per input name: its own minutes (0: off), e.g. a night-time feed that is often quiet.',
          additionalProperties: { type: 'integer', minimum: 0, maximum: 525600 },
        },
      },
    },
    errorRate: {
      type: 'object',
      default: {},
      description:
        'Too many failures over a sliding window: for an input, messages refused or not committed (AR, AE, CR, CE, HTTP 4xx/5xx); ' +
        'for an output, sends that failed (any failure class).',
      additionalProperties: false,
      properties: {
        threshold: { type: 'number', exclusiveMinimum: 0, maximum: 1, default: 0.2, description: 'The share of failures above which the alert fires (0.2: more than 20 %).' },
        windowMinutes: minutes('The sliding window, minutes.', 10, 1),
        minEvents: { type: 'integer', minimum: 1, default: 20, description: 'Fewer messages or sends than this in the window never fire (a single failure is not a rate).' },
      },
    },
    deadLetters: {
      type: 'object',
      default: {},
      description: 'Deliveries dead-lettered (a permanent failure, or attempts used up) within a window: a person must look at them.',
      additionalProperties: false,
      properties: {
        threshold: { type: 'integer', minimum: 1, default: 1, description: 'Dead letters within the window that fire the alert.' },
        windowMinutes: minutes('The window, minutes; the alert clears once it holds fewer than the threshold.', 60, 1),
      },
    },
    queueBacklog: {
      type: 'object',
      default: {},
      description: 'The oldest due delivery has waited too long past its due time (the delivery engine is stuck or too slow).',
      additionalProperties: false,
      properties: {
        maxAgeMinutes: minutes('Minutes past due before the alert fires; 0 turns it off.', 15),
      },
    },
    fhir: {
      type: 'object',
      default: {},
      description: 'FHIR subscriptions: missed event numbers still owed, or no notification (heartbeats included) for twice the heartbeat period.',
      additionalProperties: false,
      properties: {
        gaps: { type: 'boolean', default: true, description: 'Alert while a subscription owes missed events.' },
        heartbeats: { type: 'boolean', default: true, description: 'Alert while a subscription with a heartbeat period has been silent for more than twice that period.' },
      },
    },
    circuitOpen: { type: 'boolean', default: true, description: "Alert while an output's circuit breaker is open (the delivery engine stopped calling it)." },
  },
} as const satisfies JsonSchema;

export interface AlertsConfig {
  readonly notify: ReadonlyArray<{ readonly output: string; readonly to?: string }>;
  readonly checkEverySeconds: number;
  readonly silentInput: { readonly afterMinutes: number; readonly inputs: Readonly<Record<string, number>> };
  readonly errorRate: { readonly threshold: number; readonly windowMinutes: number; readonly minEvents: number };
  readonly deadLetters: { readonly threshold: number; readonly windowMinutes: number };
  readonly queueBacklog: { readonly maxAgeMinutes: number };
  readonly fhir: { readonly gaps: boolean; readonly heartbeats: boolean };
  readonly circuitOpen: boolean;
}

/** HIPAA 45 CFR 164.316(b)(2): documentation kept six years from its creation. */
const SIX_YEARS_DAYS = 2190;

const days = (description: string, fallback: number) => ({ type: 'integer', minimum: 1, maximum: 36500, default: fallback, description }) as const;

export const retentionSchema = {
  type: 'object',
  description:
    'How long each kind of data is kept (docs/operations.md "Retention"): a job removes what is older, in small batches, and ' +
    'never what is still needed (pending deliveries, their triggers and appointment states, messages awaiting review, video visits still to come, open reply prompts and staff tasks, the consent ledger).',
  additionalProperties: false,
  properties: {
    days: {
      type: 'object',
      default: {},
      description: 'Days each kind is kept.',
      additionalProperties: false,
      properties: {
        rawMessages: days('Bytes of received messages (the PHI-heaviest data): cleared after this, the record (ids, status, ACK) stays.', 30),
        triggers: days(
          'Message records with their triggers and the appointment/encounter states they leave. At least policy.sensitive.windowDays: ' +
            'a sensitive episode must outlive its window. Triggers of appointments still to come are kept whatever their age.',
          90,
        ),
        deliveryBodies: days('Address, payload and sent message of deliveries no longer pending (the shortest: the message itself).', 7),
        outbox: days('Messages kept by outbox outputs.', 7),
        deliveries: days('Delivery records (rule, status, times, reason) and provider receipts, once no longer pending.', 365),
        doneJobs: days('Queue jobs done or cancelled (dead and parked ones wait for a person and are kept).', 7),
        decisions: days('Send-time consent decisions (evidence): six years, as HIPAA documentation (45 CFR 164.316(b)(2)).', SIX_YEARS_DAYS),
        audit: days(
          'The audit log, the accounting of disclosures (45 CFR 164.528 asks six years of it) and erasure records: six years.',
          SIX_YEARS_DAYS,
        ),
        outcomes: days('Outcome observations (rule, arm, how an appointment ended; no patient id) for ROI reports.', 730),
        videoJoins: days('Sealed vendor join URLs of video visits that started this long ago (visits still to come are kept).', 30),
        videoLinks: days('Patient video links (token hashes) of visits that started this long ago (visits still to come are kept).', 30),
        replyPrompts: days('Reply prompts (the number a reminder went to, the answer) closed this long ago; open ones are kept.', 30),
        staffTasks: days('Staff tasks done this long ago (ids and reason codes; open ones are kept): as long as the audit log.', SIX_YEARS_DAYS),
        waitlist: days(
          "The waitlist's freed slots (with their offers) and later-appointments index entries whose time is this long past: as long as the outcomes it reports; keep it above waitlist.maxOffersPerPatient.days.",
          730,
        ),
      },
    },
    everyMinutes: { type: 'integer', minimum: 1, maximum: 10080, default: 60, description: 'How often the retention job runs.' },
    batchSize: {
      type: 'integer',
      minimum: 10,
      maximum: 10000,
      default: 100,
      description:
        'Records examined per batch: each batch is one short write between ingest commits, then the job yields. ' +
        'About 0.1–0.3 ms a record with a long history: 100 holds ingest back some 10–30 ms at a time (bench/retention.ts).',
    },
    vacuum: {
      enum: ['incremental', 'none'],
      default: 'incremental',
      description:
        'Give freed space back to the file system after each run (PRAGMA incremental_vacuum, in steps), on databases created with ' +
        'incremental auto-vacuum (every database this version creates). Older files reuse freed pages; `carerelay prune --vacuum` converts them.',
    },
  },
} as const satisfies JsonSchema;

export interface RetentionConfig {
  readonly days: {
    readonly rawMessages: number;
    readonly triggers: number;
    readonly deliveryBodies: number;
    readonly outbox: number;
    readonly deliveries: number;
    readonly doneJobs: number;
    readonly decisions: number;
    readonly audit: number;
    readonly outcomes: number;
    readonly videoJoins: number;
    readonly videoLinks: number;
    readonly replyPrompts: number;
    readonly staffTasks: number;
    readonly waitlist: number;
  };
  readonly everyMinutes: number;
  readonly batchSize: number;
  readonly vacuum: 'incremental' | 'none';
}
