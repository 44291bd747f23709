/**
 * Issue 12, "Usage publishing can be stopped or fooled" and "Bad input and secrets": each case as the
 * outside testers reproduced it, over a real nats-server, a worker that requires a secret, the fake
 * OpenAI provider and an aggregator counting what finance would bill.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, headers as createHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { MAX_AGENT_TOKEN_LENGTH } from '../src/contract/subjects.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, waitForUsageEvents, type InProcessWorker } from './helpers/worker.js';

const SECRET = 'hardening-secret-7f3a9c';
const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

function secretHeaders(name = 'X-Internal-Secret', value = SECRET): MsgHdrs {
  const headers = createHeaders();
  headers.set(name, value);
  return headers;
}

const chatBody = (fields: Record<string, unknown>) =>
  JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], ...fields });

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let worker: InProcessWorker;
let client: NatsConnection;
let aggregatorConnection: NatsConnection;
let aggregator: UsageAggregator;
const disconnects: string[] = [];

/** A request with the secret, or with the headers given (`null`: none at all). */
async function ask(
  body: string,
  headers: MsgHdrs | null = secretHeaders(),
  timeout = 10_000,
): Promise<{ body: any; headers: MsgHdrs | undefined }> {
  const reply = await client.request('llm.proxy.request', body, { timeout, ...(headers === null ? {} : { headers }) });
  return { body: reply.json(), headers: reply.headers };
}

/** Every event in LLM_USAGE once `count` are there. */
async function allEvents(count: number) {
  return waitForUsageEvents(client, count, { timeoutMs: 15_000 });
}

async function eventsWhere(
  predicate: (event: Awaited<ReturnType<typeof allEvents>>[number]) => boolean,
  count: number,
) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const matching = (await allEvents(1)).filter(predicate);
    if (matching.length >= count || Date.now() > deadline) return matching;
    await sleep(50);
  }
}

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl }, { cache: { enabled: false } }),
    env: { LLM_PROXY_SECRET: SECRET },
  });
  void (async () => {
    for await (const status of worker.worker.connection.status())
      if (status.type === 'disconnect' || status.type === 'reconnect') disconnects.push(status.type);
  })();
  client = await connect({ servers: nats.url });
  aggregatorConnection = await connect({ servers: nats.url });
  aggregator = await UsageAggregator.start({
    connection: aggregatorConnection,
    subjectPrefix: 'llm',
    usageStream: usageStreamSchema.parse({}),
    aggregator: aggregatorSchema.parse({ instance_id: 'hardening', snapshot_interval_ms: '10m' }),
    secret: SECRET,
  });
});

after(async () => {
  await aggregator.stop();
  await aggregatorConnection.close();
  await client.close();
  await worker.stop();
  await openai.close();
  await nats.dispose();
});

/** The aggregator's totals for one agent, once it has read everything in the stream. */
async function billed(agentId: string): Promise<{ total_requests: number; ok: number }> {
  const manager = await (await import('@nats-io/jetstream')).jetstreamManager(client);
  const { state } = await manager.streams.info('LLM_USAGE');
  await aggregator.waitForSeq(state.last_seq);
  const reply = aggregator.query({ agent_id: agentId });
  return { total_requests: reply.total_requests, ok: reply.ok };
}

