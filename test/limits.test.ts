/**
 * Rate limits and budgets over real stores: a nats-server from
 * startNatsServer() and the Redis at 127.0.0.1:6379 (or REDIS_URL), with a
 * unique key prefix / bucket per scenario. Several limiter instances, each
 * with its own connection, stand for several workers.
 *
 * Clocks are frozen (deps.now) in the exactness scenarios: the point is the
 * concurrency, and a frozen clock keeps GCRA refill and windows out of it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Redis } from 'ioredis';
import { REDIS_URL, redisReachable } from './helpers/redis.js';
import { ProxyError } from '../src/contract/errors.js';
import { limitsSchema, type LimitsConfigInput } from '../src/config/limits-schema.js';
import { createLimiter, type AdmissionRequest, type Limiter, type Reservation } from '../src/limits/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { freePort } from './helpers/ports.js';

type Backend = 'memory' | 'nats' | 'redis';

const RUN_PREFIX = `llm-limits-test:${process.pid}-${randomUUID().slice(0, 8)}:`;

async function redisUnavailableReason(): Promise<string | undefined> {
  return (await redisReachable()) ? undefined : `Redis is not reachable at ${REDIS_URL}: redis scenarios skipped`;
}

const redisSkip = await redisUnavailableReason();
if (redisSkip !== undefined) process.stderr.write(`# ${redisSkip}\n`);

let natsServer: NatsServerHandle | undefined;

before(async () => {
  natsServer = await startNatsServer();
});

after(async () => {
  await natsServer?.dispose();
  if (redisSkip === undefined) {
    const cleaner = new Redis(REDIS_URL);
    let cursor = '0';
    do {
      const [next, keys] = await cleaner.scan(cursor, 'MATCH', `${RUN_PREFIX}*`, 'COUNT', 1000);
      if (keys.length > 0) await cleaner.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    cleaner.disconnect();
  }
});

interface Workers {
  limiters: Limiter[];
  close(): Promise<void>;
}

/** `count` limiters as `count` workers would have them: each its own NATS connection or Redis client. */
async function startWorkers(
  backend: Backend,
  count: number,
  limits: LimitsConfigInput,
  now?: () => number,
): Promise<Workers> {
  const scenario = randomUUID().slice(0, 8);
  const config = limitsSchema.parse({
    ...limits,
    backend,
    nats_bucket: `limits-${scenario}`,
    redis_url: REDIS_URL,
    redis_key_prefix: `${RUN_PREFIX}${scenario}:`,
  });
  const connections: NatsConnection[] = [];
  const limiters: Limiter[] = [];
  for (let index = 0; index < count; index += 1) {
    if (backend === 'nats') {
      const connection = await connect({ servers: (natsServer as NatsServerHandle).url });
      connections.push(connection);
      limiters.push(await createLimiter(config, { nats: connection, ...(now === undefined ? {} : { now }) }));
    } else {
      limiters.push(await createLimiter(config, now === undefined ? {} : { now }));
    }
  }
  return {
    limiters,
    async close() {
      await Promise.all(limiters.map((limiter) => limiter.close()));
      await Promise.all(connections.map((connection) => connection.close()));
    },
  };
}

function admission(overrides: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    requestId: randomUUID(),
    agentId: 'agent:sofia',
    microdaoId: undefined,
    model: 'gpt-4.1-mini',
    estimatedPromptTokens: 100,
    maxCompletionTokens: 200,
    estimatedMaxCostUsd: 0.001,
    ...overrides,
  };
}

/** `total` admissions at once, dealt round-robin over the limiters. */
async function admitAtOnce(
  limiters: Limiter[],
  total: number,
  make: (index: number) => AdmissionRequest = () => admission(),
): Promise<{ admitted: Reservation[]; refused: ProxyError[] }> {
  const results = await Promise.allSettled(
    Array.from({ length: total }, (_, index) => (limiters[index % limiters.length] as Limiter).admit(make(index))),
  );
  const admitted: Reservation[] = [];
  const refused: ProxyError[] = [];
  for (const result of results) {
    if (result.status === 'fulfilled') admitted.push(result.value);
    else {
      assert.ok(result.reason instanceof ProxyError, `not a ProxyError: ${String(result.reason)}`);
      refused.push(result.reason);
    }
  }
  return { admitted, refused };
}

