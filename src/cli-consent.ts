// `carerelay patient …` and `carerelay consent add`: the consent admin API from a terminal.
// They talk to a running CareRelay over HTTP (--url, default $CARERELAY_URL or
// http://127.0.0.1:8080) with $CARERELAY_ADMIN_TOKEN, so a change takes effect — and cancels
// what it forbids — in the running process, exactly as through the API.
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

export const CONSENT_USAGE = `  consent add FILE [--url URL]             record a FHIR R4 Consent (JSON file) for its patient
  patient consent|decisions|disclosures ID [--url URL] [--json]
                                           the patient's effective consent per purpose and
                                           channel (and why), the send-time decisions, the
                                           disclosures (HIPAA accounting)
  patient opt-out ID [--channel C] [--purpose P]...
  patient grant|revoke ID --purpose P... --channel C [--address A]
  patient no-contact ID [--clear]          set (or clear) the organisation's no-contact flag
  patient erase ID --yes                   GDPR erasure: pending messages cancelled, the
                                           patient's data removed, an erasure record kept
`;

function fail(message: string): number {
  process.stderr.write(`carerelay: ${message}\n`);
  return 2;
}

async function call(url: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const token = process.env.CARERELAY_ADMIN_TOKEN;
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(`${url.replace(/\/+$/, '')}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  } catch (error) {
    throw new Error(`cannot reach CareRelay at ${url} (${(error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message}): is it running? set --url or CARERELAY_URL`);
  }
  const text = await res.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: shown as text
  }
  return { status: res.status, json };
}

function report(result: { status: number; json: unknown }, asJson: boolean, lines?: (json: any) => string[]): number {
  if (result.status >= 400) {
    const problem = result.json as { title?: string; detail?: string; issue?: Array<{ expression?: string[]; diagnostics?: string }> };
    const detail = problem.issue ? problem.issue.map((i) => `${i.expression?.join(', ') ?? ''}: ${i.diagnostics ?? ''}`).join('\n') : problem.detail ?? problem.title ?? String(result.json);
    process.stderr.write(`carerelay: ${result.status} ${detail}\n`);
    return 1;
  }
  if (asJson || !lines) process.stdout.write(`${JSON.stringify(result.json, null, 2)}\n`);
  else for (const line of lines(result.json)) process.stdout.write(`${line}\n`);
  return 0;
}

/** `carerelay consent …` / `carerelay patient …`; returns the exit code. */
export async function cmdConsent(command: 'consent' | 'patient', args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      url: { type: 'string', default: process.env.CARERELAY_URL ?? 'http://127.0.0.1:8080' },
      json: { type: 'boolean', default: false },
      channel: { type: 'string' },
      purpose: { type: 'string', multiple: true },
      address: { type: 'string' },
      clear: { type: 'boolean', default: false },
      yes: { type: 'boolean', default: false },
    },
  });
  const url = values.url as string;
  const [action, target] = positionals;
  try {
    if (command === 'consent') {
      if (action !== 'add' || target === undefined) return fail('usage: carerelay consent add FILE [--url URL]');
      let resource: unknown;
      try {
        resource = JSON.parse(await readFile(target, 'utf8'));
      } catch (error) {
        return fail(`${target}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `not JSON (${(error as Error).message})`}`);
      }
      return report(await call(url, 'POST', '/api/consents', resource), values.json as boolean, (j) => [`stored ${j.id} for patient ${j.patientId}; ${j.suppressed.length} pending message(s) suppressed`]);
    }
    if (action === undefined || target === undefined) return fail(`usage:\n${CONSENT_USAGE}`);
    const patient = `/api/patients/${encodeURIComponent(target)}`;
    const purposes = values.purpose as string[] | undefined;
    const changed = (j: any) => [`recorded ${j.event.action} ${j.event.id}; ${j.suppressed.length} pending message(s) suppressed`];
    switch (action) {
      case 'consent':
        return report(await call(url, 'GET', `${patient}/consent`), values.json as boolean, (j) => [
          `patient ${j.patientId}${j.patientIds.length > 1 ? ` (merged: ${j.patientIds.join(', ')})` : ''}${j.deceased ? ' — deceased' : ''}`,
          ...j.states.map((s: any) => `  ${s.purpose.padEnd(15)} ${s.channel.padEnd(8)} ${s.allowed ? 'allowed' : `denied (${s.reason})`} — ${s.basis}`),
        ]);
      case 'decisions':
        return report(await call(url, 'GET', `${patient}/decisions`), values.json as boolean, (j) =>
          j.items.map((d: any) => `${d.at}  ${d.deliveryId}  ${d.result}${d.reason ? ` ${d.reason}` : ''}${d.retryAt ? ` retry ${d.retryAt}` : ''} — ${d.basis}`),
        );
      case 'disclosures':
        return report(await call(url, 'GET', `${patient}/disclosures`), values.json as boolean, (j) =>
          j.items.map((d: any) => `${d.at}  ${d.purpose} ${d.channel} via ${d.output}${d.recipient ? ` to ${d.recipient}` : ''}  ${d.deliveryId}`),
        );
      case 'opt-out':
        return report(await call(url, 'POST', `${patient}/opt-outs`, { ...(values.channel ? { channel: values.channel } : {}), ...(purposes ? { purposes } : {}) }), values.json as boolean, changed);
      case 'grant':
      case 'revoke':
        if (!purposes || values.channel === undefined) return fail(`patient ${action} needs --purpose P (one or more) and --channel C`);
        return report(
          await call(url, 'POST', `${patient}/${action === 'grant' ? 'grants' : 'revocations'}`, { purposes, channel: values.channel, ...(values.address ? { address: values.address } : {}) }),
          values.json as boolean,
          changed,
        );
      case 'no-contact':
        return report(await call(url, values.clear ? 'DELETE' : 'PUT', `${patient}/no-contact`), values.json as boolean, changed);
      case 'erase':
        if (values.yes !== true) return fail('patient erase removes the patient\'s data for good: add --yes to confirm');
        return report(await call(url, 'POST', `${patient}/erase`), values.json as boolean, (j) => j.erasures.map((e: any) => `erased ${e.patientId} at ${e.at}; ${e.cancelled.length} pending message(s) cancelled`));
      default:
        return fail(`unknown patient command "${action}"\n${CONSENT_USAGE}`);
    }
  } catch (error) {
    process.stderr.write(`carerelay: ${(error as Error).message}\n`);
    return 1;
  }
}
