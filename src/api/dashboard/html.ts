// HTML for the dashboard, written as tagged template literals that escape by default.
//
// Why this and not a template engine (liquidjs is already a dependency): every value the pages
// show — message bytes, patient names, reason codes, ids chosen by senders — is untrusted, and
// the one property that matters is that none of it can become markup. Here a value
// interpolated into html`…` is escaped unless it is itself the result of html`…` (SafeHtml),
// so forgetting to escape is impossible rather than a review item; Liquid escapes only what a
// template pipes through `escape` (or everything, with outputEscape, and then `raw` where
// markup is meant). The pages are TypeScript: tsc checks every field a page reads, and there
// are no template files to find, load or keep in step with the code. Pages are small and
// server-rendered; no client framework, a few lines of progressive-enhancement script.
//
// Attribute values are always written in double quotes in the templates; escapeHtml escapes
// both quote characters, so an interpolated value cannot leave its attribute. URLs are built
// from our own paths with encodeURIComponent for every value (href()), never taken whole from
// data, so no `javascript:` URL can appear.

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };
const ESCAPED = /[&<>"'`]/g;

/** Text safe to put in HTML text or a double-quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(ESCAPED, (c) => ESCAPES[c]!);
}

/** Markup that is safe as it is: made by html`…` (or trusted() for constants). */
export class SafeHtml {
  readonly #text: string;
  constructor(text: string) {
    this.#text = text;
  }
  toString(): string {
    return this.#text;
  }
}

/** What a template may interpolate: text (escaped), numbers, markup, lists of these; nothing for null, undefined and booleans. */
export type Renderable = SafeHtml | string | number | boolean | null | undefined | readonly Renderable[];

function render(value: Renderable): string {
  if (value instanceof SafeHtml) return value.toString();
  if (typeof value === 'string') return escapeHtml(value);
  if (typeof value === 'number') return String(value);
  if (Array.isArray(value)) return value.map(render).join('');
  // null, undefined, true, false: `${cond && html`…`}` renders nothing when cond is false.
  return '';
}

/** Markup with every interpolated value escaped (unless it is SafeHtml). */
export function html(strings: TemplateStringsArray, ...values: Renderable[]): SafeHtml {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]!) + strings[i + 1]!;
  return new SafeHtml(out);
}

/** Markup written by this code from constants and numbers only (inline SVG): never data. */
export function trusted(markup: string): SafeHtml {
  return new SafeHtml(markup);
}

/** A dashboard path with its query; every value percent-encoded, empty ones left out. */
export function href(path: string, query: Record<string, string | number | undefined> = {}): string {
  const params = Object.entries(query)
    .filter((entry): entry is [string, string | number] => entry[1] !== undefined && entry[1] !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return params.length === 0 ? path : `${path}?${params.join('&')}`;
}

/** One path segment (ids hold '/', '@', '#'). */
export function segment(value: string): string {
  return encodeURIComponent(value);
}
