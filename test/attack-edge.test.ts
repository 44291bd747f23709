import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { createResponseCache } from '../src/cache/index.js';
import { resolveConfig } from '../src/config/index.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { cacheKeyFor } from '../src/worker/response-cache.js';
import { startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { reply as fixtureReply } from './helpers/cache-fixtures.js';
import { startNatsServer } from './helpers/nats-server.js';
import { readRawStream, type RawStream } from './helpers/raw-stream.js';
import { startTwoNodes, type TwoNodes } from './helpers/two-nodes.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * Hostile tests of issue 19's forwarding (forward.ts, bus-models.ts) and of streamed answers from the
 * response cache (stream-reply.ts, cache-replay.ts), over a real nats-server.
 *
 * `cloud` serves gpt-test (openai fake, cache on), `edge` serves local-test (ollama fake). A request
 * published on `llm.proxy.model.gpt-test` with a body for `local-test` reaches only `cloud`, which must
 * pass it on: a deterministic way to exercise the forwarder.
 */

let openai: FakeProvider;
let ollama: FakeProvider;
let cloud: InProcessWorker;
let edge: InProcessWorker;
let raw: NatsConnection;
let events: UsageEvent[];
let bus: TwoNodes;

const CLOUD_SUBJECT = 'llm.proxy.model.gpt-test';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

before(async () => {
  bus = await startTwoNodes({
    cloud: (url) => testConfig({ openai: url }, { cache: { enabled: true, ttl_ms: 60_000 } }),
  });
  ({ openai, ollama, cloud, edge, raw, events } = bus);
});

after(() => bus?.close());

type Body = Record<string, unknown>;

function body(model: string, requestId: string, extra: Body = {}): Body {
  return { model, messages: [{ role: 'user', content: 'hi' }], request_id: requestId, ...extra };
}

async function ask(subject: string, request: Body, timeout = 10_000): Promise<Body> {
  const reply = await raw.request(subject, JSON.stringify(request), { timeout });
  return reply.json<Body>();
}

/** Reads a stream the raw way; `onChunk` returning 'stop' unsubscribes right there (a client that goes away). */
const readStream = (subject: string, request: Body, onChunk?: (chunk: Body, seen: number) => unknown) =>
  readRawStream(raw, subject, request, onChunk);

/** Exactly one usage event for `requestId` (waits for the first, then a while longer for a second). */
async function oneEvent(requestId: string): Promise<UsageEvent> {
  for (let waited = 0; waited < 8_000; waited += 25) {
    const found = events.filter((event) => event.request_id === requestId);
    if (found.length > 0) {
      await sleep(300);
      const all = events.filter((event) => event.request_id === requestId);
      assert.equal(all.length, 1, `exactly one usage event for ${requestId}: ${JSON.stringify(all)}`);
      return all[0]!;
    }
    await sleep(25);
  }
  throw new Error(`no usage event for ${requestId}`);
}

async function idle(worker: InProcessWorker): Promise<void> {
  for (let waited = 0; waited < 5_000 && worker.worker.stats().in_flight > 0; waited += 25) await sleep(25);
  assert.equal(worker.worker.stats().in_flight, 0, 'in_flight back to 0');
}

// ---------------------------------------------------------------------------------------------------
// Forwarding

test('forged node hellos (malformed, huge, many) neither crash nor deafen a worker', async () => {
  const hello = 'llm.proxy.nodes.hello';
  const forged: Array<string | Uint8Array> = [
    '',
    'not json',
    'null',
    '[]',
    '42',
    '{"worker_id": 5, "models": ["x"]}',
    '{"worker_id": "w", "models": "not-a-list"}',
    '{"worker_id": "w", "models": [1, null, {}, ""]}',
    '{"worker_id": "w", "models": ["__proto__", "constructor", "hasOwnProperty"]}',
    JSON.stringify({ worker_id: 'w', models: Array.from({ length: 20_000 }, (_, index) => `m${index}`) }),
    JSON.stringify({ worker_id: 'w'.repeat(300), models: ['x'] }),
    JSON.stringify({ worker_id: 'w', node: 'n'.repeat(500_000), models: ['x'] }),
    new Uint8Array([0xff, 0xfe, 0x00, 0x7b]),
  ];
  // The workers' own hellos while it goes on.
  const answers = new Map<string, number>();
  const listening = raw.subscribe(hello, {
    callback: (_error, message) => {
      try {
        const id = message.json<{ worker_id?: unknown }>().worker_id;
        if (id === cloud.worker.id || id === edge.worker.id) answers.set(id, (answers.get(id) ?? 0) + 1);
      } catch {
        // a forged one
      }
    },
  });
  await raw.flush();
  for (const data of forged) raw.publish(hello, data);
  // Many asking hellos: each worker answers the first at once and the rest of the burst once, a second
  // later (not each: that would be an amplification by the number of workers).
  for (let index = 0; index < 200; index += 1)
    raw.publish(hello, JSON.stringify({ worker_id: `flood-${index}`, models: [`flood-${index}`], ask: true }));
  await raw.flush();
  await sleep(1_500);
  listening.unsubscribe();
  for (const worker of [cloud, edge]) {
    const said = answers.get(worker.worker.id) ?? 0;
    assert.ok(said >= 1 && said <= 2, `${worker.worker.id} answered 200 asks with ${said} hellos`);
  }
  const reply = await ask(CLOUD_SUBJECT, body('gpt-test', 'after-hellos'), 5_000);
  assert.equal(reply.error, undefined, JSON.stringify(reply));
  const edgeReply = await ask('llm.proxy.model.local-test', body('local-test', 'after-hellos-edge'), 5_000);
  assert.equal(edgeReply.error, undefined, JSON.stringify(edgeReply));
});

test('forwarded plain requests and streams: one event each, from the serving worker; nothing left in flight', async () => {
  const forwardedBefore = cloud.worker.stats().forwarded;
  const replies = await Promise.all(
    Array.from({ length: 12 }, (_, index) => ask(CLOUD_SUBJECT, body('local-test', `fwd-plain-${index}`))),
  );
  for (const reply of replies) assert.equal(reply.error, undefined, JSON.stringify(reply));
  ollama.enqueue({ kind: 'ok', content: 'a b c d', chunks: 4 });
  const stream = await readStream(CLOUD_SUBJECT, body('local-test', 'fwd-stream-0'));
  assert.equal(stream.mark, 'end', JSON.stringify(stream.terminal));
  assert.deepEqual(
    stream.chunks.map((chunk) => chunk.seq),
    [0, 1, 2, 3],
  );
  assert.equal(cloud.worker.stats().forwarded - forwardedBefore, 13);
  for (let index = 0; index < 12; index += 1) {
    const event = await oneEvent(`fwd-plain-${index}`);
    assert.equal(event.worker_id, edge.worker.id);
    assert.equal(event.status, 'ok');
  }
  assert.equal((await oneEvent('fwd-stream-0')).worker_id, edge.worker.id);
  await idle(cloud);
  await idle(edge);
});

test('a cancel on llm.proxy.cancel stops a forwarded stream: upstream aborted, one cancelled event', async () => {
  const closedBefore = ollama.closedByClient;
  ollama.enqueue({ kind: 'ok', content: 'w '.repeat(100), chunks: 100, chunkIntervalMs: 50 });
  const result = await readStream(CLOUD_SUBJECT, body('local-test', 'fwd-cancel-0'), (_chunk, seen) => {
    if (seen === 2) raw.publish('llm.proxy.cancel', JSON.stringify({ request_id: 'fwd-cancel-0' }));
  });
  assert.equal(result.mark, 'error', JSON.stringify(result.terminal));
  assert.equal((result.terminal?.error as Body | undefined)?.code, 'cancelled');
  const event = await oneEvent('fwd-cancel-0');
  assert.equal(event.status, 'cancelled');
  assert.equal(event.worker_id, edge.worker.id);
  for (let waited = 0; waited < 3_000 && ollama.closedByClient === closedBefore; waited += 25) await sleep(25);
  assert.equal(ollama.closedByClient, closedBefore + 1, 'the upstream call was aborted');
  await idle(cloud);
  await idle(edge);
});

test('a client that goes away from a forwarded stream: the serving worker aborts upstream, event cancelled', async () => {
  const closedBefore = ollama.closedByClient;
  ollama.enqueue({ kind: 'ok', content: 'w '.repeat(200), chunks: 200, chunkIntervalMs: 50 });
  const result = await readStream(CLOUD_SUBJECT, body('local-test', 'fwd-gone-0'), (_chunk, seen) =>
    seen === 2 ? 'stop' : undefined,
  );
  assert.equal(result.terminal, undefined);
  const event = await oneEvent('fwd-gone-0');
  assert.equal(event.status, 'cancelled');
  assert.equal(event.worker_id, edge.worker.id);
  for (let waited = 0; waited < 3_000 && ollama.closedByClient === closedBefore; waited += 25) await sleep(25);
  assert.equal(ollama.closedByClient, closedBefore + 1, 'the upstream call was aborted');
  assert.ok(event.latency_ms < 5_000, `aborted soon, not at the end of the answer (${event.latency_ms} ms)`);
  await idle(cloud);
  await idle(edge);
});

test('odd model names on the forwarding path: answered at once, one event, never passed on twice', async () => {
  const names = ['a.b', 'a b', 'ünïcødé-模型', 'x'.repeat(256), '>', '*', 'llm.proxy.model.>', 'local-test.>', '%2E'];
  for (const [index, model] of names.entries()) {
    for (const subject of [CLOUD_SUBJECT, 'llm.proxy.request']) {
      const id = `odd-${index}-${subject === CLOUD_SUBJECT ? 'c' : 's'}`;
      const started = performance.now();
      const reply = await ask(subject, body(model, id), 3_000);
      assert.equal((reply.error as Body | undefined)?.code, 'model_not_found', `${model}: ${JSON.stringify(reply)}`);
      assert.ok(performance.now() - started < 1_500, 'at once');
      const event = await oneEvent(id);
      assert.equal(event.error_code, 'model_not_found');
    }
  }
  await idle(cloud);
  await idle(edge);
});

test('a request with no reply subject for a model served elsewhere: one event, nothing in flight', async () => {
  raw.publish(CLOUD_SUBJECT, JSON.stringify(body('local-test', 'no-reply-0')));
  await raw.flush();
  const event = await oneEvent('no-reply-0');
  assert.equal(event.status, 'rejected');
  await idle(cloud);
  await idle(edge);
});

test('a forwarded request that arrives already marked LLM-Forwarded with an empty value is passed on once', async () => {
  const marked = headers();
  marked.set('LLM-Forwarded', '');
  const reply = await raw.request(CLOUD_SUBJECT, JSON.stringify(body('local-test', 'empty-mark-0')), {
    timeout: 5_000,
    headers: marked,
  });
  assert.equal(reply.json<Body>().error, undefined);
  assert.equal((await oneEvent('empty-mark-0')).worker_id, edge.worker.id);
});

test('a request within a few bytes of max_payload that has to be passed on is payload_too_large, never internal', async () => {
  // The forwarder adds an `LLM-Forwarded` header: a request within a few dozen bytes of max_payload passes
  // admission (data <= max_request_bytes) but cannot be republished (forward.ts, the publish in forwardRequest).
  const maxPayload = raw.info!.max_payload;
  const request = body('local-test', 'fwd-big-0', { messages: [{ role: 'user', content: '' }] });
  const overhead = Buffer.byteLength(JSON.stringify(request));
  (request.messages as Array<{ content: string }>)[0]!.content = 'x'.repeat(maxPayload - overhead - 8);
  const data = JSON.stringify(request);
  assert.ok(Buffer.byteLength(data) <= maxPayload);
  ollama.enqueue({ kind: 'ok', content: 'short' }, { kind: 'ok', content: 'short' });
  const direct = await raw.request('llm.proxy.model.local-test', data, { timeout: 10_000 });
  assert.equal(direct.json<Body>().error, undefined, 'served when sent to its model');
  const reply = await raw.request(CLOUD_SUBJECT, data.replace('fwd-big-0', 'fwd-big-1'), { timeout: 10_000 });
  // The header the forwarder adds cannot fit: a clear 413 that says how to send it (on its model's subject).
  const error = reply.json<{ error?: { code: string; status: number; message: string } }>().error;
  assert.equal(error?.code, 'payload_too_large', reply.string());
  assert.equal(error?.status, 413);
  assert.match(error?.message ?? '', /model's subject/);
});

test('a hello whose "node" cannot be made a string does not stop the worker reading the bus', async () => {
  // Its own server and worker: the defect takes the worker off the bus for good.
  const server = await startNatsServer();
  const provider = await startFakeOpenAI();
  const victim = await startInProcessWorker({ natsUrl: server.url, config: testConfig({ openai: provider.baseUrl }) });
  const attacker = await connect({ servers: server.url });
  try {
    assert.equal(
      (await attacker.request(CLOUD_SUBJECT, JSON.stringify(body('gpt-test', 'pre')))).json<Body>().error,
      undefined,
    );
    // JSON can carry an object whose toString is not callable: String(hello.node) throws inside the
    // subscription callback (bus-models.ts parseHello, called unguarded from the callback in start()),
    // and a callback that throws stops nats.js's reader for the whole connection.
    attacker.publish('llm.proxy.nodes.hello', JSON.stringify({ worker_id: 'evil', node: { toString: 1 }, models: [] }));
    await attacker.flush();
    await sleep(200);
    const reply = await attacker
      .request(CLOUD_SUBJECT, JSON.stringify(body('gpt-test', 'post')), { timeout: 3_000 })
      .then((message) => message.json<Body>())
      .catch((error: unknown) => ({ error: String(error) }));
    assert.equal(reply.error, undefined, `the worker still answers: ${JSON.stringify(reply)}`);
  } finally {
    await attacker.close();
    await victim.stop({ drainTimeoutMs: 500 });
    await server.dispose();
    await provider.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// Streamed answers from the response cache

function cacheable(content: string, requestId: string, extra: Body = {}): Body {
  return { ...body('gpt-test', requestId, { temperature: 0, ...extra }), messages: [{ role: 'user', content }] };
}

/** What a replay must repeat: the answer's own fields (not the request's id, latency, cost, cache flag). */
function answerOf(terminal: Body | undefined): Body {
  const {
    content,
    usage: tokens,
    provider,
    model,
    model_resolved,
    finish_reason,
    choices,
    tool_calls,
  } = terminal ?? {};
  const { reasoning_content, refusal } = terminal ?? {};
  return {
    content,
    tokens,
    provider,
    model,
    model_resolved,
    finish_reason,
    choices,
    tool_calls,
    reasoning_content,
    refusal,
  };
}

/** A live stream, then two replays: the same chunks and answer, `cached: true` on the terminal, one upstream call. */
async function replayedIdentically(content: string, extra: Body, id: string): Promise<RawStream> {
  const calls = openai.chatRequests.length;
  const live = await readStream(CLOUD_SUBJECT, cacheable(content, `${id}-live`, extra));
  assert.equal(live.mark, 'end', JSON.stringify(live.terminal));
  assert.equal(live.terminal?.cached, false);
  await sleep(100);
  for (const replayId of [`${id}-replay-1`, `${id}-replay-2`]) {
    const replay = await readStream(CLOUD_SUBJECT, cacheable(content, replayId, extra));
    assert.equal(replay.mark, 'end', JSON.stringify(replay.terminal));
    assert.equal(replay.terminal?.cached, true, `${replayId}: from the cache`);
    assert.equal(replay.terminal?.done, true);
    assert.equal(replay.terminal?.request_id, replayId);
    assert.deepEqual(replay.chunks, live.chunks, `${replayId}: the same chunks`);
    assert.deepEqual(answerOf(replay.terminal), answerOf(live.terminal));
    const event = await oneEvent(replayId);
    assert.equal(event.cached, true);
    assert.equal(event.status, 'ok');
  }
  assert.equal(openai.chatRequests.length, calls + 1, 'one upstream call');
  return live;
}

test('a cacheable stream with n = 2 is replayed with the same chunks (each with its index)', async () => {
  openai.enqueue({ kind: 'ok', content: 'two ways to say it', usage: { promptTokens: 3, completionTokens: 8 } });
  const live = await replayedIdentically('n two', { n: 2 }, 'n2');
  assert.deepEqual(new Set(live.chunks.map((chunk) => chunk.index)), new Set([0, 1]));
  assert.equal((live.terminal?.choices as unknown[] | undefined)?.length, 2);
});

test('a stream of tool calls (cache: "force") is replayed with the same tool-call deltas', async () => {
  openai.enqueue({
    kind: 'ok',
    content: null,
    toolCalls: [
      { id: 'call_1', name: 'lookup', arguments: '{"city":"Kyiv"}' },
      { id: 'call_2', name: 'weather', arguments: '{"when":"today"}' },
    ],
  });
  const tools = [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }];
  const live = await replayedIdentically('tools please', { tools, cache: 'force' }, 'tools');
  assert.ok(live.chunks.some((chunk) => Array.isArray(chunk.tool_calls)));
  assert.equal(live.terminal?.finish_reason, 'tool_calls');
});

test('a refusal and a reasoning stream are replayed as they were sent', async () => {
  openai.enqueue({ kind: 'ok', content: null, refusal: 'I cannot help with that request.' });
  const refused = await replayedIdentically('refuse me', {}, 'refusal');
  assert.ok(refused.chunks.some((chunk) => typeof chunk.refusal_delta === 'string'));
  openai.enqueue({ kind: 'ok', content: 'forty-two', reasoningContent: 'let me think about it carefully' });
  const reasoned = await replayedIdentically('think', {}, 'reasoning');
  assert.ok(reasoned.chunks.some((chunk) => typeof chunk.reasoning_delta === 'string'));
});

test('a stream whose client went away mid-way is not stored', async () => {
  openai.enqueue({ kind: 'ok', content: 'w '.repeat(200), chunks: 200, chunkIntervalMs: 30 });
  const calls = openai.chatRequests.length;
  await readStream(CLOUD_SUBJECT, cacheable('leave early', 'leave-0'), (_chunk, seen) =>
    seen === 3 ? 'stop' : undefined,
  );
  assert.equal((await oneEvent('leave-0')).status, 'cancelled');
  openai.enqueue({ kind: 'ok', content: 'fresh' });
  const again = await readStream(CLOUD_SUBJECT, cacheable('leave early', 'leave-1'));
  assert.equal(again.terminal?.cached, false);
  assert.equal(again.terminal?.content, 'fresh');
  assert.equal(openai.chatRequests.length, calls + 2);
  await idle(cloud);
});

/** Whether every chunk is one the protocol allows (README, "A streamed reply"). */
function wellFormed(chunk: Body): boolean {
  if (typeof chunk.seq !== 'number' || typeof chunk.delta !== 'string') return false;
  for (const field of ['reasoning_delta', 'refusal_delta'])
    if (chunk[field] !== undefined && typeof chunk[field] !== 'string') return false;
  if (chunk.tool_calls !== undefined) {
    if (!Array.isArray(chunk.tool_calls)) return false;
    for (const call of chunk.tool_calls as unknown[]) {
      if (call === null || typeof call !== 'object') return false;
      const { index, function: fn } = call as { index?: unknown; function?: unknown };
      if (typeof index !== 'number') return false;
      if (fn !== undefined && (fn === null || typeof fn !== 'object')) return false;
    }
  }
  return true;
}

const GOOD_REPLY = fixtureReply('fine');

/** Damaged answers written straight into LLM_CACHE: each must be a miss (asked upstream), never a broken stream. */
const DAMAGES: Array<{ name: string; stored: Body; extra?: Body }> = [
  { name: 'reply.tool_calls a string', stored: { reply: { ...GOOD_REPLY, tool_calls: 'not a list' } } },
  { name: 'reply.tool_calls [null]', stored: { reply: { ...GOOD_REPLY, tool_calls: [null] } } },
  { name: 'reply.choices [null, null]', stored: { reply: { ...GOOD_REPLY, choices: [null, null] } } },
  { name: 'reply.reasoning_content a number', stored: { reply: { ...GOOD_REPLY, reasoning_content: 5 } } },
  { name: 'reply.refusal an object', stored: { reply: { ...GOOD_REPLY, refusal: { no: 1 } } } },
  {
    name: 'a chunk with tool_calls [null]',
    stored: { reply: GOOD_REPLY, chunks: [{ delta: '', tool_calls: [null] }] },
  },
  { name: 'a chunk with tool_calls [42]', stored: { reply: GOOD_REPLY, chunks: [{ delta: '', tool_calls: [42] }] } },
];

for (const [index, damage] of DAMAGES.entries()) {
  test(`a stored answer with ${damage.name} is a miss on a stream, not a broken stream`, async () => {
    const resolved = resolveConfig(testConfig({ openai: openai.baseUrl }, { cache: { enabled: true } }), 'test', {
      FAKE_OPENAI_KEY: 'x',
    });
    const writer = createResponseCache(resolved.cache, { nats: raw });
    try {
      const request = cacheable(`damage ${index}`, `damage-${index}`);
      const stored = { stored_at: Date.now(), model: 'gpt-test', ...damage.stored };
      await writer.store.set(
        cacheKeyFor(request as never, resolved.models.get('gpt-test')),
        stored as unknown as Parameters<typeof writer.store.set>[1],
      );
      openai.enqueue({ kind: 'ok', content: 'the real answer' });
      const result = await readStream(CLOUD_SUBJECT, request);
      assert.equal(result.mark, 'end', `a clean end: ${JSON.stringify(result.terminal)}`);
      for (const chunk of result.chunks) assert.ok(wellFormed(chunk), `a well-formed chunk: ${JSON.stringify(chunk)}`);
      assert.equal(result.terminal?.cached, false, 'the damaged answer is a miss');
      assert.equal(result.terminal?.content, 'the real answer');
    } finally {
      await writer.store.close();
    }
  });
}

test('a plain request is never answered a damaged stored reply (choices [null], tool_calls a string)', async () => {
  const resolved = resolveConfig(testConfig({ openai: openai.baseUrl }, { cache: { enabled: true } }), 'test', {
    FAKE_OPENAI_KEY: 'x',
  });
  const writer = createResponseCache(resolved.cache, { nats: raw });
  try {
    for (const [index, damage] of [{ choices: [null, null] }, { tool_calls: 'not a list' }].entries()) {
      const request = cacheable(`plain damage ${index}`, `plain-damage-${index}`);
      await writer.store.set(cacheKeyFor(request as never, resolved.models.get('gpt-test')), {
        stored_at: Date.now(),
        model: 'gpt-test',
        reply: { ...GOOD_REPLY, ...damage },
      } as unknown as Parameters<typeof writer.store.set>[1]);
      openai.enqueue({ kind: 'ok', content: 'the real answer' });
      const reply = await ask(CLOUD_SUBJECT, request);
      assert.equal(reply.cached, false, `a miss, not ${JSON.stringify(reply)}`);
      assert.equal(reply.content, 'the real answer');
    }
  } finally {
    await writer.store.close();
  }
});
