import { describe, expect, it } from 'vitest';
import { escapeHtml, href, html, SafeHtml, trusted } from './html.ts';

describe('html`…`', () => {
  it('escapes every interpolated string, in text and in quoted attributes', () => {
    const evil = `"><script>alert('x')</script>&\``;
    expect(html`<p title="${evil}">${evil}</p>`.toString()).toBe(
      '<p title="&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#96;">&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&#96;</p>',
    );
  });

  it('keeps markup made by html`…` (and trusted constants), joins lists, and renders nothing for null, undefined and booleans', () => {
    const items = ['<a>', 'b'].map((x) => html`<li>${x}</li>`);
    expect(html`<ul>${items}</ul>${null}${undefined}${false}${true}${0}`.toString()).toBe('<ul><li>&lt;a&gt;</li><li>b</li></ul>0');
    expect(html`${trusted('<rect/>')}`.toString()).toBe('<rect/>');
    expect(html`x` instanceof SafeHtml).toBe(true);
    // A string that looks like markup is still text.
    expect(html`${'<b>' as unknown as SafeHtml}`.toString()).toBe('&lt;b&gt;');
  });

  it('builds links whose every value is percent-encoded, leaving out empty ones', () => {
    expect(href('/ui/messages', { controlId: 'A&B "C"', sender: '', before: undefined, limit: 5 })).toBe('/ui/messages?controlId=A%26B%20%22C%22&limit=5');
    expect(escapeHtml(href('/ui/x', { a: '1', b: '2' }))).toBe('/ui/x?a=1&amp;b=2');
  });
});
