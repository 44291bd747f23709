import type { NatsConnection } from '@nats-io/nats-core';
import { Redis } from 'ioredis';
import type { CacheConfig } from '../config/cache-schema.js';
import { Coalescer } from './coalescer.js';
import { MemoryLruCache } from './memory-lru.js';
import { NatsKvCache } from './nats-kv-cache.js';
import { RedisCache } from './redis-cache.js';
import { TieredCache } from './tiered-cache.js';
import type { CacheLogger, CacheStore } from './types.js';

export * from './types.js';
export { Coalescer, type ClaimStore, type Coalesced, type CoalesceRole, type CoalescerOptions } from './coalescer.js';
export { MemoryLruCache, type MemoryLruOptions } from './memory-lru.js';
export { NatsKvCache, type NatsKvCacheOptions } from './nats-kv-cache.js';
export { RedisCache, type RedisCacheOptions } from './redis-cache.js';
export { TieredCache } from './tiered-cache.js';

const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

export interface CacheDeps {
  /** The worker's connection (the `nats` backend). */
  nats?: NatsConnection;
  /** A Redis client to use (else one is made from `redis_url` / REDIS_URL). */
  redis?: Redis;
  logger?: CacheLogger;
  env?: NodeJS.ProcessEnv;
  now?: () => number;
}

export interface ResponseCacheParts {
  store: TieredCache;
  coalescer: Coalescer;
}

/**
 * The cache the config asks for: the memory LRU, in front of the shared store of `cache.backend`, and
 * the coalescer (cross-worker claims on `nats`). Never fails for an unreachable store: the KV bucket is
 * opened on first use, Redis connects in the background (both are then misses until they answer).
 */
export function createResponseCache(config: CacheConfig, deps: CacheDeps = {}): ResponseCacheParts {
  const memory = new MemoryLruCache({
    maxBytes: config.memory_max_bytes,
    maxEntryBytes: config.max_entry_bytes,
    maxEntries: config.max_entries,
    ttlMs: config.ttl_ms,
    ...(deps.now === undefined ? {} : { now: deps.now }),
  });
  const common = {
    ttlMs: config.ttl_ms,
    maxEntryBytes: config.max_entry_bytes,
    timeoutMs: config.store_timeout_ms,
    ...(deps.logger === undefined ? {} : { logger: deps.logger }),
    ...(deps.now === undefined ? {} : { now: deps.now }),
  };
  let shared: CacheStore | undefined;
  let claims: NatsKvCache | undefined;
  if (config.backend === 'nats') {
    if (deps.nats === undefined) throw new Error('cache.backend "nats" needs the NATS connection');
    claims = new NatsKvCache({ ...common, connection: deps.nats, bucket: config.bucket });
    shared = claims;
  } else if (config.backend === 'redis') {
    const env = deps.env ?? process.env;
    const client =
      deps.redis ??
      new Redis(config.redis_url ?? (env.REDIS_URL || DEFAULT_REDIS_URL), {
        lazyConnect: false,
        enableOfflineQueue: false,
        maxRetriesPerRequest: 1,
        connectTimeout: config.store_timeout_ms,
      });
    if (deps.redis === undefined) client.on('error', () => undefined);
    shared = new RedisCache({
      ...common,
      client,
      keyPrefix: config.redis_key_prefix,
      ownsClient: deps.redis === undefined,
    });
  }
  const store = new TieredCache(memory, shared);
  const coalescer = new Coalescer({
    maxWaitMs: config.coalesce_wait_ms,
    ...(claims === undefined ? {} : { claims }),
  });
  return { store, coalescer };
}
