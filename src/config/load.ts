// Loads the configuration directory into one immutable plan (docs/architecture.md invariant 5):
// every connectors/*.yaml file is read and validated, every problem across all files is
// collected, and a single ConfigError lists them all — nothing starts half-configured.

import { readdir, readFile, stat } from 'node:fs/promises';
import { accessSync, constants as fsConstants } from 'node:fs';
import path from 'node:path';
import type { Ajv } from 'ajv';
import { ConfigError, type ConfigIssue } from '../errors.ts';
import { inputSpecs as registeredInputSpecs } from '../inputs/index.ts';
import { outputSpecs as registeredOutputSpecs } from '../outputs/index.ts';
import { outputInfos, type OutputSpec } from '../outputs/spec.ts';
import type { TemplateSet } from '../pipeline/render.ts';
import type { Rule } from '../pipeline/rule.ts';
import { loadMappings, type MappingSet } from './mappings.ts';
import { alertsSchema, retentionSchema, type AlertsConfig, type RetentionConfig } from './operations-schema.ts';
import { policyConfigOf, policySchema, type PolicyBlock, type PolicyConfig } from './policy-schema.ts';
import { queueConfigIssues, queueSecretsInUse } from './queue-schema.ts';
import { connectorFileSchema, serverSchema, type ServerConfig } from './server-schema.ts';
import { storeConfigIssues, storeSecretsInUse } from './store-schema.ts';
import { videoKeyProblems } from './video-schema.ts';
import type { WaitlistConfig } from './waitlist-schema.ts';
import { WriteBackKind } from '../outputs/write-back.ts';
import { TriggerType } from '../types.ts';
import {
  createAjv,
  readSecret,
  readYamlDocument,
  toPointer,
  validateWithSchema,
  type DocPath,
  type Env,
  type JsonSchema,
  type SourcePosition,
  type YamlDocument,
} from './yaml.ts';

/** A rule a component checks itself after its schema passed; `path` is relative to the instance. */
export interface InstanceCheckIssue {
  path: DocPath;
  message: string;
  /** Point at the key of the entry rather than its value. */
  atKey?: boolean;
}

/** What the loader needs from an input or output type (InputSpec / OutputSpec extend it). */
export interface ComponentSpec {
  readonly type: string;
  readonly summary: string;
  readonly configSchema: JsonSchema;
  check?(config: unknown): InstanceCheckIssue[];
  /**
   * Rules that also depend on the server block (e.g. an HTTP ingest input reachable beyond
   * loopback must authenticate). Runs on a config that passed its schema.
   */
  checkServer?(config: unknown, server: ServerConfig): InstanceCheckIssue[];
}

/** One configured input or output. `config` is validated, defaulted and frozen. */
export interface InstancePlan<Config = Readonly<Record<string, unknown>>> {
  readonly type: string;
  readonly name: string;
  readonly config: Config;
  /** Absolute path of the file that declares it, and where (1-based). */
  readonly file: string;
  readonly line: number;
  readonly column: number;
}

export interface CarerelayPlan {
  /** Absolute configuration directory; relative paths in the config resolve against it. */
  readonly configDir: string;
  /** Absolute paths of the connectors files read, in load order. */
  readonly files: readonly string[];
  /** Defaults applied; `dataDir` is absolute. */
  readonly server: ServerConfig;
  /** Consent and safety settings, organisation and site zones (connectors `policy` block, config/policy-schema.ts). */
  readonly policy: PolicyConfig;
  /** Alert conditions and where alerts go (connectors `alerts` block, config/operations-schema.ts). */
  readonly alerts: AlertsConfig;
  /** How long each kind of data is kept (connectors `retention` block, config/operations-schema.ts). */
  readonly retention: RetentionConfig;
  readonly inputs: readonly InstancePlan[];
  readonly outputs: readonly InstancePlan[];
  /** Routing rules from mappings/*.yaml (config/mappings.ts); empty without a mappings/ directory. */
  readonly mappings: readonly Rule[];
  /** The templates those rules use, compiled (mappings/templates/). */
  readonly templates: TemplateSet;
  /** The waitlist (connectors `waitlist` block, config/waitlist-schema.ts); absent: no slot is offered. */
  readonly waitlist?: WaitlistConfig;
}

