import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { MAX_LOGGED_CHARS, boundedLogValue, createLogger } from './log.ts';

describe('log values are bounded', () => {
  it('cuts a long value, saying how much was left out, and replaces control characters', () => {
    expect(boundedLogValue('EPIC^GHH')).toBe('EPIC^GHH');
    const cut = boundedLogValue('X'.repeat(1_000_000));
    expect(cut).toBe(`${'X'.repeat(MAX_LOGGED_CHARS)}…(+${1_000_000 - MAX_LOGGED_CHARS})`);
    expect(boundedLogValue('A\r\nB\u0000C\u2028')).toBe('A??B?C?');
  });

  it('applies to every string field a logger writes; unknown fields still dropped', async () => {
    const lines: string[] = [];
    const stream = new Writable({
      write(chunk: Buffer, _e, done) {
        lines.push(chunk.toString('utf8'));
        done();
      },
    });
    const log = createLogger({ stream });
    log.warn('ingest.not_accepted', { controlId: 'C'.repeat(10_000), sender: 'A\nB', count: 3, name: 'Doe' } as never);
    await new Promise((resolve) => setImmediate(resolve));
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect((line.controlId as string).length).toBeLessThan(MAX_LOGGED_CHARS + 12);
    expect(line.sender).toBe('A?B');
    expect(line.count).toBe(3);
    expect(line).not.toHaveProperty('name');
  });
});
