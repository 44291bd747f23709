/**
 * The HTTP front door (issue 14) over a real front door, real NATS, a real worker and the fake
 * providers: the seed's API exactly as its curl examples send it (plain fetch), health, and every
 * bad input of the issue. OpenAI's API is tested with the official SDKs in test/http-openai-sdk.test.ts.
 */
import { usageQueryFromSearch } from '../src/http/seed-routes.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { httpSchema } from '../src/config/http-schema.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';

const SECRET = 'front-door-s3cret-9d2f';
const SEED_BODY = {
  model: 'gpt-test',
  messages: [{ role: 'user', content: 'Hello!' }],
  max_tokens: 100,
  temperature: 0.7,
  metadata: { agent_id: 'agent:sofia', microdao_id: 'microdao:7', channel_id: 'c-1' },
};

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let worker: InProcessWorker;
let frontDoor: FrontDoor;
let client: NatsConnection;

/** The seed's curl: `curl -X POST $URL/internal/llm/proxy -H "Content-Type: application/json" -H "X-Internal-Secret: …" -d '{…}'`. */
function seedPost(body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${frontDoor.url}/internal/llm/proxy`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-internal-secret': SECRET, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** SSE events of a response body: `[{event, data}]`, comments counted apart. */
async function readSse(
  response: Response,
): Promise<{ events: Array<{ event: string | undefined; data: string }>; comments: number }> {
  const text = await response.text();
  const events: Array<{ event: string | undefined; data: string }> = [];
  let comments = 0;
  for (const block of text.split('\n\n')) {
    if (block.trim() === '') continue;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments++;
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (data.length > 0) events.push({ event, data: data.join('\n') });
  }
  return { events, comments };
}

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig({ openai: openai.baseUrl }),
    env: { LLM_PROXY_SECRET: SECRET },
  });
  client = await connect({ servers: nats.url });
  frontDoor = await startFrontDoor({
    http: httpSchema.parse({
      heartbeat_ms: 200,
      body_limit: 64 * 1024,
      headers_timeout_ms: 1_000,
      request_timeout_ms: 2_000,
    }),
    connecting: connect({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: SECRET,
    logger: createLogger({ level: 'silent' }),
    port: 0,
  });
  // Connected once a bus route answers.
  for (let tries = 0; tries < 50 && !frontDoor.bus.connected; tries++)
    await new Promise((resolve) => setTimeout(resolve, 50));
});

after(async () => {
  await frontDoor?.close();
  await client?.close();
  await worker?.stop();
  await openai?.close();
  await nats?.dispose();
});

describe("the seed's API", () => {
  test('POST /internal/llm/proxy: the seed body gets the seed reply, and one usage event', async () => {
    const response = await seedPost({ ...SEED_BODY, request_id: 'http-seed-1' });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /application\/json/);
    const reply = (await response.json()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(reply).slice(0, 5), ['content', 'usage', 'provider', 'model_resolved', 'latency_ms']);
    assert.equal(reply.content, 'echo: Hello!');
    assert.equal(reply.request_id, 'http-seed-1');
    const event = await usageEventFor(client, 'http-seed-1');
    assert.equal(event.status, 'ok');
    assert.equal(event.agent_id, 'agent:sofia');
  });

  test('stream: true answers with SSE: the chunks, then the final reply', async () => {
    const response = await seedPost({
      ...SEED_BODY,
      request_id: 'http-seed-stream',
      stream: true,
      messages: [{ role: 'user', content: 'one two three four' }],
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /text\/event-stream/);
    const { events } = await readSse(response);
    const chunks = events
      .filter((event) => event.event === 'chunk')
      .map((event) => JSON.parse(event.data) as { seq: number; delta: string });
    assert.deepEqual(
      chunks.map((chunk) => chunk.seq),
      chunks.map((_, index) => index),
    );
    const end = events.at(-1)!;
    assert.equal(end.event, 'end');
    const reply = JSON.parse(end.data) as { content: string; done: boolean };
    assert.equal(reply.done, true);
    assert.equal(chunks.map((chunk) => chunk.delta).join(''), reply.content);
  });

  test('a silent stream gets SSE comments as heartbeats; the reply still ends it', async () => {
    openai.enqueue({ kind: 'ok', chunks: 2, chunkIntervalMs: 700 });
    const response = await seedPost({ ...SEED_BODY, request_id: 'http-seed-heartbeat', stream: true });
    assert.equal(response.status, 200);
    const { events, comments } = await readSse(response);
    assert.ok(comments >= 2, `${comments} heartbeat comments`);
    assert.equal(events.at(-1)!.event, 'end');
  });

  test('a failure after the first chunk ends the stream with an error event, never an end event', async () => {
    openai.enqueue({ kind: 'stream-error', afterChunks: 2, message: 'the model fell over' });
    const response = await seedPost({
      ...SEED_BODY,
      request_id: 'http-seed-broken',
      stream: true,
      messages: [{ role: 'user', content: 'one two three four five' }],
    });
    assert.equal(response.status, 200);
    const { events } = await readSse(response);
    assert.ok(events.some((event) => event.event === 'chunk'));
    assert.equal(
      events.some((event) => event.event === 'end'),
      false,
    );
    const last = events.at(-1)!;
    assert.equal(last.event, 'error');
    const body = JSON.parse(last.data) as { error: { code: string; request_id: string } };
    assert.deepEqual([body.error.code, body.error.request_id], ['upstream_error', 'http-seed-broken']);
    const event = await usageEventFor(client, 'http-seed-broken');
    assert.equal(event.status, 'error');
  });

  test('GET /internal/llm/models lists name, provider, physical_name and max_tokens', async () => {
    const response = await fetch(`${frontDoor.url}/internal/llm/models`, { headers: { 'x-internal-secret': SECRET } });
    assert.equal(response.status, 200);
    const { models } = (await response.json()) as { models: Array<Record<string, unknown>> };
    const model = models.find((candidate) => candidate.name === 'gpt-test')!;
    assert.deepEqual(
      { name: model.name, provider: model.provider, physical_name: model.physical_name, max_tokens: model.max_tokens },
      { name: 'gpt-test', provider: 'openai', physical_name: 'gpt-4o-mini', max_tokens: null },
    );
  });

  test('GET /internal/llm/usage without an aggregator: 503 no_provider_available at once', async () => {
    const started = Date.now();
    const response = await fetch(`${frontDoor.url}/internal/llm/usage?agent_id=agent:sofia&group_by=model,day`, {
      headers: { 'x-internal-secret': SECRET },
    });
    assert.equal(response.status, 503);
    assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'no_provider_available');
    assert.ok(Date.now() - started < 2_000);
  });

  test('GET /internal/llm/usage takes the paging fields from the query string', () => {
    assert.deepEqual(
      usageQueryFromSearch({ group_by: 'agent', limit: '20', order_by: 'cost', cursor: 'abc', since: '30d' }),
      { group_by: ['agent'], limit: 20, order_by: 'cost', cursor: 'abc', since: '30d' },
    );
    assert.throws(() => usageQueryFromSearch({ limit: 'twenty' }), /limit/);
    assert.throws(() => usageQueryFromSearch({ limit: '0' }), /limit/);
    assert.throws(() => usageQueryFromSearch({ order_by: 'price' }), /order_by/);
  });

  test('Authorization: Bearer <secret> is accepted as the secret', async () => {
    const response = await fetch(`${frontDoor.url}/internal/llm/proxy`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRET}` },
      body: JSON.stringify({ ...SEED_BODY, request_id: 'http-bearer' }),
    });
    assert.equal(response.status, 200);
  });
  test('errors are DESIGN.md bodies with their HTTP status, Retry-After on 429', async () => {
    openai.enqueue({ kind: 'status', status: 429, message: 'slow down', headers: { 'retry-after': '3' } });
    const response = await seedPost({ ...SEED_BODY, request_id: 'http-429' });
    assert.equal(response.status, 429);
    assert.ok(Number(response.headers.get('retry-after')) >= 1);
    const body = (await response.json()) as { error: { code: string; status: number; request_id: string } };
    assert.deepEqual([body.error.code, body.error.status, body.error.request_id], ['rate_limited', 429, 'http-429']);
    const unknown = await seedPost({ ...SEED_BODY, model: 'gpt-9000' });
    assert.equal(unknown.status, 404);
    assert.equal(((await unknown.json()) as { error: { code: string } }).error.code, 'model_not_found');
  });
});

