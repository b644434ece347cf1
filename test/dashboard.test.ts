// The dashboard over HTTP, without a browser: the session cookie and its flags, the defences of
// every action (Origin, CSRF token, scope), what each scope sees, escaping of what senders
// wrote, and the actions' audit. The browser walk-through is dashboard-browser.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTENT_SECURITY_POLICY } from '../src/api/dashboard/dashboard.ts';
import { MASK } from '../src/api/dashboard/message-view.ts';
import { csrfToken } from '../src/api/dashboard/session.ts';
import { CANARY, startSeededDashboard, TOKENS, type SeededDashboard } from './helpers/dashboard-seed.ts';
import { hl7Field, mllpExchange, startServer, writeConfigDir } from './helpers/server.ts';

let seeded: SeededDashboard;
beforeAll(async () => {
  seeded = await startSeededDashboard();
});
afterAll(async () => {
  await seeded?.stop();
});

/** A browser's part of the exchange: a cookie jar, the CSRF token of the last page, Origin on POSTs. */
class UiClient {
  cookies = new Map<string, string>();
  csrf = '';
  constructor(readonly base: string) {}

  private cookieHeader(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  private keep(res: Response): void {
    for (const line of res.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair!.indexOf('=');
      const value = pair!.slice(eq + 1);
      if (value === '') this.cookies.delete(pair!.slice(0, eq));
      else this.cookies.set(pair!.slice(0, eq), value);
    }
  }

  async get(path: string): Promise<{ status: number; text: string; res: Response }> {
    const res = await fetch(`${this.base}${path}`, { redirect: 'manual', headers: { cookie: this.cookieHeader() } });
    this.keep(res);
    const text = await res.text();
    const csrf = /name="_csrf" value="([^"]+)"/.exec(text);
    if (csrf) this.csrf = csrf[1]!;
    return { status: res.status, text, res };
  }

  async post(path: string, form: Record<string, string | string[]>, options: { origin?: string | null; csrf?: string | null; headers?: Record<string, string> } = {}) {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(form)) for (const one of Array.isArray(v) ? v : [v]) body.append(k, one);
    const csrf = options.csrf === undefined ? this.csrf : options.csrf;
    if (csrf !== null) body.set('_csrf', csrf);
    const origin = options.origin === undefined ? this.base : options.origin;
    const res = await fetch(`${this.base}${path}`, {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie: this.cookieHeader(), 'content-type': 'application/x-www-form-urlencoded', ...(origin !== null ? { origin } : {}), ...options.headers },
      body,
    });
    this.keep(res);
    return { status: res.status, text: await res.text(), res };
  }

  async login(token: string, headers: Record<string, string> = {}) {
    await this.get('/ui/login');
    return this.post('/ui/login', { token, next: '/ui/flows' }, { headers });
  }
}

describe('signing in', () => {
  it('sends a caller without a session to the login form, and keeps the token in an HttpOnly, SameSite=Strict cookie after it', async () => {
    const ui = new UiClient(seeded.baseUrl);
    const first = await ui.get('/ui/messages?status=rejected');
    expect(first.status).toBe(303);
    expect(first.res.headers.get('location')).toBe('/ui/login?next=%2Fui%2Fmessages%3Fstatus%3Drejected');
    const form = await ui.get('/ui/login');
    expect(form.text).toContain('name="token"');
    const before = ui.cookies.get('carerelay_ui')!;

    const wrong = await ui.post('/ui/login', { token: 'not-a-token', next: '/ui/flows' });
    expect(wrong.status).toBe(401);
    expect(wrong.text).toContain('That token is not one this server knows.');
    expect((await ui.get('/ui/flows')).status).toBe(303);

    const ok = await ui.login(TOKENS.oncall);
    expect(ok.status).toBe(303);
    expect(ok.res.headers.get('location')).toBe('/ui/flows');
    const [cookie] = ok.res.headers.getSetCookie();
    expect(cookie).toMatch(/^carerelay_ui=v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+; Path=\/ui; Max-Age=43200; HttpOnly; SameSite=Strict$/);
    // A new session id at sign-in: one planted before it is not kept.
    expect(ui.cookies.get('carerelay_ui')!.split('.')[1]).not.toBe(before.split('.')[1]);
    const flows = await ui.get('/ui/flows');
    expect(flows.status).toBe(200);
    expect(flows.text).toContain('oncall');
  });

  it('marks the cookie Secure when the page was served over TLS (a proxy saying X-Forwarded-Proto: https)', async () => {
    const ui = new UiClient(seeded.baseUrl);
    const ok = await ui.login(TOKENS.viewer, { 'x-forwarded-proto': 'https' });
    expect(ok.res.headers.getSetCookie()[0]).toMatch(/; HttpOnly; SameSite=Strict; Secure$/);
  });

  it('answers every page with a strict CSP, no framing, no caching', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.viewer);
    const { res } = await ui.get('/ui/rules');
    expect(res.headers.get('content-security-policy')).toBe(CONTENT_SECURITY_POLICY);
    expect(CONTENT_SECURITY_POLICY).toContain("script-src 'self'");
    expect(CONTENT_SECURITY_POLICY).not.toContain('unsafe-inline');
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    expect(res.headers.get('cache-control')).toBe('no-store');
    // The login form too, and the static files are ours only.
    expect((await fetch(`${seeded.baseUrl}/ui/login`)).headers.get('content-security-policy')).toBe(CONTENT_SECURITY_POLICY);
    expect((await fetch(`${seeded.baseUrl}/ui/static/evil.js`)).status).toBe(404);
  });

  it('signs out: the cookie is cleared and pages ask for a sign-in again', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.viewer);
    await ui.get('/ui/flows');
    const out = await ui.post('/ui/logout', {});
    expect(out.status).toBe(303);
    expect(ui.cookies.has('carerelay_ui')).toBe(false);
    expect((await ui.get('/ui/flows')).status).toBe(303);
  });
});

