import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { Svcm, type ServiceIdentity, type ServiceInfo, type ServiceStats } from '@nats-io/services';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startFakeOllama, startFakeOpenAI, type FakeOllama, type FakeOpenAI } from './fakes/index.js';
import {
  startInProcessWorker,
  testConfig,
  waitForUsageEvents,
  TEST_API_KEY,
  type InProcessWorker,
} from './helpers/worker.js';
import { usageEventSchema } from '../src/contract/usage-event.js';
import { ProxyError } from '../src/contract/errors.js';
import type { RequestOutcome } from '../src/worker/index.js';

const SEED_BODY = {
  model: 'gpt-test',
  messages: [{ role: 'user', content: 'Hello!' }],
  max_tokens: 100,
  temperature: 0.7,
  metadata: { agent_id: 'agent:sofia', microdao_id: 'microdao:7', channel_id: 'c-1' },
};

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

async function collect<T>(iterator: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterator) items.push(item);
  return items;
}

describe('worker: chat requests over NATS', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let ollama: FakeOllama;
  let worker: InProcessWorker;
  let client: NatsConnection;

  before(async () => {
    nats = await startNatsServer();
    openai = await startFakeOpenAI({ requireApiKey: TEST_API_KEY });
    ollama = await startFakeOllama();
    worker = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl, ollama: ollama.baseUrl }),
    });
    client = await connect({ servers: nats.url });
  });

  after(async () => {
    await client?.close();
    await worker?.stop();
    await openai?.close();
    await ollama?.close();
    await nats?.dispose();
  });

  const ask = async (body: unknown, subject = 'llm.proxy.request') => {
    const reply = await client.request(subject, typeof body === 'string' ? body : JSON.stringify(body), {
      timeout: 10_000,
    });
    return { body: reply.json() as any, headers: reply.headers };
  };

  const eventFor = async (requestId: string) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const events = await waitForUsageEvents(client, 1);
      const matching = events.filter((event) => event.request_id === requestId);
      if (matching.length > 0 || Date.now() > deadline) return matching;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };

  test('the seed request gets the seed reply from an OpenAI-compatible provider, and one usage event', async () => {
    const { body, headers } = await ask({ ...SEED_BODY, request_id: 'seed-1' });
    assert.equal(headers?.get('Nats-Service-Error') ?? '', '');
    assert.deepEqual(Object.keys(body).slice(0, 10), [
      'content',
      'usage',
      'provider',
      'model_resolved',
      'latency_ms',
      'model',
      'request_id',
      'finish_reason',
      'cost_usd',
      'cached',
    ]);
    assert.equal(body.content, 'echo: Hello!');
    assert.equal(body.provider, 'openai');
    assert.equal(body.model, 'gpt-test');
    assert.equal(body.model_resolved, 'gpt-4o-mini');
    assert.equal(body.request_id, 'seed-1');
    assert.equal(body.finish_reason, 'stop');
    assert.equal(body.cached, false);
    assert.equal(body.tokens_estimated, undefined);
    assert.equal(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
    const expectedCost =
      Math.round(((body.usage.prompt_tokens * 0.15 + body.usage.completion_tokens * 0.6) / 1000) * 1e8) / 1e8;
    assert.equal(body.cost_usd, expectedCost);
    const upstream = openai.chatRequests.at(-1)!;
    assert.equal(upstream.body.model, 'gpt-4o-mini');
    assert.equal(upstream.body.max_tokens, 100);
    assert.equal(upstream.body.temperature, 0.7);
    assert.equal(upstream.body.metadata, undefined);
    assert.equal(upstream.body.request_id, undefined);

    const [event, ...more] = await eventFor('seed-1');
    assert.equal(more.length, 0);
    usageEventSchema.parse(event);
    assert.deepEqual(Object.keys(event!).slice(0, 22), [
      'v',
      'request_id',
      'ts',
      'agent_id',
      'microdao_id',
      'channel_id',
      'model',
      'provider',
      'model_resolved',
      'status',
      'error_code',
      'prompt_tokens',
      'completion_tokens',
      'total_tokens',
      'tokens_estimated',
      'cost_usd',
      'latency_ms',
      'ttft_ms',
      'stream',
      'cached',
      'attempts',
      'worker_id',
    ]);
    assert.equal(event!.subject, 'llm.usage.agent:sofia');
    assert.match(event!.event_id ?? '', /^[0-9a-f-]{36}$/, 'the worker makes the event id');
    assert.equal(event!.msgId, event!.event_id, "the event is keyed by its event id, not the client's request_id");
    assert.equal(event!.status, 'ok');
    assert.equal(event!.error_code, null);
    assert.equal(event!.agent_id, 'agent:sofia');
    assert.equal(event!.microdao_id, 'microdao:7');
    assert.equal(event!.channel_id, 'c-1');
    assert.equal(event!.model, 'gpt-test');
    assert.equal(event!.provider, 'openai');
    assert.equal(event!.model_resolved, 'gpt-4o-mini');
    assert.equal(event!.prompt_tokens, body.usage.prompt_tokens);
    assert.equal(event!.completion_tokens, body.usage.completion_tokens);
    assert.equal(event!.tokens_estimated, false);
    assert.equal(event!.cost_usd, body.cost_usd);
    assert.equal(event!.ttft_ms, null);
    assert.equal(event!.stream, false);
    assert.equal(event!.attempts, 1);
    assert.equal(event!.worker_id, worker.worker.id);
    assert.equal(event!.tags, undefined);
  });

  test('the seed request through Ollama (the seed\'s "local" provider)', async () => {
    const { body } = await ask({ ...SEED_BODY, model: 'local-test', request_id: 'seed-ollama' });
    assert.equal(body.content, 'echo: Hello!');
    assert.equal(body.provider, 'local');
    assert.equal(body.model, 'local-test');
    assert.equal(body.finish_reason, 'stop');
    assert.equal(body.cost_usd, 0);
    assert.ok(body.usage.prompt_tokens > 0);
    const upstream = ollama.chatRequests.at(-1)!;
    assert.equal(upstream.body.model, 'llama3.2:3b');
    assert.equal(upstream.body.options?.num_predict, 100);
  });

  test('tools, tool_choice and response_format pass through to OpenAI; tool_calls come back in OpenAI shape', async () => {
    openai.enqueue({
      kind: 'ok',
      content: null,
      toolCalls: [{ id: 'call_abc', name: 'get_weather', arguments: { city: 'Paris' } }],
    });
    const { body } = await ask({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [WEATHER_TOOL],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      response_format: { type: 'json_object' },
      parallel_tool_calls: false,
    });
    const upstream = openai.chatRequests.at(-1)!;
    assert.deepEqual(upstream.body.tools, [WEATHER_TOOL]);
    assert.deepEqual(upstream.body.tool_choice, { type: 'function', function: { name: 'get_weather' } });
    assert.deepEqual(upstream.body.response_format, { type: 'json_object' });
    assert.equal(upstream.body.parallel_tool_calls, false);
    assert.equal(body.content, null);
    assert.equal(body.finish_reason, 'tool_calls');
    assert.deepEqual(body.tool_calls, [
      { id: 'call_abc', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
    ]);
  });

  test('Ollama tools are mapped both ways', async () => {
    ollama.enqueue({ kind: 'ok', content: '', toolCalls: [{ name: 'get_weather', arguments: { city: 'Oslo' } }] });
    const { body } = await ask({
      model: 'local-test',
      messages: [{ role: 'user', content: 'Weather in Oslo?' }],
      tools: [WEATHER_TOOL],
    });
    const upstream = ollama.chatRequests.at(-1)!;
    assert.equal(upstream.body.tools[0].function.name, 'get_weather');
    assert.equal(body.tool_calls.length, 1);
    assert.equal(body.tool_calls[0].type, 'function');
    assert.equal(body.tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(body.tool_calls[0].function.arguments), { city: 'Oslo' });
  });

  test('a provider that reports no usage: tokens estimated with the tokenizer and flagged, in the reply and the event', async () => {
    openai.enqueue({ kind: 'ok', content: 'The answer is forty-two.', usage: null });
    const { body } = await ask({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'What is the answer?' }],
      request_id: 'estimated-1',
    });
    assert.equal(body.tokens_estimated, true);
    assert.ok(
      body.usage.prompt_tokens >= 8 && body.usage.prompt_tokens < 40,
      `prompt tokens ${body.usage.prompt_tokens}`,
    );
    assert.ok(
      body.usage.completion_tokens >= 4 && body.usage.completion_tokens < 20,
      `completion tokens ${body.usage.completion_tokens}`,
    );
    assert.ok(body.cost_usd > 0);
    const [event] = await eventFor('estimated-1');
    assert.equal(event!.tokens_estimated, true);
    assert.equal(event!.prompt_tokens, body.usage.prompt_tokens);
    assert.equal(event!.completion_tokens, body.usage.completion_tokens);
  });

  test('metadata keys beyond the ids become tags; no agent id publishes on llm.usage.anonymous; odd ids are escaped', async () => {
    await ask({
      ...SEED_BODY,
      request_id: 'tags-1',
      metadata: { agent_id: 'team.a b', task: 'summarize', env: 'prod' },
    });
    await ask({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], request_id: 'anon-1' });
    const [tagged] = await eventFor('tags-1');
    assert.equal(tagged!.subject, 'llm.usage.team%2Ea%20b');
    assert.deepEqual(tagged!.tags, { task: 'summarize', env: 'prod' });
    const [anonymous] = await eventFor('anon-1');
    assert.equal(anonymous!.subject, 'llm.usage.anonymous');
    assert.equal(anonymous!.agent_id, null);
  });

  test('a request id sent twice is two requests served, two events (each with its own event id)', async () => {
    const duplicatesBefore = worker.worker.publisher.counters.duplicates;
    await ask({ ...SEED_BODY, request_id: 'dup-1' });
    await ask({ ...SEED_BODY, request_id: 'dup-1' });
    let events = await eventFor('dup-1');
    const deadline = Date.now() + 5_000;
    while (events.length < 2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 25));
      events = await eventFor('dup-1');
    }
    assert.equal(events.length, 2);
    assert.notEqual(events[0]!.event_id, events[1]!.event_id);
    assert.equal(
      worker.worker.publisher.counters.duplicates,
      duplicatesBefore,
      'neither was taken for a retried publish',
    );
  });

  test('deterministic requests are answered from the cache: cached true, cost 0, still one event each', async () => {
    const body = { model: 'gpt-test', messages: [{ role: 'user', content: 'cache me' }], temperature: 0 };
    const before = openai.chatRequests.length;
    const first = await ask({ ...body, request_id: 'cache-1' });
    const second = await ask({ ...body, request_id: 'cache-2', metadata: { agent_id: 'agent:other' } });
    assert.equal(openai.chatRequests.length, before + 1);
    assert.equal(first.body.cached, false);
    assert.equal(second.body.cached, true);
    assert.equal(second.body.cost_usd, 0);
    assert.equal(second.body.request_id, 'cache-2');
    assert.equal(second.body.content, first.body.content);
    const [event] = await eventFor('cache-2');
    assert.equal(event!.cached, true);
    assert.equal(event!.cost_usd, 0);
    assert.ok(first.body.cost_usd > 0);
    assert.equal(event!.saved_usd, first.body.cost_usd, 'the hit saved what the answer cost upstream');
    const [original] = await eventFor('cache-1');
    assert.equal(original!.saved_usd, undefined, 'an answer from upstream saved nothing');
    assert.equal(event!.status, 'ok');

    await ask({ ...body, request_id: 'cache-3', cache: 'bypass' });
    await ask({ ...body, temperature: 0.5, request_id: 'cache-4' });
    assert.equal(
      openai.chatRequests.length,
      before + 3,
      'bypass and a non-deterministic request both reach the provider',
    );
  });

  test('llm.proxy.models lists the routable models; {"health": true} adds deployment states', async () => {
    const { body } = await ask('{}', 'llm.proxy.models');
    assert.equal(body.worker_id, worker.worker.id);
    const gpt = body.models.find((model: any) => model.name === 'gpt-test');
    assert.deepEqual(
      {
        provider: gpt.provider,
        physical_name: gpt.physical_name,
        cost_per_1k_prompt: gpt.cost_per_1k_prompt,
        cost_per_1k_completion: gpt.cost_per_1k_completion,
      },
      { provider: 'openai', physical_name: 'gpt-4o-mini', cost_per_1k_prompt: 0.15, cost_per_1k_completion: 0.6 },
    );
    assert.equal(body.health, undefined);
    const withHealth = await ask({ health: true }, 'llm.proxy.models');
    assert.ok(withHealth.body.health.some((row: any) => row.model === 'gpt-test' && row.state === 'healthy'));
  });

  test('$SRV.PING, INFO and STATS answer, with our own counters in STATS', async () => {
    const services = new Svcm(client).client({ strategy: 'timer', maxWait: 1_000 });
    const pings = (await collect(await services.ping('llm-proxy'))) as ServiceIdentity[];
    assert.equal(pings.length, 1);
    assert.equal(pings[0]!.id, worker.worker.id);
    const infos = (await collect(await services.info('llm-proxy'))) as ServiceInfo[];
    assert.equal(infos[0]!.metadata?.request_subject, 'llm.proxy.request');
    assert.ok(
      infos[0]!.endpoints.some(
        (endpoint) => endpoint.subject === 'llm.proxy.models' && endpoint.queue_group === 'llm-proxy',
      ),
    );
    const stats = (await collect(await services.stats('llm-proxy'))) as ServiceStats[];
    const data = stats[0]!.endpoints![0]!.data as {
      requests: number;
      in_flight: number;
      by_code: object;
      worker_id: string;
    };
    assert.equal(data.worker_id, worker.worker.id);
    assert.ok(data.requests >= 5, `requests ${data.requests}`);
    assert.equal(typeof data.in_flight, 'number');
  });
});

