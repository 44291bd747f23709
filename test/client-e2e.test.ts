/**
 * The client through real workers (test/helpers/worker.ts) to the fake
 * providers (test/fakes), over a real nats-server: what an agent sees when
 * the model streams, stops, stalls, or the worker dies.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startChildWorker, startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';
import { startFakeOpenAI, startFakeOllama, type FakeProvider } from './fakes/index.js';
import {
  createClient,
  LlmProxyError,
  type ChatRequest,
  type LlmProxyClient,
  type StreamChunk,
} from '../src/client/index.js';

const SECRET = 'e2e-secret-value';

let nats: NatsServerHandle;
let openai: FakeProvider;
let ollama: FakeProvider;
let workers: InProcessWorker[] = [];
let client: LlmProxyClient;

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  ollama = await startFakeOllama();
  const config = testConfig({ openai: openai.baseUrl, ollama: ollama.baseUrl });
  workers = [
    await startInProcessWorker({ natsUrl: nats.url, config, env: { LLM_PROXY_SECRET: SECRET } }),
    await startInProcessWorker({ natsUrl: nats.url, config, env: { LLM_PROXY_SECRET: SECRET } }),
  ];
  client = await createClient({ servers: nats.url, secret: SECRET, idleTimeoutMs: 2_000 });
});

after(async () => {
  await client?.close();
  for (const worker of workers) await worker.stop();
  await openai?.close();
  await ollama?.close();
  await nats?.dispose();
});

function request(content: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model: 'gpt-test', messages: [{ role: 'user', content }], ...extra };
}

async function collect(stream: AsyncIterable<StreamChunk>): Promise<{ chunks: StreamChunk[]; error: unknown }> {
  const chunks: StreamChunk[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks, error: undefined };
  } catch (error) {
    return { chunks, error };
  }
}

function assertProxyError(error: unknown, code: string): asserts error is LlmProxyError {
  assert.ok(error instanceof LlmProxyError, `expected an LlmProxyError, got ${String(error)}`);
  assert.equal(error.code, code, `code of "${error.message}"`);
}

describe('client through real workers', () => {
  test('a long stream arrives whole and in order, with the provider usage', async () => {
    const pieces = Array.from({ length: 400 }, (_, index) => `tok${index} `);
    openai.enqueue({
      kind: 'ok',
      content: pieces.join(''),
      chunks: pieces,
      usage: { promptTokens: 21, completionTokens: 400 },
    });
    const stream = client.stream(request('a long one'));
    const { chunks, error } = await collect(stream);
    assert.equal(error, undefined);
    assert.deepEqual(
      chunks.map((chunk) => chunk.seq),
      pieces.map((_, index) => index),
    );
    assert.equal(chunks.map((chunk) => chunk.delta).join(''), pieces.join(''));
    const reply = await stream.final;
    assert.equal(reply.done, true);
    assert.equal(reply.content, pieces.join(''));
    assert.deepEqual(reply.usage, { prompt_tokens: 21, completion_tokens: 400, total_tokens: 421 });
    assert.notEqual(reply.tokens_estimated, true);
    assert.equal(typeof reply.ttft_ms, 'number');
    assert.equal(reply.request_id, stream.requestId);
  });

  test('no usage upstream: the final reply carries estimated tokens (OpenAI and Ollama)', async () => {
    openai.enqueue({ kind: 'ok', content: 'no usage reported here', usage: null });
    const fromOpenAI = await client.stream(request('hi')).final;
    assert.equal(fromOpenAI.content, 'no usage reported here');
    assert.equal(fromOpenAI.tokens_estimated, true);
    assert.ok(fromOpenAI.usage.completion_tokens > 0);

    ollama.enqueue({ kind: 'ok', content: 'ollama without counts', usage: null });
    const fromOllama = await client.stream(request('hi', { model: 'local-test' })).final;
    assert.equal(fromOllama.content, 'ollama without counts');
    assert.equal(fromOllama.tokens_estimated, true);
    assert.ok(fromOllama.usage.total_tokens > 0);
  });

  test('chat() returns the same reply shape without streaming', async () => {
    openai.enqueue({ kind: 'ok', content: 'plain reply', usage: { promptTokens: 4, completionTokens: 2 } });
    const reply = await client.chat(request('hi'));
    assert.equal(reply.content, 'plain reply');
    assert.deepEqual(reply.usage, { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 });
    assert.equal(reply.provider, 'openai');
    assert.equal(reply.model_resolved, 'gpt-4o-mini');
  });

  test('a stream cut upstream in the middle ends with a typed error, never a clean end', async () => {
    openai.enqueue({ kind: 'stream-cut', afterChunks: 3, content: 'one two three four five six' });
    const stream = client.stream(request('cut me'));
    const { chunks, error } = await collect(stream);
    assert.ok(chunks.length >= 1, 'the chunks before the cut arrived');
    assert.ok(error instanceof LlmProxyError, `expected an LlmProxyError, got ${String(error)}`);
    assert.equal(error.code, 'upstream_error');
    assert.equal(error.requestId, stream.requestId);
    assert.equal(stream.reply, undefined);
  });

  test('a wrong secret is refused as unauthorized', async () => {
    const stranger = await createClient({ servers: nats.url, secret: 'not-the-secret' });
    try {
      assertProxyError(await stranger.chat(request('hi')).catch((caught: unknown) => caught), 'unauthorized');
      assertProxyError((await collect(stranger.stream(request('hi')))).error, 'unauthorized');
    } finally {
      await stranger.close();
    }
  });

  test('a client abort reaches the provider: the fake sees its connection closed', async (t) => {
    openai.enqueue({ kind: 'stream-stall', afterChunks: 2, content: 'never finishing answer' });
    const closedBefore = openai.closedByClient;
    const controller = new AbortController();
    const stream = client.stream(request('stall'), { signal: controller.signal });
    const seen: string[] = [];
    let abortedAt = 0;
    const { error } = await collect(
      (async function* () {
        for await (const chunk of stream) {
          seen.push(chunk.delta);
          yield chunk;
          if (seen.length === 2) {
            abortedAt = performance.now();
            controller.abort();
          }
        }
      })(),
    );
    assertProxyError(error, 'cancelled');
    await openai.waitForClosedByClient(closedBefore + 1, 10_000);
    t.diagnostic(
      `abort → upstream connection closed: within ${(performance.now() - abortedAt).toFixed(1)} ms (bounded by the 10 s wait above)`,
    );
  });

  test('leaving the loop early also closes the upstream connection', async () => {
    openai.enqueue({ kind: 'stream-stall', afterChunks: 1, content: 'another never finishing answer' });
    const closedBefore = openai.closedByClient;
    for await (const chunk of client.stream(request('stall'))) {
      assert.equal(chunk.seq, 0);
      break;
    }
    await openai.waitForClosedByClient(closedBefore + 1, 10_000);
  });

  test('200 concurrent streams through two workers each arrive complete', async () => {
    openai.setDefault({ kind: 'ok', chunks: 8, chunkIntervalMs: 5 });
    try {
      const results = await Promise.all(
        Array.from({ length: 200 }, async (_, index) => {
          const text = `stream number ${index} has these words in it`;
          const stream = client.stream(request(text));
          const { chunks, error } = await collect(stream);
          if (error !== undefined) throw error;
          const reply = await stream.final;
          return {
            expected: `echo: ${text}`,
            streamed: chunks.map((chunk) => chunk.delta).join(''),
            final: reply.content,
            seqs: chunks.map((chunk) => chunk.seq),
          };
        }),
      );
      for (const result of results) {
        assert.equal(result.streamed, result.expected);
        assert.equal(result.final, result.expected);
        assert.deepEqual(
          result.seqs,
          result.seqs.map((_, index) => index),
        );
      }
    } finally {
      openai.setDefault({ kind: 'ok' });
    }
  });

  test('a worker killed mid-stream: the client errors within its idle timeout', async () => {
    // A fresh subject prefix so that only the child worker serves this request.
    const config = testConfig({ openai: openai.baseUrl }, { nats: { subject_prefix: 'killed' } });
    const child = await startChildWorker({ natsUrl: nats.url, config });
    const killedClient = await createClient({ servers: nats.url, subjectPrefix: 'killed', idleTimeoutMs: 1_500 });
    try {
      openai.enqueue({
        kind: 'ok',
        chunks: 50,
        chunkIntervalMs: 200,
        content: Array.from({ length: 50 }, (_, index) => `w${index}`).join(' '),
      });
      const stream = killedClient.stream(request('slow'));
      const iterator = stream[Symbol.asyncIterator]();
      const first = await iterator.next();
      assert.equal(first.value?.seq, 0);
      child.signal('SIGKILL');
      await child.exited;
      const killedAt = Date.now();
      let error: unknown;
      try {
        while (!(await iterator.next()).done);
      } catch (caught) {
        error = caught;
      }
      assertProxyError(error, 'upstream_timeout');
      assert.match(error.message, /silent for 1500 ms/);
      // Generous bound: the idle timeout plus scheduling slack on a loaded machine.
      assert.ok(Date.now() - killedAt < 15_000, `errored ${Date.now() - killedAt} ms after the kill`);
    } finally {
      await killedClient.close();
      await child.dispose();
    }
  });

  test('no worker on the subjects: no_provider_available at once', async () => {
    const lonely = await createClient({ servers: nats.url, subjectPrefix: 'nobody', timeoutMs: 60_000 });
    try {
      const started = Date.now();
      assertProxyError(await lonely.chat(request('hi')).catch((caught: unknown) => caught), 'no_provider_available');
      assertProxyError((await collect(lonely.stream(request('hi')))).error, 'no_provider_available');
      assert.ok(Date.now() - started < 30_000);
    } finally {
      await lonely.close();
    }
  });

  test('a payload over max_payload is refused before sending', async () => {
    const maxPayload = client.connection.info?.max_payload ?? 1_048_576;
    const requestsBefore = openai.chatRequests.length;
    const big = request('x'.repeat(maxPayload + 1));
    assertProxyError(await client.chat(big).catch((caught: unknown) => caught), 'payload_too_large');
    assertProxyError((await collect(client.stream(big))).error, 'payload_too_large');
    assert.equal(openai.chatRequests.length, requestsBefore);
  });
});
