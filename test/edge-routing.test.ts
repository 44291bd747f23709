import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { headers, type NatsConnection } from '@nats-io/nats-core';
import { LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFrontDoor } from '../src/http/front-door.js';
import { httpSchema } from '../src/config/http-schema.js';
import { createLogger } from '../src/telemetry/logger.js';
import type { FakeProvider } from './fakes/index.js';
import type { NatsServerHandle } from './helpers/nats-server.js';
import { startTwoNodes, type TwoNodes } from './helpers/two-nodes.js';
import type { InProcessWorker } from './helpers/worker.js';

/**
 * Workers with different model sets on one bus (issue 19): each takes `llm.proxy.request` and its own
 * models' subjects. A request reaches a worker that serves its model (the typed client sends it to the
 * model's subject; a worker that gets one on the seed's subject passes it on once), is answered once
 * and counted once; a model whose node left fails at once.
 */

let nats: NatsServerHandle;
let ollama: FakeProvider;
let cloud: InProcessWorker;
let edge: InProcessWorker | undefined;
let raw: NatsConnection;
let client: LlmProxyClient;
let events: UsageEvent[];
let bus: TwoNodes;

before(async () => {
  bus = await startTwoNodes();
  ({ nats, ollama, cloud, edge, raw, client, events } = bus);
});

after(() => bus?.close());

function body(model: string, requestId: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model, messages: [{ role: 'user', content: 'hi' }], request_id: requestId, ...extra };
}

async function seed(request: ChatRequest) {
  const reply = await raw.request('llm.proxy.request', JSON.stringify(request), { timeout: 10_000 });
  return reply.json<{ content?: string; provider?: string; error?: { code: string; message: string } }>();
}

async function settle(): Promise<void> {
  await raw.flush();
  await new Promise((resolve) => setTimeout(resolve, 300));
}

test("on the seed's subject, every request is answered by a worker that has its model, once", async () => {
  const before = { cloud: cloud.worker.stats(), edge: edge!.worker.stats() };
  const replies = await Promise.all(
    Array.from({ length: 20 }, (_, index) => seed(body(index % 2 === 0 ? 'local-test' : 'gpt-test', `seed-${index}`))),
  );
  for (const [index, reply] of replies.entries()) {
    assert.equal(reply.error, undefined, `request ${index}: ${JSON.stringify(reply.error)}`);
    assert.equal(reply.provider, index % 2 === 0 ? 'local' : 'openai');
  }
  const forwarded =
    cloud.worker.stats().forwarded - before.cloud.forwarded + (edge!.worker.stats().forwarded - before.edge.forwarded);
  assert.ok(forwarded > 0, 'some requests reached a worker without their model and were passed on');
  await settle();
  for (let index = 0; index < 20; index += 1) {
    const mine = events.filter((event) => event.request_id === `seed-${index}`);
    assert.equal(mine.length, 1, `one usage event for seed-${index}`);
    assert.equal(mine[0]!.status, 'ok');
    assert.equal(mine[0]!.worker_id, index % 2 === 0 ? edge!.worker.id : cloud.worker.id);
  }
});

test('a stream passed on is relayed whole: chunks in order, one terminal message, one event', async () => {
  ollama.enqueue({ kind: 'ok', content: 'one two three four five', chunks: 5 });
  // Asked on the seed's subject until the cloud worker (which has no local-test) is the one that got it.
  let attempts = 0;
  const startForwarded = cloud.worker.stats().forwarded;
  while (cloud.worker.stats().forwarded === startForwarded && attempts < 20) {
    attempts += 1;
    const inbox = raw.subscribe(`_INBOX.edge-stream-${attempts}`);
    raw.publish('llm.proxy.request', JSON.stringify(body('local-test', `stream-${attempts}`, { stream: true })), {
      reply: `_INBOX.edge-stream-${attempts}`,
    });
    const deltas: string[] = [];
    let terminal: Record<string, unknown> | undefined;
    for await (const message of inbox) {
      const mark = message.headers?.get('LLM-Stream');
      if (mark === 'heartbeat') continue;
      const value = message.json<Record<string, unknown>>();
      if (mark === 'chunk') deltas.push(String(value.delta));
      else {
        terminal = value;
        break;
      }
    }
    inbox.unsubscribe();
    assert.equal(terminal?.done, true, JSON.stringify(terminal));
    assert.equal(String(terminal?.content), deltas.join(''));
    if (cloud.worker.stats().forwarded === startForwarded)
      ollama.enqueue({ kind: 'ok', content: 'one two three four five', chunks: 5 });
  }
  assert.ok(cloud.worker.stats().forwarded > startForwarded, 'a stream was passed on');
  await settle();
  assert.equal(events.filter((event) => event.request_id === `stream-${attempts}`).length, 1);
});

