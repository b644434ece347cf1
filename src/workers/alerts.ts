// Alerts (docs/operations.md "Alerts"): what an integration engineer must look at, sent once when
// it starts and once when it clears, through the outbound adapters (a signed webhook, email).
//
//   operations events (ops-events.ts) ─▶ windows per input / output / the delivery queue
//   every checkEverySeconds: conditions now ─▶ new ones `firing`, gone ones `resolved`
//     ─▶ one job per notification and destination on the `alerts` queue (retried with backoff,
//        kept across a restart) ─▶ adapter.send
//
// Conditions (config/operations-schema.ts): an input silent for its time; an input's or an
// output's failure rate over the threshold in the window; deliveries dead-lettered in the
// window; the oldest due delivery waiting too long; a FHIR subscription owing missed events or
// silent past twice its heartbeat period; an output's circuit breaker open. A condition is one
// alert, keyed by kind and subject, until it clears: deduplicated by construction.
//
// The state lives in this process: after a restart a condition still true fires again, once.
// Alerts carry configured names, counts and times only — never patient data.
import type { AlertsConfig } from '../config/operations-schema.ts';
import type { Logger } from '../log.ts';
import type { OutboundAdapter, OutboundMessage } from '../outputs/spec.ts';
import type { JobContext, Queue } from '../queue/queue.ts';
import { SendResult, type OpsEvents, type SubscriptionStatus } from './ops-events.ts';
import { BACKGROUND_TIMER, repeat } from './timer.ts';

/** What an alert is about (its `kind`, with the subject it names). */
export const AlertKind = {
  /** An input has received nothing for its configured time. */
  InputSilent: 'input_silent',
  /** An input refused (or could not commit) too many messages in the window. */
  InputErrorRate: 'input_error_rate',
  /** An output failed too many sends in the window. */
  OutputErrorRate: 'output_error_rate',
  /** Deliveries were dead-lettered: a person must look at them (replay or give up). */
  DeadLetters: 'dead_letters',
  /** The oldest due delivery waits past its due time for too long. */
  QueueBacklog: 'queue_backlog',
  /** A FHIR subscription owes missed events. */
  FhirGap: 'fhir_gap',
  /** A FHIR subscription has been silent for more than twice its heartbeat period. */
  FhirHeartbeat: 'fhir_heartbeat',
  /** An output's circuit breaker is open. */
  CircuitOpen: 'circuit_open',
} as const;
export type AlertKind = (typeof AlertKind)[keyof typeof AlertKind];

/** One alert: a condition and what it measured (numbers, names, times only). */
export interface Alert {
  kind: AlertKind;
  /** The input, output, `input/subscription`, or `deliveries` it is about. */
  subject: string;
  /** What was measured against what, for people: e.g. "no message for 62 min (alert after 60)". */
  summary: string;
  detail: Record<string, number | string>;
}

export interface AlertNotice extends Alert {
  state: 'firing' | 'resolved';
  /** When the condition started (ISO). */
  since: string;
  /** When it cleared (resolved only, ISO). */
  resolvedAt?: string;
}

/** A job of the alerts queue: one notice to one destination. */
export interface AlertJob {
  notice: AlertNotice;
  output: string;
  to?: string;
}

/** Name of the queue alert notifications wait in. */
export const ALERT_QUEUE = 'alerts';

/** The rule id alert messages carry (webhook `rule`): they belong to no mapping rule. */
export const ALERT_RULE = 'carerelay.alerts';

/** ACK codes and HTTP statuses that mean an input refused or could not take a message. */
function refused(ackCode: string): boolean {
  return ackCode === 'AR' || ackCode === 'AE' || ackCode === 'CR' || ackCode === 'CE' || /^[45]\d\d$/.test(ackCode);
}

