/**
 * OpenAI's API on the front door (issue 14), through real clients nobody here wrote: the official
 * `openai` package and the Vercel AI SDK (`ai` with `@ai-sdk/openai-compatible`), over a real front
 * door, real NATS, a real worker and the fake OpenAI provider. Each client only changes its base URL.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { APICallError, generateText, streamText, tool } from 'ai';
import { z } from 'zod';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { connectToNats } from '../src/bus/connect.js';
import { httpSchema } from '../src/config/http-schema.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { fakeBehaviours, startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import {
  startInProcessWorker,
  testConfig,
  TEST_API_KEY,
  usageEventFor,
  type InProcessWorker,
} from './helpers/worker.js';

const SECRET = 'sdk-front-door-s3cret-0a4b';
const SLASHED_MODEL = 'meta-llama/Llama-3.3-70B-Instruct';

let nats: NatsServerHandle;
let upstream: FakeOpenAI;
let worker: InProcessWorker;
let frontDoor: FrontDoor;
let bus: NatsConnection;
let sdk: OpenAI;

/** Our request id, from OpenAI's `chatcmpl-<request_id>`. */
const requestIdOf = (id: string) => {
  assert.match(id, /^chatcmpl-/);
  return id.slice('chatcmpl-'.length);
};

const lastUpstreamBody = () => upstream.chatRequests.at(-1)!.body as Record<string, unknown>;

before(async () => {
  nats = await startNatsServer();
  upstream = await startFakeOpenAI();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    // A 429 takes its deployment out for the longer of Retry-After and the cooldown: keep both short here.
    config: testConfig(
      { openai: upstream.baseUrl },
      {
        routing: { retry: { attempts: 1 }, cooldown: { failures: 1_000, duration_ms: 200 } },
        // A name with a slash, as Hugging Face's: GET /v1/models/{id} must take it whole.
        models: { [SLASHED_MODEL]: { provider: 'openai', physical_name: 'llama-3.3-70b' } },
      },
    ),
    env: { LLM_PROXY_SECRET: SECRET, FAKE_OPENAI_KEY: TEST_API_KEY },
  });
  bus = await connect({ servers: nats.url });
  frontDoor = await startFrontDoor({
    // A stream refused before its first chunk is a plain error with its status only while the front
    // door still waits for that chunk (up to one heartbeat): generous here, so that a busy machine
    // does not turn the refusals below into mid-stream errors.
    http: httpSchema.parse({ heartbeat_ms: 2_000 }),
    connecting: connectToNats({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: SECRET,
    logger: createLogger({ level: 'silent' }),
    port: 0,
  });
  for (let tries = 0; tries < 100 && !frontDoor.bus.connected; tries++)
    await new Promise((resolve) => setTimeout(resolve, 50));
  sdk = new OpenAI({ baseURL: `${frontDoor.url}/v1`, apiKey: SECRET, maxRetries: 0 });
});

after(async () => {
  await frontDoor?.close();
  await bus?.close();
  await worker?.stop();
  await upstream?.close();
  await nats?.dispose();
});