export interface LoadConfigOptions {
  /** Directory holding connectors/ (and mappings/). */
  configDir: string;
  /** Source of ${VAR} interpolation and of { env: NAME } secrets, usually process.env. */
  env: Env;
  /** Input registry; default src/inputs/index.ts. */
  inputSpecs?: readonly ComponentSpec[];
  /** Output registry; default src/outputs/index.ts. */
  outputSpecs?: readonly ComponentSpec[];
  /**
   * Check that every secret reference resolves (variable set, file readable). Default true;
   * false validates the shape only, e.g. in CI where the secrets do not exist.
   */
  checkSecrets?: boolean;
  /**
   * Also check the mapping tests beside the mappings (`carerelay validate` does; `start`
   * does not: a broken test file must not keep the server from starting). Given the loaded
   * mappings, returns the tests' problems, reported with the rest.
   */
  mappingTests?: (mappings: MappingSet) => Promise<ConfigIssue[]>;
}

/** Refuse absurd files before parsing: a config file is a few KiB. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/** One parsed YAML file of a config folder. */
export interface YamlFile {
  /** Absolute path. */
  path: string;
  /** Path as shown in issues: relative to the working directory when inside it. */
  display: string;
  doc: YamlDocument;
}

let sharedAjv: Ajv | undefined;
function ajv(): Ajv {
  sharedAjv ??= createAjv();
  return sharedAjv;
}

/** Relative to the working directory when inside it (clickable in terminals), else absolute. */
export function displayPath(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file;
}

/**
 * Reads every `*.yaml` file of `dir` in name order. A missing directory and files that
 * cannot be read become issues; `.yml` files are reported, not silently skipped.
 */
export async function readYamlDir(dir: string, env: Env, issues: ConfigIssue[]): Promise<YamlFile[]> {
  let names: string[];
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    names = entries.filter((e) => e.isFile()).map((e) => e.name);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    issues.push({
      file: displayPath(dir),
      message:
        code === 'ENOENT'
          ? `directory not found: create ${path.basename(dir)}/ with at least one .yaml file (see connectors/example.yaml)`
          : `cannot read the directory (${code ?? 'error'})`,
    });
    return [];
  }
  const files: YamlFile[] = [];
  for (const name of names.sort()) {
    const file = path.join(dir, name);
    if (name.endsWith('.yml')) {
      issues.push({ file: displayPath(file), message: `not loaded: configuration files end in .yaml; rename it to ${name.slice(0, -4)}.yaml` });
      continue;
    }
    if (!name.endsWith('.yaml')) continue;
    const display = displayPath(file);
    try {
      const { size } = await stat(file);
      if (size > MAX_CONFIG_FILE_BYTES) {
        issues.push({ file: display, message: `file is ${size} bytes; configuration files are limited to ${MAX_CONFIG_FILE_BYTES}` });
        continue;
      }
      const text = await readFile(file, 'utf8');
      const doc = readYamlDocument(display, text, env);
      issues.push(...doc.issues);
      files.push({ path: file, display, doc });
    } catch (error) {
      issues.push({ file: display, message: `cannot read the file (${(error as NodeJS.ErrnoException).code ?? 'error'})` });
    }
  }
  return files;
}

interface Place {
  display: string;
  position: SourcePosition | undefined;
}

