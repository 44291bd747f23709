import { hostname } from 'node:os';
import { z } from 'zod';
import { parseDuration, parseSize } from './duration.js';
import { aggregatorSchema } from './aggregator-schema.js';
import { cacheSchema } from './cache-schema.js';
import { usageSinkSchema } from './usage-sink-schema.js';
import { authSchema } from './auth-schema.js';
import { httpSchema } from './http-schema.js';
import { limitsSchema } from './limits-schema.js';
import { telemetrySchema } from './telemetry-schema.js';

export { cacheSchema, type CacheConfig } from './cache-schema.js';

/**
 * The whole of config.yaml as one zod schema (DESIGN.md, "Configuration").
 * The seed's file (providers with base_url/api_key_env, models with
 * provider/physical_name/costs) loads unchanged; everything else is optional
 * with defaults. Objects are strict so that a misspelt key is reported by
 * path rather than ignored. Secrets are never held here: `api_key_env` names
 * the environment variable that holds the key.
 */
const positiveInt = z.number().int().positive();
const nonNegative = z.number().nonnegative();

export const durationMs = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseDuration(value);
  if (parsed === undefined) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a duration: ${JSON.stringify(value)} (use e.g. 500ms, 30s, 5m, 12h, 30d)`,
    });
    return z.NEVER;
  }
  return parsed;
});

export const sizeBytes = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseSize(value);
  if (parsed === undefined) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a size: ${JSON.stringify(value)} (use e.g. 1GiB, 512MB, or -1 for unlimited)`,
    });
    return z.NEVER;
  }
  return parsed;
});

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name');

/**
 * A provider type's name (`openai`, `anthropic`…). Which names exist is registered in one place,
 * src/providers/registry.ts, which checks them when the providers are built (and `check-config`).
 */
export type ProviderType = string;
const providerTypeName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'must be a provider type (e.g. openai, anthropic)');

/** Most bytes of one 2xx answer body, JSON or a whole stream (`max_response_bytes`). */
export const DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 ** 2;
/** Longest SSE line, SSE event's data or NDJSON line (`max_line_bytes`), unless max_response_bytes is smaller. */
export const DEFAULT_MAX_LINE_BYTES = 4 * 1024 ** 2;

/** A size bound on what a provider sends: a number of bytes or `"32MiB"`; no "unlimited". */
const boundBytes = sizeBytes.pipe(
  z.number().int().positive('must be a positive size (e.g. 32MiB); there is no unlimited'),
);

export const providerSchema = z
  .object({
    type: providerTypeName.optional(),
    base_url: z.string().url(),
    /** The provider's API version: Azure's `api-version` query, Anthropic's `anthropic-version` header. */
    api_version: z
      .string()
      .regex(/^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$/, 'must be an API version (e.g. 2024-10-21)')
      .optional(),
    api_key_env: envName.optional(),
    /** Extra, non-secret HTTP headers sent with every call (e.g. OpenAI-Organization). */
    headers: z.record(z.string(), z.string()).optional(),
    /** Deadline for one call to this provider, end to end. */
    timeout_ms: positiveInt.optional(),
    connect_timeout_ms: positiveInt.default(5_000),
    /** How long to wait for the response headers (time to first byte). */
    headers_timeout_ms: positiveInt.optional(),
    /** Longest silence allowed between two body reads. */
    body_timeout_ms: positiveInt.optional(),
    /** Size of this provider's keep-alive connection pool. */
    max_connections: positiveInt.default(128),
    /**
     * Most bytes of one 2xx answer body (a JSON answer, or a whole stream): past it the call is cut off
     * with `upstream_error`, so that a hostile or broken upstream cannot fill the worker's memory.
     */
    max_response_bytes: boundBytes.default(DEFAULT_MAX_RESPONSE_BYTES),
    /** Longest SSE line, SSE event's data or NDJSON line; at most max_response_bytes. */
    max_line_bytes: boundBytes.optional(),
  })
  .strict()
  .superRefine((provider, context) => {
    if (provider.max_line_bytes !== undefined && provider.max_line_bytes > provider.max_response_bytes) {
      context.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['max_line_bytes'],
        message: `must be at most max_response_bytes (${provider.max_line_bytes} > ${provider.max_response_bytes})`,
      });
    }
  })
  // The default line bound follows a max_response_bytes set below it, rather than failing the check above.
  .transform((provider) => ({
    ...provider,
    max_line_bytes: provider.max_line_bytes ?? Math.min(DEFAULT_MAX_LINE_BYTES, provider.max_response_bytes),
  }));

