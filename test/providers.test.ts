/**
 * The provider adapters over loopback HTTP against the fake providers, for
 * both provider types: success, every failure mode, streaming, aborts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Pool } from 'undici';
import { ProxyError } from '../src/contract/errors.js';
import { parseChatRequest, type ChatRequest } from '../src/contract/request.js';
import { parseConfigText } from '../src/config/load.js';
import { createPool, createProviders } from '../src/providers/registry.js';
import { createOllamaProvider } from '../src/providers/ollama/adapter.js';
import { createOpenAICompatibleProvider } from '../src/providers/openai/adapter.js';
import type { Provider, ProviderResponse, ProviderStreamEvent } from '../src/providers/types.js';
import {
  fakeBehaviours,
  startFakeOllama,
  startFakeOpenAI,
  type FakeBehaviour,
  type FakeProvider,
  type StreamQuirk,
} from './fakes/index.js';
import { freePort } from './helpers/ports.js';

const API_KEY = 'sk-test-0123456789abcdef';

interface Kind {
  type: 'openai' | 'ollama';
  start: (options?: Parameters<typeof startFakeOpenAI>[0]) => Promise<FakeProvider>;
  create: typeof createOpenAICompatibleProvider;
  /** The provider's own wording for a prompt that does not fit. */
  contextLengthError: ReturnType<typeof fakeBehaviours.contextLengthExceeded>;
}

const KINDS: Kind[] = [
  {
    type: 'openai',
    start: startFakeOpenAI,
    create: createOpenAICompatibleProvider,
    contextLengthError: fakeBehaviours.contextLengthExceeded(),
  },
  {
    type: 'ollama',
    start: startFakeOllama,
    create: createOllamaProvider,
    contextLengthError: fakeBehaviours.ollamaContextLengthExceeded(),
  },
];

interface PoolTimeouts {
  headers_timeout_ms?: number;
  body_timeout_ms?: number;
}

function makeProvider(
  kind: Kind,
  baseUrl: string,
  timeouts: PoolTimeouts = {},
  apiKey: string | undefined = API_KEY,
): { provider: Provider; pool: Pool } {
  const pool = createPool({
    base_url: baseUrl,
    connect_timeout_ms: 2_000,
    max_connections: 8,
    api_key_env: undefined,
    ...timeouts,
  });
  const provider = kind.create({ name: `fake-${kind.type}`, type: kind.type, baseUrl, apiKey, dispatcher: pool });
  return { provider, pool };
}

function chatRequest(extra: Record<string, unknown> = {}): ChatRequest {
  return parseChatRequest({ model: 'logical-model', messages: [{ role: 'user', content: 'Hello there!' }], ...extra });
}

const neverAborted = (): AbortSignal => new AbortController().signal;

async function collect(events: AsyncIterable<ProviderStreamEvent>): Promise<ProviderStreamEvent[]> {
  const collected: ProviderStreamEvent[] = [];
  for await (const event of events) collected.push(event);
  return collected;
}

/** Collects until the stream throws; returns what came before and the error. */
async function collectUntilError(
  events: AsyncIterable<ProviderStreamEvent>,
): Promise<{ events: ProviderStreamEvent[]; error: ProxyError }> {
  const collected: ProviderStreamEvent[] = [];
  try {
    for await (const event of events) collected.push(event);
  } catch (error) {
    assert.ok(error instanceof ProxyError, `expected a ProxyError, got ${String(error)}`);
    return { events: collected, error };
  }
  assert.fail(`the stream ended without an error after ${collected.length} events`);
}

function contentOf(events: ProviderStreamEvent[]): string {
  return events.map((event) => (event.type === 'delta' ? (event.content ?? '') : '')).join('');
}

