/**
 * Issue 18, the cache's storage layer without a server: the memory LRU (bounded in bytes, ttl), the
 * tiered cache over a counting fake shared store, and request coalescing in one worker.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Coalescer,
  encodeAnswer,
  MemoryLruCache,
  TieredCache,
  type CachedAnswer,
  type CacheKey,
  type CacheStats,
  type CacheStore,
} from '../src/cache/index.js';
import { cacheSchema } from '../src/config/cache-schema.js';
import { answer, key } from './helpers/cache-fixtures.js';

describe('cache config', () => {
  test('defaults, sizes in the project grammar, and the old keys still accepted', () => {
    const defaults = cacheSchema.parse({});
    assert.equal(defaults.backend, 'nats');
    assert.equal(defaults.bucket, 'LLM_CACHE');
    assert.equal(defaults.memory_max_bytes, 64 * 1024 * 1024);
    assert.equal(defaults.max_entry_bytes, 8 * 1024 * 1024);
    assert.equal(defaults.coalesce_wait_ms, 30_000);
    assert.equal(defaults.max_entries, 1_000);
    const custom = cacheSchema.parse({
      enabled: true,
      max_entries: 50,
      ttl_ms: 1_000,
      backend: 'redis',
      memory_max_bytes: '16MiB',
      max_entry_bytes: '512KB',
    });
    assert.equal(custom.memory_max_bytes, 16 * 1024 * 1024);
    assert.equal(custom.max_entry_bytes, 512_000);
    assert.throws(() => cacheSchema.parse({ memory_max_bytes: '-1' }));
    assert.throws(() => cacheSchema.parse({ backend: 'memcached' }));
    assert.throws(() => cacheSchema.parse({ bucket: 'a.b' }));
  });
});

describe('memory LRU', () => {
  test('evicts by bytes, least recently used first', async () => {
    const now = 1_000_000;
    const sample = answer('x'.repeat(2_000), now);
    const size = encodeAnswer(sample).bytes;
    const cache = new MemoryLruCache({ maxBytes: size * 3 + 10, ttlMs: 60_000, now: () => now });
    const keys = [key(), key(), key(), key()];
    for (const k of keys.slice(0, 3)) await cache.set(k, answer('x'.repeat(2_000), now));
    assert.ok(await cache.get(keys[0] as CacheKey), 'the first is still there, and now most recent');
    await cache.set(keys[3] as CacheKey, answer('x'.repeat(2_000), now));
    assert.equal(await cache.get(keys[1] as CacheKey), undefined, 'the least recently used went');
    assert.ok(await cache.get(keys[0] as CacheKey));
    assert.ok(await cache.get(keys[3] as CacheKey));
    const stats = await cache.stats();
    assert.equal(stats.entries, 3);
    assert.ok((stats.bytes as number) <= size * 3 + 10);
    assert.equal(stats.bytes, size * 3);
  });

  test('an answer over max entry bytes is skipped and counted', async () => {
    const cache = new MemoryLruCache({ maxBytes: 100_000, maxEntryBytes: 1_000, ttlMs: 60_000 });
    const k = key();
    await cache.set(k, answer('x'.repeat(5_000), Date.now()));
    assert.equal(await cache.get(k), undefined);
    assert.equal((await cache.stats()).skipped_too_large, 1);
  });

  test('ttl is honoured on the injected clock, from stored_at', async () => {
    let now = 5_000_000;
    const cache = new MemoryLruCache({ maxBytes: 1_000_000, ttlMs: 1_000, now: () => now });
    const fresh = key();
    const old = key();
    await cache.set(fresh, answer('a', now));
    // Stored by another worker 900 ms ago.
    await cache.set(old, answer('b', now - 900));
    now += 500;
    assert.ok(await cache.get(fresh));
    assert.equal(await cache.get(old), undefined, 'expired 1 s after it was stored, not after it was filled');
    now += 600;
    assert.equal(await cache.get(fresh), undefined);
    const expired = key();
    await cache.set(expired, answer('c', now - 2_000));
    assert.equal(await cache.get(expired), undefined, 'an answer already expired is not stored');
  });

  test('purge all or by model', async () => {
    const cache = new MemoryLruCache({ maxBytes: 1_000_000, ttlMs: 60_000 });
    const a1 = key('model-a');
    const a2 = key('model-a');
    const b1 = key('model/b:1');
    for (const k of [a1, a2, b1]) await cache.set(k, answer('x', Date.now(), k.model));
    assert.equal(await cache.purge({ model: 'model-a' }), 2);
    assert.equal(await cache.get(a1), undefined);
    assert.ok(await cache.get(b1));
    assert.equal(await cache.purge(), 1);
    assert.equal(await cache.get(b1), undefined);
  });
});

/** A shared store in memory that counts its gets. */
class CountingStore implements CacheStore {
  readonly backend = 'fake';
  readonly entries = new Map<string, CachedAnswer>();
  gets = 0;
  async get(k: CacheKey) {
    this.gets += 1;
    return this.entries.get(k.hash);
  }
  async set(k: CacheKey, value: CachedAnswer) {
    this.entries.set(k.hash, value);
  }
  async delete(k: CacheKey) {
    this.entries.delete(k.hash);
  }
  async purge() {
    const count = this.entries.size;
    this.entries.clear();
    return count;
  }
  async stats(): Promise<CacheStats> {
    return {
      backend: 'fake',
      entries: this.entries.size,
      bytes: undefined,
      hits: 0,
      misses: 0,
      errors: 0,
      skipped_too_large: 0,
    };
  }
  async close() {}
}

