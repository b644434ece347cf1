// Replies to reminders (mappings/README.md "Replies"): the `reply:` block of a rule, what a
// message offers the patient in its language, matching an SMS answer to an offer, and the
// wording check that keeps opt-out words out of reply instructions. Pure.
//
//   reply:
//     writeBack: ehr-appointments            # optional: the output confirm / cancel go through
//     answers:
//       - { action: confirm, words: ["1", Y, YES, C], languages: { fr: [OUI, O] } }
//       - { action: cancel, words: ["2"] }
//       - { action: reschedule, words: ["3"], via: link }   # link | task (default task)
//
// Why opt-out words are refused as answers. Since 11 April 2025 (FCC 24-24, 47 CFR
// 64.1200(a)(10)) a reply of STOP, QUIT, END, REVOKE, OPT OUT, CANCEL or UNSUBSCRIBE revokes
// consent to texts, and carriers and Twilio act on those words themselves: "reply CANCEL to
// cancel your visit" would cancel the patient's texts, not the visit. An inbound SMS is read in
// this order (workers/replies.ts): opt-out words (docs/consent.md "Keywords") → HELP → the
// offered answers → a staff inbox. So an offered answer can never be one of those words, and a
// reminder that asks for a reply may not tell the patient to send one for anything but opting out.
import { HELP_KEYWORDS, OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS, normalizeKeyword } from './keywords.ts';
import type { IssuePath } from './conditions.ts';
import { closest, describe, isRecord } from './values.ts';
import { REPLY_ACTIONS, ReplyAction, TriggerType } from '../types.ts';

/** Where a reschedule request goes: never a direct write. */
export const RescheduleVia = {
  /** A staff task: someone calls the patient back. */
  Task: 'task',
  /** The `appointment.reschedule_requested` trigger: a rule sends a rebooking link. */
  Link: 'link',
} as const;
export type RescheduleVia = (typeof RescheduleVia)[keyof typeof RescheduleVia];

/** One answer a rule offers, as compiled. Words are kept as written; matching normalizes. */
export interface ReplyAnswerSpec {
  action: ReplyAction;
  /** Offered in every language. */
  words: string[];
  /** Offered besides `words` to patients whose message went out in that language. */
  languages: Record<string, string[]>;
  /** Reschedule only. */
  via?: RescheduleVia;
}

/** A rule's `reply:` block, compiled. */
export interface ReplySpec {
  answers: ReplyAnswerSpec[];
  /** The output that writes confirm / cancel back to the EHR (outputs/write-back.ts). */
  writeBack?: string;
}

/**
 * What one message offered, in the language it went out in: kept with the open prompt, so a
 * reload of the mappings never changes what a patient's answer means.
 */
export interface ReplyOffer {
  language: string;
  answers: Array<{ action: ReplyAction; words: string[]; via?: RescheduleVia }>;
  writeBack?: string;
}

/** An answer matched to an offer. */
export interface MatchedAnswer {
  action: ReplyAction;
  /** The offered word it matched, as the rule lists it. */
  answer: string;
  via?: RescheduleVia;
}

/** The trigger type an answer becomes (docs/trigger.md "Answers"). */
export const ANSWER_TRIGGER: Readonly<Record<ReplyAction, TriggerType>> = {
  confirm: TriggerType.AppointmentConfirmed,
  cancel: TriggerType.AppointmentCancelRequested,
  reschedule: TriggerType.AppointmentRescheduleRequested,
  accept: TriggerType.AppointmentWaitlistAccepted,
  decline: TriggerType.AppointmentWaitlistDeclined,
};
/** Answer triggers, with the late yes to a waitlist offer whose slot another patient took. */
export const ANSWER_TRIGGER_TYPES: readonly TriggerType[] = [...Object.values(ANSWER_TRIGGER), TriggerType.AppointmentWaitlistTaken];

/** The answers of a waitlist offer (docs/waitlist.md); a reminder offers the others. */
export const OFFER_ACTIONS: readonly ReplyAction[] = [ReplyAction.Accept, ReplyAction.Decline];

/** What compileReply needs to know about an output. */
export interface ReplyOutputInfo {
  name: string;
  /** The write-back operations the output performs (outputs/write-back.ts); absent: none. */
  writeBackKinds?: readonly string[];
}

