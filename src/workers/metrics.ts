// Prometheus metrics (GET /metrics; docs/operations.md "Metrics"): the one place metrics are
// defined. Counters and histograms follow the operations events (ops-events.ts); gauges are read
// when Prometheus scrapes (queue depth and age, delivery totals, FHIR subscriptions, input
// silence); process metrics come from prom-client's defaults.
//
// No patient data in any label (docs/architecture.md invariant 7). Every label value is one of
// an allow-list: configured names (inputs, outputs, rules, FHIR subscriptions), the project's
// own enums (trigger types, statuses, reason codes, failure classes), HL7 message types from a
// fixed list and 3-digit HTTP statuses. Anything else — a message type a sender made up, a
// name no longer configured — is `other`, so a hostile sender can neither put a name into a
// label nor grow the number of series.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Rule } from '../pipeline/rule.ts';
import { STORED_DELIVERY_STATUSES, type Store } from '../store/store.ts';
import { ConsentReason, MessageStatus, TRIGGER_TYPES } from '../types.ts';
import { DELIVERY_EVENTS, SEND_RESULTS, type OpsEvents, type SubscriptionStatus } from './ops-events.ts';

/** The label value of anything not on a label's allow-list. */
export const OTHER = 'other';

const HL7_TYPES = new Set<string>([
  ...Array.from({ length: 15 }, (_, i) => `SIU^S${12 + i}`),
  ...Array.from({ length: 62 }, (_, i) => `ADT^A${String(i + 1).padStart(2, '0')}`),
  'ACK',
]);
const FHIR_TYPES = new Set<string>(['Appointment', 'Encounter', 'Patient', 'Consent', 'Bundle', 'handshake', 'heartbeat', 'event-notification', 'query-status', 'query-event', 'event']);
const ACK_CODES = new Set<string>(['AA', 'AE', 'AR', 'CA', 'CE', 'CR']);
const MESSAGE_STATUSES = new Set<string>([...Object.values(MessageStatus), 'duplicate']);
const DECISION_REASONS = new Set<string>(Object.values(ConsentReason));
const TRIGGERS = new Set<string>(TRIGGER_TYPES);

/** An HL7 message type as its first two components (`SIU^S12^SIU_S12` → `SIU^S12`) or a FHIR type, if known. */
export function messageTypeLabel(messageType: string): string {
  if (messageType === '') return 'none';
  const [code, event] = messageType.split('^');
  const hl7 = event === undefined ? code! : `${code}^${event}`;
  if (HL7_TYPES.has(hl7)) return hl7;
  if (code === 'ACK') return 'ACK';
  return FHIR_TYPES.has(messageType) ? messageType : OTHER;
}

export function ackCodeLabel(code: string): string {
  return ACK_CODES.has(code) || /^[1-5]\d\d$/.test(code) ? code : OTHER;
}

export interface MetricsOptions {
  events: OpsEvents;
  store: Store;
  /** Configured names: label values other than these are `other`. */
  inputs: readonly string[];
  outputs: readonly string[];
  /** The rules in force (a reload may add some): rule ids, and the output each sends through. */
  rules: () => readonly Rule[];
  /** The delivery queue: the oldest due job. */
  deliveryQueue?: { list(filter: { state: 'pending'; limit: number }): Promise<Array<{ runAt: string }>> };
  /** FHIR subscriptions of the fhir-rest-hook inputs: what each still owes, when it was last heard. */
  fhir?: () => Promise<SubscriptionStatus[]>;
  /** Epoch ms; injected by tests. */
  now?: () => number;
}