function assertProxyError(
  error: unknown,
  expected: {
    code: string;
    retryable: boolean;
    upstreamStatus?: number | undefined;
    retryAfterMs?: number;
    contextLengthExceeded?: boolean;
  },
): ProxyError {
  assert.ok(error instanceof ProxyError, `expected a ProxyError, got ${String(error)}`);
  assert.equal(error.code, expected.code, error.message);
  assert.equal(error.retryable, expected.retryable, `retryable for ${error.message}`);
  if ('upstreamStatus' in expected) assert.equal(error.upstreamStatus, expected.upstreamStatus);
  if (expected.retryAfterMs !== undefined) {
    assert.ok(error.retryAfterMs !== undefined, 'retryAfterMs is set');
    // An HTTP date has one-second resolution and the clock moves on (more so on a loaded machine).
    assert.ok(Math.abs(error.retryAfterMs - expected.retryAfterMs) <= 3_000, `retryAfterMs ${error.retryAfterMs}`);
  }
  if (expected.contextLengthExceeded !== undefined)
    assert.equal(error.contextLengthExceeded, expected.contextLengthExceeded);
  assert.ok(!error.message.includes(API_KEY), `the key leaked into: ${error.message}`);
  return error;
}

for (const kind of KINDS) {
  describe(`${kind.type} adapter over loopback`, () => {
    let fake: FakeProvider;
    let provider: Provider;
    let pool: Pool;

    before(async () => {
      fake = await kind.start({ requireApiKey: API_KEY });
      ({ provider, pool } = makeProvider(kind, fake.baseUrl));
    });
    after(async () => {
      await pool.destroy();
      await fake.close();
    });

    const call = (request: ChatRequest = chatRequest(), signal: AbortSignal = neverAborted()) => ({
      model: 'physical-model',
      request,
      signal,
    });

    test('chat: content, usage, resolved model; the key reaches the provider as a Bearer header', async () => {
      fake.clearQueue();
      const before = fake.chatRequests.length;
      const response = await provider.chat(call());
      assert.equal(response.content, 'echo: Hello there!');
      assert.equal(response.finishReason, 'stop');
      assert.equal(response.modelResolved, 'physical-model');
      assert.ok(response.usage !== undefined && response.usage.promptTokens > 0 && response.usage.completionTokens > 0);
      const received = fake.chatRequests[before];
      assert.ok(received !== undefined);
      assert.equal(received.authorization, `Bearer ${API_KEY}`);
      assert.equal(received.body.model, 'physical-model');
      assert.equal(received.body.stream, kind.type === 'ollama' ? false : undefined);
      assert.ok(!('metadata' in received.body) && !('request_id' in received.body));
    });

    test('chat: parameters reach the provider in its own shape', async () => {
      const before = fake.chatRequests.length;
      await provider.chat(
        call(
          chatRequest({
            max_tokens: 42,
            temperature: 0.3,
            stop: 'END',
            metadata: { agent_id: 'agent:x' },
            request_id: 'r-1',
          }),
        ),
      );
      const body = fake.chatRequests[before]?.body;
      if (kind.type === 'openai') {
        assert.equal(body.max_tokens, 42);
        assert.equal(body.temperature, 0.3);
        assert.equal(body.stop, 'END');
      } else {
        assert.deepEqual(body.options, { temperature: 0.3, num_predict: 42, stop: ['END'] });
      }
      assert.ok(!('metadata' in body) && !('request_id' in body));
    });

    test('chat: tool calls, reasoning content and a custom model name', async () => {
      fake.enqueue({
        kind: 'ok',
        content: null,
        reasoningContent: 'The user wants the weather.',
        toolCalls: [{ name: 'get_weather', arguments: { city: 'Paris' } }],
        model: 'served-by-this-one',
        usage: { promptTokens: 11, completionTokens: 22 },
      });
      const response: ProviderResponse = await provider.chat(call());
      assert.equal(response.content, null);
      assert.equal(response.reasoningContent, 'The user wants the weather.');
      assert.equal(response.finishReason, 'tool_calls');
      assert.equal(response.modelResolved, 'served-by-this-one');
      assert.deepEqual(response.usage, { promptTokens: 11, completionTokens: 22 });
      assert.equal(response.toolCalls?.length, 1);
      assert.equal(response.toolCalls?.[0]?.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(response.toolCalls?.[0]?.function.arguments ?? ''), { city: 'Paris' });
      assert.match(response.toolCalls?.[0]?.id ?? '', /^call_/);
    });

    test('chat: no usage reported gives undefined usage', async () => {
      fake.enqueue({ kind: 'ok', content: 'quiet', usage: null });
      const response = await provider.chat(call());
      assert.equal(response.content, 'quiet');
      assert.equal(response.usage, undefined);
    });

    test('chat: HTTP failures map to the right code, status, retryable and retryAfterMs', async () => {
      const inThirtySeconds = new Date(Date.now() + 30_000);
      const cases: Array<[string, Parameters<FakeProvider['enqueue']>[0], Parameters<typeof assertProxyError>[1]]> = [
        [
          '429 with seconds',
          fakeBehaviours.rateLimited(3),
          { code: 'rate_limited', retryable: true, upstreamStatus: 429, retryAfterMs: 3_000 },
        ],
        [
          '429 with a date',
          fakeBehaviours.rateLimited(inThirtySeconds),
          { code: 'rate_limited', retryable: true, upstreamStatus: 429, retryAfterMs: 30_000 },
        ],
        [
          '429 with retry-after-ms',
          { kind: 'status', status: 429, headers: { 'retry-after-ms': '1500' } },
          { code: 'rate_limited', retryable: true, retryAfterMs: 1_500 },
        ],
        ['500', fakeBehaviours.serverError(500), { code: 'upstream_error', retryable: true, upstreamStatus: 500 }],
        ['503', fakeBehaviours.serverError(503), { code: 'upstream_error', retryable: true, upstreamStatus: 503 }],
        [
          '400 context length',
          kind.contextLengthError,
          { code: 'invalid_request', retryable: false, upstreamStatus: 400, contextLengthExceeded: true },
        ],
        [
          '400 other',
          { kind: 'status', status: 400, message: 'temperature is out of range' },
          { code: 'invalid_request', retryable: false, contextLengthExceeded: false },
        ],
        ['401', fakeBehaviours.unauthorized(), { code: 'upstream_error', retryable: false, upstreamStatus: 401 }],
        [
          '404',
          { kind: 'status', status: 404, message: 'model "physical-model" not found, try pulling it first' },
          { code: 'upstream_error', retryable: false, upstreamStatus: 404 },
        ],
        ['408', { kind: 'status', status: 408 }, { code: 'upstream_timeout', retryable: true, upstreamStatus: 408 }],
        ['409', { kind: 'status', status: 409 }, { code: 'upstream_error', retryable: true, upstreamStatus: 409 }],
        [
          '413',
          { kind: 'status', status: 413, body: 'Request Entity Too Large' },
          { code: 'payload_too_large', retryable: false, upstreamStatus: 413 },
        ],
        [
          '502 with an HTML page',
          { kind: 'status', status: 502, body: '<html><body>Bad Gateway</body></html>' },
          { code: 'upstream_error', retryable: true },
        ],
        [
          '500 with an empty body',
          { kind: 'empty-body', status: 500 },
          { code: 'upstream_error', retryable: true, upstreamStatus: 500 },
        ],
        ['200 with malformed JSON', fakeBehaviours.malformedJson(), { code: 'upstream_error', retryable: true }],
        ['200 with an empty body', fakeBehaviours.emptyBody(), { code: 'upstream_error', retryable: true }],
        [
          'reset before headers',
          fakeBehaviours.reset(),
          { code: 'upstream_error', retryable: true, upstreamStatus: undefined },
        ],
      ];
      for (const [name, behaviour, expected] of cases) {
        fake.enqueue(behaviour);
        const error = await provider.chat(call()).then(
          () => assert.fail(`${name}: expected a failure`),
          (caught: unknown) => caught,
        );
        const mapped = assertProxyError(error, expected);
        assert.ok(mapped.message.startsWith(`fake-${kind.type}: `), `${name}: ${mapped.message}`);
      }
    });

    test('chat: a 1 MB error page is read only in part (the message is cut), and the next call on the pool works', async () => {
      fake.enqueue({ kind: 'status', status: 503, body: `<html>${'Service Unavailable '.repeat(50_000)}</html>` });
      const error = await provider.chat(call()).then(
        () => assert.fail('expected a failure'),
        (caught: unknown) => caught,
      );
      const mapped = assertProxyError(error, { code: 'upstream_error', retryable: true, upstreamStatus: 503 });
      assert.ok(mapped.message.length < 1_000, `message of ${mapped.message.length} characters`);
      const response = await provider.chat(call());
      assert.ok(response.content !== null && response.content.length > 0);
    });

    test('an error page cut short still maps by its status: a 429 stays rate_limited with its Retry-After, for chat and stream', async () => {
      const cut = { ...(fakeBehaviours.rateLimited(2) as Extract<FakeBehaviour, { kind: 'status' }>), cutBody: true };
      fake.enqueue(cut, cut);
      await assert.rejects(provider.chat(call(chatRequest())), (error: unknown) => {
        assertProxyError(error, { code: 'rate_limited', retryable: true, upstreamStatus: 429, retryAfterMs: 2_000 });
        return true;
      });
      const { error } = await collectUntilError(provider.stream(call(chatRequest({ stream: true }))));
      assertProxyError(error, { code: 'rate_limited', retryable: true, upstreamStatus: 429, retryAfterMs: 2_000 });
    });

    test('chat: the provider message is kept', async () => {
      fake.enqueue({ kind: 'status', status: 400, message: 'temperature is out of range' });
      await assert.rejects(provider.chat(call()), { message: `fake-${kind.type}: temperature is out of range` });
    });

    test('chat: a cut or truncated JSON body is an upstream_error', async () => {
      fake.enqueue({ kind: 'stream-cut', afterChunks: 0 }, { kind: 'stream-end-early', afterChunks: 0 });
      await assert.rejects(
        provider.chat(call()),
        (error: unknown) => !!assertProxyError(error, { code: 'upstream_error', retryable: true }),
      );
      await assert.rejects(
        provider.chat(call()),
        (error: unknown) => !!assertProxyError(error, { code: 'upstream_error', retryable: true }),
      );
    });

    test('chat: abort while the provider hangs rethrows the ProxyError reason and closes the connection', async () => {
      const closedBefore = fake.closedByClient;
      fake.enqueue(fakeBehaviours.hang());
      const controller = new AbortController();
      const pending = provider.chat(call(chatRequest(), controller.signal));
      await fake.waitForRequests(fake.requests.length + 1);
      const reason = new ProxyError('upstream_timeout', 'deadline of 1000 ms reached');
      controller.abort(reason);
      await assert.rejects(pending, (error: unknown) => error === reason);
      await fake.waitForClosedByClient(closedBefore + 1);
    });

    test('chat: abort without a ProxyError reason is cancelled; an already aborted signal sends nothing', async () => {
      fake.enqueue(fakeBehaviours.hang());
      const controller = new AbortController();
      const requestsBefore = fake.requests.length;
      const pending = provider.chat(call(chatRequest(), controller.signal));
      await fake.waitForRequests(requestsBefore + 1);
      controller.abort();
      await assert.rejects(
        pending,
        (error: unknown) => !!assertProxyError(error, { code: 'cancelled', retryable: false }),
      );

      const aborted = new AbortController();
      aborted.abort(new ProxyError('cancelled', 'client went away'));
      const sentBefore = fake.requests.length;
      await assert.rejects(provider.chat(call(chatRequest(), aborted.signal)), {
        code: 'cancelled',
        message: 'client went away',
      });
      assert.equal(fake.requests.length, sentBefore);
    });

    test('stream: deltas in order, then finish, then usage', async () => {
      fake.enqueue({ kind: 'ok', content: 'one two three four five', chunkIntervalMs: 5 });
      const events = await collect(provider.stream(call(chatRequest({ stream: true }))));
      assert.deepEqual(events[0], { type: 'model', modelResolved: 'physical-model' });
      assert.equal(contentOf(events), 'one two three four five');
      assert.equal(events.filter((event) => event.type === 'delta').length, 5);
      const tail = events.slice(-2);
      assert.deepEqual(tail[0], { type: 'finish', finishReason: 'stop' });
      assert.equal(tail[1]?.type, 'usage');
      const body = fake.chatRequests.at(-1)?.body;
      assert.equal(body.stream, true);
      if (kind.type === 'openai') assert.deepEqual(body.stream_options, { include_usage: true });
    });

    test('stream: usage absent gives no usage event but a clean end', async () => {
      fake.enqueue({ kind: 'ok', content: 'a b', usage: null });
      const events = await collect(provider.stream(call(chatRequest({ stream: true }))));
      assert.equal(contentOf(events), 'a b');
      assert.equal(events.at(-1)?.type, 'finish');
      assert.ok(!events.some((event) => event.type === 'usage'));
    });

    test('stream: reasoning and tool calls arrive as deltas; finish is tool_calls', async () => {
      fake.enqueue({
        kind: 'ok',
        content: null,
        reasoningContent: 'let me think',
        toolCalls: [{ name: 'lookup', arguments: { q: 'x' } }],
      });
      const events = await collect(provider.stream(call(chatRequest({ stream: true }))));
      const reasoning = events.map((event) => (event.type === 'delta' ? (event.reasoningContent ?? '') : '')).join('');
      assert.equal(reasoning, 'let me think');
      const toolDeltas = events.flatMap((event) => (event.type === 'delta' ? (event.toolCalls ?? []) : []));
      assert.equal(toolDeltas[0]?.function?.name, 'lookup');
      assert.match(toolDeltas[0]?.id ?? '', /^call_/);
      const args = toolDeltas.map((delta) => delta.function?.arguments ?? '').join('');
      assert.deepEqual(JSON.parse(args), { q: 'x' });
      assert.ok(events.some((event) => event.type === 'finish' && event.finishReason === 'tool_calls'));
    });

    test('stream: quirks of real streams give the same result', async () => {
      const content = 'Héllo 🌍, ça va? Ünïcödé splits everywhere.';
      fake.enqueue({ kind: 'ok', content });
      const expected = await collect(provider.stream(call(chatRequest({ stream: true }))));
      const quirkSets: StreamQuirk[][] = [
        ['split-writes'],
        ['coalesce'],
        ['comments'],
        ['crlf'],
        ['empty-data'],
        ['no-space'],
        ['split-writes', 'coalesce', 'comments', 'crlf', 'empty-data', 'no-space'],
      ];
      for (const quirks of quirkSets) {
        fake.enqueue({ kind: 'ok', content, quirks });
        const events = await collect(provider.stream(call(chatRequest({ stream: true }))));
        assert.equal(contentOf(events), content, quirks.join('+'));
        assert.deepEqual(
          events.filter((event) => event.type !== 'delta'),
          expected.filter((event) => event.type !== 'delta'),
          quirks.join('+'),
        );
      }
    });

    test('stream: cut mid-stream is an upstream_error after the first deltas', async () => {
      fake.enqueue({ kind: 'stream-cut', afterChunks: 2, content: 'a b c d e f' });
      const { events, error } = await collectUntilError(provider.stream(call(chatRequest({ stream: true }))));
      assertProxyError(error, { code: 'upstream_error', retryable: true });
      assert.equal(contentOf(events), 'a b ');
      assert.ok(!events.some((event) => event.type === 'finish'));
    });

    test('stream: a clean end without finish or end marker is "stream ended early"', async () => {
      fake.enqueue({ kind: 'stream-end-early', afterChunks: 1, content: 'a b c' });
      const { events, error } = await collectUntilError(provider.stream(call(chatRequest({ stream: true }))));
      assertProxyError(error, { code: 'upstream_error', retryable: true });
      assert.match(error.message, /stream ended early/);
      assert.equal(contentOf(events), 'a ');
    });

    test('stream: an error event mid-stream throws with the provider message', async () => {
      fake.enqueue({
        kind: 'stream-error',
        afterChunks: 1,
        content: 'a b c',
        message: 'model overloaded, token sk-leaked-000000',
      });
      const { events, error } = await collectUntilError(provider.stream(call(chatRequest({ stream: true }))));
      assertProxyError(error, { code: 'upstream_error', retryable: true });
      assert.match(error.message, /model overloaded/);
      assert.ok(!error.message.includes('sk-leaked-000000'));
      assert.equal(contentOf(events), 'a ');
    });

    test('stream: HTTP errors before the stream starts map as for chat', async () => {
      fake.enqueue(fakeBehaviours.rateLimited(2));
      const { error } = await collectUntilError(provider.stream(call(chatRequest({ stream: true }))));
      assertProxyError(error, { code: 'rate_limited', retryable: true, upstreamStatus: 429, retryAfterMs: 2_000 });
    });

    test('stream: abort mid-stream rethrows the reason and the provider sees the connection closed', async () => {
      const closedBefore = fake.closedByClient;
      fake.enqueue({ kind: 'stream-stall', afterChunks: 2, content: 'a b c d' });
      const controller = new AbortController();
      const reason = new ProxyError('cancelled', 'client went away');
      const collected: ProviderStreamEvent[] = [];
      await assert.rejects(
        (async () => {
          for await (const event of provider.stream(call(chatRequest({ stream: true }), controller.signal))) {
            collected.push(event);
            if (contentOf(collected) === 'a b ') controller.abort(reason);
          }
        })(),
        (error: unknown) => error === reason,
      );
      await fake.waitForClosedByClient(closedBefore + 1);
    });

    test('stream: a consumer that stops reading early closes the upstream connection', async () => {
      const closedBefore = fake.closedByClient;
      fake.enqueue({ kind: 'ok', content: 'a b c d e f g h', chunkIntervalMs: 50 });
      for await (const event of provider.stream(call(chatRequest({ stream: true })))) {
        if (event.type === 'delta') break;
      }
      await fake.waitForClosedByClient(closedBefore + 1);
    });

    test('stream: a consumer that falls behind gets every event in order (reading pauses and resumes)', async () => {
      // 3,000 chunks at once, read only after they have all been sent: more than the 1,024 unread
      // events at which the adapter stops reading from the socket, so reading must resume.
      const words = Array.from({ length: 3_000 }, (_, index) => `w${index} `).join('');
      fake.enqueue({ kind: 'ok', content: words, chunkIntervalMs: 0 });
      const iterator = provider.stream(call(chatRequest({ stream: true })))[Symbol.asyncIterator]();
      const first = await iterator.next();
      await new Promise((resolve) => setTimeout(resolve, 200));
      const events = [first.value as ProviderStreamEvent];
      for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) events.push(next.value);
      assert.equal(contentOf(events), words);
      assert.equal(events.filter((event) => event.type === 'delta').length, 3_000);
      assert.deepEqual(events.at(-2), { type: 'finish', finishReason: 'stop' });
    });

    test('stream: return() before the first next() ends it at once, closes what was sent, and the pool goes on working', async () => {
      const requestsBefore = fake.chatRequests.length;
      const closedBefore = fake.closedByClient;
      fake.enqueue({ kind: 'ok', content: 'never read', chunkIntervalMs: 50 });
      const iterator = provider.stream(call(chatRequest({ stream: true })))[Symbol.asyncIterator]();
      assert.deepEqual(await iterator.return!(), { done: true, value: undefined });
      assert.deepEqual(await iterator.next(), { done: true, value: undefined });
      await new Promise((resolve) => setTimeout(resolve, 100));
      // Over a warm connection the request is on the wire before return() runs: then the connection closes.
      if (fake.chatRequests.length > requestsBefore) await fake.waitForClosedByClient(closedBefore + 1);
      fake.clearQueue();
      fake.enqueue({ kind: 'ok', content: 'after that', chunkIntervalMs: 0 });
      assert.equal(contentOf(await collect(provider.stream(call(chatRequest({ stream: true }))))), 'after that');
    });

    test('a wrong key gives a 401 upstream_error that does not repeat the key', async () => {
      const wrongKey = 'sk-wrong-key-fedcba9876543210';
      const { provider: wrong, pool: wrongPool } = makeProvider(kind, fake.baseUrl, {}, wrongKey);
      try {
        const error = await wrong.chat(call()).catch((caught: unknown) => caught);
        assertProxyError(error, { code: 'upstream_error', retryable: false, upstreamStatus: 401 });
        assert.ok(!(error as Error).message.includes(wrongKey), (error as Error).message);
        assert.equal(fake.chatRequests.at(-1)?.authorization, `Bearer ${wrongKey}`);
      } finally {
        await wrongPool.destroy();
      }
    });

    test('timeouts: slow headers and a silent body are upstream_timeout', async () => {
      const { provider: impatient, pool: impatientPool } = makeProvider(kind, fake.baseUrl, {
        headers_timeout_ms: 300,
        body_timeout_ms: 300,
      });
      try {
        fake.enqueue(fakeBehaviours.slowHeaders(3_000));
        assertProxyError(await impatient.chat(call()).catch((caught: unknown) => caught), {
          code: 'upstream_timeout',
          retryable: true,
        });
        fake.enqueue({ kind: 'stream-stall', afterChunks: 1, content: 'a b c' });
        const { events, error } = await collectUntilError(impatient.stream(call(chatRequest({ stream: true }))));
        assertProxyError(error, { code: 'upstream_timeout', retryable: true });
        assert.equal(contentOf(events), 'a ');
      } finally {
        await impatientPool.destroy();
      }
    });
  });
}

