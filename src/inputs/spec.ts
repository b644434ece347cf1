// What every input type declares (docs/architecture.md "Interfaces"): a type name, a one-line
// summary, a JSON Schema of its instance config that both validates and documents (a
// description on every property, a default on every optional one), and how to create it.

import type { ComponentSpec, InstanceCheckIssue } from '../config/load.ts';
import type { ServerConfig } from '../config/server-schema.ts';
import type { JsonSchema } from '../config/yaml.ts';

/** A running inbound connector: it only turns received bytes into triggers. */
export interface InboundConnector {
  /** Resolves once it accepts traffic (e.g. the socket listens). */
  start(): Promise<void>;
  /** Stops accepting, lets in-flight messages finish, then resolves. */
  stop(): Promise<void>;
}

/**
 * @typeParam Config the instance config after validation and defaults (frozen).
 * @typeParam Deps what the composition root hands the connector (handlers that commit and
 *   answer, a logger…); each input type names the deps it needs.
 */
export interface InputSpec<Config = unknown, Deps = unknown> extends ComponentSpec {
  /** Unique type name used as `type:` in connectors/*.yaml, e.g. `hl7v2-mllp`. */
  readonly type: string;
  /** One line for `carerelay validate` and the docs. */
  readonly summary: string;
  readonly configSchema: JsonSchema;
  /**
   * Rules the schema cannot say clearly (fields that depend on each other). Runs only on a
   * config that passed the schema; paths are relative to the instance.
   */
  check?(config: Config): InstanceCheckIssue[];
  /** Rules that depend on the server block too (ComponentSpec.checkServer). */
  checkServer?(config: Config, server: ServerConfig): InstanceCheckIssue[];
  /** Builds the connector; nothing listens until `start()`. */
  create?(config: Config, deps: Deps): InboundConnector;
}