function frozenClock(): { now: () => number; advance(ms: number): void } {
  let current = Date.now();
  return { now: () => current, advance: (ms) => (current += ms) };
}

function exactnessSuite(backend: Backend, workers: number): void {
  test(`requests/minute: ${workers} worker(s), limit 10, 50 at once → exactly 10; retry_after within the minute`, async () => {
    const clock = frozenClock();
    const { limiters, close } = await startWorkers(backend, workers, {}, clock.now);
    try {
      const { admitted, refused } = await admitAtOnce(limiters, 50);
      assert.equal(admitted.length, 10);
      assert.equal(refused.length, 40);
      for (const error of refused) {
        assert.equal(error.code, 'rate_limited');
        assert.equal(error.status, 429);
        assert.equal(error.message, 'agent:sofia is over 10 requests/minute');
        assert.ok(
          error.retryAfterMs !== undefined && error.retryAfterMs > 0 && error.retryAfterMs <= 60_000,
          `retry_after ${error.retryAfterMs}`,
        );
      }
      // GCRA: the next slot frees one emission interval (6 s) later, and not before.
      clock.advance(5_000);
      await assert.rejects(limiters[0]!.admit(admission()), { code: 'rate_limited' });
      clock.advance(1_000);
      await limiters[0]!.admit(admission());
      const standing = await limiters[limiters.length - 1]!.standing('agent:sofia');
      assert.deepEqual(
        standing.map((scope) => [
          scope.kind,
          scope.id,
          scope.dimensions.map((row) => [row.dimension, row.used, row.limit]),
        ]),
        [['agent', 'agent:sofia', [['rpm', 10, 10]]]],
      );
    } finally {
      await close();
    }
  });

  test(`tokens/minute: 50 reservations of 300 against 1000 → exactly 3; settled lower, the unused tokens come back`, async () => {
    const clock = frozenClock();
    const { limiters, close } = await startWorkers(backend, workers, { default: { rpm: null, tpm: 1_000 } }, clock.now);
    try {
      const first = await admitAtOnce(limiters, 50);
      assert.equal(first.admitted.length, 3);
      assert.ok(
        first.refused.every(
          (error) => error.code === 'rate_limited' && error.message.includes('over 1000 tokens/minute'),
        ),
      );
      assert.ok(first.refused.every((error) => (error.retryAfterMs ?? 0) > 0 && (error.retryAfterMs ?? 0) <= 60_000));
      // A stream that ended early: 40 prompt + 10 completion tokens used of 300 reserved.
      const outcomes = await Promise.all(
        first.admitted.map((reservation) => reservation.settle({ promptTokens: 40, completionTokens: 10, costUsd: 0 })),
      );
      assert.ok(outcomes.every((outcome) => outcome.stored));
      // 150 used: room for two more reservations of 300, not three.
      const second = await admitAtOnce(limiters, 50);
      assert.equal(second.admitted.length, 2);
      const [agent] = await limiters[0]!.standing('agent:sofia');
      assert.equal(agent?.dimensions[0]?.used, 750);
      // A request that can never fit is refused as such, not told to wait.
      await assert.rejects(limiters[0]!.admit(admission({ maxCompletionTokens: 5_000 })), (error: ProxyError) => {
        assert.equal(error.retryable, false);
        assert.match(error.message, /alone reserves 5100/);
        return true;
      });
    } finally {
      await close();
    }
  });

  test('daily budget: $0.01, 50 requests of up to $0.001 → exactly 10; settled at $0.0004 each, $0.006 comes back', async () => {
    const clock = frozenClock();
    const { limiters, close } = await startWorkers(
      backend,
      workers,
      { default: { rpm: null, daily_usd: 0.01 } },
      clock.now,
    );
    try {
      const first = await admitAtOnce(limiters, 50);
      assert.equal(first.admitted.length, 10);
      const endOfDay = Date.UTC(
        new Date(clock.now()).getUTCFullYear(),
        new Date(clock.now()).getUTCMonth(),
        new Date(clock.now()).getUTCDate() + 1,
      );
      for (const error of first.refused) {
        assert.equal(error.code, 'budget_exceeded');
        assert.equal(error.status, 402);
        assert.match(error.message, /^agent:sofia is over its daily budget of \$0\.01 \(\$0\.01 used today/);
        assert.ok((error.retryAfterMs ?? 0) > 0 && (error.retryAfterMs ?? 0) <= endOfDay - clock.now());
      }
      await Promise.all(
        first.admitted.map((reservation) =>
          reservation.settle({ promptTokens: 10, completionTokens: 10, costUsd: 0.0004 }),
        ),
      );
      const second = await admitAtOnce(limiters, 50);
      assert.equal(second.admitted.length, 6);
      // A cancelled request gives its whole reservation back.
      await second.admitted[0]!.cancel();
      await limiters[0]!.admit(admission());
      await assert.rejects(limiters[0]!.admit(admission()), { code: 'budget_exceeded' });
    } finally {
      await close();
    }
  });

  test('concurrent requests: limit 3 → exactly 3 of 50 in flight; settling one frees its slot', async () => {
    const { limiters, close } = await startWorkers(backend, workers, { default: { rpm: null, concurrent: 3 } });
    try {
      const first = await admitAtOnce(limiters, 50);
      assert.equal(first.admitted.length, 3);
      assert.ok(
        first.refused.every(
          (error) => error.message === 'agent:sofia is over 3 concurrent requests' && (error.retryAfterMs ?? 0) > 0,
        ),
      );
      await first.admitted[0]!.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0 });
      await first.admitted[0]!.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0 }); // idempotent
      const second = await admitAtOnce(limiters, 10);
      assert.equal(second.admitted.length, 1);
    } finally {
      await close();
    }
  });

  test('agent, microDAO and model together: every limit must admit, and a refusal charges nothing', async () => {
    const clock = frozenClock();
    const { limiters, close } = await startWorkers(
      backend,
      workers,
      {
        default: { rpm: 4 },
        microdaos: { 'microdao:7': { rpm: 6 } },
        models: { 'gpt-4.1-mini': { rpm: 100, tpm: 100_000 } },
      },
      clock.now,
    );
    try {
      const agents = ['agent:a', 'agent:b', 'agent:c'];
      const { admitted, refused } = await admitAtOnce(limiters, 45, (index) =>
        admission({ agentId: agents[index % 3], microdaoId: 'microdao:7' }),
      );
      assert.equal(admitted.length, 6);
      assert.ok(refused.every((error) => error.code === 'rate_limited'));
      // Whatever was charged and rolled back on the way, the counts add up to what was admitted.
      const agentUse = await Promise.all(
        agents.map(async (agentId) => (await limiters[0]!.standing(agentId))[0]?.dimensions[0]?.used ?? 0),
      );
      assert.equal(
        agentUse.reduce((sum, used) => sum + used, 0),
        6,
      );
      const [, microdao, model] = await limiters[0]!.standing('agent:a', {
        microdaoId: 'microdao:7',
        model: 'gpt-4.1-mini',
      });
      assert.equal(microdao?.dimensions[0]?.used, 6);
      assert.deepEqual(
        model?.dimensions.map((row) => row.used),
        [6, 6 * 300],
      );
      // An agent outside the microDAO is limited only by its own rate and the model's.
      const outsider = await admitAtOnce(limiters, 10, () => admission({ agentId: 'agent:d' }));
      assert.equal(outsider.admitted.length, 4);
    } finally {
      await close();
    }
  });
  test('refused by several limits at once: the budget is the refusal the client hears', async () => {
    const clock = frozenClock();
    const { limiters, close } = await startWorkers(
      backend,
      workers,
      { default: { rpm: 1 }, microdaos: { 'microdao:7': { daily_usd: 0.001 } } },
      clock.now,
    );
    try {
      await limiters[0]!.admit(admission({ microdaoId: 'microdao:7' }));
      await assert.rejects(
        limiters[workers - 1]!.admit(admission({ microdaoId: 'microdao:7' })),
        (error: ProxyError) => {
          assert.equal(error.code, 'budget_exceeded');
          assert.match(error.message, /^microDAO microdao:7 is over its daily budget of \$0\.001/);
          return true;
        },
      );
    } finally {
      await close();
    }
  });
}