describe('connection failures and configuration', () => {
  test('nothing listening: no_provider_available, retryable', async () => {
    const port = await freePort();
    for (const kind of KINDS) {
      const baseUrl = `http://127.0.0.1:${port}${kind.type === 'openai' ? '/v1' : ''}`;
      const { provider, pool } = makeProvider(kind, baseUrl);
      try {
        const error = await provider
          .chat({ model: 'm', request: chatRequest(), signal: neverAborted() })
          .catch((caught: unknown) => caught);
        assertProxyError(error, { code: 'no_provider_available', retryable: true, upstreamStatus: undefined });
      } finally {
        await pool.destroy();
      }
    }
  });

  test('an api_key_env that is not set fails without calling the provider', async () => {
    const fake = await startFakeOpenAI();
    const pool = createPool({
      base_url: fake.baseUrl,
      connect_timeout_ms: 1_000,
      max_connections: 1,
      api_key_env: 'UNSET_TEST_KEY',
    });
    try {
      const provider = createOpenAICompatibleProvider({
        name: 'openai',
        type: 'openai',
        baseUrl: fake.baseUrl,
        apiKey: undefined,
        apiKeyEnv: 'UNSET_TEST_KEY',
        dispatcher: pool,
      });
      const error = await provider
        .chat({ model: 'm', request: chatRequest(), signal: neverAborted() })
        .catch((caught: unknown) => caught);
      assertProxyError(error, { code: 'upstream_error', retryable: false });
      assert.match((error as Error).message, /UNSET_TEST_KEY/);
      assert.equal(fake.requests.length, 0);
    } finally {
      await pool.destroy();
      await fake.close();
    }
  });

  test('registry: createProviders builds both types from config, with configured headers, and closes its pools', async () => {
    const openai = await startFakeOpenAI({ requireApiKey: API_KEY });
    const ollama = await startFakeOllama();
    const config = parseConfigText(
      [
        'providers:',
        `  remote: {base_url: "${openai.baseUrl}", api_key_env: TEST_PROVIDER_KEY, headers: {OpenAI-Organization: org-test}}`,
        `  local: {type: ollama, base_url: "${ollama.baseUrl}"}`,
        'models:',
        '  a: {provider: remote, physical_name: gpt-test}',
        '  b: {provider: local, physical_name: "llama3.2:3b"}',
      ].join('\n'),
      'test-config',
      { TEST_PROVIDER_KEY: API_KEY },
    );
    const set = createProviders(config);
    try {
      assert.deepEqual([...set.providers.keys()].sort(), ['local', 'remote']);
      assert.equal(set.providers.get('remote')?.type, 'openai');
      assert.equal(set.providers.get('local')?.type, 'ollama');
      const remote = await set.providers
        .get('remote')!
        .chat({ model: 'gpt-test', request: chatRequest(), signal: neverAborted() });
      assert.equal(remote.content, 'echo: Hello there!');
      assert.equal(openai.requests[0]?.headers['openai-organization'], 'org-test');
      const local = await collect(
        set.providers
          .get('local')!
          .stream({ model: 'llama3.2:3b', request: chatRequest({ stream: true }), signal: neverAborted() }),
      );
      assert.equal(contentOf(local), 'echo: Hello there!');
      assert.equal(ollama.requests[0]?.body.model, 'llama3.2:3b');
    } finally {
      await set.close();
      await set.close();
      await openai.close();
      await ollama.close();
    }
  });
});

