/**
 * The Anthropic adapter end to end: a real nats-server, a real worker, the typed client, and the
 * fake Anthropic server (test/fakes/fake-anthropic.ts) speaking Anthropic's wire format. Plus the
 * adapter alone over loopback for what the worker does not show (headers, refusals before sending).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import type { StreamChunk } from '../src/contract/reply.js';
import { ProxyError } from '../src/contract/errors.js';
import { parseChatRequest } from '../src/contract/request.js';
import type { Provider } from '../src/providers/types.js';
import { createAnthropicProvider } from '../src/providers/anthropic/adapter.js';
import { createPool } from '../src/providers/registry.js';
import { anthropicBehaviours, startFakeAnthropic, type FakeAnthropic } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import {
  startInProcessWorker,
  testConfig,
  usageEventFor,
  waitForUsageEvents,
  type InProcessWorker,
} from './helpers/worker.js';

const KEY = 'sk-ant-api03-TEST-SECRET-abcdef0123456789';

let nats: NatsServerHandle;
let fake: FakeAnthropic;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  nats = await startNatsServer();
  fake = await startFakeAnthropic({ requireApiKey: KEY });
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    env: { ANTHROPIC_TEST_KEY: KEY },
    config: testConfig(
      {},
      {
        // Every request logged (and debug lines), for the "no key in any log line" test.
        logging: { level: 'debug', requests: 'all' },
        providers: { anthropic: { type: 'anthropic', base_url: fake.baseUrl, api_key_env: 'ANTHROPIC_TEST_KEY' } },
        models: {
          // $3 per 1k prompt tokens, $0.30 per 1k read from Anthropic's cache, $15 per 1k completion tokens.
          'claude-test': {
            provider: 'anthropic',
            physical_name: 'claude-sonnet-4-5',
            cost_per_1k_prompt: 3,
            cost_per_1k_cached_prompt: 0.3,
            cost_per_1k_completion: 15,
          },
          // Its own deployment: a 429 cools a deployment down.
          'claude-limited': { provider: 'anthropic', physical_name: 'claude-limited' },
          'claude-pair': {
            deployments: [
              { provider: 'anthropic', physical_name: 'claude-a' },
              { provider: 'anthropic', physical_name: 'claude-b' },
            ],
          },
        },
      },
    ),
  });
  connection = await connect({ servers: nats.url });
  client = createClient({ connection, timeoutMs: 10_000 });
});

after(async () => {
  await worker?.stop();
  await connection?.close();
  await fake?.close();
  await nats?.dispose();
});

const ask = (extra: Partial<ChatRequest> = {}): ChatRequest => ({
  model: 'claude-test',
  messages: [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hello, Claude!' },
  ],
  request_id: `anthropic-${randomUUID()}`,
  ...extra,
});

/** Every reply, chunk and error the client saw, for the "no key anywhere" test. */
const seen: string[] = [];

async function chat(request: ChatRequest) {
  try {
    const reply = await client.chat(request);
    seen.push(JSON.stringify(reply));
    return reply;
  } catch (error) {
    seen.push(JSON.stringify(error), String(error));
    throw error;
  }
}

async function streamed(request: ChatRequest) {
  const chunks: StreamChunk[] = [];
  const stream = client.stream(request);
  let error: LlmProxyError | undefined;
  try {
    for await (const chunk of stream) chunks.push(chunk);
  } catch (thrown) {
    assert.ok(thrown instanceof LlmProxyError, String(thrown));
    error = thrown;
  }
  const final = await stream.final.catch(() => undefined);
  seen.push(JSON.stringify({ chunks, final, error }), String(error));
  return { chunks, final, error };
}

function lastRequest() {
  const last = fake.messageRequests.at(-1);
  assert.ok(last, 'the fake got a request');
  return last;
}

const WEATHER = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] };
const tools: ChatRequest['tools'] = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather of a city', parameters: WEATHER } },
];

