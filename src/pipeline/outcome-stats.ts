// The statistics of outcome reports (docs/operations.md "Outcomes"): a proportion with its 95 %
// confidence interval, the difference between two independent proportions with its interval,
// and the small-cell suppression of de-identified exports. Pure: no I/O, numbers in, numbers out.
//
// Proportion — Wilson score interval (E. B. Wilson, "Probable inference, the law of succession,
// and statistical inference", J. Am. Stat. Assoc. 22 (1927) 209–212; method 3 of R. G. Newcombe,
// "Two-sided confidence intervals for the single proportion: comparison of seven methods",
// Stat. Med. 17 (1998) 857–872). For x events among n, p = x/n and z the normal quantile:
//
//   centre = (p + z²/2n) / (1 + z²/n)
//   half   = z / (1 + z²/n) · √( p(1−p)/n + z²/4n² )
//   [low, high] = centre ∓ half
//
// Unlike the textbook p ± z√(p(1−p)/n) (Wald), it never leaves [0, 1], is not zero-width at
// 0/n or n/n, and keeps close to 95 % coverage at the small counts a rule's variant has.
//
// Difference p1 − p2 — Newcombe's hybrid score interval (method 10 of R. G. Newcombe, "Interval
// estimation for the difference between independent proportions: comparison of eleven
// methods", Stat. Med. 17 (1998) 873–890), built from the two Wilson intervals [l1, u1], [l2, u2]:
//
//   low  = (p1 − p2) − √( (p1 − l1)² + (u2 − p2)² )
//   high = (p1 − p2) + √( (u1 − p1)² + (p2 − l2)² )
//
// Checked against the papers' own worked examples (outcome-stats.test.ts): 81/263 gives
// 0.2553–0.3662; 56/70 − 48/80 gives 0.0524–0.3339.

/** The standard normal quantile for a two-sided 95 % interval (Φ⁻¹(0.975)). */
export const Z_95 = 1.959963984540054;

/** A proportion (or a difference of two) with its confidence interval. */
export interface Estimate {
  value: number;
  low: number;
  high: number;
}

/** Wilson score interval of x events among n; undefined when n is 0 (no proportion). */
export function wilson(x: number, n: number, z: number = Z_95): Estimate | undefined {
  if (!(n > 0)) return undefined;
  if (!(x >= 0 && x <= n)) throw new RangeError(`wilson: ${x} events among ${n} is not a proportion`);
  const p = x / n;
  const z2 = z * z;
  const denominator = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denominator;
  const half = (z / denominator) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  // At x = 0 (x = n) the low (high) bound is exactly 0 (1); floating point would miss it by an ulp.
  return { value: p, low: x === 0 ? 0 : centre - half, high: x === n ? 1 : centre + half };
}

/**
 * Newcombe's hybrid score interval of p1 − p2 (x1/n1 − x2/n2, independent samples);
 * undefined when either sample is empty.
 */
export function newcombe(x1: number, n1: number, x2: number, n2: number, z: number = Z_95): Estimate | undefined {
  const a = wilson(x1, n1, z);
  const b = wilson(x2, n2, z);
  if (a === undefined || b === undefined) return undefined;
  const d = a.value - b.value;
  return {
    value: d,
    low: d - Math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2),
    high: d + Math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2),
  };
}

/**
 * Smallest count a de-identified export shows: counts of 1 to 10 are withheld, as the CMS cell
 * size suppression policy (and most US state and EU statistical offices) require of tables
 * about patients. Zero is shown: it identifies no one.
 */
export const MIN_CELL = 11;

/**
 * Which counts of one row to withhold in a de-identified export. `parts` are counts that add
 * up to `total` (a partition: showed + no-show + cancelled …). Primary suppression: every
 * part from 1 to MIN_CELL − 1. Secondary (complementary) suppression: when that leaves exactly
 * one part withheld, it could be recovered as total minus the others, so the smallest part
 * still shown is withheld too (a non-zero one when there is one). A total below MIN_CELL withholds the whole row (`total` in the result).
 * Returns the names withheld (parts, and `total` when the row is withheld).
 */
export function suppressedCells(total: number, parts: Readonly<Record<string, number>>): Set<string> {
  const names = Object.keys(parts);
  if (total > 0 && total < MIN_CELL) return new Set([...names, 'total']);
  const withheld = new Set(names.filter((name) => parts[name]! > 0 && parts[name]! < MIN_CELL));
  if (withheld.size === 1) {
    // The smallest part still shown, a non-zero one when there is one: withholding a zero
    // beside a 3 would only say "3 between them".
    const rest = names.filter((name) => !withheld.has(name));
    const next = [...rest.filter((name) => parts[name]! > 0), ...rest.filter((name) => parts[name] === 0)].sort(
      (a, b) => Number(parts[a] === 0) - Number(parts[b] === 0) || parts[a]! - parts[b]! || a.localeCompare(b),
    )[0];
    if (next !== undefined) withheld.add(next);
  }
  return withheld;
}
