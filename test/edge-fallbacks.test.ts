import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { stringify } from 'yaml';
import { LlmProxyError, type ChatRequest, type LlmProxyClient, type StreamChunk } from '../src/client/index.js';
import type { ConfigInput } from '../src/config/index.js';
import { resolveConfig } from '../src/config/load.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { checkSystemHealth } from '../src/health/system-health.js';
import type { FakeProvider } from './fakes/index.js';
import { runCli } from './helpers/cli-process.js';
import { startTwoNodes, type TwoNodes } from './helpers/two-nodes.js';
import { testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * Fallbacks across nodes (issue 19): a node's model may name, as its fallback, a model its own config
 * does not define (one of another node). Workers tell each other their models' fallbacks in their
 * hellos; when no worker serves a model any more, a request for it is passed on to its fallbacks in
 * order, each once, and answered (and counted, once) by the workers of the first one that has any.
 */

let bus: TwoNodes;
let openai: FakeProvider;
let cloud: InProcessWorker;
let edge: InProcessWorker | undefined;
let raw: NatsConnection;
let client: LlmProxyClient;
let events: UsageEvent[];

// One agent with 3 requests a minute, in the KV both workers share: a request counted twice would show.
const FB_AGENT = 'agent:fb';
const limits: ConfigInput['limits'] = {
  enabled: true,
  backend: 'nats',
  default: { rpm: null },
  agents: { [FB_AGENT]: { rpm: 3 } },
};

// The cloud's own model whose only deployment is down; its fallback is the edge's model.
const cloudConfig = (openaiUrl: string) =>
  testConfig(
    { openai: openaiUrl },
    {
      models: { 'cloud-broken': { provider: 'dead', physical_name: 'gone', fallbacks: ['local-test'] } },
      providers: { dead: { type: 'ollama', base_url: 'http://127.0.0.1:1' } },
      limits,
    },
  );

const edgeConfig = (ollamaUrl: string) =>
  testConfig(
    { ollama: ollamaUrl },
    {
      limits,
      models: {
        // `nowhere` is served by no node: skipped; `gpt-test` is the cloud's.
        'local-test': { provider: 'local', physical_name: 'llama3.2:3b', fallbacks: ['nowhere', 'gpt-test'] },
        'edge-plain': { provider: 'local', physical_name: 'llama3.2:3b' },
        // Nothing listens there: it cools down after one failure (the health test).
        'edge-broken': { provider: 'dead', physical_name: 'llama3.2:3b' },
      },
      providers: { dead: { type: 'ollama', base_url: 'http://127.0.0.1:1' } },
      routing: { retry: { attempts: 1 }, cooldown: { failures: 1 } },
    },
  );

before(async () => {
  bus = await startTwoNodes({ cloud: cloudConfig, edge: edgeConfig });
  ({ openai, cloud, edge, raw, client, events } = bus);
});

after(() => bus?.close());

function body(model: string, requestId: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model, messages: [{ role: 'user', content: 'hi' }], request_id: requestId, ...extra };
}

type Reply = { model?: string; provider?: string; content?: string; error?: { code: string; message: string } };

async function seed(request: ChatRequest): Promise<Reply> {
  const reply = await raw.request('llm.proxy.request', JSON.stringify(request), { timeout: 10_000 });
  return reply.json<Reply>();
}

async function settle(): Promise<void> {
  await raw.flush();
  await new Promise((resolve) => setTimeout(resolve, 300));
}

test('while its node is up, the model is served there and its fallbacks are not used', async () => {
  const reply = await seed(body('local-test', 'up-0'));
  assert.equal(reply.error, undefined, JSON.stringify(reply.error));
  assert.equal(reply.model, 'local-test');
  assert.equal(reply.provider, 'local');
  assert.equal(openai.chatRequests.length, 0);
});

