/**
 * Issue 20, "one truth for ops tools", over the shared stores: every admission writes the limits it
 * enforced into the scope's record (a NATS KV value, a Redis hash), and `standing()` measures
 * against those, not against the reader's own config. Limiters with different configs on one
 * store stand for the workers and for an ops tool run with another config file.
 *
 * A real nats-server (startNatsServer) and the Redis at REDIS_URL, each scenario with its own
 * bucket / key prefix; clocks are frozen so that GCRA refill cannot blur the counts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import { limitsSchema, type LimitsConfigInput } from '../src/config/limits-schema.js';
import { configFingerprint, createLimiter, type AdmissionRequest, type Limiter } from '../src/limits/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { REDIS_URL, redisReachable } from './helpers/redis.js';

type Backend = 'nats' | 'redis';

const RUN_PREFIX = `llm-limits-recorded-test:${process.pid}-${randomUUID().slice(0, 8)}:`;
const redisSkip = (await redisReachable()) ? undefined : `Redis is not reachable at ${REDIS_URL}: skipped`;

let natsServer: NatsServerHandle;
let nats: NatsConnection;
let redis: Redis | undefined;

before(async () => {
  natsServer = await startNatsServer();
  nats = await connect({ servers: natsServer.url });
  if (redisSkip === undefined) redis = new Redis(REDIS_URL);
});

after(async () => {
  await nats.close();
  await natsServer.dispose();
  if (redis !== undefined) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${RUN_PREFIX}*`, 'COUNT', 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    redis.disconnect();
  }
});

/** One shared store (a bucket, a key prefix) and limiters on it, each with its own config. */
interface Store {
  backend: Backend;
  bucket: string;
  prefix: string;
  limiter(limits: LimitsConfigInput, host: string): Promise<Limiter>;
  /** The raw record of a scope key (`agent.agent=3Asofia`), as the store holds it. */
  raw(key: string): Promise<Record<string, unknown>>;
  /** Write a record as a worker of an older version did: counts, no limits. */
  writeOld(key: string, rpmTat: number): Promise<void>;
  close(): Promise<void>;
}

async function openStore(backend: Backend, now: () => number): Promise<Store> {
  const scenario = randomUUID().slice(0, 8);
  const bucket = `recorded-${scenario}`;
  const prefix = `${RUN_PREFIX}${scenario}:`;
  const limiters: Limiter[] = [];
  const kv = backend === 'nats' ? await new Kvm(jetstream(nats)).create(bucket, { history: 1 }) : undefined;
  return {
    backend,
    bucket,
    prefix,
    async limiter(limits, host) {
      const config = limitsSchema.parse({
        ...limits,
        backend,
        nats_bucket: bucket,
        redis_url: REDIS_URL,
        redis_key_prefix: prefix,
      });
      const limiter = await createLimiter(config, { nats, now, host });
      limiters.push(limiter);
      return limiter;
    },
    async raw(key) {
      if (kv !== undefined) return (await kv.get(key))?.json<Record<string, unknown>>() ?? {};
      const hash = await (redis as Redis).hgetall(`${prefix}${key}`);
      return { ...hash, pttl: await (redis as Redis).pttl(`${prefix}${key}`) };
    },
    async writeOld(key, rpmTat) {
      if (kv !== undefined) await kv.put(key, JSON.stringify({ rpm_tat: rpmTat }));
      else await (redis as Redis).hset(`${prefix}${key}`, 'rpm_tat', String(rpmTat));
    },
    async close() {
      await Promise.all(limiters.map((limiter) => limiter.close()));
    },
  };
}

function admission(overrides: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    requestId: randomUUID(),
    agentId: 'agent:sofia',
    microdaoId: undefined,
    model: 'gpt-4.1-mini',
    estimatedPromptTokens: 10,
    maxCompletionTokens: 10,
    estimatedMaxCostUsd: 0.001,
    ...overrides,
  };
}

async function admitMany(limiter: Limiter, count: number, make: () => AdmissionRequest = admission) {
  let admitted = 0;
  let refused = 0;
  for (let index = 0; index < count; index += 1) {
    await limiter.admit(make()).then(
      () => (admitted += 1),
      () => (refused += 1),
    );
  }
  return { admitted, refused };
}

/** The parsed config a limiter gets from `limits` (for its fingerprint). */
function fingerprintOf(limits: LimitsConfigInput): string {
  return configFingerprint(limitsSchema.parse(limits));
}

