// What an engineer does with the admin API and the CLI after review, over real sockets:
// reprocess a rejected message after a configuration fix (and a restart), release a
// quarantined copy, each audited under the token's name; token scopes (read, phi, operate);
// search by patient, message type and trigger type, raw text for phi only; unknown filters
// refused.
import { writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { adtMessage, runCli, mllpExchange, siuMessage, startServer, writeConfigDir, type InProcessServer, type TestConfigDir } from './helpers/server.ts';

const TOKENS = {
  VIEWER_TOKEN: 'viewer-token-0123456789abcdef',
  ONCALL_TOKEN: 'oncall-token-0123456789abcdef',
  LEAD_TOKEN: 'lead-token-0123456789abcdef0123',
};
const adminTokens = [
  { name: 'viewer', env: 'VIEWER_TOKEN', scopes: ['read'] },
  { name: 'oncall', env: 'ONCALL_TOKEN', scopes: ['read', 'operate'] },
  { name: 'lead', env: 'LEAD_TOKEN', scopes: ['read', 'phi', 'operate'] },
];
type Who = 'viewer' | 'oncall' | 'lead';
const tokenOf: Record<Who, string> = { viewer: TOKENS.VIEWER_TOKEN, oncall: TOKENS.ONCALL_TOKEN, lead: TOKENS.LEAD_TOKEN };

let config: TestConfigDir;
let server: InProcessServer;

function call(who: Who, route: string, method = 'GET'): Promise<Response> {
  return fetch(`http://127.0.0.1:${server.httpPort}${route}`, { method, headers: { authorization: `Bearer ${tokenOf[who]}` } });
}

async function json<T>(who: Who, route: string, method = 'GET', status = 200): Promise<T> {
  const res = await call(who, route, method);
  const body = await res.text();
  expect(res.status, `${method} ${route}: ${body}`).toBe(status);
  return JSON.parse(body) as T;
}

interface Summary {
  id: string;
  controlId: string;
  status: string;
  ackCode: string;
  messageType: string;
  patientId?: string;
  origin?: string;
  replaces?: string;
  replacedBy?: string;
  triggerIds: string[];
}

const MFN = (controlId: string) =>
  `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300301070000+0000||MFN^M02^MFN_M02|${controlId}|P|2.5.1\rMFI|PRA||UPD\r`;

async function byControlId(controlId: string): Promise<Summary[]> {
  return (await json<{ items: Summary[] }>('viewer', `/api/messages?controlId=${encodeURIComponent(controlId)}`)).items;
}

/** A configuration fix: the connectors file edited, then CareRelay restarted on the same data. */
async function restartWith(from: string, to: string): Promise<void> {
  await server.stop();
  const file = path.join(config.dir, 'connectors', 'test.yaml');
  writeFileSync(file, readFileSync(file, 'utf8').replaceAll(from, to));
  server = await startServer(config, TOKENS);
}

beforeAll(async () => {
  // The configuration as first deployed: message types CareRelay does not handle are refused.
  config = writeConfigDir({ unknownMessageTypes: 'reject', adminTokens });
  server = await startServer(config, TOKENS);
});

afterAll(async () => {
  await server?.stop();
  config?.remove();
});

describe('reprocess a rejected message after a configuration fix', () => {
  let rejectedId: string;
  let retryId: string;

  it('the message refused under the first configuration is kept with its AR', async () => {
    const ack = (await mllpExchange(server.mllpPort(), MFN('OPS-MFN-1')))!;
    expect(parseHl7(ack.toString('utf8')).get('MSA-1')).toBe('AR');
    const [stored] = await byControlId('OPS-MFN-1');
    expect(stored).toMatchObject({ status: 'rejected', ackCode: 'AR' });
    rejectedId = stored!.id;
  });

  it('after the fix and a restart, POST /reprocess stores a new attempt beside it, audited under the token name', async () => {
    await restartWith('unknownMessageTypes: reject', 'unknownMessageTypes: accept');

    // read alone may not act.
    expect((await call('viewer', `/api/messages/${rejectedId}/reprocess`, 'POST')).status).toBe(403);
    const retry = await json<Summary & { ack: string; links: Record<string, string> }>('oncall', `/api/messages/${rejectedId}/reprocess`, 'POST', 201);
    expect(retry).toMatchObject({ status: 'ignored', ackCode: 'AA', origin: 'reprocess', replaces: rejectedId, controlId: 'OPS-MFN-1' });
    retryId = retry.id;
    expect(parseHl7(retry.ack).get('MSA-2')).toBe('OPS-MFN-1');

    const original = await json<Summary & { audit: Array<Record<string, string>>; links: Record<string, string> }>('viewer', `/api/messages/${rejectedId}`);
    expect(original).toMatchObject({ status: 'rejected', replacedBy: retryId, links: { replacedBy: `/api/messages/${retryId}` } });
    expect(original.audit).toEqual([
      expect.objectContaining({ actor: 'oncall', action: 'message.reprocess', target: `message/${rejectedId}`, outcome: 'stored', result: `message/${retryId}` }),
    ]);
    expect(Date.parse(original.audit[0]!.at!)).not.toBeNaN();
  });

  it('the sender resending the same bytes now gets the new answer, and nothing new is stored', async () => {
    const ack = (await mllpExchange(server.mllpPort(), MFN('OPS-MFN-1')))!;
    expect(parseHl7(ack.toString('utf8')).get('MSA-1')).toBe('AA');
    expect((await byControlId('OPS-MFN-1')).map((m) => m.id)).toEqual([retryId, rejectedId]);
  });

  it('a second reprocess of the original is refused (409) and audited too', async () => {
    const res = await call('oncall', `/api/messages/${rejectedId}/reprocess`, 'POST');
    expect(res.status).toBe(409);
    expect(((await res.json()) as { detail: string }).detail).toContain(`message ${retryId}`);
    const audit = await json<{ items: Array<{ outcome: string }> }>('viewer', `/api/audit?target=message/${rejectedId}`);
    expect(audit.items.map((e) => e.outcome)).toEqual(['refused:already_replaced', 'stored']);
    expect((await call('oncall', `/api/messages/${retryId}/reprocess`, 'POST')).status).toBe(409); // ignored, not rejected
    expect((await call('oncall', '/api/messages/999999/reprocess', 'POST')).status).toBe(404);
  });
});

describe('release a quarantined copy', () => {
  it('the copy becomes a message of its own with its trigger; a resend of it is answered AA, the original keeps its key', async () => {
    const first = siuMessage({ controlId: 'OPS-Q-1', appointmentId: 'AP-OPS-Q1' });
    const copy = siuMessage({ controlId: 'OPS-Q-1', appointmentId: 'AP-OPS-Q2' }); // the sender reused MSH-10
    expect(parseHl7((await mllpExchange(server.mllpPort(), first))!.toString('utf8')).get('MSA-1')).toBe('AA');
    expect(parseHl7((await mllpExchange(server.mllpPort(), copy))!.toString('utf8')).get('MSA-1')).toBe('AE');
    const quarantined = (await byControlId('OPS-Q-1')).find((m) => m.status === 'quarantined')!;

    const released = await json<Summary>('oncall', `/api/messages/${quarantined.id}/release`, 'POST', 201);
    expect(released).toMatchObject({ status: 'accepted', origin: 'release', replaces: quarantined.id, ackCode: 'AA' });
    expect(released.triggerIds).toHaveLength(1);
    const triggers = await json<{ items: Array<{ id: string; appointmentId: string }> }>('viewer', `/api/triggers?messageId=${released.id}`);
    expect(triggers.items).toEqual([expect.objectContaining({ appointmentId: 'AP-OPS-Q2' })]);

    expect(parseHl7((await mllpExchange(server.mllpPort(), copy))!.toString('utf8')).get('MSA-1')).toBe('AA');
    expect(parseHl7((await mllpExchange(server.mllpPort(), first))!.toString('utf8')).get('MSA-1')).toBe('AA');
    expect(await byControlId('OPS-Q-1')).toHaveLength(3);
  });
});

describe('the CLI acts through the running server', () => {
  const cli = runCli;

  it('carerelay reprocess ID talks to the admin API with the named token, and says why one is refused', async () => {
    await restartWith('missingFieldAck: AR', 'missingFieldAck: AE');
    const noAppointment = siuMessage({ controlId: 'OPS-CLI-1', appointmentId: 'X' }).replace('SCH|PL-X|X|', 'SCH|||');
    await mllpExchange(server.mllpPort(), noAppointment);
    const [stored] = await byControlId('OPS-CLI-1');
    const url = `http://127.0.0.1:${server.httpPort}`;
    const done = await cli(['reprocess', '--url', url, '--token-env', 'ONCALL_TOKEN', stored!.id], { ONCALL_TOKEN: TOKENS.ONCALL_TOKEN });
    expect(done.stdout).toMatch(new RegExp(`^message ${stored!.id} reprocessed as message \\d+: rejected, ACK AE\\n$`));
    expect(done.code).toBe(0);
    const again = await cli(['reprocess', '--url', url, '--token-env', 'VIEWER_TOKEN', stored!.id], { VIEWER_TOKEN: TOKENS.VIEWER_TOKEN });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`message ${stored!.id}: not reprocessed (403): this request needs the "operate" scope; token "viewer" has read`);
  });
});