const REPLY_KEYS = ['writeBack', 'answers'] as const;
const ANSWER_KEYS = ['action', 'words', 'languages', 'via'] as const;
const LANGUAGE = /^[a-z]{2,3}$/;
const MAX_ANSWERS = 9;
const MAX_WORD = 20;

/** Words an answer can never be: they are read before the answers (opt-out, START/UNSTOP, HELP). */
export function reservedWords(localizedOptOut: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const w of [...OPT_OUT_KEYWORDS, ...localizedOptOut]) out.set(normalizeKeyword(w), 'an opt-out keyword (it revokes consent to texts: FCC 24-24, docs/consent.md "Keywords")');
  for (const w of OPT_IN_KEYWORDS) out.set(normalizeKeyword(w), 'the opt-in keyword (START/UNSTOP)');
  for (const w of HELP_KEYWORDS) out.set(normalizeKeyword(w), 'the HELP keyword');
  return out;
}

/**
 * Compiles a rule's `reply:` block; problems go to `issues` with paths under `at`. `rule` is what
 * the rule says around it (its trigger types and channel), `outputs` the configured outputs.
 */
export function compileReply(
  raw: unknown,
  at: IssuePath,
  rule: { on: readonly TriggerType[]; channel: unknown },
  context: { outputs: readonly ReplyOutputInfo[]; optOutWords: readonly string[] },
  issues: Array<{ path: IssuePath; message: string }>,
): ReplySpec | undefined {
  const before = issues.length;
  const add = (path: IssuePath, message: string) => issues.push({ path, message });
  if (!isRecord(raw)) {
    add(at, `reply is a mapping with answers (and an optional writeBack); got ${describe(raw)}`);
    return undefined;
  }
  for (const key of Object.keys(raw)) {
    if (!(REPLY_KEYS as readonly string[]).includes(key)) add([...at, key], `unknown key "${key}"; did you mean ${closest(key, REPLY_KEYS, 1)[0]}? (known: ${REPLY_KEYS.join(', ')})`);
  }
  if (rule.channel !== 'sms') add(at, `only an sms rule can ask for a reply (answers come back by SMS to the number it was sent from); this rule's channel is ${describe(rule.channel)}`);
  const notAppointment = rule.on.filter((t) => !t.startsWith('appointment.'));
  if (notAppointment.length > 0) add(at, `a reply is about an appointment: this rule is also triggered by ${notAppointment.join(', ')}`);
  const answering = rule.on.filter((t) => ANSWER_TRIGGER_TYPES.includes(t));
  if (answering.length > 0) add(at, `a rule triggered by an answer (${answering.join(', ')}) cannot ask for another reply: a thank-you asks nothing`);

  // A waitlist offer is answered yes or no; a reminder is confirmed, cancelled or moved.
  const offer = rule.on.includes(TriggerType.AppointmentWaitlistOffered);
  if (offer && rule.on.length > 1) add(at, `a rule asking about a waitlist offer (appointment.waitlist_offered) is triggered by nothing else; this one also by ${rule.on.filter((t) => t !== TriggerType.AppointmentWaitlistOffered).join(', ')}`);
  if (offer && raw.writeBack !== undefined) add([...at, 'writeBack'], 'an accepted waitlist offer is booked through the waitlist block\'s `book` output (docs/waitlist.md), not a writeBack');
  let writeBack: string | undefined;
  if (raw.writeBack !== undefined && !offer) {
    const name = raw.writeBack;
    const output = context.outputs.find((o) => o.name === name);
    if (typeof name !== 'string' || name === '') add([...at, 'writeBack'], `writeBack names the output that writes answers back to the EHR; got ${describe(name)}`);
    else if (!output) {
      const names = context.outputs.map((o) => o.name);
      add([...at, 'writeBack'], `no output named "${name}"${names.length ? `; known: ${closest(name, names).join(', ')}` : ''}`);
    } else if (!output.writeBackKinds || output.writeBackKinds.length === 0) {
      add([...at, 'writeBack'], `output "${name}" does not write appointments back; use a fhir-appointment, oracle-health-appointment, hl7v2-srm output, or a webhook output with writeBack: true`);
    } else writeBack = name;
  }

  const answers: ReplyAnswerSpec[] = [];
  const list = raw.answers;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_ANSWERS) {
    add([...at, 'answers'], `answers is a list of 1–${MAX_ANSWERS} { action, words } (action: ${REPLY_ACTIONS.join(', ')}); got ${describe(list)}`);
  } else {
    const reserved = reservedWords(context.optOutWords);
    // A word means one thing in a language: its default words plus that language's.
    const taken = new Map<string, { word: string; index: number }>();
    const claim = (word: string, language: string, index: number, path: IssuePath): void => {
      const key = `${language}\u0000${normalizeKeyword(word)}`;
      const other = taken.get(key);
      if (other && other.index !== index) add(path, `"${word}" is offered twice${language === '*' ? '' : ` for ${language}`} (answers ${other.index + 1} and ${index + 1}): a word must mean one thing`);
      else taken.set(key, { word, index });
    };
    const actions = new Set<string>();
    list.forEach((item, i) => {
      const here = [...at, 'answers', i];
      if (!isRecord(item)) {
        add(here, `an answer is a mapping { action, words, languages?, via? }; got ${describe(item)}`);
        return;
      }
      for (const key of Object.keys(item)) {
        if (!(ANSWER_KEYS as readonly string[]).includes(key)) add([...here, key], `unknown key "${key}"; did you mean ${closest(key, ANSWER_KEYS, 1)[0]}? (known: ${ANSWER_KEYS.join(', ')})`);
      }
      const action = item.action;
      if (typeof action !== 'string' || !(REPLY_ACTIONS as readonly string[]).includes(action)) {
        add([...here, 'action'], `action must be one of ${REPLY_ACTIONS.join(', ')}; got ${describe(action)}`);
        return;
      }
      if (offer !== OFFER_ACTIONS.includes(action as ReplyAction)) {
        add([...here, 'action'], offer ? `a waitlist offer's answers are ${OFFER_ACTIONS.join(' and ')}; got ${action}` : `${action} answers a waitlist offer (a rule on appointment.waitlist_offered); a reminder's answers are confirm, cancel, reschedule`);
        return;
      }
      if (actions.has(action)) add([...here, 'action'], `action ${action} is offered twice: list all its words in one answer`);
      actions.add(action);
      const words = wordList(item.words, [...here, 'words'], reserved, add, true);
      for (const [j, w] of words.entries()) claim(w, '*', i, [...here, 'words', j]);
      const languages: Record<string, string[]> = {};
      if (item.languages !== undefined) {
        if (!isRecord(item.languages)) add([...here, 'languages'], `languages maps a language code to its extra words, e.g. { fr: [OUI] }; got ${describe(item.languages)}`);
        else {
          for (const [language, value] of Object.entries(item.languages)) {
            if (!LANGUAGE.test(language)) {
              add([...here, 'languages', language], `"${language}" is not a lower-case language code such as fr`);
              continue;
            }
            languages[language] = wordList(value, [...here, 'languages', language], reserved, add, true);
          }
        }
      }
      let via: RescheduleVia | undefined;
      if (item.via !== undefined) {
        if (action !== ReplyAction.Reschedule) add([...here, 'via'], 'via is for a reschedule answer (a link or a staff task)');
        else if (item.via !== RescheduleVia.Link && item.via !== RescheduleVia.Task) add([...here, 'via'], `via must be link (a rule on appointment.reschedule_requested sends one) or task (staff call back); got ${describe(item.via)}`);
        else via = item.via;
      } else if (action === ReplyAction.Reschedule) via = RescheduleVia.Task;
      answers.push({ action: action as ReplyAction, words, languages, ...(via ? { via } : {}) });
    });
    // Language words clash with the default words of another answer, or with its own language words.
    answers.forEach((a, i) => {
      for (const [language, words] of Object.entries(a.languages)) {
        words.forEach((w, j) => {
          const key = normalizeKeyword(w);
          const other = answers.findIndex((b, k) => k !== i && (b.words.some((x) => normalizeKeyword(x) === key) || (b.languages[language] ?? []).some((x) => normalizeKeyword(x) === key)));
          if (other >= 0) add([...at, 'answers', i, 'languages', language, j], `"${w}" is also an answer of ${answers[other]!.action} for ${language}: a word must mean one thing`);
        });
      }
    });
  }
  if (offer && !hasAction(answers, ReplyAction.Accept) && issues.length === before) add([...at, 'answers'], 'a waitlist offer needs an accept answer (e.g. { action: accept, words: ["1", YES] })');
  if (writeBack) {
    const kinds = context.outputs.find((o) => o.name === writeBack)!.writeBackKinds!;
    for (const a of answers) {
      if (a.action !== ReplyAction.Reschedule && !kinds.includes(a.action)) add([...at, 'writeBack'], `output "${writeBack}" cannot write back a ${a.action} (it does ${kinds.join(', ')})`);
    }
  }
  if (issues.length > before) return undefined;
  return { answers, ...(writeBack ? { writeBack } : {}) };
}

