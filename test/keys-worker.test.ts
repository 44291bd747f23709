/**
 * Per-agent keys (issue 15) over a real nats-server, 4 real workers (auth.mode keys, limits on the
 * shared NATS backend), the fake OpenAI, the typed client, the HTTP front door with the official
 * `openai` package, and the key store written as an admin writes it (KeyStore, the CLI's code).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import OpenAI from 'openai';
import { connect } from '@nats-io/transport-node';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/nats-core';
import { hashKey, KeyStore, newKey, newKeyId, summarize } from '../src/auth/index.js';
import { connectToNats } from '../src/bus/connect.js';
import { createClient, LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import { httpSchema } from '../src/config/http-schema.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { withTypo } from './helpers/typo.js';
import {
  startInProcessWorker,
  testConfig,
  TEST_API_KEY,
  usageEventFor,
  waitForUsageEvents,
  type InProcessWorker,
} from './helpers/worker.js';

const SECRET = 'keys-test-shared-s3cret-77';

let nats: NatsServerHandle;
let upstream: FakeOpenAI;
const workers: InProcessWorker[] = [];
let admin: NatsConnection;
let agentConnection: NatsConnection;
let store: KeyStore;
/** Every key made here, and every reply and error seen: none may show up in a log, an event or a listing. */
const madeKeys: string[] = [];
const seenReplies: string[] = [];

function config(mode: 'keys' | 'mixed' = 'keys') {
  return testConfig(
    { openai: upstream.baseUrl },
    {
      models: { 'gpt-other': { provider: 'openai', physical_name: 'gpt-4o' } },
      auth: { mode, key_store_wait_ms: 3_000 },
      // The shared backend: a key's limits are exact across the workers. No agent limit, so only the key's count.
      limits: { enabled: true, backend: 'nats', nats_bucket: 'LLM_LIMITS_KEYS_TEST', default: { rpm: null } },
    },
  );
}

async function makeKey(spec: Parameters<KeyStore['create']>[0]): Promise<{ key: string; id: string }> {
  const { key, record } = await store.create(spec);
  madeKeys.push(key);
  return { key, id: record.id };
}

function clientWith(key: string | undefined, extra: { secret?: string } = {}): LlmProxyClient {
  return createClient({
    connection: agentConnection,
    timeoutMs: 15_000,
    ...(key === undefined ? {} : { apiKey: key }),
    ...extra,
  });
}

const hello = (overrides: Partial<ChatRequest> = {}): ChatRequest => ({
  model: 'gpt-test',
  messages: [{ role: 'user', content: 'hello' }],
  request_id: `keys-${randomUUID()}`,
  ...overrides,
});

/** The call's error (a test fails when the call succeeds). */
async function refusal(call: Promise<unknown>): Promise<LlmProxyError> {
  try {
    const reply = await call;
    seenReplies.push(JSON.stringify(reply));
  } catch (error) {
    assert.ok(error instanceof LlmProxyError, String(error));
    seenReplies.push(JSON.stringify(error.toJSON()));
    return error;
  }
  throw new assert.AssertionError({ message: 'the call was expected to be refused' });
}

async function served(client: LlmProxyClient, request: ChatRequest) {
  const reply = await client.chat(request);
  seenReplies.push(JSON.stringify(reply));
  return reply;
}

before(async () => {
  nats = await startNatsServer();
  upstream = await startFakeOpenAI();
  upstream.setDefault({ kind: 'ok', content: 'fine', usage: { promptTokens: 10, completionTokens: 3 } });
  admin = await connect({ servers: nats.url, name: 'keys-admin' });
  store = await KeyStore.open(admin, 'LLM_KEYS');
  for (let index = 0; index < 4; index++)
    workers.push(
      await startInProcessWorker({
        natsUrl: nats.url,
        config: config(),
        env: { FAKE_OPENAI_KEY: TEST_API_KEY, LLM_PROXY_SECRET: SECRET },
      }),
    );
  agentConnection = await connect({ servers: nats.url, name: 'keys-agent' });
});