test("llm-proxy health checks every worker's deployments: a model that only the edge has, cooling down there, fails", async () => {
  const config = resolveConfig(testConfig({ openai: openai.baseUrl }), 'test', { FAKE_OPENAI_KEY: 'x' });
  const deploymentsCheck = async () =>
    (await checkSystemHealth({ connection: raw, config, timeoutMs: 2_000 })).checks.find(
      (check) => check.name === 'deployments',
    )!;
  const healthy = await deploymentsCheck();
  assert.equal(healthy.ok, true, healthy.detail);
  assert.deepEqual(healthy.worker_ids, [cloud.worker.id, edge!.worker.id].sort());
  assert.match(healthy.detail, /^5 models, 5 deployments, 0 cooling down \(as 2 workers see them\)$/);

  const refused = await seed(body('edge-broken', 'broken-0'));
  assert.ok(refused.error !== undefined);
  const failing = await deploymentsCheck();
  assert.equal(failing.ok, false, failing.detail);
  assert.deepEqual(failing.cooling_down, ['edge-broken']);
  assert.match(
    failing.detail,
    /^every deployment cooling down: edge-broken \(until \d{4}-.*\(as 2 workers see them\)$/,
  );
});

test("the model's node is up but its deployments fail: its fallback on another node answers, counted once", async () => {
  const ask = (id: string) => client.chat(body('cloud-broken', id, { metadata: { agent_id: FB_AGENT } }));
  const plain = await ask('up-fb-0');
  assert.equal(plain.model, 'local-test', 'the reply names the model that served it');
  assert.equal(plain.provider, 'local');
  const stream = client.stream(body('cloud-broken', 'up-fb-1', { stream: true, metadata: { agent_id: FB_AGENT } }));
  const chunks: StreamChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const final = await stream.final;
  assert.equal(final.model, 'local-test');
  assert.equal(chunks.map((chunk) => chunk.delta).join(''), final.content);
  assert.equal((await ask('up-fb-2')).model, 'local-test');
  // rpm 3: the three above were counted once each (the cloud gave its admission back when it passed them on).
  await assert.rejects(
    ask('up-fb-3'),
    (error: unknown) => error instanceof LlmProxyError && error.code === 'rate_limited',
  );

  await settle();
  for (const id of ['up-fb-0', 'up-fb-1', 'up-fb-2']) {
    const mine = events.filter((event) => event.request_id === id);
    assert.equal(mine.length, 1, `one event for ${id}`);
    assert.equal(mine[0]!.worker_id, edge!.worker.id, 'published by the worker that answered');
    assert.equal(mine[0]!.model, 'local-test');
    assert.equal(mine[0]!.status, 'ok');
  }
  const refused = events.filter((event) => event.request_id === 'up-fb-3');
  assert.deepEqual(
    refused.map((event) => [event.worker_id, event.status, event.error_code]),
    [[cloud.worker.id, 'rejected', 'rate_limited']],
  );
  assert.equal(cloud.worker.stats().in_flight, 0);
  assert.ok(
    cloud.logs.records().some((record) => record.msg === 'not served here: trying its fallbacks on other nodes'),
  );
});

test("its node gone, the model's fallback on another node answers: seed subject, typed client, stream; one event each", async () => {
  await edge!.stop();
  edge = undefined;
  const started = performance.now();
  const seeded = await seed(body('local-test', 'gone-seed'));
  assert.equal(seeded.error, undefined, JSON.stringify(seeded.error));
  assert.equal(seeded.model, 'gpt-test', 'the reply names the model that served it');
  assert.equal(seeded.provider, 'openai');

  const typed = await client.chat(body('local-test', 'gone-typed'));
  assert.equal(typed.model, 'gpt-test');

  const stream = client.stream(body('local-test', 'gone-stream', { stream: true }));
  const chunks: StreamChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const final = await stream.final;
  assert.equal(final.model, 'gpt-test');
  assert.equal(chunks.map((chunk) => chunk.delta).join(''), final.content);
  assert.ok(performance.now() - started < 5_000, 'no timeout on the way');
  assert.equal(openai.chatRequests.length, 3);
  // The fallback's body names the fallback; everything else is the client's.
  assert.equal((openai.chatRequests[0]!.body as { model: string }).model, 'gpt-4o-mini');

  await settle();
  for (const id of ['gone-seed', 'gone-typed', 'gone-stream']) {
    const mine = events.filter((event) => event.request_id === id);
    assert.equal(mine.length, 1, `one event for ${id}`);
    assert.equal(mine[0]!.model, 'gpt-test');
    assert.equal(mine[0]!.status, 'ok');
  }
  // The cloud worker passed each on (once to the gone model, then to its fallbacks) and answered it itself.
  assert.ok(
    cloud.logs.records().some((record) => record.msg === 'no worker serves the model: passed on to its fallback'),
  );
});

test('a gone model without fallbacks is still no_provider_available, at once', async () => {
  const reply = await seed(body('edge-plain', 'plain-gone'));
  assert.equal(reply.error?.code, 'no_provider_available');
});

test('forged hellos cannot make a model its own fallback, nor break the worker', async () => {
  const forged = [
    { worker_id: 'forged-1', node: 'x', models: ['loop-a'], fallbacks: { 'loop-a': ['loop-a'] } },
    { worker_id: 'forged-2', node: 'x', models: ['loop-b'], fallbacks: { 'loop-b': 'not a list', __proto__: ['x'] } },
    { worker_id: 'forged-3', node: 'x', models: ['loop-c'], fallbacks: { 'loop-c': [42, null, '', 'x'.repeat(300)] } },
    { worker_id: 'forged-4', node: 'x', models: ['loop-d'], fallbacks: [['loop-d', 'gpt-test']] },
  ];
  for (const hello of forged) raw.publish('llm.proxy.nodes.hello', JSON.stringify(hello));
  await settle();
  for (const model of ['loop-a', 'loop-b', 'loop-c', 'loop-d']) {
    // (their hellos named them, so they are models that were offered and are gone)
    const reply = await seed(body(model, `forged-${model}`));
    assert.equal(reply.error?.code, 'no_provider_available', `${model}: ${JSON.stringify(reply)}`);
  }
  assert.equal((await seed(body('gpt-test', 'still-serving'))).model, 'gpt-test');
});

test('check-config: a fallback this file does not define is a model on the bus; a context fallback must be here', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'llmp-fallbacks-'));
  try {
    const good = join(dir, 'edge.yaml');
    const bad = join(dir, 'bad.yaml');
    const base = { providers: { local: { type: 'ollama', base_url: 'http://127.0.0.1:11434' } } };
    writeFileSync(
      good,
      stringify({ ...base, models: { edge: { provider: 'local', physical_name: 'q', fallbacks: ['gpt-cloud'] } } }),
    );
    writeFileSync(
      bad,
      stringify({
        ...base,
        models: {
          edge: { provider: 'local', physical_name: 'q', context_fallbacks: ['gpt-cloud'], fallbacks: ['edge'] },
        },
      }),
    );
    const [ok, refused] = await Promise.all([runCli(['check-config', good]), runCli(['check-config', bad])]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /fallbacks gpt-cloud \(on the bus\)/);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /models\.edge\.context_fallbacks\.0: unknown model "gpt-cloud"/);
    assert.match(refused.stderr, /models\.edge\.fallbacks\.0: a model cannot fall back to itself/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