describe('tiered cache', () => {
  test('a memory hit costs no shared round trip; a shared hit fills memory', async () => {
    const shared = new CountingStore();
    const workerA = new TieredCache(new MemoryLruCache({ maxBytes: 1_000_000, ttlMs: 60_000 }), shared);
    const workerB = new TieredCache(new MemoryLruCache({ maxBytes: 1_000_000, ttlMs: 60_000 }), shared);
    const k = key();
    await workerA.set(k, answer('hello', Date.now()));
    assert.equal((await workerA.get(k))?.reply.content, 'hello');
    assert.equal(shared.gets, 0, 'the writer hits its own memory');
    assert.equal((await workerB.get(k))?.reply.content, 'hello');
    assert.equal(shared.gets, 1, 'another worker reads the shared store once');
    assert.equal((await workerB.get(k))?.reply.content, 'hello');
    assert.equal(shared.gets, 1, 'then its memory');
    const stats = await workerB.stats();
    assert.equal(stats.hits, 2);
    assert.equal(stats.entries, 1);
  });
});

describe('tiered cache counters (what the metrics read, without I/O)', () => {
  test("each tier's own counters and what memory holds; a shared store without counters() is left out", async () => {
    const shared = new CountingStore();
    const tiered = new TieredCache(new MemoryLruCache({ maxBytes: 1_000_000, ttlMs: 60_000 }), shared);
    const k = key();
    assert.equal(await tiered.get(k), undefined);
    await tiered.set(k, answer('hello', Date.now()));
    assert.ok(await tiered.get(k));
    const counters = tiered.counters();
    assert.equal(counters.hits, 1);
    assert.equal(counters.misses, 1);
    assert.deepEqual(
      { ...counters.memory, bytes: counters.memory.bytes > 0 },
      { backend: 'memory', hits: 1, misses: 1, errors: 0, skipped_too_large: 0, entries: 1, bytes: true },
    );
    assert.equal(counters.shared, undefined, 'the fake keeps no counters');
    assert.equal(shared.gets, 1, 'reading the counters asked the shared store nothing');

    const alone = new TieredCache(new MemoryLruCache({ maxBytes: 100, ttlMs: 60_000 }));
    await alone.set(key(), answer('x'.repeat(500), Date.now()));
    const memoryOnly = alone.counters();
    assert.equal(memoryOnly.shared, undefined);
    assert.equal(memoryOnly.memory.skipped_too_large, 1);
    assert.equal(memoryOnly.memory.entries, 0);
  });
});

