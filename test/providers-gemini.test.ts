/**
 * The Gemini adapter end to end (issue 16): a real nats-server, a real worker, the typed client,
 * and the fake Gemini API on loopback. JSON and streamed answers, tools both ways, thoughts, usage
 * with cached tokens, safety blocks, n > 1 as candidateCount, errors, split UTF-8 delivery, and the
 * key kept out of sight.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import type { StreamChunk } from '../src/contract/reply.js';
import { geminiBehaviours, startFakeGemini, type FakeGemini } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import {
  startInProcessWorker,
  testConfig,
  usageEventFor,
  waitForUsageEvents,
  type InProcessWorker,
} from './helpers/worker.js';

const KEY = 'AIza-gemini-test-SECRET-0123456789';
const WRONG_KEY = 'AIza-wrong-SECRET-9876543210';

let nats: NatsServerHandle;
let fake: FakeGemini;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  nats = await startNatsServer();
  fake = await startFakeGemini({ requireApiKey: KEY });
  const provider = { type: 'gemini', base_url: fake.baseUrl };
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig(
      {},
      {
        providers: {
          gemini: { ...provider, api_key_env: 'GEMINI_TEST_KEY' },
          'gemini-misconfigured': { ...provider, api_key_env: 'GEMINI_WRONG_KEY' },
          // A 429 cools its deployment down for Google's retryDelay: one deployment per 429 test.
          'gemini-limited-json': { ...provider, api_key_env: 'GEMINI_TEST_KEY' },
          'gemini-limited-stream': { ...provider, api_key_env: 'GEMINI_TEST_KEY' },
        },
        models: {
          // $1 per 1k prompt tokens, $0.25 per 1k from Gemini's cache, $2 per 1k completion tokens.
          'gemini-test': {
            provider: 'gemini',
            physical_name: 'gemini-2.5-flash',
            cost_per_1k_prompt: 1,
            cost_per_1k_cached_prompt: 0.25,
            cost_per_1k_completion: 2,
          },
          'gemini-wrong-key': { provider: 'gemini-misconfigured', physical_name: 'gemini-2.5-flash' },
          'gemini-limited-json': { provider: 'gemini-limited-json', physical_name: 'gemini-2.5-flash' },
          'gemini-limited-stream': { provider: 'gemini-limited-stream', physical_name: 'gemini-2.5-flash' },
        },
      },
    ),
    env: { GEMINI_TEST_KEY: KEY, GEMINI_WRONG_KEY: WRONG_KEY },
  });
  connection = await connect({ servers: nats.url });
  client = createClient({ connection, timeoutMs: 10_000 });
});

after(async () => {
  await worker.stop();
  await connection.close();
  await fake.close();
  await nats.dispose();
});

const ask = (content: string, extra: Partial<ChatRequest> = {}): ChatRequest => ({
  model: 'gemini-test',
  messages: [{ role: 'user', content }],
  request_id: `gemini-${randomUUID()}`,
  ...extra,
});

async function streamed(request: ChatRequest, chunks: StreamChunk[] = []) {
  const stream = client.stream(request);
  for await (const chunk of stream) chunks.push(chunk);
  return stream.final;
}

/** POSTs a small Gemini request with plain node:http; resolves with the body's reads as they came. */
function rawReads(url: string, headers: Record<string, string>): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const reads: Buffer[] = [];
    const outgoing = httpRequest(url, { method: 'POST', headers, agent: false }, (incoming) => {
      incoming.on('data', (read: Buffer) => reads.push(read));
      incoming.on('end', () => resolve(reads));
    });
    outgoing.on('error', reject);
    outgoing.end(JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'x' }] }] }));
  });
}

/** Expects the call (JSON or streamed) to fail; returns the error and the chunks that came first. */
async function failure(request: ChatRequest): Promise<{ error: LlmProxyError; chunks: StreamChunk[] }> {
  const chunks: StreamChunk[] = [];
  try {
    await (request.stream === true ? streamed(request, chunks) : client.chat(request));
  } catch (error) {
    assert.ok(error instanceof LlmProxyError, String(error));
    return { error, chunks };
  }
  assert.fail('the call succeeded');
}