describe('actions: Origin, CSRF token, scope', () => {
  it('refuses a POST from another origin, without an origin, without the CSRF token, or with another session\'s', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.oncall);
    await ui.get('/ui/deliveries');
    const id = seeded.ids.deadLetters[0]!;
    const form = { mode: 'ids', ids: id, back: '/ui/deliveries' };
    expect((await ui.post('/ui/deliveries/replay', form, { origin: 'http://evil.example' })).status).toBe(403);
    expect((await ui.post('/ui/deliveries/replay', form, { origin: null })).status).toBe(403);
    const noToken = await ui.post('/ui/deliveries/replay', form, { csrf: null });
    expect(noToken.status).toBe(403);
    expect(noToken.text).toContain('security token is missing or out of date');

    const other = new UiClient(seeded.baseUrl);
    await other.login(TOKENS.oncall);
    await other.get('/ui/deliveries');
    expect(other.csrf).not.toBe(ui.csrf);
    expect((await ui.post('/ui/deliveries/replay', form, { csrf: other.csrf })).status).toBe(403);
    // Nothing was replayed, and nothing was audited.
    expect((await seeded.server.store.getDelivery(id))?.status).toBe('failed');
    expect(await seeded.server.store.listAudit({ target: `delivery/${id}` })).toEqual([]);
    // A sign-in from another site is refused too.
    const login = new UiClient(seeded.baseUrl);
    await login.get('/ui/login');
    expect((await login.post('/ui/login', { token: TOKENS.lead }, { origin: 'http://evil.example' })).status).toBe(403);
    expect((await login.post('/ui/login', { token: TOKENS.lead }, { csrf: null })).status).toBe(403);
  });

  it('refuses an action to a token without operate, and audits one with it under the token\'s name', async () => {
    const viewer = new UiClient(seeded.baseUrl);
    await viewer.login(TOKENS.viewer);
    const page = await viewer.get(`/ui/messages/${seeded.ids.rejectedMessageId}`);
    expect(page.text).not.toContain('>Reprocess<');
    const refused = await viewer.post(`/ui/messages/${seeded.ids.rejectedMessageId}/reprocess`, {});
    expect(refused.status).toBe(403);
    expect(refused.text).toContain('needs the &quot;operate&quot; scope');

    const oncall = new UiClient(seeded.baseUrl);
    await oncall.login(TOKENS.oncall);
    await oncall.get(`/ui/messages/${seeded.ids.rejectedMessageId}`);
    const done = await oncall.post(`/ui/messages/${seeded.ids.rejectedMessageId}/reprocess`, {});
    expect(done.status).toBe(303);
    const [entry] = await seeded.server.store.listAudit({ target: `message/${seeded.ids.rejectedMessageId}` });
    expect(entry).toMatchObject({ actor: 'oncall', action: 'message.reprocess', outcome: 'stored' });
    // Still rejected (the fix has not been made): the outcome is said on the page it leads to.
    const next = await oncall.get(done.res.headers.get('location')!);
    expect(next.text).toMatch(/Reprocessed message #\d+ as message #\d+: rejected, ACK AR/);
  });
});