describe('coalescer (one worker)', () => {
  test('10 concurrent identical requests: one compute, ten answers', async () => {
    const coalescer = new Coalescer({ maxWaitMs: 5_000 });
    const k = key();
    let computes = 0;
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        coalescer.run(k, async () => {
          computes += 1;
          await new Promise((resolve) => setTimeout(resolve, 50));
          return 'the answer';
        }),
      ),
    );
    assert.equal(computes, 1);
    assert.equal(results.length, 10);
    assert.ok(results.every((result) => result.value === 'the answer'));
    assert.equal(results.filter((result) => result.role === 'leader').length, 1);
    assert.equal(results.filter((result) => result.role === 'joined').length, 9);
    assert.equal(coalescer.inFlight, 0);
  });

  test('the wait is bounded: past maxWaitMs the others compute on their own', async () => {
    const coalescer = new Coalescer({ maxWaitMs: 50 });
    const k = key();
    let computes = 0;
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 3 }, (_, index) =>
        coalescer.run(k, async () => {
          computes += 1;
          await new Promise((resolve) => setTimeout(resolve, index === 0 ? 1_000 : 10));
          return index;
        }),
      ),
    );
    const followersDone = results.slice(1);
    assert.deepEqual(
      followersDone.map((result) => result.role),
      ['alone', 'alone'],
    );
    assert.equal(computes, 3);
    assert.ok(Date.now() - started < 2_000);
  });

  test('a waiting caller whose signal aborts stops waiting at once with its reason; the leader goes on', async () => {
    const coalescer = new Coalescer({ maxWaitMs: 5_000 });
    const k = key();
    const leader = coalescer.run(k, async () => {
      await new Promise((resolve) => setTimeout(resolve, 500));
      return 'the answer';
    });
    const controller = new AbortController();
    const started = Date.now();
    const waiting = coalescer.run(k, async () => 'never computed', undefined, controller.signal);
    setTimeout(() => controller.abort(new Error('cancelled by its client')), 20);
    await assert.rejects(waiting, /cancelled by its client/);
    assert.ok(Date.now() - started < 300, 'it did not wait for the leader');
    const aborted = new AbortController();
    aborted.abort(new Error('already cancelled'));
    await assert.rejects(
      coalescer.run(k, async () => 'x', undefined, aborted.signal),
      /already cancelled/,
    );
    assert.deepEqual(await leader, { value: 'the answer', role: 'leader' });
  });

  test("a leader's failure hands over to one of the waiting callers", async () => {
    const coalescer = new Coalescer({ maxWaitMs: 5_000 });
    const k = key();
    let computes = 0;
    const settled = await Promise.allSettled(
      Array.from({ length: 5 }, () =>
        coalescer.run(k, async () => {
          computes += 1;
          await new Promise((resolve) => setTimeout(resolve, 20));
          if (computes === 1) throw new Error('upstream failed');
          return 'second try';
        }),
      ),
    );
    assert.equal(settled.filter((result) => result.status === 'rejected').length, 1);
    assert.equal(computes, 2);
    for (const result of settled.slice(1)) {
      assert.equal(result.status, 'fulfilled');
      assert.equal((result as PromiseFulfilledResult<{ value: string }>).value.value, 'second try');
    }
  });

  test('maxWaitMs 0: no coalescing', async () => {
    const coalescer = new Coalescer({ maxWaitMs: 0 });
    const k = key();
    let computes = 0;
    await Promise.all(Array.from({ length: 3 }, () => coalescer.run(k, async () => ++computes)));
    assert.equal(computes, 3);
  });
});