describe('scopes: patient content needs phi', () => {
  let messageId: string;
  beforeAll(async () => {
    await mllpExchange(server.mllpPort(), siuMessage({ controlId: 'OPS-PHI-1', appointmentId: 'AP-OPS-PHI', patientId: 'PAT-OPS-1' }));
    messageId = (await byControlId('OPS-PHI-1'))[0]!.id;
  });

  it('read sees ids, types and statuses; phi also sees the raw message and the trigger bodies', async () => {
    const viewer = await json<Record<string, unknown> & { triggers: Array<Record<string, unknown>> }>('viewer', `/api/messages/${messageId}`);
    expect(viewer).not.toHaveProperty('raw');
    expect(viewer).not.toHaveProperty('rawBase64');
    expect(viewer.triggers[0]).toMatchObject({ type: 'appointment.booked', patientId: 'PAT-OPS-1', appointmentId: 'AP-OPS-PHI', deliveries: [] });
    expect(viewer.triggers[0]).not.toHaveProperty('patient');
    const lead = await json<{ raw: string; triggers: Array<{ patient: { name: unknown } }> }>('lead', `/api/messages/${messageId}`);
    expect(lead.raw).toContain('DOE^Test');
    expect(lead.triggers[0]!.patient.name).toEqual({ family: 'DOE', given: ['Test'] });
    expect((await call('viewer', '/api/outbox')).status).toBe(403);
    expect((await call('lead', '/api/outbox')).status).toBe(200);
  });

  it('searching the raw text (q) needs phi; the answer names the missing scope', async () => {
    const refused = await call('viewer', '/api/messages?q=doe%5Etest');
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { detail: string }).detail).toBe('searching the raw messages (q) needs the "phi" scope; token "viewer" has read');
    const found = await json<{ items: Summary[] }>('lead', '/api/messages?q=doe%5Etest&controlId=OPS-PHI-1');
    expect(found.items.map((m) => m.id)).toEqual([messageId]);
  });

  it('GET /api/triggers/:id explains routing: the message it came from, the rules that matched, skipped rules when recorded', async () => {
    const [summary] = await byControlId('OPS-PHI-1');
    await server.deliveries.idle();
    const explained = await json<{ trigger: Record<string, unknown>; messageId: string; routing: Record<string, unknown>; links: Record<string, unknown> }>(
      'viewer',
      `/api/triggers/${encodeURIComponent(summary!.triggerIds[0]!)}`,
    );
    expect(explained).toMatchObject({
      trigger: { id: summary!.triggerIds[0], type: 'appointment.booked', patientId: 'PAT-OPS-1' },
      messageId,
      routing: { routed: true, matched: [] }, // no mappings in this configuration
      links: { message: `/api/messages/${messageId}`, deliveries: [] },
    });
    expect(explained.trigger).not.toHaveProperty('patient');
  });
});

