import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import { resolveConfig } from '../src/config/index.js';
import { ProxyError } from '../src/contract/errors.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { checkSystemHealth } from '../src/health/system-health.js';
import { startFakeOllama, startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { eventsOnce as eventsOnceIn } from './helpers/events-once.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { readRawStream } from './helpers/raw-stream.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * Hostile tests of fallbacks across nodes (forward.ts, bus-models.ts), of cancelling a coalesced
 * request while it waits (coalescer.ts, one-reply.ts, stream-reply.ts) and of the health check's
 * deployments across workers (system-health.ts), over a real nats-server.
 *
 * Gone nodes are simulated by hellos for models nobody subscribes to. Every request is sent on the
 * subject of a model that only one worker serves (`llm.proxy.model.<token>`), with a body naming another
 * model: that worker is then, deterministically, the one that passes it on.
 */

let nats: NatsServerHandle;
let openai: FakeProvider;
let ollama: FakeProvider;
let raw: NatsConnection;
let usage: Subscription;
const events: UsageEvent[] = [];
const workers: Record<'cloud' | 'edge' | 'solo' | 'refuser' | 'coalA' | 'coalB', InProcessWorker> = {} as never;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const subjectOf = (model: string) => `llm.proxy.model.${model}`;
const LONG_FALLBACK = `fallback-${'n'.repeat(200)}`;
/** The hello of a node that is gone: its models have no worker left, their fallbacks were said. */
const GHOST_HELLO = {
  worker_id: 'ghost-worker',
  node: 'gone',
  models: ['ghost-a', 'ghost-b', 'ghost-s', 'ghost-x', 'ghost-r', 'ghost-t', 'ghost-big'],
  fallbacks: {
    'ghost-a': ['ghost-b'],
    'ghost-b': ['ghost-a'],
    'ghost-s': ['solo-test'],
    'ghost-x': ['nowhere', 'gpt-test'],
    'ghost-r': ['refuse-test', 'gpt-test'],
    'ghost-t': ['refuse-test'],
    'ghost-big': [LONG_FALLBACK, 'gpt-test'],
  },
};

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  ollama = await startFakeOllama();
  const natsUrl = nats.url;
  const openaiModel = { provider: 'openai', physical_name: 'gpt-4o-mini' };
  workers.cloud = await startInProcessWorker({ natsUrl, config: testConfig({ openai: openai.baseUrl }) });
  workers.edge = await startInProcessWorker({ natsUrl, config: testConfig({ ollama: ollama.baseUrl }) });
  const only = (model: string, overrides: Parameters<typeof testConfig>[1] = {}) =>
    testConfig(
      {},
      {
        ...overrides,
        providers: { openai: { type: 'openai', base_url: openai.baseUrl, api_key_env: 'FAKE_OPENAI_KEY' } },
        models: { [model]: openaiModel },
      },
    );
  workers.solo = await startInProcessWorker({ natsUrl, config: only('solo-test', { worker: { max_in_flight: 1 } }) });
  workers.refuser = await startInProcessWorker({
    natsUrl,
    config: only('refuse-test', { worker: { max_request_bytes: 4_096 } }),
    hooks: {
      beforeRoute: () => {
        throw new ProxyError('rate_limited', 'over the limit (test)');
      },
    },
  });
  const coal = only('coal-test', { worker: { max_in_flight: 1 }, cache: { enabled: true, ttl_ms: 60_000 } });
  workers.coalA = await startInProcessWorker({ natsUrl, config: coal });
  workers.coalB = await startInProcessWorker({ natsUrl, config: coal });
  raw = await connect({ servers: natsUrl });
  usage = raw.subscribe('llm.usage.>');
  void (async () => {
    for await (const message of usage) events.push(message.json<UsageEvent>());
  })();
  raw.publish('llm.proxy.nodes.hello', JSON.stringify(GHOST_HELLO));
  await raw.flush();
  await sleep(300);
});

