// JSON Schema of the normalized trigger (docs/trigger.md is the contract; the
// field names and meanings here are fixed). Every input's output is validated against it in
// the tests, and tools outside CareRelay can use it to read `carerelay normalize` output and
// the admin API. Imports nothing.

const isoInstant = {
  type: 'string',
  // ISO-8601 with an explicit offset ("Z" or ±hh:mm), seconds optional fractions.
  pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d+)?(?:Z|[+-]\\d{2}:\\d{2})$',
} as const;

/** An appointment/encounter time: an instant with offset (date-only values become midnight). */
const isoTime = isoInstant;

const identifier = {
  type: 'object',
  required: ['value'],
  additionalProperties: false,
  properties: {
    value: { type: 'string', minLength: 1 },
    system: { type: 'string' },
    type: { type: 'string' },
  },
} as const;

const reference = {
  type: 'object',
  required: ['id'],
  properties: {
    id: { type: 'string', minLength: 1 },
    name: { type: 'string' },
    facility: { type: 'string' },
  },
} as const;

const coded = {
  type: 'object',
  required: ['code'],
  properties: { code: { type: 'string' }, display: { type: 'string' }, system: { type: 'string' } },
} as const;

/** What an appointment and a freed slot both say: which, in what state, when, what, where, with whom. */
const scheduled = {
  id: { type: 'string', minLength: 1 },
  status: { type: 'string' },
  start: isoTime,
  end: isoTime,
  durationMinutes: { type: 'number', minimum: 0 },
  serviceType: coded,
  location: reference,
  practitioner: reference,
} as const;

export const triggerSchema = {
  $id: 'https://carerelay.org/schemas/trigger.json',
  title: 'CareRelay normalized trigger',
  type: 'object',
  required: ['id', 'type', 'occurredAt', 'receivedAt', 'source'],
  // A patient on every trigger but slot.freed (time freed on a schedule, about no one), which has a slot instead.
  if: { required: ['type'], properties: { type: { const: 'slot.freed' } } },
  then: { required: ['slot'], properties: { slot: true, patient: false } },
  else: { required: ['patient'], properties: { patient: true } },
  properties: {
    id: { type: 'string', minLength: 1, description: 'Deterministic idempotency key.' },
    type: {
      type: 'string',
      enum: [
        'appointment.booked',
        'appointment.rescheduled',
        'appointment.modified',
        'appointment.checked_in',
        'appointment.fulfilled',
        'appointment.cancelled',
        'appointment.deleted',
        'appointment.noshow',
        'encounter.planned',
        'encounter.started',
        'encounter.transferred',
        'encounter.finished',
        'encounter.cancelled',
        'encounter.discharge_cancelled',
        'patient.updated',
        'patient.merged',
        'appointment.confirmed',
        'appointment.cancel_requested',
        'appointment.reschedule_requested',
        'appointment.waitlist_offered',
        'appointment.waitlist_accepted',
        'appointment.waitlist_declined',
        'appointment.waitlist_taken',
        'slot.freed',
      ],
    },
    occurredAt: { ...isoInstant, description: 'EVN-6, else EVN-2, else MSH-7; FHIR: notification timestamp, else meta.lastUpdated.' },
    receivedAt: isoInstant,
    source: {
      type: 'object',
      required: ['format', 'sender', 'messageType', 'messageId'],
      properties: {
        format: { enum: ['hl7v2', 'fhir', 'sms', 'waitlist'] },
        sender: { type: 'string' },
        messageType: { type: 'string', minLength: 1 },
        messageId: { type: 'string', minLength: 1 },
      },
    },
    patient: {
      type: 'object',
      required: ['id', 'identifiers', 'deceased', 'telecom'],
      properties: {
        id: { type: 'string', minLength: 1 },
        identifiers: { type: 'array', items: identifier },
        name: {
          type: 'object',
          required: ['given'],
          properties: { family: { type: 'string' }, given: { type: 'array', items: { type: 'string' } } },
        },
        birthDate: { type: 'string', pattern: '^\\d{4}(?:-\\d{2}(?:-\\d{2})?)?$' },
        gender: { enum: ['male', 'female', 'other', 'unknown'] },
        language: { type: 'string', pattern: '^[a-z]{2,3}$' },
        deceased: { type: 'boolean' },
        telecom: {
          type: 'array',
          items: {
            type: 'object',
            required: ['system', 'use', 'value'],
            additionalProperties: false,
            properties: {
              system: { enum: ['phone', 'email'] },
              use: { enum: ['mobile', 'home', 'work', 'other'] },
              value: { type: 'string', minLength: 1 },
            },
          },
        },
        mergedFrom: { type: 'array', items: identifier },
      },
    },
    appointment: {
      type: 'object',
      required: ['id'],
      properties: {
        ...scheduled,
        placerId: { type: 'string' },
        previousStart: isoTime,
        requestedPeriod: {
          type: 'array',
          description: 'An appointment on a waitlist: when the patient can come (FHIR requestedPeriod; HL7 the waitlisted SIU TQ1-7…TQ1-8).',
          items: { type: 'object', additionalProperties: false, properties: { start: isoTime, end: isoTime } },
        },
        // A video visit (docs/video.md). Closed: the vendor's join URL never rides in a trigger.
        virtual: {
          type: 'object',
          required: ['hasJoinInfo'],
          additionalProperties: false,
          properties: { channel: { type: 'string', minLength: 1 }, hasJoinInfo: { type: 'boolean' } },
        },
      },
    },
    slot: {
      type: 'object',
      description: 'slot.freed only: the time that became free (FHIR Slot; SIU^S24 SCH/TQ1 and its resources).',
      required: ['id', 'status', 'start'],
      properties: {
        ...scheduled,
        schedule: { type: 'string' },
      },
    },
    encounter: {
      type: 'object',
      properties: {
        id: { type: 'string', minLength: 1 },
        status: { type: 'string' },
        class: { type: 'string' },
        start: isoTime,
        end: isoTime,
        location: reference,
        dischargeDisposition: { type: 'string' },
      },
    },
    sensitivity: { type: 'array', items: { type: 'string' } },
    reply: {
      type: 'object',
      description: 'Answer triggers only: what the patient answered to the reminder that asked.',
      required: ['action', 'answer', 'prompt'],
      additionalProperties: false,
      properties: {
        action: { enum: ['confirm', 'cancel', 'reschedule', 'accept', 'decline'] },
        answer: { type: 'string', minLength: 1 },
        prompt: { type: 'string', minLength: 1 },
      },
    },
    waitlist: {
      type: 'object',
      description: 'Waitlist triggers only (appointment.waitlist_*): the offer, the freed slot, and the appointment it would replace.',
      required: ['offer', 'slot', 'wave', 'expiresAt'],
      additionalProperties: false,
      properties: {
        offer: { type: 'string', minLength: 1 },
        slot: { type: 'string', minLength: 1 },
        wave: { type: 'integer', minimum: 1 },
        expiresAt: isoTime,
        current: {
          type: 'object',
          required: ['id'],
          additionalProperties: false,
          properties: { id: { type: 'string', minLength: 1 }, start: isoTime, placerId: { type: 'string' } },
        },
        daysGained: { type: 'number' },
      },
    },
  },
} as const;