describe('client-chosen ids cannot stop, hide or bend accounting', () => {
  test('1. a CR/LF in request_id (no secret needed) is refused and does not stop the events after it', async () => {
    const bad = await ask(chatBody({ request_id: 'a\nb' }), null);
    assert.equal(bad.body.error.code, 'invalid_request');
    assert.match(bad.body.error.message, /request_id/);
    assert.doesNotMatch(bad.body.error.request_id, /\n/, 'the reply names the worker-made id, not the hostile one');
    const ids = Array.from({ length: 20 }, (_, index) => `after-crlf-${index}`);
    const replies = await Promise.all(
      ids.map((id) => ask(chatBody({ request_id: id, metadata: { agent_id: 'agent:crlf' } }))),
    );
    assert.ok(replies.every((reply) => reply.body.content === 'echo: hi'));
    const events = await eventsWhere((event) => event.agent_id === 'agent:crlf', 20);
    assert.deepEqual(
      events.map((event) => event.request_id).sort(),
      [...ids].sort(),
      'all 20 events reached LLM_USAGE',
    );
    const [refused] = await eventsWhere((event) => event.request_id === bad.body.error.request_id, 1);
    assert.equal(refused!.subject, 'llm.usage.unauthenticated', 'sent without the secret: attributed to nobody');
    assert.equal(refused!.error_code, 'invalid_request');
    assert.equal(worker.worker.publisher.counters.deadLettered, 0);
  });

  test('2. a 1,024 × "€" agent id is refused before it reaches a subject; a long valid one is hashed; no disconnect', async () => {
    const long = await ask(chatBody({ request_id: 'euro-1024', metadata: { agent_id: '€'.repeat(1_024) } }));
    assert.equal(long.body.error.code, 'invalid_request');
    assert.match(long.body.error.message, /metadata\.agent_id/);
    const valid = '€'.repeat(256);
    const served = await ask(chatBody({ request_id: 'euro-256', metadata: { agent_id: valid } }));
    assert.equal(served.body.content, 'echo: hi');
    const [refused] = await eventsWhere((event) => event.request_id === 'euro-1024', 1);
    assert.equal(refused!.subject, 'llm.usage.anonymous', 'an invalid agent id is not used');
    const [event] = await eventsWhere((candidate) => candidate.request_id === 'euro-256', 1);
    assert.equal(event!.agent_id, valid, 'the event keeps the whole id');
    const token = event!.subject.slice('llm.usage.'.length);
    assert.ok(token.length <= MAX_AGENT_TOKEN_LENGTH, `token of ${token.length} characters`);
    assert.match(token, /~[0-9a-f]{32}$/);
    assert.deepEqual(disconnects, [], 'the worker was never disconnected');
  });

  test('3. one request_id used 40 times is 40 requests billed; an unauthenticated copy of a real id cannot hide the real one', async () => {
    const replies = await Promise.all(
      Array.from({ length: 40 }, () => ask(chatBody({ request_id: 'same-id', metadata: { agent_id: 'agent:reuse' } }))),
    );
    assert.ok(replies.every((reply) => reply.body.content === 'echo: hi' && reply.body.request_id === 'same-id'));
    const events = await eventsWhere((event) => event.agent_id === 'agent:reuse', 40);
    assert.equal(events.length, 40);
    assert.equal(new Set(events.map((event) => event.event_id)).size, 40, 'each has its own event id');
    assert.deepEqual(await billed('agent:reuse'), { total_requests: 40, ok: 40 });

    const spoof = await ask(
      chatBody({ request_id: 'victim-1', metadata: { agent_id: 'agent:victim' } }),
      secretHeaders('X-Internal-Secret', 'wrong'),
    );
    assert.equal(spoof.body.error.code, 'unauthorized');
    const real = await ask(chatBody({ request_id: 'victim-1', metadata: { agent_id: 'agent:victim' } }));
    assert.equal(real.body.content, 'echo: hi');
    await eventsWhere((event) => event.request_id === 'victim-1', 2);
    assert.deepEqual(
      await billed('agent:victim'),
      { total_requests: 1, ok: 1 },
      'the real request counts once, the spoof not at all for the victim',
    );
  });

  test('8. requests nested 10,000 levels deep (provider_options, tool parameters) are invalid_request, not internal', async () => {
    // Written as text: JSON.stringify itself recurses and would overflow here.
    const deep = `${'{"a":['.repeat(5_000)}"leaf"${']}'.repeat(5_000)}`;
    const tool = `[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":${deep}}}}}]`;
    for (const [requestId, field] of [
      ['deep-options', `"provider_options":{"nested":${deep}}`],
      ['deep-tools', `"tools":${tool}`],
    ] as const) {
      const { body } = await ask(
        `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"request_id":"${requestId}",${field}}`,
      );
      assert.equal(body.error?.code, 'invalid_request', JSON.stringify(body).slice(0, 200));
      assert.match(body.error.message, /deeper than 64 levels/);
      const [event] = await eventsWhere((candidate) => candidate.request_id === requestId, 1);
      assert.equal(event!.status, 'rejected');
    }
    assert.ok(!worker.logs.text().includes('request pipeline failed'), 'not logged as a bug');
  });

  test('9. U+FFFD and a lone surrogate never share a subject; "anonymous" and "unauthenticated" are not claimable', async () => {
    const replacement = await ask(chatBody({ request_id: 'fffd', metadata: { agent_id: '\ufffd' } }));
    assert.equal(replacement.body.content, 'echo: hi');
    const surrogate = await ask(chatBody({ request_id: 'lone-surrogate', metadata: { agent_id: '\ud800' } }));
    assert.equal(surrogate.body.error.code, 'invalid_request', 'a lone surrogate is not an id');
    for (const reserved of ['anonymous', 'unauthenticated']) {
      const { body } = await ask(chatBody({ request_id: `claims-${reserved}`, metadata: { agent_id: reserved } }));
      assert.equal(body.content, 'echo: hi');
    }
    const subjectOf = async (requestId: string) =>
      (await eventsWhere((event) => event.request_id === requestId, 1))[0]!.subject;
    assert.equal(await subjectOf('fffd'), 'llm.usage.%EF%BF%BD');
    assert.equal(await subjectOf('lone-surrogate'), 'llm.usage.anonymous');
    assert.equal(await subjectOf('claims-anonymous'), 'llm.usage.%61nonymous');
    assert.equal(await subjectOf('claims-unauthenticated'), 'llm.usage.%75nauthenticated');
  });
});