for (const backend of ['nats', 'redis'] as const) {
  describe(`limits stored with the record, ${backend} backend`, {
    skip: backend === 'redis' ? redisSkip : undefined,
  }, () => {
    test("the issue's case: workers allow 5 a minute, the reader's config says 60 (or nothing): used of 5", async () => {
      const at = Date.now();
      let now = at;
      const store = await openStore(backend, () => now);
      try {
        const workerLimits = { default: { rpm: 5 } };
        const worker = await store.limiter(workerLimits, 'worker-1');
        assert.deepEqual(await admitMany(worker, 7), { admitted: 5, refused: 2 });
        const raw = await store.raw('agent.agent=3Asofia');
        if (backend === 'nats') {
          assert.deepEqual(raw.limits, { rpm: 5, config: fingerprintOf(workerLimits), host: 'worker-1', at });
        } else {
          assert.equal(raw.limits, JSON.stringify({ rpm: 5, config: fingerprintOf(workerLimits) }));
          assert.deepEqual([raw.limits_at, raw.limits_host], [String(at), 'worker-1']);
          assert.ok(Number(raw.pttl) > 0, 'the hash still expires');
        }

        const reader = await store.limiter({ default: { rpm: 60 } }, 'ops-laptop');
        const [agent] = await reader.standing('agent:sofia');
        assert.deepEqual(agent, {
          kind: 'agent',
          id: 'agent:sofia',
          dimensions: [{ dimension: 'rpm', window: 'minute', limit: 5, used: 5, remaining: 0, resetsInMs: 60_000 }],
          limitsFrom: 'workers',
          enforcedBy: { config: fingerprintOf(workerLimits), host: 'worker-1', since: at },
          local: { config: fingerprintOf({ default: { rpm: 60 } }), limits: { rpm: 60 }, differs: true },
        });
        // A reader whose config does not limit the agent at all still sees the workers' limit.
        const unlimited = await store.limiter({ default: { rpm: null } }, 'ops-laptop');
        const [same] = await unlimited.standing('agent:sofia');
        assert.deepEqual(
          [same?.limitsFrom, same?.dimensions[0]?.used, same?.dimensions[0]?.limit, same?.local.limits],
          ['workers', 5, 5, {}],
        );
        // Another worker with the same config counts without rewriting them: they are in force since `at`.
        const second = await store.limiter(workerLimits, 'worker-2');
        now = at + 12_000;
        await second.admit(admission());
        const [later] = await reader.standing('agent:sofia');
        assert.deepEqual(later?.enforcedBy, { config: fingerprintOf(workerLimits), host: 'worker-1', since: at });
        assert.equal(later?.dimensions[0]?.used, 5);
      } finally {
        await store.close();
      }
    });

    test('a config changed: the first refusal under the new limits writes them; the record follows the last writer', async () => {
      const at = Date.now();
      const store = await openStore(backend, () => at);
      try {
        const loose = await store.limiter({ default: { rpm: 60 } }, 'old-worker');
        const strict = await store.limiter({ default: { rpm: 5 } }, 'new-worker');
        const reader = await store.limiter({ default: { rpm: 60 } }, 'ops');
        assert.deepEqual(await admitMany(loose, 55), { admitted: 55, refused: 0 });
        assert.deepEqual((await reader.standing('agent:sofia'))[0]?.dimensions[0], {
          dimension: 'rpm',
          window: 'minute',
          limit: 60,
          used: 55,
          remaining: 5,
          resetsInMs: 55_000,
        });
        // 55 s of a 60/minute bucket is more than a 5/minute one holds: refused, and the record now says 5.
        await assert.rejects(strict.admit(admission()), { code: 'rate_limited', message: /over 5 requests\/minute/ });
        const [afterRefusal] = await reader.standing('agent:sofia');
        assert.deepEqual(
          [afterRefusal?.dimensions[0]?.used, afterRefusal?.dimensions[0]?.limit, afterRefusal?.enforcedBy?.host],
          [5, 5, 'new-worker'],
        );
        assert.equal(afterRefusal?.local.differs, true);
        // The refusal counted nothing: the old worker still has room for 4 (at 60/minute).
        assert.deepEqual(await admitMany(loose, 6), { admitted: 5, refused: 1 });
        const [back] = await reader.standing('agent:sofia');
        assert.deepEqual(
          [back?.dimensions[0]?.limit, back?.enforcedBy?.host, back?.local.differs],
          [60, 'old-worker', false],
        );
      } finally {
        await store.close();
      }
    });

    test('a scope limited by concurrency only: its limits stay with it while a lease is held', async () => {
      const at = Date.now();
      let now = at;
      const store = await openStore(backend, () => now);
      try {
        const worker = await store.limiter({ default: { rpm: null, concurrent: 2 } }, 'worker-1');
        const reservation = await worker.admit(admission({ leaseMs: 600_000 }));
        // Five minutes on (the hash's first expiry was the lease's end + a minute): another admission.
        now = at + 300_000;
        await worker.admit(admission({ leaseMs: 600_000 }));
        const [agent] = await worker.standing('agent:sofia');
        assert.deepEqual(
          [agent?.limitsFrom, agent?.enforcedBy?.since, agent?.dimensions[0]?.used, agent?.dimensions[0]?.limit],
          ['workers', at, 2, 2],
        );
        if (backend === 'redis') {
          const raw = await store.raw('agent.agent=3Asofia');
          // Redis keeps real time; the clock here is 5 minutes ahead: the second lease ends in 15 minutes.
          assert.ok(Number(raw.pttl) > 900_000 - 5_000, `the hash expires in ${raw.pttl} ms, before the lease`);
        }
        await reservation.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0 });
      } finally {
        await store.close();
      }
    });

    test('records written before limits were stored still load: measured against the local config, and said so', async () => {
      const at = Date.now();
      const store = await openStore(backend, () => at);
      try {
        const reader = await store.limiter({ default: { rpm: 10 } }, 'ops');
        await store.writeOld('agent.agent=3Aold', at + 30_000);
        const [old] = await reader.standing('agent:old');
        assert.deepEqual(
          [old?.limitsFrom, old?.fallback, old?.enforcedBy, old?.dimensions[0]?.used, old?.dimensions[0]?.limit],
          ['local', 'record_without_limits', undefined, 5, 10],
        );
        const [none] = await reader.standing('agent:nobody');
        assert.deepEqual([none?.limitsFrom, none?.fallback, none?.dimensions[0]?.used], ['local', 'no_record', 0]);
        // The next admission by a worker of this version adds its limits to the old record, counts kept.
        const worker = await store.limiter({ default: { rpm: 4 } }, 'worker-1');
        await worker.admit(admission({ agentId: 'agent:old' }));
        const [stamped] = await reader.standing('agent:old');
        assert.deepEqual(
          [stamped?.limitsFrom, stamped?.fallback, stamped?.dimensions[0]?.used, stamped?.dimensions[0]?.limit],
          ['workers', undefined, 3, 4],
        );
      } finally {
        await store.close();
      }
    });

    test('budgetNear: counted from the admission itself; an admission refused by a later scope counts nothing', async () => {
      const at = Date.now();
      const store = await openStore(backend, () => at);
      try {
        const limiter = await store.limiter(
          { default: { rpm: null, daily_usd: 0.01 }, microdaos: { 'microdao:7': { rpm: 1, monthly_usd: 1 } } },
          'worker-1',
        );
        assert.deepEqual(await admitMany(limiter, 11), { admitted: 10, refused: 1 });
        assert.deepEqual(limiter.counters().budgetNear, { 'agent:daily_usd': 2 });
        // agent:x would be at 95% of its day, but the microDAO's requests/minute (used by agent:y) refuses it.
        await limiter.admit(admission({ agentId: 'agent:y', microdaoId: 'microdao:7' }));
        await assert.rejects(
          limiter.admit(admission({ agentId: 'agent:x', microdaoId: 'microdao:7', estimatedMaxCostUsd: 0.0095 })),
          { code: 'rate_limited' },
        );
        assert.deepEqual(limiter.counters().budgetNear, { 'agent:daily_usd': 2 });
        assert.deepEqual(limiter.counters().refusedBy, { 'agent:daily_usd': 1, 'microdao:rpm': 1 });
        // Nothing of agent:x was kept (the charge rolled back, or never written).
        const [agentX] = await limiter.standing('agent:x');
        assert.equal(agentX?.dimensions.find((row) => row.dimension === 'daily_usd')?.used, 0);
      } finally {
        await store.close();
      }
    });
  });
}