test('JSON answer: the key in x-goog-api-key (not the URL), the request in Gemini shape, the reply in ours', async () => {
  const before = fake.chatRequests.length;
  const reply = await client.chat({
    ...ask('Hello Gemini'),
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello Gemini' },
    ],
    max_tokens: 64,
    temperature: 0.3,
  });
  assert.equal(reply.content, 'echo: Hello Gemini');
  assert.equal(reply.finish_reason, 'stop');
  assert.equal(reply.provider, 'gemini');
  assert.equal(reply.model_resolved, 'gemini-2.5-flash');
  assert.ok(reply.usage.prompt_tokens > 0 && reply.usage.completion_tokens > 0);
  assert.equal(reply.tokens_estimated, undefined);
  const received = fake.chatRequests[before]!;
  assert.equal(received.path, '/v1beta/models/gemini-2.5-flash:generateContent');
  assert.equal(received.apiKey, KEY);
  assert.equal(received.headers.authorization, undefined);
  assert.deepEqual(received.body, {
    contents: [{ role: 'user', parts: [{ text: 'Hello Gemini' }] }],
    systemInstruction: { parts: [{ text: 'Be brief.' }] },
    generationConfig: { temperature: 0.3, maxOutputTokens: 64 },
  });
});

test('streamed answer delivered in slices of a few bytes, inside multi-byte characters too', async () => {
  const text = 'Grüße aus Köln 🌍 — 日本語のテキスト ✓ done';
  fake.enqueue({
    kind: 'ok',
    text,
    chunks: ['Grüße aus ', 'Köln 🌍 — ', '日本語のテキスト', ' ✓ done'],
    splitWrites: true,
  });
  const before = fake.chatRequests.length;
  const chunks: StreamChunk[] = [];
  const reply = await streamed(ask('unicode please', { stream: true }), chunks);
  assert.equal(chunks.map((chunk) => chunk.delta).join(''), text);
  assert.equal(reply.content, text);
  assert.equal(reply.finish_reason, 'stop');
  assert.equal(fake.chatRequests[before]!.path, '/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse');
  assert.equal(fake.chatRequests[before]!.apiKey, KEY);
  // What the worker read: the same reply taken raw from the fake arrives in many reads, some inside a character.
  fake.enqueue({ kind: 'ok', text, splitWrites: true });
  const reads = await rawReads(`${fake.baseUrl}/models/m:streamGenerateContent?alt=sse`, { 'x-goog-api-key': KEY });
  const whole = new TextDecoder('utf-8', { fatal: true });
  const cutInside = reads.filter((read) => {
    try {
      whole.decode(read);
      return false;
    } catch {
      return true;
    }
  });
  assert.ok(
    reads.length > 50 && cutInside.length > 0,
    `${reads.length} reads, ${cutInside.length} cut inside a character`,
  );
  assert.match(Buffer.concat(reads).toString('utf8'), /^data: \{"candidates":.*\}\r\n\r\ndata: /);
});

