/**
 * Builds one adapter and one keep-alive undici pool per configured provider.
 * Adding a provider type is one folder (src/providers/<type>/) and one line in PROVIDER_ADAPTERS,
 * the only list of types there is (src/providers/README.md).
 */
import { Pool } from 'undici';
import { ConfigError, type ResolvedConfig, type ResolvedProvider } from '../config/load.js';
import { createAnthropicProvider } from './anthropic/adapter.js';
import { createAzureProvider } from './azure/adapter.js';
import { createGeminiProvider } from './gemini/adapter.js';
import { createOllamaProvider } from './ollama/adapter.js';
import { createOpenAICompatibleProvider } from './openai/adapter.js';
import type { Provider, ProviderSettings } from './types.js';

/** Every provider type, by the name config.yaml's `type` gives it. */
export const PROVIDER_ADAPTERS: Readonly<Record<string, (settings: ProviderSettings) => Provider>> = {
  openai: (settings) => createOpenAICompatibleProvider(settings),
  azure: createAzureProvider,
  ollama: createOllamaProvider,
  gemini: createGeminiProvider,
  anthropic: createAnthropicProvider,
};

/** `providers.<name>.type: unknown provider type …` for each provider whose type is not registered. */
export function unknownProviderTypes(config: Pick<ResolvedConfig, 'providers'>): string[] {
  const known = Object.keys(PROVIDER_ADAPTERS);
  return [...config.providers.values()]
    .filter((provider) => !Object.hasOwn(PROVIDER_ADAPTERS, provider.type))
    .map(
      (provider) =>
        `providers.${provider.name}.type: unknown provider type ${JSON.stringify(provider.type)} (one of ${known.join(', ')})`,
    );
}

/** LLMs think before the first byte and pause between tokens: generous, but not forever. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 120_000;
export const DEFAULT_BODY_TIMEOUT_MS = 120_000;
/** Idle keep-alive sockets are dropped after this (below the usual 60–75 s of servers and load balancers). */
const KEEP_ALIVE_TIMEOUT_MS = 30_000;

export interface ProviderSet {
  providers: Map<string, Provider>;
  /** Closes every pool (waits for requests in flight to finish). */
  close(): Promise<void>;
}

export function createPool(
  provider: Omit<ResolvedProvider, 'name' | 'type' | 'apiKey' | 'max_response_bytes' | 'max_line_bytes'>,
): Pool {
  return new Pool(new URL(provider.base_url).origin, {
    connections: provider.max_connections,
    connect: { timeout: provider.connect_timeout_ms },
    headersTimeout: provider.headers_timeout_ms ?? DEFAULT_HEADERS_TIMEOUT_MS,
    bodyTimeout: provider.body_timeout_ms ?? DEFAULT_BODY_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
  });
}

/** Closing waits for requests in flight; one that hangs past the grace period is cut off. */
const CLOSE_GRACE_MS = 5_000;

async function closePool(pool: Pool): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const graceOver = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), CLOSE_GRACE_MS);
    timer.unref();
  });
  const outcome = await Promise.race([pool.close().then(() => 'closed' as const), graceOver]);
  clearTimeout(timer);
  if (outcome === 'timeout') await pool.destroy();
}

export function createProviders(config: Pick<ResolvedConfig, 'providers'> & { source?: string }): ProviderSet {
  const unknown = unknownProviderTypes(config);
  if (unknown.length > 0) throw new ConfigError(config.source ?? 'config', unknown);
  const providers = new Map<string, Provider>();
  const pools: Pool[] = [];
  for (const provider of config.providers.values()) {
    const pool = createPool(provider);
    pools.push(pool);
    providers.set(
      provider.name,
      PROVIDER_ADAPTERS[provider.type]!({
        name: provider.name,
        type: provider.type,
        baseUrl: provider.base_url,
        apiKey: provider.apiKey,
        apiKeyEnv: provider.api_key_env,
        headers: provider.headers,
        apiVersion: provider.api_version,
        maxResponseBytes: provider.max_response_bytes,
        maxLineBytes: provider.max_line_bytes,
        dispatcher: pool,
      }),
    );
  }
  let closing: Promise<void> | undefined;
  return {
    providers,
    close() {
      closing ??= Promise.all(pools.map(closePool)).then(() => undefined);
      return closing;
    },
  };
}
