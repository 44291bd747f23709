import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, headers as natsHeaders, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import { KeyStore } from '../src/auth/index.js';
import type { ConfigInput } from '../src/config/index.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFakeOllama, startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { eventsOnce as eventsOnceIn } from './helpers/events-once.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * Hostile tests of fallbacks on other nodes while the model's node is up (fallbacks-elsewhere.ts): the origin
 * admits a request, its deployments fail, and it passes it on to `b-model`, which only the fallback worker
 * defines. Requests go on the origin's own model subjects, so the origin is the one that passes them on.
 */

let nats: NatsServerHandle;
let openai: FakeProvider;
let ollama: FakeProvider;
let raw: NatsConnection;
let usage: Subscription;
let keys: KeyStore;
const events: UsageEvent[] = [];
const workers = {} as Record<'origin' | 'fallback', InProcessWorker>;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const subjectOf = (model: string) => `llm.proxy.model.${model}`;
const dead = { type: 'ollama' as const, base_url: 'http://127.0.0.1:1' };
const limits: ConfigInput['limits'] = {
  enabled: true,
  backend: 'nats',
  default: { rpm: null },
  agents: {
    'agent:conc': { concurrent: 1 },
    'agent:tpm': { tpm: 1_000 },
    'agent:rpm': { rpm: 2 },
    'agent:nowhere-conc': { concurrent: 1 },
  },
};

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  ollama = await startFakeOllama();
  openai.setDefault({ kind: 'ok', content: 'fine', usage: { promptTokens: 10, completionTokens: 5 } });
  raw = await connect({ servers: nats.url });
  keys = await KeyStore.open(raw, 'LLM_KEYS');
  const auth = { mode: 'mixed' as const, key_store_wait_ms: 3_000 };
  const origin = testConfig(
    { openai: openai.baseUrl, ollama: ollama.baseUrl },
    {
      providers: { dead },
      models: {
        'a-dead': { provider: 'dead', physical_name: 'x', fallbacks: ['b-model'] },
        'a-nowhere': { provider: 'dead', physical_name: 'x', fallbacks: ['ghost-model'] },
        'a-stall': {
          deployments: [{ provider: 'local', physical_name: 'q', timeout_ms: 600 }],
          fallbacks: ['b-model'],
        },
        // A model allowed a long time (a slow local model): more than a client may ask for in timeout_ms.
        'a-long': { provider: 'dead', physical_name: 'x', timeout_ms: 4_000_000, fallbacks: ['b-model'] },
        'a-chain': { provider: 'dead', physical_name: 'x', fallbacks: ['b-dead'] },
      },
      limits,
      auth,
      cache: { enabled: true, ttl_ms: 60_000 },
    },
  );
  const fallback = testConfig(
    {},
    {
      providers: { openai: { type: 'openai', base_url: openai.baseUrl, api_key_env: 'FAKE_OPENAI_KEY' }, dead },
      models: {
        'b-model': { provider: 'openai', physical_name: 'gpt-4o-mini' },
        // Its fallback gpt-test is the origin's: a request passed on once must not come back.
        'b-dead': { provider: 'dead', physical_name: 'x', fallbacks: ['gpt-test'] },
      },
      limits,
      auth,
      // No cache here: each request passed on is its own upstream call (the origin's cache is under test).
      cache: { enabled: false },
    },
  );
  workers.origin = await startInProcessWorker({ natsUrl: nats.url, config: origin });
  workers.fallback = await startInProcessWorker({ natsUrl: nats.url, config: fallback });
  usage = raw.subscribe('llm.usage.>');
  void (async () => {
    for await (const message of usage) events.push(message.json<UsageEvent>());
  })();
  await sleep(300);
});

after(async () => {
  usage?.unsubscribe();
  for (const worker of Object.values(workers)) await worker.stop({ drainTimeoutMs: 1_000 });
  for (const closing of [raw, openai, ollama]) await closing?.close();
  await nats?.dispose();
});

type Body = Record<string, unknown>;
type Reply = { model?: string; content?: string; error?: { code: string; message: string } };
type Seen = { mark: string; body: Body; at: number };
type OnChunk = (chunks: number) => 'stop' | undefined;

