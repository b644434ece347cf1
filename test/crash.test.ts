// kill -9 of the real server process (docs/reliability.md promise 1, docs/architecture.md invariant 1):
// a message is ACKed AA only after it is durably committed, so whatever moment the process
// dies at, every AA survives, nothing is stored twice and resends after a restart collapse.
//
// The server runs as a child process (`node bin/carerelay.mjs start --config-dir DIR`) and is
// killed with a real SIGKILL: either by itself at a fixed point (CARERELAY_FAULT=
// kill-after-commit:N, right after the N-th commit and before its ACK is written) or by the
// test at a random moment. The store is then inspected by opening the SQLite file directly.
// The delivery side (docs/reliability.md promise 4) is killed the same way while confirmations
// are being sent: right after an output accepted a message and before it is recorded
// (CARERELAY_FAULT=kill-after-send:N), or a few milliseconds after an ACK.
import { afterAll, describe, expect, it } from 'vitest';
import { AmbiguousError, TransientError } from '../src/errors.ts';
import { MllpClient } from '../src/hl7v2/mllp-client.ts';
import { parseHl7 } from '../src/hl7v2/parse.ts';
import { silentLogger } from '../src/log.ts';
import { startCarerelay } from '../src/main.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { addConfirmations, siuMessage, startChildServer, writeConfigDir, type ChildServer, type TestConfigDir } from './helpers/server.ts';
import { prng } from './helpers/random.ts';

const SENDER = 'EPIC^NORTHCLINIC';
const dirs: TestConfigDir[] = [];
const children: ChildServer[] = [];

afterAll(async () => {
  // A failed assertion must not leave a server running.
  for (const c of children) c.kill();
  await Promise.all(children.map((c) => c.exited));
  for (const d of dirs) d.remove();
});

async function start(config: TestConfigDir, env?: Record<string, string>): Promise<ChildServer> {
  const child = await startChildServer(config, { env: env ?? {}, startTimeoutMs: 20_000 });
  children.push(child);
  return child;
}

function clientFor(child: ChildServer): MllpClient {
  return new MllpClient({ host: '127.0.0.1', port: child.mllpPorts.get('ehr-mllp')!, ackTimeoutMs: 10_000, connectTimeoutMs: 5_000 });
}

function ackCode(ack: Buffer): string {
  return parseHl7(ack).get('MSA-1');
}