export const ROUTING_STRATEGIES = ['weighted', 'least-in-flight', 'lowest-latency'] as const;
export type RoutingStrategy = (typeof ROUTING_STRATEGIES)[number];

export const deploymentSchema = z
  .object({
    provider: z.string().min(1),
    physical_name: z.string().min(1),
    weight: nonNegative.default(1),
    timeout_ms: positiveInt.optional(),
  })
  .strict();

export const modelSchema = z
  .object({
    provider: z.string().min(1).optional(),
    physical_name: z.string().min(1).optional(),
    deployments: z.array(deploymentSchema).min(1).optional(),
    cost_per_1k_prompt: nonNegative.default(0),
    cost_per_1k_completion: nonNegative.default(0),
    /**
     * USD per 1k prompt tokens the provider served from its prompt cache (OpenAI's
     * `prompt_tokens_details.cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`); unset: the prompt price.
     */
    cost_per_1k_cached_prompt: nonNegative.optional(),
    timeout_ms: positiveInt.optional(),
    /** Models of this config, or of other nodes on the bus (a name this config does not define). */
    fallbacks: z.array(z.string().min(1).max(256)).max(16).default([]),
    context_fallbacks: z.array(z.string().min(1)).default([]),
    routing: z
      .object({ strategy: z.enum(ROUTING_STRATEGIES) })
      .strict()
      .optional(),
    /** Completion tokens assumed for reservations when a request sets no max_tokens. */
    default_max_tokens: positiveInt.optional(),
    /** The most tokens the model can produce in one answer, as listed by `llm.proxy.models` (the seed's field). */
    max_tokens: positiveInt.optional(),
  })
  .strict()
  .superRefine((model, context) => {
    if (model.deployments === undefined && model.provider === undefined) {
      context.addIssue({
        code: z.ZodIssueCode.custom,
        message: 'needs "provider" (and "physical_name") or "deployments"',
      });
    }
    if (model.deployments !== undefined && model.provider !== undefined) {
      context.addIssue({
        code: z.ZodIssueCode.custom,
        message: 'give either "provider"/"physical_name" or "deployments", not both',
      });
    }
  });

export const retrySchema = z
  .object({
    /** Total tries per deployment group, the first one included. */
    attempts: positiveInt.default(3),
    base_backoff_ms: nonNegative.default(100),
    max_backoff_ms: nonNegative.default(5_000),
    /** Fraction of the backoff randomised (0 = none, 1 = full jitter). */
    jitter: z.number().min(0).max(1).default(0.2),
  })
  .strict();

export const cooldownSchema = z
  .object({
    failures: positiveInt.default(3),
    window_ms: positiveInt.default(60_000),
    duration_ms: positiveInt.default(30_000),
  })
  .strict();

export const routingSchema = z
  .object({
    strategy: z.enum(ROUTING_STRATEGIES).default('weighted'),
    retry: retrySchema.prefault({}),
    cooldown: cooldownSchema.prefault({}),
    /** lowest-latency: share of requests sent to a random deployment to re-measure it. */
    exploration: z.number().min(0).max(1).default(0.05),
  })
  .strict();

/** This machine's host name (`os.hostname()`), read once: the `host` of `llm.proxy.nodes` replies. */
export const HOST_NAME: string = hostname();