describe('worker: the admission seam (beforeRoute / afterRoute hooks)', () => {
  test('beforeRoute can refuse (event "rejected"); afterRoute sees every outcome', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    const outcomes: RequestOutcome[] = [];
    const worker = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl }),
      hooks: {
        beforeRoute(context) {
          if (context.agentId === 'agent:broke')
            throw new ProxyError('budget_exceeded', 'agent:broke is over its daily budget');
          context.state.reserved = true;
        },
        afterRoute(context, outcome) {
          assert.equal(context.state.reserved, true);
          outcomes.push(outcome);
        },
      },
    });
    const client = await connect({ servers: nats.url });
    try {
      const refused = (
        await client.request(
          'llm.proxy.request',
          JSON.stringify({ ...SEED_BODY, request_id: 'hook-1', metadata: { agent_id: 'agent:broke' } }),
          { timeout: 5_000 },
        )
      ).json() as any;
      assert.equal(refused.error.code, 'budget_exceeded');
      assert.equal(refused.error.status, 402);
      const served = (
        await client.request('llm.proxy.request', JSON.stringify({ ...SEED_BODY, request_id: 'hook-2' }), {
          timeout: 5_000,
        })
      ).json() as any;
      assert.equal(served.content, 'echo: Hello!');
      const events = await waitForUsageEvents(client, 2);
      assert.equal(events.find((event) => event.request_id === 'hook-1')!.status, 'rejected');
      assert.equal(events.find((event) => event.request_id === 'hook-1')!.error_code, 'budget_exceeded');
      assert.equal(outcomes.length, 1);
      assert.equal(outcomes[0]!.status, 'ok');
      assert.equal(outcomes[0]!.promptTokens, served.usage.prompt_tokens);
      assert.equal(outcomes[0]!.costUsd, served.cost_usd);
    } finally {
      await client.close();
      await worker.stop();
      await openai.close();
      await nats.dispose();
    }
  });
});
