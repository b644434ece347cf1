// The `fhir-communication` output: writes back to the EHR's FHIR server that a message went to
// the patient, as a FHIR R4 Communication (https://hl7.org/fhir/R4/communication.html), through
// CareRelay's FHIR client (src/fhir/client.ts: one base URL, no redirects, bearer or SMART
// backend-services auth).
//
// The Communication: status `completed`; identifier = the delivery id (in `identifierSystem`);
// subject = the Patient; about = the Appointment or Encounter the delivery is about; medium and
// category from the config; sent = the send time; payload.contentReference = the delivery by
// identifier — a reference, never the message text (the EHR links to CareRelay's record
// instead of copying what was said). Nothing else of the trigger is written.
//
// Created with a conditional create (FHIR R4 RESTful API §3.1.0.8.1, header If-None-Exist:
// identifier=<system>|<delivery id>), so a retry after an unknown outcome finds the first one
// instead of making a second: the server must support conditional create (its
// CapabilityStatement says conditionalCreate: true). Hence `idempotent`: an ambiguous failure
// is retried.
//
// Failures (the client is built with no retries of its own): 429 → RateLimitedError; 503 and
// other unavailability before the request left → TransientError; timeout, reset, other 5xx →
// AmbiguousError; 4xx (including 412 when several resources match the identifier) →
// PermanentError with the FHIR client's code.
import type { InstanceCheckIssue } from '../../config/load.ts';
import type { JsonSchema } from '../../config/yaml.ts';
import { PermanentError, RateLimitedError } from '../../errors.ts';
import { FhirUnavailableError } from '../../fhir/client.ts';
import type { FhirResource } from '../../fhir/notification.ts';
import { fhirClientFor, fhirServerSchema, type FhirServerConfig } from '../../fhir/server-config.ts';
import { PURPOSES, type Purpose, type Receipt } from '../../types.ts';
import { allowedPurposesSchema, outputNameSchema, providerBaaSchema } from '../common.ts';
import type { OutboundAdapter, OutboundMessage, OutputDeps, OutputSpec, SendContext } from '../spec.ts';

export const FHIR_COMMUNICATION = 'fhir-communication';

const PARTICIPATION_MODE = 'http://terminology.hl7.org/CodeSystem/v3-ParticipationMode';
const COMMUNICATION_CATEGORY = 'http://terminology.hl7.org/CodeSystem/communication-category';
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

export const ReferenceStyle = {
  /** `Patient/<id>`: the trigger's ids are the FHIR server's resource ids (FHIR inputs). */
  Literal: 'literal',
  /** `{ type, identifier: { system, value } }`: ids from HL7v2 (MRN, filler appointment id, visit number). */
  Identifier: 'identifier',
} as const;
export type ReferenceStyle = (typeof ReferenceStyle)[keyof typeof ReferenceStyle];

/** Failure codes of this output besides the FHIR client's (safe to log). */
export const FhirCommunicationCode = {
  RateLimited: 'fhir_rate_limited',
  ReferenceInvalid: 'fhir_reference_invalid',
  NoPatient: 'fhir_no_patient',
} as const;

export interface FhirCommunicationConfig {
  readonly name: string;
  readonly type: typeof FHIR_COMMUNICATION;
  readonly server: FhirServerConfig;
  readonly identifierSystem: string;
  readonly references: ReferenceStyle;
  readonly identifierSystems: { readonly patient?: string; readonly appointment?: string; readonly encounter?: string };
  readonly medium: { readonly code: string; readonly display?: string };
  readonly category: string;
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
}

export const fhirCommunicationConfigSchema = {
  type: 'object',
  description: 'Records each delivery on the EHR as a FHIR R4 Communication (conditional create on the delivery id).',
  additionalProperties: false,
  required: ['name', 'type', 'server'],
  properties: {
    name: outputNameSchema,
    type: { const: FHIR_COMMUNICATION, description: 'Output type: fhir-communication.' },
    server: {
      ...fhirServerSchema,
      description: 'The EHR\'s FHIR server the Communications are created on (auth: bearer or SMART backend services with system/Communication.c).',
    },
    identifierSystem: {
      type: 'string',
      format: 'uri',
      default: 'urn:carerelay:delivery',
      description:
        'Identifier system of Communication.identifier (value: the delivery id); the conditional create searches it. Use a URI ' +
        'of your organisation, e.g. https://hospital.example.org/ids/carerelay-delivery.',
    },
    references: {
      enum: Object.values(ReferenceStyle),
      default: ReferenceStyle.Literal,
      description:
        'How the patient and the appointment/encounter are referenced: literal (Patient/<id>: ids came from this FHIR ' +
        'server) or identifier (by business identifier: ids came from HL7v2 feeds).',
    },
    identifierSystems: {
      type: 'object',
      default: {},
      description: 'Identifier systems used with references: identifier (absent: the identifier has a value only).',
      additionalProperties: false,
      properties: {
        patient: { type: 'string', format: 'uri', description: 'System of the patient id (the MRN\'s assigning authority URI).' },
        appointment: { type: 'string', format: 'uri', description: 'System of appointment ids (filler appointment ids).' },
        encounter: { type: 'string', format: 'uri', description: 'System of encounter ids (visit numbers).' },
      },
    },
    medium: {
      type: 'object',
      default: { code: 'ELECTRONIC', display: 'electronic data' },
      description: 'Communication.medium, a code of v3-ParticipationMode (e.g. ELECTRONIC, EMAILWRIT, WRITTEN).',
      additionalProperties: false,
      required: ['code'],
      properties: {
        code: { type: 'string', pattern: '^[A-Z]{2,20}$', description: 'The ParticipationMode code.' },
        display: { type: 'string', minLength: 1, description: 'Its display text.' },
      },
    },
    category: {
      enum: ['alert', 'notification', 'reminder', 'instruction'],
      default: 'notification',
      description: 'Communication.category (communication-category code system).',
    },
    baa: {
      ...providerBaaSchema,
      description:
        'Set true when the FHIR server is covered (an EHR usually is: it is the covered entity\'s own system). Required for ' +
        'rules whose fields carry care information (docs/consent.md rule 4).',
    },
    allowedPurposes: allowedPurposesSchema,
  },
} as const satisfies JsonSchema;

