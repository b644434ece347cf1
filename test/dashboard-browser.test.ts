// The dashboard in a real browser (Debian's chromium through playwright-core): what an
// engineer on call does — sign in (a wrong token is refused), find a message by its control
// id, open a patient's timeline and read why a message was suppressed, replay a dead letter
// and see it delivered — then a token without phi sees masked values, and a POST without the
// form's CSRF token is refused. One browser, one page, in that order.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { chromiumMissing, launchChromium, type Browser } from './helpers/browser.ts';
import { CANARY, startSeededDashboard, TOKENS, type SeededDashboard } from './helpers/dashboard-seed.ts';

const missing = chromiumMissing();
if (missing !== undefined) console.warn(`SKIPPED: ${missing}`);

describe.skipIf(missing !== undefined)(`dashboard in a browser${missing !== undefined ? ` (skipped: ${missing})` : ''}`, () => {
  let seeded: SeededDashboard;
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    [seeded, browser] = await Promise.all([startSeededDashboard(), launchChromium()]);
    page = await browser.context.newPage();
    // Actions ask before they are sent (dashboard.js data-confirm): the engineer says yes.
    page.on('dialog', (dialog) => void dialog.accept());
  });
  afterAll(async () => {
    await browser?.close();
    await seeded?.stop();
  });

  async function signIn(token: string): Promise<void> {
    await page.goto(`${seeded.baseUrl}/ui/flows`);
    await page.waitForURL(/\/ui\/login/);
    await page.fill('input[name=token]', token);
    await page.click('button[type=submit]');
  }

  it('refuses a wrong token, then signs in with a right one', async () => {
    await signIn('not-a-token');
    expect(await page.getByRole('alert').innerText()).toBe('That token is not one this server knows.');
    expect(page.url()).toContain('/ui/login');
    await page.fill('input[name=token]', TOKENS.lead);
    await page.click('button[type=submit]');
    await page.waitForURL(/\/ui\/flows$/);
    expect(await page.locator('header .who').innerText()).toContain('integration-lead');
    expect(await page.locator('#inputs tr[data-input="ehr-mllp"]').innerText()).toContain('listening');
    // The cookie holding the token is out of the page's reach.
    expect(await page.evaluate('document.cookie')).not.toContain('carerelay_ui');
  });

  it('finds a message by its control id and shows it laid out, with its ACK and triggers', async () => {
    await page.click('nav >> text=Messages');
    await page.fill('input[name=controlId]', seeded.ids.bookingControlId);
    await page.click('form.filters button[type=submit]');
    // The booking and its quarantined copy (same control id, other bytes): the accepted one.
    expect(await page.locator('#messages tbody tr').count()).toBe(2);
    await page.click(`#messages tr:has(.badge:text-is("accepted")) a:has-text("${seeded.ids.bookingControlId}")`);
    await page.waitForURL(new RegExp(`/ui/messages/${seeded.ids.bookingMessageId}$`));
    const pid5 = page.locator('table.segments tr', { has: page.locator('td.field', { hasText: /^PID-5$/ }) });
    expect(await pid5.locator('td.value').innerText()).toBe('MARTIN^Claire');
    expect(await page.locator('pre.raw').first().innerText()).toContain(`MSA|AA|${seeded.ids.bookingControlId}`);
    expect(await page.locator('table.routing').first().innerText()).toContain('condition_false');
  });

  it("opens the patient's timeline and shows why a message was suppressed, and by which record", async () => {
    await page.click('nav >> text=Timeline');
    await page.fill('input[name=id] >> nth=0', seeded.ids.optedOutPatient);
    await page.click('form.filters button[type=submit] >> nth=0');
    await page.waitForURL(new RegExp(`/ui/patients/${seeded.ids.optedOutPatient}$`));
    const suppressed = page.locator('ol.timeline li', { hasText: 'decision: suppressed' });
    expect(await suppressed.count()).toBe(1);
    expect(await suppressed.innerText()).toMatch(/opted_out[\s\S]*record ce-\d+/);
    // The consent entry itself is on the timeline (phi).
    expect(await page.locator('ol.timeline li', { hasText: 'consent: opt_out' }).count()).toBe(1);
  });

  it('replays a dead letter and sees it delivered', async () => {
    const id = seeded.ids.deadLetters[0]!;
    const before = seeded.scheduling.requests.length;
    await page.click('nav >> text=Deliveries');
    await page.check(`input[name=ids][value="${id}"]`);
    await page.click('button:has-text("Replay ticked")');
    expect(await page.locator('.flash.notice').innerText()).toBe('Replayed 1 delivery.');
    await seeded.server.deliveries.idle();
    expect(seeded.scheduling.requests.slice(before)).toEqual([expect.objectContaining({ id, status: 204 })]);
    await page.goto(`${seeded.baseUrl}/ui/deliveries/${encodeURIComponent(id)}`);
    expect(await page.locator('.sub .badge').first().innerText()).toBe('sent');
    // The replay is audited with the token's name.
    expect(await seeded.server.store.listAudit({ target: `delivery/${id}` })).toEqual([expect.objectContaining({ actor: 'integration-lead', action: 'delivery.replay', outcome: 'stored' })]);
  });

  it('refuses a POST without the CSRF token, even from the page itself', async () => {
    // Same origin, with the session cookie: only the form's token is missing.
    const status = await page.evaluate(
      `fetch('/ui/deliveries/replay', { method: 'POST', body: new URLSearchParams({ mode: 'ids', ids: ${JSON.stringify(seeded.ids.deadLetters[1]!)} }) }).then((r) => r.status)`,
    );
    expect(status).toBe(403);
    expect((await seeded.server.store.getDelivery(seeded.ids.deadLetters[1]!))?.status).toBe('failed');
  });

  it('shows a token without phi masked values', async () => {
    await page.click('button:has-text("Sign out")');
    await page.waitForURL(/\/ui\/login/);
    await page.fill('input[name=token]', TOKENS.viewer);
    await page.click('button[type=submit]');
    await page.waitForURL(/\/ui\/flows$/);
    const [message] = await seeded.server.store.listMessages({ controlId: seeded.ids.canaryControlId });
    await page.goto(`${seeded.baseUrl}/ui/messages/${message!.id}`);
    const pid5 = page.locator('table.segments tr', { has: page.locator('td.field', { hasText: /^PID-5$/ }) });
    expect(await pid5.locator('td.value').innerText()).toBe('•••');
    expect(await page.locator('.masked-note').first().innerText()).toContain('needs the phi scope');
    expect(await page.content()).not.toContain(CANARY);
    // No replay button for a token without operate.
    await page.goto(`${seeded.baseUrl}/ui/deliveries`);
    expect(await page.locator('button:has-text("Replay")').count()).toBe(0);
  });
});
