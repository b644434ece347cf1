// The input types CareRelay knows: this list is the table of contents (docs/contributing.md habit 2).

import { fhirPollSpec, fhirRestHookSpec } from './fhir/spec.ts';
import { hl7v2HttpSpec, hl7v2MllpSpec } from './hl7v2/spec.ts';
import type { InputSpec } from './spec.ts';

export const inputSpecs: readonly InputSpec[] = [hl7v2MllpSpec, hl7v2HttpSpec, fhirRestHookSpec, fhirPollSpec];