/** Opens the data dir's SQLite file (the server must be dead or stopped) and runs `fn`. */
async function withStore<T>(config: TestConfigDir, fn: (store: SqliteStore) => Promise<T> | T): Promise<T> {
  const store = SqliteStore.open(config.dbFile);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/** Resolves like `promise`, or rejects naming `what` after `ms` (a bounded wait, not a sleep). */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

describe('kill -9 between commit and ACK (fixed point)', () => {
  it('keeps the committed message; the resend after restart gets AA and nothing is stored twice', async () => {
    const config = writeConfigDir();
    dirs.push(config);
    const message = siuMessage({ controlId: 'CRASH-FIXED-1', appointmentId: 'AP-CRASH-FIXED-1' });

    const doomed = await start(config, { CARERELAY_FAULT: 'kill-after-commit:1' });
    const client = clientFor(doomed);
    await client.connect();
    // The process dies after the commit and before the ACK: the sender sees the connection
    // close with no ACK (ambiguous: it must resend).
    await expect(client.send(message)).rejects.toBeInstanceOf(AmbiguousError);
    await client.close();
    expect(await doomed.exited).toEqual({ code: null, signal: 'SIGKILL' });

    // It was committed before the kill, with the AA that was never sent.
    const committedAck = await withStore(config, async (store) => {
      const stored = await store.findMessage(SENDER, 'CRASH-FIXED-1');
      expect(stored).toMatchObject({ status: 'accepted', ackCode: 'AA' });
      expect(stored!.triggerIds).toHaveLength(1);
      return stored!.ack;
    });

    const revived = await start(config);
    const again = clientFor(revived);
    await again.connect();
    const ack = await again.send(message);
    await again.close();
    await revived.stop();
    expect(ackCode(ack)).toBe('AA');
    // A duplicate of a committed message: its original ACK, byte for byte.
    expect(ack.toString('utf8')).toBe(committedAck);

    await withStore(config, async (store) => {
      expect(await store.listMessages({ controlId: 'CRASH-FIXED-1' })).toHaveLength(1);
      expect(await store.listTriggers({ appointmentId: 'AP-CRASH-FIXED-1' })).toHaveLength(1);
    });
  });
});

describe('random kill/restart loop', () => {
  const STREAM = 2_000;
  const MIN_KILLS = 5;
  /** Messages (ACKs or commits) per life of the server, before it is killed. */
  const LIFE_MIN = 20;
  const LIFE_MAX = 350;
  const PHASE_LIMIT_MS = 20_000;

  it(`loses no AA and stores each of ${STREAM} messages exactly once across at least ${MIN_KILLS} SIGKILLs`, { timeout: 300_000 }, async () => {
    const config = writeConfigDir();
    dirs.push(config);
    const random = prng(0x5eed2026);
    const messages = Array.from({ length: STREAM }, (_, i) =>
      siuMessage({
        controlId: `CRASH-${String(i).padStart(5, '0')}`,
        appointmentId: `AP-CRASH-${i}`,
        patientId: `P-${i % 97}`,
        start: new Date(Date.UTC(2030, 0, 1, 8) + i * 900_000),
      }),
    );
    const controlIds = messages.map((_, i) => `CRASH-${String(i).padStart(5, '0')}`);
    /** The ACK text each message finally got (only AA is acceptable). */
    const acks: Array<string | undefined> = new Array(STREAM);
    let next = 0;
    let kills = 0;
    let lives = 0;
    /** Kills where the message in flight had already been committed (resend = duplicate). */
    let committedInFlight = 0;
    let ambiguous = 0;
    const started = Date.now();

    while (next < STREAM) {
      lives++;
      expect(lives, 'lives of the server').toBeLessThanOrEqual(60);
      const life = LIFE_MIN + Math.floor(random() * (LIFE_MAX - LIFE_MIN + 1));
      // Every third life dies by itself exactly between a commit and its ACK; the others
      // are killed by the test right after an ACK, with the next message in flight, or a
      // few milliseconds into handling it (during parse, normalize or the fsync).
      const selfKill = lives % 3 === 1;
      const variant = Math.floor(random() * 3);
      const delayMs = Math.floor(random() * 4);
      const child = await start(config, selfKill ? { CARERELAY_FAULT: `kill-after-commit:${life}` } : {});
      const phaseStart = Date.now();
      const client = clientFor(child);
      let killed = false;
      const kill = (): void => {
        killed = true;
        child.kill();
      };
      try {
        await client.connect();
        for (let sent = 0; next < STREAM; sent++) {
          expect(Date.now() - phaseStart, 'phase time').toBeLessThan(PHASE_LIMIT_MS);
          if (!selfKill && sent === life && variant === 0) kill();
          const pending = client.send(messages[next]!);
          if (!selfKill && sent === life && variant === 1) kill();
          if (!selfKill && sent === life && variant === 2) setTimeout(kill, delayMs);
          const ack = await pending;
          expect(ackCode(ack), controlIds[next]).toBe('AA');
          acks[next] = ack.toString('utf8');
          next++;
        }
      } catch (error) {
        // Connection lost with the message in flight (ambiguous), or refused because the
        // process was already gone (transient): either way it is resent to the next life.
        if (!(error instanceof AmbiguousError || error instanceof TransientError)) throw error;
        ambiguous++;
      } finally {
        await client.close();
      }

      if (next === STREAM && !killed && child.child.exitCode === null && child.child.signalCode === null) {
        await child.stop(); // the stream ended before this life's kill point
        break;
      }
      if (!selfKill && !killed) kill(); // a timer kill that had not fired yet
      let exit;
      try {
        exit = await within(child.exited, 10_000, `life ${lives} exit (${selfKill ? 'self-kill' : 'SIGKILL'})`);
      } finally {
        child.kill(); // never leave a live server behind a failed wait
      }
      expect(exit.signal).toBe('SIGKILL');
      kills++;
      if (next < STREAM) {
        const inFlight = controlIds[next]!;
        const committed = await withStore(config, (store) => store.findMessage(SENDER, inFlight));
        if (committed !== undefined) committedInFlight++;
        // A self-kill happens right after a commit: the unACKed message must be stored.
        if (selfKill) expect(committed, `${inFlight} committed before the self-kill`).toBeDefined();
      }
    }

    expect(next).toBe(STREAM);
    expect(kills).toBeGreaterThanOrEqual(MIN_KILLS);
    expect(committedInFlight, 'kills that hit between commit and ACK').toBeGreaterThanOrEqual(1);

    await withStore(config, async (store) => {
      const db = store.db;
      expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
      const total = db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number };
      expect(total.n).toBe(STREAM);
      const twice = db
        .prepare('SELECT sender, control_id, COUNT(*) AS n FROM messages GROUP BY sender, control_id HAVING n > 1')
        .all();
      expect(twice).toEqual([]);
      const notAccepted = db.prepare("SELECT COUNT(*) AS n FROM messages WHERE status <> 'accepted' OR ack_code <> 'AA'").get() as {
        n: number;
      };
      expect(notAccepted.n).toBe(0);
      const withoutTrigger = db
        .prepare('SELECT COUNT(*) AS n FROM messages m WHERE NOT EXISTS (SELECT 1 FROM triggers t WHERE t.message_id = m.id)')
        .get() as { n: number };
      expect(withoutTrigger.n).toBe(0);
      const triggers = db.prepare('SELECT COUNT(*) AS n FROM triggers').get() as { n: number };
      expect(triggers.n).toBe(STREAM);

      // Every AA the sender received is the stored ACK of a stored message, with its trigger.
      for (let i = 0; i < STREAM; i++) {
        const stored = await store.findMessage(SENDER, controlIds[i]!);
        expect(stored, controlIds[i]).toBeDefined();
        expect(stored!.ack, controlIds[i]).toBe(acks[i]);
        expect(stored!.triggerIds, controlIds[i]).toHaveLength(1);
      }
      const sample = await store.listTriggers({ appointmentId: 'AP-CRASH-1234' });
      expect(sample.map((t) => t.type)).toEqual(['appointment.booked']);
    });
    // For the record when the test is run alone.
    console.info(
      `crash loop: ${STREAM} messages, ${lives} lives, ${kills} SIGKILLs, ${ambiguous} ambiguous sends, ` +
        `${committedInFlight} committed-but-unACKed resends, ${Date.now() - started} ms`,
    );
  });
});

