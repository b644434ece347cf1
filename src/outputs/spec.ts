// What every output type declares (docs/architecture.md "Interfaces", docs/contributing.md habit 1): a type
// name, a one-line summary, a JSON Schema of its instance config that both validates and
// documents, and — per configured instance — what routing and consent need to know before
// anything is sent: the channel, whether the destination is covered by a BAA/DPA (docs/consent.md
// rule 4), the purposes it may carry, and whether the provider deduplicates resends
// (docs/architecture.md invariant 4: an ambiguous failure is retried only through an idempotent
// provider).

import type { ComponentSpec, InstanceCheckIssue } from '../config/load.ts';
import type { JsonSchema, SecretRef } from '../config/yaml.ts';
import type { OutputInfo } from '../pipeline/rule.ts';
import type { Channel, ContactHolding, DeliveryReceipt, Purpose, Receipt } from '../types.ts';
import type { ConsentChannel, ConsentMirror } from './consent-sync.ts';
import type { WriteBackContext, WriteBackKind, WriteBackOperation, WriteBackResult } from './write-back.ts';

/** What routing and the send-time checks know about one configured output. */
export interface OutputInstanceInfo {
  readonly channel: Channel;
  /** Declared covered by a BAA/DPA: may receive PHI (docs/consent.md rule 4). */
  readonly baa: boolean;
  readonly allowedPurposes: readonly Purpose[];
  /** The provider deduplicates by delivery id: an ambiguous failure may be retried. */
  readonly idempotent: boolean;
  /**
   * Whether a delivery needs the rule's recipient address (`send.to`) to be sent: one without
   * is suppressed `no_address` at send time (docs/consent.md rule 8). Absent: SMS and email
   * outputs need one; webhook, CRM and FHIR outputs (keyed by the patient's id) do not. A
   * marketing tool that keys its contacts by email address declares true.
   */
  readonly needsAddress?: boolean;
  /**
   * How fast the delivery engine may call this output: the provider's documented limits (or
   * what the instance config narrows them to). Absent: the engine's defaults.
   */
  readonly limits?: OutputLimits;
  /**
   * The only trigger paths this output can send (a CRM output's property map), when it has
   * such a list: a rule naming another field in send.fields is refused at load instead of the
   * field being dropped silently. Absent: every field the rule names is sent.
   */
  readonly fields?: readonly string[];
  /**
   * The write-back operations this output performs on the EHR's schedule (write-back.ts), when
   * it has any: a rule's reply.writeBack may name it (the adapter then has writeBack()). An output that only writes back declares
   * no allowedPurposes.
   */
  readonly writeBackKinds?: readonly WriteBackKind[];
  /**
   * Trigger paths every rule routed to this output must send, each with why: what the adapter
   * reads to refuse what it may not carry (Adobe AEP under Healthcare Shield: sensitivity and
   * patient.birthDate). A rule without them is refused at load (pipeline/coverage.ts).
   */
  readonly requiredFields?: Readonly<Record<string, string>>;
}

/**
 * Call limits the delivery engine enforces in front of an output (a token bucket per output
 * plus a cap on calls in flight), so that an adapter never needs to slow itself down.
 */
export interface OutputLimits {
  /** Sustained calls per second (token refill rate). */
  readonly ratePerSecond?: number;
  /** Calls that may go at once after a quiet period (bucket size). Default: ratePerSecond. */
  readonly burst?: number;
  /** Calls in flight at once (e.g. Mailchimp allows 10 connections per user). */
  readonly concurrency?: number;
  /** A daily quota (e.g. HubSpot's per-day limit), counted per UTC day. */
  readonly perDay?: number;
  /**
   * The provider account the limits belong to, when the provider counts per account rather
   * than per caller (ActiveCampaign: 5 requests/s per account whatever the key; HubSpot's
   * daily limit; Mailchimp's 10 connections per user). Outputs declaring the same `account`
   * draw from one bucket, one in-flight cap and one daily count, and the strictest figures
   * among their declarations apply. Absent: the limits are this output's own.
   */
  readonly account?: string;
  /**
   * Provider calls one send makes, when more than one (ActiveCampaign's tag action: the contact
   * sync, then the tag): the engine draws that many tokens per send. Default 1.
   */
  readonly callsPerSend?: number;
}