/** `file:line:column` of a place, as in issues. */
function where(place: Place): string {
  return place.position ? `${place.display}:${place.position.line}:${place.position.column}` : place.display;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const KIND_LABEL = { inputs: 'input', outputs: 'output' } as const;
type Kind = keyof typeof KIND_LABEL;

interface Located {
  kind: Kind;
  instance: InstancePlan<Record<string, unknown>>;
  file: YamlFile;
  base: DocPath;
  spec: ComponentSpec;
  /** Passed its schema. */
  valid: boolean;
}

/**
 * Reads `<configDir>/connectors/*.yaml` into a frozen plan, or throws one ConfigError listing
 * every problem found in every file (sorted by file, line, column).
 */
export async function loadConfig(options: LoadConfigOptions): Promise<CarerelayPlan> {
  const configDir = path.resolve(options.configDir);
  const { env } = options;
  const specs: Record<Kind, readonly ComponentSpec[]> = {
    inputs: options.inputSpecs ?? registeredInputSpecs,
    outputs: options.outputSpecs ?? registeredOutputSpecs,
  };
  const issues: ConfigIssue[] = [];
  const files = await readYamlDir(path.join(configDir, 'connectors'), env, issues);

  let server: Record<string, unknown> | undefined;
  let serverPlace: Place | undefined;
  const blocks: Record<'policy' | 'alerts' | 'retention' | 'waitlist', { value?: Record<string, unknown>; place?: Place }> = { policy: {}, alerts: {}, retention: {}, waitlist: {} };
  const instances: Record<Kind, InstancePlan<Record<string, unknown>>[]> = { inputs: [], outputs: [] };
  // Every instance of a known type with where it is, for the checks across instances.
  const located: Located[] = [];
  const names: Record<Kind, Map<string, Place>> = { inputs: new Map(), outputs: new Map() };

  for (const file of files) {
    const { value, locate } = file.doc;
    if (value === undefined || value === null) continue; // unparsable (already reported) or empty
    issues.push(...validateWithSchema(ajv(), connectorFileSchema, value, file.display, locate));
    if (!isRecord(value)) continue;

    if ('server' in value) {
      const here = { display: file.display, position: locate(['server'], { key: true }) };
      if (serverPlace) {
        issues.push({
          file: file.display,
          ...here.position,
          path: '/server',
          message: `server is already configured at ${where(serverPlace)}; keep a single server block`,
        });
      } else {
        serverPlace = here;
        if (isRecord(value.server)) server = value.server;
      }
    }

    // Like server: at most one file holds each of these blocks.
    for (const name of ['policy', 'alerts', 'retention', 'waitlist'] as const) {
      if (!(name in value)) continue;
      const here = { display: file.display, position: locate([name], { key: true }) };
      const first = blocks[name].place;
      if (first) {
        issues.push({ file: file.display, ...here.position, path: `/${name}`, message: `${name} is already configured at ${where(first)}; keep a single ${name} block` });
      } else {
        blocks[name] = { place: here, ...(isRecord(value[name]) ? { value: value[name] as Record<string, unknown> } : {}) };
      }
    }

    for (const kind of ['inputs', 'outputs'] as const) {
      const list = value[kind];
      if (!Array.isArray(list)) continue;
      const known = specs[kind].map((s) => s.type);
      list.forEach((item: unknown, index) => {
        const base = [kind, index] as const;
        if (!isRecord(item)) return; // reported by the file schema
        const position = locate(base);
        const type = item.type;
        const spec = typeof type === 'string' ? specs[kind].find((s) => s.type === type) : undefined;
        if (typeof type !== 'string') {
          issues.push({
            file: file.display,
            ...(typeof type === 'undefined' ? position : locate([...base, 'type'])),
            path: toPointer(base),
            message: `${KIND_LABEL[kind]} needs a "type" (known: ${known.join(', ') || 'none yet'})`,
          });
        } else if (!spec) {
          issues.push({
            file: file.display,
            ...locate([...base, 'type']),
            path: toPointer([...base, 'type']),
            message: `unknown ${KIND_LABEL[kind]} type "${type}" (known: ${known.join(', ') || 'none yet'})`,
          });
        }

        const name = item.name;
        if (typeof name === 'string') {
          const namePlace = { display: file.display, position: locate([...base, 'name']) };
          const first = names[kind].get(name);
          if (first) {
            issues.push({
              file: file.display,
              ...namePlace.position,
              path: toPointer([...base, 'name']),
              message: `${KIND_LABEL[kind]} name "${name}" is already used at ${where(first)}; names must be unique`,
            });
          } else {
            names[kind].set(name, namePlace);
          }
        }
        if (!spec) return;

        const schemaIssues = validateWithSchema(ajv(), spec.configSchema, item, file.display, locate, base);
        issues.push(...schemaIssues);
        const instance = {
          type: spec.type,
          name: String(name),
          config: item,
          file: file.path,
          line: position?.line ?? 1,
          column: position?.column ?? 1,
        };
        instances[kind].push(instance);
        located.push({ kind, instance, file, base, spec, valid: schemaIssues.length === 0 });
        if (schemaIssues.length > 0) return;
        for (const found of spec.check?.(item) ?? []) {
          const at = [...base, ...found.path];
          issues.push({ file: file.display, ...locate(at, { key: found.atKey }), path: toPointer(at), message: found.message });
        }
      });
    }
  }

  // The server block: from its file, or all defaults.
  const serverValue = server ?? {};
  if (!server) issues.push(...validateWithSchema(ajv(), serverSchema, serverValue, '(defaults)', () => undefined));
  const serverConfig = serverValue as unknown as ServerConfig & { dataDir: string };
  if (typeof serverConfig.dataDir === 'string') serverConfig.dataDir = path.resolve(configDir, serverConfig.dataDir);
  const tokenEnv = serverConfig.admin?.tokenEnv;
  if (serverPlace && typeof tokenEnv === 'string' && !env[tokenEnv] && options.checkSecrets !== false) {
    const serverFile = files.find((f) => f.display === serverPlace!.display)!;
    issues.push({
      file: serverPlace.display,
      ...serverFile.doc.locate(['server', 'admin', 'tokenEnv']),
      path: '/server/admin/tokenEnv',
      message: `environment variable ${tokenEnv} (the admin token) is not set`,
    });
  }

  const policyValue = blocks.policy.value ?? {};
  if (!blocks.policy.value) issues.push(...validateWithSchema(ajv(), policySchema, policyValue, '(defaults)', () => undefined));
  const policyBlock = policyValue as unknown as PolicyBlock;
  if (policyBlock.timezone !== undefined && serverConfig.timezone !== undefined && policyBlock.timezone !== serverConfig.timezone) {
    const serverFile = files.find((f) => f.display === serverPlace?.display);
    issues.push({
      file: serverPlace!.display,
      ...serverFile?.doc.locate(['server', 'timezone']),
      path: '/server/timezone',
      message: `server.timezone (${serverConfig.timezone}) disagrees with policy.timezone (${policyBlock.timezone}): the organisation zone is set once, in policy.timezone; remove server.timezone`,
    });
  }
  const policyFile = files.find((f) => f.display === blocks.policy.place?.display);
  const policyIssue = (at: DocPath, message: string): void => {
    if (policyFile) issues.push({ file: policyFile.display, ...policyFile.doc.locate(at), path: toPointer(at), message });
  };
  for (const [i, hook] of (Array.isArray(policyBlock.smsWebhooks) ? policyBlock.smsWebhooks : []).entries()) {
    if (!located.some((l) => l.kind === 'outputs' && l.instance.name === hook.output)) {
      policyIssue(['policy', 'smsWebhooks', i, 'output'], `no output named "${hook.output}": an SMS webhook belongs to a configured SMS output`);
    }
  }
  for (const [i, cap] of (Array.isArray(policyBlock.caps) ? policyBlock.caps : []).entries()) {
    if (isRecord(cap) && cap.perDay === undefined && cap.perWeek === undefined) policyIssue(['policy', 'caps', i], 'a cap needs perDay, perWeek or both');
  }
  if (blocks.policy.value && policyFile) {
    issues.push(...secretIssues(policySchema, policyValue, policyFile, ['policy'], configDir, env, options.checkSecrets !== false));
  }

  if (serverPlace) {
    const serverFile = files.find((f) => f.display === serverPlace!.display)!;
    const backendIssues = [
      ...(serverConfig.store ? storeConfigIssues(serverConfig.store).map((found) => ({ at: ['server', 'store', ...found.path], message: found.message })) : []),
      ...(serverConfig.queue ? queueConfigIssues(serverConfig.queue).map((found) => ({ at: ['server', 'queue', ...found.path], message: found.message })) : []),
    ];
    for (const { at, message } of backendIssues) {
      issues.push({ file: serverFile.display, ...serverFile.doc.locate(at, { key: true }), path: toPointer(at), message });
    }
  }
  const operations = operationsBlocks(blocks, files, located, policyBlock, (more) => issues.push(...more));

  if (serverPlace) issues.push(...adminTokenIssues(serverConfig, files.find((f) => f.display === serverPlace!.display)!, configDir, env, options.checkSecrets !== false));
  if (serverPlace && serverConfig.video && options.checkSecrets !== false) {
    const doc = files.find((f) => f.display === serverPlace!.display)!.doc;
    const read = (ref: Parameters<typeof readSecret>[0]): string | undefined => {
      try {
        return readSecret(ref, env, configDir);
      } catch {
        return undefined; // reported with the server block's other secrets
      }
    };
    for (const p of videoKeyProblems(serverConfig.video, read)) {
      issues.push({ file: serverPlace.display, ...doc.locate(['server', 'video', ...p.path]), path: toPointer(['server', 'video', ...p.path]), message: p.message });
    }
  }
  issues.push(...portIssues(serverConfig, serverPlace, files, located));
  if (typeof serverConfig.http?.host === 'string') {
    for (const { instance, file, base, spec } of located.filter((l) => l.valid && l.spec.checkServer !== undefined)) {
      for (const found of spec.checkServer!(instance.config, serverConfig)) {
        const at = [...base, ...found.path];
        issues.push({ file: file.display, ...file.doc.locate(at, { key: found.atKey }), path: toPointer(at), message: found.message });
      }
    }
  }
  for (const { instance, file, base, spec } of located.filter((l) => l.valid)) {
    issues.push(...secretIssues(spec.configSchema, instance.config, file, base, configDir, env, options.checkSecrets !== false));
  }

  // Rules are checked against the outputs as declared (channel, BAA, purposes: docs/consent.md
  // rule 4); outputs that failed their own schema are left out, already reported.
  const validOutputs = located.filter((l) => l.kind === 'outputs' && l.valid).map((l) => l.instance);
  const withInfo = specs.outputs.filter((s): s is OutputSpec => typeof (s as Partial<OutputSpec>).info === 'function');
  const optOutWords = Array.isArray(policyBlock.keywords?.optOut) ? policyBlock.keywords.optOut : [];
  const mappings = await loadMappings({ configDir, env, outputs: outputInfos(validOutputs, withInfo), issues, optOutWords });
  if (options.mappingTests) issues.push(...(await options.mappingTests(mappings)));
  const waitlist = waitlistBlock(blocks.waitlist, files, validOutputs, withInfo, mappings.rules, (more) => issues.push(...more));

  if (issues.length > 0) throw new ConfigError(sortIssues(withoutEchoes(issues, files), files));

  return deepFreeze({
    configDir,
    files: files.map((f) => f.path),
    server: serverConfig,
    policy: policyConfigOf(policyBlock, serverConfig),
    alerts: operations.alerts,
    retention: operations.retention,
    inputs: instances.inputs,
    outputs: instances.outputs,
    mappings: mappings.rules,
    templates: mappings.templates,
    ...(waitlist !== undefined ? { waitlist } : {}),
  });
}

/** The outputs that declare `book` (their writeBackKinds), for the messages that name them. */
const BOOKING_OUTPUTS = 'a fhir-appointment, hl7v2-srm or oracle-health-appointment output, or a webhook output with writeBack: true';

/**
 * The `waitlist` block (docs/waitlist.md), when there is one, and what its schema cannot say: the
 * booking output exists and books (declares `book`), and a rule sends the offers (an SMS rule on
 * appointment.waitlist_offered asking for a reply, whose accept answer claims the slot).
 */
function waitlistBlock(
  block: { value?: Record<string, unknown>; place?: Place },
  files: readonly YamlFile[],
  outputs: readonly InstancePlan[],
  specs: readonly OutputSpec[],
  rules: readonly Rule[],
  report: (issues: ConfigIssue[]) => void,
): WaitlistConfig | undefined {
  if (block.value === undefined || block.place === undefined) return undefined;
  const file = files.find((f) => f.display === block.place!.display)!;
  const issues: ConfigIssue[] = [];
  const issueAt = (at: DocPath, message: string, key = false): void => {
    issues.push({ file: file.display, ...file.doc.locate(at, { key }), path: toPointer(at), message });
  };
  const config = block.value as unknown as WaitlistConfig;
  const later = config.sources?.laterAppointments;
  if (later?.optIn === 'listed' && Array.isArray(later.patients) && later.patients.length === 0) {
    issueAt(['waitlist', 'sources', 'laterAppointments', 'optIn'], 'optIn: listed offers slots to the patients in `patients` only, and the list is empty: list the patient ids that opted in, or use optIn: all');
  }
  if (typeof config.book === 'string') {
    const output = outputs.find((o) => o.name === config.book);
    const info = output ? outputInfos([output], specs)[0] : undefined;
    if (output === undefined) issueAt(['waitlist', 'book'], `no output named "${config.book}"${outputs.length ? `; known: ${outputs.map((o) => o.name).join(', ')}` : ''}: the waitlist books accepted slots through ${BOOKING_OUTPUTS}`);
    else if (!info?.writeBackKinds?.includes(WriteBackKind.Book)) issueAt(['waitlist', 'book'], `output "${config.book}" (${output.type}) cannot book a slot; use ${BOOKING_OUTPUTS}`);
  }
  const offerRules = rules.filter((r) => r.on.includes(TriggerType.AppointmentWaitlistOffered));
  if (offerRules.length === 0) {
    issueAt(['waitlist'], 'no rule sends the offers: add an sms rule on appointment.waitlist_offered with a reply offering accept (and decline) answers (docs/waitlist.md)', true);
  }
  for (const [i, group] of (Array.isArray(config.equivalents?.services) ? config.equivalents.services : []).entries()) {
    const dup = group.find((code: string, j: number) => group.indexOf(code) !== j);
    if (dup !== undefined) issueAt(['waitlist', 'equivalents', 'services', i], `service "${dup}" is listed twice in this group`);
  }
  report(issues);
  return config;
}

/** Output types alerts can go through (workers/alerts.ts). */
const ALERT_OUTPUT_TYPES = ['webhook', 'smtp'];

/**
 * The `alerts` and `retention` blocks with their defaults, and what their schemas cannot say:
 * alerts go to configured webhook or smtp outputs (an smtp one with an address), and triggers are
 * kept at least as long as the sensitive-care window (their appointment/encounter states hold it).
 */
function operationsBlocks(
  blocks: Record<'alerts' | 'retention', { value?: Record<string, unknown>; place?: Place }>,
  files: readonly YamlFile[],
  located: readonly Located[],
  policy: PolicyBlock,
  report: (issues: ConfigIssue[]) => void,
): { alerts: AlertsConfig; retention: RetentionConfig } {
  const issues: ConfigIssue[] = [];
  const value = (name: 'alerts' | 'retention', schema: JsonSchema): Record<string, unknown> => {
    const given = blocks[name].value ?? {};
    if (blocks[name].value === undefined) issues.push(...validateWithSchema(ajv(), schema, given, '(defaults)', () => undefined));
    return given;
  };
  const issueAt = (name: 'alerts' | 'retention', at: DocPath, message: string): void => {
    const file = files.find((f) => f.display === blocks[name].place?.display);
    if (file) issues.push({ file: file.display, ...file.doc.locate(at), path: toPointer(at), message });
  };
  const alerts = value('alerts', alertsSchema) as unknown as AlertsConfig;
  const retention = value('retention', retentionSchema) as unknown as RetentionConfig;
  for (const [i, target] of (Array.isArray(alerts.notify) ? alerts.notify : []).entries()) {
    if (!isRecord(target) || typeof target.output !== 'string') continue;
    const output = located.find((l) => l.kind === 'outputs' && l.instance.name === target.output);
    if (output === undefined) issueAt('alerts', ['alerts', 'notify', i, 'output'], `no output named "${target.output}": alerts go to a configured webhook or smtp output`);
    else if (!ALERT_OUTPUT_TYPES.includes(output.instance.type)) {
      issueAt('alerts', ['alerts', 'notify', i, 'output'], `output "${target.output}" is of type ${output.instance.type}; alerts go through ${ALERT_OUTPUT_TYPES.join(' or ')} outputs`);
    } else if (output.instance.type === 'smtp' && target.to === undefined) {
      issueAt('alerts', ['alerts', 'notify', i], `output "${target.output}" sends email: give the address alerts are written to (to: oncall@example.org)`);
    }
  }
  for (const name of Object.keys(isRecord(alerts.silentInput?.inputs) ? alerts.silentInput.inputs : {})) {
    if (!located.some((l) => l.kind === 'inputs' && l.instance.name === name)) issueAt('alerts', ['alerts', 'silentInput', 'inputs', name], `no input named "${name}"`);
  }
  const windowDays = policy.sensitive?.windowDays;
  const triggerDays = retention.days?.triggers;
  if (typeof windowDays === 'number' && typeof triggerDays === 'number' && triggerDays < windowDays) {
    issueAt(
      'retention',
      ['retention', 'days', 'triggers'],
      `triggers are kept ${triggerDays} days, fewer than policy.sensitive.windowDays (${windowDays}): the appointment and encounter states that hold a sensitive episode must outlive its window; keep them at least ${windowDays} days`,
    );
  }
  report(issues);
  return { alerts, retention };
}

/** Token names reserved for the tokenEnv token ("admin") and for callers on loopback without a token ("local"). */
const RESERVED_TOKEN_NAMES = new Set(['admin', 'local']);

/** server.admin.tokens: each secret resolves, each name is unique and not reserved. */
function adminTokenIssues(server: ServerConfig, file: YamlFile, configDir: string, env: Env, check: boolean): ConfigIssue[] {
  const tokens = server.admin?.tokens;
  if (!Array.isArray(tokens)) return [];
  const checked = { ...server, store: storeSecretsInUse(server.store), queue: queueSecretsInUse(server.queue) };
  const issues = secretIssues(serverSchema, checked as unknown as Record<string, unknown>, file, ['server'], configDir, env, check);
  const seen = new Set<string>();
  tokens.forEach((token, i) => {
    if (!isRecord(token) || typeof token.name !== 'string') return; // reported by the schema
    const at = ['server', 'admin', 'tokens', i, 'name'];
    const problem = RESERVED_TOKEN_NAMES.has(token.name)
      ? `token name "${token.name}" is reserved ("admin" is the tokenEnv token, "local" a caller on loopback without a token); choose another`
      : seen.has(token.name)
        ? `token name "${token.name}" is used twice; each token needs its own name for the audit log`
        : undefined;
    seen.add(token.name);
    if (problem) issues.push({ file: file.display, ...file.doc.locate(at), path: toPointer(at), message: problem });
  });
  return issues;
}

/**
 * Two listeners on one port fail at start. Hosts are not compared: "localhost",
 * "127.0.0.1", "::1" and "0.0.0.0" overlap in ways a string comparison cannot see.
 */
function portIssues(
  server: ServerConfig,
  serverPlace: Place | undefined,
  files: readonly YamlFile[],
  located: readonly Located[],
): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const taken = new Map<number, { owner: string; place: Place | undefined }>();
  const serverPort = server.http?.port;
  if (typeof serverPort === 'number' && serverPort > 0) {
    const serverFile = serverPlace && files.find((f) => f.display === serverPlace.display);
    taken.set(serverPort, {
      owner: 'server.http',
      place: serverFile && { display: serverFile.display, position: serverFile.doc.locate(['server', 'http', 'port']) },
    });
  }
  // Also for instances with other problems: every issue is reported in one run.
  for (const { kind, instance, file, base } of located) {
    const port = instance.config.port;
    if (kind !== 'inputs' || typeof port !== 'number' || !Number.isInteger(port) || port <= 0) continue;
    const at = [...base, 'port'];
    const first = taken.get(port);
    if (first) {
      const firstWhere = first.place ? ` at ${where(first.place)}` : ' (its default)';
      issues.push({
        file: file.display,
        ...file.doc.locate(at),
        path: toPointer(at),
        message: `port ${port} is already used by ${first.owner}${firstWhere}; give each listener its own port`,
      });
    } else {
      taken.set(port, { owner: `input "${instance.name}"`, place: { display: file.display, position: file.doc.locate(at) } });
    }
  }
  return issues;
}

