// Config schemas of the two HL7v2 input types. The behaviour they configure is in
// docs/reliability.md ("Bad inputs", "Security defaults"): TLS by default with client
// certificates mapped to allowed senders, plain MLLP only when asked for explicitly,
// bounded frames, idle and first-byte timeouts, connection counts per listener and per
// address with slots reserved for trusted senders; HTTP ingest authenticated unless it is
// reachable from loopback only or says `auth: none`.

import net from 'node:net';
import { nameSchema, secretRefSchema, type JsonSchema, type SecretRef } from '../../config/yaml.ts';
import type { InstanceCheckIssue } from '../../config/load.ts';
import type { ServerConfig } from '../../config/server-schema.ts';
import type { InputSpec } from '../spec.ts';
import { virtualVisitSchema, type VirtualVisitSetting } from './virtual-visit.ts';

/** What to answer for a message type CareRelay does not turn into triggers. */
export const UnknownMessageTypes = {
  /** `AA`, and the message is recorded as ignored (docs/reliability.md default). */
  Accept: 'accept',
  /** `AR` naming the unsupported type. */
  Reject: 'reject',
} as const;
export type UnknownMessageTypes = (typeof UnknownMessageTypes)[keyof typeof UnknownMessageTypes];

/** ACK code for a message missing a field its trigger needs (e.g. SIU without an appointment id). */
export const MissingFieldAck = {
  /** Application Reject: the sender should not resend it as is. */
  AR: 'AR',
  /** Application Error: some senders queue and retry on AE; use when they fix data and resend. */
  AE: 'AE',
} as const;
export type MissingFieldAck = (typeof MissingFieldAck)[keyof typeof MissingFieldAck];

/**
 * Whether MSH-15 may switch an ACK off. HL7 v2.x chapter 2 (table 0155): in enhanced mode a
 * message with MSH-15 NE gets no commit ACK, ER one only on error, SU one only on success.
 * Many senders wait for an ACK whatever they wrote there, and stall; engines offer to
 * acknowledge every message for them.
 */
export const AckSetting = {
  /** MSH-15 is honoured: NE gets no ACK, ER only on error, SU only on success. */
  Standard: 'standard',
  /** Every message gets its ACK (CA/CE/CR in enhanced mode), whatever MSH-15 says. */
  Always: 'always',
} as const;
export type AckSetting = (typeof AckSetting)[keyof typeof AckSetting];

export const HL7V2_MLLP = 'hl7v2-mllp';
export const HL7V2_HTTP = 'hl7v2-http';

export interface MllpTlsConfig {
  readonly cert: SecretRef;
  readonly key: SecretRef;
  readonly ca?: SecretRef;
  readonly requireClientCert: boolean;
  /** Client certificate CN → sender patterns `MSH-3^MSH-4` (`*` = any). */
  readonly allowedSenders?: Readonly<Record<string, readonly string[]>>;
}

interface Hl7v2CommonConfig {
  readonly name: string;
  readonly timezone: string;
  readonly unknownMessageTypes: UnknownMessageTypes;
  readonly missingFieldAck: MissingFieldAck;
  readonly ackMode: AckSetting;
  readonly virtualVisit?: VirtualVisitSetting;
}

export interface Hl7v2MllpConfig extends Hl7v2CommonConfig {
  readonly type: typeof HL7V2_MLLP;
  readonly host: string;
  readonly port: number;
  readonly tls?: MllpTlsConfig;
  readonly plain: boolean;
  readonly maxFrameBytes: number;
  readonly idleTimeoutSeconds: number;
  readonly firstByteTimeoutSeconds: number;
  readonly tlsHandshakeTimeoutSeconds: number;
  readonly maxConnections: number;
  readonly maxConnectionsPerAddress: number;
  readonly reservedConnections: number;
  readonly trustedSenders: { readonly addresses: readonly string[]; readonly certificateCNs: readonly string[] };
}

/** `auth: none`: an HTTP ingest input that is knowingly unauthenticated. */
export const NO_AUTH = 'none';

export interface Hl7v2HttpConfig extends Hl7v2CommonConfig {
  readonly type: typeof HL7V2_HTTP;
  readonly auth?: { readonly bearerToken: SecretRef } | typeof NO_AUTH;
  readonly maxBodyBytes: number;
}

