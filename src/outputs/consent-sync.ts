// Consent kept in step between CareRelay's ledger and the CRM and marketing tools it feeds
// (docs/consent.md "Opt-outs … are pushed to every marketing tool that holds the contact"), in
// both directions, as data:
//
//   ledger ──ConsentMirror──▶ adapter.mirrorConsent()     (outputs/spec.ts; Salesforce: Individual /
//                                                           ContactPointTypeConsent / DataUsePurpose)
//   tool ──webhook or poll──▶ parser / poller ──ToolConsentSignal──▶ ledger
//
// The parsers and pollers are pure (or one API call) and know nothing of the ledger; the consent
// side records each signal once (by `eventId`) and cancels the pending deliveries it forbids.
import type { Purpose } from '../types.ts';

/** The channels consent is kept for. */
export const ConsentChannel = { Email: 'email', Sms: 'sms', Phone: 'phone' } as const;
export type ConsentChannel = (typeof ConsentChannel)[keyof typeof ConsentChannel];

export const ConsentStatus = { OptedIn: 'opted_in', OptedOut: 'opted_out' } as const;
export type ConsentStatus = (typeof ConsentStatus)[keyof typeof ConsentStatus];

/** A consent decision of the ledger, as a tool should hold it. */
export interface ConsentMirror {
  /** The patient (docs/trigger.md patient.id): the key the tool knows the contact by. */
  readonly patientId: string;
  readonly channel: ConsentChannel;
  /** Absent: the channel as a whole (every purpose). */
  readonly purpose?: Purpose;
  readonly status: ConsentStatus;
  /** When the person said it (ISO-8601). */
  readonly capturedAt: string;
  /** How it was captured, a code of the ledger (sms_keyword, unsubscribe_link, fhir_consent, admin…). */
  readonly source: string;
  /** The channel the person used to say it (an SMS STOP: sms; a form: web). Default: `channel`. */
  readonly capturedVia?: ConsentChannel | 'web';
  readonly effectiveFrom?: string;
  readonly effectiveTo?: string;
  /** An SMS keyword's opt-out: the number that sent it (OptOutScope.address). */
  readonly address?: string;
}

export const ToolSignalKind = {
  OptedOut: 'opted_out',
  OptedIn: 'opted_in',
  /** The tool's mail server refused the address for good. */
  HardBounce: 'hard_bounce',
} as const;
export type ToolSignalKind = (typeof ToolSignalKind)[keyof typeof ToolSignalKind];

/** What a tool reported about a contact's consent, normalized. */
export interface ToolConsentSignal {
  /** The output type that reported it (`salesforce-crm`, `sfmc`). */
  readonly tool: string;
  /** The configured output it came through. */
  readonly output: string;
  /** Who, as the tool identifies them: at least one member is set. */
  readonly contact: {
    /** The patient id, when the tool holds CareRelay's key for the contact. */
    readonly patientId?: string;
    readonly email?: string;
    readonly phone?: string;
    /** The tool's own id (a Salesforce Individual, an SFMC subscriber key). */
    readonly toolId?: string;
  };
  readonly kind: ToolSignalKind;
  /** What it covers: a channel (absent: every channel) and a purpose (absent: every purpose but care). */
  readonly scope: { readonly channel?: ConsentChannel; readonly purpose?: Purpose };
  /** When the person acted, ISO-8601. */
  readonly at: string;
  /** The tool's id of this event (the ledger records each once). */
  readonly eventId: string;
}