describe('limits: memory backend (one worker)', () => {
  test("the default backend is nats: the seed's 10 requests a minute hold across workers", () => {
    assert.equal(limitsSchema.parse({}).backend, 'nats');
  });

  exactnessSuite('memory', 1);

  test('limits.enabled: false admits everything and counts nothing', async () => {
    const limiter = await createLimiter(limitsSchema.parse({ enabled: false }));
    const { admitted } = await admitAtOnce([limiter], 50);
    assert.equal(admitted.length, 50);
    assert.equal(limiter.backend, 'disabled');
    assert.deepEqual(await limiter.standing('agent:sofia'), []);
  });

  test('counters: admitted, refused, and refused by scope kind and dimension', async () => {
    const limiter = await createLimiter(limitsSchema.parse({ backend: 'memory', default: { rpm: 2 } }));
    await admitAtOnce([limiter], 5);
    assert.deepEqual(limiter.counters(), {
      admitted: 2,
      refused: 3,
      storeErrors: 0,
      failedOpen: 0,
      failedClosed: 0,
      conflicts: 0,
      contended: 0,
      refusedBy: { 'agent:rpm': 3 },
      budgetNear: {},
    });
  });

  test('a limiter running past midnight UTC starts the new day and, on the 1st, the new month', async () => {
    let now = Date.UTC(2026, 10, 30, 23, 59, 58);
    const limiter = await createLimiter(
      limitsSchema.parse({ backend: 'memory', default: { rpm: null, daily_usd: 0.002, monthly_usd: 0.003 } }),
      { now: () => now },
    );
    const spend = () => limiter.admit(admission({ estimatedMaxCostUsd: 0.001 }));
    await spend();
    await spend();
    await assert.rejects(spend(), { code: 'budget_exceeded', message: /day/ });
    now = Date.UTC(2026, 11, 1, 0, 0, 1); // the next day, and the next month
    await spend();
    await spend();
    await assert.rejects(spend(), { code: 'budget_exceeded', message: /day/ });
    now = Date.UTC(2026, 11, 2, 0, 0, 1);
    await spend();
    await assert.rejects(spend(), { code: 'budget_exceeded', message: /month/ });
  });

  test('agents with their own limits keep them when they come back (the scopes are worked out once each)', async () => {
    const limiter = await createLimiter(
      limitsSchema.parse({ backend: 'memory', default: { rpm: 1 }, agents: { 'agent:batch': { rpm: 3 } } }),
    );
    const results = [];
    for (const agentId of ['agent:batch', 'agent:sofia', 'agent:batch', 'agent:sofia', 'agent:batch', 'agent:batch']) {
      results.push(
        await limiter.admit(admission({ agentId })).then(
          () => 'ok',
          (error: ProxyError) => error.code,
        ),
      );
    }
    assert.deepEqual(results, ['ok', 'ok', 'ok', 'rate_limited', 'ok', 'rate_limited']);
  });
});