const commonProperties = {
  name: nameSchema('Unique name of this input; appears in logs, metrics, the store and (for HTTP) the URL.'),
  timezone: {
    type: 'string',
    format: 'iana-timezone',
    default: 'UTC',
    description:
      'IANA time zone of HL7 times that carry no UTC offset (TS/DTM without +hhmm), e.g. "Europe/Paris". ' +
      'Times with an offset keep it.',
  },
  unknownMessageTypes: {
    type: 'string',
    enum: Object.values(UnknownMessageTypes),
    default: UnknownMessageTypes.Accept,
    description:
      'Message types CareRelay does not handle: "accept" answers AA and records the message as ignored; ' +
      '"reject" answers AR.',
  },
  missingFieldAck: {
    type: 'string',
    enum: Object.values(MissingFieldAck),
    default: MissingFieldAck.AR,
    description:
      'ACK for a message missing a required field (e.g. no appointment id): "AR" (reject, do not resend) ' +
      'or "AE" (error; the sender may fix and resend). The raw message is kept for review either way.',
  },
  ackMode: {
    type: 'string',
    enum: Object.values(AckSetting),
    default: AckSetting.Standard,
    description:
      'Enhanced-mode messages (MSH-15/16 valued): "standard" honours MSH-15 — NE gets no ACK, ER one only on ' +
      'error, SU one only on success; "always" answers every message (CA, CE or CR), for senders that wait ' +
      'for an ACK whatever MSH-15 says. Original-mode messages always get their ACK. In a batch, the reply ' +
      'names the messages that got none and why.',
  },
  virtualVisit: virtualVisitSchema,
} as const;

const senderPattern = '^(?:\\*|[^^*\\s][^^*]*)\\^(?:\\*|[^^*\\s][^^*]*)$';

export const hl7v2MllpSchema = {
  type: 'object',
  description: 'HL7v2 over MLLP (TCP, normally TLS). Each frame is committed, then ACKed.',
  required: ['name', 'type', 'port'],
  additionalProperties: false,
  properties: {
    ...commonProperties,
    type: { type: 'string', const: HL7V2_MLLP, description: 'Input type.' },
    host: {
      type: 'string',
      minLength: 1,
      default: '127.0.0.1',
      description:
        'Address to listen on. The default accepts local senders only; 0.0.0.0 (or ::) exposes the port ' +
        'to the network — use tls then.',
    },
    port: {
      type: 'integer',
      minimum: 0,
      maximum: 65535,
      description: 'TCP port to listen on (2575 is the registered HL7 port). 0 lets the system pick one (tests).',
    },
    tls: {
      type: 'object',
      description: 'MLLP over TLS. Required unless plain: true.',
      required: ['cert', 'key'],
      additionalProperties: false,
      properties: {
        cert: { ...secretRefSchema, description: 'Server certificate chain (PEM), by reference.' },
        key: { ...secretRefSchema, description: 'Private key of the certificate (PEM), by reference.' },
        ca: {
          ...secretRefSchema,
          description:
            'CA certificates (PEM) that client certificates must chain to. Required with requireClientCert: ' +
            'client certificates are never trusted on the strength of a public CA.',
        },
        requireClientCert: {
          type: 'boolean',
          default: false,
          description: 'Refuse TLS clients without a valid certificate (mutual TLS).',
        },
        allowedSenders: {
          type: 'object',
          description:
            'Client certificate subject CN → senders it may send for, as "MSH-3^MSH-4" (sending application ^ ' +
            'sending facility, first component); "*" matches any, e.g. { "epic.example.org": ["EPIC^GHH", "EPIC^*"] }. ' +
            'When set, certificates not listed are refused and a message from another sender gets AR. ' +
            'Needs requireClientCert: true. Default: any sender.',
          additionalProperties: {
            type: 'array',
            minItems: 1,
            description: 'Sender patterns for this certificate.',
            items: {
              type: 'string',
              pattern: senderPattern,
              'x-hint': 'write "APPLICATION^FACILITY", either part may be "*"',
              description: 'A sender pattern "MSH-3^MSH-4".',
            },
          },
        },
      },
    },
    plain: {
      type: 'boolean',
      default: false,
      description:
        'Accept unencrypted MLLP. Must be set explicitly (and only on a trusted network or a loopback address): ' +
        'HL7 messages carry patient data.',
    },
    maxFrameBytes: {
      type: 'integer',
      minimum: 1024,
      maximum: 67108864,
      default: 10485760,
      description: 'Largest MLLP frame in bytes (default 10 MiB); a larger frame closes the connection.',
    },
    idleTimeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 86400,
      default: 300,
      description: 'Seconds without a byte, or without completing a frame, before a connection is closed.',
    },
    firstByteTimeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 86400,
      default: 10,
      description:
        'Seconds a new connection may stay silent before its first byte (counted after the TLS handshake); ' +
        'sockets opened and left silent are closed, logged and counted. Trusted senders (trustedSenders) are ' +
        'exempt and may open their connection ahead of their first message; idleTimeoutSeconds still applies.',
    },
    tlsHandshakeTimeoutSeconds: {
      type: 'integer',
      minimum: 1,
      maximum: 600,
      default: 10,
      description: 'Seconds a TLS handshake may take before the connection is closed (tls only).',
    },
    maxConnections: {
      type: 'integer',
      minimum: 1,
      maximum: 100000,
      default: 200,
      description:
        'Simultaneous connections accepted, TLS handshakes in progress included; further ones are refused at once ' +
        '(logged and counted).',
    },
    maxConnectionsPerAddress: {
      type: 'integer',
      minimum: 1,
      maximum: 100000,
      default: 20,
      description:
        'Simultaneous connections from one IP address; further ones are refused at once (logged and counted). ' +
        'Addresses in trustedSenders are exempt.',
    },
    reservedConnections: {
      type: 'integer',
      minimum: 0,
      maximum: 99999,
      default: 20,
      description:
        'Of maxConnections, the slots only trusted senders may use, so that other peers holding sockets cannot ' +
        'lock the EHR out. Must be below maxConnections; has no effect without trusted senders.',
    },
    trustedSenders: {
      type: 'object',
      description:
        'The configured senders, which can always connect: they may use the reserved slots and keep an idle ' +
        'connection open before their first message, and their addresses are exempt from ' +
        'maxConnectionsPerAddress. Client certificates named in tls.allowedSenders are trusted too.',
      default: {},
      additionalProperties: false,
      properties: {
        addresses: {
          type: 'array',
          default: [],
          description: 'IPv4/IPv6 addresses or CIDR subnets of senders, e.g. ["10.20.0.5", "10.21.0.0/24"].',
          items: { type: 'string', minLength: 1, description: 'An IP address or a CIDR subnet.' },
        },
        certificateCNs: {
          type: 'array',
          default: [],
          description: 'Subject CNs of client certificates (mutual TLS) that are trusted, in addition to those of tls.allowedSenders.',
          items: { type: 'string', minLength: 1, description: 'A client-certificate subject CN.' },
        },
      },
    },
  },
} as const satisfies JsonSchema;