function hasAction(answers: readonly ReplyAnswerSpec[], action: ReplyAction): boolean {
  return answers.some((a) => a.action === action);
}

function wordList(
  raw: unknown,
  at: IssuePath,
  reserved: Map<string, string>,
  add: (path: IssuePath, message: string) => void,
  required: boolean,
): string[] {
  const list = typeof raw === 'string' || typeof raw === 'number' ? [raw] : raw;
  if (!Array.isArray(list) || (required && list.length === 0)) {
    add(at, `words is a list of what the patient may send, e.g. ["1", YES]; got ${describe(raw)}`);
    return [];
  }
  const out: string[] = [];
  list.forEach((item, j) => {
    const where = Array.isArray(raw) ? [...at, j] : at;
    // YAML reads 1 as a number: take it as the text the patient sends.
    const word = typeof item === 'number' && Number.isInteger(item) ? String(item) : item;
    if (typeof word !== 'string') {
      add(where, `an answer word is text, e.g. "1" or YES; got ${describe(item)}`);
      return;
    }
    const key = normalizeKeyword(word);
    if (key === '' || key.length > MAX_WORD) {
      add(where, `"${word}" is not a usable answer: 1–${MAX_WORD} characters besides spaces and punctuation`);
      return;
    }
    const why = reserved.get(key);
    if (why !== undefined) {
      add(where, `"${word}" cannot be an answer: it is ${why}, read before any answer. Offer digits or words such as YES instead`);
      return;
    }
    out.push(word);
  });
  return out;
}