function check(config: FhirCommunicationConfig): InstanceCheckIssue[] {
  if (config.server.auth?.bearer !== undefined && config.server.auth.smart !== undefined) {
    return [{ path: ['server', 'auth'], atKey: true, message: 'server.auth: give only one of bearer, smart' }];
  }
  return [];
}

export const fhirCommunicationSpec: OutputSpec<FhirCommunicationConfig, OutputDeps> = {
  type: FHIR_COMMUNICATION,
  summary: 'Writes a FHIR Communication per delivery to the EHR (conditional create on the delivery id, no message text).',
  configSchema: fhirCommunicationConfigSchema,
  check,
  info: (config) => ({
    channel: 'fhir',
    baa: config.baa ?? false,
    allowedPurposes: config.allowedPurposes ?? PURPOSES,
    // Conditional create: a repeat finds the first Communication.
    idempotent: true,
  }),
  create: (config, deps) => createFhirCommunication(config, deps),
};

type Reference = { reference: string } | { type: string; identifier: { system?: string; value: string } };

function referenceTo(type: 'Patient' | 'Appointment' | 'Encounter', id: string, config: FhirCommunicationConfig, deliveryId: string): Reference {
  if (config.references === ReferenceStyle.Identifier) {
    const system = config.identifierSystems[type.toLowerCase() as 'patient' | 'appointment' | 'encounter'];
    return { type, identifier: { ...(system !== undefined ? { system } : {}), value: id } };
  }
  if (!FHIR_ID.test(id)) {
    throw new PermanentError(
      FhirCommunicationCode.ReferenceInvalid,
      `delivery ${deliveryId}: the ${type.toLowerCase()} id is not a FHIR id; use references: identifier for ids from HL7v2`,
    );
  }
  return { reference: `${type}/${id}` };
}

/** The Communication recording one delivery (see the top of this file). */
export function communicationFor(message: OutboundMessage, config: FhirCommunicationConfig, sent: string): FhirResource {
  if (message.patientId === undefined || message.patientId === '') {
    throw new PermanentError(FhirCommunicationCode.NoPatient, `delivery ${message.deliveryId} names no patient`);
  }
  const identifier = { system: config.identifierSystem, value: message.deliveryId };
  const about = message.about === undefined ? [] : [referenceTo(message.about.kind === 'appointment' ? 'Appointment' : 'Encounter', message.about.id, config, message.deliveryId)];
  return {
    resourceType: 'Communication',
    identifier: [identifier],
    status: 'completed',
    category: [{ coding: [{ system: COMMUNICATION_CATEGORY, code: config.category }] }],
    medium: [{ coding: [{ system: PARTICIPATION_MODE, code: config.medium.code, ...(config.medium.display ? { display: config.medium.display } : {}) }] }],
    subject: referenceTo('Patient', message.patientId, config, message.deliveryId),
    ...(about.length > 0 ? { about } : {}),
    sent,
    payload: [{ contentReference: { identifier, display: `CareRelay delivery (rule ${message.ruleId})` } }],
  };
}

export function createFhirCommunication(config: FhirCommunicationConfig, deps: OutputDeps): OutboundAdapter {
  const info = fhirCommunicationSpec.info(config);
  // No retries inside: the queue retries (invariant 4).
  const client = fhirClientFor(config.server, deps.secret, { maxRetries: 0 });
  return {
    name: config.name,
    ...info,
    async send(message: OutboundMessage, context: SendContext): Promise<Receipt> {
      const sent = deps.now().toISOString();
      const communication = communicationFor(message, config, sent);
      const query = `identifier=${encodeURIComponent(config.identifierSystem)}|${encodeURIComponent(message.deliveryId)}`;
      let created: FhirResource;
      try {
        created = await client.create(communication, { ifNoneExist: query, signal: context.signal });
      } catch (error) {
        if (error instanceof FhirUnavailableError && error.status === 429) {
          throw new RateLimitedError(FhirCommunicationCode.RateLimited, error.message, { retryAfterMs: error.retryAfterMs, cause: error });
        }
        throw error;
      }
      return { ...(typeof created.id === 'string' ? { providerId: `Communication/${created.id}` } : {}), acceptedAt: sent };
    },
  };
}