describe('connection reuse', () => {
  for (const kind of KINDS) {
    test(`${kind.type}: keep-alive reuses connections, after JSON replies and after whole streams, within max_connections`, async () => {
      const fake = await kind.start();
      const { provider, pool } = makeProvider(kind, fake.baseUrl);
      try {
        for (let index = 0; index < 5; index += 1) {
          await provider.chat({ model: 'm', request: chatRequest(), signal: neverAborted() });
          await collect(
            provider.stream({ model: 'm', request: chatRequest({ stream: true }), signal: neverAborted() }),
          );
        }
        const sequentialPorts = new Set(fake.requests.map((record) => record.remotePort));
        // undici frees a connection a moment after its body has been read, so a call made right after may take a
        // second one; what matters is that ten calls do not open ten (or even three) connections.
        assert.ok(
          sequentialPorts.size <= 2,
          `ten calls one after the other reuse their connections (saw ${sequentialPorts.size})`,
        );

        fake.setDefault({ kind: 'ok', chunkIntervalMs: 5 });
        await Promise.all(
          Array.from({ length: 40 }, (_, index) =>
            index % 2 === 0
              ? provider.chat({ model: 'm', request: chatRequest(), signal: neverAborted() })
              : collect(
                  provider.stream({ model: 'm', request: chatRequest({ stream: true }), signal: neverAborted() }),
                ),
          ),
        );
        const allPorts = new Set(fake.requests.map((record) => record.remotePort));
        assert.ok(allPorts.size <= 8, `at most max_connections (8) connections, saw ${allPorts.size}`);
        assert.equal(fake.requests.length, 50);
      } finally {
        await pool.destroy();
        await fake.close();
      }
    });
  }
});