test('tools both ways: declarations and toolConfig out, parallel calls back, results returned as functionResponse', async () => {
  const tools = [
    {
      type: 'function' as const,
      function: {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      },
    },
  ];
  fake.enqueue({
    kind: 'ok',
    text: null,
    functionCalls: [
      { name: 'get_weather', args: { city: 'Paris' } },
      { name: 'get_weather', args: { city: 'Rome' } },
    ],
  });
  const before = fake.chatRequests.length;
  const first = await client.chat(ask('Weather in Paris and Rome?', { tools, tool_choice: 'required' }));
  assert.equal(first.content, null);
  assert.equal(first.finish_reason, 'tool_calls');
  assert.deepEqual(first.tool_calls, [
    { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
    { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
  ]);
  const sent = fake.chatRequests[before]!.body;
  assert.deepEqual(sent.tools, [
    {
      functionDeclarations: [
        { name: 'get_weather', description: 'Weather for a city', parametersJsonSchema: tools[0]!.function.parameters },
      ],
    },
  ]);
  assert.deepEqual(sent.toolConfig, { functionCallingConfig: { mode: 'ANY' } });

  fake.enqueue({ kind: 'ok', text: 'Paris 18°C, Rome 24°C.' });
  const second = await client.chat({
    ...ask('Weather in Paris and Rome?', { tools }),
    messages: [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      { role: 'assistant', content: null, tool_calls: first.tool_calls! },
      { role: 'tool', tool_call_id: 'call_0', content: '{"celsius":18}' },
      { role: 'tool', tool_call_id: 'call_1', content: '24 degrees' },
    ],
  });
  assert.equal(second.content, 'Paris 18°C, Rome 24°C.');
  assert.deepEqual(fake.chatRequests[before + 1]!.body.contents.slice(1), [
    {
      role: 'model',
      parts: [
        {
          functionCall: { name: 'get_weather', args: { city: 'Paris' } },
          thoughtSignature: 'skip_thought_signature_validator',
        },
        { functionCall: { name: 'get_weather', args: { city: 'Rome' } } },
      ],
    },
    {
      role: 'user',
      parts: [
        { functionResponse: { name: 'get_weather', response: { celsius: 18 } } },
        { functionResponse: { name: 'get_weather', response: { output: '24 degrees' } } },
      ],
    },
  ]);
});

test('function calls streamed, one per event: tool-call deltas with running indices, then tool_calls', async () => {
  fake.enqueue({
    kind: 'ok',
    text: null,
    functionCallsApart: true,
    functionCalls: [
      { name: 'lookup', args: { q: 'a' }, id: 'g-1' },
      { name: 'lookup', args: { q: 'b' } },
    ],
  });
  const chunks: StreamChunk[] = [];
  const reply = await streamed(ask('look both up', { stream: true }), chunks);
  const deltas = chunks.flatMap((chunk) => chunk.tool_calls ?? []);
  assert.deepEqual(deltas, [
    { index: 0, id: 'g-1', type: 'function', function: { name: 'lookup', arguments: '{"q":"a"}' } },
    { index: 1, id: 'call_1', type: 'function', function: { name: 'lookup', arguments: '{"q":"b"}' } },
  ]);
  assert.equal(reply.finish_reason, 'tool_calls');
  assert.equal(reply.tool_calls?.length, 2);
});

for (const stream of [false, true]) {
  const how = stream ? 'streamed' : 'JSON';

  test(`thoughts (${how}) come back as reasoning_content; reasoning_effort asks for them`, async () => {
    fake.enqueue({ kind: 'ok', thoughts: 'The user greets me. I greet back.', text: 'Hello!' });
    const before = fake.chatRequests.length;
    const chunks: StreamChunk[] = [];
    const request = ask('Hi', { stream, reasoning_effort: 'medium' });
    const reply = stream ? await streamed(request, chunks) : await client.chat(request);
    assert.equal(reply.reasoning_content, 'The user greets me. I greet back.');
    assert.equal(reply.content, 'Hello!');
    if (stream) assert.equal(chunks.map((chunk) => chunk.reasoning_delta ?? '').join(''), reply.reasoning_content);
    assert.deepEqual(fake.chatRequests[before]!.body.generationConfig, {
      thinkingConfig: { thinkingBudget: 8192, includeThoughts: true },
    });
  });

  test(`usage (${how}): thoughts are completion tokens, cached tokens priced apart and in the usage event`, async () => {
    fake.enqueue({
      kind: 'ok',
      text: 'ok',
      usage: { promptTokenCount: 1000, candidatesTokenCount: 60, thoughtsTokenCount: 40, cachedContentTokenCount: 800 },
    });
    const request = ask('count me', { stream });
    const reply = stream ? await streamed(request) : await client.chat(request);
    assert.deepEqual(reply.usage, { prompt_tokens: 1000, completion_tokens: 100, total_tokens: 1100 });
    // 200 × $1 + 800 × $0.25 + 100 × $2, per 1k.
    assert.equal(reply.cost_usd, 0.6);
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.prompt_tokens, 1000);
    assert.equal(event.completion_tokens, 100);
    assert.equal(event.cached_prompt_tokens, 800);
    assert.equal(event.tokens_estimated, false);
  });

  test(`a safety block (${how}): content_filter, content null, the reason in refusal; a blocked prompt too`, async () => {
    fake.enqueue(geminiBehaviours.safetyBlocked());
    const reply = stream ? await streamed(ask('something dangerous', { stream })) : await client.chat(ask('x'));
    assert.equal(reply.finish_reason, 'content_filter');
    assert.equal(reply.content, null);
    assert.equal(reply.refusal, 'blocked by Gemini: SAFETY (HARM_CATEGORY_DANGEROUS_CONTENT)');
    fake.enqueue(geminiBehaviours.promptBlocked());
    const blocked = stream ? await streamed(ask('worse', { stream })) : await client.chat(ask('worse'));
    assert.equal(blocked.finish_reason, 'content_filter');
    assert.equal(blocked.content, null);
    assert.equal(blocked.refusal, 'blocked by Gemini: SAFETY (HARM_CATEGORY_SEXUALLY_EXPLICIT)');
  });

  test(`n = 3 (${how}): candidateCount 3 sent, every candidate a choice; n above 8 refused, nothing sent`, async () => {
    const before = fake.chatRequests.length;
    const chunks: StreamChunk[] = [];
    const request = ask('Name three rivers', { n: 3, stream });
    const reply = stream ? await streamed(request, chunks) : await client.chat(request);
    assert.deepEqual(fake.chatRequests[before]!.body.generationConfig, { candidateCount: 3 });
    const expected = ['', ' #1', ' #2'].map((suffix) => `echo: Name three rivers${suffix}`);
    assert.equal(reply.content, expected[0]);
    assert.deepEqual(
      reply.choices?.map((choice) => [choice.index, choice.message.content, choice.finish_reason]),
      expected.map((content, index) => [index, content, 'stop']),
    );
    if (stream) {
      // Asked whole (Google streams one candidate only), relayed as one chunk per choice, each naming it.
      assert.match(fake.chatRequests[before]!.path, /:generateContent$/);
      assert.deepEqual(
        chunks.map((chunk) => chunk.index),
        [0, 1, 2],
      );
      for (const [index, content] of expected.entries())
        assert.equal(chunks.flatMap((chunk) => (chunk.index === index ? [chunk.delta] : [])).join(''), content);
    }
    const { error } = await failure(ask('too many', { n: 9, stream }));
    assert.equal(error.code, 'invalid_request');
    assert.equal(error.message, 'n: Gemini generates at most 8 candidates per request (got 9)');
    assert.equal(fake.chatRequests.length, before + 1, 'the refused request was not sent');
  });

  test(`429 (${how}): rate_limited, its wait from Google's RetryInfo`, async () => {
    fake.enqueue(geminiBehaviours.rateLimited('30s'));
    const { error } = await failure({
      ...ask('too many', { stream }),
      model: `gemini-limited-${stream ? 'stream' : 'json'}`,
    });
    assert.equal(error.code, 'rate_limited');
    assert.equal(error.retryable, true);
    assert.equal(error.retryAfterMs, 30_000);
    assert.match(error.message, /exceeded your current quota/);
  });
}

test('a mid-stream error after two chunks: the chunks, then an error; the usage event records it', async () => {
  fake.enqueue({
    kind: 'stream-error',
    afterChunks: 2,
    text: 'one two three four',
    code: 503,
    message: 'The model is overloaded.',
  });
  const request = ask('go', { stream: true });
  const { error, chunks } = await failure(request);
  assert.equal(chunks.map((chunk) => chunk.delta).join(''), 'one two ');
  assert.equal(error.code, 'upstream_error');
  assert.match(error.message, /The model is overloaded/);
  const event = await usageEventFor(connection, request.request_id!);
  assert.equal(event.status, 'error');
  assert.equal(event.error_code, 'upstream_error');
});

test('a stream that ends before its finish reason is an error, never a clean end', async () => {
  fake.enqueue({ kind: 'stream-cut', afterChunks: 3, text: 'a b c d e' });
  const { error, chunks } = await failure(ask('go', { stream: true }));
  assert.equal(chunks.length, 3);
  assert.equal(error.code, 'upstream_error');
  assert.match(error.message, /stream ended early/);
});

test("a key Google refuses (400 API_KEY_INVALID) is the deployment's fault: upstream_error, not invalid_request", async () => {
  for (const stream of [false, true]) {
    const { error } = await failure({ ...ask('hello', { stream }), model: 'gemini-wrong-key' });
    assert.equal(error.code, 'upstream_error');
    assert.match(error.message, /API key not valid/);
  }
  assert.ok(fake.chatRequests.some((request) => request.apiKey === WRONG_KEY));
});

test('the API key never reaches logs, replies or usage events, nor the URL', async () => {
  fake.enqueue(geminiBehaviours.badRequest(`Bad request with key=${KEY}`));
  const { error } = await failure(ask('echo my key'));
  assert.equal(error.code, 'invalid_request');
  assert.ok(!error.message.includes(KEY), error.message);
  const logs = worker.logs.text();
  assert.ok(logs.length > 0);
  for (const key of [KEY, WRONG_KEY]) {
    assert.ok(!logs.includes(key), 'a key in the logs');
    assert.ok(!fake.requests.some((request) => request.path.includes(key)), 'a key in a URL');
  }
  const all = JSON.stringify(await waitForUsageEvents(connection, 1));
  assert.ok(!all.includes(KEY) && !all.includes(WRONG_KEY), 'a key in a usage event');
});