export interface AlertsOptions {
  config: AlertsConfig;
  events: OpsEvents;
  /** Configured inputs (each is watched for silence). */
  inputs: readonly string[];
  /** Running adapters by output name (the destinations of `config.notify`). */
  outputs: ReadonlyMap<string, OutboundAdapter>;
  /** Where notices wait until sent (a queue of its own: `alerts`). */
  queue: Queue<AlertJob>;
  /** The oldest due delivery job, if any (its due time). */
  oldestDue?: () => Promise<string | undefined>;
  /** FHIR subscriptions: what each owes, when last heard, its heartbeat period. */
  fhir?: () => Promise<SubscriptionStatus[]>;
  log: Logger;
  /** Epoch ms; injected by tests. */
  now?: () => number;
}

/** Timestamps of events in a sliding window (oldest first), with whether each was a failure. */
class Window {
  readonly #events: Array<{ at: number; failed: boolean }> = [];

  add(at: number, failed: boolean): void {
    this.#events.push({ at, failed });
  }

  /** Drops what is older than `from`, then counts. */
  count(from: number): { total: number; failed: number } {
    let drop = 0;
    while (drop < this.#events.length && this.#events[drop]!.at < from) drop++;
    this.#events.splice(0, drop);
    return { total: this.#events.length, failed: this.#events.filter((e) => e.failed).length };
  }
}

const minutesText = (ms: number): string => `${Math.round(ms / 60_000)} min`;

export class Alerts {
  readonly #options: AlertsOptions;
  readonly #now: () => number;
  readonly #startedAt: number;
  readonly #lastMessage = new Map<string, number>();
  readonly #inputWindows = new Map<string, Window>();
  readonly #outputWindows = new Map<string, Window>();
  readonly #deadLetters = new Window();
  readonly #circuits = new Map<string, boolean>();
  /** Conditions firing now, by key, with when they started. */
  readonly #firing = new Map<string, { alert: Alert; since: number }>();
  #sequence = 0;
  #repeating: { stop(): void } | undefined;
  #checking: Promise<AlertNotice[]> | undefined;
  readonly #unsubscribe: () => void;

  constructor(options: AlertsOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#startedAt = this.#now();
    this.#unsubscribe = options.events.subscribe((event) => {
      const at = this.#now();
      switch (event.type) {
        case 'message':
          this.#lastMessage.set(event.input, at);
          this.#window(this.#inputWindows, event.input).add(at, refused(event.ackCode));
          return;
        case 'commit_failed':
          this.#window(this.#inputWindows, event.input).add(at, true);
          return;
        case 'send':
          this.#window(this.#outputWindows, event.output).add(at, event.result !== SendResult.Ok);
          return;
        case 'job':
          if (event.queue === 'deliveries' && event.event === 'dead') this.#deadLetters.add(at, true);
          return;
        case 'circuit':
          this.#circuits.set(event.output, event.state === 'open');
          return;
        default:
          return;
      }
    });
  }