after(async () => {
  usage?.unsubscribe();
  await raw?.close();
  for (const worker of Object.values(workers)) await worker.stop({ drainTimeoutMs: 1_000 });
  await openai?.close();
  await ollama?.close();
  await nats?.dispose();
});

type Body = Record<string, unknown>;
type Reply = { model?: string; provider?: string; content?: string; error?: { code: string; message: string } };

function body(model: string, requestId: string, extra: Body = {}): Body {
  return { model, messages: [{ role: 'user', content: 'hi' }], request_id: requestId, ...extra };
}

async function ask(subject: string, request: Body, timeout = 10_000): Promise<Reply> {
  return (await raw.request(subject, JSON.stringify(request), { timeout })).json<Reply>();
}

/** Reads a stream; `onChunk` may cancel or return 'stop' (a client that goes away). */
const readStream = (subject: string, request: Body, onChunk?: (seen: number) => unknown) =>
  readRawStream(raw, subject, request, onChunk === undefined ? undefined : (_chunk, seen) => onChunk(seen));

/** A stream whose client stops listening after `ms` (while nothing but heartbeats came). */
async function goneStream(subject: string, request: Body, ms: number): Promise<void> {
  const inbox = createInbox();
  const subscription = raw.subscribe(inbox, { callback: () => undefined });
  raw.publish(subject, JSON.stringify({ ...request, stream: true }), { reply: inbox });
  await sleep(ms);
  subscription.unsubscribe();
}

/** Exactly one usage event for each id. */
const eventsOnce = (ids: string[]) => eventsOnceIn(events, ids);

const oneEvent = async (requestId: string): Promise<UsageEvent> => (await eventsOnce([requestId]))[0]!;

async function idle(...names: Array<keyof typeof workers>): Promise<void> {
  for (const name of names) {
    const worker = workers[name];
    for (let waited = 0; waited < 5_000 && worker.worker.stats().in_flight > 0; waited += 25) await sleep(25);
    assert.equal(worker.worker.stats().in_flight, 0, `${name}: in_flight back to 0`);
    // A worker with max_in_flight 1 left the queue group while busy: wait until it has joined again and
    // the server has its subscriptions (a flush of its own connection), or the next request finds no one.
    for (let waited = 0; waited < 5_000 && worker.worker.stats().paused; waited += 25) await sleep(25);
    await worker.worker.connection.flush();
  }
}

const fallbackLogs = (name: keyof typeof workers, requestId: string) =>
  workers[name].logs
    .records()
    .filter(
      (line) => line.msg === 'no worker serves the model: passed on to its fallback' && line.request_id === requestId,
    );

// ---------------------------------------------------------------------------------------------------
// Fallbacks across nodes

test('a fallback cycle across hellos (A→B, B→A, both gone) ends at once: no_provider_available, one event', async () => {
  const started = performance.now();
  const reply = await ask(subjectOf('gpt-test'), body('ghost-a', 'cycle-0'), 5_000);
  assert.equal(reply.error?.code, 'no_provider_available', JSON.stringify(reply));
  assert.ok(performance.now() - started < 1_500, 'at once');
  const event = await oneEvent('cycle-0');
  assert.equal(event.worker_id, workers.cloud.worker.id);
  assert.equal(event.error_code, 'no_provider_available');
  assert.equal(fallbackLogs('cloud', 'cycle-0').length, 1, 'ghost-b tried once, ghost-a never again');
  await idle('cloud');
});