describe('the official openai package', () => {
  test('chat.completions.create: a chat.completion, and one usage event for the agent named by user', async () => {
    upstream.enqueue(fakeBehaviours.ok({ usage: { promptTokens: 11, completionTokens: 7 } }));
    const completion = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'Hello from the SDK' }],
      user: 'agent:sdk',
    });
    assert.equal(completion.object, 'chat.completion');
    assert.equal(completion.model, 'gpt-test');
    assert.equal(completion.choices[0]!.message.role, 'assistant');
    assert.equal(completion.choices[0]!.message.content, 'echo: Hello from the SDK');
    assert.equal(completion.choices[0]!.finish_reason, 'stop');
    assert.deepEqual(
      [completion.usage!.prompt_tokens, completion.usage!.completion_tokens, completion.usage!.total_tokens],
      [11, 7, 18],
    );
    const extras = (completion as unknown as { llm_proxy: Record<string, unknown> }).llm_proxy;
    assert.deepEqual([extras.request_id, extras.provider], [requestIdOf(completion.id), 'openai']);
    assert.equal(lastUpstreamBody().model, 'gpt-4o-mini', 'the physical name went upstream');
    const event = await usageEventFor(bus, requestIdOf(completion.id));
    assert.equal(event.status, 'ok');
    assert.equal(event.agent_id, 'agent:sdk');
    assert.equal(event.stream, false);
    assert.deepEqual([event.prompt_tokens, event.completion_tokens], [11, 7]);
  });

  test('the agent from X-Agent-Id / X-Microdao-Id headers when the body does not name one', async () => {
    const withHeaders = new OpenAI({
      baseURL: `${frontDoor.url}/v1`,
      apiKey: SECRET,
      maxRetries: 0,
      defaultHeaders: { 'X-Agent-Id': 'agent:header', 'X-Microdao-Id': 'microdao:9' },
    });
    const completion = await withHeaders.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'who am I' }],
      user: 'agent:ignored',
    });
    const event = await usageEventFor(bus, requestIdOf(completion.id));
    assert.deepEqual([event.agent_id, event.microdao_id], ['agent:header', 'microdao:9']);
  });

  test('metadata and request_id as extra body fields: the agent, tags and the id the reply is known by', async () => {
    const withHeaders = new OpenAI({
      baseURL: `${frontDoor.url}/v1`,
      apiKey: SECRET,
      maxRetries: 0,
      defaultHeaders: { 'X-Agent-Id': 'agent:header', 'X-Microdao-Id': 'microdao:9' },
    });
    const requestId = `sdk-meta-${crypto.randomUUID()}`;
    // openai v6 sends any extra field of the params as it is; request_id is not in its types.
    const completion = await withHeaders.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'tagged' }],
      user: 'agent:ignored',
      metadata: { agent_id: 'agent:meta', channel_id: 'c-sdk', team: 'blue' },
      request_id: requestId,
    } as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
    assert.equal(completion.id, `chatcmpl-${requestId}`);
    const event = await usageEventFor(bus, requestId);
    // The body's metadata wins over the header; the header still gives the microDAO the body left out.
    assert.deepEqual(
      [event.agent_id, event.microdao_id, event.channel_id, event.tags?.team],
      ['agent:meta', 'microdao:9', 'c-sdk', 'blue'],
    );
  });

  test('streaming with for await: a role chunk first, deltas that make the content, a usage chunk when asked for', async () => {
    upstream.enqueue(fakeBehaviours.ok({ chunks: 4, usage: { promptTokens: 13, completionTokens: 5 } }));
    const requestId = `sdk-stream-${crypto.randomUUID()}`;
    const stream = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'one two three four' }],
      stream: true,
      stream_options: { include_usage: true },
      request_id: requestId,
    } as OpenAI.Chat.Completions.ChatCompletionCreateParamsStreaming);
    const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(chunks[0]!.choices[0]!.delta.role, 'assistant');
    assert.ok(
      chunks.every((chunk) => chunk.object === 'chat.completion.chunk' && chunk.id === `chatcmpl-${requestId}`),
    );
    assert.ok(chunks.every((chunk) => chunk.model === 'gpt-test'));
    const content = chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('');
    assert.equal(content, 'echo: one two three four');
    assert.ok(chunks.filter((chunk) => (chunk.choices[0]?.delta.content ?? '') !== '').length >= 2);
    const finish = chunks.find((chunk) => chunk.choices[0]?.finish_reason != null);
    assert.equal(finish!.choices[0]!.finish_reason, 'stop');
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 13, completion_tokens: 5, total_tokens: 18 });
    assert.equal(chunks.filter((chunk) => chunk.usage != null).length, 1, 'only the last chunk carries usage');
    assert.deepEqual(lastUpstreamBody().stream_options, { include_usage: true });
    const event = await usageEventFor(bus, requestId);
    assert.deepEqual([event.status, event.stream, event.completion_tokens], ['ok', true, 5]);

    const withoutUsage = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'no usage please' }],
      stream: true,
    });
    const plain: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
    for await (const chunk of withoutUsage) plain.push(chunk);
    assert.equal(
      plain.some((chunk) => chunk.usage != null),
      false,
    );
    assert.equal(plain.at(-1)!.choices[0]!.finish_reason, 'stop');
    assert.equal(plain.map((chunk) => chunk.choices[0]?.delta.content ?? '').join(''), 'echo: no usage please');
  });

  test('tool calls: message.tool_calls, and streamed deltas that the SDK assembles into the same call', async () => {
    const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    ];
    const call = { id: 'call_weather_1', name: 'get_weather', arguments: '{"city":"Kyiv"}' };
    upstream.enqueue(fakeBehaviours.ok({ content: null, toolCalls: [call] }));
    const completion = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'weather in Kyiv?' }],
      tools,
      tool_choice: 'auto',
    });
    const choice = completion.choices[0]!;
    assert.equal(choice.finish_reason, 'tool_calls');
    assert.equal(choice.message.content, null);
    const [toolCall] = choice.message.tool_calls ?? [];
    assert.equal(toolCall?.type, 'function');
    if (toolCall?.type !== 'function') return;
    assert.deepEqual(
      [toolCall.id, toolCall.function.name, toolCall.function.arguments],
      ['call_weather_1', 'get_weather', '{"city":"Kyiv"}'],
    );
    assert.deepEqual((lastUpstreamBody().tools as unknown[]).length, 1);

    upstream.enqueue(fakeBehaviours.ok({ content: null, toolCalls: [call] }));
    const runner = sdk.chat.completions.stream({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'weather in Kyiv?' }],
      tools,
    });
    const argumentPieces: string[] = [];
    runner.on('chunk', (chunk) => {
      for (const delta of chunk.choices[0]?.delta.tool_calls ?? [])
        if ((delta.function?.arguments ?? '') !== '') argumentPieces.push(delta.function!.arguments!);
    });
    const final = await runner.finalChatCompletion();
    assert.ok(argumentPieces.length >= 2, `the arguments came in pieces: ${JSON.stringify(argumentPieces)}`);
    assert.equal(argumentPieces.join(''), '{"city":"Kyiv"}');
    const streamed = final.choices[0]!.message.tool_calls?.[0];
    assert.equal(final.choices[0]!.finish_reason, 'tool_calls');
    assert.ok(streamed?.type === 'function');
    assert.deepEqual(
      [streamed.id, streamed.function.name, JSON.parse(streamed.function.arguments)],
      ['call_weather_1', 'get_weather', { city: 'Kyiv' }],
    );
  });

  test('response_format (json_object and json_schema) reaches the provider as sent', async () => {
    await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'answer in JSON' }],
      response_format: { type: 'json_object' },
    });
    assert.deepEqual(lastUpstreamBody().response_format, { type: 'json_object' });
    const schema = {
      type: 'json_schema' as const,
      json_schema: {
        name: 'answer',
        strict: true,
        schema: { type: 'object', properties: { a: { type: 'string' } }, required: ['a'], additionalProperties: false },
      },
    };
    await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'answer in JSON' }],
      response_format: schema,
    });
    assert.deepEqual(lastUpstreamBody().response_format, schema);
  });

  test("DeepSeek's reasoning_content is kept on the message", async () => {
    upstream.enqueue(fakeBehaviours.ok({ content: 'The answer is 4.', reasoningContent: '2 + 2 = 4' }));
    const completion = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: '2+2?' }],
    });
    const message = completion.choices[0]!.message as { content: string | null; reasoning_content?: string };
    assert.deepEqual([message.content, message.reasoning_content], ['The answer is 4.', '2 + 2 = 4']);

    upstream.enqueue(fakeBehaviours.ok({ content: 'The answer is 4.', reasoningContent: 'two plus two is four' }));
    const stream = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: '2+2?' }],
      stream: true,
    });
    let reasoning = '';
    let content = '';
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? '';
      content += delta?.content ?? '';
    }
    assert.deepEqual([reasoning, content], ['two plus two is four', 'The answer is 4.']);
  });

  test("an aborted stream: the provider's connection is closed and the usage event says cancelled", async () => {
    upstream.enqueue(fakeBehaviours.ok({ chunks: 30, chunkIntervalMs: 100 }));
    const closedBefore = upstream.closedByClient;
    const stream = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'a long long answer' }],
      stream: true,
    });
    let id = '';
    let received = 0;
    for await (const chunk of stream) {
      id = chunk.id;
      if ((chunk.choices[0]?.delta.content ?? '') !== '' && ++received === 1) break; // leaving the loop aborts
    }
    assert.equal(received, 1);
    await upstream.waitForClosedByClient(closedBefore + 1, 5_000);
    const event = await usageEventFor(bus, requestIdOf(id));
    assert.equal(event.status, 'cancelled');
  });

  test('stream.controller.abort() while the provider is silent: the provider is let go, the event says cancelled', async () => {
    upstream.enqueue({ kind: 'stream-stall', afterChunks: 1 });
    const closedBefore = upstream.closedByClient;
    const stream = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'think forever' }],
      stream: true,
    });
    const iterator = stream[Symbol.asyncIterator]();
    let first: IteratorResult<OpenAI.Chat.Completions.ChatCompletionChunk>;
    try {
      first = await iterator.next();
      while (first.done !== true && (first.value.choices[0]?.delta.content ?? '') === '') first = await iterator.next();
    } finally {
      // Also when an assertion fails: a stalled stream left open would keep the front door from closing.
      stream.controller.abort();
    }
    assert.equal(first.done, false);
    assert.equal(first.value.choices[0]!.delta.content, 'echo: ');
    // The SDK ends the iteration quietly once its own controller aborted.
    assert.equal((await iterator.next()).done, true);
    await upstream.waitForClosedByClient(closedBefore + 1, 5_000);
    const event = await usageEventFor(bus, requestIdOf(first.value.id));
    assert.deepEqual([event.status, event.stream], ['cancelled', true]);
  });

  test("each error is the SDK's own class with its status", async () => {
    const wrongKey = new OpenAI({ baseURL: `${frontDoor.url}/v1`, apiKey: 'not-the-secret', maxRetries: 0 });
    const ask = (client: OpenAI, body: Partial<OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming> = {}) =>
      client.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], ...body });

    await assert.rejects(ask(wrongKey), (error: unknown) => {
      assert.ok(error instanceof OpenAI.AuthenticationError);
      assert.equal(error.status, 401);
      assert.equal(error.code, 'invalid_api_key');
      return true;
    });
    await assert.rejects(ask(sdk, { model: 'gpt-9000' }), (error: unknown) => {
      assert.ok(error instanceof OpenAI.NotFoundError);
      assert.equal(error.code, 'model_not_found');
      return true;
    });
    await assert.rejects(ask(sdk, { messages: [] }), (error: unknown) => {
      assert.ok(error instanceof OpenAI.BadRequestError);
      assert.equal(error.type, 'invalid_request_error');
      return true;
    });
    for (const status of [500, 502]) {
      upstream.enqueue(fakeBehaviours.serverError(status));
      await assert.rejects(ask(sdk), (error: unknown) => {
        assert.ok(error instanceof OpenAI.InternalServerError, `upstream ${status}`);
        assert.equal(error.status, 502);
        assert.equal(error.type, 'server_error');
        return true;
      });
    }
    // Streams refused before their first chunk: create() itself throws the same classes.
    const askStream = (client: OpenAI, model = 'gpt-test') =>
      client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], stream: true });
    await assert.rejects(askStream(wrongKey), OpenAI.AuthenticationError);
    await assert.rejects(askStream(sdk, 'gpt-9000'), OpenAI.NotFoundError);
    upstream.enqueue(fakeBehaviours.serverError(500));
    await assert.rejects(askStream(sdk), OpenAI.InternalServerError);
    upstream.enqueue(fakeBehaviours.rateLimited(1));
    await assert.rejects(ask(sdk), (error: unknown) => {
      assert.ok(error instanceof OpenAI.RateLimitError);
      assert.equal(error.status, 429);
      assert.equal(error.code, 'rate_limit_exceeded');
      assert.ok(Number(error.headers?.get('retry-after')) >= 1);
      assert.ok(Number(error.headers?.get('retry-after-ms')) > 0);
      return true;
    });
    // A 429 takes the deployment out until its Retry-After: let it pass for the tests after this one.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
  });

  test('a failure after the first chunk makes for await throw; the stream never ends cleanly', async () => {
    upstream.enqueue({ kind: 'stream-error', afterChunks: 2, message: 'the model fell over' });
    const stream = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'one two three four five' }],
      stream: true,
    });
    let content = '';
    let id = '';
    await assert.rejects(
      (async () => {
        for await (const chunk of stream) {
          id = chunk.id;
          content += chunk.choices[0]?.delta.content ?? '';
        }
      })(),
      (error: unknown) => error instanceof OpenAI.APIError,
    );
    assert.equal(content, 'echo: one ', 'the chunks before the failure came through');
    const event = await usageEventFor(bus, requestIdOf(id));
    assert.equal(event.status, 'error');
  });

  test('models.list and models.retrieve; an unknown model is NotFoundError', async () => {
    const ids: string[] = [];
    for await (const model of sdk.models.list()) ids.push(model.id);
    assert.deepEqual(ids.sort(), ['gpt-test', SLASHED_MODEL].sort());
    const model = await sdk.models.retrieve('gpt-test');
    assert.deepEqual([model.id, model.object, model.owned_by], ['gpt-test', 'model', 'openai']);
    // The SDK sends the slash percent-encoded.
    assert.equal((await sdk.models.retrieve(SLASHED_MODEL)).id, SLASHED_MODEL);
    // Decoded once only: a `%` in an id is a 404 naming it, not a URIError answered as a 500.
    await assert.rejects(sdk.models.retrieve('100%-model'), (error: unknown) => {
      assert.ok(error instanceof OpenAI.NotFoundError);
      assert.match(error.message, /"100%-model"/);
      return true;
    });
    await assert.rejects(sdk.models.retrieve('gpt-9000'), OpenAI.NotFoundError);
  });
});