const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Metrics {
  readonly registry = new Registry();
  readonly #unsubscribe: () => void;

  constructor(options: MetricsOptions) {
    const { registry } = this;
    const now = options.now ?? Date.now;
    const inputs = new Set(options.inputs);
    const outputs = new Set(options.outputs);
    const input = (name: string) => (inputs.has(name) ? name : OTHER);
    const output = (name: string | undefined) => (name !== undefined && outputs.has(name) ? name : OTHER);
    const ruleIndex = () => new Map(options.rules().map((r) => [r.id, r.send.output]));
    const registers = [registry];
    collectDefaultMetrics({ register: registry, prefix: 'carerelay_' });

    const messages = new Counter({
      name: 'carerelay_messages_received_total',
      help: 'Inbound messages answered, by input, message type, ACK code (HL7) or HTTP status (FHIR), and what the store did (accepted, ignored, rejected, quarantined, duplicate).',
      labelNames: ['input', 'message_type', 'ack_code', 'status'],
      registers,
    });
    const commitFailures = new Counter({
      name: 'carerelay_commit_failures_total',
      help: 'Inbound messages that could not be committed (answered AE or 503: the sender resends).',
      labelNames: ['input'],
      registers,
    });
    const ackLatency = new Histogram({
      name: 'carerelay_ack_latency_seconds',
      help: 'How long an inbound message waited for its durable commit, after which its ACK (or 2xx) goes.',
      labelNames: ['input'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    const lastMessage = new Gauge({
      name: 'carerelay_input_last_message_timestamp_seconds',
      help: 'When each input last had a message answered (Unix seconds); 0 since start without one.',
      labelNames: ['input'],
      registers,
    });
    const triggers = new Counter({ name: 'carerelay_triggers_total', help: 'Triggers committed, by type.', labelNames: ['type'], registers });
    const deliveries = new Counter({
      name: 'carerelay_deliveries_total',
      help: 'Delivery changes by rule, output and status: planned, replanned, cancelled (by routing), sent, suppressed, failed (at send time or dead-lettered).',
      labelNames: ['rule', 'output', 'status'],
      registers,
    });
    const decisions = new Counter({
      name: 'carerelay_decisions_total',
      help: 'Send-time consent and safety decisions by rule, result (allow, deny, move) and reason code (none for an allow).',
      labelNames: ['rule', 'result', 'reason'],
      registers,
    });
    const sendLatency = new Histogram({
      name: 'carerelay_send_latency_seconds',
      help: "Duration of each output's send (one provider call), by output and result (ok, rate_limited, transient, ambiguous, permanent).",
      labelNames: ['output', 'result'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    const circuits = new Gauge({
      name: 'carerelay_output_circuit_open',
      help: "1 while an output's circuit breaker is open (sends held), 0 otherwise.",
      labelNames: ['output'],
      registers,
    });
    const jobs = new Counter({
      name: 'carerelay_queue_job_events_total',
      help: 'Queue job events by queue and event: retry, parked (an ambiguous failure waits for a person), dead (dead-lettered), lease-lost, error.',
      labelNames: ['queue', 'event'],
      registers,
    });

    // Zeros for what is known up front, so a rate() has a series from the first scrape.
    for (const name of inputs) lastMessage.labels(name).set(0);
    for (const type of TRIGGER_TYPES) triggers.labels(type).inc(0);

    this.#unsubscribe = options.events.subscribe((event) => {
      switch (event.type) {
        case 'message': {
          const name = input(event.input);
          messages.labels(name, messageTypeLabel(event.messageType), ackCodeLabel(event.ackCode), MESSAGE_STATUSES.has(event.status) ? event.status : OTHER).inc();
          if (event.commitMs !== undefined) ackLatency.labels(name).observe(event.commitMs / 1000);
          lastMessage.labels(name).set(now() / 1000);
          for (const type of event.triggers) triggers.labels(TRIGGERS.has(type) ? type : OTHER).inc();
          return;
        }
        case 'commit_failed':
          commitFailures.labels(input(event.input)).inc();
          return;
        case 'delivery': {
          const index = ruleIndex();
          const known = index.has(event.rule);
          deliveries.labels(known ? event.rule : OTHER, output(event.output ?? index.get(event.rule)), DELIVERY_EVENTS.includes(event.status) ? event.status : OTHER).inc();
          return;
        }
        case 'decision': {
          const known = options.rules().some((r) => r.id === event.rule);
          const reason = event.reason === undefined ? 'none' : DECISION_REASONS.has(event.reason) ? event.reason : OTHER;
          decisions.labels(known ? event.rule : OTHER, event.result, reason).inc();
          return;
        }
        case 'send':
          sendLatency.labels(output(event.output), SEND_RESULTS.includes(event.result) ? event.result : OTHER).observe(event.ms / 1000);
          return;
        case 'job':
          jobs.labels(event.queue, event.event).inc();
          return;
        case 'circuit':
          circuits.labels(output(event.output)).set(event.state === 'open' ? 1 : 0);
          return;
        default:
          return event satisfies never;
      }
    });

    // Read at scrape time.
    new Gauge({
      name: 'carerelay_deliveries',
      help: 'Stored deliveries by status (failed: dead letters); kept as they change, read without a scan.',
      labelNames: ['status'],
      registers,
      async collect() {
        const counts = await options.store.countDeliveries();
        for (const status of STORED_DELIVERY_STATUSES) this.labels(status).set(counts[status] ?? 0);
      },
    });
    new Gauge({
      name: 'carerelay_queue_depth',
      help: 'Deliveries waiting in the delivery queue (pending: due later, due now, or being sent).',
      labelNames: ['queue'],
      registers,
      async collect() {
        this.labels('deliveries').set((await options.store.countDeliveries()).pending ?? 0);
      },
    });
    new Gauge({
      name: 'carerelay_queue_oldest_due_age_seconds',
      help: 'How long the oldest due delivery job has been waiting past its due time (0: nothing overdue).',
      labelNames: ['queue'],
      registers,
      async collect() {
        const [oldest] = (await options.deliveryQueue?.list({ state: 'pending', limit: 1 })) ?? [];
        this.labels('deliveries').set(oldest === undefined ? 0 : Math.max(0, (now() - Date.parse(oldest.runAt)) / 1000));
      },
    });
    if (options.fhir) {
      const fhir = options.fhir;
      new Gauge({
        name: 'carerelay_fhir_owed_gaps',
        help: 'Ranges of missed FHIR event numbers a subscription still owes (recovered in the background).',
        labelNames: ['input', 'subscription'],
        registers,
        async collect() {
          for (const s of await fhir()) this.labels(input(s.input), s.subscription).set(s.owedGaps);
        },
      });
      new Gauge({
        name: 'carerelay_fhir_silence_seconds',
        help: 'Seconds since a FHIR subscription was last heard from (any notification, heartbeats included); -1 never heard.',
        labelNames: ['input', 'subscription'],
        registers,
        async collect() {
          for (const s of await fhir()) this.labels(input(s.input), s.subscription).set(s.lastHeardAt === undefined ? -1 : Math.max(0, (now() - Date.parse(s.lastHeardAt)) / 1000));
        },
      });
    }
  }

  /** The exposition text (Prometheus text format 0.0.4) and its content type. */
  async scrape(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  close(): void {
    this.#unsubscribe();
  }
}
