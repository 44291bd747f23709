/**
 * Metrics and readiness over real connections: a `llm-proxy worker` process with its own
 * /metrics, /healthz and /readyz, a real nats-server, a fake OpenAI provider; the numbers scraped
 * are those of the requests sent, labels stay bounded (a client's invented model name is never one),
 * the response cache's own counters per tier follow its lookups, and readiness follows the NATS connection.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, type ChatReply, type LlmProxyClient } from '../src/client/index.js';
import { newKey, newKeyId } from '../src/auth/index.js';
import { connectToNats } from '../src/bus/connect.js';
import { httpSchema } from '../src/config/http-schema.js';
import { startFrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { startProcessMetrics } from '../src/telemetry/metrics-sdk.js';
import { startProcessServer } from '../src/telemetry/process-server.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startChildWorker, startInProcessWorker, testConfig, type ChildWorker } from './helpers/worker.js';

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let child: ChildWorker;
let metricsUrl: string;
let connection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  child = await startChildWorker({
    natsUrl: nats.url,
    config: testConfig(
      { openai: openai.baseUrl },
      { routing: { retry: { attempts: 2 }, cooldown: { failures: 1_000 } } },
    ),
  });
  const line = await child.waitForLine('serving /metrics');
  metricsUrl = (JSON.parse(line) as { url: string }).url;
  connection = await connect({ servers: nats.url });
  client = createClient({ connection, timeoutMs: 10_000 });
});

after(async () => {
  await connection.close();
  await child.dispose();
  await openai.close();
  await nats.dispose();
});

/** `name{labels} value` lines of a Prometheus scrape, matched by name and a subset of labels. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    const body = line.slice(name.length + 1, close);
    const found = Object.fromEntries([...body.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([key, value]) => found[key] === value))
      total = (total ?? 0) + Number(line.slice(close + 1).trim());
  }
  return total;
}

const ask = (model = 'gpt-test', stream = false) => ({
  model,
  messages: [{ role: 'user' as const, content: 'How many lighthouses are there?' }],
  metadata: { agent_id: 'agent:metrics' },
  request_id: `metrics-${randomUUID()}`,
  ...(stream ? { stream: true } : {}),
});

test('the scrape counts what was sent: requests, statuses, attempts, tokens, time to first token; bounded labels', async () => {
  const replies: ChatReply[] = [];
  replies.push(await client.chat(ask()), await client.chat(ask()));
  const stream = client.stream(ask('gpt-test', true));
  for await (const _chunk of stream) {
    // Chunks are counted by the worker; the reply's usage is what is checked.
  }
  replies.push(await stream.final);
  // The first attempt fails with a 500 and the second serves it: two attempts, one request.
  openai.enqueue({ kind: 'status', status: 500, message: 'boom' }, { kind: 'ok' });
  replies.push(await client.chat(ask()));
  const invented = `no-such-model-${randomUUID()}`;
  await assert.rejects(client.chat(ask(invented)), /model/);

  const response = await fetch(`${metricsUrl}/metrics`);
  assert.equal(response.status, 200);
  const text = await response.text();
  const model = { gen_ai_request_model: 'gpt-test', gen_ai_provider_name: 'openai' };
  assert.equal(
    sample(text, 'llm_proxy_requests_total', { ...model, llm_proxy_status: 'ok', llm_proxy_stream: 'false' }),
    3,
  );
  assert.equal(
    sample(text, 'llm_proxy_requests_total', { ...model, llm_proxy_status: 'ok', llm_proxy_stream: 'true' }),
    1,
  );
  assert.equal(
    sample(text, 'llm_proxy_requests_total', { gen_ai_request_model: '(unknown)', error_type: 'model_not_found' }),
    1,
  );
  assert.ok(!text.includes(invented), "a client's model name is never a label");
  assert.equal(sample(text, 'gen_ai_server_request_duration_count', model), 4);
  assert.equal(
    sample(text, 'gen_ai_server_request_duration_count', { ...model, gen_ai_response_model: 'gpt-4o-mini' }),
    4,
    'per deployment too',
  );
  assert.equal(sample(text, 'gen_ai_server_time_to_first_token_count', model), 1);
  const deployment = { ...model, gen_ai_response_model: 'gpt-4o-mini' };
  assert.equal(
    sample(text, 'gen_ai_client_operation_duration_count', { ...deployment, error_type: 'upstream_error' }),
    1,
  );
  assert.equal(sample(text, 'gen_ai_client_operation_duration_count', deployment), 5, 'four successes and the failure');
  const sum = (pick: (reply: ChatReply) => number) => replies.reduce((total, reply) => total + pick(reply), 0);
  assert.equal(
    sample(text, 'gen_ai_client_token_usage_sum', { ...model, gen_ai_token_type: 'input' }),
    sum((reply) => reply.usage.prompt_tokens),
  );
  assert.equal(
    sample(text, 'gen_ai_client_token_usage_sum', { ...model, gen_ai_token_type: 'output' }),
    sum((reply) => reply.usage.completion_tokens),
  );
  const cost = sample(text, 'llm_proxy_cost_total', model) ?? 0;
  assert.ok(Math.abs(cost - sum((reply) => reply.cost_usd)) < 1e-9, `cost ${cost}`);
  assert.equal(sample(text, 'llm_proxy_requests_in_flight'), 0);
  assert.equal(sample(text, 'llm_proxy_streams_open'), 0);
  assert.equal(sample(text, 'llm_proxy_usage_events_pending'), 0);
  assert.equal(sample(text, 'llm_proxy_deployments_cooling_down', { gen_ai_response_model: 'gpt-4o-mini' }), 0);
  assert.ok(!text.includes('agent:metrics'), 'no agent label unless telemetry.agent_label');
});

test('/healthz answers; /readyz is ready with its checks, and not ready while NATS is away', async () => {
  assert.equal((await fetch(`${metricsUrl}/healthz`)).status, 200);
  const ready = await fetch(`${metricsUrl}/readyz`);
  const body = (await ready.json()) as { status: string; checks: Array<{ name: string; ok: boolean }> };
  assert.equal(ready.status, 200, JSON.stringify(body));
  assert.deepEqual(
    body.checks.map((check) => [check.name, check.ok]),
    [
      ['nats', true],
      ['usage_stream', true],
      ['usage_events', true],
      ['deployments', true],
    ],
  );
  await nats.stop();
  let status = 0;
  for (let tries = 0; tries < 50 && status !== 503; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    status = (await fetch(`${metricsUrl}/readyz`)).status;
  }
  assert.equal(status, 503);
  const down = (await (await fetch(`${metricsUrl}/readyz`)).json()) as { checks: Array<{ name: string; ok: boolean }> };
  assert.equal(down.checks.find((check) => check.name === 'nats')?.ok, false);
  await nats.restart();
});

test('telemetry.agent_label adds the agent to the request metrics (an in-process worker, its own exporter)', async () => {
  // From here on the in-process workers are alone in the queue group.
  await child.dispose();
  const metrics = startProcessMetrics({ serviceName: 'test', serviceVersion: '0' });
  const worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl }, { telemetry: { agent_label: true, worker_port: null } }),
    meterProvider: metrics.meterProvider,
  });
  const server = await startProcessServer({
    host: '127.0.0.1',
    port: 0,
    prometheus: metrics.prometheus,
    ready: () => worker.worker.ready(),
  });
  try {
    const local = await connect({ servers: nats.url });
    await createClient({ connection: local, timeoutMs: 10_000 }).chat(ask());
    await local.close();
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.equal(sample(text, 'llm_proxy_requests_total', { llm_proxy_agent_id: 'agent:metrics' }), 1);
  } finally {
    await server.close();
    await worker.stop();
    await metrics.shutdown();
  }
});

test('limit refusals by scope kind and dimension; every kind and dimension is a series from the start', async () => {
  const metrics = startProcessMetrics({ serviceName: 'test', serviceVersion: '0' });
  const worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig(
      { openai: openai.baseUrl },
      { telemetry: { worker_port: null }, limits: { enabled: true, backend: 'memory', default: { rpm: 1 } } },
    ),
    meterProvider: metrics.meterProvider,
  });
  const server = await startProcessServer({
    host: '127.0.0.1',
    port: 0,
    prometheus: metrics.prometheus,
    ready: () => worker.worker.ready(),
  });
  try {
    const before = await (await fetch(`${server.url}/metrics`)).text();
    const kinds = ['agent', 'microdao', 'model', 'key'];
    for (const scope of kinds) {
      assert.equal(
        sample(before, 'llm_proxy_limit_refusals_total', {
          llm_proxy_limit_scope: scope,
          llm_proxy_limit_dimension: 'rpm',
        }),
        0,
      );
      assert.equal(
        sample(before, 'llm_proxy_limit_budget_near_total', {
          llm_proxy_limit_scope: scope,
          llm_proxy_limit_dimension: 'daily_usd',
        }),
        0,
      );
    }
    const local = await connect({ servers: nats.url });
    const localClient = createClient({ connection: local, timeoutMs: 10_000 });
    await localClient.chat(ask());
    await assert.rejects(localClient.chat(ask()), /requests\/minute/);
    await local.close();
    const after = await (await fetch(`${server.url}/metrics`)).text();
    assert.equal(
      sample(after, 'llm_proxy_limit_refusals_total', {
        llm_proxy_limit_scope: 'agent',
        llm_proxy_limit_dimension: 'rpm',
      }),
      1,
    );
    assert.equal(
      sample(after, 'llm_proxy_requests_total', { llm_proxy_status: 'rejected', error_type: 'rate_limited' }),
      1,
    );
  } finally {
    await server.close();
    await worker.stop();
    await metrics.shutdown();
  }
});

test("the response cache's own counters per tier: a miss then a hit, what memory holds; no cache series when it is off", async () => {
  const metrics = startProcessMetrics({ serviceName: 'test', serviceVersion: '0' });
  const cacheOn = { enabled: true, bucket: `METRICS_CACHE_${randomUUID().slice(0, 8)}` };
  const worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl }, { telemetry: { worker_port: null }, cache: cacheOn }),
    meterProvider: metrics.meterProvider,
  });
  const server = await startProcessServer({
    host: '127.0.0.1',
    port: 0,
    prometheus: metrics.prometheus,
    ready: () => worker.worker.ready(),
  });
  const cacheable = () => ({ ...ask(), messages: [{ role: 'user' as const, content: 'Cache me?' }], temperature: 0 });
  const local = await connect({ servers: nats.url });
  try {
    const before = await (await fetch(`${server.url}/metrics`)).text();
    const memory = { llm_proxy_cache_tier: 'memory', llm_proxy_cache_backend: 'memory' };
    const shared = { llm_proxy_cache_tier: 'shared', llm_proxy_cache_backend: 'nats' };
    for (const tier of [memory, shared])
      for (const llm_proxy_outcome of ['hit', 'miss'])
        assert.equal(
          sample(before, 'llm_proxy_cache_lookups_total', { ...tier, llm_proxy_outcome }),
          0,
          'at 0 from the start',
        );

    const localClient = createClient({ connection: local, timeoutMs: 10_000 });
    const first = await localClient.chat(cacheable());
    const second = await localClient.chat(cacheable());
    assert.equal(first.cached, false);
    assert.equal(second.cached, true);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    // The first request missed both tiers and was stored; the second was found in this worker's memory.
    assert.equal(sample(text, 'llm_proxy_cache_lookups_total', { ...memory, llm_proxy_outcome: 'miss' }), 1);
    assert.equal(sample(text, 'llm_proxy_cache_lookups_total', { ...memory, llm_proxy_outcome: 'hit' }), 1);
    assert.equal(sample(text, 'llm_proxy_cache_lookups_total', { ...shared, llm_proxy_outcome: 'miss' }), 1);
    assert.equal(
      sample(text, 'llm_proxy_cache_lookups_total', { ...shared, llm_proxy_outcome: 'hit' }),
      0,
      'a memory hit never asks the shared tier',
    );
    for (const tier of [memory, shared]) {
      assert.equal(sample(text, 'llm_proxy_cache_errors_total', tier), 0);
      assert.equal(sample(text, 'llm_proxy_cache_skipped_too_large_total', tier), 0);
    }
    assert.equal(sample(text, 'llm_proxy_cache_entries', memory), 1);
    const bytes = sample(text, 'llm_proxy_cache_bytes', memory) ?? 0;
    assert.ok(bytes > 100 && bytes < 10_000, `the memory tier holds one answer's JSON: ${bytes} bytes`);
    assert.equal(sample(text, 'llm_proxy_cache_entries', shared), undefined, "only the memory tier's size (no I/O)");
    assert.equal(sample(text, 'llm_proxy_cache_hits_total', { gen_ai_request_model: 'gpt-test' }), 1);
  } finally {
    await server.close();
    await worker.stop();
    await metrics.shutdown();
  }

  // The cache off: no cache series at all.
  const offMetrics = startProcessMetrics({ serviceName: 'test', serviceVersion: '0' });
  const off = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl }, { telemetry: { worker_port: null }, cache: { enabled: false } }),
    meterProvider: offMetrics.meterProvider,
  });
  const offServer = await startProcessServer({
    host: '127.0.0.1',
    port: 0,
    prometheus: offMetrics.prometheus,
    ready: () => off.worker.ready(),
  });
  try {
    const localClient = createClient({ connection: local, timeoutMs: 10_000 });
    assert.equal((await localClient.chat(cacheable())).cached, false);
    assert.equal((await localClient.chat(cacheable())).cached, false);
    const text = await (await fetch(`${offServer.url}/metrics`)).text();
    assert.equal(sample(text, 'llm_proxy_requests_total', { llm_proxy_status: 'ok' }), 2);
    assert.doesNotMatch(text, /^llm_proxy_cache_\w+\{/m, 'no cache series with the cache off');
  } finally {
    await local.close();
    await offServer.close();
    await off.stop();
    await offMetrics.shutdown();
  }
});

test("the front door's /metrics: behind the secret, HTTP durations by route (never by raw URL)", async () => {
  const metrics = startProcessMetrics({ serviceName: 'test-http', serviceVersion: '0' });
  const door = await startFrontDoor({
    http: httpSchema.parse({}),
    connecting: connectToNats({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: 'front-door-secret',
    keys: true,
    logger: createLogger({ level: 'silent' }),
    host: '127.0.0.1',
    port: 0,
    metrics: { prometheus: metrics.prometheus, meterProvider: metrics.meterProvider },
  });
  try {
    assert.equal((await fetch(`${door.url}/metrics`)).status, 401);
    // A per-agent key goes on to workers, which check it; /metrics never reaches one, so a key opens nothing.
    const madeUp = newKey(newKeyId());
    assert.equal((await fetch(`${door.url}/metrics`, { headers: { authorization: `Bearer ${madeUp}` } })).status, 401);
    await fetch(`${door.url}/v1/models/${randomUUID()}`, { headers: { 'x-internal-secret': 'front-door-secret' } });
    const scrape = await fetch(`${door.url}/metrics`, { headers: { authorization: 'Bearer front-door-secret' } });
    assert.equal(scrape.status, 200);
    const text = await scrape.text();
    assert.ok((sample(text, 'http_server_request_duration_count', { http_route: '/v1/models/*' }) ?? 0) >= 1, text);
    assert.doesNotMatch(text, /\/v1\/models\/[0-9a-f]{8}-/);
  } finally {
    await door.close();
    await metrics.shutdown();
  }
});
