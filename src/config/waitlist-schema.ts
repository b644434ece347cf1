// Schema of the connectors `waitlist` block (docs/waitlist.md): which freed slots are offered, to
// whom, in which waves, and through which output the accepted ones are booked. What the schema
// cannot say (the booking output exists and books, a rule sends the offers) is checked in
// config/load.ts with the file, line and column of the key.
import { TriggerType } from '../types.ts';
import type { JsonSchema } from './yaml.ts';

/** The triggers that free a slot by default: SIU^S15/S16, S17, S26 and their FHIR equivalents. */
export const SLOT_FREEING_TRIGGERS = [TriggerType.AppointmentCancelled, TriggerType.AppointmentDeleted, TriggerType.AppointmentNoshow] as const;

/** Where candidates come from. */
export const WaitlistSource = {
  /** Opted-in patients with a later booked appointment of the same service and practitioner (CareRelay's own records of the feed). */
  LaterAppointments: 'laterAppointments',
} as const;
export type WaitlistSource = (typeof WaitlistSource)[keyof typeof WaitlistSource];

const CODE_GROUPS = {
  type: 'array',
  default: [],
  items: { type: 'array', minItems: 2, items: { type: 'string', minLength: 1 } },
} as const;

export const waitlistSchema = {
  type: 'object',
  description: 'The waitlist (docs/waitlist.md): freed slots offered in waves by SMS; the first yes books it and cancels the later appointment (pat-swl).',
  additionalProperties: false,
  required: ['book'],
  properties: {
    book: { type: 'string', minLength: 1, description: 'The output that books an accepted slot and then cancels the later appointment: an output that declares book — fhir-appointment (FHIR create with If-None-Exist, or $book), hl7v2-srm (SRM^S01), oracle-health-appointment (a free Slot, then a booked Appointment), or a webhook output with writeBack: true (carerelay.appointment.book).' },
    on: {
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      items: { enum: [...SLOT_FREEING_TRIGGERS] },
      default: [...SLOT_FREEING_TRIGGERS],
      description: 'The triggers that free a slot (default appointment.cancelled, appointment.deleted, appointment.noshow).',
    },
    sources: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'Where candidates come from.',
      properties: {
        list: {
          type: 'array',
          default: [],
          description: 'A configured waitlist, offered before the later appointments: patients who asked for a slot of these services (no appointment of theirs is cancelled).',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['patient', 'phone', 'services'],
            properties: {
              patient: { type: 'string', minLength: 1, description: 'The patient id (patient.id: the MRN).' },
              phone: { type: 'string', pattern: '^\\+[1-9][0-9]{6,14}$', 'x-hint': 'an E.164 number such as +33612345678', description: 'Their mobile number, E.164.' },
              language: { type: 'string', pattern: '^[a-z]{2,3}$', 'x-hint': 'a lower-case language code such as fr', description: 'The language of their messages (default: the default templates).' },
              services: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 }, description: 'Service type codes they wait for (equivalents count).' },
              practitioners: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 }, description: 'Practitioner ids they wait for (absent: any).' },
              from: { type: 'string', format: 'date-time', description: 'Requested period: slots starting at or after this.' },
              until: { type: 'string', format: 'date-time', description: 'Requested period: slots starting before this.' },
            },
          },
        },
        laterAppointments: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'Patients with a later booked appointment of the same service and practitioner (or an equivalent), as the feed told CareRelay.',
          properties: {
            optIn: {
              enum: ['all', 'listed'],
              default: 'all',
              description: 'Who may be offered an earlier slot: all (every such patient; consent is still checked at send time) or listed (the patients in `patients`, who opted in).',
            },
            patients: { type: 'array', default: [], items: { type: 'string', minLength: 1 }, description: 'With optIn: listed, the ids (patient.id) of the patients who opted in.' },
          },
        },
      },
    },
    equivalents: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'Codes that count as the same: lists of service type codes, lists of practitioner ids.',
      properties: { services: CODE_GROUPS, practitioners: CODE_GROUPS },
    },
    minNoticeMinutes: { type: 'integer', minimum: 0, default: 120, description: 'A slot starting sooner than this after it frees is not offered (default 120).' },
    waves: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'Offers go out in waves.',
      properties: {
        size: { type: 'integer', minimum: 1, maximum: 50, default: 3, description: 'Patients offered the slot per wave (default 3).' },
        everyMinutes: { type: 'integer', minimum: 1, default: 15, description: 'Minutes between waves while nobody took the slot (default 15).' },
        expiresMinutes: { type: 'integer', minimum: 1, default: 30, description: 'An offer is open this long (default 30), never past the stop.' },
        stopMinutesBefore: { type: 'integer', minimum: 0, default: 120, description: 'No offer goes out, and no yes claims the slot, this close to its start (default 120).' },
      },
    },
    maxOffersPerPatient: {
      type: 'object',
      additionalProperties: false,
      default: {},
      description: 'At most `count` offers to one patient in `days` days (default 3 in 7).',
      properties: {
        count: { type: 'integer', minimum: 1, default: 3 },
        days: { type: 'integer', minimum: 1, default: 7 },
      },
    },
  },
} as const satisfies JsonSchema;

/** One entry of `sources.list`. */
export interface WaitlistListEntry {
  readonly patient: string;
  readonly phone: string;
  readonly language?: string;
  readonly services: readonly string[];
  readonly practitioners?: readonly string[];
  readonly from?: string;
  readonly until?: string;
}

/** The `waitlist` block after defaults. */
export interface WaitlistConfig {
  readonly book: string;
  readonly on: readonly TriggerType[];
  readonly sources: { readonly list?: readonly WaitlistListEntry[]; readonly laterAppointments: { readonly optIn: 'all' | 'listed'; readonly patients: readonly string[] } };
  readonly equivalents: { readonly services: readonly (readonly string[])[]; readonly practitioners: readonly (readonly string[])[] };
  readonly minNoticeMinutes: number;
  readonly waves: { readonly size: number; readonly everyMinutes: number; readonly expiresMinutes: number; readonly stopMinutesBefore: number };
  readonly maxOffersPerPatient: { readonly count: number; readonly days: number };
}
