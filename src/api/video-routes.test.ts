// The /v/<token> pages over a real socket, with the links' answers given: what each state shows,
// in the link's language and zone, and which POSTs may join. The whole path (ingest, store,
// links) is test/video.test.ts and test/video-e2e.test.ts.
import type { Server } from 'node:http';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../log.ts';
import type { VideoLink } from '../store/store.ts';
import { LinkState, type LinkStatus } from '../video/link.ts';
import { createVideoRouter } from './video-routes.ts';

const VENDOR = 'https://vendor.example/j/1?pwd=x';
const link: VideoLink = {
  tokenHash: 'a'.repeat(64),
  appointmentId: 'A1',
  patientId: 'P1',
  deliveryId: 'video-join@appointment/A1#0',
  start: '2027-06-15T14:30:00+02:00',
  zone: 'Europe/Paris',
  language: 'fr',
  mintedAt: '2027-06-15T12:00:00Z',
};

/** Token → what the links say about it. */
const answers: Record<string, { status: LinkStatus; link?: VideoLink }> = {
  open: { status: { state: LinkState.Open, closesAt: Date.parse('2027-06-15T15:30:00+02:00') }, link },
  early: { status: { state: LinkState.Early, opensAt: Date.parse('2027-06-15T13:30:00+02:00') }, link },
  earlyEn: { status: { state: LinkState.Early, opensAt: Date.parse('2027-06-15T13:30:00+02:00') }, link: { ...link, language: 'en', zone: 'America/New_York' } },
  moved: { status: { state: LinkState.Moved }, link },
  unknown: { status: { state: LinkState.Unknown } },
};

let server: Server;
let base: string;
const publicUrl = 'https://care.example.org';

beforeAll(async () => {
  const app = express();
  app.use(
    createVideoRouter({
      links: {
        lookup: async (token) => answers[token] ?? answers.unknown!,
        join: async (token) => ({ ...(answers[token] ?? answers.unknown!), ...(answers[token]?.status.state === LinkState.Open ? { url: VENDOR } : {}) }),
      },
      log: silentLogger,
      publicUrl: () => publicUrl,
    }),
  );
  server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const address = server.address();
  base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
});
afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const get = (token: string) => fetch(`${base}/v/${token}`);
const post = (token: string, headers: Record<string, string> = {}) => fetch(`${base}/v/${token}`, { method: 'POST', redirect: 'manual', headers });

describe('video link pages', () => {
  it('an open link shows the visit and a button posting back here; nothing is cached, indexed or framed', async () => {
    const res = await get('open');
    expect(res.status).toBe(200);
    const html = await res.text();
    expect(html).toContain('<html lang="fr">');
    expect(html).toContain('mardi 15 juin 2027');
    expect(html).toContain('14:30');
    expect(html).toContain('<form method="post"><button type="submit">Rejoindre la téléconsultation</button></form>');
    expect(html).not.toContain('vendor.example');
    expect(html).not.toContain('<script');
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(res.headers.get('x-robots-tag')).toBe('noindex, nofollow');
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    expect(res.headers.get('content-security-policy')).toContain("frame-ancestors 'none'");
    expect(res.headers.get('referrer-policy')).toBe('same-origin');
  });

  it('too early: says when it opens, in the link zone and language, with no button', async () => {
    const fr = await get('early');
    expect(fr.status).toBe(200);
    const text = await fr.text();
    expect(text).toContain('Ce lien ouvrira le mardi 15 juin 2027');
    expect(text).toContain('13:30');
    expect(text).not.toContain('<form');
    const en = await (await get('earlyEn')).text();
    expect(en).toContain('This link opens on Tuesday, June 15, 2027');
    expect(en).toContain('7:30');
    expect((await post('early')).status).toBe(200);
    expect((await post('early')).headers.get('location')).toBeNull();
  });

  it('a dead link says why (410), an unknown one is 404; neither joins', async () => {
    const moved = await get('moved');
    expect(moved.status).toBe(410);
    expect(await moved.text()).toContain('a été déplacé');
    const unknown = await get('unknown');
    expect(unknown.status).toBe(404);
    expect(await unknown.text()).toContain('This link is not valid');
    for (const token of ['moved', 'unknown']) expect((await post(token)).headers.get('location')).toBeNull();
  });

  it('the button joins from our own page (or a client that says nothing), never from another site', async () => {
    const allowed: Array<Record<string, string>> = [{}, { 'sec-fetch-site': 'same-origin' }, { 'sec-fetch-site': 'none' }, { origin: publicUrl }, { origin: 'null' }, { origin: base }];
    for (const headers of allowed) {
      const res = await post('open', headers);
      expect(res.status, JSON.stringify(headers)).toBe(303);
      expect(res.headers.get('location')).toBe(VENDOR);
      expect(res.headers.get('referrer-policy')).toBe('no-referrer');
      expect(res.headers.get('cache-control')).toBe('no-store');
    }
    const refused: Array<Record<string, string>> = [{ 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-site' }, { origin: 'https://evil.example' }];
    for (const headers of refused) {
      const res = await post('open', headers);
      expect(res.status, JSON.stringify(headers)).toBe(403);
      expect(res.headers.get('location')).toBeNull();
      expect(await res.text()).toContain('rouvrez le lien');
    }
    const big = await fetch(`${base}/v/open`, { method: 'POST', redirect: 'manual', body: 'x'.repeat(5000), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(big.status).toBe(413);
    expect(big.headers.get('location')).toBeNull();
  });
});
