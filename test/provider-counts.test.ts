/**
 * Counts the provider gave are kept (issue 16, "answers passed on whole"): Ollama without
 * `prompt_eval_count` (a prompt from its cache) keeps its `eval_count` and estimates only the prompt;
 * a llama.cpp server that sends `timings` and no `usage` is counted from them, JSON and streamed.
 * Over a real nats-server, a real worker and the fake providers' wire formats.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import { startFakeOllama, startFakeOpenAI, type FakeOllama, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let ollama: FakeOllama;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  ollama = await startFakeOllama();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl, ollama: ollama.baseUrl }),
  });
  connection = await connect({ servers: nats.url });
  client = createClient({ connection, timeoutMs: 10_000 });
});

after(async () => {
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

async function answer(request: ChatRequest) {
  if (request.stream !== true) return client.chat(request);
  const stream = client.stream(request);
  for await (const _chunk of stream) {
    // Drained: the counts are in the final reply.
  }
  return stream.final;
}

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