after(async () => {
  await Promise.all(workers.map((worker) => worker.stop()));
  await agentConnection.close();
  await admin.close();
  await upstream.close();
  await nats.dispose();
});

describe('a key says who is calling', () => {
  test('create → use: the key decides agent and microDAO, the event names the key by id', async () => {
    const { key, id } = await makeKey({ agentId: 'agent:sofia', microdaoId: 'microdao:7', note: 'sofia laptop' });
    const client = clientWith(key);
    // No metadata at all: the key fills it in. Tags are kept.
    const bare = hello();
    const reply = await served(client, bare);
    assert.equal(reply.content, 'fine');
    const event = await usageEventFor(admin, bare.request_id!);
    assert.equal(event.subject, 'llm.usage.agent:sofia');
    assert.equal(event.agent_id, 'agent:sofia');
    assert.equal(event.microdao_id, 'microdao:7');
    assert.equal(event.key_id, id);
    assert.equal(event.status, 'ok');
    // Metadata that agrees, with a tag.
    const agreeing = hello({ metadata: { agent_id: 'agent:sofia', channel_id: 'c-1', team: 'blue' } });
    await served(client, agreeing);
    const tagged = await usageEventFor(admin, agreeing.request_id!);
    assert.equal(tagged.microdao_id, 'microdao:7');
    assert.equal(tagged.channel_id, 'c-1');
    assert.deepEqual(tagged.tags, { team: 'blue' });
  });

  test('a spoofed agent or microDAO is refused as unauthorized, named, and kept off the agent it claims', async () => {
    const { key, id } = await makeKey({ agentId: 'agent:mallory' });
    const client = clientWith(key);
    const spoof = hello({ metadata: { agent_id: 'agent:sofia' } });
    const error = await refusal(client.chat(spoof));
    assert.equal(error.code, 'unauthorized');
    assert.match(error.message, /metadata\.agent_id "agent:sofia" is not the agent of the key/);
    assert.ok(!error.message.includes(key));
    const event = await usageEventFor(admin, spoof.request_id!);
    assert.equal(event.subject, 'llm.usage.unauthenticated');
    assert.equal(event.agent_id, null);
    assert.equal(event.claimed_agent_id, 'agent:sofia');
    assert.equal(event.key_id, id, 'ops can see which key tried');
    const microdao = await refusal(client.chat(hello({ metadata: { microdao_id: 'microdao:7' } })));
    assert.equal(microdao.code, 'unauthorized');
    assert.match(
      microdao.message,
      /metadata\.microdao_id "microdao:7" is given, but the key .* belongs to no microDAO/,
    );
  });

  test("a model outside the key's list is refused as if it did not exist; the model list shows the key's only", async () => {
    const { key } = await makeKey({ agentId: 'agent:narrow', models: ['gpt-test'] });
    const client = clientWith(key);
    await served(client, hello());
    const outside = await refusal(client.chat(hello({ model: 'gpt-other' })));
    const unknown = await refusal(client.chat(hello({ model: 'no-such-model' })));
    assert.equal(outside.code, 'model_not_found');
    assert.equal(outside.message, 'unknown model "gpt-other"');
    assert.equal(
      unknown.message,
      'unknown model "no-such-model"',
      'the same words: nothing tells that gpt-other exists',
    );
    const listed = await client.models();
    assert.deepEqual(
      listed.models.map((model) => model.name),
      ['gpt-test'],
    );
    // The secret (ops) sees every model.
    const all = await clientWith(undefined, { secret: SECRET }).models();
    assert.deepEqual(all.models.map((model) => model.name).sort(), ['gpt-other', 'gpt-test']);
  });

  test('bad credentials: each refused with its own coded error, nothing admitted, events unattributed', async () => {
    const expiring = await makeKey({ agentId: 'agent:brief', expiresInMs: 1 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const wellFormedUnknown = newKey(newKeyId());
    const cases: Array<[string, Record<string, string> | undefined, RegExp]> = [
      ['no key', undefined, /a key is required: send it as Authorization: Bearer <key>/],
      ['the secret alone', { 'X-Internal-Secret': SECRET }, /a key is required/],
      ['not Bearer', { Authorization: 'Basic dXNlcjpwYXNz' }, /the Authorization header is not "Bearer <key>"/],
      ['a look-alike', { Authorization: 'Bearer llmp_notakey' }, /the key in Authorization is malformed/],
      ['a typo', { Authorization: `Bearer ${withTypo(wellFormedUnknown)}` }, /malformed/],
      ['unknown', { Authorization: `Bearer ${wellFormedUnknown}` }, /the key in Authorization is not known/],
      ['expired', { Authorization: `Bearer ${expiring.key}` }, /the key in Authorization has expired/],
    ];
    const before = upstream.chatRequests.length;
    const client = clientWith(undefined);
    for (const [name, headers, message] of cases) {
      const request = hello({ metadata: { agent_id: 'agent:sofia' } });
      const error = await refusal(client.chat(request, headers === undefined ? {} : { headers }));
      assert.equal(error.code, 'unauthorized', name);
      assert.match(error.message, message, name);
      const event = await usageEventFor(admin, request.request_id!);
      assert.equal(event.subject, 'llm.usage.unauthenticated', name);
      assert.equal(event.status, 'rejected', name);
      assert.equal(event.key_id, undefined, name);
    }
    assert.equal(upstream.chatRequests.length, before, 'no refused request reached the provider');
  });
});

describe('changes reach every worker', () => {
  test('revoke: refused on every worker within a second, no restart', async () => {
    const { key, id } = await makeKey({ agentId: 'agent:leaver' });
    const client = clientWith(key);
    await Promise.all(Array.from({ length: 8 }, () => served(client, hello())));
    await store.revoke(id);
    const revokedAt = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    // 40 requests over 4 workers in a queue group: each worker gets some (a worker missing all has odds 1e-5).
    const errors = await Promise.all(Array.from({ length: 40 }, () => refusal(client.chat(hello()))));
    for (const error of errors) {
      assert.equal(error.code, 'unauthorized');
      assert.equal(error.message, 'the key in Authorization is revoked');
    }
    assert.ok(Date.now() - revokedAt < 10_000);
    assert.equal(summarize((await store.get(id))!).status, 'revoked');
  });

  test('rotate: old and new keys both work during the grace period, then only the new', async () => {
    const { key: oldKey, id } = await makeKey({ agentId: 'agent:rotor' });
    const { key: newKeyValue, record } = await store.rotate(id, 1_500);
    madeKeys.push(newKeyValue);
    assert.notEqual(newKeyValue, oldKey);
    assert.equal(record.id, id, 'a rotation keeps the id: the usage history stays one key');
    // At once: a worker that has not had the change from its watch yet reads the record on the spot.
    const during = await Promise.all([
      ...Array.from({ length: 6 }, () => served(clientWith(oldKey), hello())),
      ...Array.from({ length: 6 }, () => served(clientWith(newKeyValue), hello())),
    ]);
    assert.equal(during.length, 12);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const errors = await Promise.all(Array.from({ length: 8 }, () => refusal(clientWith(oldKey).chat(hello()))));
    for (const error of errors) assert.match(error.message, /not known/);
    await Promise.all(Array.from({ length: 8 }, () => served(clientWith(newKeyValue), hello())));
  });
});

describe("a key's own limits", () => {
  test('exact across 4 workers: rpm 5 lets 5 of 20 concurrent requests in', async () => {
    const { key, id } = await makeKey({ agentId: 'agent:metered', limits: { rpm: 5 } });
    const client = clientWith(key);
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => client.chat(hello())));
    const ok = outcomes.filter((outcome) => outcome.status === 'fulfilled');
    const refused = outcomes.flatMap((outcome) =>
      outcome.status === 'rejected' ? [outcome.reason as LlmProxyError] : [],
    );
    assert.equal(ok.length, 5);
    assert.equal(refused.length, 15);
    for (const error of refused) {
      assert.equal(error.code, 'rate_limited');
      assert.match(error.message, new RegExp(`key ${id}`));
    }
    // Another key of the same agent has its own count.
    const { key: second } = await makeKey({ agentId: 'agent:metered' });
    await served(clientWith(second), hello());
  });
});

