// A stored message laid out for people: HL7v2 as a table of segments and fields (named after
// HL7 v2.5.1 for the segments scheduling and ADT feeds carry), FHIR JSON pretty-printed.
//
// Masking. The raw message is patient content (scope phi, as in GET /api/messages/:id). Without
// it the layout still shows which segments and fields are there — what an engineer needs to
// see that PID-3 is empty or that a Z-segment arrived — with every value replaced by the same
// mask whatever its length; only MSH is shown whole (applications, facilities, type, control
// id, time: what `read` already sees). FHIR JSON keeps its keys and resourceType, and masks
// every other value.
import { Hl7ParseError, parseHl7, type Hl7Message } from '../../hl7v2/parse.ts';
import { html, type SafeHtml } from './html.ts';

export const MASK = '•••';

/** Segments shown whole to a caller without phi: they hold no patient content. */
const UNMASKED_SEGMENTS = new Set(['MSH']);

/** HL7 v2.5.1 field names of the segments scheduling and ADT feeds carry. */
const FIELD_NAMES: Record<string, readonly (string | undefined)[]> = {
  MSH: [
    undefined, 'Field Separator', 'Encoding Characters', 'Sending Application', 'Sending Facility', 'Receiving Application',
    'Receiving Facility', 'Date/Time of Message', 'Security', 'Message Type', 'Message Control ID', 'Processing ID', 'Version ID',
    'Sequence Number', 'Continuation Pointer', 'Accept Acknowledgment Type', 'Application Acknowledgment Type', 'Country Code',
    'Character Set', 'Principal Language of Message',
  ],
  EVN: [undefined, 'Event Type Code', 'Recorded Date/Time', 'Date/Time Planned Event', 'Event Reason Code', 'Operator ID', 'Event Occurred', 'Event Facility'],
  PID: [
    undefined, 'Set ID', 'Patient ID', 'Patient Identifier List', 'Alternate Patient ID', 'Patient Name', "Mother's Maiden Name",
    'Date/Time of Birth', 'Administrative Sex', 'Patient Alias', 'Race', 'Patient Address', 'County Code', 'Phone Number - Home',
    'Phone Number - Business', 'Primary Language', 'Marital Status', 'Religion', 'Patient Account Number', 'SSN Number',
    "Driver's License Number", "Mother's Identifier", 'Ethnic Group', 'Birth Place', 'Multiple Birth Indicator', 'Birth Order',
    'Citizenship', 'Veterans Military Status', 'Nationality', 'Patient Death Date and Time', 'Patient Death Indicator',
  ],
  PD1: [undefined, 'Living Dependency', 'Living Arrangement', 'Patient Primary Facility', 'Patient Primary Care Provider', 'Student Indicator', 'Handicap', 'Living Will Code', 'Organ Donor Code', 'Separate Bill', 'Duplicate Patient', 'Publicity Code', 'Protection Indicator'],
  NK1: [undefined, 'Set ID', 'Name', 'Relationship', 'Address', 'Phone Number', 'Business Phone Number', 'Contact Role'],
  PV1: [
    undefined, 'Set ID', 'Patient Class', 'Assigned Patient Location', 'Admission Type', 'Preadmit Number', 'Prior Patient Location',
    'Attending Doctor', 'Referring Doctor', 'Consulting Doctor', 'Hospital Service', 'Temporary Location', 'Preadmit Test Indicator',
    'Re-admission Indicator', 'Admit Source', 'Ambulatory Status', 'VIP Indicator', 'Admitting Doctor', 'Patient Type', 'Visit Number',
    'Financial Class', 'Charge Price Indicator', 'Courtesy Code', 'Credit Rating', 'Contract Code', 'Contract Effective Date',
    'Contract Amount', 'Contract Period', 'Interest Code', 'Transfer to Bad Debt Code', 'Transfer to Bad Debt Date',
    'Bad Debt Agency Code', 'Bad Debt Transfer Amount', 'Bad Debt Recovery Amount', 'Delete Account Indicator',
    'Delete Account Date', 'Discharge Disposition', 'Discharged to Location', 'Diet Type', 'Servicing Facility', 'Bed Status',
    'Account Status', 'Pending Location', 'Prior Temporary Location', 'Admit Date/Time', 'Discharge Date/Time',
  ],
  PV2: [undefined, 'Prior Pending Location', 'Accommodation Code', 'Admit Reason', 'Transfer Reason'],
  MRG: [undefined, 'Prior Patient Identifier List', 'Prior Alternate Patient ID', 'Prior Patient Account Number', 'Prior Patient ID', 'Prior Visit Number', 'Prior Alternate Visit ID', 'Prior Patient Name'],
  SCH: [
    undefined, 'Placer Appointment ID', 'Filler Appointment ID', 'Occurrence Number', 'Placer Group Number', 'Schedule ID',
    'Event Reason', 'Appointment Reason', 'Appointment Type', 'Appointment Duration', 'Appointment Duration Units',
    'Appointment Timing Quantity', 'Placer Contact Person', 'Placer Contact Phone Number', 'Placer Contact Address',
    'Placer Contact Location', 'Filler Contact Person', 'Filler Contact Phone Number', 'Filler Contact Address',
    'Filler Contact Location', 'Entered By Person', 'Entered By Phone Number', 'Entered By Location',
    'Parent Placer Appointment ID', 'Parent Filler Appointment ID', 'Filler Status Code',
  ],
  TQ1: [undefined, 'Set ID', 'Quantity', 'Repeat Pattern', 'Explicit Time', 'Relative Time and Units', 'Service Duration', 'Start Date/Time', 'End Date/Time', 'Priority'],
  RGS: [undefined, 'Set ID', 'Segment Action Code', 'Resource Group ID'],
  AIS: [undefined, 'Set ID', 'Segment Action Code', 'Universal Service Identifier', 'Start Date/Time', 'Start Date/Time Offset', 'Start Date/Time Offset Units', 'Duration', 'Duration Units', 'Allow Substitution Code', 'Filler Status Code'],
  AIG: [undefined, 'Set ID', 'Segment Action Code', 'Resource ID', 'Resource Type', 'Resource Group', 'Resource Quantity', 'Resource Quantity Units', 'Start Date/Time'],
  AIL: [undefined, 'Set ID', 'Segment Action Code', 'Location Resource ID', 'Location Type', 'Location Group', 'Start Date/Time', 'Start Date/Time Offset', 'Start Date/Time Offset Units', 'Duration', 'Duration Units', 'Allow Substitution Code', 'Filler Status Code'],
  AIP: [undefined, 'Set ID', 'Segment Action Code', 'Personnel Resource ID', 'Resource Type', 'Resource Group', 'Start Date/Time', 'Start Date/Time Offset', 'Start Date/Time Offset Units', 'Duration', 'Duration Units', 'Allow Substitution Code', 'Filler Status Code'],
  NTE: [undefined, 'Set ID', 'Source of Comment', 'Comment', 'Comment Type'],
  MSA: [undefined, 'Acknowledgment Code', 'Message Control ID', 'Text Message', 'Expected Sequence Number', 'Delayed Acknowledgment Type', 'Error Condition'],
  ERR: [undefined, 'Error Code and Location', 'Error Location', 'HL7 Error Code', 'Severity', 'Application Error Code', 'Application Error Parameter', 'Diagnostic Information', 'User Message'],
};