describe('limits: nats backend (JetStream KV, 4 workers)', () => {
  exactnessSuite('nats', 4);

  test('agent ids with ":" and "." are stored under encoded keys', async () => {
    const { limiters, close } = await startWorkers('nats', 1, { default: { rpm: 1 } });
    try {
      await limiters[0]!.admit(admission({ agentId: 'agent:a.b c' }));
      await assert.rejects(limiters[0]!.admit(admission({ agentId: 'agent:a.b c' })), {
        message: 'agent:a.b c is over 1 requests/minute',
      });
      await limiters[0]!.admit(admission({ agentId: 'agent:a=2Eb c' }));
    } finally {
      await close();
    }
  });

  test('workers started together on a fresh server all open the bucket (a guard: the race did not show here)', async () => {
    const server = await startNatsServer();
    const connections = await Promise.all(Array.from({ length: 6 }, () => connect({ servers: server.url })));
    try {
      const config = limitsSchema.parse({ backend: 'nats', nats_bucket: 'together', default: { rpm: 3 } });
      const limiters = await Promise.all(connections.map((nats) => createLimiter(config, { nats })));
      const { admitted, refused } = await admitAtOnce(limiters, 12);
      assert.deepEqual([admitted.length, refused.length], [3, 9]);
    } finally {
      await Promise.all(connections.map((connection) => connection.close()));
      await server.dispose();
    }
  });

  test('no JetStream on the server: opening the bucket fails with the bucket and the reason named', async () => {
    const server = await startNatsServer({ jetstream: false });
    const connection = await connect({ servers: server.url });
    try {
      const config = limitsSchema.parse({ backend: 'nats', nats_bucket: 'nowhere', store_timeout_ms: 300 });
      const started = Date.now();
      await assert.rejects(createLimiter(config, { nats: connection }), (error: Error) => {
        assert.equal(error.name, 'LimitStoreError');
        assert.match(error.message, /^cannot open the NATS KV bucket "nowhere": \S/);
        assert.ok(error.cause instanceof Error);
        return true;
      });
      // Three tries, 200 and 400 ms apart, before the worker is told.
      assert.ok(Date.now() - started >= 550, `gave up after ${Date.now() - started} ms, without retrying`);
    } finally {
      await connection.close();
      await server.dispose();
    }
  });

  test('store down: rate limits fail open, budgets fail closed; both counted', async () => {
    const server = await startNatsServer();
    const connection = await connect({ servers: server.url, reconnectTimeWait: 100 });
    try {
      const rateOnly = await createLimiter(
        limitsSchema.parse({ backend: 'nats', nats_bucket: 'down', store_timeout_ms: 500 }),
        { nats: connection },
      );
      const withBudget = await createLimiter(
        limitsSchema.parse({ backend: 'nats', nats_bucket: 'down', store_timeout_ms: 500, default: { daily_usd: 1 } }),
        { nats: connection },
      );
      await rateOnly.admit(admission());
      await server.stop();
      const reservation = await rateOnly.admit(admission());
      assert.equal(reservation.failedOpen, true);
      assert.ok(reservation.storeError instanceof Error);
      assert.deepEqual((await reservation.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0 })).stored, true);
      assert.deepEqual([rateOnly.counters().storeErrors, rateOnly.counters().failedOpen], [1, 1]);
      await assert.rejects(withBudget.admit(admission()), (error: ProxyError) => {
        assert.equal(error.code, 'internal');
        assert.equal(error.retryable, true);
        assert.match(error.message, /limits store \(nats\) is unreachable/);
        return true;
      });
      assert.deepEqual([withBudget.counters().storeErrors, withBudget.counters().failedClosed], [1, 1]);
    } finally {
      await connection.close();
      await server.dispose();
    }
  });
});

