import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { dataDirUnsubscribeKey, renderVariables, unsubscribeLinks } from './unsubscribe.ts';

const NOW = Date.parse('2025-06-10T10:00:00Z');
const links = unsubscribeLinks({ key: Buffer.from('k1'), publicUrl: 'https://cr.example.org', ttlDays: 60 });
const tokenOf = (url: string) => url.slice('https://cr.example.org/unsubscribe/'.length);

describe('unsubscribe links', () => {
  it('name their delivery until they expire', () => {
    const url = links.url('satisfaction-survey@appointment/A-1#0', NOW);
    expect(url).toMatch(/^https:\/\/cr\.example\.org\/unsubscribe\/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
    expect(links.verify(tokenOf(url), NOW + 59 * 86_400_000)).toMatchObject({ ok: true, deliveryId: 'satisfaction-survey@appointment/A-1#0' });
    expect(links.verify(tokenOf(url), NOW + 60 * 86_400_000)).toEqual({ ok: false, reason: 'expired' });
  });

  it('refuse a token signed with another key, edited, or not a token', () => {
    const other = unsubscribeLinks({ key: Buffer.from('k2'), publicUrl: 'https://cr.example.org', ttlDays: 60 });
    expect(links.verify(tokenOf(other.url('d', NOW)), NOW)).toEqual({ ok: false, reason: 'forged' });
    const [payload, mac] = tokenOf(links.url('survey@appointment/A-1#0', NOW)).split('.');
    const edited = Buffer.from(JSON.stringify({ d: 'survey@appointment/A-2#0', e: NOW / 1000 + 86_400 })).toString('base64url');
    expect(links.verify(`${edited}.${mac}`, NOW)).toEqual({ ok: false, reason: 'forged' });
    expect(links.verify(`${payload}`, NOW)).toEqual({ ok: false, reason: 'malformed' });
    expect(links.verify('../../etc/passwd', NOW)).toEqual({ ok: false, reason: 'malformed' });
  });

  it('go in every non-care email', () => {
    expect(renderVariables({ id: 'd', channel: 'email', purpose: 'survey' }, links, NOW)).toEqual({ unsubscribe_url: expect.stringContaining('/unsubscribe/') });
    expect(renderVariables({ id: 'd', channel: 'email', purpose: 'care.logistics' }, links, NOW)).toBeUndefined();
    expect(renderVariables({ id: 'd', channel: 'sms', purpose: 'survey' }, links, NOW)).toBeUndefined();
  });

  it('without a configured secret, a key kept in the data dir (mode 600), the same on every start', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'carerelay-unsub-'));
    try {
      const a = dataDirUnsubscribeKey(path.join(dir, 'data'));
      expect(a.length).toBe(64);
      expect(dataDirUnsubscribeKey(path.join(dir, 'data')).equals(a)).toBe(true);
      expect(statSync(path.join(dir, 'data', 'unsubscribe.key')).mode & 0o777).toBe(0o600);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
