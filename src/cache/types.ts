import { createHash } from 'node:crypto';
import type { ChatReply } from '../contract/reply.js';

/**
 * Issue 18: the response cache's storage layer. Every store (memory LRU, NATS KV, Redis, the tiered
 * pair) answers the same interface, never throws to its caller (a store that cannot be reached is a
 * miss, or a skipped set, counted in `errors`), and never truncates an answer: one that is too large
 * is not stored (`skipped_too_large`).
 */

/** What a stream chunk is to the cache: opaque JSON, replayed by the worker as it was recorded. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** One cached answer. */
export interface CachedAnswer {
  /** When it was stored (ms since the epoch, the storing worker's clock); it expires at stored_at + ttl. */
  stored_at: number;
  /** The logical model that answered (what `purge --model` names). */
  model: string;
  reply: ChatReply;
  /** The stream chunks as the worker replays them, when the answer was streamed (opaque to the cache). */
  chunks?: JsonValue[];
}

/**
 * Where an answer lives: the logical model (purge by model) and the request's hash (src/worker's
 * `cacheKey`: a base64url sha256, which should also cover the model's config). `hash` must be a KV/Redis
 * key token: letters, digits, `-` and `_` (base64url), at most 128 characters.
 */
export interface CacheKey {
  model: string;
  hash: string;
}

export interface CacheStats {
  backend: string;
  /** Answers held (undefined when the store cannot say, e.g. unreachable). */
  entries: number | undefined;
  /** Bytes held, where the store knows (the memory LRU: answers' JSON bytes; NATS: the stream's bytes). */
  bytes: number | undefined;
  /** Counters of this process since the store was created. */
  hits: number;
  misses: number;
  /** Operations that failed or were skipped because the store was unreachable (each also a miss or a lost set). */
  errors: number;
  /** Answers not stored because they were larger than max_entry_bytes (or the memory bound). */
  skipped_too_large: number;
}

export interface PurgeFilter {
  /** Only this logical model's answers; all answers when absent. */
  model?: string;
}

export interface CacheStore {
  readonly backend: string;
  get(key: CacheKey): Promise<CachedAnswer | undefined>;
  set(key: CacheKey, answer: CachedAnswer): Promise<void>;
  delete(key: CacheKey): Promise<void>;
  /** Removes every answer (or a model's); resolves to how many answers were removed (where known, else 0). */
  purge(filter?: PurgeFilter): Promise<number>;
  stats(): Promise<CacheStats>;
  /**
   * This process's counters now, read synchronously and without I/O (what the worker's metrics
   * observe at each collection; `stats()` may ask the server). Optional: a store without it is not
   * counted in the metrics.
   */
  counters?(): CacheCounters;
  close(): Promise<void>;
}

/** The part of a pino logger the stores use. */
export interface CacheLogger {
  warn(fields: object, message: string): void;
}

/** The counters every store keeps. */
export interface CacheCounters {
  hits: number;
  misses: number;
  errors: number;
  skipped_too_large: number;
}

/** One tier's counters, named by its backend (`memory`, `nats`, `redis`). */
export interface TierCounters extends CacheCounters {
  backend: string;
}

/**
 * What `TieredCache.counters()` answers: its own counts (a hit in either tier is one hit, as in
 * `stats()`), each tier's own counters, and what the memory tier holds; all read without I/O.
 */
export interface TieredCounters extends CacheCounters {
  memory: TierCounters & { entries: number; bytes: number };
  /** Undefined without a shared tier (`cache.backend: memory`) or when the store keeps no counters. */
  shared: TierCounters | undefined;
}

export function newCounters(): CacheCounters {
  return { hits: 0, misses: 0, errors: 0, skipped_too_large: 0 };
}

const HASH_TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

/** Whether a key's hash is a valid token (a store refuses, as a miss or a skipped set, any other). */
export function validHash(hash: string): boolean {
  return HASH_TOKEN.test(hash);
}