test('the typed client sends to the model subject: only workers with the model see it', async () => {
  const before = cloud.worker.stats().requests;
  for (let index = 0; index < 10; index += 1) {
    const reply = await client.chat(body('local-test', `typed-${index}`));
    assert.equal(reply.provider, 'local');
  }
  assert.equal(cloud.worker.stats().requests, before, 'the cloud worker never saw them');
  const streamed = await client.stream(body('local-test', 'typed-stream', { stream: true })).final;
  assert.equal(streamed.provider, 'local');
});

test("the HTTP front door lists every worker's models and serves each through its node", async () => {
  const frontDoor = await startFrontDoor({
    http: httpSchema.parse({}),
    connecting: connect({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: undefined,
    logger: createLogger({ level: 'silent' }),
    port: 0,
  });
  try {
    for (let tries = 0; tries < 50 && !frontDoor.bus.connected; tries++)
      await new Promise((resolve) => setTimeout(resolve, 50));
    const openaiList = (await (await fetch(`${frontDoor.url}/v1/models`)).json()) as { data: Array<{ id: string }> };
    assert.deepEqual(
      openaiList.data.map((model) => model.id),
      ['gpt-test', 'local-test'],
    );
    const seedList = (await (await fetch(`${frontDoor.url}/internal/llm/models`)).json()) as {
      models: Array<{ name: string }>;
    };
    assert.deepEqual(
      seedList.models.map((model) => model.name),
      ['gpt-test', 'local-test'],
    );
    const one = await fetch(`${frontDoor.url}/v1/models/local-test`);
    assert.equal(one.status, 200);
    const before = cloud.worker.stats().requests;
    const answer = await fetch(`${frontDoor.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'local-test', messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal(answer.status, 200);
    assert.equal(cloud.worker.stats().requests, before, 'sent to the model subject: the cloud worker never saw it');
  } finally {
    await frontDoor.close();
  }
});

test('an unknown model is model_not_found; a model whose node left is no_provider_available, at once', async () => {
  const unknown = await seed(body('no-such-model', 'unknown-0'));
  assert.equal(unknown.error?.code, 'model_not_found');
  await assert.rejects(client.chat(body('no-such-model', 'unknown-1')), (error: unknown) => {
    assert.ok(error instanceof LlmProxyError);
    assert.equal(error.code, 'model_not_found');
    return true;
  });

  await edge!.stop();
  edge = undefined;
  const started = performance.now();
  const gone = await seed(body('local-test', 'gone-0'));
  assert.equal(gone.error?.code, 'no_provider_available', JSON.stringify(gone.error));
  await assert.rejects(client.chat(body('local-test', 'gone-1')), (error: unknown) => {
    assert.ok(error instanceof LlmProxyError);
    assert.equal(error.code, 'no_provider_available');
    return true;
  });
  const stream = client.stream(body('local-test', 'gone-2', { stream: true }));
  await assert.rejects(
    stream.final,
    (error: unknown) => error instanceof LlmProxyError && error.code === 'no_provider_available',
  );
  assert.ok(performance.now() - started < 2_000, 'failed at once, not after a timeout');
  await settle();
  for (const id of ['gone-0', 'gone-1', 'gone-2']) {
    const mine = events.filter((event) => event.request_id === id);
    assert.equal(mine.length, 1, `one event for ${id}`);
    assert.equal(mine[0]!.error_code, 'no_provider_available');
  }
});

test('a request passed on once is never passed on again (LLM-Forwarded)', async () => {
  const forwarded = headers();
  forwarded.set('LLM-Forwarded', 'another-worker');
  const before = cloud.worker.stats().forwarded;
  const reply = await raw.request('llm.proxy.request', JSON.stringify(body('local-test', 'loop-0')), {
    timeout: 5_000,
    headers: forwarded,
  });
  assert.equal(reply.json<{ error: { code: string } }>().error.code, 'model_not_found');
  assert.equal(cloud.worker.stats().forwarded, before);
});
