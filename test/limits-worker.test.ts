/**
 * The issue's proof end to end: 4 real workers on one nats-server, each with
 * its own NATS connection and limiter (backend nats, or redis), plugged in
 * through the worker's hooks with createLimitHooks; clients send 50 requests
 * at once through the client library; a fake OpenAI answers.
 *
 * The limiters' clock is frozen so that GCRA refill during a slow run on a
 * loaded machine cannot let an extra request in; the workers keep real time.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Redis } from 'ioredis';
import { REDIS_URL, redisReachable } from './helpers/redis.js';
import {
  createClient,
  LlmProxyError,
  type ChatReply,
  type ChatRequest,
  type LlmProxyClient,
} from '../src/client/index.js';
import { resolveConfig, type ConfigInput } from '../src/config/index.js';
import { createLimitHooks, createLimiter, maxCostUsd, type Limiter } from '../src/limits/index.js';
import { estimatePromptTokens } from '../src/usage/tokens.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/fake-openai.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import {
  startInProcessWorker,
  testConfig,
  waitForUsageEvents,
  TEST_API_KEY,
  type InProcessWorker,
} from './helpers/worker.js';

const REDIS_PREFIX = `llm-limits-worker-test:${randomUUID().slice(0, 8)}:`;

const redisSkip = (await redisReachable())
  ? undefined
  : `Redis is not reachable at ${REDIS_URL}: redis scenario skipped`;

/** Slow enough that the 50 requests overlap in the workers. */
const SMALL_REPLY = {
  kind: 'ok',
  content: 'fine',
  delayMs: 50,
  usage: { promptTokens: 12, completionTokens: 5 },
} as const;

let natsServer: NatsServerHandle;
let fake: FakeOpenAI;
let clientConnection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  natsServer = await startNatsServer();
  fake = await startFakeOpenAI();
  fake.setDefault(SMALL_REPLY);
  clientConnection = await connect({ servers: natsServer.url });
  client = await createClient({ connection: clientConnection, timeoutMs: 30_000 });
});

after(async () => {
  await client.close();
  await clientConnection.close();
  await fake.close();
  await natsServer.dispose();
  if (redisSkip === undefined) {
    const cleaner = new Redis(REDIS_URL);
    const keys = await cleaner.keys(`${REDIS_PREFIX}*`);
    if (keys.length > 0) await cleaner.del(...keys);
    cleaner.disconnect();
  }
});

interface Cluster {
  limiters: Limiter[];
  stop(): Promise<void>;
}

async function startCluster(limits: NonNullable<ConfigInput['limits']>, now: () => number): Promise<Cluster> {
  const input = testConfig({ openai: fake.baseUrl }, { limits, cache: { enabled: false } });
  const config = resolveConfig(input, 'test config', { FAKE_OPENAI_KEY: TEST_API_KEY });
  const connections: NatsConnection[] = [];
  const limiters: Limiter[] = [];
  const workers: InProcessWorker[] = [];
  for (let index = 0; index < 4; index += 1) {
    const connection = await connect({ servers: natsServer.url });
    connections.push(connection);
    const limiter = await createLimiter(config.limits, { nats: connection, now });
    limiters.push(limiter);
    // The lines the worker needs: one limiter per worker, its hooks handed to startWorker.
    const hooks = createLimitHooks(limiter, { models: config.models, limits: config.limits, estimatePromptTokens });
    workers.push(await startInProcessWorker({ natsUrl: natsServer.url, config: input, connection, hooks }));
  }
  return {
    limiters,
    async stop() {
      await Promise.all(workers.map((worker) => worker.stop()));
      await Promise.all(limiters.map((limiter) => limiter.close()));
      await Promise.all(connections.map((connection) => connection.close()));
    },
  };
}

function chatRequest(agentId: string, overrides: Partial<ChatRequest> = {}): ChatRequest {
  return {
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'Hello!' }],
    max_tokens: 100,
    metadata: { agent_id: agentId, microdao_id: 'microdao:7' },
    ...overrides,
  };
}

async function settleAll<T>(calls: Array<Promise<T>>): Promise<{ ok: T[]; errors: LlmProxyError[] }> {
  const results = await Promise.allSettled(calls);
  const ok: T[] = [];
  const errors: LlmProxyError[] = [];
  for (const result of results) {
    if (result.status === 'fulfilled') ok.push(result.value);
    else {
      assert.ok(result.reason instanceof LlmProxyError, `not an LlmProxyError: ${String(result.reason)}`);
      errors.push(result.reason);
    }
  }
  return { ok, errors };
}

