/**
 * Issue 18: the shared cache on Redis (the machine's, REDIS_URL; skipped with a message when none
 * answers): round trip with PX, ttl on the stored time, a 5 MB answer in one value, max_entry_bytes,
 * purge by model with SCAN, and a Redis that is down (misses and skipped sets counted, warned once).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { encodeAnswer, MemoryLruCache, RedisCache, TieredCache, type RedisCacheOptions } from '../src/cache/index.js';
import { REDIS_URL, redisReachable } from './helpers/redis.js';
import { freePort } from './helpers/ports.js';
import { answer, bigAnswer, key, recordingLogger } from './helpers/cache-fixtures.js';

const MiB = 1024 * 1024;
const reachable = await redisReachable();
const skip = reachable ? false : `no Redis answers at ${REDIS_URL} (set REDIS_URL to run these tests)`;
if (!reachable) console.log(`# cache-redis: skipped, ${skip}`);

let client: Redis | undefined;
const prefix = `llm-cache-test-${randomUUID().slice(0, 8)}:`;

before(async () => {
  if (reachable) client = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
});

after(async () => {
  if (client === undefined) return;
  const stale = await client.keys(`${prefix}*`);
  if (stale.length > 0) await client.unlink(...stale);
  client.disconnect();
});

function store(overrides: Partial<RedisCacheOptions> = {}): RedisCache {
  return new RedisCache({
    client: client as Redis,
    keyPrefix: prefix,
    ttlMs: 60_000,
    maxEntryBytes: 8 * MiB,
    ...overrides,
  });
}

describe('Redis cache', { skip }, () => {
  test('round trip, written with PX ttl', async () => {
    const cache = store({ ttlMs: 45_000 });
    const k = key();
    const stored = answer('hello', Date.now(), 'gpt-test', [{ delta: 'hel' }, { delta: 'lo' }]);
    await cache.set(k, stored);
    assert.deepEqual(await cache.get(k), stored);
    assert.equal(await cache.get(key()), undefined);
    const keys = await (client as Redis).keys(`${prefix}*`);
    assert.equal(keys.length, 1);
    const pttl = await (client as Redis).pttl(keys[0] as string);
    assert.ok(pttl > 40_000 && pttl <= 45_000, `pttl ${pttl}`);
    const stats = await cache.stats();
    assert.equal(stats.entries, 1);
    assert.equal(stats.hits, 1);
    assert.equal(stats.misses, 1);
    await cache.delete(k);
    assert.equal(await cache.get(k), undefined);
  });

  test('ttl: the stored time is checked on read (injected clock)', async () => {
    let now = Date.now();
    const cache = store({ now: () => now });
    const k = key();
    await cache.set(k, answer('soon stale', now));
    now += 59_000;
    assert.ok(await cache.get(k));
    now += 2_000;
    assert.equal(await cache.get(k), undefined);
  });

  test('a 5 MB answer in one value; over max_entry_bytes it is skipped', async () => {
    const cache = store();
    const big = bigAnswer(Date.now());
    assert.ok(encodeAnswer(big).bytes > 5_000_000);
    const k = key();
    await cache.set(k, big);
    assert.deepEqual(await cache.get(k), big);
    const small = store({ maxEntryBytes: 4 * MiB });
    const k2 = key();
    await small.set(k2, big);
    assert.equal(await small.get(k2), undefined);
    assert.equal((await small.stats()).skipped_too_large, 1);
  });

  test('purge all or by model', async () => {
    const own = `${prefix}purge-${randomUUID().slice(0, 6)}:`;
    const cache = store({ keyPrefix: own });
    const a1 = key('model-a');
    const a2 = key('model-a');
    const b1 = key('org/model-b:latest');
    for (const k of [a1, a2, b1]) await cache.set(k, answer('x', Date.now(), k.model));
    assert.equal(await cache.purge({ model: 'model-a' }), 2);
    assert.equal(await cache.get(a1), undefined);
    assert.ok(await cache.get(b1));
    assert.equal(await cache.purge(), 1);
    assert.equal((await cache.stats()).entries, 0);
  });

  test('tiered over Redis: a shared hit fills memory, then no round trip', async () => {
    const sharedA = store();
    const sharedB = store();
    const workerA = new TieredCache(new MemoryLruCache({ maxBytes: 16 * MiB, ttlMs: 60_000 }), sharedA);
    const workerB = new TieredCache(new MemoryLruCache({ maxBytes: 16 * MiB, ttlMs: 60_000 }), sharedB);
    const k = key();
    await workerA.set(k, answer('shared', Date.now()));
    assert.ok(await workerB.get(k));
    assert.ok(await workerB.get(k));
    assert.equal(sharedB.roundTrips, 1);
  });
});

describe('Redis cache, Redis unreachable', () => {
  test('misses and skipped sets are counted, nothing throws, warned once', async () => {
    const port = await freePort();
    const down = new Redis(`redis://127.0.0.1:${port}`, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => 200,
      lazyConnect: false,
    });
    down.on('error', () => undefined);
    const logger = recordingLogger();
    const cache = new RedisCache({
      client: down,
      keyPrefix: prefix,
      ttlMs: 60_000,
      maxEntryBytes: MiB,
      timeoutMs: 300,
      retryAfterMs: 100,
      logger,
      ownsClient: true,
    });
    try {
      for (let index = 0; index < 4; index += 1) {
        assert.equal(await cache.get(key()), undefined);
        await cache.set(key(), answer('lost', Date.now()));
        if (index === 1) await new Promise((resolve) => setTimeout(resolve, 150));
      }
      const stats = await cache.stats();
      assert.equal(stats.misses, 4);
      assert.equal(stats.errors, 9);
      assert.equal(logger.warnings.length, 1);
    } finally {
      await cache.close();
    }
  });
});
