import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import {
  createClient,
  LlmProxyError,
  type ChatRequest,
  type LlmProxyClient,
  type StreamChunk,
} from '../src/client/index.js';
import type { ChatReply } from '../src/contract/reply.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * Streamed answers and the shared response cache (issue 18), over a real nats-server and its KV, three
 * workers in the queue group: a stream that completed is replayed identically (chunks and terminal) to a
 * later stream through any worker, and serves plain requests too; a failed or cancelled one is not kept.
 */

let nats: NatsServerHandle;
let openai: FakeProvider;
const workers: InProcessWorker[] = [];
let client: LlmProxyClient;
let observer: NatsConnection;
let usage: Subscription;
const events: UsageEvent[] = [];

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  const config = testConfig({ openai: openai.baseUrl }, { cache: { enabled: true, ttl_ms: 60_000 } });
  for (let index = 0; index < 3; index += 1) workers.push(await startInProcessWorker({ natsUrl: nats.url, config }));
  client = await createClient({ servers: nats.url, idleTimeoutMs: 5_000 });
  observer = await connect({ servers: nats.url });
  usage = observer.subscribe('llm.usage.>');
  void (async () => {
    for await (const message of usage) events.push(message.json<UsageEvent>());
  })();
});

after(async () => {
  usage?.unsubscribe();
  await observer?.close();
  await client?.close();
  for (const worker of workers) await worker.stop();
  await openai?.close();
  await nats?.dispose();
});

function request(content: string, requestId: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model: 'gpt-test', messages: [{ role: 'user', content }], temperature: 0, request_id: requestId, ...extra };
}

async function streamed(body: ChatRequest): Promise<{ chunks: StreamChunk[]; reply?: ChatReply; error?: unknown }> {
  const stream = client.stream(body);
  const chunks: StreamChunk[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks, reply: await stream.final };
  } catch (error) {
    return { chunks, error };
  }
}

/** The answer's own fields: what a replay must repeat exactly. */
function answerOf(reply: ChatReply) {
  const { content, usage: tokens, provider, model_resolved, model, finish_reason, tokens_estimated } = reply;
  return { content, usage: tokens, provider, model_resolved, model, finish_reason, tokens_estimated };
}

async function eventFor(requestId: string): Promise<UsageEvent> {
  for (let waited = 0; waited < 5_000; waited += 20) {
    const found = events.filter((event) => event.request_id === requestId);
    if (found.length > 0) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(events.filter((event) => event.request_id === requestId).length, 1, `one event for ${requestId}`);
      return found[0]!;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`no usage event for ${requestId}`);
}

test('a completed stream is replayed identically by any worker, and answers a plain request too', async () => {
  const pieces = Array.from({ length: 30 }, (_, index) => `piece${index} `);
  openai.enqueue({
    kind: 'ok',
    content: pieces.join(''),
    chunks: pieces,
    usage: { promptTokens: 12, completionTokens: 30 },
  });
  const calls = openai.chatRequests.length;
  const original = await streamed(request('stream me', 'live-0', { stream: true }));
  assert.equal(original.error, undefined);
  assert.equal(original.reply!.cached, false);
  assert.equal(original.chunks.map((chunk) => chunk.delta).join(''), pieces.join(''));

  for (let index = 1; index <= 6; index += 1) {
    const replay = await streamed(request('stream me', `replay-${index}`, { stream: true }));
    assert.equal(replay.error, undefined);
    assert.deepEqual(replay.chunks, original.chunks, `replay ${index}: the same chunks, in the same order`);
    assert.deepEqual(answerOf(replay.reply!), answerOf(original.reply!));
    assert.equal(replay.reply!.cached, true);
    assert.equal(replay.reply!.cost_usd, 0);
    assert.equal(replay.reply!.done, true);
    assert.equal(typeof replay.reply!.ttft_ms, 'number');
    assert.equal(replay.reply!.request_id, `replay-${index}`);
  }
  const plain = await client.chat(request('stream me', 'plain-after-stream'));
  assert.equal(plain.cached, true);
  assert.deepEqual(answerOf(plain), answerOf(original.reply!));
  assert.equal(plain.done, undefined, 'a plain reply carries no stream fields');
  assert.equal(openai.chatRequests.length, calls + 1, 'one upstream call for eight requests');
  const served = workers.map((worker) => worker.worker.stats().requests);
  assert.ok(served.filter((count) => count > 0).length >= 2, `answered by several workers: ${served}`);

  const live = await eventFor('live-0');
  assert.equal(live.cached, false);
  assert.ok(live.cost_usd > 0);
  const hit = await eventFor('replay-3');
  assert.equal(hit.cached, true);
  assert.equal(hit.stream, true);
  assert.equal(hit.status, 'ok');
  assert.equal(hit.cost_usd, 0);
  assert.equal(hit.saved_usd, live.cost_usd, 'a replayed stream saved what the original cost');
  assert.equal(hit.prompt_tokens, 12);
  assert.equal(hit.completion_tokens, 30);
});