const isTerminal = (message: Seen) => message.mark !== 'chunk' && message.mark !== 'heartbeat';
const body = (model: string, id: string, extra: Body) => ({ model, messages: HI, request_id: id, ...extra });
const HI = [{ role: 'user', content: 'hi' }];

/** One plain request on `model`'s own subject (its only worker); `headers`: extra NATS headers. */
async function ask(model: string, id: string, extra: Body = {}, headers: Record<string, string> = {}): Promise<Reply> {
  const block = natsHeaders();
  for (const [name, value] of Object.entries(headers)) block.set(name, value);
  const request = JSON.stringify(body(model, id, extra));
  return (await raw.request(subjectOf(model), request, { timeout: 10_000, headers: block })).json<Reply>();
}

/**
 * Every message of one stream (heartbeats too), until 400 ms after its first terminal message (to see a
 * second one), `timeoutMs`, or `onChunk` returning 'stop' (a client that goes away).
 */
function collect(model: string, id: string, extra: Body = {}, onChunk?: OnChunk, timeoutMs = 8_000): Promise<Seen[]> {
  const seen: Seen[] = [];
  const started = performance.now();
  const inbox = createInbox();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      subscription.unsubscribe();
      resolve(seen);
    };
    let timer = setTimeout(finish, timeoutMs);
    const subscription = raw.subscribe(inbox, {
      callback: (_error, message) => {
        const mark = message.headers?.get('LLM-Stream') ?? '';
        seen.push({ mark, body: message.json<Body>(), at: performance.now() - started });
        const chunks = seen.filter((one) => one.mark === 'chunk').length;
        if (mark === 'chunk' && onChunk?.(chunks) === 'stop') finish();
        else if (isTerminal(seen.at(-1)!) && seen.filter(isTerminal).length === 1) {
          clearTimeout(timer);
          timer = setTimeout(finish, 400);
        }
      },
    });
    raw.publish(subjectOf(model), JSON.stringify(body(model, id, { ...extra, stream: true })), { reply: inbox });
  });
}

/** One terminal message, last; chunk seqs 0, 1, 2… Returns the terminal. */
function coherent(seen: Seen[], what: string): Seen {
  const terminals = seen.filter(isTerminal);
  assert.equal(terminals.length, 1, `${what}: one terminal message, got ${JSON.stringify(seen.map((m) => m.mark))}`);
  assert.ok(isTerminal(seen.at(-1)!), `${what}: nothing after the terminal message`);
  const seqs = seen.filter((message) => message.mark === 'chunk').map((message) => message.body.seq);
  assert.deepEqual(seqs, [...seqs.keys()], `${what}: chunk seqs in order from 0`);
  return terminals[0]!;
}

/** Exactly one usage event for each id. */
const eventsOnce = (ids: string[]) => eventsOnceIn(events, ids);

async function idle(): Promise<void> {
  for (const [name, worker] of Object.entries(workers)) {
    for (let waited = 0; waited < 5_000 && worker.worker.stats().in_flight > 0; waited += 25) await sleep(25);
    assert.equal(worker.worker.stats().in_flight, 0, `${name}: in_flight back to 0`);
  }
}

/** A deployment nobody listens on: connection refused. */
const DEAD = 'no_provider_available';
const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, index) => `${prefix}-${index}`);

test('a stream whose local deployment stalls past its timeout after heartbeats began: one coherent stream from the fallback', async () => {
  const stalls = [{ kind: 'hang' as const }, { kind: 'stream-stall' as const, afterChunks: 0 }];
  for (const [round, stall] of stalls.entries()) {
    ollama.enqueue(stall);
    openai.enqueue({ kind: 'ok', content: 'from the other node', chunks: 4, chunkIntervalMs: 50 });
    const id = `stall-${round}`;
    const seen = await collect('a-stall', id);
    const terminal = coherent(seen, stall.kind);
    assert.equal(terminal.mark, 'end', JSON.stringify(terminal.body));
    assert.equal(terminal.body.model, 'b-model');
    // The origin's heartbeats (every 200 ms) began while its deployment stalled for 600 ms, before any
    // chunk of the fallback (the order, not a time: a loaded machine can send the first one late).
    const firstChunk = seen.findIndex((one) => one.mark === 'chunk');
    assert.ok(
      seen.slice(0, firstChunk).some((one) => one.mark === 'heartbeat'),
      `${stall.kind}: heartbeats first, got ${JSON.stringify(seen.map((one) => [one.mark, Math.round(one.at)]))}`,
    );
    const text = seen.filter((one) => one.mark === 'chunk').map((one) => one.body.delta);
    assert.equal(text.join(''), terminal.body.content);
    const [event] = await eventsOnce([id]);
    assert.deepEqual([event!.worker_id, event!.status], [workers.fallback.worker.id, 'ok']);
    await idle();
  }
});

