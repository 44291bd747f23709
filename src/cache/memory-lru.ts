import { LRUCache } from 'lru-cache';
import {
  encodeAnswer,
  isFresh,
  modelToken,
  newCounters,
  type CacheCounters,
  type CacheKey,
  type CachedAnswer,
  type CacheStats,
  type CacheStore,
  type PurgeFilter,
} from './types.js';

export interface MemoryLruOptions {
  /** Bytes held at most (the answers' JSON size). */
  maxBytes: number;
  /** Largest answer held; defaults to maxBytes. */
  maxEntryBytes?: number;
  /** Entries held at most, a second bound (lru-cache advises one). */
  maxEntries?: number;
  ttlMs: number;
  /** The clock (ms); tests inject one. */
  now?: () => number;
}

interface Entry {
  answer: CachedAnswer;
  bytes: number;
  /** The model's token, for purge by model. */
  model: string;
}

/**
 * A worker's own LRU of answers, bounded in bytes (lru-cache's `maxSize` with each answer's JSON size)
 * and by age: an entry lives until stored_at + ttl, so an answer filled in from the shared store keeps
 * its original expiry. The clock given is lru-cache's too (`perf`).
 */
export class MemoryLruCache implements CacheStore {
  readonly backend = 'memory';
  readonly #lru: LRUCache<string, Entry>;
  readonly #ttlMs: number;
  readonly #maxEntryBytes: number;
  readonly #now: () => number;
  readonly #counters = newCounters();

  constructor(options: MemoryLruOptions) {
    this.#ttlMs = options.ttlMs;
    this.#now = options.now ?? Date.now;
    this.#maxEntryBytes = Math.min(options.maxEntryBytes ?? options.maxBytes, options.maxBytes);
    this.#lru = new LRUCache<string, Entry>({
      maxSize: options.maxBytes,
      maxEntrySize: this.#maxEntryBytes,
      sizeCalculation: (entry) => Math.max(1, entry.bytes),
      ...(options.maxEntries === undefined ? {} : { max: options.maxEntries }),
      ttl: options.ttlMs,
      perf: { now: this.#now },
    });
  }

  #id(key: CacheKey): string {
    return `${modelToken(key.model)}.${key.hash}`;
  }

  /** The same as get, synchronously (the tiered cache's fast path). */
  peek(key: CacheKey): CachedAnswer | undefined {
    const id = this.#id(key);
    const entry = this.#lru.get(id);
    if (entry === undefined) {
      this.#counters.misses += 1;
      return undefined;
    }
    if (!isFresh(entry.answer.stored_at, this.#ttlMs, this.#now())) {
      this.#lru.delete(id);
      this.#counters.misses += 1;
      return undefined;
    }
    this.#counters.hits += 1;
    return entry.answer;
  }

  async get(key: CacheKey): Promise<CachedAnswer | undefined> {
    return this.peek(key);
  }

  /** Stores an answer; false when it was not (too large, or already expired). */
  put(key: CacheKey, answer: CachedAnswer): boolean {
    const { bytes } = encodeAnswer(answer);
    if (bytes > this.#maxEntryBytes) {
      this.#counters.skipped_too_large += 1;
      this.#lru.delete(this.#id(key));
      return false;
    }
    const remaining = answer.stored_at + this.#ttlMs - this.#now();
    if (remaining <= 0) return false;
    this.#lru.set(
      this.#id(key),
      { answer, bytes, model: modelToken(answer.model) },
      { ttl: Math.min(this.#ttlMs, Math.ceil(remaining)) },
    );
    return true;
  }

  async set(key: CacheKey, answer: CachedAnswer): Promise<void> {
    this.put(key, answer);
  }

  async delete(key: CacheKey): Promise<void> {
    this.#lru.delete(this.#id(key));
  }

  async purge(filter: PurgeFilter = {}): Promise<number> {
    if (filter.model === undefined) {
      const count = this.#lru.size;
      this.#lru.clear();
      return count;
    }
    const token = modelToken(filter.model);
    const doomed: string[] = [];
    for (const [id, entry] of this.#lru.entries()) if (entry.model === token) doomed.push(id);
    for (const id of doomed) this.#lru.delete(id);
    return doomed.length;
  }

  /** Synchronous stats (the tiered cache reports them next to the shared store's). */
  snapshot(): CacheStats {
    this.#lru.purgeStale();
    return { backend: this.backend, entries: this.#lru.size, bytes: this.#lru.calculatedSize, ...this.#counters };
  }

  async stats(): Promise<CacheStats> {
    return this.snapshot();
  }

  counters(): CacheCounters {
    return { ...this.#counters };
  }

  async close(): Promise<void> {
    this.#lru.clear();
  }
}
