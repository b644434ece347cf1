import { describe, expect, it } from 'vitest';
import { classifyKeyword } from './keywords.ts';

describe('SMS keywords', () => {
  it.each(['STOP', 'stop', ' Stop! ', 'STOPALL', 'unsubscribe', 'Cancel.', 'END', 'quit', 'REVOKE', 'optout', 'Opt Out', 'opt  out'])('"%s" is an opt-out', (body) => {
    expect(classifyKeyword(body)?.kind).toBe('opt_out');
  });

  it('START and UNSTOP opt in, HELP asks for help', () => {
    expect(classifyKeyword('start')).toEqual({ kind: 'opt_in', word: 'START' });
    expect(classifyKeyword('Unstop')).toEqual({ kind: 'opt_in', word: 'UNSTOP' });
    expect(classifyKeyword('help?')).toEqual({ kind: 'help', word: 'HELP' });
  });

  it("the tenant's localized words count only when configured (France: ARRET, ARRÊT)", () => {
    expect(classifyKeyword('arrêt')).toBeUndefined();
    expect(classifyKeyword('Arrêt', ['ARRET', 'ARRÊT'])).toEqual({ kind: 'opt_out', word: 'ARRÊT' });
    expect(classifyKeyword('arret.', ['ARRET', 'ARRÊT'])).toEqual({ kind: 'opt_out', word: 'ARRET' });
  });

  it('anything else is not a keyword', () => {
    for (const body of ['stop sending me reminders', 'STOPP', 'please stop', 'yes', '', '   ', 'Help me reschedule']) expect(classifyKeyword(body)).toBeUndefined();
  });
});
