import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { rememberJetStreamDomain } from './jetstream-domain.js';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { credsAuthenticator, nkeyAuthenticator, type Authenticator } from '@nats-io/nats-core';
import type { NatsConfig } from '../config/schema.js';

/** Where NATS is when nothing says otherwise: a local server on the default port. */
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

export function natsUrlFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.NATS_URL || DEFAULT_NATS_URL;
}

export interface ConnectionSettings {
  /** Comma-separated URLs are accepted, as `nats` CLI users expect. */
  servers?: string | string[];
  /** Shown by `nats server report connections`; defaults to `llm-proxy-<role>@<host>`. */
  name?: string;
  /** The `nats` section of config.yaml (credential variable names, creds file, TLS, inbox prefix). */
  nats?: Partial<NatsConfig>;
  env?: NodeJS.ProcessEnv;
}

function splitServers(servers: string | string[]): string[] {
  const list = Array.isArray(servers) ? servers : servers.split(',');
  return list.map((server) => server.trim()).filter((server) => server !== '');
}

/**
 * Connection options from config + environment. Credentials come from the
 * variables the config names (`nats.user_env`…), else from the usual
 * `NATS_USER`/`NATS_PASSWORD`/`NATS_TOKEN`/`NATS_NKEY_SEED`/`NATS_CREDS`;
 * TLS files from `nats.tls`, else `NATS_CA`/`NATS_CERT`/`NATS_KEY`; the
 * inbox prefix from `nats.inbox_prefix`, else `NATS_INBOX_PREFIX`.
 * A worker reconnects forever: a NATS restart must never end it.
 */
export function connectionOptions(settings: ConnectionSettings = {}): NodeConnectionOptions {
  const env = settings.env ?? process.env;
  const nats = settings.nats ?? {};
  const pick = (configured: string | undefined, fallback: string) =>
    (configured === undefined ? env[fallback] : env[configured]) || undefined;

  const options: NodeConnectionOptions = {
    servers: splitServers(settings.servers ?? natsUrlFromEnv(env)),
    name: settings.name ?? `llm-proxy@${hostname()}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1_000,
    // Spread reconnects of many workers after a server restart.
    reconnectJitter: 500,
    reconnectJitterTLS: 1_000,
    waitOnFirstConnect: true,
    pingInterval: 20_000,
    // nats.js otherwise builds two errors with stack traces for every request(), failing or not, and
    // the worker makes one per usage event: a cost on every request for a stack nobody reads
    // (docs/bench/results.md). Errors still carry their own stack, only not the caller's async one.
    noAsyncTraces: true,
  };

  const user = pick(nats.user_env, 'NATS_USER');
  const password = pick(nats.password_env, 'NATS_PASSWORD');
  const token = pick(nats.token_env, 'NATS_TOKEN');
  if (user !== undefined) {
    options.user = user;
    if (password !== undefined) options.pass = password;
  }
  if (token !== undefined) options.token = token;

  const authenticators: Authenticator[] = [];
  const seed = pick(nats.nkey_seed_env, 'NATS_NKEY_SEED');
  if (seed !== undefined) authenticators.push(nkeyAuthenticator(new TextEncoder().encode(seed)));
  const credsFile = nats.creds_file ?? (env.NATS_CREDS || undefined);
  if (credsFile !== undefined) {
    // Read at every (re)connect so that a rotated creds file is picked up.
    authenticators.push(credsAuthenticator(() => readFileSync(credsFile)));
  }
  if (authenticators.length > 0)
    options.authenticator = authenticators.length === 1 ? authenticators[0] : authenticators;

  const tls = tlsOptions(nats.tls, env);
  if (tls !== undefined) options.tls = tls;

  const inboxPrefix = nats.inbox_prefix ?? (env.NATS_INBOX_PREFIX || undefined);
  if (inboxPrefix !== undefined) options.inboxPrefix = inboxPrefix;
  return options;
}

/**
 * TLS from `nats.tls` (a file set there wins) else `NATS_CA`/`NATS_CERT`/`NATS_KEY`. A CA alone checks
 * the server's certificate; a certificate and its key also prove the client's (mutual TLS). An empty
 * `nats.tls` asks for TLS with the system's CAs. No file and no `nats.tls`: TLS only if the server requires it.
 */
function tlsOptions(configured: NatsConfig['tls'], env: NodeJS.ProcessEnv): NodeConnectionOptions['tls'] {
  const caFile = configured?.ca_file ?? (env.NATS_CA || undefined);
  const certFile = configured?.cert_file ?? (env.NATS_CERT || undefined);
  const keyFile = configured?.key_file ?? (env.NATS_KEY || undefined);
  if ((certFile === undefined) !== (keyFile === undefined))
    throw new Error(
      'NATS TLS: a client certificate needs its key and a key its certificate (nats.tls.cert_file/key_file, NATS_CERT/NATS_KEY)',
    );
  if (configured === undefined && caFile === undefined && certFile === undefined) return undefined;
  return {
    ...(caFile !== undefined ? { caFile } : {}),
    ...(certFile !== undefined ? { certFile } : {}),
    ...(keyFile !== undefined ? { keyFile } : {}),
  };
}

/** The JetStream domain of config or environment (`nats.jetstream_domain`, else `NATS_JETSTREAM_DOMAIN`). */
function jetstreamDomain(settings: ConnectionSettings): string | undefined {
  return settings.nats?.jetstream_domain ?? ((settings.env ?? process.env).NATS_JETSTREAM_DOMAIN || undefined);
}

export async function connectToNats(settings: ConnectionSettings = {}): Promise<NatsConnection> {
  return rememberJetStreamDomain(await connect(connectionOptions(settings)), jetstreamDomain(settings));
}

/** A short connect for CLI tools: fail fast instead of waiting forever for a server. */
export async function connectOnce(settings: ConnectionSettings = {}): Promise<NatsConnection> {
  const connection = await connect({
    ...connectionOptions(settings),
    waitOnFirstConnect: false,
    maxReconnectAttempts: 0,
    timeout: 3_000,
  });
  return rememberJetStreamDomain(connection, jetstreamDomain(settings));
}