describe('raw streams the fakes do not script', () => {
  /** A one-off loopback server that answers every request with the given body pieces, then ends. */
  async function rawServer(
    contentType: string,
    pieces: string[],
  ): Promise<{ url: string; close: () => Promise<void> }> {
    const { createServer } = await import('node:http');
    const server = createServer((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(200, { 'content-type': contentType });
        for (const piece of pieces) response.write(piece);
        response.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as { port: number }).port;
    return {
      url: `http://127.0.0.1:${port}`,
      close: () => new Promise<void>((resolve) => server.close(() => resolve())),
    };
  }

  const cases: Array<{ kind: Kind; contentType: string; path: string; halfEvent: string[]; badEvent: string[] }> = [
    {
      kind: KINDS[0]!,
      contentType: 'text/event-stream',
      path: '/v1',
      halfEvent: [
        'data: {"model":"m","choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        'data: {"model":"m","choi',
      ],
      badEvent: [
        'data: {"model":"m","choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        'data: {not json}\n\n',
        'data: [DONE]\n\n',
      ],
    },
    {
      kind: KINDS[1]!,
      contentType: 'application/x-ndjson',
      path: '',
      halfEvent: ['{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n', '{"model":"m","mess'],
      badEvent: [
        '{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n',
        '{not json}\n',
        '{"done":true}\n',
      ],
    },
  ];

  for (const { kind, contentType, path, halfEvent, badEvent } of cases) {
    test(`${kind.type}: a body that ends inside an event is "stream ended early"; a bad event is malformed JSON`, async () => {
      for (const [pieces, expected] of [
        [halfEvent, /stream ended early/],
        [badEvent, /malformed JSON in stream/],
      ] as const) {
        const server = await rawServer(contentType, [...pieces]);
        const { provider, pool } = makeProvider(kind, server.url + path);
        try {
          const { events, error } = await collectUntilError(
            provider.stream({ model: 'm', request: chatRequest({ stream: true }), signal: neverAborted() }),
          );
          assertProxyError(error, { code: 'upstream_error', retryable: true });
          assert.match(error.message, expected);
          assert.equal(contentOf(events), 'a', 'what came before the failure was delivered');
        } finally {
          await pool.destroy();
          await server.close();
        }
      }
    });
  }
});