export const hl7v2HttpSchema = {
  type: 'object',
  description: 'HL7v2 posted over HTTP to POST /ingest/hl7v2/<name> on the server.http listener.',
  required: ['name', 'type'],
  additionalProperties: false,
  properties: {
    ...commonProperties,
    type: { type: 'string', const: HL7V2_HTTP, description: 'Input type.' },
    auth: {
      description:
        'Caller authentication: { bearerToken: { env: NAME } }, or "none". Required when server.http.host is ' +
        'not a loopback address (anyone who reaches the listener could otherwise post messages that make ' +
        'CareRelay write to patients): `validate` and `start` refuse such a configuration. "none" says it is ' +
        'deliberate (an authenticating proxy in front): allowed, with a warning at every start. Without auth ' +
        'on a loopback listener, any local process may post.',
      'x-hint': 'write auth: { bearerToken: { env: NAME } } or auth: none',
      anyOf: [
        { type: 'string', const: NO_AUTH, description: 'No authentication, deliberately.' },
        {
          type: 'object',
          description: 'Bearer-token authentication.',
          required: ['bearerToken'],
          additionalProperties: false,
          properties: {
            bearerToken: {
              ...secretRefSchema,
              description: 'Token callers send as "Authorization: Bearer <token>", by reference.',
            },
          },
        },
      ],
    },
    maxBodyBytes: {
      type: 'integer',
      minimum: 1024,
      maximum: 67108864,
      default: 10485760,
      description:
        'Largest request body in bytes (default 10 MiB). A larger one is answered 413 and the connection closed ' +
        'without reading the rest.',
    },
  },
} as const satisfies JsonSchema;

