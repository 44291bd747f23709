import { jsOptions } from '../bus/jetstream-domain.js';
import { createHash, randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
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
 * The shared tier on a JetStream KV bucket (issue 18; `cache.backend: nats`).
 *
 * Keys: `<model token>.<request hash>` (modelToken: a hash of the logical model, so that purge by model
 * is a subject filter `<model token>.>`). Value: the answer's JSON, when it fits the server's max value
 * size (max_payload less a margin for headers); else the answer is CHUNKED, never truncated: its bytes
 * go to `<key>.<write id>-<i>` entries, then a small manifest is written last at `<key>`:
 * `{"manifest":1, stored_at, model, bytes, parts, sha256, write}`. A reader fetches the parts, checks
 * the length and the sha256, and takes a mismatch (a part lost or overwritten) as a miss. The write id
 * keeps two workers storing the same key at once from mixing their parts; parts of a replaced answer
 * are left to the bucket's max age.
 *
 * Expiry: server 2.9 has no per-key TTL, so the bucket's max age is the ttl (it removes old values)
 * and every read checks stored_at against the ttl (max age is coarse, and a bucket made with another
 * ttl keeps its own until updated: a different max age is corrected at open, best effort).
 *
 * Failures: an operation that fails or takes longer than timeoutMs is a miss (get) or a skipped set,
 * counted in `errors` and logged once per outage; for `retryAfterMs` after a failure the store is not
 * asked at all (each request would otherwise wait timeoutMs), then one operation tries it again.
 */
export interface NatsKvCacheOptions {
  connection: NatsConnection;
  bucket: string;
  ttlMs: number;
  maxEntryBytes: number;
  timeoutMs?: number;
  /** Pause after a failure before the store is asked again (default 1 s). */
  retryAfterMs?: number;
  /** Largest value written as one entry; default: the server's max_payload less 1 KiB. Tests lower it. */
  maxValueBytes?: number;
  logger?: CacheLogger;
  now?: () => number;
}

interface Manifest {
  manifest: 1;
  stored_at: number;
  model: string;
  bytes: number;
  parts: number;
  sha256: string;
  write: string;
}

/** Room left in a message for headers and the subject (nats.js counts headers in max_payload). */
const HEADER_MARGIN = 1024;
const OPEN_ATTEMPTS = 3;
/** Parts of one answer fetched or written at once. */
const PART_CONCURRENCY = 4;
/** purge and stats list keys: bounded by this many times the timeout. */
const LONG_OPERATION_FACTOR = 15;

function isManifest(value: unknown): value is Manifest {
  if (value === null || typeof value !== 'object') return false;
  const manifest = value as Partial<Manifest>;
  return (
    manifest.manifest === 1 &&
    typeof manifest.stored_at === 'number' &&
    typeof manifest.model === 'string' &&
    typeof manifest.bytes === 'number' &&
    typeof manifest.parts === 'number' &&
    Number.isInteger(manifest.parts) &&
    manifest.parts > 0 &&
    manifest.parts <= 100_000 &&
    typeof manifest.sha256 === 'string' &&
    typeof manifest.write === 'string' &&
    /^[A-Za-z0-9_-]{1,32}$/.test(manifest.write)
  );
}

async function inBatches<T>(count: number, work: (index: number) => Promise<T>): Promise<T[]> {
  const results: T[] = new Array(count);
  for (let start = 0; start < count; start += PART_CONCURRENCY) {
    const end = Math.min(count, start + PART_CONCURRENCY);
    const batch = await Promise.all(Array.from({ length: end - start }, (_, offset) => work(start + offset)));
    batch.forEach((result, offset) => {
      results[start + offset] = result;
    });
  }
  return results;
}

export class NatsKvCache implements CacheStore {
  readonly backend = 'nats';
  readonly #options: NatsKvCacheOptions;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #counters = newCounters();
  readonly #guarded: StoreGuard;
  #kv: Promise<KV> | undefined;
  /** KV gets sent (entries and parts): what a test counts to see that a memory hit costs no round trip. */
  roundTrips = 0;

  constructor(options: NatsKvCacheOptions) {
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? 2_000;
    this.#now = options.now ?? Date.now;
    this.#guarded = new StoreGuard(
      'NATS KV',
      this.#counters,
      this.#timeoutMs,
      options.retryAfterMs ?? 1_000,
      options.logger,
      'nats',
    );
  }

  /** Opens (creating when missing) the bucket; a failed open is tried again by a later operation. */
  #open(): Promise<KV> {
    if (this.#kv === undefined) {
      const opening = this.#create();
      this.#kv = opening;
      opening.catch(() => {
        if (this.#kv === opening) this.#kv = undefined;
      });
    }
    return this.#kv;
  }

  async #create(): Promise<KV> {
    const { connection, bucket, ttlMs } = this.#options;
    const kvm = new Kvm(jetstream(connection, { ...jsOptions(connection), timeout: this.#timeoutMs }));
    for (let attempt = 1; ; attempt += 1) {
      try {
        const kv = await kvm.create(bucket, { history: 1, ttl: ttlMs, timeout: this.#timeoutMs });
        await this.#alignMaxAge(kv).catch((error: unknown) =>
          this.#options.logger?.warn(
            { bucket, err: error instanceof Error ? error.message : String(error) },
            'response cache: the bucket keeps its own max age (entries still expire after ttl_ms on read)',
          ),
        );
        return kv;
      } catch (error) {
        if (attempt >= OPEN_ATTEMPTS || connection.isClosed()) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100 * attempt));
      }
    }
  }

  /** A bucket made with another ttl keeps its max age: set it to this ttl (the stored-time check covers a race). */
  async #alignMaxAge(kv: KV): Promise<void> {
    const status = await kv.status();
    const wanted = this.#options.ttlMs * 1_000_000;
    const info = status.streamInfo;
    if (info.config.max_age === wanted) return;
    const jsm = await jetstreamManager(this.#options.connection, {
      ...jsOptions(this.#options.connection),
      timeout: this.#timeoutMs,
    });
    // The server refuses a duplicate window longer than the max age (it set it to min(2m, max age) at creation).
    await jsm.streams.update(info.config.name, {
      max_age: wanted,
      duplicate_window: Math.min(info.config.duplicate_window ?? wanted, wanted),
    });
  }

  /** Runs a store operation on the bucket through the guard (timeout, counted failures, rest after one). */
  #guard<T>(operation: string, work: (kv: KV) => Promise<T>, timeoutMs?: number): Promise<{ value: T } | undefined> {
    return this.#guarded.run(operation, () => this.#open().then(work), timeoutMs);
  }

  #id(key: CacheKey): string {
    return `${modelToken(key.model)}.${key.hash}`;
  }

  #maxValueBytes(): number {
    const fromServer = (this.#options.connection.info?.max_payload ?? 1024 * 1024) - HEADER_MARGIN;
    return Math.max(1, Math.min(fromServer, this.#options.maxValueBytes ?? fromServer));
  }

  async get(key: CacheKey): Promise<CachedAnswer | undefined> {
    if (!validHash(key.hash)) {
      this.#counters.misses += 1;
      return undefined;
    }
    const id = this.#id(key);
    // A chunked answer takes a round trip per PART_CONCURRENCY parts: its bound grows with max_entry_bytes.
    const parts = Math.ceil(this.#options.maxEntryBytes / this.#maxValueBytes() / PART_CONCURRENCY);
    const found = await this.#guard('get', (kv) => this.#read(kv, id), this.#timeoutMs * (1 + parts));
    const answer = found?.value;
    if (answer === undefined) this.#counters.misses += 1;
    else this.#counters.hits += 1;
    return answer;
  }

  async #read(kv: KV, id: string): Promise<CachedAnswer | undefined> {
    this.roundTrips += 1;
    const entry = await kv.get(id);
    if (entry === null || entry.operation !== 'PUT' || entry.length === 0) return undefined;
    const text = entry.string();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return undefined;
    }
    if (!isManifest(parsed)) {
      const answer = decodeAnswer(text);
      if (answer === undefined || !isFresh(answer.stored_at, this.#options.ttlMs, this.#now())) return undefined;
      return answer;
    }
    const manifest = parsed;
    if (!isFresh(manifest.stored_at, this.#options.ttlMs, this.#now())) return undefined;
    if (manifest.bytes > this.#options.maxEntryBytes) return undefined;
    const parts = await inBatches(manifest.parts, async (index) => {
      this.roundTrips += 1;
      const part = await kv.get(`${id}.${manifest.write}-${index}`);
      return part === null || part.operation !== 'PUT' ? undefined : part.value;
    });
    if (parts.some((part) => part === undefined)) return undefined;
    const whole = Buffer.concat(parts as Uint8Array[]);
    if (whole.length !== manifest.bytes) return undefined;
    if (createHash('sha256').update(whole).digest('base64url') !== manifest.sha256) return undefined;
    const answer = decodeAnswer(whole.toString('utf8'));
    if (answer === undefined || answer.model !== manifest.model) return undefined;
    return answer;
  }

  async set(key: CacheKey, answer: CachedAnswer): Promise<void> {
    const { json, bytes } = encodeAnswer(answer);
    if (bytes > this.#options.maxEntryBytes) {
      this.#counters.skipped_too_large += 1;
      return;
    }
    if (!validHash(key.hash)) return;
    const id = this.#id(key);
    const maxValue = this.#maxValueBytes();
    await this.#guard(
      'set',
      async (kv) => {
        if (bytes <= maxValue) {
          await kv.put(id, json);
          return;
        }
        const whole = Buffer.from(json);
        const parts = Math.ceil(whole.length / maxValue);
        const write = randomBytes(6).toString('base64url');
        await inBatches(parts, (index) =>
          kv.put(`${id}.${write}-${index}`, whole.subarray(index * maxValue, (index + 1) * maxValue)),
        );
        const manifest: Manifest = {
          manifest: 1,
          stored_at: answer.stored_at,
          model: answer.model,
          bytes: whole.length,
          parts,
          sha256: createHash('sha256').update(whole).digest('base64url'),
          write,
        };
        await kv.put(id, JSON.stringify(manifest));
      },
      this.#timeoutMs * (1 + Math.ceil(bytes / maxValue / PART_CONCURRENCY)),
    );
  }

  async delete(key: CacheKey): Promise<void> {
    if (!validHash(key.hash)) return;
    const id = this.#id(key);
    await this.#guard('delete', (kv) => kv.purge(id));
  }

  /**
   * Removes every answer, or a model's: counts the answers (manifests and whole values: keys of two
   * tokens), then purges the stream's subjects (parts and locks included) in one request.
   */
  async purge(filter: PurgeFilter = {}): Promise<number> {
    const prefix = filter.model === undefined ? '*' : modelToken(filter.model);
    const done = await this.#guard(
      'purge',
      async (kv) => {
        let count = 0;
        for await (const _ of await kv.keys(`${prefix}.*`)) count += 1;
        const jsm = await jetstreamManager(this.#options.connection, {
          ...jsOptions(this.#options.connection),
          timeout: this.#timeoutMs,
        });
        const stream = `KV_${this.#options.bucket}`;
        if (filter.model === undefined) await jsm.streams.purge(stream);
        else await jsm.streams.purge(stream, { filter: `$KV.${this.#options.bucket}.${prefix}.>` });
        return count;
      },
      this.#timeoutMs * LONG_OPERATION_FACTOR,
    );
    return done?.value ?? 0;
  }

  /** The counters alone, without asking the server (the metrics read them at each collection). */
  counters(): CacheCounters {
    return { ...this.#counters };
  }

  async stats(): Promise<CacheStats> {
    const found = await this.#guard(
      'stats',
      async (kv) => {
        let entries = 0;
        for await (const _ of await kv.keys('*.*')) entries += 1;
        const status = await kv.status();
        return { entries, bytes: status.size };
      },
      this.#timeoutMs * LONG_OPERATION_FACTOR,
    );
    return {
      backend: this.backend,
      entries: found?.value.entries,
      bytes: found?.value.bytes,
      ...this.#counters,
    };
  }

  /**
   * A light claim for cross-worker coalescing: creates `<key>.lock` (fails when another worker holds a
   * claim younger than `staleMs`; an older one is taken over). True when this worker may compute.
   * A store failure answers true (compute: the cache never stands between a request and its answer).
   */
  async claim(key: CacheKey, staleMs: number): Promise<boolean> {
    if (!validHash(key.hash)) return true;
    const lock = `${this.#id(key)}.lock`;
    const body = JSON.stringify({ at: this.#now() });
    const done = await this.#guard('claim', async (kv) => {
      try {
        await kv.create(lock, body);
        return true;
      } catch {
        // Exists (or a race): take over a stale claim by compare-and-swap on its revision.
        const held = await kv.get(lock);
        if (held === null) return true;
        let at = 0;
        try {
          at = held.operation === 'PUT' ? Number((held.json() as { at?: unknown }).at) : 0;
        } catch {
          at = 0;
        }
        if (held.operation === 'PUT' && Number.isFinite(at) && this.#now() - at < staleMs) return false;
        try {
          await kv.update(lock, body, held.revision);
          return true;
        } catch {
          return false;
        }
      }
    });
    return done?.value ?? true;
  }

  /** Releases a claim (best effort: a claim left behind goes stale after `staleMs`). */
  async release(key: CacheKey): Promise<void> {
    if (!validHash(key.hash)) return;
    await this.#guard('release', (kv) => kv.purge(`${this.#id(key)}.lock`));
  }

  async close(): Promise<void> {
    this.#kv = undefined;
  }
}