export function fieldName(segment: string, field: number): string | undefined {
  return FIELD_NAMES[segment]?.[field];
}

/** The bytes as text for display (UTF-8 with replacement characters: a view, never the stored bytes). */
function asText(raw: Buffer): string {
  return raw.toString('utf8');
}

/** An HL7v2 message (or ACK) as a segments × fields table; masked unless `phi`. */
export function hl7Table(raw: Buffer | string, phi: boolean): SafeHtml {
  let message: Hl7Message;
  try {
    message = parseHl7(typeof raw === 'string' ? raw : raw);
  } catch (error) {
    if (!(error instanceof Hl7ParseError)) throw error;
    // Not parseable (that may be why it was rejected): its lines as they came, or nothing.
    return html`<p class="hint">Not readable as HL7v2 (${error.message}); shown as received.</p>${rawText(typeof raw === 'string' ? raw : asText(raw), phi)}`;
  }
  const rows = message.segments.map((segment, index) => {
    const masked = !phi && !UNMASKED_SEGMENTS.has(segment.name);
    const fields: SafeHtml[] = [];
    for (let n = 1; n <= segment.fieldCount; n++) {
      const value = segment.rawField(n);
      if (value === '') continue;
      const name = fieldName(segment.name, n);
      fields.push(html`<tr${fields.length === 0 ? html` class="segstart"` : ''}>
<td class="seg">${fields.length === 0 ? segment.name : ''}</td><td class="field">${segment.name}-${n}</td><td>${name ?? ''}</td><td class="value">${masked ? html`<span class="masked">${MASK}</span>` : value}</td></tr>`);
    }
    if (fields.length === 0) fields.push(html`<tr class="segstart"><td class="seg">${segment.name}</td><td class="field"></td><td class="muted">(no fields)</td><td></td></tr>`);
    return html`<tbody data-segment="${segment.name}" data-index="${index}">${fields}</tbody>`;
  });
  return html`<div class="table-wrap"><table class="segments"><thead><tr><th>Segment</th><th>Field</th><th>Name</th><th>Value (as received)</th></tr></thead>${rows}</table></div>
<p class="hint">${message.segments.length} segments${typeof raw !== 'string' && html` · read as ${message.charset}`}</p>`;
}

/** Text as received in a dark block; masked unless `phi`. */
export function rawText(text: string, phi: boolean): SafeHtml {
  if (!phi) return html`<pre class="raw"><span class="masked">${MASK}</span></pre>`;
  return html`<pre class="raw">${text.replace(/\r\n?/g, '\n')}</pre>`;
}

/** Keys kept as they are when masking FHIR JSON. */
const UNMASKED_KEYS = new Set(['resourceType']);

function maskJson(value: unknown, key?: string): unknown {
  if (Array.isArray(value)) return value.map((v) => maskJson(v));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskJson(v, k)]));
  }
  return key !== undefined && UNMASKED_KEYS.has(key) ? value : MASK;
}

/** A FHIR request body pretty-printed; masked values unless `phi`. */
export function fhirJson(raw: Buffer, phi: boolean): SafeHtml {
  let parsed: unknown;
  try {
    parsed = JSON.parse(asText(raw));
  } catch {
    return html`<p class="hint">Not readable as JSON; shown as received.</p>${rawText(asText(raw), phi)}`;
  }
  return html`<pre class="raw">${JSON.stringify(phi ? parsed : maskJson(parsed), null, 2)}</pre>`;
}