  #window(map: Map<string, Window>, name: string): Window {
    let w = map.get(name);
    if (w === undefined) map.set(name, (w = new Window()));
    return w;
  }

  /** Conditions true now (see the top of this file), by key. */
  async conditions(): Promise<Map<string, Alert>> {
    const { config } = this.#options;
    const now = this.#now();
    const out = new Map<string, Alert>();
    const add = (alert: Alert) => out.set(`${alert.kind}/${alert.subject}`, alert);

    for (const input of this.#options.inputs) {
      const minutes = config.silentInput.inputs[input] ?? config.silentInput.afterMinutes;
      if (minutes <= 0) continue;
      const last = this.#lastMessage.get(input);
      const quiet = now - (last ?? this.#startedAt);
      if (quiet > minutes * 60_000) {
        add({
          kind: AlertKind.InputSilent,
          subject: input,
          summary: `input "${input}" has had no message for ${minutesText(quiet)}${last === undefined ? ' (none since the start)' : ''}; alert after ${minutes} min`,
          detail: { silentMinutes: Math.round(quiet / 60_000), afterMinutes: minutes, ...(last !== undefined ? { lastMessageAt: new Date(last).toISOString() } : {}) },
        });
      }
    }
    const rateFrom = now - config.errorRate.windowMinutes * 60_000;
    for (const [kind, map, what] of [
      [AlertKind.InputErrorRate, this.#inputWindows, 'messages refused or not committed'],
      [AlertKind.OutputErrorRate, this.#outputWindows, 'sends failed'],
    ] as const) {
      for (const [name, window] of map) {
        const { total, failed } = window.count(rateFrom);
        if (total < config.errorRate.minEvents || failed / total <= config.errorRate.threshold) continue;
        add({
          kind,
          subject: name,
          summary: `${kind === AlertKind.InputErrorRate ? 'input' : 'output'} "${name}": ${failed} of ${total} ${what} in ${config.errorRate.windowMinutes} min (alert above ${Math.round(config.errorRate.threshold * 100)} %)`,
          detail: { failed, total, rate: Number((failed / total).toFixed(4)), threshold: config.errorRate.threshold, windowMinutes: config.errorRate.windowMinutes },
        });
      }
    }
    const dead = this.#deadLetters.count(now - config.deadLetters.windowMinutes * 60_000).total;
    if (dead >= config.deadLetters.threshold) {
      add({
        kind: AlertKind.DeadLetters,
        subject: 'deliveries',
        summary: `${dead} deliveries dead-lettered in ${config.deadLetters.windowMinutes} min: GET /api/deliveries?status=failed`,
        detail: { count: dead, windowMinutes: config.deadLetters.windowMinutes },
      });
    }
    if (config.queueBacklog.maxAgeMinutes > 0 && this.#options.oldestDue) {
      const due = await this.#options.oldestDue();
      const waited = due === undefined ? 0 : now - Date.parse(due);
      if (waited > config.queueBacklog.maxAgeMinutes * 60_000) {
        add({
          kind: AlertKind.QueueBacklog,
          subject: 'deliveries',
          summary: `the oldest due delivery has waited ${minutesText(waited)} past its due time (alert after ${config.queueBacklog.maxAgeMinutes} min)`,
          detail: { waitedMinutes: Math.round(waited / 60_000), maxAgeMinutes: config.queueBacklog.maxAgeMinutes },
        });
      }
    }
    if (this.#options.fhir && (config.fhir.gaps || config.fhir.heartbeats)) {
      for (const s of await this.#options.fhir()) {
        const subject = `${s.input}/${s.subscription}`;
        if (config.fhir.gaps && s.owedGaps > 0) {
          add({ kind: AlertKind.FhirGap, subject, summary: `FHIR subscription ${subject} owes ${s.owedGaps} range(s) of missed events (GET /api/fhir/subscriptions)`, detail: { owedGaps: s.owedGaps } });
        }
        const silent = now - Date.parse(s.lastHeardAt ?? new Date(this.#startedAt).toISOString());
        if (config.fhir.heartbeats && s.heartbeatPeriodSeconds > 0 && silent > 2 * s.heartbeatPeriodSeconds * 1000) {
          add({
            kind: AlertKind.FhirHeartbeat,
            subject,
            summary: `FHIR subscription ${subject} silent for ${minutesText(silent)}: more than twice its heartbeat period (${s.heartbeatPeriodSeconds} s)`,
            detail: { silentSeconds: Math.round(silent / 1000), heartbeatPeriodSeconds: s.heartbeatPeriodSeconds },
          });
        }
      }
    }
    if (config.circuitOpen) {
      for (const [output, open] of this.#circuits) {
        if (open) add({ kind: AlertKind.CircuitOpen, subject: output, summary: `output "${output}": circuit open, sends are held`, detail: {} });
      }
    }
    return out;
  }

  /**
   * Checks every condition now: new ones are notified `firing`, cleared ones `resolved`; one
   * still firing is not notified again. Resolves with the notices queued. One check at a time.
   */
  async check(): Promise<AlertNotice[]> {
    while (this.#checking) await this.#checking.catch(() => []);
    this.#checking = this.#check();
    try {
      return await this.#checking;
    } finally {
      this.#checking = undefined;
    }
  }

  async #check(): Promise<AlertNotice[]> {
    const now = this.#now();
    const current = await this.conditions();
    const notices: AlertNotice[] = [];
    for (const [key, alert] of current) {
      if (this.#firing.has(key)) continue;
      this.#firing.set(key, { alert, since: now });
      notices.push({ ...alert, state: 'firing', since: new Date(now).toISOString() });
    }
    for (const [key, { alert, since }] of this.#firing) {
      if (current.has(key)) continue;
      this.#firing.delete(key);
      notices.push({ ...alert, state: 'resolved', since: new Date(since).toISOString(), resolvedAt: new Date(now).toISOString() });
    }
    for (const notice of notices) await this.#notify(notice);
    return notices;
  }

  /** Logs the notice and queues one job per destination. */
  async #notify(notice: AlertNotice): Promise<void> {
    const { log, config, queue } = this.#options;
    const about = notice.kind === AlertKind.OutputErrorRate || notice.kind === AlertKind.CircuitOpen ? { output: notice.subject } : notice.subject === 'deliveries' ? {} : { input: notice.subject };
    (notice.state === 'firing' ? log.warn : log.info).call(log, `alert.${notice.state}`, { reason: notice.kind, ...about });
    const id = `${Date.parse(notice.since)}-${++this.#sequence}`;
    for (const target of config.notify) {
      await queue.add({
        id: `alert-${notice.kind}-${id}-${notice.state}-${target.output}`.replace(/[^A-Za-z0-9._-]/g, '_'),
        data: { notice, output: target.output, ...(target.to !== undefined ? { to: target.to } : {}) },
        runAt: new Date(this.#now()),
        // Receivers dedupe on the webhook id; email has no such key: a notice mailed twice is harmless.
        idempotent: true,
      });
    }
  }

  /** The alerts queue's handler: one notice to one destination through its adapter. */
  readonly send = async (job: JobContext<AlertJob>): Promise<void> => {
    const { notice, output, to } = job.data;
    const adapter = this.#options.outputs.get(output);
    if (adapter === undefined) throw new Error(`alerts: output "${output}" is not running`);
    await adapter.send(alertMessage(job.id, notice, adapter, to), { deliveryId: job.id, attempt: job.attempt, signal: job.signal });
  };

  /** Resolves once no check runs and every notice queued so far was handed to its output (or failed for now). */
  async idle(): Promise<void> {
    await this.#checking?.catch(() => []);
    await this.#options.queue.idle();
  }

  /** Checks every checkEverySeconds (a timer that does not keep the process alive) and sends queued notices. */
  start(): void {
    this.#options.queue.process(this.send, { concurrency: 2 });
    const every = this.#options.config.checkEverySeconds * 1000;
    this.#repeating = repeat(BACKGROUND_TIMER, every, every, () => this.check(), (error) =>
      this.#options.log.error('alert.check_failed', { code: (error as Error).name }),
    );
  }

  async stop(): Promise<void> {
    this.#repeating?.stop();
    this.#unsubscribe();
    await this.#checking?.catch(() => []);
    await this.#options.queue.close();
  }
}

/**
 * A notice as the adapters take messages. It is an operational message to staff, not to a
 * patient: no consent applies, and it carries purpose care.logistics so the smtp output sends it
 * as transactional mail (no List-Unsubscribe); the webhook output posts `fields.alert`.
 */
export function alertMessage(id: string, notice: AlertNotice, adapter: Pick<OutboundAdapter, 'channel'>, to?: string): OutboundMessage {
  const headline = `[CareRelay] ${notice.state === 'firing' ? 'FIRING' : 'RESOLVED'} ${notice.kind}: ${notice.subject}`;
  const text = [
    headline,
    '',
    notice.summary,
    notice.state === 'firing' ? `Since ${notice.since}.` : `From ${notice.since} until ${notice.resolvedAt}: cleared.`,
    '',
  ].join('\n');
  return {
    deliveryId: id,
    ruleId: ALERT_RULE,
    purpose: 'care.logistics',
    channel: adapter.channel,
    ...(to !== undefined ? { to } : {}),
    language: 'en',
    subject: headline,
    text,
    fields: { alert: { state: notice.state, kind: notice.kind, subject: notice.subject, since: notice.since, ...(notice.resolvedAt ? { resolvedAt: notice.resolvedAt } : {}), summary: notice.summary, detail: notice.detail } },
  };
}
