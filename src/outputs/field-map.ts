// What a CRM or marketing output sends: a per-output map from CareRelay fields to the tool's own
// attributes (an SFMC event's Data and a transactional send's attributes, Salesforce fields, AEP
// XDM paths), e.g.
//
//   data:
//     patient.name.given: FirstName        # a trigger path (docs/trigger.md)
//     patient.language: Locale
//     $to: EmailAddress                    # one of the message's own values
//
// A trigger path is read from the delivery's mapped fields (OutboundMessage.fields): only what the
// rule's send.fields names ever reaches an adapter (docs/architecture.md invariant 6), so a map
// entry whose field the rule does not send is simply absent from what the tool gets, never read
// from anywhere else. Paths are checked when the config loads (an unknown path, or one that ends
// at an object rather than a value, is refused there). Several values (patient.name.given) are
// joined with a space. The message's own values are named with a "$": see MessageValue.
import type { InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema } from '../config/yaml.ts';
import { compilePath, resolvePath, type FieldPath } from '../pipeline/conditions.ts';
import type { OutboundMessage } from './spec.ts';

/** Values of the message itself a map may name (besides trigger paths). */
export const MessageValue = {
  /** The recipient address the rule's `to` gave (an email address, a phone number). */
  To: '$to',
  /** The patient's id (docs/trigger.md patient.id). */
  PatientId: '$patientId',
  DeliveryId: '$deliveryId',
  Rule: '$rule',
  Purpose: '$purpose',
  /** The language the message was rendered in. */
  Language: '$language',
  /** The rendered subject and text (the rule's template). */
  Subject: '$subject',
  Text: '$text',
} as const;
export type MessageValue = (typeof MessageValue)[keyof typeof MessageValue];
const MESSAGE_VALUES: readonly string[] = Object.values(MessageValue);

export type MappedValue = string | number | boolean;

/** Attribute names: SFMC data extension fields and Salesforce API names; `dotted` adds XDM paths. */
const NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]{0,79}$';
const DOTTED_PATTERN = '^[A-Za-z_][A-Za-z0-9_]{0,79}(\\.[A-Za-z_][A-Za-z0-9_]{0,79}){0,15}$';

/** JSON Schema of a field map: `description` says what the targets are in the tool. */
export function fieldMapSchema(description: string, targets: 'names' | 'dotted'): JsonSchema {
  return {
    type: 'object',
    default: {},
    description:
      `${description} Keys are CareRelay fields: a trigger path the rule sends (e.g. patient.name.given, patient.language) or ` +
      `${MESSAGE_VALUES.join(', ')}; a field the rule does not send is left out.`,
    maxProperties: 100,
    additionalProperties: {
      type: 'string',
      pattern: targets === 'dotted' ? DOTTED_PATTERN : NAME_PATTERN,
      'x-hint': targets === 'dotted' ? 'an XDM path such as _tenant.patient.firstName' : 'an attribute or field API name such as FirstName',
      description: targets === 'dotted' ? 'The XDM field it fills, as a dotted path.' : 'The attribute (field) it fills.',
    },
  };
}

interface CompiledEntry {
  readonly source: string;
  readonly target: string;
  readonly path?: FieldPath;
}

export type CompiledFieldMap = readonly CompiledEntry[];

function compileEntry(source: string, target: string): CompiledEntry | string {
  if (source.startsWith('$')) {
    return MESSAGE_VALUES.includes(source) ? { source, target } : `"${source}" is not a message value (known: ${MESSAGE_VALUES.join(', ')})`;
  }
  const path = compilePath(source);
  if (typeof path === 'string') return path;
  if (path.spec.kind === 'object') {
    return `"${source}" is an object; map one of its values (e.g. ${source}.${Object.keys(path.spec.fields ?? {})[0] ?? 'value'})`;
  }
  return { source, target, path };
}

/** Problems of a map, at `at` (unknown paths, objects, two sources filling one target). */
export function fieldMapIssues(map: Readonly<Record<string, string>>, at: readonly (string | number)[]): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  const filled = new Map<string, string>();
  for (const [source, target] of Object.entries(map)) {
    const entry = compileEntry(source, target);
    if (typeof entry === 'string') issues.push({ path: [...at, source], atKey: true, message: entry });
    const earlier = filled.get(target);
    if (earlier !== undefined) issues.push({ path: [...at, source], message: `"${target}" is already filled by ${earlier}` });
    else filled.set(target, source);
  }
  return issues;
}

/** Problems of a single source (a contact key's, an identity's), at `at`. */
export function fieldSourceIssues(source: string, at: readonly (string | number)[]): InstanceCheckIssue[] {
  const entry = compileEntry(source, 'value');
  return typeof entry === 'string' ? [{ path: [...at], message: entry }] : [];
}

/** The compiled entry of a single source; throws on one fieldSourceIssues refuses. */
export function compileFieldSource(source: string): CompiledEntry {
  return compileFieldMap({ [source]: 'value' })[0]!;
}

/** The map ready to apply; throws on an entry fieldMapIssues refuses (the loader reported it). */
export function compileFieldMap(map: Readonly<Record<string, string>>): CompiledFieldMap {
  return Object.entries(map).map(([source, target]) => {
    const entry = compileEntry(source, target);
    if (typeof entry === 'string') throw new Error(entry);
    return entry;
  });
}

/** The message's own values a `$…` source reads. */
const MESSAGE_READERS: Readonly<Record<MessageValue, (message: OutboundMessage) => MappedValue | undefined>> = {
  [MessageValue.To]: (m) => m.to,
  [MessageValue.PatientId]: (m) => m.patientId,
  [MessageValue.DeliveryId]: (m) => m.deliveryId,
  [MessageValue.Rule]: (m) => m.ruleId,
  [MessageValue.Purpose]: (m) => m.purpose,
  [MessageValue.Language]: (m) => m.language,
  [MessageValue.Subject]: (m) => m.subject,
  [MessageValue.Text]: (m) => m.text,
};

/** The value one entry reads from `message`, or undefined when the message has none. */
export function mappedValue(entry: CompiledEntry, message: OutboundMessage): MappedValue | undefined {
  if (entry.path === undefined) {
    const value = MESSAGE_READERS[entry.source as MessageValue](message);
    return value === '' ? undefined : value;
  }
  const values = resolvePath(message.fields ?? {}, entry.path).filter(
    (v): v is MappedValue => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean',
  );
  if (values.length === 0) return undefined;
  return values.length === 1 ? values[0] : values.join(' ');
}

/** `{ target: value }` for every entry the message has a value for. */
export function applyFieldMap(map: CompiledFieldMap, message: OutboundMessage): Record<string, MappedValue> {
  const out: Record<string, MappedValue> = {};
  for (const entry of map) {
    const value = mappedValue(entry, message);
    if (value !== undefined) out[entry.target] = value;
  }
  return out;
}
