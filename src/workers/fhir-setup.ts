// From a validated fhir-rest-hook / fhir-poll config to running parts: the FHIR client
// (secrets resolved), the ingest, the poller and the inbound auth of the HTTP route.
// Used by the composition root and by `carerelay fhir subscribe`.
import type { FhirInboundAuth } from '../api/fhir-routes.ts';
import { readSecret, type Env } from '../config/yaml.ts';
import type { FhirClient } from '../fhir/client.ts';
import { fhirClientFor as clientForServer } from '../fhir/server-config.ts';
import type { FhirInboundAuthConfig, FhirPollConfig, FhirRestHookConfig, FhirServerConfig } from '../inputs/fhir/spec.ts';
import { standardWebhooksKey } from '../inputs/fhir/signatures.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/store.ts';
import type { Trigger } from '../types.ts';
import { FhirIngest, type FhirIngestDeps } from './fhir-ingest.ts';
import { FhirPoller } from './fhir-poll.ts';

export function fhirClientFor(server: FhirServerConfig, env: Env, configDir: string): FhirClient {
  return clientForServer(server, (ref) => readSecret(ref, env, configDir));
}

export function inboundAuthFor(auth: FhirInboundAuthConfig, env: Env, configDir: string): FhirInboundAuth {
  if (auth.bearer) return { kind: 'bearer', token: readSecret(auth.bearer.token, env, configDir) };
  if (auth.header) return { kind: 'header', name: auth.header.name.toLowerCase(), value: readSecret(auth.header.value, env, configDir) };
  if (auth.hmac) return { kind: 'hmac', secret: readSecret(auth.hmac.secret, env, configDir), header: auth.hmac.header.toLowerCase() };
  if (auth.standardWebhooks) {
    const key = standardWebhooksKey(readSecret(auth.standardWebhooks.secret, env, configDir));
    if (key === undefined) {
      throw new Error(
        'fhir-rest-hook auth.standardWebhooks.secret is not a Standard Webhooks secret: give the base64 signing secret, ' +
          'with or without its "whsec_" prefix, exactly as the sender shows it',
      );
    }
    return { kind: 'standardWebhooks', key, toleranceSeconds: auth.standardWebhooks.toleranceSeconds };
  }
  // The spec's check() requires exactly one; reaching here is a bug upstream.
  throw new Error('fhir-rest-hook auth: none of bearer, header, hmac, standardWebhooks is configured');
}

export interface FhirRuntimeDeps {
  store: Store;
  log: Logger;
  env: Env;
  configDir: string;
  onCommitted?: (triggers: Trigger[]) => void | Promise<void>;
  /** FHIR Consent resources received (docs/consent.md ways in): FhirIngestDeps.onConsent. */
  onConsent?: FhirIngestDeps['onConsent'];
  /** The raw-bytes quota of refused requests and rejected records (server.rejectedRaw). */
  rejectedRaw?: FhirIngestDeps['rejectedRaw'];
  /** Seals video-visit join URLs (docs/video.md): FhirIngestDeps.video. */
  video?: FhirIngestDeps['video'];
}

export function restHookIngest(config: FhirRestHookConfig, deps: FhirRuntimeDeps): FhirIngest {
  return new FhirIngest(
    {
      input: config.name,
      subscriptions: config.subscriptions.map((s) => ({ id: s.id, heartbeatPeriodSeconds: s.heartbeatPeriodSeconds })),
      searchResources: config.searchResources,
      searchLookbackSeconds: config.searchLookbackSeconds,
    },
    {
      store: deps.store,
      log: deps.log,
      client: fhirClientFor(config.server, deps.env, deps.configDir),
      ...(deps.onCommitted ? { onCommitted: deps.onCommitted } : {}),
      ...(deps.onConsent ? { onConsent: deps.onConsent } : {}),
      ...(deps.rejectedRaw ? { rejectedRaw: deps.rejectedRaw } : {}),
      ...(deps.video ? { video: deps.video } : {}),
    },
  );
}

export function poller(config: FhirPollConfig, deps: FhirRuntimeDeps): FhirPoller {
  const ingest = new FhirIngest(
    { input: config.name, subscriptions: [], searchResources: [], searchLookbackSeconds: 3600 },
    {
      store: deps.store,
      log: deps.log,
      client: fhirClientFor(config.server, deps.env, deps.configDir),
      ...(deps.onCommitted ? { onCommitted: deps.onCommitted } : {}),
      ...(deps.onConsent ? { onConsent: deps.onConsent } : {}),
      ...(deps.rejectedRaw ? { rejectedRaw: deps.rejectedRaw } : {}),
      ...(deps.video ? { video: deps.video } : {}),
    },
  );
  return new FhirPoller(
    {
      input: config.name,
      resources: config.resources,
      intervalSeconds: config.intervalSeconds,
      pageSize: config.pageSize,
      since: config.since,
    },
    { ingest, store: deps.store, log: deps.log },
  );
}
