// `carerelay fhir subscribe --input NAME`: creates (or updates) on the FHIR server the
// Subscriptions a fhir-rest-hook input lists, then shows what the server holds.
//
// Each is an R4 Subscription in the Subscriptions R5 Backport profile (IG STU 1.1
// "backport-subscription"): criteria = the topic canonical, filter criteria as
// backport-filter-criteria extensions, channel rest-hook to CareRelay's endpoint with the
// payload content and heartbeat period extensions, and the auth the input expects — a
// channel.header line (bearer or fixed header), or for HMAC Medplum's subscription-secret
// extension. It is written with PUT Subscription/<id> so that the id in the config is the
// id the server puts in every notification (and running it again updates, never
// duplicates). The status text names no secret.
//
// Each subscription is done on its own: one the server refuses does not stop the others,
// and each gets its own line (the status as the server holds it, or what went wrong).
// A subscription the server does not hold yet is created with PUT (FHIR "update as
// create", which keeps the configured id); a server that refuses client-assigned ids gets a
// POST create instead, and the id it assigned is reported, to be set in the configuration.
import { ConfigError } from '../errors.ts';
import { loadConfig } from '../config/load.ts';
import type { Env } from '../config/yaml.ts';
import { FhirRequestError, type FhirClient } from '../fhir/client.ts';
import type { FhirResource } from '../fhir/notification.ts';
import { FHIR_REST_HOOK, type FhirRestHookConfig, type FhirSubscriptionConfig } from '../inputs/fhir/spec.ts';
import { fhirClientFor, inboundAuthFor } from './fhir-setup.ts';
import type { FhirInboundAuth } from '../api/fhir-routes.ts';

export interface FhirSubscribeOptions {
  /** Directory holding connectors/. */
  configDir: string;
  env: Env;
  /** Name of a fhir-rest-hook input. */
  input: string;
  /** Public base URL of this CareRelay as the FHIR server reaches it, e.g. https://carerelay.example.org */
  endpointBaseUrl: string;
}

const BACKPORT = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';
export const BACKPORT_SUBSCRIPTION_PROFILE = `${BACKPORT}/backport-subscription`;
const MEDPLUM_SECRET = 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret';
/** Seconds the server should wait for CareRelay's answer (ACK after commit, fetches included). */
const CHANNEL_TIMEOUT_SECONDS = 30;
/** Events per notification at most: small Bundles keep each 2xx quick. */
const MAX_COUNT = 20;

/** The Backport Subscription resource for one configured subscription. */
export function backportSubscription(
  subscription: FhirSubscriptionConfig,
  endpoint: string,
  auth: FhirInboundAuth,
  reason: string,
): FhirResource {
  const channelExtensions: Array<Record<string, unknown>> = [
    { url: `${BACKPORT}/backport-timeout`, valueUnsignedInt: CHANNEL_TIMEOUT_SECONDS },
    { url: `${BACKPORT}/backport-max-count`, valuePositiveInt: MAX_COUNT },
  ];
  if (subscription.heartbeatPeriodSeconds > 0) {
    channelExtensions.unshift({ url: `${BACKPORT}/backport-heartbeat-period`, valueUnsignedInt: subscription.heartbeatPeriodSeconds });
  }
  const channel: Record<string, unknown> = {
    extension: channelExtensions,
    type: 'rest-hook',
    endpoint,
    payload: 'application/fhir+json',
    _payload: { extension: [{ url: `${BACKPORT}/backport-payload-content`, valueCode: subscription.payload }] },
  };
  const resource: FhirResource = {
    resourceType: 'Subscription',
    id: subscription.id,
    meta: { profile: [BACKPORT_SUBSCRIPTION_PROFILE] },
    status: 'requested',
    reason,
    criteria: subscription.topic,
    channel,
  };
  if (subscription.filterCriteria.length > 0) {
    resource._criteria = {
      extension: subscription.filterCriteria.map((valueString) => ({ url: `${BACKPORT}/backport-filter-criteria`, valueString })),
    };
  }
  switch (auth.kind) {
    case 'bearer':
      channel.header = [`Authorization: Bearer ${auth.token}`];
      break;
    case 'header':
      channel.header = [`${auth.name}: ${auth.value}`];
      break;
    case 'hmac':
      resource.extension = [{ url: MEDPLUM_SECRET, valueString: auth.secret }];
      break;
    case 'standardWebhooks':
      // FHIR has no element for a signing secret: it is configured on the sender's side.
      break;
    default:
      auth satisfies never;
  }
  return resource;
}

