// The README's "One complete example", run as a newcomer runs it: the shipped configuration
// (connectors/ and mappings/), the booking printed by the README's printf, sent over MLLP.
// The clinic is in Paris and the booking says 14:30 (+0200): the French confirmation must
// say 14:30, whatever zone the server runs in (docs/consent.md "Time arithmetic").
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hl7Field, mllpExchange, startServer, type InProcessServer } from './helpers/server.ts';

const REPO = path.resolve(import.meta.dirname, '..');

/** The segments the README's printf writes into booking.hl7. */
function readmeBooking(): string {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const block = /printf '%s\\r' \\\n([\s\S]*?) > booking\.hl7/.exec(readme);
  if (!block) throw new Error('README.md no longer has the printf … > booking.hl7 example');
  const segments = [...block[1]!.matchAll(/'([^']*)'/g)].map((m) => m[1]!);
  return `${segments.join('\r')}\r`;
}

let dir: string;
let server: InProcessServer;

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'carerelay-readme-'));
  cpSync(path.join(REPO, 'connectors'), path.join(dir, 'connectors'), { recursive: true });
  cpSync(path.join(REPO, 'mappings'), path.join(dir, 'mappings'), { recursive: true });
  // The README's own variables; port 0 so parallel test files never collide.
  server = await startServer(dir, { MLLP_PORT: '0', HTTP_PORT: '0', CARERELAY_DATA: path.join(dir, 'data'), TZ: 'UTC' });
});
afterAll(async () => {
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('README "One complete example"', () => {
  it('the booking is acknowledged AA and its French confirmation says 15 juin 2027 à 14:30', async () => {
    const ack = await mllpExchange(server.mllpPort(), readmeBooking());
    expect(hl7Field(ack!, 'MSA', 1)).toBe('AA');
    await server.deliveries.idle();

    const res = await fetch(`http://127.0.0.1:${server.httpPort}/api/outbox`);
    const { items } = (await res.json()) as { items: Array<{ deliveryId: string; language: string; subject?: string; text: string }> };
    const confirmation = items.find((e) => e.deliveryId.startsWith('booking-confirmation@'));
    expect(confirmation).toBeDefined();
    expect(confirmation!.language).toBe('fr');
    expect(confirmation!.text).toContain('15 juin 2027 à 14:30');
    expect(confirmation!.text).not.toContain('12:30');

    // The 24 h SMS is planned for the day before at the same wall-clock time, in Paris.
    const deliveries = (await (await fetch(`http://127.0.0.1:${server.httpPort}/api/deliveries`)).json()) as { items: Array<{ ruleId: string; dueAt: string }> };
    const sms = deliveries.items.find((d) => d.ruleId === 'sms-reminder-24h');
    expect(sms?.dueAt).toBe('2027-06-14T14:30:00+02:00');
  });
});
