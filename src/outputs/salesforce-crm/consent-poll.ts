// Consent changes made in Salesforce, read back by polling (one SOQL query per page, through the
// REST Query resource, GET /services/data/vXX.X/query/?q=…): every ContactPointTypeConsent
// modified after a cursor, oldest first, turned into ToolConsentSignals for the ledger
// (outputs/consent-sync.ts).
//
//   SELECT Id, LastModifiedDate, PrivacyConsentStatus, ContactPointType, CaptureDate,
//          CaptureSource, PartyId, Party.<key field>, DataUsePurpose.Name
//   FROM ContactPointTypeConsent
//   WHERE LastModifiedDate > <since> OR (LastModifiedDate = <since> AND Id > '<afterId>')
//   ORDER BY LastModifiedDate, Id LIMIT 200
//
// The cursor is (LastModifiedDate, Id) of the last record read, so records sharing a timestamp
// are neither skipped nor read twice across pages. Salesforce also offers the ConsentEvent
// platform event and Change Data Capture on ContactPointTypeConsent (streamed over the Pub/Sub
// API or CometD); polling needs nothing enabled in the org and is what this module does.
//
// Normalized: PrivacyConsentStatus OptOut → opted_out, OptIn → opted_in (Seen, NotSeen and
// empty say nothing); ContactPointType Email → email, Phone → phone (calls and texts); the
// DataUsePurpose by the output's purpose map read backwards (a purpose the map does not name is
// skipped, none means every purpose); the contact by the Individual's key field (the patient id
// CareRelay upserted it with) and the Individual's id; `at` the CaptureDate (when the person said
// it). Records CareRelay wrote itself (CaptureSource "CareRelay: …", consent mirrored from the
// ledger) are skipped: they are the ledger's own decisions coming back.
import type { Purpose } from '../../types.ts';
import { ConsentChannel, ToolSignalKind, type ToolConsentSignal } from '../consent-sync.ts';

export interface ConsentPollCursor {
  /** LastModifiedDate of the last record read (ISO-8601); start with the time polling begins. */
  readonly since: string;
  /** Its Id: records of the same second after it are still to read. */
  readonly afterId?: string;
}

export const CONSENT_POLL_PAGE = 200;
export const OWN_CAPTURE_SOURCE = 'CareRelay:';

/** A ContactPointTypeConsent as the query returns it. */
export interface ConsentRecord {
  readonly Id?: unknown;
  readonly LastModifiedDate?: unknown;
  readonly PrivacyConsentStatus?: unknown;
  readonly ContactPointType?: unknown;
  readonly CaptureDate?: unknown;
  readonly CaptureSource?: unknown;
  readonly PartyId?: unknown;
  readonly Party?: unknown;
  readonly DataUsePurpose?: unknown;
}

/** A SOQL dateTime literal (YYYY-MM-DDThh:mm:ssZ) for an instant Salesforce or CareRelay wrote. */
export function soqlDateTime(value: string): string {
  const ms = Date.parse(value.replace(/([+-]\d{2})(\d{2})$/, '$1:$2'));
  if (Number.isNaN(ms)) throw new RangeError(`"${value}" is not an instant`);
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The query of one page after `cursor` (see the top of this file). */
export function consentQuery(cursor: ConsentPollCursor, individualKeyField: string): string {
  if (!/^[A-Za-z][A-Za-z0-9_]{0,79}$/.test(individualKeyField)) throw new RangeError(`"${individualKeyField}" is not a field API name`);
  const since = soqlDateTime(cursor.since);
  const after =
    cursor.afterId !== undefined && /^[A-Za-z0-9]{15,18}$/.test(cursor.afterId)
      ? `LastModifiedDate > ${since} OR (LastModifiedDate = ${since} AND Id > '${cursor.afterId}')`
      : `LastModifiedDate > ${since}`;
  return (
    `SELECT Id, LastModifiedDate, PrivacyConsentStatus, ContactPointType, CaptureDate, CaptureSource, PartyId, Party.${individualKeyField}, DataUsePurpose.Name ` +
    `FROM ContactPointTypeConsent WHERE ${after} ORDER BY LastModifiedDate, Id LIMIT ${CONSENT_POLL_PAGE}`
  );
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function instant(value: unknown): string | undefined {
  const raw = text(value);
  if (raw === undefined) return undefined;
  // Salesforce writes offsets as +0000.
  const ms = Date.parse(raw.replace(/([+-]\d{2})(\d{2})$/, '$1:$2'));
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString();
}

const CHANNELS: Readonly<Record<string, ConsentChannel>> = { Email: ConsentChannel.Email, Phone: ConsentChannel.Phone };
const STATUS: Readonly<Record<string, ToolSignalKind>> = { OptOut: ToolSignalKind.OptedOut, OptIn: ToolSignalKind.OptedIn };

export interface ConsentSignalOptions {
  readonly output: string;
  readonly individualKeyField: string;
  /** CareRelay purpose → DataUsePurpose Name (the output's consent.purposes). */
  readonly purposes: Readonly<Partial<Record<Purpose, string>>>;
}

/** The signals of one page, the cursor after it, and whether a next page may hold more. */
export function consentSignals(
  records: readonly ConsentRecord[],
  cursor: ConsentPollCursor,
  options: ConsentSignalOptions,
): { signals: ToolConsentSignal[]; cursor: ConsentPollCursor; more: boolean } {
  const byName = new Map(Object.entries(options.purposes).map(([purpose, name]) => [name, purpose as Purpose]));
  const signals: ToolConsentSignal[] = [];
  let next = cursor;
  for (const record of records) {
    const id = text(record.Id);
    const modified = text(record.LastModifiedDate);
    if (id === undefined || modified === undefined) continue;
    next = { since: modified, afterId: id };
    if (text(record.CaptureSource)?.startsWith(OWN_CAPTURE_SOURCE)) continue;
    const kind = STATUS[text(record.PrivacyConsentStatus) ?? ''];
    const channel = CHANNELS[text(record.ContactPointType) ?? ''];
    if (kind === undefined || channel === undefined) continue;
    const purposeName = typeof record.DataUsePurpose === 'object' && record.DataUsePurpose !== null ? text((record.DataUsePurpose as Record<string, unknown>).Name) : undefined;
    const purpose = purposeName === undefined ? undefined : byName.get(purposeName);
    if (purposeName !== undefined && purpose === undefined) continue;
    const party = typeof record.Party === 'object' && record.Party !== null ? (record.Party as Record<string, unknown>) : {};
    const patientId = text(party[options.individualKeyField]);
    const toolId = text(record.PartyId);
    const at = instant(record.CaptureDate) ?? instant(modified);
    if ((patientId === undefined && toolId === undefined) || at === undefined) continue;
    signals.push({
      tool: 'salesforce-crm',
      output: options.output,
      contact: { ...(patientId !== undefined ? { patientId } : {}), ...(toolId !== undefined ? { toolId } : {}) },
      kind,
      scope: { channel, ...(purpose !== undefined ? { purpose } : {}) },
      at,
      eventId: `salesforce:${id}:${modified}`,
    });
  }
  return { signals, cursor: next, more: records.length >= CONSENT_POLL_PAGE };
}