test('fallbacks elsewhere without any worker: the origin answers its own error, plain and streamed (a terminal message)', async () => {
  const plain = await ask('a-nowhere', 'nowhere-plain');
  assert.equal(plain.error?.code, DEAD, JSON.stringify(plain));
  const seen = await collect('a-nowhere', 'nowhere-stream', {}, undefined, 4_000);
  const [plainEvent, streamEvent] = await eventsOnce(['nowhere-plain', 'nowhere-stream']);
  assert.equal(plainEvent!.worker_id, workers.origin.worker.id);
  assert.equal(streamEvent!.error_code, DEAD, 'the origin published the error event');
  // The event says the stream failed; its client must be told too, not left waiting.
  assert.equal(coherent(seen, 'the stream (its event says no_provider_available)').mark, 'error');
  await idle();
});

test('a relayed fallback stream cancelled on llm.proxy.cancel, or whose client goes away: upstream aborted, one cancelled event', async () => {
  for (const how of ['cancel', 'gone'] as const) {
    const closedBefore = openai.closedByClient;
    openai.enqueue({ kind: 'ok', content: 'w '.repeat(100), chunks: 100, chunkIntervalMs: 40 });
    const id = `relay-${how}`;
    const seen = await collect('a-dead', id, {}, (chunks) => {
      if (chunks !== 2) return undefined;
      if (how === 'gone') return 'stop';
      raw.publish('llm.proxy.cancel', JSON.stringify({ request_id: id }));
      return undefined;
    });
    if (how === 'cancel') {
      const terminal = coherent(seen, how);
      assert.equal((terminal.body.error as Body | undefined)?.code, 'cancelled', JSON.stringify(terminal.body));
    }
    const [event] = await eventsOnce([id]);
    assert.deepEqual([event!.worker_id, event!.status], [workers.fallback.worker.id, 'cancelled'], how);
    assert.ok(event!.latency_ms < 4_000, `${how}: aborted soon (${event!.latency_ms} ms)`);
    for (let waited = 0; waited < 4_000 && openai.closedByClient === closedBefore; waited += 25) await sleep(25);
    assert.equal(openai.closedByClient, closedBefore + 1, `${how}: the upstream call was aborted`);
    await idle();
  }
});

test('identical cacheable requests (plain and streamed) whose model falls back elsewhere: all answered at once, one event each', async () => {
  openai.clearQueue();
  for (let index = 0; index < 5; index++) openai.enqueue({ kind: 'ok', content: 'same answer', delayMs: 700 });
  const question = { temperature: 0, timeout_ms: 2_000, messages: [{ role: 'user', content: 'same?' }] };
  const started = performance.now();
  const outcomes: Record<string, string> = {};
  const outcome = (id: string, reply: Reply, at: number) => {
    outcomes[id] = `${reply.error?.code ?? reply.content} at ${Math.round(at)} ms`;
  };
  const streams = ids('cached-s', 3).map(async (id) => {
    const terminal = coherent(await collect('a-dead', id, question), id);
    outcome(id, terminal.body as Reply, terminal.at);
  });
  const plains = ids('cached-p', 2).map(async (id) =>
    outcome(id, await ask('a-dead', id, question), performance.now() - started),
  );
  await Promise.all([...streams, ...plains]);
  const cachedEvents = await eventsOnce([...ids('cached-s', 3), ...ids('cached-p', 2)]);
  // Each fallback call takes 0.7 s, the requests 2 s at most: together they fit, one relay after another not.
  const late = Object.values(outcomes).filter((what) => !/^same answer at (\d{1,3}|1[0-4]\d\d) ms$/.test(what));
  assert.deepEqual(late, [], `each answered within 1.5 s: ${JSON.stringify(outcomes)}`);
  for (const event of cachedEvents) assert.equal(event.worker_id, workers.fallback.worker.id, event.request_id);
  openai.clearQueue();
  await idle();
});