/** The usage events of one agent, once `count` are in LLM_USAGE (published after the settle hook ran). */
async function eventsOf(agentId: string, count: number): Promise<UsageEvent[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const events = (await waitForUsageEvents(clientConnection, 1, { timeoutMs: 20_000 })).filter(
      (event) => event.agent_id === agentId,
    );
    if (events.length >= count || Date.now() > deadline) return events;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function frozen(): () => number {
  const at = Date.now();
  return () => at;
}

for (const backend of ['nats', 'redis'] as const) {
  describe(`limits in 4 workers, ${backend} backend`, { skip: backend === 'redis' ? redisSkip : undefined }, () => {
    const store =
      backend === 'nats'
        ? { backend, nats_bucket: `worker-${randomUUID().slice(0, 8)}` }
        : { backend, redis_url: REDIS_URL, redis_key_prefix: REDIS_PREFIX };

    test('10 requests a minute, 50 at once → exactly 10 served; 40 refused rate_limited with retry_after_ms and a rejected usage event', async () => {
      const cluster = await startCluster({ ...store }, frozen());
      const agentId = `agent:sofia-${backend}`;
      try {
        const { ok, errors } = await settleAll(Array.from({ length: 50 }, () => client.chat(chatRequest(agentId))));
        assert.equal(ok.length, 10);
        assert.equal(errors.length, 40);
        for (const error of errors) {
          assert.equal(error.code, 'rate_limited');
          assert.equal(error.message, `${agentId} is over 10 requests/minute`);
          assert.ok(
            error.retryAfterMs !== undefined && error.retryAfterMs > 0 && error.retryAfterMs <= 60_000,
            `retry_after_ms ${error.retryAfterMs}`,
          );
        }
        const events = await eventsOf(agentId, 50);
        assert.equal(
          events.filter((event) => event.status === 'rejected' && event.error_code === 'rate_limited').length,
          40,
        );
        assert.equal(events.filter((event) => event.status === 'ok').length, 10);
      } finally {
        await cluster.stop();
      }
    });

    test('tokens per minute with streaming: reservations from max_tokens stop the overshoot; settled streams give back the unused', async () => {
      const tpm = 1_000;
      const sample = chatRequest('agent:any', { max_tokens: 200 });
      const promptTokens = estimatePromptTokens(sample);
      const reserved = promptTokens + 200;
      const cluster = await startCluster({ ...store, default: { rpm: null, tpm } }, frozen());
      try {
        // Streams that use all they reserved: no refund can blur the count.
        fake.setDefault({ kind: 'ok', content: 'fine', delayMs: 50, usage: { promptTokens, completionTokens: 200 } });
        const greedy = chatRequest(`agent:greedy-${backend}`, { max_tokens: 200 });
        const first = await settleAll<ChatReply>(Array.from({ length: 50 }, () => client.stream(greedy).final));
        assert.equal(first.ok.length, Math.floor(tpm / reserved));
        assert.ok(
          first.errors.every(
            (error) => error.code === 'rate_limited' && error.message.includes(`over ${tpm} tokens/minute`),
          ),
        );

        // Streams that end early (12 + 5 tokens): once settled, the rest of each reservation is back.
        fake.setDefault(SMALL_REPLY);
        const thrifty = chatRequest(`agent:thrifty-${backend}`, { max_tokens: 200 });
        const capacity = Math.floor(tpm / reserved);
        const early = await settleAll<ChatReply>(Array.from({ length: capacity }, () => client.stream(thrifty).final));
        assert.equal(early.ok.length, capacity);
        await eventsOf(thrifty.metadata!.agent_id!, capacity);
        const [agent] = await cluster.limiters[3]!.standing(thrifty.metadata!.agent_id!);
        assert.equal(agent?.dimensions[0]?.used, capacity * 17);
        fake.setDefault({ kind: 'ok', content: 'fine', delayMs: 50, usage: { promptTokens, completionTokens: 200 } });
        const second = await settleAll<ChatReply>(Array.from({ length: 50 }, () => client.stream(thrifty).final));
        assert.equal(second.ok.length, Math.floor((tpm - capacity * 17) / reserved));
      } finally {
        fake.setDefault(SMALL_REPLY);
        await cluster.stop();
      }
    });

    test('daily budget in USD: exactly the requests whose reservations fit are served, then budget_exceeded', async () => {
      const config = resolveConfig(testConfig({ openai: fake.baseUrl }), 'test', { FAKE_OPENAI_KEY: TEST_API_KEY });
      const request = chatRequest(`agent:spender-${backend}`);
      const promptTokens = estimatePromptTokens(request);
      const maxCost = maxCostUsd(config.models, 'gpt-test', promptTokens, 100);
      const budget = 0.5;
      const cluster = await startCluster({ ...store, default: { rpm: null, daily_usd: budget } }, frozen());
      try {
        // Every reply costs exactly its reservation, so settling early frees nothing and the count is exact.
        fake.setDefault({ kind: 'ok', content: 'fine', delayMs: 50, usage: { promptTokens, completionTokens: 100 } });
        const { ok, errors } = await settleAll(Array.from({ length: 50 }, () => client.chat(request)));
        assert.equal(ok.length, Math.floor(budget / maxCost));
        assert.equal(ok.length + errors.length, 50);
        for (const error of errors) {
          assert.equal(error.code, 'budget_exceeded');
          assert.equal(error.status, 402);
          assert.match(error.message, /is over its daily budget of \$0\.50/);
        }
        const spent = ok.reduce((sum, reply) => sum + reply.cost_usd, 0);
        assert.ok(spent <= budget, `spent ${spent}`);
      } finally {
        fake.setDefault(SMALL_REPLY);
        await cluster.stop();
      }
    });
  });
}
