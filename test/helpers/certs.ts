// Test PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1/localhost,
// a client certificate from that CA, and a client certificate from a second CA the server
// does not trust. EC P-256 keys keep it fast (a full set takes well under a second).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface PemFiles {
  /** PEM private key. */
  key: string;
  /** PEM certificate. */
  cert: string;
  keyPath: string;
  certPath: string;
}

export interface TestPki {
  dir: string;
  /** The CA servers and clients trust. */
  ca: PemFiles;
  /** Signed by `ca`; SAN IP:127.0.0.1, DNS:localhost; CN "localhost". */
  server: PemFiles;
  /** Signed by `ca`, with the CN given to makeTestPki. */
  client: PemFiles & { cn: string };
  /** A CA nobody is told to trust. */
  untrustedCa: PemFiles;
  /** Signed by `untrustedCa`, with the same CN as `client`. */
  untrustedClient: PemFiles & { cn: string };
}

const DAYS = '2';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

function files(dir: string, name: string): PemFiles {
  const keyPath = path.join(dir, `${name}.key`);
  const certPath = path.join(dir, `${name}.crt`);
  return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8'), keyPath, certPath };
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

function makeCa(dir: string, name: string, cn: string): PemFiles {
  openssl(
    [
      'req', '-x509', ...EC_KEY, '-days', DAYS, '-subj', `/CN=${cn}`,
      '-keyout', `${name}.key`, '-out', `${name}.crt`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return files(dir, name);
}

function issue(dir: string, ca: PemFiles, name: string, cn: string, extensions: string): PemFiles {
  openssl(['req', '-new', ...EC_KEY, '-subj', `/CN=${cn}/O=CareRelay Test`, '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  writeFileSync(path.join(dir, `${name}.ext`), `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n${extensions}\n`);
  openssl(
    [
      'x509', '-req', '-in', `${name}.csr`, '-CA', ca.certPath, '-CAkey', ca.keyPath,
      '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', DAYS, '-sha256',
      '-extfile', `${name}.ext`, '-out', `${name}.crt`,
    ],
    dir,
  );
  return files(dir, name);
}

/** Issues one more client certificate from `pki.ca` (e.g. a second sender with another CN). */
export function issueClientCert(pki: TestPki, name: string, cn: string): PemFiles & { cn: string } {
  return { ...issue(pki.dir, pki.ca, name, cn, 'extendedKeyUsage=clientAuth'), cn };
}

/**
 * Creates the test PKI in `dir` (created if missing; use a fresh temp dir per test file).
 * `clientCN` is the CN of the trusted and the untrusted client certificates.
 */
export function makeTestPki(dir: string, options: { clientCN?: string } = {}): TestPki {
  mkdirSync(dir, { recursive: true });
  const clientCN = options.clientCN ?? 'carerelay-test-client';
  const ca = makeCa(dir, 'ca', 'CareRelay Test CA');
  const server = issue(dir, ca, 'server', 'localhost', 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost');
  const client = { ...issue(dir, ca, 'client', clientCN, 'extendedKeyUsage=clientAuth'), cn: clientCN };
  const untrustedCa = makeCa(dir, 'untrusted-ca', 'Untrusted Test CA');
  const untrustedClient = { ...issue(dir, untrustedCa, 'untrusted-client', clientCN, 'extendedKeyUsage=clientAuth'), cn: clientCN };
  return { dir, ca, server, client, untrustedCa, untrustedClient };
}