test('hostile hellos giving served models fallbacks never redirect them', async () => {
  const hostile = {
    worker_id: 'evil',
    node: 'evil',
    models: ['gpt-test', 'local-test', 'solo-test'],
    fallbacks: { 'gpt-test': ['local-test'], 'local-test': ['gpt-test'], 'solo-test': ['gpt-test'] },
  };
  raw.publish('llm.proxy.nodes.hello', JSON.stringify(hostile));
  await raw.flush();
  await sleep(200);
  const calls = { openai: openai.chatRequests.length, ollama: ollama.chatRequests.length };
  const toEdge = await ask(subjectOf('gpt-test'), body('local-test', 'hostile-0'));
  assert.equal(toEdge.model, 'local-test', JSON.stringify(toEdge));
  const toCloud = await ask(subjectOf('local-test'), body('gpt-test', 'hostile-1'));
  assert.equal(toCloud.model, 'gpt-test', JSON.stringify(toCloud));
  assert.equal(openai.chatRequests.length, calls.openai + 1);
  assert.equal(ollama.chatRequests.length, calls.ollama + 1);
  assert.equal((await oneEvent('hostile-0')).worker_id, workers.edge.worker.id);
  assert.equal((await oneEvent('hostile-1')).worker_id, workers.cloud.worker.id);
  await idle('cloud', 'edge');
});

test("a fallback the forwarding worker serves itself is answered, even when the relay fills the worker's max_in_flight", async () => {
  // solo serves solo-test with max_in_flight 1. The relay of a ghost-s request takes that one slot,
  // the worker leaves the queue group, and its own fallback subject then has no responders.
  await idle('solo');
  const direct = await ask(subjectOf('solo-test'), body('solo-test', 'solo-direct'));
  assert.equal(direct.error, undefined, 'solo-test itself is served');
  await idle('solo');
  const reply = await ask(subjectOf('solo-test'), body('ghost-s', 'solo-fallback'));
  assert.equal(reply.error, undefined, `answered by its fallback solo-test, not ${JSON.stringify(reply.error)}`);
  assert.equal(reply.model, 'solo-test');
  assert.equal((await oneEvent('solo-fallback')).status, 'ok');
  await idle('solo');
});

test('a stream passed on to a fallback whose worker refuses it before reading it (max_request_bytes): the relay ends too', async () => {
  // refuse-test's worker takes at most 4 KiB: it refuses before it knows the request is a stream, so its
  // answer carries no LLM-Stream mark. The forwarder (solo) must still take that answer as the end.
  const refusedBefore = events.filter((event) => event.worker_id === workers.refuser.worker.id).length;
  const request = body('ghost-t', 'fb-size-0', { messages: [{ role: 'user', content: 'y'.repeat(8_000) }] });
  const result = await readStream(subjectOf('solo-test'), request);
  assert.equal((result.terminal?.error as Body | undefined)?.code, 'payload_too_large', JSON.stringify(result));
  await sleep(300);
  // (refused before its body was read: its event has an id of its own, not fb-size-0)
  const refused = events.filter((event) => event.worker_id === workers.refuser.worker.id).slice(refusedBefore);
  assert.deepEqual(
    refused.map((event) => event.error_code),
    ['payload_too_large'],
  );
  assert.equal(events.filter((event) => event.request_id === 'fb-size-0').length, 0, 'none from the forwarder');
  await idle('solo', 'refuser');
});

test('a request near max_payload whose first fallback cannot carry it goes on to the next fallback', async () => {
  // The body for ghost-big fits with the forwarder's header; rewritten with LONG_FALLBACK it does not,
  // but rewritten with gpt-test (shorter than ghost-big) it does.
  const maxPayload = raw.info!.max_payload;
  const request = body('ghost-big', 'big-0', { messages: [{ role: 'user', content: '' }] });
  const overhead = Buffer.byteLength(JSON.stringify(request));
  (request.messages as Array<{ content: string }>)[0]!.content = 'x'.repeat(maxPayload - overhead - 120);
  const calls = openai.chatRequests.length;
  // A short answer (the fake echoes the prompt, which would make a reply over max_payload).
  openai.enqueue({ kind: 'ok', content: 'short' });
  const reply = await ask(subjectOf('local-test'), request);
  assert.notEqual(reply.error?.code, 'internal', JSON.stringify(reply.error));
  const event = await oneEvent('big-0');
  assert.equal(
    reply.error,
    undefined,
    `served by gpt-test (which fits), not refused: ${JSON.stringify(reply.error)} (event from ${event.worker_id === workers.edge.worker.id ? 'the forwarder' : 'another worker'})`,
  );
  assert.equal(reply.model, 'gpt-test');
  assert.equal(openai.chatRequests.length, calls + 1);
  await idle('edge', 'cloud');
});

