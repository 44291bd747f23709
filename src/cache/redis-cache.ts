import type { Redis } from 'ioredis';
import {
  decodeAnswer,
  encodeAnswer,
  isFresh,
  modelToken,
  newCounters,
  StoreGuard,
  validHash,
  type CacheCounters,
  type CacheKey,
  type CachedAnswer,
  type CacheLogger,
  type CacheStats,
  type CacheStore,
  type PurgeFilter,
} from './types.js';

/**
 * The shared tier on Redis (`cache.backend: redis`): one string per answer at
 * `<prefix><model token>:<request hash>`, written with `SET … PX ttl` (Redis expires it) and checked
 * against stored_at on read all the same (an entry written by a worker with a longer ttl). Any size
 * up to max_entry_bytes is one value (Redis strings hold 512 MB). Purge by model: SCAN over the model's
 * prefix and UNLINK. Failures are misses / skipped sets, counted and logged once, as on NATS.
 *
 * The client is the caller's; give it `enableOfflineQueue: false` (or a small `maxRetriesPerRequest`)
 * so that a Redis that is down fails fast: each operation is also bounded by timeoutMs here.
 */
export interface RedisCacheOptions {
  client: Redis;
  keyPrefix: string;
  ttlMs: number;
  maxEntryBytes: number;
  timeoutMs?: number;
  retryAfterMs?: number;
  /** Close the client with the store. */
  ownsClient?: boolean;
  logger?: CacheLogger;
  now?: () => number;
}

const SCAN_COUNT = 500;
const LONG_OPERATION_FACTOR = 15;

export class RedisCache implements CacheStore {
  readonly backend = 'redis';
  readonly #options: RedisCacheOptions;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #counters = newCounters();
  readonly #guarded: StoreGuard;
  roundTrips = 0;

  constructor(options: RedisCacheOptions) {
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
    this.#now = options.now ?? Date.now;
    this.#guarded = new StoreGuard(
      'Redis',
      this.#counters,
      this.#timeoutMs,
      options.retryAfterMs ?? 1_000,
      options.logger,
      'redis',
    );
  }

  #id(key: CacheKey): string {
    return `${this.#options.keyPrefix}${modelToken(key.model)}:${key.hash}`;
  }

  #guard<T>(
    operation: string,
    work: (client: Redis) => Promise<T>,
    timeoutMs?: number,
  ): Promise<{ value: T } | undefined> {
    return this.#guarded.run(operation, () => work(this.#options.client), timeoutMs);
  }

  async get(key: CacheKey): Promise<CachedAnswer | undefined> {
    let answer: CachedAnswer | undefined;
    if (validHash(key.hash)) {
      const found = await this.#guard('get', (client) => {
        this.roundTrips += 1;
        return client.get(this.#id(key));
      });
      const text = found?.value;
      if (typeof text === 'string') {
        const decoded = decodeAnswer(text);
        if (decoded !== undefined && isFresh(decoded.stored_at, this.#options.ttlMs, this.#now())) answer = decoded;
      }
    }
    if (answer === undefined) this.#counters.misses += 1;
    else this.#counters.hits += 1;
    return answer;
  }

  async set(key: CacheKey, answer: CachedAnswer): Promise<void> {
    const { json, bytes } = encodeAnswer(answer);
    if (bytes > this.#options.maxEntryBytes) {
      this.#counters.skipped_too_large += 1;
      return;
    }
    if (!validHash(key.hash)) return;
    const remaining = Math.ceil(answer.stored_at + this.#options.ttlMs - this.#now());
    if (remaining <= 0) return;
    await this.#guard('set', (client) =>
      client.set(this.#id(key), json, 'PX', Math.min(remaining, this.#options.ttlMs)),
    );
  }

  async delete(key: CacheKey): Promise<void> {
    if (!validHash(key.hash)) return;
    await this.#guard('delete', (client) => client.unlink(this.#id(key)));
  }

  async #scan(pattern: string, each: (keys: string[]) => Promise<void>): Promise<void> {
    let cursor = '0';
    do {
      const [next, keys] = await this.#options.client.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT);
      cursor = next;
      if (keys.length > 0) await each(keys);
    } while (cursor !== '0');
  }

  /** A glob pattern matching the prefix literally (a prefix may hold `{…}` for Cluster, or `*`). */
  #pattern(rest: string): string {
    return `${this.#options.keyPrefix.replace(/[*?[\]\\]/g, '\\$&')}${rest}`;
  }

  async purge(filter: PurgeFilter = {}): Promise<number> {
    const pattern = this.#pattern(filter.model === undefined ? '*' : `${modelToken(filter.model)}:*`);
    // Scans take longer than one operation: bounded by LONG_OPERATION_FACTOR times the timeout.
    let removed = 0;
    const done = await this.#guard(
      'purge',
      async (client) => {
        await this.#scan(pattern, async (keys) => {
          removed += await client.unlink(...keys);
        });
        return removed;
      },
      this.#timeoutMs * LONG_OPERATION_FACTOR,
    );
    return done?.value ?? removed;
  }

  /** The counters alone, without asking the server (the metrics read them at each collection). */
  counters(): CacheCounters {
    return { ...this.#counters };
  }

  async stats(): Promise<CacheStats> {
    const found = await this.#guard(
      'stats',
      async () => {
        let entries = 0;
        await this.#scan(this.#pattern('*'), async (keys) => {
          entries += keys.length;
        });
        return entries;
      },
      this.#timeoutMs * LONG_OPERATION_FACTOR,
    );
    return { backend: this.backend, entries: found?.value, bytes: undefined, ...this.#counters };
  }

  async close(): Promise<void> {
    if (this.#options.ownsClient === true) this.#options.client.disconnect();
  }
}
