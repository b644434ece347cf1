// The output types CareRelay knows: this list is the table of contents (docs/contributing.md habit 2).

import { outboxSpec } from './outbox/spec.ts';
import type { OutputSpec } from './spec.ts';

export const outputSpecs: readonly OutputSpec[] = [outboxSpec as OutputSpec];
