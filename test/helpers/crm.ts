// What the tests of the marketing and CRM outputs share: deps with in-memory receipts and
// contact holdings, secrets from a map, a clock the test moves, and a marketing message of the
// shape the deliver worker hands an adapter (the rule's send.to, its mapped fields).
import { memoryHoldings, memoryReceiptLedger, StandInFault } from '../../src/outputs/conformance.ts';
import type { OutboundMessage, OutputDeps, SendContext } from '../../src/outputs/spec.ts';
import type { Answer, HttpStandIn } from './http-standin.ts';

export interface CrmDeps extends OutputDeps {
  ledger: ReturnType<typeof memoryReceiptLedger>;
  holdingsLedger: ReturnType<typeof memoryHoldings>;
  /** Sets the clock (epoch ms). */
  setNow(ms: number): void;
}

export function crmDeps(secrets: Record<string, string>, nowMs = Date.parse('2030-03-15T13:30:00Z')): CrmDeps {
  let now = nowMs;
  const ledger = memoryReceiptLedger();
  const holdingsLedger = memoryHoldings();
  return {
    secret: (ref) => {
      const value = 'env' in ref ? secrets[ref.env] : undefined;
      if (value === undefined) throw new Error(`no test secret for ${JSON.stringify(ref)}`);
      return value;
    },
    receipts: ledger,
    holdings: holdingsLedger,
    now: () => new Date(now),
    ledger,
    holdingsLedger,
    setNow(ms) {
      now = ms;
    },
  };
}

/** A service.info message about patient P1, addressed by email, carrying name and language. */
export const marketingMessage: OutboundMessage = {
  deliveryId: 'newsletter-invitation@appointment/A-1001#0',
  ruleId: 'newsletter-invitation',
  purpose: 'service.info',
  channel: 'crm',
  to: 'Pat.Doe@Example.org',
  language: 'en',
  text: '{}',
  fields: { patient: { name: { given: ['Pat', 'Q'], family: 'Doe' }, language: 'en' } },
  patientId: 'P1',
};

export const sendContext = (attempt = 1, deliveryId = marketingMessage.deliveryId): SendContext => ({ deliveryId, attempt, signal: new AbortController().signal });

/**
 * The conformance suite's faults on an HTTP stand-in: the tool's own rate-limit answer and
 * refusal, a 503 (or the tool's), a hang, a reset.
 */
export function standInFaults(standIn: HttpStandIn, tool: { rateLimit: () => void; rejected: Answer; unavailable?: Answer }): (fault: StandInFault) => void {
  return (fault) => {
    if (fault === StandInFault.RateLimited) tool.rateLimit();
    else if (fault === StandInFault.Unavailable) standIn.failNext({ kind: 'answer', ...(tool.unavailable ?? { status: 503 }) });
    else if (fault === StandInFault.Rejected) standIn.failNext({ kind: 'answer', ...tool.rejected });
    else if (fault === StandInFault.Hang) standIn.failNext({ kind: 'hang' });
    else standIn.failNext({ kind: 'reset' });
  };
}
