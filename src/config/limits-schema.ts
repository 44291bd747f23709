import { z } from 'zod';

/**
 * The `limits` section of config.yaml: rate limits and budgets (issue 5).
 * Kept in its own file (and not importing schema.ts) so that schema.ts can
 * import it without a cycle.
 *
 * Every limit is optional; `null` removes a limit that `default` would
 * otherwise give an agent (e.g. `agents: {"agent:batch": {rpm: null}}`).
 */
const rate = z.number().int().positive().nullable();
const usd = z.number().nonnegative().nullable();

export const limitSetSchema = z
  .object({
    /** Requests per minute. */
    rpm: rate.optional(),
    /** Tokens (prompt + completion) per minute. */
    tpm: rate.optional(),
    /** Requests in flight at once. */
    concurrent: rate.optional(),
    /** Spending per UTC day, in USD. */
    daily_usd: usd.optional(),
    /** Spending per UTC calendar month, in USD. */
    monthly_usd: usd.optional(),
  })
  .strict();

export const LIMIT_STORE_POLICIES = ['fail_open', 'fail_closed'] as const;
export type LimitStorePolicy = (typeof LIMIT_STORE_POLICIES)[number];

export const LIMIT_BACKENDS = ['memory', 'nats', 'redis'] as const;
export type LimitBackend = (typeof LIMIT_BACKENDS)[number];

/** KV bucket names: letters, digits, `_` and `-`. */
const bucketName = z.string().regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"');

export const limitsSchema = z
  .object({
    /** `false` turns every limit off (benchmarks); nothing is counted or stored. */
    enabled: z.boolean().default(true),
    /**
     * `nats` (default: NATS is always there, so the seed's "10 requests a minute per agent" holds across
     * every worker out of the box): JetStream KV, shared. `redis`: shared, one Lua script per admission.
     * `memory`: one worker only (N workers admit N × the limit).
     */
    backend: z.enum(LIMIT_BACKENDS).default('nats'),
    /** Defaults to the environment's REDIS_URL, then redis://127.0.0.1:6379. */
    redis_url: z.string().min(1).optional(),
    /** Prefix of every Redis key; put a hash tag in it (`{llm-limits}:`) to run on Redis Cluster. */
    redis_key_prefix: z.string().default('llm-limits:'),
    /** JetStream KV bucket shared by the workers (created when missing). */
    nats_bucket: bucketName.default('LLM_LIMITS'),
    /** A store operation slower than this counts as the store being unreachable. */
    store_timeout_ms: z.number().int().positive().default(2_000),
    /** A concurrency slot held by a worker that died is freed after this long. */
    concurrency_lease_ms: z.number().int().positive().default(600_000),
    /**
     * Issue 21, `nats` backend: each worker leases slices of the microDAO and model scopes (shared by many
     * agents: one hot key each) and admits locally against them, instead of one compare-and-swap per
     * request. The slack (room one worker holds unused while another is refused) is at most workers ×
     * limit / `slice_divisor` per dimension; a slice's unused room goes back after `ttl_ms`. Off: every
     * admission on those scopes goes to the record (exact, one write per round trip per worker and key).
     */
    shared_slices: z
      .object({
        enabled: z.boolean().default(true),
        /** A worker prefetches at most 1/slice_divisor of a shared limit beyond the requests waiting for it. */
        slice_divisor: z.number().int().positive().default(64),
        /** A slice's period: unused room goes back to the record after it. */
        ttl_ms: z.number().int().positive().default(1_000),
      })
      .strict()
      .prefault({}),
    /** Completion tokens reserved when neither the request nor the model sets max_tokens. */
    default_max_tokens: z.number().int().positive().default(1_024),
    on_store_error: z
      .object({
        rate: z.enum(LIMIT_STORE_POLICIES).default('fail_open'),
        budget: z.enum(LIMIT_STORE_POLICIES).default('fail_closed'),
      })
      .strict()
      .prefault({}),
    /** Limits of every agent (the seed: 10 requests a minute). */
    default: limitSetSchema.extend({ rpm: rate.default(10) }).prefault({}),
    /** Per agent id, overriding `default` limit by limit. */
    agents: z.record(z.string().min(1), limitSetSchema).prefault({}),
    /** Per microDAO: shared by all of its agents together. */
    microdaos: z.record(z.string().min(1), limitSetSchema).prefault({}),
    /** Per logical model: shared by every agent calling it. */
    models: z.record(z.string().min(1), limitSetSchema).prefault({}),
  })
  .strict();

export type LimitsConfig = z.infer<typeof limitsSchema>;
export type LimitsConfigInput = z.input<typeof limitsSchema>;
export type LimitSetConfig = z.infer<typeof limitSetSchema>;
