/**
 * Issue 18: the shared cache on JetStream KV over a real nats-server (2.9: no per-key TTL, so the
 * stored time is checked on read), its chunking of answers larger than max_payload, purge by model, a
 * damaged chunk read as a miss, an unreachable KV (misses and skipped sets counted, warned once),
 * the tiered cache's round trips, and coalescing across workers with a KV claim.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import {
  Coalescer,
  createResponseCache,
  encodeAnswer,
  MemoryLruCache,
  NatsKvCache,
  TieredCache,
  type NatsKvCacheOptions,
} from '../src/cache/index.js';
import { cacheSchema } from '../src/config/cache-schema.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { answer, bigAnswer, key, recordingLogger } from './helpers/cache-fixtures.js';

const MiB = 1024 * 1024;

let server: NatsServerHandle | undefined;
const connections: NatsConnection[] = [];

before(async () => {
  server = await startNatsServer();
});

after(async () => {
  await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
  await server?.dispose();
});

async function connection(url = (server as NatsServerHandle).url): Promise<NatsConnection> {
  const nc = await connect({ servers: url, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
  connections.push(nc);
  return nc;
}

async function store(overrides: Partial<NatsKvCacheOptions> = {}): Promise<NatsKvCache> {
  return new NatsKvCache({
    connection: await connection(),
    bucket: `cache-${randomUUID().slice(0, 8)}`,
    ttlMs: 60_000,
    maxEntryBytes: 8 * MiB,
    ...overrides,
  });
}

describe('NATS KV cache', () => {
  test('round trip, and the bucket: history 1, max age = ttl', async () => {
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const nc = await connection();
    const cache = new NatsKvCache({ connection: nc, bucket, ttlMs: 45_000, maxEntryBytes: MiB });
    const k = key();
    const stored = answer('hello', Date.now(), 'gpt-test', [{ delta: 'hel' }, { delta: 'lo' }]);
    await cache.set(k, stored);
    assert.deepEqual(await cache.get(k), stored);
    assert.equal(await cache.get(key()), undefined);
    const stats = await cache.stats();
    assert.equal(stats.entries, 1);
    assert.equal(stats.hits, 1);
    assert.equal(stats.misses, 1);
    assert.equal(stats.errors, 0);
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(`KV_${bucket}`);
    assert.equal(info.config.max_msgs_per_subject, 1);
    assert.equal(info.config.max_age, 45_000 * 1_000_000);
    // A worker started with another ttl sets the bucket's max age to it.
    const retuned = new NatsKvCache({ connection: nc, bucket, ttlMs: 30_000, maxEntryBytes: MiB });
    assert.deepEqual(await retuned.get(k), stored);
    assert.equal((await jsm.streams.info(`KV_${bucket}`)).config.max_age, 30_000 * 1_000_000);
  });

  test('ttl: the stored time is checked on every read (injected clock)', async () => {
    let now = Date.now();
    const cache = await store({ ttlMs: 60_000, now: () => now });
    const k = key();
    await cache.set(k, answer('soon stale', now));
    now += 59_000;
    assert.ok(await cache.get(k));
    now += 2_000;
    assert.equal(await cache.get(k), undefined, 'past the ttl although the bucket still holds it');
    const fromAnotherWorker = key();
    await cache.set(fromAnotherWorker, answer('old', now - 61_000));
    assert.equal(await cache.get(fromAnotherWorker), undefined);
  });

  test('a 5 MB answer is chunked and read back identical; over max_entry_bytes it is skipped', async () => {
    const cache = await store();
    const big = bigAnswer(Date.now());
    const size = encodeAnswer(big).bytes;
    assert.ok(size > 5_000_000, `the answer is ${size} bytes`);
    const k = key();
    await cache.set(k, big);
    const before = cache.roundTrips;
    const back = await cache.get(k);
    assert.deepEqual(back, big);
    assert.ok(cache.roundTrips - before >= 6, 'a manifest and at least five parts (max_payload is 1 MiB)');
    assert.equal(encodeAnswer(back as never).bytes, size);
    const stats = await cache.stats();
    assert.equal(stats.entries, 1, 'parts are not counted as answers');
    assert.ok((stats.bytes as number) >= size);

    const small = await store({ maxEntryBytes: 4 * MiB });
    const k2 = key();
    await small.set(k2, big);
    assert.equal(await small.get(k2), undefined);
    assert.equal((await small.stats()).skipped_too_large, 1);
    assert.equal((await small.stats()).entries, 0);
  });

  test('a damaged part (digest mismatch) is a miss', async () => {
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const nc = await connection();
    const cache = new NatsKvCache({
      connection: nc,
      bucket,
      ttlMs: 60_000,
      maxEntryBytes: 8 * MiB,
      maxValueBytes: 10_000,
    });
    const k = key();
    const stored = answer('y'.repeat(50_000), Date.now());
    await cache.set(k, stored);
    assert.deepEqual(await cache.get(k), stored);
    const kv = await new Kvm(jetstream(nc)).open(bucket);
    const parts: string[] = [];
    for await (const name of await kv.keys()) if (name.split('.').length === 3) parts.push(name);
    assert.ok(parts.length >= 5, `parts: ${parts.join(', ')}`);
    const victim = parts.sort()[1] as string;
    const original = (await kv.get(victim))?.value as Uint8Array;
    const damaged = Buffer.from(original);
    damaged[10] = damaged[10] === 0x41 ? 0x42 : 0x41;
    await kv.put(victim, damaged);
    assert.equal(await cache.get(k), undefined, 'same length, other bytes: the sha256 tells');
    await kv.purge(victim);
    assert.equal(await cache.get(k), undefined, 'a missing part: a miss');
  });

  test('purge all or by model', async () => {
    const cache = await store({ maxValueBytes: 10_000 });
    const a1 = key('model-a');
    const a2 = key('model-a');
    const b1 = key('org/model-b:latest');
    await cache.set(a1, answer('a1', Date.now(), 'model-a'));
    await cache.set(a2, answer('z'.repeat(40_000), Date.now(), 'model-a'));
    await cache.set(b1, answer('b1', Date.now(), 'org/model-b:latest'));
    assert.equal((await cache.stats()).entries, 3);
    assert.equal(await cache.purge({ model: 'model-a' }), 2);
    assert.equal(await cache.get(a1), undefined);
    assert.equal(await cache.get(a2), undefined);
    assert.ok(await cache.get(b1));
    assert.equal(await cache.purge(), 1);
    assert.equal(await cache.get(b1), undefined);
    const stats = await cache.stats();
    assert.equal(stats.entries, 0);
  });

  test('tiered: a memory hit costs no KV round trip; a shared hit fills memory', async () => {
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const sharedA = new NatsKvCache({ connection: await connection(), bucket, ttlMs: 60_000, maxEntryBytes: 8 * MiB });
    const sharedB = new NatsKvCache({ connection: await connection(), bucket, ttlMs: 60_000, maxEntryBytes: 8 * MiB });
    const workerA = new TieredCache(new MemoryLruCache({ maxBytes: 16 * MiB, ttlMs: 60_000 }), sharedA);
    const workerB = new TieredCache(new MemoryLruCache({ maxBytes: 16 * MiB, ttlMs: 60_000 }), sharedB);
    const k = key();
    await workerA.set(k, answer('shared', Date.now()));
    assert.equal((await workerA.get(k))?.reply.content, 'shared');
    assert.equal(sharedA.roundTrips, 0, 'the writer answers from memory');
    assert.equal((await workerB.get(k))?.reply.content, 'shared');
    assert.equal(sharedB.roundTrips, 1);
    for (let index = 0; index < 5; index += 1) assert.ok(await workerB.get(k));
    assert.equal(sharedB.roundTrips, 1, 'filled into memory: no more round trips');
    assert.equal((await workerB.tiers()).memory.entries, 1);
    // The counters the metrics read: each tier's, without a round trip.
    const counters = workerB.counters();
    assert.deepEqual(
      [counters.memory.hits, counters.memory.misses, counters.memory.entries],
      [5, 1, 1],
      'one memory miss (filled from the KV), then five memory hits',
    );
    assert.deepEqual(counters.shared, { backend: 'nats', hits: 1, misses: 0, errors: 0, skipped_too_large: 0 });
    assert.equal(sharedB.roundTrips, 1, 'reading the counters is no round trip');
  });

  test('coalescing across workers: a KV claim, the others poll the shared cache', async () => {
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const workers = await Promise.all(
      [0, 1, 2].map(async () => {
        const shared = new NatsKvCache({
          connection: await connection(),
          bucket,
          ttlMs: 60_000,
          maxEntryBytes: 8 * MiB,
        });
        return { shared, coalescer: new Coalescer({ maxWaitMs: 5_000, claims: shared, pollMs: 20 }) };
      }),
    );
    const k = key();
    let upstream = 0;
    const results = await Promise.all(
      workers.flatMap((worker) =>
        Array.from({ length: 4 }, () =>
          worker.coalescer.run(
            k,
            async () => {
              upstream += 1;
              await new Promise((resolve) => setTimeout(resolve, 200));
              const computed = answer('once', Date.now());
              await worker.shared.set(k, computed);
              return computed;
            },
            () => worker.shared.get(k),
          ),
        ),
      ),
    );
    assert.equal(upstream, 1);
    assert.equal(results.length, 12);
    assert.ok(results.every((result) => result.value.reply.content === 'once'));
    assert.equal(results.filter((result) => result.role === 'shared').length, 2, 'one per other worker');
  });

  test('createResponseCache: the memory LRU in front of the KV bucket named in the config', async () => {
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const config = cacheSchema.parse({ bucket, memory_max_bytes: '1MiB', ttl_ms: 60_000 });
    const { store: cache, coalescer } = createResponseCache(config, { nats: await connection() });
    assert.equal(cache.backend, 'memory+nats');
    const k = key();
    const result = await coalescer.run(k, async () => {
      const computed = answer('via the factory', Date.now());
      await cache.set(k, computed);
      return computed;
    });
    assert.equal(result.role, 'leader');
    const other = createResponseCache(config, { nats: await connection() });
    assert.equal((await other.store.get(k))?.reply.content, 'via the factory');
    const tiers = await other.store.tiers();
    assert.equal(tiers.shared?.entries, 1);
    assert.equal(tiers.memory.entries, 1);
  });

  test('a stale claim is taken over', async () => {
    let now = Date.now();
    const bucket = `cache-${randomUUID().slice(0, 8)}`;
    const a = new NatsKvCache({
      connection: await connection(),
      bucket,
      ttlMs: 60_000,
      maxEntryBytes: MiB,
      now: () => now,
    });
    const b = new NatsKvCache({
      connection: await connection(),
      bucket,
      ttlMs: 60_000,
      maxEntryBytes: MiB,
      now: () => now,
    });
    const k = key();
    assert.equal(await a.claim(k, 1_000), true);
    assert.equal(await b.claim(k, 1_000), false);
    now += 1_500;
    assert.equal(await b.claim(k, 1_000), true, 'the holder died: its claim went stale');
    await b.release(k);
    assert.equal(await a.claim(k, 1_000), true);
  });
});

describe('NATS KV cache, the KV unreachable', () => {
  test('misses and skipped sets are counted, nothing throws, warned once, and it comes back', async () => {
    const own = await startNatsServer();
    try {
      const logger = recordingLogger();
      const nc = await connect({ servers: own.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
      connections.push(nc);
      const cache = new NatsKvCache({
        connection: nc,
        bucket: 'LLM_CACHE',
        ttlMs: 60_000,
        maxEntryBytes: MiB,
        timeoutMs: 300,
        retryAfterMs: 200,
        logger,
      });
      const k = key();
      await cache.set(k, answer('before', Date.now()));
      assert.ok(await cache.get(k));
      await own.stop();
      for (let index = 0; index < 5; index += 1) {
        assert.equal(await cache.get(k), undefined);
        await cache.set(key(), answer('lost', Date.now()));
        if (index === 2) await new Promise((resolve) => setTimeout(resolve, 250));
      }
      const stats = await cache.stats();
      assert.equal(stats.misses, 5);
      assert.equal(stats.errors, 11, 'five gets, five sets and this stats call');
      assert.equal(logger.warnings.length, 1, 'logged once for the outage');
      await own.restart();
      const deadline = Date.now() + 15_000;
      let back: unknown;
      while (back === undefined && Date.now() < deadline) {
        back = await cache.get(k);
        if (back === undefined) await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.ok(back, 'the stored answer is read again once the server is back');
      assert.equal(logger.warnings.length, 1);
    } finally {
      await own.dispose();
    }
  });
});
