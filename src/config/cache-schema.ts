import { z } from 'zod';
import { parseSize } from './duration.js';

/**
 * The `cache` section of config.yaml (issue 18: a response cache shared by every worker). Kept in its
 * own file (and not importing schema.ts) so that schema.ts can import it without a cycle.
 *
 * - `backend`: where the shared tier lives. `nats` (default: JetStream KV, no second system to run),
 *   `redis`, or `memory` (per worker only, as before issue 18).
 * - The per-worker memory LRU always sits in front of the shared tier and is bounded in BYTES
 *   (`memory_max_bytes`); `max_entries` is still accepted and caps the number of entries it holds as a
 *   second bound (raise it when answers are small: 1000 small answers fill far less than 64MiB).
 * - `max_entry_bytes`: an answer (reply + stream chunks, as JSON) larger than this is not stored by any
 *   tier (counted as `skipped_too_large`), never truncated. On `nats`, an answer larger than the
 *   server's max value size is split into chunks (see src/cache/nats-kv-cache.ts).
 * - `ttl_ms`: entries expire this long after they were stored (checked against the stored time on every
 *   read; the KV bucket's max age and Redis's PX only remove them from the store).
 * - `coalesce_wait_ms`: how long identical requests wait for the first one's answer before each goes
 *   upstream on its own (0: no coalescing).
 */
export const CACHE_BACKENDS = ['nats', 'redis', 'memory'] as const;
export type CacheBackend = (typeof CACHE_BACKENDS)[number];

/** A positive size: a number of bytes or `"64MiB"` (the project's size grammar, src/config/duration.ts). */
const positiveSize = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseSize(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a positive size: ${JSON.stringify(value)} (use e.g. 64MiB, 512KB or a number of bytes)`,
    });
    return z.NEVER;
  }
  return parsed;
});

/** KV bucket names: letters, digits, `_` and `-`. */
const bucketName = z.string().regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"');

export const DEFAULT_CACHE_MEMORY_MAX_BYTES = 64 * 1024 ** 2;
export const DEFAULT_CACHE_MAX_ENTRY_BYTES = 8 * 1024 ** 2;

export const cacheSchema = z
  .object({
    enabled: z.boolean().default(true),
    backend: z.enum(CACHE_BACKENDS).default('nats'),
    /** JetStream KV bucket of the `nats` backend (created when missing; its max age is `ttl_ms`). */
    bucket: bucketName.default('LLM_CACHE'),
    /** `redis` backend: defaults to the environment's REDIS_URL, then redis://127.0.0.1:6379. */
    redis_url: z.string().min(1).optional(),
    /** `redis` backend: prefix of every key (a hash tag such as `{llm-cache}:` keeps them on one Cluster slot). */
    redis_key_prefix: z.string().default('llm-cache:'),
    /** Bytes held by each worker's memory LRU (the answers' JSON size). */
    memory_max_bytes: positiveSize.default(DEFAULT_CACHE_MEMORY_MAX_BYTES),
    /** Largest answer stored (JSON bytes of the reply and its stream chunks); larger ones are skipped. */
    max_entry_bytes: positiveSize.default(DEFAULT_CACHE_MAX_ENTRY_BYTES),
    /** A second bound of the memory LRU: most entries it holds (its main bound is `memory_max_bytes`). */
    max_entries: z.number().int().positive().default(1_000),
    ttl_ms: z.number().int().positive().default(300_000),
    /** Identical requests wait this long for the first one's answer, then go upstream on their own; 0: never wait. */
    coalesce_wait_ms: z.number().int().nonnegative().default(30_000),
    /** A shared-store operation slower than this counts as the store being unreachable (a miss, or a skipped set). */
    store_timeout_ms: z.number().int().positive().default(2_000),
  })
  .strict();

export type CacheConfig = z.infer<typeof cacheSchema>;
export type CacheConfigInput = z.input<typeof cacheSchema>;