/**
 * Finds the secret references of a validated config (schema nodes marked `x-secret`),
 * makes file paths absolute (relative to the config directory) and, when asked, checks
 * each one resolves. Messages name the reference, never a value.
 */
function secretIssues(
  schema: JsonSchema,
  config: Record<string, unknown>,
  file: YamlFile,
  base: DocPath,
  configDir: string,
  env: Env,
  check: boolean,
): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const visitNode = (node: JsonSchema, value: unknown, at: DocPath): void => {
    if (node['x-secret'] === true && isRecord(value)) {
      const problem = secretProblem(value, configDir, env, check);
      if (problem) issues.push({ file: file.display, ...file.doc.locate(at), path: toPointer(at), message: problem });
      return;
    }
    if (isRecord(value)) {
      const properties = (node.properties ?? {}) as Record<string, JsonSchema>;
      const additional = node.additionalProperties;
      for (const [key, child] of Object.entries(value)) {
        const childSchema = Object.hasOwn(properties, key) ? properties[key] : isRecord(additional) ? (additional as JsonSchema) : undefined;
        if (childSchema) visitNode(childSchema, child, [...at, key]);
      }
    } else if (Array.isArray(value) && isRecord(node.items)) {
      value.forEach((item, i) => visitNode(node.items as JsonSchema, item, [...at, i]));
    }
  };
  visitNode(schema, config, base);
  return issues;
}