describe('what each scope sees', () => {
  it('masks patient content without phi, everywhere the pages show a message or a trigger', async () => {
    const [message] = await seeded.server.store.listMessages({ controlId: seeded.ids.canaryControlId });
    const viewer = new UiClient(seeded.baseUrl);
    await viewer.login(TOKENS.viewer);
    const lead = new UiClient(seeded.baseUrl);
    await lead.login(TOKENS.lead);
    const pages = [`/ui/messages/${message!.id}`, `/ui/patients/${seeded.ids.canaryPatient}`, '/ui/messages', `/ui/deliveries?status=all`];
    for (const path of pages) {
      const seen = await viewer.get(path);
      expect(seen.status).toBe(200);
      expect(seen.text, path).not.toContain(CANARY);
      expect(seen.text, path).not.toContain('hugo@example.org');
    }
    const masked = await viewer.get(`/ui/messages/${message!.id}`);
    expect(masked.text).toContain(MASK);
    expect(masked.text).toContain('needs the <code>phi</code> scope');
    // The header fields are not patient content: MSH is shown whole.
    expect(masked.text).toContain(seeded.ids.canaryControlId);
    // The text search reads message bodies: not offered, and refused if asked.
    expect(masked.text).not.toContain('name="q"');
    expect((await viewer.get(`/ui/messages?q=${CANARY}`)).status).toBe(400);

    const whole = await lead.get(`/ui/messages/${message!.id}`);
    expect(whole.text).toContain(CANARY);
    expect((await lead.get(`/ui/messages?q=${CANARY}`)).text).toContain(seeded.ids.canaryControlId);
  });

  it('never puts patient content in a log line', () => {
    expect(JSON.stringify(seeded.logs)).not.toContain(CANARY);
  });
});

describe('escaping what senders wrote', () => {
  it('shows markup in a message, a search and an id as text, never as markup', async () => {
    const attack = '<img src=x onerror=alert(1)>';
    const text = [
      `MSH|^~\\&|EPIC|NORTHCLINIC|CARERELAY|CR|20300101090000||SIU^S12^SIU_S12|XSS-"1'<b>|P|2.5.1`,
      'SCH|PL-X|AP-XSS||||NEW|CHK^Check-up^LOCAL||30|MIN|||||||||||||||Booked',
      'TQ1|1||||||20300315100000|20300315103000',
      `PID|1||E9999^^^NORTHCLINIC^MR||${attack}^Eve||19800101|F`,
      '',
    ].join('\r');
    const ack = await mllpExchange(seeded.server.mllpPorts.get('ehr-mllp')!, text);
    expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
    const [message] = await seeded.server.store.listMessages({ patientId: 'E9999' });
    const lead = new UiClient(seeded.baseUrl);
    await lead.login(TOKENS.lead);
    const page = await lead.get(`/ui/messages/${message!.id}`);
    expect(page.text).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(page.text).not.toContain('<img');
    expect(page.text).not.toContain('<b>');
    const search = await lead.get(`/ui/messages?controlId=${encodeURIComponent('"><script>alert(1)</script>')}`);
    expect(search.status).toBe(200);
    expect(search.text).not.toContain('<script>alert');
    expect(search.text).toContain('&quot;&gt;&lt;script&gt;');
  });
});

describe('pages', () => {
  it('Flows: each input with its state and ACK codes, each output with its dead letters; the queue', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.viewer);
    const { text } = await ui.get('/ui/flows');
    const row = (attr: string, name: string) => new RegExp(`<tr data-${attr}="${name}">([\\s\\S]*?)</tr>`).exec(text)?.[1] ?? '';
    expect(row('input', 'ehr-mllp')).toContain('listening');
    expect(row('input', 'ehr-mllp')).toMatch(/>AA<\/span>\d+/);
    expect(row('input', 'ehr-mllp')).toMatch(/>AR<\/span>\d/);
    expect(row('input', 'lab-mllp')).toContain('no message yet');
    expect(row('output', 'scheduling-hook')).toMatch(/>failed<\/span>2/);
    expect(row('output', 'outbox-email')).toMatch(/>suppressed<\/span>\d/);
    expect(text).toContain('Delivery queue');
    expect(text).toMatch(/parked for review: 1/);
  });

  it('Messages: found by control id; the message laid out as segments, with its triggers and why each rule planned', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.lead);
    const list = await ui.get(`/ui/messages?controlId=${seeded.ids.bookingControlId}`);
    expect(list.text).toContain(`/ui/messages/${seeded.ids.bookingMessageId}`);
    expect((await ui.get('/ui/messages?status=nope')).status).toBe(400);
    const { text } = await ui.get(`/ui/messages/${seeded.ids.bookingMessageId}`);
    expect(text).toMatch(/PID-5<\/td><td>Patient Name<\/td><td class="value">MARTIN\^Claire/);
    expect(text).toContain('MSA|AA|SIU-240611-0001');
    expect(text).toMatch(/<code>sms-reminder-24h<\/code><\/td><td><span class="badge [a-z]+">planned<\/span>/);
    expect(text).toMatch(/<code>crm-sync<\/code><\/td><td><span class="badge [a-z]+">skipped<\/span><\/td><td><code>condition_false<\/code>/);
  });

  it('Rules: per rule and variant, deliveries by status and suppression reason', async () => {
    const ui = new UiClient(seeded.baseUrl);
    await ui.login(TOKENS.viewer);
    const { text } = await ui.get('/ui/rules');
    const section = (id: string) => new RegExp(`<section class="panel rule" id="rule-${id}">([\\s\\S]*?)</section>`).exec(text)?.[1] ?? '';
    expect(section('booking-confirmation')).toMatch(/opted_out<\/span>1/);
    expect(section('sms-reminder-24h')).toContain('<code>short</code>');
    expect(section('sms-reminder-24h')).toContain('<code>friendly</code>');
    expect(section('scheduling-sync')).toMatch(/webhook_rejected<\/span>2/);
  });
});

