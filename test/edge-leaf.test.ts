import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import type { ConfigInput } from '../src/config/index.js';
import { startFakeOllama, startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { startLeafCluster, type LeafClusterHandle } from './helpers/leaf-cluster.js';
import { startInProcessWorker, testConfig, waitForUsageEvents, type InProcessWorker } from './helpers/worker.js';

/**
 * Models that live on one node (issue 19), on loopback: a hub nats-server (JetStream) and a leaf
 * nats-server joined to it as a NATS leaf node (deploy/nats/hub.conf, leaf.conf). The hub's worker
 * serves `gpt-test` and `local-test` (a cloud copy); the leaf's worker serves `local-test` and
 * `edge-only` from the node's own Ollama. Usage events and limits live in the hub's JetStream.
 */

const ROAMER = 'agent:roamer';
const limits: ConfigInput['limits'] = {
  enabled: true,
  backend: 'nats',
  default: { rpm: null },
  // One request every 15 s after a burst of 4: the burst below takes far less than that.
  agents: { [ROAMER]: { rpm: 4 } },
};

let cluster: LeafClusterHandle;
let openai: FakeProvider;
let hubOllama: FakeProvider;
let edgeOllama: FakeProvider;
let hubWorker: InProcessWorker;
let edgeWorker: InProcessWorker;
let hubAgent: LlmProxyClient;
let edgeAgent: LlmProxyClient;
let hubRaw: NatsConnection;
let edgeRaw: NatsConnection;

before(async () => {
  cluster = await startLeafCluster();
  openai = await startFakeOpenAI();
  hubOllama = await startFakeOllama();
  edgeOllama = await startFakeOllama();
  const hubConfig = testConfig({ openai: openai.baseUrl, ollama: hubOllama.baseUrl }, {
    limits,
    cache: { enabled: false },
    worker: { node: 'hub-1' },
  } as Partial<ConfigInput>);
  const edgeConfig = testConfig({ ollama: edgeOllama.baseUrl }, {
    limits,
    cache: { enabled: false },
    worker: { node: 'edge-1' },
    models: { 'edge-only': { provider: 'local', physical_name: 'qwen2.5:7b' } },
  } as Partial<ConfigInput>);
  hubWorker = await startInProcessWorker({ natsUrl: cluster.hubUrl, config: hubConfig });
  edgeWorker = await startInProcessWorker({ natsUrl: cluster.leafUrl, config: edgeConfig });
  hubRaw = await connect({ servers: cluster.hubUrl });
  edgeRaw = await connect({ servers: cluster.leafUrl, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  hubAgent = await createClient({ connection: hubRaw, timeoutMs: 10_000, idleTimeoutMs: 5_000 });
  edgeAgent = await createClient({ connection: edgeRaw, timeoutMs: 10_000, idleTimeoutMs: 5_000 });
  // The edge's model subjects have crossed the link.
  await cluster.waitForLinkInterest('hub', 'llm.proxy.model.edge-only');
});

after(async () => {
  await hubAgent?.close();
  await edgeAgent?.close();
  await hubRaw?.close();
  await edgeRaw?.close();
  await edgeWorker?.stop();
  await hubWorker?.stop();
  for (const fake of [openai, hubOllama, edgeOllama]) await fake?.close();
  await cluster?.close();
});

function body(model: string, requestId: string, agentId = 'agent:sofia'): ChatRequest {
  return { model, messages: [{ role: 'user', content: 'hi' }], request_id: requestId, metadata: { agent_id: agentId } };
}

async function seed(connection: NatsConnection, request: ChatRequest) {
  const reply = await connection.request('llm.proxy.request', JSON.stringify(request), { timeout: 10_000 });
  return reply.json<{ provider?: string; model_resolved?: string; error?: { code: string } }>();
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test("a model only the leaf has is served to the hub's agents, and counted in the hub's JetStream with its node", async () => {
  const typed = await hubAgent.chat(body('edge-only', 'hub-asks-edge-0'));
  assert.equal(typed.model_resolved, 'qwen2.5:7b');
  const bySeed = await seed(hubRaw, body('edge-only', 'hub-asks-edge-1'));
  assert.equal(bySeed.model_resolved, 'qwen2.5:7b', JSON.stringify(bySeed));
  const stream = await hubAgent.stream({ ...body('edge-only', 'hub-asks-edge-2'), stream: true }).final;
  assert.equal(stream.model_resolved, 'qwen2.5:7b');
  const events = await waitForUsageEvents(hubRaw, 1, { timeoutMs: 10_000 });
  await until(async () => {
    const all = await waitForUsageEvents(hubRaw, 1);
    return all.filter((event) => event.request_id.startsWith('hub-asks-edge-')).length >= 3;
  }, 'the three events');
  const mine = (await waitForUsageEvents(hubRaw, events.length)).filter((event) =>
    event.request_id.startsWith('hub-asks-edge-'),
  );
  assert.equal(mine.length, 3, 'one event each');
  for (const event of mine) {
    assert.equal(event.worker_id, edgeWorker.worker.id);
    assert.equal((event as { node?: string }).node, 'edge-1');
  }
});

test("the leaf's own agents are served on the leaf (the hub's worker never sees them); the hub's on the hub", async () => {
  const hubBefore = hubWorker.worker.stats().requests;
  const edgeBefore = edgeWorker.worker.stats().requests;
  for (let index = 0; index < 10; index += 1) {
    assert.equal((await edgeAgent.chat(body('local-test', `edge-local-${index}`))).provider, 'local');
    assert.equal((await seed(edgeRaw, body('local-test', `edge-seed-${index}`))).provider, 'local');
  }
  assert.equal(hubWorker.worker.stats().requests, hubBefore, "the hub's worker saw none of the leaf's requests");
  assert.equal(edgeWorker.worker.stats().requests, edgeBefore + 20);
  assert.equal(edgeOllama.chatRequests.length >= 20, true);

  const hubOllamaBefore = hubOllama.chatRequests.length;
  const edgeAfter = edgeWorker.worker.stats().requests;
  for (let index = 0; index < 10; index += 1)
    assert.equal((await hubAgent.chat(body('local-test', `hub-local-${index}`))).provider, 'local');
  assert.equal(hubOllama.chatRequests.length, hubOllamaBefore + 10, "the hub's own copy served the hub's agents");
  assert.equal(edgeWorker.worker.stats().requests, edgeAfter);
});

test('limits stay exact across the hub and the leaf (one KV on the hub)', async () => {
  const calls = Array.from({ length: 16 }, (_, index) =>
    index % 2 === 0
      ? hubAgent.chat(body('gpt-test', `roam-${index}`, ROAMER))
      : edgeAgent.chat(body('local-test', `roam-${index}`, ROAMER)),
  );
  const results = await Promise.allSettled(calls);
  const served = results.filter((result) => result.status === 'fulfilled').length;
  const refused = results.filter(
    (result) => result.status === 'rejected' && (result.reason as LlmProxyError).code === 'rate_limited',
  ).length;
  assert.equal(served, 4, 'rpm 4 for the agent, wherever it asks');
  assert.equal(refused, 12);
});

test('the leaf stops: its model fails at once from the hub; it comes back with the leaf', async () => {
  await cluster.stopLeaf();
  await cluster.waitForLinkInterest('hub', 'llm.proxy.model.edge-only', false);
  const started = performance.now();
  await assert.rejects(hubAgent.chat(body('edge-only', 'gone-typed')), (error: unknown) => {
    assert.ok(error instanceof LlmProxyError);
    assert.equal(error.code, 'no_provider_available');
    return true;
  });
  assert.equal((await seed(hubRaw, body('edge-only', 'gone-seed'))).error?.code, 'no_provider_available');
  assert.ok(performance.now() - started < 2_000, `failed at once (${performance.now() - started} ms)`);
  // What the hub has itself is still served.
  assert.equal((await hubAgent.chat(body('local-test', 'hub-still'))).provider, 'local');

  await cluster.startLeaf();
  await until(async () => {
    try {
      return (await hubAgent.chat(body('edge-only', `back-${Date.now()}`))).model_resolved === 'qwen2.5:7b';
    } catch {
      return false;
    }
  }, 'the edge model to be back');
});

test('the link drops: the leaf keeps serving its agents, and its held events reach the hub once when it returns', async () => {
  await cluster.waitForLink();
  await until(async () => {
    try {
      await edgeAgent.chat(body('local-test', `warm-${Date.now()}`));
      return true;
    } catch {
      return false;
    }
  }, 'the edge agent to be served');
  await cluster.dropLink('reset');
  const ids = Array.from({ length: 8 }, (_, index) => `offline-${index}`);
  for (const id of ids) assert.equal((await edgeAgent.chat(body('local-test', id))).provider, 'local');
  assert.ok(edgeWorker.worker.stats().usage_events.pending > 0, 'events are held while the hub is out of reach');
  await assert.rejects(hubAgent.chat(body('edge-only', 'cut-off')), (error: unknown) => {
    return error instanceof LlmProxyError && error.code === 'no_provider_available';
  });

  await cluster.restoreLink();
  await until(
    async () => edgeWorker.worker.stats().usage_events.pending === 0,
    'the held events to be published',
    30_000,
  );
  const all = await waitForUsageEvents(hubRaw, 1);
  for (const id of ids) {
    const mine = all.filter((event) => event.request_id === id);
    assert.equal(mine.length, 1, `exactly one event for ${id}`);
    assert.equal((mine[0] as { node?: string }).node, 'edge-1');
  }
});