describe('every subject with figures or control needs the secret', () => {
  test('10. llm.proxy.models, llm.proxy.usage and llm.proxy.cancel refuse a caller without the secret', async () => {
    for (const [subject, body] of [
      ['llm.proxy.models', '{"health": true}'],
      ['llm.proxy.models', '{}'],
      ['llm.proxy.usage', '{}'],
      ['llm.proxy.cancel', '{"request_id": "anything"}'],
    ] as const) {
      const reply = await client.request(subject, body, { timeout: 5_000 });
      const answer = reply.json() as { error?: { code: string; status: number } };
      assert.equal(answer.error?.code, 'unauthorized', `${subject} ${body}`);
      assert.equal(reply.headers?.get('Nats-Service-Error-Code'), '401');
    }
    const models = await client.request('llm.proxy.models', '{"health": true}', {
      timeout: 5_000,
      headers: secretHeaders('x-internal-secret'),
    });
    assert.ok(Array.isArray((models.json() as { health?: unknown }).health), 'the header name matches in any case');
    const usage = await client.request('llm.proxy.usage', '{}', { timeout: 5_000, headers: secretHeaders() });
    assert.equal(typeof (usage.json() as { total_requests?: unknown }).total_requests, 'number');
    assert.ok(worker.worker.stats().cancels_refused >= 1);
  });

  test('11. the secret header in lower case is accepted on requests, as HTTP would', async () => {
    const { body } = await ask(chatBody({ request_id: 'lower-case-header' }), secretHeaders('x-internal-secret'));
    assert.equal(body.content, 'echo: hi');
    const { body: upper } = await ask(
      chatBody({ request_id: 'upper-case-header' }),
      secretHeaders('X-INTERNAL-SECRET'),
    );
    assert.equal(upper.content, 'echo: hi');
  });

  test('a cancel sent as a request is always answered: at once by the worker that had it, after a moment when none had it', async () => {
    const unknown = Date.now();
    const notFound = await client.request('llm.proxy.cancel', JSON.stringify({ request_id: 'never-sent' }), {
      timeout: 5_000,
      headers: secretHeaders(),
    });
    assert.deepEqual(
      { ...(notFound.json() as object), worker_id: undefined },
      { request_id: 'never-sent', cancelled: false, worker_id: undefined },
    );
    assert.ok(Date.now() - unknown >= 400, 'a worker without the request waits before saying so');

    const invalid = await client.request('llm.proxy.cancel', JSON.stringify({ request_id: 'a\nb' }), {
      timeout: 5_000,
      headers: secretHeaders(),
    });
    assert.equal((invalid.json() as { error: { code: string } }).error.code, 'invalid_request');

    openai.enqueue({ kind: 'ok', delayMs: 3_000 });
    const inbox = createInbox();
    const answered = new Promise<Msg>((resolve) => {
      const subscription = client.subscribe(inbox, { max: 1, callback: (_error, message) => resolve(message) });
      void subscription;
    });
    client.publish('llm.proxy.request', chatBody({ request_id: 'to-cancel' }), {
      reply: inbox,
      headers: secretHeaders(),
    });
    await sleep(300);
    const started = Date.now();
    const cancel = await client.request('llm.proxy.cancel', JSON.stringify({ request_id: 'to-cancel' }), {
      timeout: 5_000,
      headers: secretHeaders('x-internal-secret'),
    });
    assert.equal((cancel.json() as { cancelled: boolean }).cancelled, true);
    assert.ok(Date.now() - started < 400, 'the worker that had it answers at once');
    const reply = (await answered).json() as { error: { code: string } };
    assert.equal(reply.error.code, 'cancelled', 'the request still gets its terminal answer');
    const [event] = await eventsWhere((candidate) => candidate.request_id === 'to-cancel', 1);
    assert.equal(event!.status, 'cancelled');
  });

  test('the secret is in no log line, reply or event', async () => {
    const events = await allEvents(1);
    assert.ok(!worker.logs.text().includes(SECRET));
    assert.ok(!JSON.stringify(events).includes(SECRET));
  });
});