describe('the Vercel AI SDK (@ai-sdk/openai-compatible)', () => {
  const provider = () =>
    createOpenAICompatible({
      name: 'llm-proxy',
      baseURL: `${frontDoor.url}/v1`,
      apiKey: SECRET,
      includeUsage: true,
      headers: { 'X-Agent-Id': 'agent:vercel' },
    });

  test('generateText: the text and the usage', async () => {
    upstream.enqueue(fakeBehaviours.ok({ usage: { promptTokens: 21, completionTokens: 4 } }));
    const result = await generateText({ model: provider()('gpt-test'), prompt: 'Hello Vercel', maxRetries: 0 });
    assert.equal(result.text, 'echo: Hello Vercel');
    assert.equal(result.finishReason, 'stop');
    assert.deepEqual([result.usage.inputTokens, result.usage.outputTokens, result.usage.totalTokens], [21, 4, 25]);
    const event = await usageEventFor(bus, requestIdOf(result.response.id));
    assert.deepEqual([event.status, event.agent_id], ['ok', 'agent:vercel']);
  });

  test('streamText: textStream makes the content; the finish reason and usage arrive', async () => {
    upstream.enqueue(fakeBehaviours.ok({ chunks: 3 }));
    const result = streamText({ model: provider()('gpt-test'), prompt: 'stream for Vercel', maxRetries: 0 });
    const pieces: string[] = [];
    for await (const piece of result.textStream) pieces.push(piece);
    assert.equal(pieces.join(''), 'echo: stream for Vercel');
    assert.ok(pieces.length >= 2, 'the text came in pieces');
    assert.equal(await result.finishReason, 'stop');
    assert.ok(((await result.usage).outputTokens ?? 0) > 0);
    assert.deepEqual(lastUpstreamBody().stream_options, { include_usage: true });
  });

  test('tool calls: the tool and its parsed input', async () => {
    upstream.enqueue(
      fakeBehaviours.ok({ content: null, toolCalls: [{ name: 'get_weather', arguments: '{"city":"Lviv"}' }] }),
    );
    const result = await generateText({
      model: provider()('gpt-test'),
      prompt: 'weather in Lviv?',
      tools: { get_weather: tool({ description: 'the weather', inputSchema: z.object({ city: z.string() }) }) },
      maxRetries: 0,
    });
    assert.equal(result.finishReason, 'tool-calls');
    assert.equal(result.toolCalls.length, 1);
    assert.equal(result.toolCalls[0]!.toolName, 'get_weather');
    assert.deepEqual(result.toolCalls[0]!.input, { city: 'Lviv' });
    const sent = lastUpstreamBody().tools as Array<{ function: { name: string } }>;
    assert.equal(sent[0]!.function.name, 'get_weather');

    upstream.enqueue(
      fakeBehaviours.ok({ content: null, toolCalls: [{ name: 'get_weather', arguments: '{"city":"Odesa"}' }] }),
    );
    const streamed = streamText({
      model: provider()('gpt-test'),
      prompt: 'weather in Odesa?',
      tools: { get_weather: tool({ description: 'the weather', inputSchema: z.object({ city: z.string() }) }) },
      maxRetries: 0,
    });
    const calls = await streamed.toolCalls;
    assert.deepEqual(
      calls.map((call) => [call.toolName, call.input]),
      [['get_weather', { city: 'Odesa' }]],
    );
    assert.equal(await streamed.finishReason, 'tool-calls');
  });

  test("errors: the SDK's APICallError with the status, retryable or not", async () => {
    await assert.rejects(
      generateText({ model: provider()('gpt-9000'), prompt: 'hi', maxRetries: 0 }),
      (error: unknown) => {
        assert.ok(APICallError.isInstance(error));
        assert.equal(error.statusCode, 404);
        assert.equal(error.isRetryable, false);
        assert.match(error.message, /gpt-9000/);
        return true;
      },
    );
    upstream.enqueue(fakeBehaviours.serverError(500));
    await assert.rejects(
      generateText({ model: provider()('gpt-test'), prompt: 'hi', maxRetries: 0 }),
      (error: unknown) => {
        assert.ok(APICallError.isInstance(error));
        assert.equal(error.statusCode, 502);
        assert.equal(error.isRetryable, true);
        return true;
      },
    );
  });
});