/** A message ready to leave: rendered from the delivery's payload only (invariant 6). */
export interface OutboundMessage {
  readonly deliveryId: string;
  readonly ruleId: string;
  readonly purpose: Purpose;
  readonly channel: Channel;
  /** Recipient address (phone, email); absent for webhook/CRM destinations. */
  readonly to?: string;
  readonly language: string;
  readonly subject?: string;
  readonly text: string;
  readonly html?: string;
  /**
   * The mapped fields: the delivery's payload, i.e. only the trigger fields the rule's
   * `send.fields` names (invariant 6), nested as in the trigger (`{ appointment: { start } }`).
   * Webhook and CRM outputs send these; message outputs send `text`.
   */
  readonly fields?: Readonly<Record<string, unknown>>;
  /** The patient's id (docs/trigger.md patient.id): FHIR Communication.subject. */
  readonly patientId?: string;
  /**
   * What the delivery is about, when it is an appointment or an encounter (its id as the
   * trigger gave it): FHIR Communication.about / basedOn.
   */
  readonly about?: { readonly kind: 'appointment' | 'encounter'; readonly id: string };
  /**
   * Never to arrive at or after this instant (Delivery.expiresAt, ISO-8601): an SMS provider's
   * validity period is cut so a late message is dropped by the provider, not delivered.
   */
  readonly expiresAt?: string;
  /**
   * Unsubscribe links for non-care email (List-Unsubscribe, RFC 2369; one-click, RFC 8058).
   * Built and signed by the consent side; an adapter only puts them into headers.
   */
  readonly unsubscribe?: {
    /** https URL that unsubscribes on a POST of `List-Unsubscribe=One-Click` (RFC 8058 §3.1). */
    readonly url: string;
    /** Optional mailto: alternative for mail clients without one-click. */
    readonly mailto?: string;
  };
}

export interface SendContext {
  readonly deliveryId: string;
  /** 1 for the first try. */
  readonly attempt: number;
  readonly signal: AbortSignal;
}

/**
 * Where adapters record what a provider said about a delivery (types.ts DeliveryReceipt): the
 * Store's receipts, handed over by the composition root (outputs never import the store).
 */
export interface ReceiptLedger {
  addDeliveryReceipt(receipt: DeliveryReceipt): Promise<boolean>;
  listDeliveryReceipts(query: { deliveryId: string; output?: string }): Promise<DeliveryReceipt[]>;
}

/**
 * Where marketing and CRM outputs record which contact they handed to their tool (types.ts
 * ContactHolding): the Store, handed over by the composition root. An opt-out recorded later
 * is pushed to the outputs holding the patient, and to no other.
 */
export interface ContactHoldingsLedger {
  recordContactHolding(holding: ContactHolding): Promise<boolean>;
}

/** What the composition root hands every adapter's create() (besides type-specific deps such as the outbox sink). */
export interface OutputDeps {
  /** Reads a secret reference of the output's config (environment or file, config/yaml.ts). */
  secret: (ref: SecretRef) => string;
  receipts: ReceiptLedger;
  now: () => Date;
  /** Contact holdings: required by outputs that create contacts in a tool (they refuse to start without it). */
  holdings?: ContactHoldingsLedger;
}

/**
 * What an opt-out covers (docs/consent.md "Precise semantics", scope of an opt-out), in the shape
 * of ToolConsentSignal's scope (consent-sync.ts): a channel (absent: every channel) and a purpose
 * (absent: every purpose but care — "unsubscribe from all"). A newsletter link stops marketing
 * and service.info by email: two opt-outs, one per purpose.
 */
export interface OptOutScope {
  readonly channel?: ConsentChannel;
  readonly purpose?: Purpose;
  /**
   * An SMS keyword's opt-out (STOP): the number that sent it (E.164). It belongs to that number
   * (docs/consent.md "Scope of an opt-out"): the tool's SMS status of that number is set, never an
   * email status and never another number's.
   */
  readonly address?: string;
}

/** What pushing an opt-out to a tool did. */
export const OptOutOutcome = {
  /** The tool now has the contact opted out for the scope (or already had). */
  Applied: 'applied',
  /** The tool does not know the contact (it was never created there, or was deleted). */
  NotHeld: 'not_held',
  /** Nothing this output carries falls in the scope: another channel, other purposes, no list or subscription configured for them. */
  NotApplicable: 'not_applicable',
} as const;
export type OptOutOutcome = (typeof OptOutOutcome)[keyof typeof OptOutOutcome];

/** The contact an opt-out is pushed for: a holding of this output (Store.listContactHoldings). */
export type HeldContact = Pick<ContactHolding, 'patientId' | 'contactKey'>;

/** What asking a tool to forget a contact did (GDPR erasure; the erasure record keeps it). */
export const ForgetOutcome = {
  /** The tool deleted the contact for good (and, where it does so, keeps the address from coming back). */
  Forgotten: 'forgotten',
  /** The tool does not know the contact (never created there, or deleted already). */
  NotHeld: 'not_held',
} as const;
export type ForgetOutcome = (typeof ForgetOutcome)[keyof typeof ForgetOutcome];