describe('kill -9 during delivery', () => {
  const TOTAL = 400;

  it(`sends each of ${TOTAL} confirmations once, finished once, across SIGKILLs between a send and its record and while sends are in flight`, { timeout: 120_000 }, async () => {
    const config = writeConfigDir();
    dirs.push(config);
    addConfirmations(config);
    const messages = Array.from({ length: TOTAL }, (_, i) =>
      siuMessage({ controlId: `DLV-${i}`, appointmentId: `AP-DLV-${i}`, patientId: `P-${i % 31}`, start: new Date(Date.UTC(2030, 0, 1, 8) + i * 900_000) }),
    );
    let next = 0;
    // Each life dies with deliveries in flight (64 at once): by itself right after the N-th
    // output accepted a message and before the delivery is recorded finished, or by the test
    // a few milliseconds after the M-th ACK (routing, takes, sends and finishes under way).
    const lives: Array<{ fault?: string; killAfterAck?: number }> = [
      { fault: 'kill-after-send:40' },
      { killAfterAck: 60 },
      { fault: 'kill-after-send:5' },
      { killAfterAck: 120 },
      { fault: 'kill-after-send:150' },
    ];
    let selfKills = 0;
    for (const life of lives) {
      const child = await start(config, life.fault ? { CARERELAY_FAULT: life.fault } : {});
      const client = clientFor(child);
      let lost = false;
      try {
        await client.connect();
        for (let acked = 0; next < TOTAL; acked++) {
          if (acked === life.killAfterAck) setTimeout(() => child.kill(), 3);
          const ack = await client.send(messages[next]!);
          expect(ackCode(ack)).toBe('AA');
          next++;
        }
      } catch (error) {
        if (!(error instanceof AmbiguousError || error instanceof TransientError)) throw error;
        lost = true;
      } finally {
        await client.close();
      }
      // A fault life is never killed by the test before here: a lost connection was its own kill.
      const selfKilled = lost && life.fault !== undefined;
      child.kill();
      const exit = await within(child.exited, 10_000, 'delivery life exit');
      expect(exit.signal).toBe('SIGKILL');
      if (selfKilled) selfKills++;
    }
    expect(selfKills, 'lives that died between a send and its record').toBeGreaterThanOrEqual(1);

    // The last life runs in this process, its clock past the dead processes' leases: what they
    // held is taken again (attempt 2), the rest of the stream is sent, and everything due runs.
    const running = await startCarerelay({ configDir: config.dir, env: {}, log: silentLogger, watchMappings: false, now: () => Date.now() + 120_000 });
    try {
      const client = new MllpClient({ host: '127.0.0.1', port: running.mllpPorts.get('ehr-mllp')!, ackTimeoutMs: 10_000 });
      await client.connect();
      // The message in flight at a kill may or may not be committed: resent, it is AA either way.
      for (next = Math.max(0, next - 1); next < TOTAL; next++) expect(ackCode(await client.send(messages[next]!))).toBe('AA');
      await client.close();
      await running.deliveries.idle();
    } finally {
      await running.stop();
    }

    await withStore(config, (store) => {
      const db = store.db;
      const one = (sql: string) => (db.prepare(sql).get() as { n: number }).n;
      expect(one('SELECT COUNT(*) AS n FROM messages')).toBe(TOTAL);
      expect(one("SELECT COUNT(*) AS n FROM deliveries WHERE rule = 'confirm' AND status = 'finished'")).toBe(TOTAL);
      expect(one("SELECT COUNT(*) AS n FROM deliveries WHERE status <> 'finished'")).toBe(0);
      // One kept message per delivery, each for a finished delivery.
      expect(one('SELECT COUNT(DISTINCT delivery_id) AS n FROM outbox')).toBe(TOTAL);
      expect(one("SELECT COUNT(*) AS n FROM outbox o JOIN deliveries d ON d.id = o.delivery_id WHERE d.status = 'finished'")).toBe(TOTAL);
      // Nothing left to run; a job ran at most twice (once more only after its worker died).
      expect(one("SELECT COUNT(*) AS n FROM queue_jobs WHERE state <> 'done'")).toBe(0);
      expect(one('SELECT MAX(attempts) AS n FROM queue_jobs')).toBeLessThanOrEqual(2);
      expect(one("SELECT COUNT(*) AS n FROM queue_jobs WHERE attempts = 2 AND error_code <> 'lease_expired'")).toBe(0);
      expect(one('SELECT COUNT(*) AS n FROM queue_jobs WHERE attempts = 2')).toBeGreaterThanOrEqual(1);
    });
  });
});
