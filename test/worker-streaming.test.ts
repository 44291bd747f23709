import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startFakeOllama, startFakeOpenAI, type FakeOllama, type FakeOpenAI } from './fakes/index.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';

const HEARTBEAT_MS = 200;

interface StreamResult {
  chunks: any[];
  heartbeats: number;
  terminal: any;
  terminalHeaders: MsgHdrs | undefined;
  mark: string | undefined;
}

/** Reads one streamed reply the raw way (own inbox), as an agent in another language would. */
async function readStream(
  client: NatsConnection,
  body: object,
  options: {
    /** Returns 'stop' to stop reading early. */ onChunk?: (chunk: any, inbox: string) => unknown;
    timeoutMs?: number;
  } = {},
): Promise<StreamResult & { stoppedEarly: boolean }> {
  const inbox = createInbox();
  const subscription = client.subscribe(inbox);
  const result: StreamResult & { stoppedEarly: boolean } = {
    chunks: [],
    heartbeats: 0,
    terminal: undefined,
    terminalHeaders: undefined,
    mark: undefined,
    stoppedEarly: false,
  };
  const timer = setTimeout(() => subscription.unsubscribe(), options.timeoutMs ?? 15_000);
  client.publish('llm.proxy.request', JSON.stringify({ stream: true, ...body }), { reply: inbox });
  for await (const message of subscription as AsyncIterable<Msg>) {
    const mark = message.headers?.get('LLM-Stream') || undefined;
    if (mark === 'heartbeat') {
      assert.deepEqual(message.json(), { heartbeat: true });
      result.heartbeats++;
      continue;
    }
    if (mark === 'chunk') {
      const chunk = message.json() as any;
      result.chunks.push(chunk);
      if (options.onChunk?.(chunk, inbox) === 'stop') {
        result.stoppedEarly = true;
        subscription.unsubscribe();
        break;
      }
      continue;
    }
    result.terminal = message.json();
    result.terminalHeaders = message.headers;
    result.mark = mark;
    break;
  }
  clearTimeout(timer);
  if (!subscription.isClosed()) subscription.unsubscribe();
  return result;
}

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<number> {
  const started = performance.now();
  while (!condition()) {
    if (performance.now() - started > timeoutMs) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return performance.now() - started;
}

describe('worker: streamed replies', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let ollama: FakeOllama;
  let worker: InProcessWorker;
  let client: NatsConnection;

  before(async () => {
    nats = await startNatsServer();
    openai = await startFakeOpenAI();
    ollama = await startFakeOllama();
    worker = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig(
        { openai: openai.baseUrl, ollama: ollama.baseUrl },
        { worker: { heartbeat_ms: HEARTBEAT_MS } },
      ),
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

  const eventFor = (requestId: string) => usageEventFor(client, requestId);

  const request = (requestId: string, extra: object = {}) => ({
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'Tell me a long story' }],
    request_id: requestId,
    metadata: { agent_id: 'agent:streamer' },
    ...extra,
  });

  test('a long stream arrives whole and in order, then one terminal reply with done and ttft_ms', async () => {
    const words = Array.from({ length: 300 }, (_, index) => `word${index}`);
    const pieces = words.map((word, index) => (index < words.length - 1 ? `${word} ` : word));
    // Spread over several heartbeat periods, so that some chunks go out as liveness probes (requests) among plain publishes.
    openai.enqueue({
      kind: 'ok',
      content: words.join(' '),
      chunks: pieces,
      chunkIntervalMs: 3,
      quirks: ['comments', 'crlf'],
    });
    const result = await readStream(client, request('long-1'));
    assert.equal(result.mark, 'end');
    assert.equal(result.chunks.length, 300);
    for (const [index, chunk] of result.chunks.entries()) assert.equal(chunk.seq, index);
    const text = result.chunks.map((chunk) => chunk.delta).join('');
    assert.equal(text, words.join(' '));
    assert.equal(result.terminal.content, text);
    assert.equal(result.terminal.done, true);
    assert.equal(typeof result.terminal.ttft_ms, 'number');
    assert.ok(result.terminal.ttft_ms <= result.terminal.latency_ms);
    assert.equal(result.terminal.finish_reason, 'stop');
    assert.equal(result.terminal.request_id, 'long-1');
    assert.equal(result.terminal.tokens_estimated, undefined, 'usage came from the provider (include_usage)');
    assert.equal(openai.chatRequests.at(-1)!.body.stream_options?.include_usage, true);
    const event = await eventFor('long-1');
    assert.equal(event.stream, true);
    assert.equal(event.status, 'ok');
    assert.equal(event.tokens_estimated, false);
    assert.equal(event.completion_tokens, result.terminal.usage.completion_tokens);
    assert.equal(typeof event.ttft_ms, 'number');
  });

  test('no usage upstream: tokens estimated from what was produced, and flagged', async () => {
    openai.enqueue({ kind: 'ok', content: 'one two three four five six', usage: null, quirks: ['split-writes'] });
    const result = await readStream(client, request('no-usage-1'));
    assert.equal(result.mark, 'end');
    assert.equal(result.terminal.tokens_estimated, true);
    assert.ok(result.terminal.usage.completion_tokens >= 6);
    assert.ok(result.terminal.usage.prompt_tokens > 0);
    const event = await eventFor('no-usage-1');
    assert.equal(event.tokens_estimated, true);
    assert.equal(event.completion_tokens, result.terminal.usage.completion_tokens);
  });

  test('tool-call deltas are forwarded in OpenAI shape and assembled in the terminal reply', async () => {
    openai.enqueue({
      kind: 'ok',
      content: null,
      toolCalls: [{ id: 'call_1', name: 'get_weather', arguments: { city: 'Paris', unit: 'C' } }],
    });
    const result = await readStream(
      client,
      request('tools-1', {
        tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
      }),
    );
    assert.equal(result.mark, 'end');
    const toolChunks = result.chunks.filter((chunk) => chunk.tool_calls !== undefined);
    assert.ok(toolChunks.length >= 2, 'name and arguments arrive as separate deltas');
    assert.equal(toolChunks[0].tool_calls[0].index, 0);
    assert.equal(toolChunks[0].tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(result.terminal.tool_calls, [
      { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"C"}' } },
    ]);
    assert.equal(result.terminal.finish_reason, 'tool_calls');
    assert.equal(result.terminal.content, null);
  });

  test('reasoning deltas (DeepSeek-R1) are forwarded and kept in the terminal reply', async () => {
    openai.enqueue({ kind: 'ok', content: 'Paris.', reasoningContent: 'The capital of France is Paris.' });
    const result = await readStream(client, request('reasoning-1'));
    assert.equal(result.terminal.reasoning_content, 'The capital of France is Paris.');
    assert.equal(result.chunks.map((chunk) => chunk.reasoning_delta ?? '').join(''), 'The capital of France is Paris.');
    assert.equal(result.terminal.content, 'Paris.');
  });

  test('an Ollama (NDJSON) stream', async () => {
    ollama.enqueue({ kind: 'ok', content: 'alpha beta gamma delta', quirks: ['coalesce'] });
    const result = await readStream(client, request('ollama-1', { model: 'local-test' }));
    assert.equal(result.mark, 'end');
    assert.equal(result.chunks.map((chunk) => chunk.delta).join(''), 'alpha beta gamma delta');
    assert.equal(result.terminal.provider, 'local');
  });

  test('a stream cut upstream mid-way ends with an error terminal, never a clean end; the event has the tokens produced', async () => {
    openai.enqueue({ kind: 'stream-cut', afterChunks: 4, content: 'a b c d e f g h', usage: null });
    const result = await readStream(client, request('cut-1'));
    assert.equal(result.mark, 'error');
    assert.equal(result.terminal.error.code, 'upstream_error');
    assert.equal(result.terminal.error.request_id, 'cut-1');
    assert.equal(result.terminalHeaders?.get('Nats-Service-Error-Code'), '502');
    assert.equal(result.chunks.length, 4);
    const event = await eventFor('cut-1');
    assert.equal(event.status, 'error');
    assert.equal(event.error_code, 'upstream_error');
    assert.ok(event.completion_tokens >= 4, `completion tokens ${event.completion_tokens}`);
    assert.equal(event.tokens_estimated, true);
    assert.ok(event.cost_usd > 0);
  });

  test('a stream that ends without finishing is an error, not a clean end', async () => {
    openai.enqueue({ kind: 'stream-end-early', afterChunks: 2, content: 'x y z' });
    const result = await readStream(client, request('early-1'));
    assert.equal(result.mark, 'error');
    assert.equal(result.terminal.error.code, 'upstream_error');
  });

  test('a provider failing before the first token: one error terminal', async () => {
    openai.enqueue({ kind: 'status', status: 400, message: 'bad stuff' });
    const result = await readStream(client, request('before-1'));
    assert.equal(result.chunks.length, 0);
    assert.equal(result.mark, 'error');
    assert.equal(result.terminal.error.code, 'invalid_request');
  });

  test('heartbeats while the upstream is silent; a client that goes away makes the worker abort the upstream call (event "cancelled")', async (t) => {
    openai.enqueue({ kind: 'stream-stall', afterChunks: 2, content: 'slow slow slow' });
    const closedBefore = openai.closedByClient;
    let heartbeats = 0;
    let leftAt = 0;
    const inbox = createInbox();
    const subscription = client.subscribe(inbox);
    client.publish('llm.proxy.request', JSON.stringify({ stream: true, ...request('gone-1') }), { reply: inbox });
    for await (const message of subscription) {
      if (message.headers?.get('LLM-Stream') === 'heartbeat') heartbeats++;
      if (heartbeats >= 2) {
        subscription.unsubscribe();
        leftAt = performance.now();
        break;
      }
    }
    await client.flush();
    await waitFor(() => openai.closedByClient > closedBefore, 5_000);
    const latency = performance.now() - leftAt;
    t.diagnostic(`client gone → upstream connection closed in ${latency.toFixed(1)} ms (heartbeat_ms ${HEARTBEAT_MS})`);
    assert.ok(latency < HEARTBEAT_MS * 3 + 500, `took ${latency} ms`);
    const event = await eventFor('gone-1');
    assert.equal(event.status, 'cancelled');
    assert.equal(event.error_code, 'cancelled');
    assert.ok(event.completion_tokens > 0);
  });

  test('a client gone while chunks still flow is noticed too', async () => {
    openai.enqueue({
      kind: 'ok',
      content: Array.from({ length: 400 }, (_, index) => `w${index}`).join(' '),
      chunkIntervalMs: 10,
    });
    const closedBefore = openai.closedByClient;
    const result = await readStream(client, request('gone-2'), {
      onChunk: (chunk) => (chunk.seq === 5 ? 'stop' : undefined),
    });
    assert.equal(result.stoppedEarly, true);
    await waitFor(() => openai.closedByClient > closedBefore, 5_000);
    const event = await eventFor('gone-2');
    assert.equal(event.status, 'cancelled');
  });

  test('an explicit cancel on llm.proxy.cancel aborts the upstream call and ends the stream with "cancelled"', async (t) => {
    openai.enqueue({ kind: 'stream-stall', afterChunks: 1, content: 'never ending story' });
    const closedBefore = openai.closedByClient;
    let cancelledAt = 0;
    const result = await readStream(client, request('cancel-1'), {
      onChunk: () => {
        cancelledAt = performance.now();
        client.publish('llm.proxy.cancel', JSON.stringify({ request_id: 'cancel-1' }));
      },
    });
    assert.equal(result.mark, 'error');
    assert.equal(result.terminal.error.code, 'cancelled');
    assert.equal(result.terminal.error.status, 499);
    await waitFor(() => openai.closedByClient > closedBefore, 5_000);
    t.diagnostic(`explicit cancel → upstream connection closed in ${(performance.now() - cancelledAt).toFixed(1)} ms`);
    const event = await eventFor('cancel-1');
    assert.equal(event.status, 'cancelled');
    assert.equal(event.error_code, 'cancelled');
  });
});