describe('tasks', () => {
  it("Tasks: what the replies left for staff, linked by id; closed by a token with operate, under its name", async () => {
    const task = await seeded.server.store.addStaffTask({
      key: 'reply:seeded',
      kind: 'write_back_denied',
      createdAt: new Date().toISOString(),
      patientId: 'MRN-TASK',
      appointmentId: 'APPT-TASK',
      promptId: 'sms-reminder-24h@appointment/APPT-TASK#0',
      output: 'ehr-fhir',
      code: 'appointment_fulfilled',
    });
    const viewer = new UiClient(seeded.baseUrl);
    await viewer.login(TOKENS.viewer);
    const open = await viewer.get('/ui/tasks');
    expect(open.status).toBe(200);
    expect(open.text).toContain('<a href="/ui/tasks" class="current" aria-current="page">Tasks</a>');
    expect(open.text).toContain('The EHR refused the answer as written back');
    expect(open.text).toContain('<code>appointment_fulfilled</code>');
    expect(open.text).toContain('href="/ui/appointments/APPT-TASK"');
    expect(open.text).toContain('Closing a task needs the <code>operate</code> scope.');
    expect(open.text).not.toContain(`action="/ui/tasks/${task.id}/done"`);
    expect((await viewer.post(`/ui/tasks/${task.id}/done`, {})).status).toBe(403);
    expect((await seeded.server.store.listStaffTasks({ status: 'open' })).map((t) => t.id)).toContain(task.id);

    const oncall = new UiClient(seeded.baseUrl);
    await oncall.login(TOKENS.oncall);
    expect((await oncall.get('/ui/tasks')).text).toContain(`action="/ui/tasks/${task.id}/done"`);
    const done = await oncall.post(`/ui/tasks/${task.id}/done`, {});
    expect(done.status).toBe(303);
    expect((await oncall.get(done.res.headers.get('location')!)).text).toContain(`Task ${task.id} closed.`);
    expect((await seeded.server.store.listStaffTasks({ status: 'done' })).find((t) => t.id === task.id)).toMatchObject({ doneBy: 'oncall' });
    expect((await oncall.get('/ui/tasks?status=done')).text).toContain('oncall');
    expect((await oncall.get('/ui/tasks?status=later')).status).toBe(400);
  });
});

describe('without any token configured', () => {
  it('lets the local caller in without a sign-in, and still wants the CSRF token on actions', async () => {
    const config = writeConfigDir();
    const server = await startServer(config);
    try {
      const ui = new UiClient(`http://127.0.0.1:${server.httpPort}`);
      const flows = await ui.get('/ui/flows');
      expect(flows.status).toBe(200);
      expect(flows.text).toContain('local');
      expect(flows.text).not.toContain('Sign out');
      expect(ui.cookies.get('carerelay_ui')).toMatch(/^v1\.[A-Za-z0-9_-]+\.$/);
      expect((await ui.post('/ui/deliveries/replay', { mode: 'ids', ids: 'x' }, { csrf: null })).status).toBe(403);
      // The session's token is its id's HMAC with an empty key (no admin token to key it with).
      const sid = ui.cookies.get('carerelay_ui')!.split('.')[1]!;
      expect((await ui.post('/ui/deliveries/replay', { mode: 'ids', ids: 'x' }, { csrf: csrfToken({ sid, token: '' }) })).status).toBe(303);
    } finally {
      await server.stop();
      config.remove();
    }
  });
});