/**
 * A logical model's name as a key token: models may hold `/`, `:` or `.` (invalid in a KV key or
 * ambiguous in a Redis pattern), so it is hashed (sha256, base64url, 22 characters: 132 bits).
 */
export function modelToken(model: string): string {
  return createHash('sha256').update(model).digest('base64url').slice(0, 22);
}

/** An answer's JSON and its size in bytes, computed once per answer object. */
export interface EncodedAnswer {
  json: string;
  bytes: number;
}

const encoded = new WeakMap<CachedAnswer, EncodedAnswer>();

export function encodeAnswer(answer: CachedAnswer): EncodedAnswer {
  let known = encoded.get(answer);
  if (known === undefined) {
    const json = JSON.stringify(answer);
    known = { json, bytes: Buffer.byteLength(json) };
    encoded.set(answer, known);
  }
  return known;
}

/** Remembers the encoding an answer was decoded from (a shared hit filling memory costs no re-encoding). */
export function rememberEncoding(answer: CachedAnswer, json: string, bytes: number): void {
  encoded.set(answer, { json, bytes });
}

/** Parses a stored answer; undefined when it is not one (a foreign or damaged value: a miss). */
export function decodeAnswer(json: string): CachedAnswer | undefined {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object') return undefined;
  const answer = value as Partial<CachedAnswer>;
  if (typeof answer.stored_at !== 'number' || typeof answer.model !== 'string') return undefined;
  if (answer.reply === null || typeof answer.reply !== 'object') return undefined;
  if (answer.chunks !== undefined && !Array.isArray(answer.chunks)) return undefined;
  const decoded = answer as CachedAnswer;
  rememberEncoding(decoded, json, Buffer.byteLength(json));
  return decoded;
}

/** Whether an answer stored at `storedAt` is still fresh at `now`. */
export function isFresh(storedAt: number, ttlMs: number, now: number): boolean {
  return now - storedAt < ttlMs && storedAt <= now + 60_000;
}

/**
 * Logs a store's outage once: the first failure after a success (or since creation) is logged, the
 * rest are only counted, until an operation succeeds again.
 */
export class OutageLog {
  #down = false;
  constructor(
    private readonly logger: CacheLogger | undefined,
    private readonly backend: string,
  ) {}

  failed(error: unknown, operation: string): void {
    if (this.#down) return;
    this.#down = true;
    this.logger?.warn(
      { backend: this.backend, operation, err: error instanceof Error ? error.message : String(error) },
      'response cache store unreachable: answers are served without it (misses and skipped sets are counted)',
    );
  }

  succeeded(): void {
    this.#down = false;
  }

  get down(): boolean {
    return this.#down;
  }
}

/**
 * How a shared store runs an operation: bounded by a timeout, counted in `errors` and logged once per
 * outage when it fails, and not tried at all for `retryAfterMs` after a failure (each request would
 * otherwise wait the timeout). One guard for the NATS and the Redis stores.
 */
export class StoreGuard {
  readonly #outage: OutageLog;
  #retryAt = 0;

  constructor(
    private readonly label: string,
    private readonly counters: CacheCounters,
    readonly timeoutMs: number,
    private readonly retryAfterMs: number,
    logger: CacheLogger | undefined,
    backend: string,
  ) {
    this.#outage = new OutageLog(logger, backend);
  }

  /** The operation's value, or undefined when the store failed, was too slow, or is resting after a failure. */
  async run<T>(
    operation: string,
    work: () => Promise<T>,
    timeoutMs = this.timeoutMs,
  ): Promise<{ value: T } | undefined> {
    if (Date.now() < this.#retryAt && this.#outage.down) {
      this.counters.errors += 1;
      return undefined;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${this.label} ${operation} took over ${timeoutMs} ms`)), timeoutMs);
      });
      const value = await Promise.race([work(), timeout]);
      this.#outage.succeeded();
      return { value };
    } catch (error) {
      this.counters.errors += 1;
      this.#retryAt = Date.now() + this.retryAfterMs;
      this.#outage.failed(error, operation);
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }
}