test('a plain answer asked again as a stream is replayed as one chunk', async () => {
  openai.enqueue({
    kind: 'ok',
    content: 'plain first, streamed later',
    usage: { promptTokens: 5, completionTokens: 5 },
  });
  const plain = await client.chat(request('plain first', 'plain-0'));
  assert.equal(plain.cached, false);
  const replay = await streamed(request('plain first', 'plain-as-stream', { stream: true }));
  assert.equal(replay.error, undefined);
  assert.equal(replay.chunks.length, 1);
  assert.equal(replay.chunks[0]!.delta, 'plain first, streamed later');
  assert.equal(replay.reply!.cached, true);
  assert.deepEqual(answerOf(replay.reply!), answerOf(plain));
});

test('a stream that failed, or was cancelled, is not cached', async () => {
  const calls = openai.chatRequests.length;
  openai.enqueue({ kind: 'stream-cut', afterChunks: 2, content: 'one two three four five six' });
  const cut = await streamed(request('cut', 'cut-0', { stream: true }));
  assert.ok(cut.error !== undefined, 'the cut stream ends in an error');
  openai.enqueue({ kind: 'ok', content: 'whole this time' });
  const again = await streamed(request('cut', 'cut-1', { stream: true }));
  assert.equal(again.reply!.cached, false, 'asked upstream again');
  assert.equal(again.reply!.content, 'whole this time');
  assert.equal(openai.chatRequests.length, calls + 2);

  // Cancelled after the first chunk: the answer is not kept, the next ask goes upstream.
  openai.enqueue({ kind: 'ok', content: 'a b c d e f g h', chunkIntervalMs: 200 });
  const stream = client.stream(request('cancel me', 'cancel-0', { stream: true }));
  for await (const _chunk of stream) {
    stream.cancel();
    break;
  }
  await assert.rejects(stream.final);
  assert.equal((await eventFor('cancel-0')).status, 'cancelled');
  openai.enqueue({ kind: 'ok', content: 'not cancelled' });
  const after = await streamed(request('cancel me', 'cancel-1', { stream: true }));
  assert.equal(after.reply!.cached, false);
  assert.equal(after.reply!.content, 'not cancelled');
  assert.equal(openai.chatRequests.length, calls + 4);
});

test('a request waiting for an identical one is cancelled at once (stream or not); the one it waited for is unharmed', async () => {
  const calls = openai.chatRequests.length;
  openai.enqueue({ kind: 'ok', delayMs: 3_000, content: 'slow and shared', chunks: ['slow ', 'and ', 'shared'] });
  const started = performance.now();
  const leader = streamed(request('waited for', 'wait-leader', { stream: true }));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const waitingStream = streamed(request('waited for', 'wait-stream', { stream: true }));
  const waitingPlain = client.chat(request('waited for', 'wait-plain')).catch((error: unknown) => error);
  await new Promise((resolve) => setTimeout(resolve, 300));
  for (const id of ['wait-stream', 'wait-plain'])
    await observer.request('llm.proxy.cancel', JSON.stringify({ request_id: id }), { timeout: 2_000 });
  for (const id of ['wait-stream', 'wait-plain']) {
    const event = await eventFor(id);
    assert.equal(event.status, 'cancelled', id);
    assert.equal(event.error_code, 'cancelled', id);
  }
  assert.ok(performance.now() - started < 2_500, 'the waiting requests ended before the answer they waited for');
  const cancelled = await waitingStream;
  assert.ok(cancelled.error instanceof LlmProxyError && cancelled.error.code === 'cancelled', String(cancelled.error));
  const plain = await waitingPlain;
  assert.ok(plain instanceof LlmProxyError && plain.code === 'cancelled', String(plain));
  const led = await leader;
  assert.equal(led.error, undefined);
  assert.deepEqual(
    led.chunks.map((chunk) => chunk.delta),
    ['slow ', 'and ', 'shared'],
  );
  assert.equal((await eventFor('wait-leader')).status, 'ok');
  assert.equal(openai.chatRequests.length, calls + 1);
});

test('identical streams at once: one upstream call, every client gets the same chunks', async () => {
  const calls = openai.chatRequests.length;
  openai.enqueue({ kind: 'ok', delayMs: 600, content: 'together we wait', chunks: ['together ', 'we ', 'wait'] });
  const results = await Promise.all(
    Array.from({ length: 6 }, (_, index) => streamed(request('at once', `burst-${index}`, { stream: true }))),
  );
  assert.equal(openai.chatRequests.length, calls + 1, 'one upstream call for six streams');
  for (const result of results) {
    assert.equal(result.error, undefined);
    assert.deepEqual(
      result.chunks.map((chunk) => chunk.delta),
      ['together ', 'we ', 'wait'],
    );
  }
  assert.equal(results.filter((result) => result.reply!.cached === false).length, 1);
  for (let index = 0; index < 6; index += 1) assert.equal((await eventFor(`burst-${index}`)).status, 'ok');
});
