// A real SMTP server for tests (the smtp-server package), on 127.0.0.1 with an ephemeral port:
// STARTTLS with the test PKI's certificate, AUTH PLAIN/LOGIN required (only after TLS, as
// smtp-server enforces), 10 MiB size limit. Accepted messages are kept raw and parsed
// (mailparser). It can be told to refuse a recipient (e.g. 550 5.1.1), to answer 4xx/5xx to
// MAIL FROM, RCPT TO or the end of DATA, to drop the connection after the message was
// transferred without a final answer, or to hang there.
import type { AddressInfo } from 'node:net';
import { simpleParser, type ParsedMail } from 'mailparser';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { Arrivals } from './arrivals.ts';
import type { TestPki } from './certs.ts';

export interface ReceivedMail {
  from: string;
  to: string[];
  raw: string;
  parsed: ParsedMail;
}

export type SmtpFault =
  | { stage: 'mail' | 'rcpt' | 'data'; code: number; message: string }
  /** The message is read in full, then the connection is closed without a reply. */
  | { stage: 'data'; drop: true }
  /** The message is read in full, then no reply ever comes. */
  | { stage: 'data'; hang: true };

export interface TestSmtpServer {
  readonly port: number;
  readonly user: string;
  readonly pass: string;
  readonly received: ReceivedMail[];
  /** Transactions that reached DATA's end (accepted or not). */
  readonly dataEnds: number;
  /** MAIL FROM commands received (each is one attempt to send). */
  readonly transactions: number;
  failNext(fault: SmtpFault, count?: number): void;
  /** Resolves once `n` messages have been accepted. */
  waitFor(n: number): Promise<void>;
  /** Resolves once `n` transactions have transferred their message (accepted or not). */
  waitForDataEnds(n: number): Promise<void>;
  /** The Message-ID of every message transferred, in order (accepted or not). */
  dataMessageIds(): string[];
  close(): Promise<void>;
}

function smtpError(code: number, message: string): Error & { responseCode: number } {
  return Object.assign(new Error(message), { responseCode: code });
}

export async function startSmtpServer(pki: TestPki): Promise<TestSmtpServer> {
  const user = 'carerelay';
  const pass = 'correct horse battery staple';
  const received: ReceivedMail[] = [];
  const faults: SmtpFault[] = [];
  const accepted = new Arrivals();
  const dataEnds = new Arrivals();
  const messageIds: string[] = [];
  let transactions = 0;
  const take = (stage: SmtpFault['stage']): SmtpFault | undefined => {
    if (faults[0]?.stage !== stage) return undefined;
    return faults.shift();
  };

  const server: SMTPServer = new SMTPServer({
    key: pki.server.key,
    cert: pki.server.cert,
    authMethods: ['PLAIN', 'LOGIN'],
    size: 10 * 1024 * 1024,
    logger: false,
    onAuth(auth, _session, callback) {
      if (auth.username === user && auth.password === pass) callback(null, { user });
      else callback(smtpError(535, '5.7.8 Authentication credentials invalid'));
    },
    onMailFrom(_address, _session, callback) {
      transactions++;
      const fault = take('mail');
      callback(fault && 'code' in fault ? smtpError(fault.code, fault.message) : null);
    },
    onRcptTo(_address, _session, callback) {
      const fault = take('rcpt');
      callback(fault && 'code' in fault ? smtpError(fault.code, fault.message) : null);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const head = Buffer.concat(chunks).toString('utf8').split('\r\n\r\n')[0] ?? '';
        messageIds.push(/^Message-ID:\s*(\S+)/im.exec(head)?.[1] ?? '');
        dataEnds.arrive();
        const fault = take('data');
        if (fault && 'drop' in fault) {
          socketOf(session)?.destroy();
          return;
        }
        if (fault && 'hang' in fault) return;
        if (fault && 'code' in fault) {
          callback(smtpError(fault.code, fault.message));
          return;
        }
        const raw = Buffer.concat(chunks).toString('utf8');
        void simpleParser(raw).then((parsed) => {
          received.push({
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: session.envelope.rcptTo.map((r) => r.address),
            raw,
            parsed,
          });
          callback(null, 'Queued as test');
          accepted.arrive();
        });
      });
    },
  });

  /** The socket of a session: smtp-server keeps its connections in a set. */
  function socketOf(session: SMTPServerSession): { destroy(): void } | undefined {
    const connections = (server as unknown as { connections: Set<{ id: string; _socket: { destroy(): void } }> }).connections;
    for (const connection of connections) if (connection.id === session.id) return connection._socket;
    return undefined;
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = ((server as unknown as { server: { address(): AddressInfo } }).server.address()).port;
  return {
    port,
    user,
    pass,
    received,
    get dataEnds() {
      return dataEnds.count;
    },
    get transactions() {
      return transactions;
    },
    failNext(fault, count = 1) {
      for (let i = 0; i < count; i++) faults.push(fault);
    },
    waitFor: (n) => accepted.waitFor(n),
    waitForDataEnds: (n) => dataEnds.waitFor(n),
    dataMessageIds: () => [...messageIds],
    async close() {
      const connections = (server as unknown as { connections: Set<{ _socket: { destroy(): void } }> }).connections;
      for (const connection of connections) connection._socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