describe('limits: redis backend (one Lua script per admission, 4 workers)', { skip: redisSkip }, () => {
  exactnessSuite('redis', 4);

  test('store down (a closed port): rate limits fail open, budgets fail closed; a fail_closed rate policy refuses too', async () => {
    const closedPort = await freePort();
    const base = { backend: 'redis', redis_url: `redis://127.0.0.1:${closedPort}`, store_timeout_ms: 300 } as const;
    const rateOnly = await createLimiter(limitsSchema.parse(base));
    const withBudget = await createLimiter(limitsSchema.parse({ ...base, default: { monthly_usd: 5 } }));
    const strict = await createLimiter(limitsSchema.parse({ ...base, on_store_error: { rate: 'fail_closed' } }));
    try {
      const reservation = await rateOnly.admit(admission());
      assert.equal(reservation.failedOpen, true);
      assert.equal(rateOnly.counters().failedOpen, 1);
      await assert.rejects(withBudget.admit(admission()), { code: 'internal', retryable: true, retryAfterMs: 1_000 });
      await assert.rejects(strict.admit(admission()), { code: 'internal' });
      assert.equal(withBudget.counters().failedClosed + strict.counters().failedClosed, 2);
    } finally {
      await Promise.all([rateOnly.close(), withBudget.close(), strict.close()]);
    }
  });

  test('a settle that cannot reach the store says so and is counted (the reservation stays charged)', async () => {
    const client = new Redis(REDIS_URL, { enableOfflineQueue: false, maxRetriesPerRequest: 0 });
    const limiter = await createLimiter(
      limitsSchema.parse({
        backend: 'redis',
        redis_key_prefix: `${RUN_PREFIX}settle:`,
        default: { rpm: null, concurrent: 1 },
      }),
      { redis: client },
    );
    try {
      const reservation = await limiter.admit(admission());
      client.disconnect();
      const outcome = await reservation.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0 });
      assert.equal(outcome.stored, false);
      assert.ok(outcome.error instanceof Error);
      assert.equal(limiter.counters().storeErrors, 1);
    } finally {
      await limiter.close();
      client.disconnect();
    }
  });
});

