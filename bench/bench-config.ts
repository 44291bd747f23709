/**
 * The bench's models and the worker config generated for them. Each model is
 * served by its own "provider" whose base URL carries the fake upstream's
 * behaviour in its path (see upstream.ts), so one upstream process plays a
 * fast model, a slow one, a streaming one and a flaky one.
 */
import { stringify } from 'yaml';

export const BENCH_MODELS = {
  /** Zero delay: what the gateway itself costs. */
  fast: { name: 'bench-fast', behaviour: '' },
  /** 2 s per answer: holds 1,000 requests in flight for the memory section. */
  slow: { name: 'bench-slow', behaviour: 'delay=2000' },
  /** 20 chunks 10 ms apart: time to first token and chunk gaps. */
  stream: { name: 'bench-stream', behaviour: 'chunks=20,gap=10' },
  /** 5% of answers are 500s: the soak. */
  flaky: { name: 'bench-flaky', behaviour: 'error=0.05' },
} as const;

export type BenchModelKey = keyof typeof BENCH_MODELS;

export const BENCH_SUBJECTS = {
  echo: 'bench.echo',
  bare: 'bench.bare.request',
} as const;

/** Path prefix (ending in /v1) under which the fake upstream behaves as `behaviour` says. */
export function upstreamBasePath(behaviour: string): string {
  return behaviour === '' ? '/v1' : `/fake/${behaviour}/v1`;
}

export function physicalName(key: BenchModelKey): string {
  return `fake-${key}`;
}

/** Connections per provider, for the worker and the bare forwarder alike (enough for 1,000 slow requests). */
export const UPSTREAM_CONNECTIONS = 1_100;

export interface WorkerConfigOptions {
  upstreamOrigin: string;
  maxInFlight: number;
  logLevel?: string;
  logRequests?: 'all' | 'errors' | 'none';
  /**
   * Limits backend with every dimension on (out of reach) per agent, or off. `<backend>+model`
   * (`--limits nats --model-limit`): the same limits on every bench model too, a scope shared by every
   * agent (issue 21's hot key).
   */
  limits?: BenchLimits;
}

export const BENCH_LIMIT_BACKENDS = ['memory', 'nats', 'redis'] as const;
export type BenchLimitBackend = (typeof BENCH_LIMIT_BACKENDS)[number];
export type BenchLimits = 'off' | BenchLimitBackend | `${BenchLimitBackend}+model`;

/** Every dimension counted (so every store operation happens), none ever reached. */
const OUT_OF_REACH = {
  rpm: 1_000_000_000,
  tpm: 1_000_000_000_000,
  concurrent: 1_000_000,
  daily_usd: 1_000_000_000,
  monthly_usd: 1_000_000_000,
};

function limitsConfig(limits: BenchLimits | undefined): Record<string, unknown> {
  if (limits === undefined || limits === 'off') return { enabled: false };
  const [backend, scope] = limits.split('+');
  return {
    backend,
    nats_bucket: 'LLM_LIMITS_BENCH',
    redis_key_prefix: `llm-limits-bench:${process.pid}:`,
    default: OUT_OF_REACH,
    ...(scope === 'model'
      ? { models: Object.fromEntries(Object.values(BENCH_MODELS).map((model) => [model.name, OUT_OF_REACH])) }
      : {}),
  };
}

/**
 * The worker's config.yaml for the bench: production settings (info logs, JetStream
 * usage events on file storage) except what would measure something else: the cache
 * is off (every request must reach the upstream), limits are off (the seed's default
 * of 10 requests a minute per agent would refuse the load), and cooldown is out of reach so
 * that the soak's injected 500s exercise retries rather than parking the deployment.
 */
export function buildWorkerConfig(options: WorkerConfigOptions): string {
  const providers: Record<string, unknown> = {};
  const models: Record<string, unknown> = {};
  for (const [key, model] of Object.entries(BENCH_MODELS) as Array<
    [BenchModelKey, (typeof BENCH_MODELS)[BenchModelKey]]
  >) {
    providers[`fake_${key}`] = {
      type: 'openai',
      base_url: `${options.upstreamOrigin}${upstreamBasePath(model.behaviour)}`,
      max_connections: UPSTREAM_CONNECTIONS,
    };
    models[model.name] = {
      provider: `fake_${key}`,
      physical_name: physicalName(key),
      cost_per_1k_prompt: 0.01,
      cost_per_1k_completion: 0.03,
    };
  }
  const config = {
    providers,
    models,
    routing: { retry: { attempts: 2, base_backoff_ms: 5, max_backoff_ms: 20 }, cooldown: { failures: 1_000_000_000 } },
    worker: { max_in_flight: options.maxInFlight, default_timeout_ms: 60_000 },
    cache: { enabled: false },
    limits: limitsConfig(options.limits),
    logging: { level: options.logLevel ?? 'info', requests: options.logRequests ?? 'errors' },
  };
  return stringify(config);
}

/** `--route` arguments for the bare forwarder: model name → upstream base path. */
export function bareForwarderRoutes(): string[] {
  return (Object.entries(BENCH_MODELS) as Array<[BenchModelKey, (typeof BENCH_MODELS)[BenchModelKey]]>).flatMap(
    ([key, model]) => ['--route', `${model.name}=${physicalName(key)}@${upstreamBasePath(model.behaviour)}`],
  );
}

/** The seed's request body, as an agent would send it. */
export function benchRequestBody(model: string, stream = false): Record<string, unknown> {
  return {
    model,
    messages: [{ role: 'user', content: 'Hello!' }],
    max_tokens: 100,
    temperature: 0.7,
    ...(stream ? { stream: true } : {}),
    metadata: { agent_id: 'agent:bench', microdao_id: 'microdao:bench', channel_id: 'c-bench' },
  };
}