test("a fallback's worker refusing (rate limited): the refusal is relayed, one event from it, next fallback untouched", async () => {
  const calls = openai.chatRequests.length;
  const reply = await ask(subjectOf('local-test'), body('ghost-r', 'refused-0'));
  assert.equal(reply.error?.code, 'rate_limited', JSON.stringify(reply));
  const event = await oneEvent('refused-0');
  assert.equal(event.worker_id, workers.refuser.worker.id);
  assert.equal(event.model, 'refuse-test');
  assert.equal(openai.chatRequests.length, calls);
  await idle('edge', 'refuser');
});

test('a stream passed on to a fallback, then cancelled on llm.proxy.cancel: upstream aborted, one cancelled event', async () => {
  const closedBefore = openai.closedByClient;
  openai.enqueue({ kind: 'ok', content: 'w '.repeat(100), chunks: 100, chunkIntervalMs: 50 });
  const result = await readStream(subjectOf('local-test'), body('ghost-x', 'fb-cancel-0'), (seen) => {
    if (seen === 2) raw.publish('llm.proxy.cancel', JSON.stringify({ request_id: 'fb-cancel-0' }));
  });
  assert.equal(result.mark, 'error', JSON.stringify(result.terminal));
  assert.equal((result.terminal?.error as Body | undefined)?.code, 'cancelled');
  const event = await oneEvent('fb-cancel-0');
  assert.equal(event.status, 'cancelled');
  assert.equal(event.model, 'gpt-test');
  assert.equal(event.worker_id, workers.cloud.worker.id);
  for (let waited = 0; waited < 3_000 && openai.closedByClient === closedBefore; waited += 25) await sleep(25);
  assert.equal(openai.closedByClient, closedBefore + 1, 'the upstream call was aborted');
  await idle('edge', 'cloud');
});

test('a stream passed on to a fallback whose client goes away: upstream aborted, one cancelled event', async () => {
  const closedBefore = openai.closedByClient;
  openai.enqueue({ kind: 'ok', content: 'w '.repeat(200), chunks: 200, chunkIntervalMs: 30 });
  const result = await readStream(subjectOf('local-test'), body('ghost-x', 'fb-gone-0'), (seen) =>
    seen === 2 ? 'stop' : undefined,
  );
  assert.equal(result.terminal, undefined);
  const event = await oneEvent('fb-gone-0');
  assert.equal(event.status, 'cancelled');
  assert.ok(event.latency_ms < 4_000, `aborted soon (${event.latency_ms} ms)`);
  for (let waited = 0; waited < 3_000 && openai.closedByClient === closedBefore; waited += 25) await sleep(25);
  assert.equal(openai.closedByClient, closedBefore + 1, 'the upstream call was aborted');
  await idle('edge', 'cloud');
});

test('many concurrent requests for a gone model (plain, streamed, no reply subject): one event each, nothing in flight', async () => {
  const plain = Array.from({ length: 24 }, (_, index) =>
    ask(subjectOf('local-test'), body('ghost-x', `many-p-${index}`)),
  );
  const streams = Array.from({ length: 8 }, (_, index) =>
    readStream(subjectOf('local-test'), body('ghost-x', `many-s-${index}`)),
  );
  raw.publish(subjectOf('local-test'), JSON.stringify(body('ghost-x', 'many-noreply')));
  for (const reply of await Promise.all(plain)) assert.equal(reply.model, 'gpt-test', JSON.stringify(reply));
  for (const stream of await Promise.all(streams)) assert.equal(stream.mark, 'end', JSON.stringify(stream.terminal));
  const plainIds = Array.from({ length: 24 }, (_, index) => `many-p-${index}`);
  const streamIds = Array.from({ length: 8 }, (_, index) => `many-s-${index}`);
  const [noReply, ...answered] = await eventsOnce(['many-noreply', ...plainIds, ...streamIds]);
  for (const event of answered) {
    assert.equal(event.worker_id, workers.cloud.worker.id, event.request_id);
    assert.equal(event.status, 'ok', event.request_id);
  }
  assert.equal(noReply!.worker_id, workers.edge.worker.id);
  assert.equal(noReply!.status, 'rejected');
  await idle('edge', 'cloud');
});

