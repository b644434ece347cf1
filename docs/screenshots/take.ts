// `npm run screenshots`: a screenshot of each dashboard page, for the README. Starts the
// seeded instance of the browser tests (test/helpers/dashboard-seed.ts: invented patients, a
// dead letter, a review item, a suppression), signs in with the token that has every scope,
// and writes one PNG per page beside this file. Needs Debian's chromium (/usr/bin/chromium).
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { launchChromium, chromiumMissing } from '../../test/helpers/browser.ts';
import { startSeededDashboard, TOKENS } from '../../test/helpers/dashboard-seed.ts';

const OUT = path.dirname(fileURLToPath(import.meta.url));

const missing = chromiumMissing();
if (missing !== undefined) {
  console.error(missing);
  process.exit(1);
}

const seeded = await startSeededDashboard();
const browser = await launchChromium({ viewport: { width: 1280, height: 760 } });
try {
  const page = await browser.context.newPage();
  await page.goto(`${seeded.baseUrl}/ui/login`);
  await page.fill('input[name=token]', TOKENS.lead);
  await page.click('button[type=submit]');
  await page.waitForURL('**/ui/flows');
  // [file name, page, most height shown (px)]
  const shots: Array<[string, string, number]> = [
    ['flows', '/ui/flows', 760],
    ['messages', `/ui/messages`, 560],
    ['message', `/ui/messages/${seeded.ids.bookingMessageId}`, 1300],
    ['timeline', `/ui/patients/${seeded.ids.optedOutPatient}`, 1100],
    ['deliveries', '/ui/deliveries?status=failed', 480],
    ['rules', '/ui/rules', 900],
  ];
  for (const [name, url, maxHeight] of shots) {
    await page.goto(`${seeded.baseUrl}${url}`);
    const height = Math.min(maxHeight, await page.evaluate('document.documentElement.scrollHeight') as number);
    const file = path.join(OUT, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true, clip: { x: 0, y: 0, width: 1280, height } });
    console.log(file);
  }
} finally {
  await browser.close();
  await seeded.stop();
}
