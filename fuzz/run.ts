// `npm run fuzz [-- --seed N --seconds S --connections C]`: runs the fuzz harness
// (fuzz/harness.ts) against a fresh server on loopback and prints its summary. Exit 1 when
// an invariant broke. Defaults: seed 1, 60 s, 32 connections.
import { parseArgs } from 'node:util';
import { formatReport, runFuzz } from './harness.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '60' },
    connections: { type: 'string', default: '32' },
    json: { type: 'boolean', default: false },
  },
});

function positive(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) {
    console.error(`--${name} must be a positive whole number, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

const report = await runFuzz({
  seed: positive('seed', values.seed!),
  seconds: positive('seconds', values.seconds!),
  connections: positive('connections', values.connections!),
  progress: (line) => console.error(line),
});
console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
process.exitCode = report.failures.length === 0 ? 0 : 1;