/** What a message offers a patient whose message went out in `language`. */
export function offerFor(spec: ReplySpec, language: string): ReplyOffer {
  return {
    language,
    answers: spec.answers.map((a) => ({ action: a.action, words: [...a.words, ...(a.languages[language] ?? [])], ...(a.via ? { via: a.via } : {}) })),
    ...(spec.writeBack ? { writeBack: spec.writeBack } : {}),
  };
}

/**
 * The answer an SMS body is, if it is one of the offer's words (matched like the keywords:
 * case, surrounding spaces and punctuation ignored — "yes!" is YES, "1." is 1). Anything else,
 * a sentence included, is not an answer: a person reads it.
 */
export function matchAnswer(offer: ReplyOffer, body: string): MatchedAnswer | undefined {
  const text = normalizeKeyword(body);
  if (text === '' || text.length > MAX_WORD) return undefined;
  for (const a of offer.answers) {
    const word = a.words.find((w) => normalizeKeyword(w) === text);
    if (word !== undefined) return { action: a.action, answer: word, ...(a.via ? { via: a.via } : {}) };
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// The wording of a reminder that asks for a reply

/** Verbs (en, fr, es, de) after which the next word is what the patient is told to send. */
const REPLY_VERBS = /^(reply|text|send|respond|answer|type|r[ée]pondez|r[ée]pondre|r[ée]ponds|envoyez|envoyer|tapez|responda|responde|env[íi]e|env[íi]a|escriba|antworten|antworte|senden|sende)$/iu;
const LINKING = /^(with|avec|par|con|mit)$/iu;
/** An opt-out word used for what it is: the notice carriers expect ("reply STOP to opt out"). */
const OPT_OUT_NOTICE =
  /^\W*(to\s+)?(opt[\s-]?out|unsubscribe|stop\b|end\s+(messages|texts)|no\s+(more|longer)|pour\s+(vous\s+)?(d[ée]sinscri|ne\s+plus|arr[êe]ter)|d[ée]sinscri|ne\s+plus\s+recevoir|para\s+(darse\s+de\s+baja|dejar|no\s+recibir)|darse\s+de\s+baja|zum\s+abmelden|abmelden)/iu;

export interface WordingIssue {
  line: number;
  column: number;
  message: string;
}

/**
 * Problems of a template of a rule that asks for a reply (its text as written, Liquid tags
 * included): an opt-out word the patient is told to send for anything but opting out, and a
 * text that names none of the offered answers. A word is "told to send" when it is written in
 * capitals (CANCEL), in quotes ("cancel", «annuler»), or right after a reply verb (reply, text,
 * send, répondez, envoyez, responda…). "Reply 2 to cancel" is fine; "reply CANCEL to cancel" and
 * "text STOP to cancel your visit" are refused; "reply STOP to opt out" is the opt-out notice.
 */
export function replyWordingIssues(text: string, offer: ReplyOffer, optOutWords: readonly string[], ruleId: string): WordingIssue[] {
  const literal = withoutLiquid(text);
  const issues: WordingIssue[] = [];
  const optOut = new Set([...OPT_OUT_KEYWORDS, ...optOutWords].map(normalizeKeyword));
  // Single words (and two-word keywords such as OPT OUT): check each token and each pair.
  const tokens = [...literal.matchAll(/[\p{L}\p{N}]+/gu)].map((m) => ({ text: m[0], index: m.index }));
  tokens.forEach((token, i) => {
    const pair = i + 1 < tokens.length ? `${token.text} ${tokens[i + 1]!.text}` : undefined;
    const pairIsKeyword = pair !== undefined && optOut.has(normalizeKeyword(pair)) && /^\s+$/.test(literal.slice(token.index + token.text.length, tokens[i + 1]!.index));
    const candidate = pairIsKeyword ? pair! : token.text;
    if (!optOut.has(normalizeKeyword(candidate))) return;
    const end = pairIsKeyword ? tokens[i + 1]!.index + tokens[i + 1]!.text.length : token.index + token.text.length;
    const capitals = candidate === candidate.toLocaleUpperCase() && /\p{Lu}/u.test(candidate) && candidate.length > 1;
    const quoted = /["'“‘«]\s*$/u.test(literal.slice(Math.max(0, token.index - 2), token.index)) && /^\s*["'”’»]/u.test(literal.slice(end, end + 2));
    let previous = i - 1;
    if (previous >= 0 && LINKING.test(tokens[previous]!.text)) previous--;
    const afterVerb = previous >= 0 && REPLY_VERBS.test(tokens[previous]!.text);
    if (!capitals && !quoted && !afterVerb) return;
    if (OPT_OUT_NOTICE.test(literal.slice(end, end + 60))) return;
    const { line, column } = position(text, token.index);
    issues.push({
      line,
      column,
      message:
        `rule "${ruleId}" asks for a reply, and this text tells the patient to send "${candidate}": that word is an opt-out keyword ` +
        `(since April 2025, FCC 24-24: it revokes consent to texts, and carriers act on it), so it may only be offered for opting out ("reply STOP to opt out"). ` +
        `Offer one of the rule's answers instead (${offer.answers.map((a) => `${a.words[0]} to ${a.action}`).join(', ')})`,
    });
  });
  const named = offer.answers.some((a) => a.words.some((w) => new RegExp(`(^|[^\\p{L}\\p{N}])${escape(w)}($|[^\\p{L}\\p{N}])`, 'iu').test(literal)));
  if (!named) {
    issues.push({
      line: 1,
      column: 1,
      message: `rule "${ruleId}" asks for a reply, but this text names none of its answers (${offer.answers.map((a) => a.words.join('/')).join(', ')}): tell the patient what to send`,
    });
  }
  return issues;
}

/** The text with Liquid tags and outputs blanked (same length, lines kept): only literal words remain. */
function withoutLiquid(text: string): string {
  return text.replace(/\{\{[\s\S]*?\}\}|\{%[\s\S]*?%\}/g, (m) => m.replace(/[^\n]/g, ' '));
}

function position(text: string, index: number): { line: number; column: number } {
  const before = text.slice(0, index);
  const line = before.split('\n').length;
  return { line, column: index - before.lastIndexOf('\n') };
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