describe('limits: cost per admission (reported, not asserted)', () => {
  const backends: Backend[] = redisSkip === undefined ? ['memory', 'nats', 'redis'] : ['memory', 'nats'];
  for (const backend of backends) {
    test(`${backend}: admit + settle, distinct agents`, async (context) => {
      // Reported, not asserted: a loaded machine may take longer than the default 2 s for one of 2000 store calls.
      const limits = {
        default: { rpm: 1_000, tpm: 1_000_000, concurrent: 10, daily_usd: 100 },
        store_timeout_ms: 10_000,
      };
      const { limiters, close } = await startWorkers(backend, 4, limits);
      try {
        const sequential = 200;
        await limiters[0]!.admit(admission({ agentId: 'agent:warm-up' }));
        let started = performance.now();
        for (let index = 0; index < sequential; index += 1) {
          const reservation = await limiters[0]!.admit(admission({ agentId: `agent:seq-${index}` }));
          await reservation.settle({ promptTokens: 100, completionTokens: 20, costUsd: 0.0002 });
        }
        const sequentialMs = (performance.now() - started) / sequential;
        const concurrent = 2_000;
        started = performance.now();
        await Promise.all(
          Array.from({ length: concurrent }, async (_, index) => {
            const reservation = await limiters[index % 4]!.admit(admission({ agentId: `agent:par-${index}` }));
            await reservation.settle({ promptTokens: 100, completionTokens: 20, costUsd: 0.0002 });
          }),
        );
        const perSecond = concurrent / ((performance.now() - started) / 1_000);
        // rpm only (the seed's default): admission alone, settle has nothing to write.
        const { limiters: rpmOnly, close: closeRpmOnly } = await startWorkers(backend, 1, {});
        started = performance.now();
        for (let index = 0; index < sequential; index += 1) {
          const reservation = await rpmOnly[0]!.admit(admission({ agentId: `agent:rpm-${index}` }));
          await reservation.settle({ promptTokens: 100, completionTokens: 20, costUsd: 0.0002 });
        }
        const rpmOnlyMs = (performance.now() - started) / sequential;
        await closeRpmOnly();
        context.diagnostic(
          `${backend}: all five limits: ${(sequentialMs * 1000).toFixed(0)} µs per admit+settle one at a time, ` +
            `${perSecond.toFixed(0)} admit+settle/s with 4 workers × ${concurrent} concurrent over distinct agents; ` +
            `rpm only: ${(rpmOnlyMs * 1000).toFixed(0)} µs per admission`,
        );
        assert.ok(Number.isFinite(sequentialMs));
      } finally {
        await close();
      }
    });
  }
});