describe('bad input gets a clear JSON error', () => {
  const cases: Array<{ name: string; send: () => Promise<Response>; status: number; code: string; mentions?: RegExp }> =
    [
      { name: 'not JSON', send: () => seedPost('{"model": '), status: 400, code: 'invalid_request', mentions: /JSON/ },
      {
        name: 'a wrong content type',
        send: () => seedPost(SEED_BODY, { 'content-type': 'text/plain' }),
        status: 400,
        code: 'invalid_request',
        mentions: /application\/json/,
      },
      { name: 'an empty body', send: () => seedPost(''), status: 400, code: 'invalid_request' },
      { name: 'a JSON array', send: () => seedPost([1, 2]), status: 400, code: 'invalid_request' },
      {
        name: 'a body over the limit',
        send: () => seedPost({ ...SEED_BODY, messages: [{ role: 'user', content: 'x'.repeat(70 * 1024) }] }),
        status: 413,
        code: 'payload_too_large',
      },
      {
        name: 'no secret',
        send: () => seedPost(SEED_BODY, { 'x-internal-secret': '' }),
        status: 401,
        code: 'unauthorized',
      },
      {
        name: 'a wrong secret',
        send: () => seedPost(SEED_BODY, { 'x-internal-secret': 'nope' }),
        status: 401,
        code: 'unauthorized',
      },
      {
        name: 'an unknown route',
        send: () => fetch(`${frontDoor.url}/internal/llm/nothing`, { headers: { 'x-internal-secret': SECRET } }),
        status: 404,
        code: 'invalid_request',
      },
      {
        name: 'a wrong method',
        send: () => fetch(`${frontDoor.url}/internal/llm/proxy`, { headers: { 'x-internal-secret': SECRET } }),
        status: 405,
        code: 'invalid_request',
        mentions: /POST/,
      },
    ];
  for (const entry of cases) {
    test(`${entry.name} → ${entry.status} ${entry.code}`, async () => {
      const response = await entry.send();
      assert.equal(response.status, entry.status);
      const body = (await response.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, entry.code);
      if (entry.mentions !== undefined) assert.match(body.error.message, entry.mentions);
      if (entry.status === 405) assert.equal(response.headers.get('allow'), 'POST');
    });
  }

  test('a slow-loris client is cut off by the headers timeout', async () => {
    const url = new URL(frontDoor.url);
    const closed = await new Promise<number>((resolve) => {
      const started = Date.now();
      const socket = netConnect(Number(url.port), url.hostname, () =>
        socket.write('POST /internal/llm/proxy HTTP/1.1\r\nHost: x\r\n'),
      );
      socket.on('data', () => undefined);
      socket.on('close', () => resolve(Date.now() - started));
      socket.on('error', () => undefined);
    });
    assert.ok(closed < 5_000, `closed after ${closed} ms`);
  });
});

describe('health', () => {
  test('/healthz is up; /readyz is ready with NATS and a worker', async () => {
    assert.equal((await fetch(`${frontDoor.url}/healthz`)).status, 200);
    const ready = await fetch(`${frontDoor.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(((await ready.json()) as { status: string }).status, 'ready');
  });
});