test('fallbacks elsewhere without any worker: the request is counted where it is answered (requests/minute, concurrency)', async () => {
  // Its admission is given back before the pass-on; with no fallback taking it, it is admitted again here.
  const rpm = { metadata: { agent_id: 'agent:rpm' } };
  const answers = [];
  for (const index of [0, 1, 2]) answers.push(await ask('a-nowhere', `nowhere-rpm-${index}`, rpm));
  assert.deepEqual(
    answers.map((answer) => answer.error?.code),
    [DEAD, DEAD, 'rate_limited'],
    'two answered with their own error and counted; the third over the limit',
  );
  const counted = await eventsOnce(ids('nowhere-rpm', 3));
  assert.deepEqual(
    counted.map((event) => [event!.worker_id, event!.error_code]),
    [
      [workers.origin.worker.id, DEAD],
      [workers.origin.worker.id, DEAD],
      [workers.origin.worker.id, 'rate_limited'],
    ],
  );
  // The second admission's concurrency slot is freed when the request ends: one after another, each admitted.
  const conc = { metadata: { agent_id: 'agent:nowhere-conc' } };
  for (const index of [0, 1, 2]) {
    const answer = await ask('a-nowhere', `nowhere-conc-${index}`, conc);
    assert.equal(answer.error?.code, DEAD, `request ${index}: ${JSON.stringify(answer)}`);
  }
  await eventsOnce(ids('nowhere-conc', 3));
  await idle();
});

test('a tiny timeout_ms: what is left goes to the fallback, which times out in it; too little left is answered here', async () => {
  openai.clearQueue();
  const fast = await ask('a-dead', 'tiny-0', { timeout_ms: 300 });
  assert.equal(fast.model, 'b-model', JSON.stringify(fast));
  const closedBefore = openai.closedByClient;
  openai.enqueue({ kind: 'ok', delayMs: 3_000 }, { kind: 'ok', delayMs: 3_000 });
  const started = performance.now();
  const slow = await ask('a-dead', 'tiny-1', { timeout_ms: 150 });
  assert.equal(slow.error?.code, 'upstream_timeout', JSON.stringify(slow));
  // Its fallback's answer would take 3 s: anything well under that is the 150 ms honoured (a loaded
  // machine adds its own delay, so the bound is loose).
  assert.ok(performance.now() - started < 2_000, `no hang past its 150 ms (${performance.now() - started} ms)`);
  const seen = await collect('a-dead', 'tiny-2', { timeout_ms: 150 });
  assert.equal((coherent(seen, 'tiny stream').body.error as Body | undefined)?.code, 'upstream_timeout');
  assert.ok(seen.find(isTerminal)!.at < 2_000, `stream ended in time (${seen.find(isTerminal)!.at} ms)`);
  const short = await ask('a-dead', 'tiny-3', { timeout_ms: 60 });
  assert.ok(short.error !== undefined, JSON.stringify(short));
  const [e0, e1, e2, e3] = await eventsOnce(ids('tiny', 4));
  for (const event of [e0, e1, e2]) assert.equal(event!.worker_id, workers.fallback.worker.id, event!.request_id);
  assert.equal(e3!.worker_id, workers.origin.worker.id, 'too little left: not passed on');
  for (let waited = 0; waited < 3_000 && openai.closedByClient < closedBefore + 2; waited += 25) await sleep(25);
  assert.equal(openai.closedByClient, closedBefore + 2, 'the timed-out fallback calls were aborted');
  await idle();
});

