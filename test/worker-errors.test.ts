import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { headers as createHeaders, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { freePort } from './helpers/ports.js';
import { fakeBehaviours, startFakeOpenAI, type FakeBehaviour, type FakeOpenAI } from './fakes/index.js';
import {
  startInProcessWorker,
  testConfig,
  waitForUsageEvents,
  TEST_API_KEY,
  type InProcessWorker,
} from './helpers/worker.js';

const SECRET = 'internal-SECRET-value-42';
const WRONG_KEY = 'sk-wrong-KEY-9876543210fedcba';
const MAX_REQUEST_BYTES = 4_000;

describe('worker: refused requests and provider failures', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let worker: InProcessWorker;
  let client: NatsConnection;
  /** Every reply body and event seen, to check no secret leaks anywhere. */
  const seen: string[] = [];

  before(async () => {
    nats = await startNatsServer();
    openai = await startFakeOpenAI({ requireApiKey: TEST_API_KEY });
    const deadPort = await freePort();
    worker = await startInProcessWorker({
      natsUrl: nats.url,
      env: { LLM_PROXY_SECRET: SECRET, WRONG_KEY },
      config: testConfig(
        { openai: openai.baseUrl },
        {
          worker: { max_request_bytes: MAX_REQUEST_BYTES },
          providers: {
            // Same key as the real one, but a port nobody listens on: connect refused.
            nowhere: { type: 'openai', base_url: `http://127.0.0.1:${deadPort}/v1`, api_key_env: 'FAKE_OPENAI_KEY' },
            // A key the fake refuses; its 401 echoes part of the key it got.
            badkey: { type: 'openai', base_url: openai.baseUrl, api_key_env: 'WRONG_KEY' },
          },
          models: {
            'dead-model': { provider: 'nowhere', physical_name: 'gpt-4o-mini' },
            'badkey-model': { provider: 'badkey', physical_name: 'gpt-4o-mini' },
          },
          // A line for every request too, so that the served ones are searched as well.
          logging: { level: 'debug', requests: 'all' },
        },
      ),
    });
    client = await connect({ servers: nats.url });
  });

  after(async () => {
    await client?.close();
    await worker?.stop();
    await openai?.close();
    await nats?.dispose();
  });

  /** `secret: null` sends no X-Internal-Secret header. */
  const ask = async (body: unknown, secret: string | null = SECRET) => {
    const headers = createHeaders();
    if (secret !== null) headers.set('X-Internal-Secret', secret);
    const reply = await client.request('llm.proxy.request', typeof body === 'string' ? body : JSON.stringify(body), {
      timeout: 10_000,
      headers,
    });
    seen.push(reply.string());
    return { body: reply.json() as any, headers: reply.headers };
  };

  const okBody = (requestId: string, extra: object = {}) => ({
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'Hello!' }],
    request_id: requestId,
    metadata: { agent_id: 'agent:sofia' },
    ...extra,
  });

  test('LLM_PROXY_SECRET set: no or a wrong X-Internal-Secret is refused as unauthorized, not attributed to the claimed agent', async () => {
    const missing = await ask(okBody('auth-missing'), null);
    assert.equal(missing.body.error.code, 'unauthorized');
    assert.equal(missing.body.error.status, 401);
    assert.equal(missing.body.error.request_id, 'auth-missing');
    assert.equal(missing.headers?.get('Nats-Service-Error-Code'), '401');
    assert.ok(!missing.body.error.message.includes(SECRET));
    const wrong = await ask(okBody('auth-wrong'), 'not-the-secret');
    assert.equal(wrong.body.error.code, 'unauthorized');
    const right = await ask(okBody('auth-right'));
    assert.equal(right.body.content, 'echo: Hello!');

    const events = await waitForUsageEvents(client, 3);
    const refused = events.find((event) => event.request_id === 'auth-missing')!;
    assert.equal(refused.subject, 'llm.usage.unauthenticated');
    assert.equal(refused.agent_id, null);
    assert.equal(refused.claimed_agent_id, 'agent:sofia');
    assert.equal(refused.status, 'rejected');
    assert.equal(refused.error_code, 'unauthorized');
    assert.equal(events.find((event) => event.request_id === 'auth-right')!.subject, 'llm.usage.agent:sofia');
  });

  const refusals: Array<{ name: string; body: unknown; code: string; status: number; mentions?: string }> = [
    {
      name: 'non-JSON',
      body: '{"model": "gpt-test", "messages": [',
      code: 'invalid_request',
      status: 400,
      mentions: 'JSON',
    },
    { name: 'a JSON array', body: '[1, 2]', code: 'invalid_request', status: 400, mentions: 'object' },
    {
      name: 'wrong types',
      body: okBody('bad-types', { max_tokens: 'many', temperature: 'hot' }),
      code: 'invalid_request',
      status: 400,
      mentions: 'max_tokens',
    },
    {
      name: 'an unknown top-level field (max_token)',
      body: okBody('typo', { max_token: 10 }),
      code: 'invalid_request',
      status: 400,
      mentions: '"max_token"',
    },
    {
      name: 'empty messages',
      body: okBody('empty', { messages: [] }),
      code: 'invalid_request',
      status: 400,
      mentions: 'messages',
    },
    {
      name: 'an unknown model',
      body: okBody('unknown-model', { model: 'gpt-9000' }),
      code: 'model_not_found',
      status: 404,
      mentions: '"gpt-9000"',
    },
    {
      name: 'a body over worker.max_request_bytes',
      body: okBody('too-big', { messages: [{ role: 'user', content: 'x'.repeat(MAX_REQUEST_BYTES) }] }),
      code: 'payload_too_large',
      status: 413,
      mentions: String(MAX_REQUEST_BYTES),
    },
  ];

  for (const refusal of refusals) {
    test(`bad input: ${refusal.name} → ${refusal.code}, event "rejected", the worker keeps serving`, async () => {
      const before = worker.worker.stats().requests;
      const { body, headers } = await ask(refusal.body);
      assert.equal(body.error.code, refusal.code);
      assert.equal(body.error.status, refusal.status);
      assert.equal(body.error.retryable, false);
      assert.equal(headers?.get('Nats-Service-Error-Code'), String(refusal.status));
      assert.ok((headers?.get('Nats-Service-Error') ?? '').length > 0);
      if (refusal.mentions !== undefined) assert.ok(body.error.message.includes(refusal.mentions), body.error.message);
      assert.equal(worker.worker.stats().requests, before + 1);
      const requestId = body.error.request_id as string;
      assert.ok(requestId.length > 0);
      const events = await waitForUsageEvents(client, 1);
      const deadline = Date.now() + 5_000;
      let event = events.find((candidate) => candidate.request_id === requestId);
      while (event === undefined && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        event = (await waitForUsageEvents(client, 1)).find((candidate) => candidate.request_id === requestId);
      }
      assert.ok(event, `an event for ${requestId}`);
      assert.equal(event.status, 'rejected');
      assert.equal(event.error_code, refusal.code);
      assert.equal(event.prompt_tokens, 0);
      assert.equal(event.cost_usd, 0);
      const healthy = await ask(okBody(`after-${refusal.name.replace(/\W+/g, '-')}`));
      assert.equal(healthy.body.content, 'echo: Hello!');
    });
  }

  test('a request refused for its metadata: the event keeps the valid agent id, not the tags', async () => {
    const { body } = await ask(
      okBody('odd-metadata', { metadata: { agent_id: 'agent:odd', task: 'sum', count: 3, long: 'y'.repeat(1025) } }),
    );
    assert.equal(body.error.code, 'invalid_request');
    assert.match(body.error.message, /^metadata\.count: must be a string/);
    const deadline = Date.now() + 5_000;
    let event = (await waitForUsageEvents(client, 1)).find((candidate) => candidate.request_id === 'odd-metadata');
    while (event === undefined && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      event = (await waitForUsageEvents(client, 1)).find((candidate) => candidate.request_id === 'odd-metadata');
    }
    assert.ok(event, 'an event for odd-metadata');
    assert.equal(event.status, 'rejected');
    assert.equal(event.agent_id, 'agent:odd');
    assert.equal(event.tags, undefined);
  });

  const failures: Array<{
    name: string;
    behaviour?: FakeBehaviour;
    model?: string;
    extra?: object;
    code: string;
    retryable: boolean;
    mentions?: string;
  }> = [
    {
      name: 'a 400 from the provider',
      behaviour: fakeBehaviours.contextLengthExceeded(),
      code: 'invalid_request',
      retryable: false,
      mentions: 'maximum context length',
    },
    { name: 'a 500', behaviour: fakeBehaviours.serverError(500), code: 'upstream_error', retryable: true },
    {
      name: 'a 503',
      behaviour: fakeBehaviours.serverError(503, 'overloaded'),
      code: 'upstream_error',
      retryable: true,
    },
    { name: 'a connection reset', behaviour: fakeBehaviours.reset(), code: 'upstream_error', retryable: true },
    { name: 'malformed JSON', behaviour: fakeBehaviours.malformedJson(), code: 'upstream_error', retryable: true },
    { name: 'an empty body', behaviour: fakeBehaviours.emptyBody(), code: 'upstream_error', retryable: true },
    {
      name: 'no headers before the deadline',
      behaviour: fakeBehaviours.hang(),
      extra: { timeout_ms: 400 },
      code: 'upstream_timeout',
      retryable: true,
    },
    { name: 'connect refused', model: 'dead-model', code: 'no_provider_available', retryable: true },
    { name: 'a 401 for our key', model: 'badkey-model', code: 'upstream_error', retryable: false },
    // Last: the router honours Retry-After by cooling the deployment down for that long.
    { name: 'a 429', behaviour: fakeBehaviours.rateLimited(3), code: 'rate_limited', retryable: true },
  ];

  for (const failure of failures) {
    test(`provider failure: ${failure.name} → ${failure.code}, event "error"`, async () => {
      if (failure.behaviour !== undefined) openai.enqueue(failure.behaviour);
      const requestId = `fail-${failure.name.replace(/\W+/g, '-')}`;
      const { body, headers } = await ask(
        okBody(requestId, {
          ...(failure.model !== undefined ? { model: failure.model } : {}),
          ...(failure.extra ?? {}),
        }),
      );
      assert.equal(body.error?.code, failure.code, JSON.stringify(body));
      assert.equal(body.error.retryable, failure.retryable);
      assert.equal(body.error.request_id, requestId);
      assert.equal(headers?.get('Nats-Service-Error-Code'), String(body.error.status));
      if (failure.code === 'rate_limited')
        assert.ok(body.error.retry_after_ms >= 2_000, `retry_after_ms ${body.error.retry_after_ms}`);
      if (failure.mentions !== undefined) assert.ok(body.error.message.includes(failure.mentions), body.error.message);
      const deadline = Date.now() + 5_000;
      let event: Awaited<ReturnType<typeof waitForUsageEvents>>[number] | undefined;
      while (event === undefined && Date.now() < deadline) {
        event = (await waitForUsageEvents(client, 1)).find((candidate) => candidate.request_id === requestId);
        if (event === undefined) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.ok(event);
      assert.equal(event.status, 'error');
      assert.equal(event.error_code, failure.code);
      assert.ok(event.attempts >= 1);
      assert.ok(event.provider !== null);
    });
  }

  test('no API key or secret in any log line, reply or event', async () => {
    // The 401 for our (wrong) key has been answered above; make sure the logs saw real traffic.
    const events = await waitForUsageEvents(client, 10);
    const everything = [worker.logs.text(), seen.join('\n'), JSON.stringify(events)].join('\n');
    assert.ok(worker.logs.lines.length > 20, 'the worker logged');
    assert.ok(everything.includes('fail-a-401-for-our-key'));
    assert.ok(!everything.includes(TEST_API_KEY), 'the API key leaked');
    assert.ok(!everything.includes(TEST_API_KEY.slice(0, 12)), 'a prefix of the API key leaked');
    assert.ok(!everything.includes(SECRET), 'the internal secret leaked');
    assert.ok(
      openai.chatRequests.some((request) => request.authorization === `Bearer ${WRONG_KEY}`),
      'the wrong key reached the fake',
    );
    assert.ok(!everything.includes(WRONG_KEY), 'the key the provider refused (and echoed) leaked');
    assert.ok(!everything.includes(WRONG_KEY.slice(-10)), 'the end of the refused key leaked');
  });
});
