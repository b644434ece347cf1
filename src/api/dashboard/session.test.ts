import type { Request } from 'express';
import { describe, expect, it } from 'vitest';
import { cookieValue, csrfMatches, csrfToken, newSession, sameOrigin, servedOverTls, sessionCookie, sessionOf } from './session.ts';

const request = (headers: Record<string, string>, encrypted = false) => ({ headers, socket: { encrypted } }) as unknown as Request;

describe('the session cookie', () => {
  it('round-trips a session; anything else is no session', () => {
    const s = newSession('tok en/+=é');
    const set = sessionCookie(s, false);
    expect(set).toMatch(/; Path=\/ui; Max-Age=43200; HttpOnly; SameSite=Strict$/);
    expect(sessionOf(`other=1; ${set.split(';')[0]}; x=2`)).toEqual(s);
    expect(sessionCookie(s, true)).toMatch(/; Secure$/);
    for (const bad of ['carerelay_ui=v2.aaaaaaaaaaaaaaaaaa.x', 'carerelay_ui=v1.short.x', 'carerelay_ui=v1.aaaaaaaaaaaaaaaaaa.a.b', 'carerelay_ui=v1.aaaaaaaaaaaaaaaaaa.%%', undefined]) {
      expect(sessionOf(bad)).toBeUndefined();
    }
    expect(cookieValue('a=1; b = 2', 'b')).toBe('2');
  });

  it('gives each session its own CSRF token, bound to its token, checked in full', () => {
    const a = newSession('secret');
    const b = newSession('secret');
    expect(csrfToken(a)).not.toBe(csrfToken(b));
    expect(csrfToken({ ...a, token: 'other' })).not.toBe(csrfToken(a));
    expect(csrfMatches(a, csrfToken(a))).toBe(true);
    expect(csrfMatches(a, csrfToken(b))).toBe(false);
    expect(csrfMatches(a, csrfToken(a).slice(0, -1))).toBe(false);
    expect(csrfMatches(a, undefined)).toBe(false);
    expect(csrfMatches(a, [csrfToken(a)])).toBe(false);
  });
});

describe('where a request comes from', () => {
  it('accepts only an Origin (or, without one, a Referer) naming this host', () => {
    expect(sameOrigin(request({ host: 'ops.example:8080', origin: 'https://ops.example:8080' }))).toBe(true);
    expect(sameOrigin(request({ host: 'ops.example:8080', origin: 'https://evil.example' }))).toBe(false);
    expect(sameOrigin(request({ host: 'ops.example:8080', origin: 'null' }))).toBe(false);
    expect(sameOrigin(request({ host: 'ops.example:8080', referer: 'http://ops.example:8080/ui/deliveries' }))).toBe(true);
    expect(sameOrigin(request({ host: 'ops.example:8080', referer: 'http://ops.example.evil:8080/' }))).toBe(false);
    expect(sameOrigin(request({ host: 'ops.example:8080' }))).toBe(false);
    expect(sameOrigin(request({ origin: 'http://ops.example' }))).toBe(false);
  });

  it('tells a page served over TLS, directly or by a proxy', () => {
    expect(servedOverTls(request({}, true))).toBe(true);
    expect(servedOverTls(request({ 'x-forwarded-proto': 'https, http' }))).toBe(true);
    expect(servedOverTls(request({ 'x-forwarded-proto': 'http' }))).toBe(false);
    expect(servedOverTls(request({}))).toBe(false);
  });
});