function secretProblem(ref: Record<string, unknown>, configDir: string, env: Env, check: boolean): string | undefined {
  if (typeof ref.file === 'string') {
    const file = path.resolve(configDir, ref.file);
    ref.file = file;
    if (!check) return undefined;
    try {
      accessSync(file, fsConstants.R_OK);
    } catch (error) {
      return `secret file ${displayPath(file)} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`;
    }
  } else if (typeof ref.env === 'string' && check && !env[ref.env]) {
    return `secret environment variable ${ref.env} is not set`;
  }
  return undefined;
}

/**
 * A value the YAML reader already refused (e.g. `${PORT}` with PORT unset) also fails its
 * schema ("must be an integer"); only the first, root-cause issue at that position is kept.
 */
function withoutEchoes(issues: readonly ConfigIssue[], files: readonly YamlFile[]): ConfigIssue[] {
  const fromYaml = new Set(files.flatMap((f) => f.doc.issues));
  const positions = new Set([...fromYaml].map((i) => `${i.file}:${i.line}:${i.column}`));
  return issues.filter((i) => fromYaml.has(i) || !positions.has(`${i.file}:${i.line}:${i.column}`));
}

function sortIssues(issues: ConfigIssue[], files: readonly YamlFile[]): ConfigIssue[] {
  const order = new Map(files.map((f, i) => [f.display, i]));
  return issues
    .map((issue, i) => ({ issue, i }))
    .sort(
      (a, b) =>
        (order.get(a.issue.file) ?? -1) - (order.get(b.issue.file) ?? -1) ||
        (a.issue.line ?? 0) - (b.issue.line ?? 0) ||
        (a.issue.column ?? 0) - (b.issue.column ?? 0) ||
        a.i - b.i,
    )
    .map((x) => x.issue);
}

/** Freezes a plain data tree (objects and arrays) in place and returns it. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