/** Longest `worker.node`. */
export const MAX_NODE_NAME_LENGTH = 128;
/** No control characters (C0, DEL, C1), line or paragraph separators, or lone surrogates. */
const NODE_NAME_PATTERN = /^[^\p{Cc}\p{Cs}\p{Zl}\p{Zp}]+$/u;

/** `worker.node` when unset: the host name (cut to 128 characters; `unknown` when the system gives none). */
export function defaultNodeName(host: string = HOST_NAME): string {
  const cut = [...host].slice(0, MAX_NODE_NAME_LENGTH).join('');
  return cut.trim() !== '' && NODE_NAME_PATTERN.test(cut) ? cut : 'unknown';
}

/** A node's name (`worker.node`): it goes into logs, usage events and `llm.proxy.nodes` replies. */
export const nodeNameSchema = z
  .string()
  .min(1)
  .refine((name) => [...name].length <= MAX_NODE_NAME_LENGTH, {
    message: `must be at most ${MAX_NODE_NAME_LENGTH} characters`,
  })
  .refine((name) => NODE_NAME_PATTERN.test(name), { message: 'must be printable (no control characters)' })
  .refine((name) => name.trim() !== '', { message: 'must not be only whitespace' });

export const workerSchema = z
  .object({
    /**
     * This worker's node (the machine, or the group of providers it reaches): recorded in every usage
     * event and answered on `llm.proxy.nodes` (`llm-proxy models`). Default: the host name.
     */
    node: nodeNameSchema.default(() => defaultNodeName()),
    /** Requests a worker works on at once; above it, it stops taking work (the queue group sends it elsewhere). */
    max_in_flight: positiveInt.default(256),
    /** Deadline of a request that sets no timeout_ms, and no provider/model timeout applies. */
    default_timeout_ms: positiveInt.default(120_000),
    /** Heartbeat interval on a stream while the upstream is silent. */
    heartbeat_ms: positiveInt.default(1_000),
    /** How long SIGTERM waits for requests in flight before giving up on them. */
    drain_timeout_ms: positiveInt.default(30_000),
    /** Largest request body accepted; defaults to the server's max_payload. */
    max_request_bytes: positiveInt.optional(),
  })
  .strict();

export const usageStreamSchema = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/)
      .default('LLM_USAGE'),
    /** How long raw events are kept (0 = forever). */
    max_age: durationMs.prefault('90d'),
    /** Largest size of the stream (-1 = unlimited); the oldest events go first. */
    max_bytes: sizeBytes.default(-1),
    max_msgs: z.number().int().min(-1).default(-1),
    replicas: z.number().int().min(1).max(5).default(1),
    storage: z.enum(['file', 'memory']).default('file'),
    /** Window within which a re-published event (same event id) is stored once. */
    duplicate_window: durationMs.prefault('2m'),
    /**
     * JSON lines file (relative to the working directory) for events the server can never take
     * (too large, a subject it refuses): each is also logged in full. `null`: the log only.
     */
    dead_letter_file: z.string().min(1).nullable().default('.llm-proxy/usage-dead-letter.jsonl'),
  })
  .strict();