// ---------------------------------------------------------------------------------------------------
// Cancelling a coalesced request that waits for another worker's answer (KV claims)

test("a request waiting for another worker's identical answer ends at once when cancelled, or when its stream client goes away", async () => {
  for (const [round, how] of (['cancel', 'gone'] as const).entries()) {
    const question = { model: 'coal-test', temperature: 0, messages: [{ role: 'user', content: `coalesce ${round}` }] };
    openai.enqueue({ kind: 'ok', delayMs: 3_500, content: `shared ${round}` });
    const calls = openai.chatRequests.length;
    // Both workers have max_in_flight 1: the leader takes one, and the waiter can only reach the other.
    const leader = ask(subjectOf('coal-test'), { ...question, request_id: `coal-lead-${round}` });
    await sleep(300);
    const started = performance.now();
    const waiter =
      how === 'cancel'
        ? ask(subjectOf('coal-test'), { ...question, request_id: `coal-wait-${round}` }).catch((error: unknown) => ({
            error: { code: String(error), message: '' },
          }))
        : goneStream(subjectOf('coal-test'), { ...question, request_id: `coal-wait-${round}` }, 300);
    await sleep(300);
    if (how === 'cancel') raw.publish('llm.proxy.cancel', JSON.stringify({ request_id: `coal-wait-${round}` }));
    const waited = await oneEvent(`coal-wait-${round}`);
    assert.equal(waited.status, 'cancelled', `${how}: ${JSON.stringify(waited)}`);
    // The answer comes 3.2 s after `started`: a loaded machine's delays stay well under that.
    assert.ok(performance.now() - started < 2_500, `${how}: ended before the answer it waited for`);
    if (how === 'cancel') assert.equal(((await waiter) as Reply).error?.code, 'cancelled');
    const led = await leader;
    assert.equal(led.content, `shared ${round}`);
    const lead = await oneEvent(`coal-lead-${round}`);
    assert.notEqual(lead.worker_id, waited.worker_id, 'the two were on different workers');
    assert.equal(openai.chatRequests.length, calls + 1, 'one upstream call');
    await idle('coalA', 'coalB');
  }
});

// ---------------------------------------------------------------------------------------------------
// llm-proxy health: deployments across every worker

test('llm-proxy health with a responder on llm.proxy.nodes that answers garbage rows still reports every worker', async () => {
  const garbage = raw.subscribe('llm.proxy.nodes', {
    callback: (_error, message) => {
      // Shaped as a worker's answer (a models list), so that its rows are what must be read with care.
      message.respond(JSON.stringify({ worker_id: 'garbage', models: [], health: [null, 42, 'x'] }));
    },
  });
  try {
    await raw.flush();
    const config = resolveConfig(testConfig({ openai: openai.baseUrl }), 'test', { FAKE_OPENAI_KEY: 'x' });
    const report = await checkSystemHealth({ connection: raw, config, timeoutMs: 1_500 });
    const deployments = report.checks.find((check) => check.name === 'deployments')!;
    for (const [name, worker] of Object.entries(workers))
      assert.ok(deployments.worker_ids?.includes(worker.worker.id), `${name} is in ${deployments.detail}`);
  } finally {
    garbage.unsubscribe();
  }
});
