// SMS keywords (docs/consent.md "Keywords"): a reply is matched case-insensitively after
// trimming spaces and punctuation around it; anything else is not a keyword (a patient
// writing "stop sending me reminders at 7am" is a message for a person, not an opt-out).
//
//   opt-out   STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT, "OPT OUT",
//             plus the tenant's localized list (France: ARRET, ARRÊT)
//   opt-in    START, UNSTOP — re-grant only what a keyword revoked
//   help      HELP
// The list follows the CTIA guidelines and Twilio's default opt-out handling; the localized
// words come from the policy (keywords.optOut).

export const KeywordKind = {
  OptOut: 'opt_out',
  OptIn: 'opt_in',
  Help: 'help',
} as const;
export type KeywordKind = (typeof KeywordKind)[keyof typeof KeywordKind];

export const OPT_OUT_KEYWORDS: readonly string[] = ['STOP', 'STOPALL', 'UNSUBSCRIBE', 'CANCEL', 'END', 'QUIT', 'REVOKE', 'OPTOUT', 'OPT OUT'];
export const OPT_IN_KEYWORDS: readonly string[] = ['START', 'UNSTOP'];
export const HELP_KEYWORDS: readonly string[] = ['HELP'];

/** The text as compared: NFC, spaces and punctuation trimmed, inner spaces collapsed, upper case. */
export function normalizeKeyword(text: string): string {
  return text
    .normalize('NFC')
    .replace(/^[\s\p{P}\p{S}]+|[\s\p{P}\p{S}]+$/gu, '')
    .replace(/\s+/g, ' ')
    .toLocaleUpperCase('en-US');
}

/** The keyword an SMS body is, if it is one; `word` is the matched keyword as listed. */
export function classifyKeyword(body: string, localizedOptOut: readonly string[] = []): { kind: KeywordKind; word: string } | undefined {
  const text = normalizeKeyword(body);
  if (text === '' || text.length > 40) return undefined;
  const find = (list: readonly string[]) => list.find((w) => normalizeKeyword(w) === text);
  const optOut = find(OPT_OUT_KEYWORDS) ?? find(localizedOptOut);
  if (optOut !== undefined) return { kind: KeywordKind.OptOut, word: optOut };
  const optIn = find(OPT_IN_KEYWORDS);
  if (optIn !== undefined) return { kind: KeywordKind.OptIn, word: optIn };
  const help = find(HELP_KEYWORDS);
  if (help !== undefined) return { kind: KeywordKind.Help, word: help };
  return undefined;
}
