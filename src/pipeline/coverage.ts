// Destination fitness as checked when mappings load (docs/consent.md rule 4 and "Precise
// semantics", PHI): what a rule may hand an output, given the output's BAA declaration, the
// rule's purpose and the fields the output can send. Pure; compileRule calls it once a rule's
// send block is otherwise valid, and each problem names the rule, the field and the output.
//
//   output declared baa: true      → anything the rule names (the BAA covers it)
//   output without baa, care.*     → refused: a care message is PHI once it reaches the patient
//   without baa, marketing or service.info
//                                  → the patient's name (whole, given or family) and language
//                                    only: "name and email alone" (the email is the rule's
//                                    send.to, the address the tool knows the contact by);
//                                    consent is checked at send time
//   without baa, other purposes    → the language only: a survey, research or fundraising
//   (survey, research, fundraising)  message is about the patient's care already, so a name
//                                    with it would be PHI
//
// No appointment, encounter, department, provider, diagnosis or date of care ever reaches an
// output without a BAA, whatever the purpose.
//
// An output may also require fields of every rule routed to it (OutputInfo.requiredFields): what
// its adapter reads to refuse what even its BAA excludes — Adobe AEP under Healthcare Shield
// refuses substance-use, mental-health and genetic records by their sensitivity labels, and
// minors by their birth date, so a rule that does not send them could slip those through.
import type { FieldPath, IssuePath } from './conditions.ts';
import type { OutputInfo, RuleIssue } from './rule.ts';

/** Trigger paths that say something about care: with any patient identity they are PHI. */
const CARE_PATH_PREFIXES = ['appointment', 'encounter', 'sensitivity', 'type', 'source', 'occurredAt', 'receivedAt', 'reply'];

/** What an output without a BAA may receive for marketing and service.info: identity without care. */
export const NON_PHI_MARKETING_FIELDS: readonly string[] = ['patient.name', 'patient.name.given', 'patient.name.family', 'patient.language'];
/** What it may receive for survey, research and fundraising: nothing that identifies the patient. */
export const NON_PHI_OTHER_FIELDS: readonly string[] = ['patient.language'];

const IDENTITY_PURPOSES = ['marketing', 'service.info'];

/**
 * The problems of routing a rule (`id`, `purpose`, its send.fields) to `output`; `at` is the
 * rule's path in the document (issues point at send.output or at the offending field).
 */
export function destinationIssues(rule: { id: string; purpose: string; fields: readonly FieldPath[] }, output: OutputInfo, at: IssuePath): RuleIssue[] {
  const issues: RuleIssue[] = [];
  const where = `rule "${rule.id}"`;
  const fieldAt = (i: number): IssuePath => [...at, 'send', 'fields', i];
  const refused = new Set<number>();
  if (!output.baa) {
    if (rule.purpose.startsWith('care.')) {
      issues.push({
        path: [...at, 'send', 'output'],
        message: `${where}: output "${output.name}" is not declared baa: true, so it may not carry ${rule.purpose} messages (they are about the patient's care; docs/consent.md rule 4)`,
      });
    } else {
      const allowed = IDENTITY_PURPOSES.includes(rule.purpose) ? NON_PHI_MARKETING_FIELDS : NON_PHI_OTHER_FIELDS;
      rule.fields.forEach((field, i) => {
        const source = field.source;
        if (allowed.includes(source)) return;
        const why = CARE_PATH_PREFIXES.includes(field.segments[0].name)
          ? `${source} is about the patient's care, which with any patient identity is PHI`
          : `without a BAA a ${rule.purpose} rule may send only ${allowed.join(', ')}` +
            (allowed === NON_PHI_MARKETING_FIELDS ? ' (name and email alone: the email is send.to)' : ` (a ${rule.purpose} message already concerns the patient's care)`);
        refused.add(i);
        issues.push({
          path: fieldAt(i),
          message: `${where}: field ${source} may not go to output "${output.name}", which is not declared baa: true: ${why} (docs/consent.md rule 4)`,
        });
      });
    }
  }
  for (const [required, why] of Object.entries(output.requiredFields ?? {})) {
    if (rule.fields.some((field) => field.source === required)) continue;
    issues.push({
      path: [...at, 'send', 'fields'],
      message: `${where}: output "${output.name}" needs ${required} in send.fields: ${why}`,
    });
  }
  if (output.fields !== undefined) {
    const sendable = output.fields;
    rule.fields.forEach((field, i) => {
      // A field refused above is not to be added to the output either: one issue is enough.
      if (sendable.includes(field.source) || refused.has(i)) return;
      issues.push({
        path: fieldAt(i),
        message:
          `${where}: output "${output.name}" has no property for field ${field.source} (it maps ${sendable.join(', ') || 'no field'}): ` +
          'add it to the output\'s properties, or remove it from send.fields',
      });
    });
  }
  return issues;
}
