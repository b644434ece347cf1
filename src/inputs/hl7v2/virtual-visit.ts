// Video visits in HL7v2 (docs/video.md). SIU has no field for a video link; senders put it in a
// Z-segment of their own or in a note. Each HL7 input says where, with `virtualVisit`:
//
//   virtualVisit: { segment: ZVV, field: 1 }              # ZVV-1 (component 1 unless `component`)
//   virtualVisit: { nte: { prefix: "VIDEO:" } }           # an NTE-3 that starts with the prefix
//   …and optionally `channel: zoom` (what appointment.virtual.channel says: HL7 gives no channel)
//
// A message whose configured place holds a value is a video visit; the value is its join URL
// when it is an https URL (normalized-values.ts joinUrl), else the visit has no join
// information. Pure. The URL goes back to the caller apart from the trigger, and
// redactVirtualVisit takes it out of the bytes the message is stored with.
import { escapeHl7 } from '../../hl7v2/escape.ts';
import { encodeHl7Text } from '../../hl7v2/charset.ts';
import type { Hl7Message } from '../../hl7v2/parse.ts';
import { joinUrl, REDACTED_JOIN_URL } from '../../normalized-values.ts';
import type { TriggerVirtual } from '../../types.ts';

/** Where an HL7 input's messages carry a video visit's join URL (the input's `virtualVisit`). */
export type VirtualVisitSetting =
  | { readonly segment: string; readonly field: number; readonly component?: number; readonly channel?: string }
  | { readonly nte: { readonly prefix: string }; readonly channel?: string };

/** The input config schema of `virtualVisit` (inputs/hl7v2/spec.ts). */
export const virtualVisitSchema = {
  type: 'object',
  description:
    'Where this sender puts the join URL of a video visit (docs/video.md): a field of a Z-segment, or an NTE whose text starts ' +
    'with a prefix. A message with a value there is a video visit (appointment.virtual); the URL itself never enters the ' +
    'trigger: it is stored sealed and replaced in the stored raw message. Default: not read.',
  oneOf: [
    {
      type: 'object',
      description: 'A field of a segment, e.g. { segment: ZVV, field: 1 }.',
      required: ['segment', 'field'],
      additionalProperties: false,
      properties: {
        segment: { type: 'string', pattern: '^Z[A-Z0-9]{2}$', description: 'The Z-segment holding the URL, e.g. ZVV.' },
        field: { type: 'integer', minimum: 1, maximum: 999, description: 'The field number.' },
        component: { type: 'integer', minimum: 1, maximum: 99, description: 'The component of the field (default 1).' },
        channel: { type: 'string', minLength: 1, maxLength: 64, description: 'What appointment.virtual.channel says (e.g. zoom); default: absent.' },
      },
    },
    {
      type: 'object',
      description: 'A note, e.g. { nte: { prefix: "VIDEO:" } }: the first NTE-3 starting with the prefix (case ignored), the URL after it.',
      required: ['nte'],
      additionalProperties: false,
      properties: {
        nte: {
          type: 'object',
          required: ['prefix'],
          additionalProperties: false,
          properties: { prefix: { type: 'string', minLength: 1, maxLength: 32, description: 'Text the note starts with, e.g. "VIDEO:".' } },
        },
        channel: { type: 'string', minLength: 1, maxLength: 64, description: 'What appointment.virtual.channel says (e.g. zoom); default: absent.' },
      },
    },
  ],
} as const;

/** What the message says about a video visit at the configured place. */
export interface Hl7VirtualVisit {
  virtual: TriggerVirtual;
  url?: string;
  /** The wire text (as escaped in the message) the value was read from. */
  wire: string;
  /** The decoded value. */
  value: string;
}

/** Reads the configured place; undefined when the message holds nothing there. */
export function virtualVisitOf(msg: Hl7Message, setting: VirtualVisitSetting): Hl7VirtualVisit | undefined {
  const found = 'nte' in setting ? fromNote(msg, setting.nte.prefix) : fromSegment(msg, setting);
  if (found === undefined) return undefined;
  const url = found.url;
  return {
    virtual: { ...(setting.channel !== undefined ? { channel: setting.channel } : {}), hasJoinInfo: url !== undefined },
    ...(url !== undefined ? { url } : {}),
    wire: found.wire,
    value: found.value,
  };
}

function fromSegment(msg: Hl7Message, setting: { segment: string; field: number; component?: number }): { url?: string; wire: string; value: string } | undefined {
  for (const seg of msg.segments) {
    if (seg.name !== setting.segment) continue;
    const rep = seg.repetitions(setting.field)[0];
    if (rep === undefined || rep.isEmpty) continue;
    const value = rep.get(setting.component ?? 1).trim();
    // HL7's explicit null `""` says nothing here either.
    if (value === '' || value === '""') continue;
    const url = joinUrl(value);
    return { ...(url !== undefined ? { url } : {}), wire: rep.rawComponent(setting.component ?? 1), value };
  }
  return undefined;
}

function fromNote(msg: Hl7Message, prefix: string): { url?: string; wire: string; value: string } | undefined {
  const wanted = prefix.toLowerCase();
  for (const seg of msg.segments) {
    if (seg.name !== 'NTE') continue;
    for (const rep of seg.repetitions(3)) {
      const text = rep.get(1).trim();
      if (!text.toLowerCase().startsWith(wanted)) continue;
      // The URL is the first word after the prefix ("VIDEO: https://… (join 5 minutes early)").
      const first = text.slice(prefix.length).trim().split(/\s+/, 1)[0] ?? '';
      const url = joinUrl(first);
      return { ...(url !== undefined ? { url } : {}), wire: rep.rawComponent(1), value: text };
    }
  }
  return undefined;
}

/**
 * The message's stored bytes with its join URL replaced by REDACTED_JOIN_URL (docs/video.md
 * "Raw messages"): the wire text it was read from is rewritten (re-escaped), and any other
 * place holding the URL as plain text too. Every other byte stays as received; the dedupe hash
 * is computed on the bytes as received, before this. `raw` comes back as is when the message
 * holds no join URL at the configured place.
 */
export function redactVirtualVisit(raw: Buffer, msg: Hl7Message, setting: VirtualVisitSetting): Buffer {
  const found = virtualVisitOf(msg, setting);
  if (found?.url === undefined) return raw;
  const d = msg.delimiters;
  const pairs: Array<[string, string]> = [
    [found.wire, escapeHl7(found.value.split(found.url).join(REDACTED_JOIN_URL), d)],
    [escapeHl7(found.url, d), REDACTED_JOIN_URL],
    [found.url, REDACTED_JOIN_URL],
  ];
  let out = raw;
  for (const [from, to] of pairs) {
    // The message's own character set for a message stored as received; UTF-8 for one taken
    // out of a batch (ingest.ts stores its text as UTF-8). Both are tried.
    for (const charset of new Set([msg.charset, 'UNICODE UTF-8'])) out = replaceAll(out, encodeHl7Text(from, charset), encodeHl7Text(to, charset));
  }
  return out;
}

function replaceAll(haystack: Buffer, needle: Buffer, replacement: Buffer): Buffer {
  if (needle.length === 0) return haystack;
  let at = haystack.indexOf(needle);
  if (at === -1) return haystack;
  const parts: Buffer[] = [];
  let from = 0;
  while (at !== -1) {
    parts.push(haystack.subarray(from, at), replacement);
    from = at + needle.length;
    at = haystack.indexOf(needle, from);
  }
  parts.push(haystack.subarray(from));
  return Buffer.concat(parts);
}