/**
 * A running outbound adapter. It only sends and classifies its failures (TransientError,
 * AmbiguousError, PermanentError from errors.ts); it never retries by itself.
 */
export interface OutboundAdapter extends OutputInstanceInfo {
  readonly name: string;
  send(message: OutboundMessage, context: SendContext): Promise<Receipt>;
  /**
   * Marketing and CRM outputs: applies an opt-out the consent ledger recorded to a contact this
   * output handed to its tool (the "to the tool" direction of docs/consent.md "Opt-outs"): HubSpot
   * subscription status, Mailchimp member status, Brevo blocklist, ActiveCampaign list status.
   * Only ever sets an opt-out, never clears one. Idempotent (the same opt-out again changes
   * nothing), one or two provider calls, never retried here: failures throw the errors.ts classes
   * like send(), and the caller queues a retry.
   */
  optOut?(contact: HeldContact, scope: OptOutScope, context: { readonly signal: AbortSignal }): Promise<OptOutOutcome>;
  /**
   * The channels optOut can set a status for in the tool (absent: email only). An SMS STOP is
   * pushed only to outputs listing `sms` (HubSpot's and ActiveCampaign's APIs have no SMS status:
   * docs/consent.md "Tools that hold the contact").
   */
  readonly optOutChannels?: readonly ConsentChannel[];
  /**
   * Mirrors a consent decision of the ledger into the tool's own consent model (Salesforce:
   * ContactPointTypeConsent for the patient's Individual and the purpose's DataUsePurpose), for
   * tools that have one. Idempotent: the same decision mirrored twice leaves one record. One
   * provider call; fails with the errors.ts classes like send().
   */
  mirrorConsent?(consent: ConsentMirror, context: { readonly signal: AbortSignal }): Promise<Receipt>;
  /**
   * Outputs declaring `writeBackKinds`: performs one operation on the EHR's schedule (write-back.ts) —
   * applied, or denied by the EHR (a staff task) — and throws the errors.ts classes like send()
   * otherwise. Idempotent; never retried here.
   */
  writeBack?(operation: WriteBackOperation, context: WriteBackContext): Promise<WriteBackResult>;
  /**
   * Marketing and CRM outputs whose tool has a documented delete: permanently deletes a contact
   * this output handed to its tool (GDPR erasure, docs/consent.md "Erasure": HubSpot GDPR delete,
   * Mailchimp permanent delete, Brevo and ActiveCampaign contact delete). Idempotent, one or two
   * provider calls, never retried here: failures throw the errors.ts classes like send(); the
   * erasure records them for an operator.
   */
  forget?(contact: HeldContact, context: { readonly signal: AbortSignal }): Promise<ForgetOutcome>;
  close?(): Promise<void>;
}

/**
 * @typeParam Config the instance config after validation and defaults (frozen).
 * @typeParam Deps what the composition root hands the adapter (a sink, an HTTP client…).
 */
export interface OutputSpec<Config = unknown, Deps = unknown> extends ComponentSpec {
  /** Unique type name used as `type:` in connectors/*.yaml, e.g. `outbox`. */
  readonly type: string;
  readonly summary: string;
  readonly configSchema: JsonSchema;
  check?(config: Config): InstanceCheckIssue[];
  /** Channel, BAA coverage, purposes and idempotency of one validated instance. */
  info(config: Config): OutputInstanceInfo;
  /** Builds the adapter; nothing is sent until `send()`. */
  create?(config: Config, deps: Deps): OutboundAdapter;
}

/** A configured output as the plan holds it (InstancePlan from config/load.ts). */
export interface ConfiguredOutput {
  readonly type: string;
  readonly name: string;
  readonly config: unknown;
}

/**
 * What compileRules needs about each configured output, from the registry. Instances of an
 * unknown type are left out: the connectors loader already reported them.
 */
export function outputInfos(outputs: readonly ConfiguredOutput[], specs: readonly OutputSpec[]): OutputInfo[] {
  const infos: OutputInfo[] = [];
  for (const output of outputs) {
    const spec = specs.find((s) => s.type === output.type);
    if (!spec) continue;
    const info = spec.info(output.config);
    infos.push({
      name: output.name,
      channel: info.channel,
      baa: info.baa,
      allowedPurposes: info.allowedPurposes,
      ...(info.fields !== undefined ? { fields: info.fields } : {}),
      ...(info.writeBackKinds !== undefined ? { writeBackKinds: info.writeBackKinds } : {}),
      ...(info.requiredFields !== undefined ? { requiredFields: info.requiredFields } : {}),
    });
  }
  return infos;
}
