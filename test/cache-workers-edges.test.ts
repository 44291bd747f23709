import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { createResponseCache } from '../src/cache/index.js';
import { createClient, type ChatRequest, type StreamChunk } from '../src/client/index.js';
import { resolveConfig } from '../src/config/load.js';
import { cacheKeyFor } from '../src/worker/response-cache.js';
import { startFakeOpenAI } from './fakes/index.js';
import { reply as fixtureReply } from './helpers/cache-fixtures.js';
import { startNatsServer } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * The shared response cache's edges through real workers (issue 18): the ttl, a 5 MB answer (plain and
 * streamed), a damaged entry, and the KV unreachable while the bus is up.
 */

const MiB = 1024 * 1024;

function body(content: string, requestId: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model: 'gpt-test', messages: [{ role: 'user', content }], temperature: 0, request_id: requestId, ...extra };
}

async function ask(connection: NatsConnection, request: ChatRequest) {
  const reply = await connection.request('llm.proxy.request', JSON.stringify(request), { timeout: 20_000 });
  return reply.json<{ content: string; cached: boolean; error?: { code: string } }>();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('entries expire after cache.ttl_ms, whichever worker reads them', { timeout: 60_000 }, async () => {
  const nats = await startNatsServer();
  const openai = await startFakeOpenAI();
  const config = testConfig({ openai: openai.baseUrl }, { cache: { enabled: true, ttl_ms: 1_500 } });
  const workers: InProcessWorker[] = [];
  const client = await connect({ servers: nats.url });
  try {
    for (let index = 0; index < 2; index += 1) workers.push(await startInProcessWorker({ natsUrl: nats.url, config }));
    assert.equal((await ask(client, body('ttl', 'ttl-0'))).cached, false);
    for (let index = 1; index <= 4; index += 1)
      assert.equal((await ask(client, body('ttl', `ttl-${index}`))).cached, true);
    assert.equal(openai.chatRequests.length, 1);
    await sleep(1_800);
    assert.equal((await ask(client, body('ttl', 'ttl-late'))).cached, false, 'past the ttl: asked upstream again');
    assert.equal(openai.chatRequests.length, 2);
    assert.equal((await ask(client, body('ttl', 'ttl-fresh'))).cached, true, 'and stored again');
  } finally {
    await client.close();
    for (const worker of workers) await worker.stop();
    await openai.close();
    await nats.dispose();
  }
});

test('a 5 MB answer, plain and streamed, is stored whole and served whole by the other workers', {
  timeout: 90_000,
}, async () => {
  const nats = await startNatsServer({ maxPayload: 8 * MiB });
  const openai = await startFakeOpenAI();
  const config = testConfig(
    { openai: openai.baseUrl },
    // The KV timeout is generous: this test is about wholeness, and a 5 MB write on a loaded CI machine
    // can take longer than the default 2 s (a timed-out write is a skipped entry, by design).
    {
      cache: {
        enabled: true,
        ttl_ms: 60_000,
        max_entry_bytes: '16MiB',
        memory_max_bytes: '64MiB',
        store_timeout_ms: 30_000,
      },
    },
  );
  const workers: InProcessWorker[] = [];
  const raw = await connect({ servers: nats.url });
  const client = await createClient({ servers: nats.url, idleTimeoutMs: 30_000 });
  const resolved = resolveConfig(config, 'test', { FAKE_OPENAI_KEY: 'x' });
  const reader = createResponseCache(resolved.cache, { nats: raw });
  // The leader's shared write is not awaited by its reply: wait until it has landed in the KV before
  // asking the other workers, so the test measures the cache and not the race with the write.
  const landed = async (request: ChatRequest) => {
    const key = cacheKeyFor(request, resolved.models.get('gpt-test'));
    for (const started = Date.now(); Date.now() - started < 30_000; await sleep(50))
      if ((await reader.store.get(key)) !== undefined) return;
    assert.fail('the answer never reached the shared cache');
  };
  try {
    for (let index = 0; index < 3; index += 1) workers.push(await startInProcessWorker({ natsUrl: nats.url, config }));
    const large = 'abcdefghij'.repeat((5 * MiB) / 10);
    openai.enqueue({ kind: 'ok', content: large, usage: { promptTokens: 3, completionTokens: 1_000_000 } });
    const first = await ask(raw, body('large plain', 'large-0'));
    assert.equal(first.cached, false);
    assert.equal(first.content.length, large.length);
    await landed(body('large plain', 'large-0'));
    for (let index = 1; index <= 3; index += 1) {
      const again = await ask(raw, body('large plain', `large-${index}`));
      assert.equal(again.cached, true);
      assert.equal(again.content, large, 'never truncated');
    }
    assert.equal(openai.chatRequests.length, 1);

    // Streamed: 100 chunks of 50 KiB; replayed chunk for chunk.
    openai.enqueue({ kind: 'ok', content: large, chunks: 100 });
    const collect = async (requestId: string) => {
      const stream = client.stream(body('large stream', requestId, { stream: true }));
      const chunks: StreamChunk[] = [];
      for await (const chunk of stream) chunks.push(chunk);
      return { chunks, reply: await stream.final };
    };
    const live = await collect('large-stream-0');
    assert.equal(live.reply.cached, false);
    assert.equal(live.chunks.map((chunk) => chunk.delta).join(''), large);
    await landed(body('large stream', 'large-stream-0', { stream: true }));
    for (let index = 1; index <= 3; index += 1) {
      const replay = await collect(`large-stream-${index}`);
      assert.equal(replay.reply.cached, true);
      assert.equal(replay.chunks.length, live.chunks.length);
      assert.ok(replay.chunks.every((chunk, at) => chunk.delta === live.chunks[at]!.delta));
      assert.equal(replay.reply.content, large);
    }
    assert.equal(openai.chatRequests.length, 2);
  } finally {
    await reader.store.close();
    await client.close();
    await raw.close();
    for (const worker of workers) await worker.stop();
    await openai.close();
    await nats.dispose();
  }
});

test('a damaged entry is a miss: removed, logged, replaced by the next answer', { timeout: 60_000 }, async () => {
  const nats = await startNatsServer();
  const openai = await startFakeOpenAI();
  const config = testConfig({ openai: openai.baseUrl }, { cache: { enabled: true, ttl_ms: 60_000 } });
  const raw = await connect({ servers: nats.url });
  const worker = await startInProcessWorker({ natsUrl: nats.url, config });
  const resolved = resolveConfig(config, 'test', { FAKE_OPENAI_KEY: 'x' });
  const writer = createResponseCache(resolved.cache, { nats: raw });
  try {
    for (const [index, damage] of [
      { reply: { content: 'no usage', model: 'gpt-test' } },
      { chunks: [{ seq: 99, delta: 'a chunk that would break the sequence' }] },
      { chunks: [{ delta: 42 }] },
    ].entries()) {
      const request = body(`damaged ${index}`, `damaged-${index}`);
      const good = fixtureReply('fine');
      const stored = { stored_at: Date.now(), model: 'gpt-test', reply: good, ...damage };
      await writer.store.set(
        cacheKeyFor(request, resolved.models.get('gpt-test')),
        stored as unknown as Parameters<typeof writer.store.set>[1],
      );
      const calls = openai.chatRequests.length;
      const streamed = index === 1;
      if (streamed) {
        const client = await createClient({ servers: nats.url });
        try {
          const reply = await client.stream({ ...request, stream: true }).final;
          assert.equal(reply.cached, false);
        } finally {
          await client.close();
        }
      } else {
        const reply = await ask(raw, request);
        assert.equal(reply.cached, false, `damage ${index}: asked upstream`);
        assert.equal(reply.error, undefined);
      }
      assert.equal(openai.chatRequests.length, calls + 1);
      const again = await ask(raw, { ...request, request_id: `damaged-${index}-again` });
      assert.equal(again.cached, true, 'the good answer took its place');
    }
    const warned = worker.logs.records().filter((record) => String(record.msg).includes('could not be served'));
    assert.equal(warned.length, 3);
  } finally {
    await writer.store.close();
    await raw.close();
    await worker.stop();
    await openai.close();
    await nats.dispose();
  }
});

test('the KV unreachable (the bus up): requests are still served, the outage logged once per worker', {
  timeout: 60_000,
}, async () => {
  // The workers' user may not touch the cache bucket: every KV operation is refused by the server.
  const denied = [
    '$KV.LLM_CACHE.>',
    '$JS.API.*.*.KV_LLM_CACHE',
    '$JS.API.*.*.KV_LLM_CACHE.>',
    '$JS.API.*.*.*.KV_LLM_CACHE',
  ];
  const nats = await startNatsServer({
    extraConfig: `authorization { users: [ { user: worker, password: pw, permissions: { publish: { deny: ${JSON.stringify(denied)} } } } ] }`,
  });
  const openai = await startFakeOpenAI();
  const config = testConfig(
    { openai: openai.baseUrl },
    { cache: { enabled: true, ttl_ms: 60_000, store_timeout_ms: 300, coalesce_wait_ms: 1_000 } },
  );
  const workers: InProcessWorker[] = [];
  const client = await connect({ servers: nats.url, user: 'worker', pass: 'pw' });
  try {
    for (let index = 0; index < 2; index += 1)
      workers.push(
        await startInProcessWorker({ natsUrl: nats.url, config, env: { NATS_USER: 'worker', NATS_PASSWORD: 'pw' } }),
      );
    for (let index = 0; index < 6; index += 1) {
      const reply = await ask(client, body('no cache', `no-cache-${index}`));
      assert.equal(reply.error, undefined);
      assert.equal(reply.content, 'echo: no cache');
    }
    // Each worker's memory tier still answers what it served itself; the shared tier never did: one
    // upstream call per worker that got any of the requests (the queue group may give all to one).
    const serving = workers.filter((worker) => worker.worker.stats().requests > 0).length;
    assert.equal(openai.chatRequests.length, serving, 'each serving worker asked upstream once');
    for (const worker of workers) {
      const outages = worker.logs.records().filter((record) => String(record.msg).includes('cache store unreachable'));
      assert.ok(outages.length <= 1, `logged once: ${outages.length}`);
    }
    const logged = workers.flatMap((worker) =>
      worker.logs.records().filter((record) => String(record.msg).includes('cache store unreachable')),
    );
    assert.ok(logged.length >= 1, 'the outage is logged');
  } finally {
    await client.close();
    for (const worker of workers) await worker.stop();
    await openai.close();
    await nats.dispose();
  }
});
