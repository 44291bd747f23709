/**
 * Limits switched on from config.yaml alone (no hooks handed in): the worker
 * builds its limiter from `limits:` and refuses past the limit with the
 * DESIGN.md error and a `rejected` usage event; with the `nats` backend, two
 * workers share one count.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, LlmProxyError, type LlmProxyClient } from '../src/client/index.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/fake-openai.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, waitForUsageEvents, TEST_API_KEY } from './helpers/worker.js';

let natsServer: NatsServerHandle;
let fake: FakeOpenAI;
let connection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  natsServer = await startNatsServer();
  fake = await startFakeOpenAI();
  connection = await connect({ servers: natsServer.url });
  client = await createClient({ connection, timeoutMs: 20_000 });
});

after(async () => {
  await client.close();
  await connection.close();
  await fake.close();
  await natsServer.dispose();
});

const request = (agent: string) => ({
  model: 'gpt-test',
  messages: [{ role: 'user' as const, content: 'hello' }],
  max_tokens: 20,
  metadata: { agent_id: agent },
});

test('limits from config: two workers on the nats backend admit exactly the per-agent rpm between them', async () => {
  const config = testConfig(
    { openai: fake.baseUrl },
    { limits: { backend: 'nats', nats_bucket: 'LIMITS_CFG_TEST', default: { rpm: 4 } } },
  );
  const env = { FAKE_OPENAI_KEY: TEST_API_KEY };
  const workers = [
    await startInProcessWorker({ natsUrl: natsServer.url, config, env }),
    await startInProcessWorker({ natsUrl: natsServer.url, config, env }),
  ];
  try {
    const outcomes = await Promise.allSettled(Array.from({ length: 12 }, () => client.chat(request('agent:limited'))));
    const served = outcomes.filter((outcome) => outcome.status === 'fulfilled');
    const refused = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [outcome.reason] : []));
    const why = JSON.stringify(refused.map((error) => [error?.code, error?.message]));
    assert.equal(served.length, 4, `served ${served.length}; refused: ${why}`);
    assert.equal(refused.length, 8, why);
    for (const error of refused) {
      assert.ok(error instanceof LlmProxyError);
      assert.equal(error.code, 'rate_limited');
      assert.equal(error.status, 429);
      assert.ok(error.retryAfterMs !== undefined && error.retryAfterMs > 0 && error.retryAfterMs <= 60_000);
      assert.match(error.message, /agent:limited/);
    }
    // Another agent has its own allowance.
    const other = await client.chat(request('agent:other'));
    assert.equal(other.content !== null, true);

    const events = await waitForUsageEvents(connection, 13);
    const rejected = events.filter((event) => event.status === 'rejected');
    assert.equal(rejected.length, 8);
    assert.ok(rejected.every((event) => event.error_code === 'rate_limited' && event.agent_id === 'agent:limited'));
    const stats = workers.map((worker) => worker.worker.stats().limits);
    assert.equal(
      stats.reduce((sum, entry) => sum + (entry?.refused ?? 0), 0),
      8,
    );
    assert.ok(stats.every((entry) => entry?.backend === 'nats'));
  } finally {
    await Promise.all(workers.map((worker) => worker.stop()));
  }
});