export const natsSchema = z
  .object({
    subject_prefix: z
      .string()
      .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/)
      .default('llm'),
    usage_stream: usageStreamSchema.prefault({}),
    /** Environment variables holding NATS credentials (read at start, never logged). */
    user_env: envName.optional(),
    password_env: envName.optional(),
    token_env: envName.optional(),
    nkey_seed_env: envName.optional(),
    creds_file: z.string().min(1).optional(),
    /**
     * TLS to NATS: `ca_file` alone checks the server; with `cert_file` and `key_file` the client
     * presents a certificate too (mutual TLS). Each unset file falls back to `NATS_CA`, `NATS_CERT`, `NATS_KEY`.
     */
    tls: z
      .object({
        ca_file: z.string().min(1).optional(),
        cert_file: z.string().min(1).optional(),
        key_file: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
    /**
     * Prefix of this process's reply inboxes (unset: `NATS_INBOX_PREFIX`, else nats.js's `_INBOX`), for a
     * NATS user allowed to subscribe only under its own prefix (deploy/nats/nats-server.conf: `_INBOX.worker`…).
     */
    inbox_prefix: z
      .string()
      .regex(/^[^\s.*>]+(\.[^\s.*>]+)*$/, 'must be a subject without wildcards or spaces (e.g. _INBOX.worker)')
      .optional(),
    /**
     * JetStream domain of every JetStream and KV call (unset: `NATS_JETSTREAM_DOMAIN`, else the account's own
     * JetStream): on a leaf node without JetStream, the hub's (`hub` in deploy/nats/hub.conf).
     */
    jetstream_domain: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"')
      .optional(),
  })
  .strict();

export const loggingSchema = z
  .object({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /**
     * A line per request: `all` (`request done` at info, `request failed` at warn), `errors` (only
     * `request failed`) or `none`. Every request has its usage event anyway (`llm-proxy tail`).
     */
    requests: z.enum(['all', 'errors', 'none']).default('errors'),
  })
  .strict();

export const configSchema = z
  .object({
    providers: z.record(z.string().min(1), providerSchema),
    models: z.record(z.string().min(1), modelSchema),
    routing: routingSchema.prefault({}),
    worker: workerSchema.prefault({}),
    nats: natsSchema.prefault({}),
    logging: loggingSchema.prefault({}),
    cache: cacheSchema.prefault({}),
    telemetry: telemetrySchema.prefault({}),
    aggregator: aggregatorSchema.prefault({}),
    usage_sink: usageSinkSchema.prefault({}),
    http: httpSchema.prefault({}),
    auth: authSchema.prefault({}),
    limits: limitsSchema.prefault({}),
  })
  .strict()
  .superRefine((config, context) => {
    for (const [modelName, model] of Object.entries(config.models)) {
      const deployments = model.deployments ?? (model.provider === undefined ? [] : [{ provider: model.provider }]);
      deployments.forEach((deployment, index) => {
        if (!(deployment.provider in config.providers)) {
          const path =
            model.deployments === undefined
              ? ['models', modelName, 'provider']
              : ['models', modelName, 'deployments', index, 'provider'];
          context.addIssue({ code: z.ZodIssueCode.custom, path, message: `unknown provider "${deployment.provider}"` });
        }
      });
      for (const key of ['fallbacks', 'context_fallbacks'] as const) {
        model[key].forEach((target, index) => {
          // A fallback this config does not define is a model of another node on the bus (issue 19):
          // taken there when no worker serves this model (forward.ts). A context fallback must be here.
          if (!(target in config.models) && key === 'context_fallbacks') {
            context.addIssue({
              code: z.ZodIssueCode.custom,
              path: ['models', modelName, key, index],
              message: `unknown model "${target}"`,
            });
          } else if (target === modelName) {
            context.addIssue({
              code: z.ZodIssueCode.custom,
              path: ['models', modelName, key, index],
              message: 'a model cannot fall back to itself',
            });
          }
        });
      }
    }
  });

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.infer<typeof configSchema>;
export type ProviderConfig = z.infer<typeof providerSchema>;
export type ModelConfig = z.infer<typeof modelSchema>;
export type DeploymentConfig = z.infer<typeof deploymentSchema>;
export type RoutingConfig = z.infer<typeof routingSchema>;
export type WorkerConfig = z.infer<typeof workerSchema>;
export type NatsConfig = z.infer<typeof natsSchema>;
export type UsageStreamConfig = z.infer<typeof usageStreamSchema>;
export type { LimitsConfig, LimitSetConfig, LimitBackend, LimitStorePolicy } from './limits-schema.js';
export type { HttpConfig } from './http-schema.js';
export type { PostgresSinkConfig, UsageSinkConfig } from './usage-sink-schema.js';
export { POSTGRES_URL_ENV } from './usage-sink-schema.js';
