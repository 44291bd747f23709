import type { MemoryLruCache } from './memory-lru.js';
import {
  newCounters,
  type CacheKey,
  type CachedAnswer,
  type CacheStats,
  type CacheStore,
  type PurgeFilter,
  type TieredCounters,
} from './types.js';

/**
 * The worker's memory LRU in front of the shared store: a memory hit costs no round trip; a shared hit
 * fills memory (with the answer's remaining ttl, so it expires when the shared copy does); a set goes
 * to both. `shared` undefined: memory only (`cache.backend: memory`).
 *
 * What is in one worker's memory is not removed by another worker's purge: a purge reaches the other
 * workers' memory tiers only through their ttl (or a broadcast the wiring may add).
 */
export class TieredCache implements CacheStore {
  readonly backend: string;
  readonly memory: MemoryLruCache;
  readonly shared: CacheStore | undefined;
  readonly #counters = newCounters();

  constructor(memory: MemoryLruCache, shared?: CacheStore) {
    this.memory = memory;
    this.shared = shared;
    this.backend = shared === undefined ? 'memory' : `memory+${shared.backend}`;
  }

  async get(key: CacheKey): Promise<CachedAnswer | undefined> {
    const near = this.memory.peek(key);
    if (near !== undefined) {
      this.#counters.hits += 1;
      return near;
    }
    const far = await this.shared?.get(key);
    if (far === undefined) {
      this.#counters.misses += 1;
      return undefined;
    }
    this.#counters.hits += 1;
    this.memory.put(key, far);
    return far;
  }

  async set(key: CacheKey, answer: CachedAnswer): Promise<void> {
    this.memory.put(key, answer);
    await this.shared?.set(key, answer);
  }

  async delete(key: CacheKey): Promise<void> {
    await this.memory.delete(key);
    await this.shared?.delete(key);
  }

  async purge(filter?: PurgeFilter): Promise<number> {
    const near = await this.memory.purge(filter);
    if (this.shared === undefined) return near;
    return await this.shared.purge(filter);
  }

  /** Hits and misses of the two tiers together; entries, bytes and errors of the shared store (else memory). */
  async stats(): Promise<CacheStats> {
    const memory = this.memory.snapshot();
    const shared = await this.shared?.stats();
    const base = shared ?? memory;
    return {
      backend: this.backend,
      entries: base.entries,
      bytes: base.bytes,
      hits: this.#counters.hits,
      misses: this.#counters.misses,
      errors: shared?.errors ?? 0,
      skipped_too_large: base.skipped_too_large,
    };
  }

  /**
   * The counters now, synchronously and without I/O (the shared store's `stats()` may list keys over
   * the network): the tiered cache's own (as in `stats()`), each tier's, and the memory tier's entries
   * and bytes. What the worker's metrics observe at each collection.
   */
  counters(): TieredCounters {
    const memory = this.memory.snapshot();
    const shared = this.shared?.counters?.();
    return {
      ...this.#counters,
      errors: shared?.errors ?? 0,
      skipped_too_large: (shared ?? memory).skipped_too_large,
      memory: {
        backend: memory.backend,
        hits: memory.hits,
        misses: memory.misses,
        errors: memory.errors,
        skipped_too_large: memory.skipped_too_large,
        entries: memory.entries ?? 0,
        bytes: memory.bytes ?? 0,
      },
      shared:
        shared === undefined || this.shared === undefined ? undefined : { backend: this.shared.backend, ...shared },
    };
  }

  /** Each tier's own stats (`llm-proxy cache stats` can show both). */
  async tiers(): Promise<{ memory: CacheStats; shared: CacheStats | undefined }> {
    return { memory: this.memory.snapshot(), shared: await this.shared?.stats() };
  }

  async close(): Promise<void> {
    await this.memory.close();
    await this.shared?.close();
  }
}