function endpointFor(endpointBaseUrl: string, input: string): string {
  let url: URL;
  try {
    url = new URL(endpointBaseUrl);
  } catch {
    throw new ConfigError([{ file: '--endpoint', message: `"${endpointBaseUrl}" is not a URL; give CareRelay's public base URL, e.g. https://carerelay.example.org` }]);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError([{ file: '--endpoint', message: `the endpoint must be http(s), got ${url.protocol}` }]);
  }
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}/ingest/fhir/${input}`;
}

function extensionValue(list: unknown, url: string): unknown {
  if (!Array.isArray(list)) return undefined;
  const found = (list as Array<Record<string, unknown>>).find((e) => e?.url === url);
  if (found === undefined) return undefined;
  const key = Object.keys(found).find((k) => k.startsWith('value'));
  return key === undefined ? undefined : found[key];
}

function describeSubscription(resource: FhirResource, baseUrl: string): string {
  const channel = (resource.channel ?? {}) as Record<string, unknown>;
  const payload = extensionValue((channel._payload as Record<string, unknown> | undefined)?.extension, `${BACKPORT}/backport-payload-content`);
  const heartbeat = extensionValue(channel.extension, `${BACKPORT}/backport-heartbeat-period`);
  const lines = [
    `Subscription/${String(resource.id)} on ${baseUrl}: status ${String(resource.status ?? 'unknown')}`,
    `  topic: ${String(resource.criteria ?? '')}`,
    `  endpoint: ${String(channel.endpoint ?? '')} (${String(channel.type ?? '')}, ${String(payload ?? 'payload not stated')})`,
    `  heartbeat: ${heartbeat === undefined ? 'none' : `every ${String(heartbeat)} s`}`,
  ];
  if (typeof resource.error === 'string' && resource.error !== '') lines.push(`  error: ${resource.error.slice(0, 200)}`);
  return lines.join('\n');
}

/** One configured subscription's outcome: the server's status text, or what went wrong. */
export interface FhirSubscribeOutcome {
  id: string;
  ok: boolean;
  text: string;
}

/**
 * HTTP statuses a server answers a PUT to an id it does not hold with when it does not let
 * clients choose ids (FHIR R4 §3.1.0.4.2 "update as create" is optional): 405 (no such
 * interaction), 400/409/412/422 (HAPI, Medplum and others refuse the id itself).
 */
const CREATE_REFUSED = new Set([400, 405, 409, 412, 422]);

/**
 * Creates or updates every subscription of the fhir-rest-hook input `input` on its server,
 * each on its own, and returns one outcome per subscription (the status text as the server
 * holds it, or the failure). Throws ConfigError for a missing/wrong input only.
 */
export async function fhirSubscribe(options: FhirSubscribeOptions): Promise<FhirSubscribeOutcome[]> {
  const plan = await loadConfig({ configDir: options.configDir, env: options.env });
  const instance = plan.inputs.find((i) => i.name === options.input);
  const restHooks = plan.inputs.filter((i) => i.type === FHIR_REST_HOOK).map((i) => i.name);
  if (instance === undefined || instance.type !== FHIR_REST_HOOK) {
    throw new ConfigError([
      {
        file: '--input',
        message:
          `${instance === undefined ? 'no input' : `input "${options.input}" is a ${instance.type}, not a`} ` +
          `${instance === undefined ? `named "${options.input}"` : FHIR_REST_HOOK}; fhir-rest-hook inputs: ${restHooks.join(', ') || 'none'}`,
      },
    ]);
  }
  const config = instance.config as unknown as FhirRestHookConfig;
  if (config.subscriptions.length === 0) {
    throw new ConfigError([
      { file: instance.file, line: instance.line, column: instance.column, message: `input "${config.name}" lists no subscriptions to create` },
    ]);
  }
  const client = fhirClientFor(config.server, options.env, plan.configDir);
  const auth = inboundAuthFor(config.auth, options.env, plan.configDir);
  const endpoint = endpointFor(options.endpointBaseUrl, config.name);
  const outcomes: FhirSubscribeOutcome[] = [];
  for (const subscription of config.subscriptions) {
    const resource = backportSubscription(subscription, endpoint, auth, `CareRelay input ${config.name}`);
    try {
      outcomes.push({ id: subscription.id, ok: true, text: await writeSubscription(client, resource, subscription.id) });
    } catch (error) {
      // Error texts of the FHIR client carry types, ids and statuses only (no secret, no body).
      const code = typeof (error as { code?: unknown }).code === 'string' ? ` (${(error as { code: string }).code})` : '';
      outcomes.push({ id: subscription.id, ok: false, text: `Subscription/${subscription.id} on ${client.baseUrl}: failed: ${(error as Error).message}${code}` });
    }
  }
  return outcomes;
}

/** Updates the subscription, or creates it; returns the status text of what the server holds. */
async function writeSubscription(client: FhirClient, resource: FhirResource, id: string): Promise<string> {
  let exists = true;
  try {
    await client.read('Subscription', id);
  } catch (error) {
    if (!(error instanceof FhirRequestError) || (error.status !== 404 && error.status !== 410)) throw error;
    exists = false;
  }
  if (exists) {
    await client.update(resource);
    return describeSubscription(await client.read('Subscription', id), client.baseUrl);
  }
  try {
    await client.update(resource);
    return `${describeSubscription(await client.read('Subscription', id), client.baseUrl)}\n  created`;
  } catch (error) {
    if (!(error instanceof FhirRequestError) || error.status === undefined || !CREATE_REFUSED.has(error.status)) throw error;
  }
  // R4 Subscription has no identifier for a conditional create: a run before the assigned id
  // was put in the configuration finds its Subscription by topic and endpoint instead of
  // creating a second one.
  const channel = resource.channel as { endpoint: string };
  const found = (await client.search('Subscription', { url: channel.endpoint })).resources.find(
    (r) => r.criteria === resource.criteria && (r.channel as { endpoint?: unknown } | undefined)?.endpoint === channel.endpoint,
  );
  let assigned: string | undefined;
  if (found !== undefined && typeof found.id === 'string') {
    assigned = found.id;
    await client.update({ ...resource, id: assigned });
  } else {
    const created = await client.create(resource);
    assigned = typeof created.id === 'string' ? created.id : undefined;
  }
  if (assigned === undefined) {
    return `Subscription/${id} on ${client.baseUrl}: created, but the server did not say its id; find it on the server and set it as this subscription's id`;
  }
  const held = await client.read('Subscription', assigned);
  return (
    `${describeSubscription(held, client.baseUrl)}\n  ${found !== undefined ? 'updated' : 'created'} as Subscription/${assigned}: ` +
    `the server assigns ids itself, and its notifications name Subscription/${assigned}; set \`id: ${assigned}\` for this subscription in the input`
  );
}
