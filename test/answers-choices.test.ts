/**
 * More of every answer passed on whole (issue 16), over a real nats-server, a real worker, the fake
 * providers' wire formats, and the HTTP front door with the official `openai` package:
 * - `n` > 1: every choice in `choices` (the first also as `content`), streams carry the choice index;
 *   a provider type that cannot (Ollama) refuses by name;
 * - `logprobs` come back, JSON and streamed;
 * - a model's `max_tokens` is the completion limit of a request that sets none;
 * - Azure OpenAI: the deployment path, `api-version`, the key in `api-key` and nowhere else.
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
import {
  fakeBehaviours,
  startFakeAzureOpenAI,
  startFakeOllama,
  startFakeOpenAI,
  type FakeOllama,
  type FakeOpenAI,
} from './fakes/index.js';
import { answerWith } from './helpers/answer.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';

const AZURE_KEY = 'azure-key-0123456789abcdef';

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let azure: FakeOpenAI;
let ollama: FakeOllama;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;
let door: FrontDoor;

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  azure = await startFakeAzureOpenAI({ requireApiKey: AZURE_KEY });
  ollama = await startFakeOllama();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    env: { AZURE_TEST_KEY: AZURE_KEY },
    config: testConfig(
      { openai: openai.baseUrl, ollama: ollama.baseUrl },
      {
        providers: {
          azure: { type: 'azure', base_url: azure.origin, api_key_env: 'AZURE_TEST_KEY' },
          'azure-preview': {
            type: 'azure',
            base_url: azure.origin,
            api_key_env: 'AZURE_TEST_KEY',
            api_version: '2025-04-01-preview',
          },
          'azure-wrong-key': { type: 'azure', base_url: azure.origin, api_key_env: 'FAKE_OPENAI_KEY' },
        },
        models: {
          'gpt-capped': { provider: 'openai', physical_name: 'gpt-4o', max_tokens: 77 },
          'gpt-azure': { provider: 'azure', physical_name: 'my-gpt4o-deployment' },
          'gpt-azure-preview': { provider: 'azure-preview', physical_name: 'my-gpt4o-deployment' },
          'gpt-azure-wrong-key': { provider: 'azure-wrong-key', physical_name: 'my-gpt4o-deployment' },
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
  await azure.close();
  await ollama.close();
  await nats.dispose();
});

const QUESTION = 'Name a lighthouse keeper.';

const ask = (model: string, extra: Partial<ChatRequest> = {}): ChatRequest => ({
  model,
  messages: [{ role: 'user', content: QUESTION }],
  request_id: `choices-${randomUUID()}`,
  ...extra,
});

const answer = (request: ChatRequest, chunks: StreamChunk[] = []) => answerWith(client, request, chunks);

const lastBody = (fake: FakeOpenAI) => fake.chatRequests[fake.chatRequests.length - 1]?.body;

for (const stream of [false, true]) {
  const how = stream ? 'streamed' : 'JSON';

  test(`n = 3 (${how}): every choice in choices, the first also as content; one usage event`, async () => {
    const chunks: StreamChunk[] = [];
    const request = ask('gpt-test', { n: 3, ...(stream ? { stream: true } : {}) });
    const reply = await answer(request, chunks);
    assert.equal(lastBody(openai).n, 3, 'n was sent on');
    const expected = [`echo: ${QUESTION}`, `echo: ${QUESTION} #1`, `echo: ${QUESTION} #2`];
    assert.equal(reply.content, expected[0]);
    assert.deepEqual(
      reply.choices?.map((choice) => [choice.index, choice.message.content, choice.finish_reason]),
      expected.map((content, index) => [index, content, 'stop']),
    );
    assert.equal(reply.choices?.[1]?.message.role, 'assistant');
    assert.equal(reply.choices?.[1]?.message.refusal, null);
    if (stream) {
      // Every chunk names its choice; each choice's deltas make its content.
      assert.ok(chunks.every((chunk) => typeof chunk.index === 'number'));
      for (const [index, content] of expected.entries()) {
        const text = chunks
          .filter((chunk) => chunk.index === index)
          .map((chunk) => chunk.delta)
          .join('');
        assert.equal(text, content);
      }
    }
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.status, 'ok');
  });

  test(`choices the request did not ask for (${how}) are not passed on`, async () => {
    // provider_options goes to the provider verbatim: it asks for 3 while the request says nothing of n.
    const chunks: StreamChunk[] = [];
    const request = ask('gpt-test', { provider_options: { n: 3 }, ...(stream ? { stream: true } : {}) });
    const reply = await answer(request, chunks);
    assert.equal(lastBody(openai).n, 3, 'the provider made three');
    assert.equal(reply.content, `echo: ${QUESTION}`);
    assert.equal(reply.choices, undefined);
    if (stream) {
      assert.ok(chunks.every((chunk) => chunk.index === undefined));
      assert.equal(chunks.map((chunk) => chunk.delta).join(''), `echo: ${QUESTION}`);
    }
  });

  test(`logprobs (${how}) come back in OpenAI's shape, with top_logprobs`, async () => {
    const chunks: StreamChunk[] = [];
    const request = ask('gpt-test', { logprobs: true, top_logprobs: 2, ...(stream ? { stream: true } : {}) });
    const reply = await answer(request, chunks);
    assert.equal(lastBody(openai).logprobs, true);
    assert.equal(lastBody(openai).top_logprobs, 2);
    const tokens = reply.logprobs?.content ?? [];
    assert.ok(tokens.length > 1, 'one entry per token');
    assert.equal(tokens.map((token) => token.token).join(''), reply.content);
    assert.equal(tokens[0]?.logprob, -0.01);
    assert.deepEqual(tokens[0]?.bytes, [...Buffer.from(tokens[0]!.token, 'utf8')]);
    assert.equal(tokens[0]?.top_logprobs?.length, 2);
    if (stream) {
      const streamed = chunks.flatMap((chunk) => chunk.logprobs?.content ?? []);
      assert.deepEqual(streamed, tokens, 'the chunks carried the same tokens the end gathered');
    }
  });

  test(`a model's max_tokens (${how}) is the limit of a request that sets none, and only then`, async () => {
    const streaming = stream ? { stream: true } : {};
    await answer(ask('gpt-capped', streaming));
    assert.equal(lastBody(openai).max_tokens, 77);
    await answer(ask('gpt-capped', { max_tokens: 5, ...streaming }));
    assert.equal(lastBody(openai).max_tokens, 5);
    await answer(ask('gpt-capped', { max_completion_tokens: 9, ...streaming }));
    assert.equal(lastBody(openai).max_tokens, undefined);
    assert.equal(lastBody(openai).max_completion_tokens, 9);
    await answer(ask('gpt-test', streaming));
    assert.equal(lastBody(openai).max_tokens, undefined, 'a model without max_tokens adds none');
  });

  test(`Azure OpenAI (${how}): the deployment's path and api-version, the key in api-key only`, async () => {
    const request = ask('gpt-azure', stream ? { stream: true } : {});
    const reply = await answer(request);
    assert.equal(reply.content, `echo: ${QUESTION}`);
    assert.equal(reply.provider, 'azure');
    const received = azure.chatRequests[azure.chatRequests.length - 1]!;
    assert.equal(received.path, '/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21');
    assert.equal(received.headers['api-key'], AZURE_KEY);
    assert.equal(received.authorization, undefined, 'no Authorization header');
    const event = await usageEventFor(connection, request.request_id!);
    assert.equal(event.provider, 'azure');
    assert.ok(!JSON.stringify(event).includes(AZURE_KEY));
  });
}

test('Azure: api_version sets the version; a wrong key is an upstream 401 that names no key', async () => {
  await client.chat(ask('gpt-azure-preview'));
  assert.match(azure.chatRequests[azure.chatRequests.length - 1]!.path, /\?api-version=2025-04-01-preview$/);
  await assert.rejects(client.chat(ask('gpt-azure-wrong-key')), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'upstream_error');
    assert.doesNotMatch(error.message, new RegExp(AZURE_KEY));
    return true;
  });
  assert.doesNotMatch(worker.logs.text(), new RegExp(AZURE_KEY));
});

test('n > 1 to Ollama, which generates one answer per call, is refused by name; n above 128 by the contract', async () => {
  const before = ollama.chatRequests.length;
  await assert.rejects(client.chat(ask('local-test', { n: 2 })), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'invalid_request');
    assert.match(error.message, /n: Ollama generates one choice per request/);
    return true;
  });
  assert.equal(ollama.chatRequests.length, before, 'nothing was sent');
  await assert.rejects(client.chat(ask('gpt-test', { n: 129 })), /n/);
});

test("the front door: n > 1 and logprobs in OpenAI's shapes, JSON and streamed, read by the openai package", async () => {
  const sdk = new OpenAI({ apiKey: 'unused', baseURL: `${door.url}/v1`, maxRetries: 0 });
  const completion = await sdk.chat.completions.create({
    model: 'gpt-test',
    messages: [{ role: 'user', content: QUESTION }],
    n: 2,
    logprobs: true,
  });
  assert.deepEqual(
    completion.choices.map((choice) => [choice.index, choice.message.content, choice.finish_reason]),
    [
      [0, `echo: ${QUESTION}`, 'stop'],
      [1, `echo: ${QUESTION} #1`, 'stop'],
    ],
  );
  assert.equal(completion.choices[1]?.logprobs?.content?.map((token) => token.token).join(''), `echo: ${QUESTION} #1`);

  const stream = await sdk.chat.completions.create({
    model: 'gpt-test',
    messages: [{ role: 'user', content: QUESTION }],
    n: 2,
    logprobs: true,
    stream: true,
  });
  const texts = ['', ''];
  const finishes: Array<string | null> = [null, null];
  let streamedTokens = 0;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      texts[choice.index] += choice.delta.content ?? '';
      if (choice.finish_reason !== null) finishes[choice.index] = choice.finish_reason;
      streamedTokens += choice.logprobs?.content?.length ?? 0;
    }
  }
  assert.deepEqual(texts, [`echo: ${QUESTION}`, `echo: ${QUESTION} #1`]);
  assert.deepEqual(finishes, ['stop', 'stop']);
  assert.ok(streamedTokens >= 8, 'each content delta brought its logprobs');
});

test('a server that ignores stream: true and answers one JSON completion is relayed as a stream all the same', async () => {
  openai.enqueue(fakeBehaviours.huge('json', 4_000));
  const chunks: StreamChunk[] = [];
  const reply = await answer(ask('gpt-test', { stream: true }), chunks);
  assert.match(reply.content ?? '', /^x{1000,}$/);
  assert.equal(chunks.map((chunk) => chunk.delta).join(''), reply.content);
  assert.equal(reply.finish_reason, 'stop');
  assert.equal(reply.usage.completion_tokens, 10, "the provider's own count");
});
