/**
 * Answers passed on whole (issue 16), over a real nats-server, a real worker, the fake providers'
 * wire formats, and the HTTP front door with the official `openai` package:
 * - counts the provider gave are kept: Ollama without `prompt_eval_count` (a prompt from its cache)
 *   keeps its `eval_count` and estimates only the prompt; a llama.cpp server that sends `timings` and
 *   no `usage` is counted from them, JSON and streamed;
 * - a refusal reaches the caller: `refusal` in the reply, `refusal_delta` in chunks, OpenAI's
 *   `message.refusal` / `delta.refusal` on the front door.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import OpenAI from 'openai';
import { connectToNats } from '../src/bus/connect.js';
import { createClient, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import { httpSchema } from '../src/config/http-schema.js';
import type { StreamChunk } from '../src/contract/reply.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { startFakeOllama, startFakeOpenAI, type FakeOllama, type FakeOpenAI } from './fakes/index.js';
import { answerWith } from './helpers/answer.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let ollama: FakeOllama;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;
let door: FrontDoor;

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  ollama = await startFakeOllama();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig(
      { openai: openai.baseUrl, ollama: ollama.baseUrl },
      {
        models: {
          // $1 per 1k prompt tokens, $0.25 per 1k from the provider's cache, $2 per 1k completion tokens.
          'gpt-cached': {
            provider: 'openai',
            physical_name: 'gpt-4o',
            cost_per_1k_prompt: 1,
            cost_per_1k_cached_prompt: 0.25,
            cost_per_1k_completion: 2,
          },
        },
      },
    ),
  });
  connection = await connect({ servers: nats.url });
  client = createClient({ connection, timeoutMs: 10_000 });
  door = await startFrontDoor({
    http: httpSchema.parse({}),
    connecting: connectToNats({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: undefined,
    logger: createLogger({ level: 'silent' }),
    host: '127.0.0.1',
    port: 0,
  });
});

after(async () => {
  await door.close();
  await worker.stop();
  await connection.close();
  await openai.close();
  await ollama.close();
  await nats.dispose();
});

const ask = (model: string, stream = false): ChatRequest => ({
  model,
  messages: [{ role: 'user', content: 'Tell me a short story about a lighthouse keeper and a storm.' }],
  request_id: `counts-${randomUUID()}`,
  ...(stream ? { stream: true } : {}),
});

const answer = (request: ChatRequest, chunks: StreamChunk[] = []) => answerWith(client, request, chunks);

const REFUSAL = "I'm very sorry, but I can't assist with that.";

for (const stream of [false, true]) {
  const how = stream ? 'streamed' : 'JSON';

  test(`Ollama without prompt_eval_count (${how}): its eval_count is kept, only the prompt is estimated`, async () => {
    ollama.enqueue({ kind: 'ok', content: 'Once upon a time.', usage: { promptTokens: null, completionTokens: 57 } });
    const request = ask('local-test', stream);
    const reply = await answer(request);
    assert.equal(reply.usage.completion_tokens, 57, "Ollama's own completion count");
    assert.ok(reply.usage.prompt_tokens > 5, 'the prompt estimated, not 0');
    assert.equal(reply.tokens_estimated, true);
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.completion_tokens, 57);
    assert.equal(event.prompt_tokens, reply.usage.prompt_tokens);
    assert.equal(event.tokens_estimated, true);
  });

  test(`llama.cpp's timings without usage (${how}): exact counts, not estimates`, async () => {
    openai.enqueue({
      kind: 'ok',
      content: 'The storm passed.',
      usage: null,
      timings: { cache_n: 13, prompt_n: 1, predicted_n: 394 },
    });
    const request = ask('gpt-test', stream);
    const reply = await answer(request);
    assert.deepEqual(reply.usage, { prompt_tokens: 14, completion_tokens: 394, total_tokens: 408 });
    assert.equal(reply.tokens_estimated, undefined);
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.prompt_tokens, 14);
    assert.equal(event.completion_tokens, 394);
    assert.equal(event.tokens_estimated, false);
    // $0.15 / $0.60 per 1k tokens: the cost follows the real counts.
    assert.equal(event.cost_usd, Math.round(((14 * 0.15 + 394 * 0.6) / 1000) * 1e6) / 1e6);
  });
}

for (const stream of [false, true]) {
  test(`a refusal (${stream ? 'streamed' : 'JSON'}) reaches the caller as refusal, with content null`, async () => {
    openai.enqueue({ kind: 'ok', content: null, refusal: REFUSAL });
    const chunks: StreamChunk[] = [];
    const request = ask('gpt-test', stream);
    const reply = await answer(request, chunks);
    assert.equal(reply.content, null);
    assert.equal(reply.refusal, REFUSAL);
    assert.equal(reply.finish_reason, 'stop');
    if (stream) {
      assert.ok(chunks.length > 1, 'the refusal came in pieces');
      assert.equal(chunks.map((chunk) => chunk.refusal_delta ?? '').join(''), REFUSAL);
    }
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.status, 'ok');
  });
}

test("the front door gives a refusal in OpenAI's shape: message.refusal and delta.refusal", async () => {
  const sdk = new OpenAI({ apiKey: 'unused', baseURL: `${door.url}/v1`, maxRetries: 0 });
  openai.enqueue({ kind: 'ok', content: null, refusal: REFUSAL });
  const completion = await sdk.chat.completions.create({
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'something it will not do' }],
  });
  assert.equal(completion.choices[0]?.message.content, null);
  assert.equal(completion.choices[0]?.message.refusal, REFUSAL);
  openai.enqueue({ kind: 'ok', content: null, refusal: REFUSAL });
  const stream = await sdk.chat.completions.create({
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'something it will not do' }],
    stream: true,
  });
  let refused = '';
  for await (const chunk of stream) refused += chunk.choices[0]?.delta.refusal ?? '';
  assert.equal(refused, REFUSAL);
});

for (const stream of [false, true]) {
  test(`cached prompt tokens (${stream ? 'streamed' : 'JSON'}) are priced at the cached price and counted in the event`, async () => {
    openai.enqueue({
      kind: 'ok',
      content: 'ok',
      usage: { promptTokens: 1000, completionTokens: 100, cachedPromptTokens: 800 },
    });
    const request = ask('gpt-cached', stream);
    if (stream) request.stream_options = { include_usage: true };
    const reply = await answer(request);
    // 200 × $1 + 800 × $0.25 + 100 × $2, per 1k.
    assert.equal(reply.cost_usd, 0.6);
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.cached_prompt_tokens, 800);
    assert.equal(event.prompt_tokens, 1000);
    assert.equal(event.cost_usd, 0.6);
    // Without a cached price, cached tokens cost the prompt price.
    openai.enqueue({
      kind: 'ok',
      content: 'ok',
      usage: { promptTokens: 1000, completionTokens: 100, cachedPromptTokens: 800 },
    });
    const plain = await answer(ask('gpt-test', stream));
    assert.equal(plain.cost_usd, Math.round(((1000 * 0.15 + 100 * 0.6) / 1000) * 1e6) / 1e6);
  });
}