describe('search and unknown filters', () => {
  beforeAll(async () => {
    await mllpExchange(server.mllpPort(), siuMessage({ controlId: 'OPS-S-1', appointmentId: 'AP-OPS-S1', patientId: 'PAT-OPS-S' }));
    await mllpExchange(server.mllpPort(), siuMessage({ controlId: 'OPS-S-2', appointmentId: 'AP-OPS-S1', patientId: 'PAT-OPS-S', event: 'S15' }));
    await mllpExchange(server.mllpPort(), adtMessage({ controlId: 'OPS-S-3', patientId: 'PAT-OPS-S' }));
    // Refused (no appointment id), yet still found by the patient it names.
    await mllpExchange(server.mllpPort(), siuMessage({ controlId: 'OPS-S-4', appointmentId: 'X', patientId: 'PAT-OPS-S' }).replace('SCH|PL-X|X|', 'SCH|||'));
  });
  const ids = async (query: string) => (await json<{ items: Summary[] }>('viewer', `/api/messages?${query}`)).items.map((m) => m.controlId);

  it('finds messages by patient id, message type (exact or every event) and trigger type', async () => {
    expect(await ids('patientId=PAT-OPS-S')).toEqual(['OPS-S-4', 'OPS-S-3', 'OPS-S-2', 'OPS-S-1']);
    expect(await ids('patientId=PAT-OPS-S&messageType=SIU%5ES15')).toEqual(['OPS-S-2']);
    expect(await ids('patientId=PAT-OPS-S&messageType=SIU')).toEqual(['OPS-S-4', 'OPS-S-2', 'OPS-S-1']);
    expect(await ids('patientId=PAT-OPS-S&triggerType=appointment.cancelled')).toEqual(['OPS-S-2']);
    expect(await ids('patientId=PAT-OPS-S&triggerType=encounter.started')).toEqual(['OPS-S-3']);
  });

  it('finds triggers by patient id and by stored message id', async () => {
    const triggers = await json<{ items: Array<{ type: string }> }>('viewer', '/api/triggers?patientId=PAT-OPS-S');
    expect(triggers.items.map((t) => t.type)).toEqual(['encounter.started', 'appointment.cancelled', 'appointment.booked']);
    const [cancel] = await byControlId('OPS-S-2');
    const ofMessage = await json<{ items: Array<{ type: string }> }>('viewer', `/api/triggers?messageId=${cancel!.id}`);
    expect(ofMessage.items.map((t) => t.type)).toEqual(['appointment.cancelled']);
  });

  it.each([
    ['/api/messages?messageTyp=SIU', 'messageTyp'],
    ['/api/messages?patient=PAT-OPS-S', 'patient'],
    ['/api/triggers?message=1', 'message'],
    ['/api/deliveries?state=pending', 'state'],
    ['/api/audit?who=oncall', 'who'],
  ])('refuses an unknown filter with 400 naming it: %s', async (route, name) => {
    const res = await call('lead', route);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { detail: string }).detail).toMatch(new RegExp(`^unknown filter "${name}"; this endpoint takes `));
  });
});
