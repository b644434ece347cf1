// The output types CareRelay knows: this list is the table of contents (docs/contributing.md habit 2).

import { activeCampaignSpec } from './activecampaign/spec.ts';
import { adobeAepSpec } from './adobe-aep/spec.ts';
import { brevoSpec } from './brevo/spec.ts';
import { fhirAppointmentSpec } from './fhir-appointment/spec.ts';
import { fhirCommunicationSpec } from './fhir-communication/spec.ts';
import { hl7v2SrmSpec } from './hl7v2-srm/spec.ts';
import { hubspotSpec } from './hubspot/spec.ts';
import { mailchimpSpec } from './mailchimp/spec.ts';
import { oracleHealthAppointmentSpec } from './oracle-health-appointment/spec.ts';
import { outboxSpec } from './outbox/spec.ts';
import { salesforceCrmSpec } from './salesforce-crm/spec.ts';
import { sfmcSpec } from './sfmc/spec.ts';
import { smtpSpec } from './smtp/spec.ts';
import type { OutputSpec } from './spec.ts';
import { twilioSpec } from './twilio/spec.ts';
import { webhookSpec } from './webhook/spec.ts';

export const outputSpecs: readonly OutputSpec[] = [
  outboxSpec as OutputSpec,
  webhookSpec as OutputSpec,
  smtpSpec as OutputSpec,
  twilioSpec as OutputSpec,
  fhirCommunicationSpec as OutputSpec,
  sfmcSpec as OutputSpec,
  salesforceCrmSpec as OutputSpec,
  adobeAepSpec as OutputSpec,
  hubspotSpec as OutputSpec,
  mailchimpSpec as OutputSpec,
  brevoSpec as OutputSpec,
  activeCampaignSpec as OutputSpec,
  // Write-back only: patients' answers to the EHR's schedule (outputs/write-back.ts).
  fhirAppointmentSpec as OutputSpec,
  oracleHealthAppointmentSpec as OutputSpec,
  hl7v2SrmSpec as OutputSpec,
];