describe('anthropic over NATS', () => {
  test('a JSON answer; the fake got x-api-key, anthropic-version, system lifted, max_tokens', async () => {
    fake.enqueue({ kind: 'ok', text: 'Hi! How can I help?', usage: { inputTokens: 12, outputTokens: 8 } });
    const reply = await chat(ask());
    assert.deepEqual(
      [reply.content, reply.finish_reason, reply.provider, reply.model_resolved],
      ['Hi! How can I help?', 'stop', 'anthropic', 'claude-sonnet-4-5'],
    );
    assert.deepEqual(reply.usage, { prompt_tokens: 12, completion_tokens: 8, total_tokens: 20 });
    const received = lastRequest();
    assert.deepEqual([received.apiKey, received.anthropicVersion], [KEY, '2023-06-01']);
    assert.equal(received.headers.authorization, undefined);
    assert.deepEqual([received.body.model, received.body.system], ['claude-sonnet-4-5', 'Be brief.']);
    assert.ok(received.body.max_tokens > 0);
    assert.deepEqual(received.body.messages, [{ role: 'user', content: [{ type: 'text', text: 'Hello, Claude!' }] }]);
    assert.ok(!('metadata' in received.body) && !('request_id' in received.body) && !('stream' in received.body));
  });

  test('a streamed answer, with a ping, word by word', async () => {
    fake.enqueue({ kind: 'ok', text: 'One two three four.' });
    const { chunks, final, error } = await streamed(ask({ stream: true }));
    assert.equal(error, undefined);
    assert.ok(chunks.length >= 4, `${chunks.length} chunks`);
    assert.equal(chunks.map((chunk) => chunk.delta).join(''), 'One two three four.');
    assert.equal(final?.finish_reason, 'stop');
    assert.equal(lastRequest().body.stream, true);
  });

  test('tools both ways: a call with tools, then the tool results; the fake got tool_use and tool_result', async () => {
    fake.enqueue({
      kind: 'ok',
      text: null,
      toolUses: [{ id: 'toolu_01', name: 'get_weather', input: { city: 'Lviv' } }],
    });
    const first = await chat(ask({ tools, tool_choice: 'required', parallel_tool_calls: false }));
    assert.deepEqual([first.content, first.finish_reason], [null, 'tool_calls']);
    assert.deepEqual(first.tool_calls, [
      { id: 'toolu_01', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Lviv"}' } },
    ]);
    const sent = lastRequest().body;
    assert.deepEqual(sent.tools, [{ name: 'get_weather', description: 'Weather of a city', input_schema: WEATHER }]);
    assert.deepEqual(sent.tool_choice, { type: 'any', disable_parallel_tool_use: true });

    fake.enqueue({ kind: 'ok', text: 'It is 21°C in Lviv.' });
    const second = await chat(
      ask({
        tools,
        messages: [
          { role: 'user', content: 'Weather in Lviv?' },
          { role: 'assistant', content: null, tool_calls: first.tool_calls! },
          { role: 'tool', tool_call_id: 'toolu_01', content: '{"temperature": 21}' },
        ],
      }),
    );
    assert.equal(second.content, 'It is 21°C in Lviv.');
    assert.deepEqual(lastRequest().body.messages.slice(1), [
      {
        role: 'assistant',
        content: [{ type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: { city: 'Lviv' } }],
      },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_01', content: '{"temperature": 21}' }] },
    ]);
  });

  test('parallel tool calls streamed over many input_json_delta events, after thinking', async () => {
    fake.enqueue({
      kind: 'ok',
      text: null,
      thinking: 'The user wants two cities.',
      toolUses: [
        { name: 'get_weather', input: { city: 'Kharkiv', unit: 'celsius', days: 3 } },
        { name: 'get_weather', input: { city: 'Odesa', unit: 'celsius', days: 3 } },
      ],
      argumentPieces: 8,
    });
    const { chunks, final, error } = await streamed(ask({ stream: true, reasoning_effort: 'low', max_tokens: 2048 }));
    assert.equal(error, undefined);
    assert.deepEqual(lastRequest().body.thinking, { type: 'enabled', budget_tokens: 1024 });
    const toolChunks = chunks.filter((chunk) => chunk.tool_calls !== undefined).length;
    assert.ok(toolChunks >= 16, `${toolChunks} tool-call chunks`);
    assert.equal(chunks.map((chunk) => chunk.reasoning_delta ?? '').join(''), 'The user wants two cities.');
    assert.equal(final?.finish_reason, 'tool_calls');
    assert.equal(final?.reasoning_content, 'The user wants two cities.');
    assert.deepEqual(
      final?.tool_calls?.map((call) => [call.function.name, JSON.parse(call.function.arguments)]),
      [
        ['get_weather', { city: 'Kharkiv', unit: 'celsius', days: 3 }],
        ['get_weather', { city: 'Odesa', unit: 'celsius', days: 3 }],
      ],
    );
  });

  test('thinking in a JSON answer is reasoning_content', async () => {
    fake.enqueue({ kind: 'ok', thinking: 'Simple greeting.', text: 'Hello!' });
    const reply = await chat(ask({ reasoning_effort: 'medium', max_tokens: 8000 }));
    assert.deepEqual([reply.reasoning_content, reply.content], ['Simple greeting.', 'Hello!']);
    assert.deepEqual(lastRequest().body.thinking, { type: 'enabled', budget_tokens: 4096 });
  });

  for (const stream of [false, true]) {
    test(`cache counts (${stream ? 'streamed' : 'JSON'}): the prompt is their sum, cache reads are cached tokens`, async () => {
      fake.enqueue({
        kind: 'ok',
        text: 'Cached answer.',
        usage: { inputTokens: 10, cacheReadInputTokens: 1000, cacheCreationInputTokens: 200, outputTokens: 30 },
      });
      const request = ask(stream ? { stream: true } : {});
      const reply = stream ? (await streamed(request)).final : await chat(request);
      assert.deepEqual(reply?.usage, { prompt_tokens: 1210, completion_tokens: 30, total_tokens: 1240 });
      const event = await usageEventFor(connection, request.request_id!);
      assert.deepEqual([event.prompt_tokens, event.cached_prompt_tokens, event.tokens_estimated], [1210, 1000, false]);
      // 210 prompt tokens at $3/1k, 1000 cached at $0.30/1k, 30 completion at $15/1k.
      assert.equal(event.cost_usd, Math.round(((210 * 3 + 1000 * 0.3 + 30 * 15) / 1000) * 1e6) / 1e6);
    });
  }

  test('a 429 with retry-after: rate_limited, retry_after_ms from the header', async () => {
    fake.enqueue(anthropicBehaviours.rateLimited(3));
    const error = await chat(ask({ model: 'claude-limited' })).catch((thrown: unknown) => thrown);
    assert.ok(error instanceof LlmProxyError, String(error));
    assert.deepEqual([error.code, error.retryable], ['rate_limited', true]);
    assert.ok((error.retryAfterMs ?? 0) >= 2_000, `retryAfterMs ${error.retryAfterMs}`);
    assert.match(error.message, /exceed the rate limit/);
  });

  test('a 529 overloaded is retried on the other deployment', async () => {
    fake.enqueue(anthropicBehaviours.overloaded(), { kind: 'ok', text: 'Second time lucky.' });
    const reply = await chat(ask({ model: 'claude-pair' }));
    assert.equal(reply.content, 'Second time lucky.');
    assert.deepEqual(
      reply.attempts?.map((attempt) => attempt.error_code),
      ['upstream_error', null],
    );
    const models = fake.messageRequests.slice(-2).map((request) => request.body.model);
    assert.deepEqual(new Set(models), new Set(['claude-a', 'claude-b']));
  });

  test('an error event mid-stream ends the stream with an error of its type, after the content', async () => {
    fake.enqueue({
      kind: 'stream-error',
      afterEvents: 6,
      text: 'Partial answer that stops',
      errorType: 'overloaded_error',
    });
    const { chunks, error } = await streamed(ask({ stream: true }));
    assert.ok(chunks.length >= 1, 'content came first');
    assert.ok('Partial answer that stops'.startsWith(chunks.map((chunk) => chunk.delta).join('')));
    assert.deepEqual([error?.code, error?.retryable], ['upstream_error', true]);
    assert.match(error?.message ?? '', /Overloaded/);
    fake.enqueue({
      kind: 'stream-error',
      afterEvents: 5,
      text: 'Half',
      errorType: 'invalid_request_error',
      message: 'bad',
    });
    assert.equal((await streamed(ask({ stream: true }))).error?.code, 'invalid_request');
  });

  test('a stream cut before message_stop is an error, never a clean end', async () => {
    fake.enqueue({ kind: 'stream-cut', afterEvents: 5, text: 'This will be cut short' });
    const { chunks, error } = await streamed(ask({ stream: true }));
    assert.ok(chunks.length >= 1);
    assert.equal(error?.code, 'upstream_error');
    assert.match(error?.message ?? '', /stream ended early/);
  });

  test('events split across TCP writes at odd offsets, inside multi-byte characters: the text arrives whole', async () => {
    const text = 'Привіт, світе! 🌻 Größe, naïve café — 日本語のテキスト 🚀✨';
    fake.enqueue({ kind: 'ok', text, thinking: 'Думаю… 🤔', splitWrites: true });
    const { chunks, final, error } = await streamed(ask({ stream: true }));
    assert.equal(error, undefined);
    assert.equal(chunks.map((chunk) => chunk.delta).join(''), text);
    assert.equal(final?.reasoning_content, 'Думаю… 🤔');
    assert.ok(
      lastRequest().splitsInsideCharacters > 5,
      `${lastRequest().splitsInsideCharacters} cuts inside characters`,
    );
  });

  test('the API key is never in a log line, a reply or a usage event', async () => {
    await usageEventFor(connection, (await chat(ask())).request_id);
    const events = await waitForUsageEvents(connection, 15);
    const everything = [worker.logs.text(), seen.join('\n'), JSON.stringify(events)].join('\n');
    assert.ok(worker.logs.lines.length > 15, `the worker logged ${worker.logs.lines.length} lines`);
    assert.ok(seen.length > 15 && events.length >= 15, `${seen.length} replies, ${events.length} events`);
    assert.ok(!everything.includes(KEY), 'the key leaked');
    assert.ok(!everything.includes(KEY.slice(0, 16)), 'a prefix of the key leaked');
    assert.ok(fake.messageRequests.every((request) => request.apiKey === KEY));
  });
});

describe('the anthropic adapter alone over loopback', () => {
  const call = {
    model: 'claude-direct',
    request: parseChatRequest({ model: 'x', messages: [{ role: 'user', content: 'Hi' }] }),
    signal: new AbortController().signal,
  };
  /** Runs `check` with an adapter of these settings over its own pool. */
  async function withProvider(
    settings: { apiKey?: string; apiVersion?: string; apiKeyEnv?: string },
    check: (provider: Provider) => Promise<void>,
  ): Promise<void> {
    const pool = createPool({ base_url: fake.baseUrl, connect_timeout_ms: 2_000, max_connections: 2 });
    try {
      await check(
        createAnthropicProvider({
          name: 'anthropic',
          type: 'anthropic',
          baseUrl: fake.baseUrl,
          dispatcher: pool,
          ...settings,
        }),
      );
    } finally {
      await pool.destroy();
    }
  }

  test('a configured api_version is the anthropic-version header', () =>
    withProvider({ apiKey: KEY, apiVersion: '2099-01-01' }, async (provider) => {
      fake.enqueue({ kind: 'ok', text: 'ok' });
      assert.equal((await provider.chat(call)).content, 'ok');
      assert.equal(lastRequest().anthropicVersion, '2099-01-01');
    }));

  test('a wrong key: the 401 is upstream_error, not retryable, with the provider message', () =>
    withProvider({ apiKey: 'sk-ant-wrong-key-999' }, async (provider) => {
      await assert.rejects(provider.chat(call), (error: unknown) => {
        assert.ok(error instanceof ProxyError);
        assert.deepEqual([error.code, error.retryable, error.upstreamStatus], ['upstream_error', false, 401]);
        assert.equal(error.message, 'anthropic: invalid x-api-key');
        return true;
      });
    }));

  test('a key variable that is unset: refused before sending', () =>
    withProvider({ apiKeyEnv: 'ANTHROPIC_UNSET_KEY' }, async (provider) => {
      const before = fake.requests.length;
      await assert.rejects(provider.chat(call), /ANTHROPIC_UNSET_KEY is not set/);
      assert.equal(fake.requests.length, before);
    }));
});