describe('cancels', () => {
  test("another key cannot cancel a key's request; its own key can", async () => {
    const owner = await makeKey({ agentId: 'agent:owner' });
    const other = await makeKey({ agentId: 'agent:other' });
    upstream.enqueue({ kind: 'ok', content: 'slow', delayMs: 3_000 });
    const request = hello();
    const pending = clientWith(owner.key).chat(request);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const withKey = (key: string) => {
      const headers = natsHeaders();
      headers.set('Authorization', `Bearer ${key}`);
      return headers;
    };
    const stranger = await agentConnection.request(
      'llm.proxy.cancel',
      JSON.stringify({ request_id: request.request_id }),
      {
        timeout: 3_000,
        headers: withKey(other.key),
      },
    );
    assert.equal((stranger.json() as { cancelled: boolean }).cancelled, false);
    const own = await agentConnection.request('llm.proxy.cancel', JSON.stringify({ request_id: request.request_id }), {
      timeout: 3_000,
      headers: withKey(owner.key),
    });
    assert.equal((own.json() as { cancelled: boolean }).cancelled, true);
    const error = await refusal(pending);
    assert.equal(error.code, 'cancelled');
  });
});

describe('mixed mode and the key store', () => {
  test('mixed: the secret alone works as before (metadata names the agent); a key, when shown, decides', async () => {
    const mixed = await startInProcessWorker({
      natsUrl: nats.url,
      config: { ...config('mixed'), nats: { subject_prefix: 'mixed' }, limits: { enabled: false } },
      env: { FAKE_OPENAI_KEY: TEST_API_KEY, LLM_PROXY_SECRET: SECRET },
    });
    try {
      const viaSecret = createClient({ connection: agentConnection, secret: SECRET, subjectPrefix: 'mixed' });
      const bySecret = hello({ metadata: { agent_id: 'agent:trusted' } });
      await served(viaSecret, bySecret);
      const { key } = await makeKey({ agentId: 'agent:keyed' });
      const viaKey = createClient({ connection: agentConnection, secret: SECRET, apiKey: key, subjectPrefix: 'mixed' });
      const byKey = hello();
      await served(viaKey, byKey);
      const keyed = await usageEventFor(admin, byKey.request_id!);
      assert.equal(keyed.agent_id, 'agent:keyed');
      assert.equal((await usageEventFor(admin, bySecret.request_id!)).agent_id, 'agent:trusted');
      const none = createClient({ connection: agentConnection, subjectPrefix: 'mixed' });
      const error = await refusal(none.chat(hello()));
      assert.match(error.message, /missing or wrong X-Internal-Secret header/);
    } finally {
      await mixed.stop();
    }
  });

  test('a key store that cannot be read: requests with keys are refused (internal, retryable), and the log says why', async () => {
    // A server without JetStream: no KV, so no key can be checked.
    const bare = await startNatsServer({ jetstream: false });
    const blind = await startInProcessWorker({
      natsUrl: bare.url,
      config: { ...config(), auth: { mode: 'keys', key_store_wait_ms: 300 }, limits: { enabled: false } },
    });
    const connection = await connect({ servers: bare.url });
    try {
      const { key } = await makeKey({ agentId: 'agent:sofia' });
      const client = createClient({ connection, apiKey: key, timeoutMs: 10_000 });
      const error = await refusal(client.chat(hello()));
      assert.equal(error.code, 'internal');
      assert.equal(error.retryable, true);
      assert.match(error.message, /the key store cannot be read.*fail closed/);
      assert.match(
        blind.logs.text(),
        /key store cannot be read: requests that need a key are refused until it can \(fail closed\)/,
      );
    } finally {
      await blind.stop({ drainTimeoutMs: 1_000 });
      await connection.close();
      await bare.dispose();
    }
  });
});