test('a model allowed longer than a client may ask (timeout_ms over 1 h): its fallback elsewhere still serves it', async () => {
  const reply = await ask('a-long', 'long-0');
  assert.equal(reply.error, undefined, `served by b-model, not refused: ${JSON.stringify(reply.error)}`);
  assert.equal(reply.model, 'b-model');
  assert.equal((await eventsOnce(['long-0']))[0]!.status, 'ok');
  await idle();
});

test('limits: concurrent 1 and a tpm budget stay exact across handovers (no lease or token reservation left behind)', async () => {
  // Plain and streamed by turns; conc-2 is a request no fallback takes (answered here, its admission given back).
  const answer = async (index: number, model: string, id: string, extra: Body): Promise<Reply> =>
    index % 2 === 1 ? (coherent(await collect(model, id, extra), id).body as Reply) : ask(model, id, extra);
  const concIds = ids('conc', 6);
  for (const [index, id] of concIds.entries()) {
    const reply = await answer(index, index === 2 ? 'a-nowhere' : 'a-dead', id, {
      metadata: { agent_id: 'agent:conc' },
    });
    assert.equal(reply.model ?? reply.error?.code, index === 2 ? DEAD : 'b-model', `${id}: ${JSON.stringify(reply)}`);
  }
  // tpm 1000: each request reserves ~610 tokens (on the origin, given back, then on the fallback) and uses 15.
  const tpmIds = ids('tpm', 5);
  for (const [index, id] of tpmIds.entries()) {
    const extra = { metadata: { agent_id: 'agent:tpm' }, max_tokens: index === 4 ? 850 : 600 };
    const reply = await answer(index, 'a-dead', id, extra);
    assert.equal(reply.model, 'b-model', `${id}: ${JSON.stringify(reply)}`);
  }
  for (const event of await eventsOnce([...concIds, ...tpmIds]))
    assert.equal(
      event.worker_id,
      event.request_id === 'conc-2' ? workers.origin.worker.id : workers.fallback.worker.id,
    );
  await idle();
});

test("per-agent keys: the key's limits count a handed-over request once; a key that excludes the fallback is still counted", async () => {
  const both = await keys.create({ agentId: 'agent:k1', models: ['a-dead', 'b-model'], limits: { rpm: 2 } });
  const codesOf = async (prefix: string, key: string) => {
    const codes = [];
    for (const id of ids(prefix, 3))
      codes.push((await ask('a-dead', id, {}, { Authorization: `Bearer ${key}` })).error?.code);
    return codes;
  };
  const codes = await codesOf('key-both', both.key);
  assert.deepEqual(codes, [undefined, undefined, 'rate_limited'], 'rpm 2 of the key: counted once each');

  const narrow = await keys.create({ agentId: 'agent:k2', models: ['a-dead'], limits: { rpm: 2 } });
  const calls = openai.chatRequests.length;
  const narrowCodes = await codesOf('key-narrow', narrow.key);
  assert.equal(openai.chatRequests.length, calls, 'b-model is outside the key: never passed on');
  await eventsOnce([...ids('key-both', 3), ...ids('key-narrow', 3)]);
  assert.deepEqual(
    narrowCodes,
    [DEAD, DEAD, 'rate_limited'],
    'nothing could be passed on, yet its admission was given back: rpm 2 of the key never applies',
  );
  await idle();
});

test('a request passed on once is never passed on again, nor one a client marks LLM-Forwarded', async () => {
  const calls = openai.chatRequests.length;
  const chained = await ask('a-chain', 'chain-0');
  assert.equal(chained.error?.code, DEAD, JSON.stringify(chained));
  const forged = await ask('a-dead', 'forged-0', {}, { 'LLM-Forwarded': 'forged' });
  assert.equal(forged.error?.code, DEAD, JSON.stringify(forged));
  assert.equal(openai.chatRequests.length, calls, 'neither gpt-test nor b-model was called');
  const [chain, forgedEvent] = await eventsOnce(['chain-0', 'forged-0']);
  assert.equal(chain!.worker_id, workers.fallback.worker.id, "b-dead's worker answered, it did not pass it back");
  assert.equal(chain!.model, 'b-dead');
  assert.equal(forgedEvent!.worker_id, workers.origin.worker.id);
  await idle();
});