function checkMllp(config: Hl7v2MllpConfig): InstanceCheckIssue[] {
  const issues: InstanceCheckIssue[] = [];
  if (!config.tls && !config.plain) {
    issues.push({
      path: [],
      message:
        `MLLP input "${config.name}" has neither a tls block nor plain: true. HL7 carries patient data, so ` +
        'add tls: { cert: { file: … }, key: { file: … } }, or set plain: true to accept unencrypted MLLP ' +
        'on a trusted network',
    });
  }
  if (config.tls && config.plain) {
    issues.push({ path: ['plain'], message: 'plain: true contradicts the tls block; remove one of them' });
  }
  if (config.tls?.requireClientCert && !config.tls.ca) {
    issues.push({
      path: ['tls', 'requireClientCert'],
      atKey: true,
      message:
        'requireClientCert: true needs tls.ca, the CA that signs the senders\' client certificates ' +
        '(trusting every public CA would admit anyone holding a publicly issued certificate)',
    });
  }
  if (config.tls?.allowedSenders && !config.tls.requireClientCert) {
    issues.push({
      path: ['tls', 'allowedSenders'],
      atKey: true,
      message: 'allowedSenders maps client certificates to senders, so it needs requireClientCert: true',
    });
  }
  const trusted = config.trustedSenders;
  trusted.addresses.forEach((entry, i) => {
    if (!isAddressOrSubnet(entry)) {
      issues.push({
        path: ['trustedSenders', 'addresses', i],
        message: `"${entry}" is not an IP address or CIDR subnet; write e.g. "10.20.0.5" or "10.21.0.0/24"`,
      });
    }
  });
  if (trusted.certificateCNs.length > 0 && !config.tls?.requireClientCert) {
    issues.push({
      path: ['trustedSenders', 'certificateCNs'],
      atKey: true,
      message: 'a client certificate is only known with mutual TLS: certificateCNs needs tls.requireClientCert: true',
    });
  }
  if (trustedSenderCount(config) > 0 && config.reservedConnections >= config.maxConnections) {
    issues.push({
      path: ['reservedConnections'],
      atKey: true,
      message:
        `reservedConnections (${config.reservedConnections}) must be below maxConnections (${config.maxConnections}), ` +
        'or nobody but the trusted senders could connect; lower it',
    });
  }
  return issues;
}

function isAddressOrSubnet(entry: string): boolean {
  const [address, bits, ...rest] = entry.split('/');
  const family = net.isIP(address ?? '');
  if (family === 0 || rest.length > 0) return false;
  return bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128));
}

/** Configured senders of an MLLP input (addresses, certificate CNs, tls.allowedSenders CNs). */
function trustedSenderCount(config: Hl7v2MllpConfig): number {
  return config.trustedSenders.addresses.length + mllpTrustedCertificateCNs(config).length;
}

/** Certificate CNs an MLLP input trusts: trustedSenders.certificateCNs and the keys of tls.allowedSenders. */
export function mllpTrustedCertificateCNs(config: Hl7v2MllpConfig): string[] {
  return [...new Set([...config.trustedSenders.certificateCNs, ...Object.keys(config.tls?.allowedSenders ?? {})])];
}

export const hl7v2MllpSpec: InputSpec<Hl7v2MllpConfig> = {
  type: HL7V2_MLLP,
  summary: 'HL7v2 over MLLP (TLS, or plain TCP when explicitly allowed); ACK after commit.',
  configSchema: hl7v2MllpSchema,
  check: checkMllp,
};

/** True for an address that only this machine can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

function checkHttpExposure(config: Hl7v2HttpConfig, server: ServerConfig): InstanceCheckIssue[] {
  if (config.auth !== undefined || isLoopbackHost(server.http.host)) return [];
  return [
    {
      path: ['name'],
      message:
        `HTTP ingest input "${config.name}" has no auth, but server.http.host is ${server.http.host}, so anyone who ` +
        'reaches it could post messages that make CareRelay write to patients. Add auth: { bearerToken: { env: NAME } }, ' +
        'keep server.http.host on 127.0.0.1, or write auth: none if a proxy in front authenticates callers',
    },
  ];
}

export const hl7v2HttpSpec: InputSpec<Hl7v2HttpConfig> = {
  type: HL7V2_HTTP,
  summary: 'HL7v2 posted to POST /ingest/hl7v2/<name>; the HTTP answer carries the ACK.',
  configSchema: hl7v2HttpSchema,
  checkServer: checkHttpExposure,
};

/**
 * Whether the client certificate `cn` may send for sender `msh3^msh4` (first components of
 * MSH-3 and MSH-4). Without an allowedSenders map every sender is allowed.
 */
export function isSenderAllowed(
  allowedSenders: MllpTlsConfig['allowedSenders'],
  cn: string | undefined,
  msh3: string,
  msh4: string,
): boolean {
  if (!allowedSenders) return true;
  if (cn === undefined || !Object.hasOwn(allowedSenders, cn)) return false;
  return allowedSenders[cn]!.some((pattern) => {
    const [app, facility] = pattern.split('^') as [string, string];
    return (app === '*' || app === msh3) && (facility === '*' || facility === msh4);
  });
}