describe('a NATS restart', () => {
  test('the worker reads the key store again after reconnecting: keys work, and a revocation made then is seen', async () => {
    const server = await startNatsServer();
    const worker = await startInProcessWorker({
      natsUrl: server.url,
      config: { ...config(), limits: { enabled: false } },
    });
    const adminConnection = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const agent = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    try {
      const keys = await KeyStore.open(adminConnection, 'LLM_KEYS');
      const { key, record } = await keys.create({ agentId: 'agent:steady' });
      madeKeys.push(key);
      const client = createClient({ connection: agent, apiKey: key, timeoutMs: 10_000 });
      await served(client, hello());
      await server.stop();
      await new Promise((resolve) => setTimeout(resolve, 500));
      await server.restart();
      // Requests fail while the server is away; once everyone reconnected, the key works again.
      const deadline = Date.now() + 20_000;
      for (;;) {
        try {
          await served(client, hello());
          break;
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      }
      assert.match(worker.logs.text(), /disconnected: keys are not checked until the key store is read again/);
      await keys.revoke(record.id);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const error = await refusal(client.chat(hello()));
      assert.equal(error.message, 'the key in Authorization is revoked');
    } finally {
      await worker.stop({ drainTimeoutMs: 1_000 });
      await agent.close();
      await adminConnection.close();
      await server.dispose();
    }
  });
});

describe('over HTTP, with the official openai package', () => {
  let door: FrontDoor;
  before(async () => {
    door = await startFrontDoor({
      http: httpSchema.parse({}),
      connecting: connectToNats({ servers: nats.url }),
      subjectPrefix: 'llm',
      secret: SECRET,
      keys: true,
      logger: createLogger({ level: 'silent' }),
      host: '127.0.0.1',
      port: 0,
    });
  });
  after(async () => {
    await door.close();
  });

  test('the key as the API key: served, attributed; `user` stays an end-user id; a bad key is 401', async () => {
    const { key, id } = await makeKey({ agentId: 'agent:web', models: ['gpt-test'] });
    const sdk = new OpenAI({ apiKey: key, baseURL: `${door.url}/v1`, maxRetries: 0 });
    const completion = await sdk.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'hi' }],
      user: 'end-user-42',
    });
    seenReplies.push(JSON.stringify(completion));
    assert.equal(completion.choices[0]?.message.content, 'fine');
    const event = await usageEventFor(admin, completion.id.slice('chatcmpl-'.length));
    assert.equal(event.agent_id, 'agent:web');
    assert.equal(event.key_id, id);
    const models = await sdk.models.list();
    assert.deepEqual(
      models.data.map((model) => model.id),
      ['gpt-test'],
    );
    const wrong = new OpenAI({ apiKey: newKey(newKeyId()), baseURL: `${door.url}/v1`, maxRetries: 0 });
    await assert.rejects(
      wrong.chat.completions.create({ model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] }),
      (error: unknown) => error instanceof OpenAI.AuthenticationError && /not known/.test(error.message),
    );
    // A key does not open every agent's usage figures.
    const usage = await fetch(`${door.url}/internal/llm/usage`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(usage.status, 401);
  });
});

describe('no key anywhere', () => {
  test('no key (nor its hash) in any log, event, reply or listing', async () => {
    assert.ok(madeKeys.length >= 10);
    const events: UsageEvent[] = await waitForUsageEvents(admin, 1);
    const listing = JSON.stringify((await store.list()).map((record) => summarize(record)));
    const haystacks: Array<[string, string]> = [
      ['worker logs', workers.map((worker) => worker.logs.text()).join('\n')],
      ['usage events', JSON.stringify(events)],
      ['replies and errors', seenReplies.join('\n')],
      ['keys list', listing],
    ];
    for (const key of madeKeys) {
      const secretPart = key.slice('llmp_'.length + 13);
      for (const [where, text] of haystacks) {
        assert.ok(!text.includes(secretPart), `a key's secret part in the ${where}`);
        assert.ok(!text.includes(hashKey(key)), `a key's hash in the ${where}`);
      }
    }
    assert.ok(!listing.includes('"hash"'));
  });
});
