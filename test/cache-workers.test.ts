import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startFakeOpenAI } from './fakes/index.js';
import { runCli } from './helpers/cli-process.js';
import { startNatsServer } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

/**
 * The response cache shared by every worker (issue 18), over a real nats-server and its JetStream KV:
 * three workers in the queue group, a fake OpenAI counting its calls.
 */

async function ask(connection: NatsConnection, body: object) {
  const reply = await connection.request('llm.proxy.request', JSON.stringify(body), { timeout: 15_000 });
  return reply.json<{ content: string; cached: boolean; cost_usd: number; request_id: string; error?: unknown }>();
}

test('three workers share one cache: one upstream call for the same question, whichever worker answers; coalesced when concurrent; kept across a restart', {
  timeout: 90_000,
}, async () => {
  const nats = await startNatsServer();
  const openai = await startFakeOpenAI();
  const config = testConfig({ openai: openai.baseUrl }, { cache: { enabled: true, ttl_ms: 60_000 } });
  const workers: InProcessWorker[] = [];
  const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-cache-'));
  const client = await connect({ servers: nats.url });
  try {
    for (let index = 0; index < 3; index += 1) workers.push(await startInProcessWorker({ natsUrl: nats.url, config }));
    const body = (content: string, requestId: string) => ({
      model: 'gpt-test',
      messages: [{ role: 'user', content }],
      temperature: 0,
      request_id: requestId,
    });

    // The same question asked 12 times one after another: the queue group spreads them over the workers.
    const first = await ask(client, body('shared?', 'shared-0'));
    assert.equal(first.cached, false);
    for (let index = 1; index < 12; index += 1) {
      const again = await ask(client, body('shared?', `shared-${index}`));
      assert.equal(again.cached, true, `request ${index} is a hit`);
      assert.equal(again.cost_usd, 0);
      assert.equal(again.content, first.content);
      assert.equal(again.request_id, `shared-${index}`);
    }
    assert.equal(openai.chatRequests.length, 1, 'one upstream call for 12 requests over 3 workers');
    const served = workers.map((worker) => worker.worker.stats().requests);
    assert.ok(served.filter((count) => count > 0).length >= 2, `answered by several workers: ${served}`);

    // Ten identical requests at once, a slow upstream: the first asks, the others wait for it.
    openai.enqueue({ kind: 'ok', delayMs: 500 });
    const concurrent = await Promise.all(
      Array.from({ length: 10 }, (_, index) => ask(client, body('all at once', `burst-${index}`))),
    );
    assert.equal(openai.chatRequests.length, 2, 'ten concurrent identical requests: one upstream call');
    assert.equal(new Set(concurrent.map((reply) => reply.content)).size, 1);
    assert.equal(concurrent.filter((reply) => !reply.cached).length, 1, 'one answered from upstream, nine as hits');

    // Every worker restarted (memory gone): the shared store still has the answer.
    for (const worker of workers.splice(0)) await worker.stop();
    for (let index = 0; index < 2; index += 1) workers.push(await startInProcessWorker({ natsUrl: nats.url, config }));
    const afterRestart = await ask(client, body('shared?', 'after-restart'));
    assert.equal(afterRestart.cached, true);
    assert.equal(openai.chatRequests.length, 2);

    // refresh: asks upstream again and stores the new answer.
    const refreshed = await ask(client, { ...body('shared?', 'refresh'), cache: 'refresh' });
    assert.equal(refreshed.cached, false);
    assert.equal(openai.chatRequests.length, 3);

    // llm-proxy cache stats|purge, on the same bucket.
    const configPath = join(directory, 'config.yaml');
    writeFileSync(configPath, stringify(config));
    const env = { NATS_URL: nats.url, LLM_PROXY_CONFIG: configPath };
    const stats = await runCli(['cache', 'stats', '--json'], env);
    assert.equal(stats.code, 0, stats.stderr);
    assert.deepEqual(JSON.parse(stats.stdout), {
      backend: 'nats',
      where: 'bucket LLM_CACHE',
      entries: 2,
      bytes: JSON.parse(stats.stdout).bytes,
    });
    const other = await runCli(['cache', 'purge', '--model', 'another-model'], env);
    assert.equal(other.code, 0, other.stderr);
    assert.match(other.stdout, /^purged 0 cached answers of another-model from bucket LLM_CACHE/);
    const purged = await runCli(['cache', 'purge', '--model', 'gpt-test'], env);
    assert.equal(purged.code, 0, purged.stderr);
    assert.match(purged.stdout, /^purged 2 cached answers of gpt-test/);
    assert.match(purged.stdout, /purged \d+ answers? from the memory of 2 workers/);
    const empty = await runCli(['cache', 'stats'], env);
    assert.match(empty.stdout, /^cache bucket LLM_CACHE \(nats\): 0 answers/);
    // Nothing left in the workers' memory either: the next ask goes upstream.
    const afterPurge = await ask(client, body('shared?', 'after-purge'));
    assert.equal(afterPurge.cached, false);
    assert.equal(openai.chatRequests.length, 4);
    const bad = await runCli(['cache', 'flush'], env);
    assert.equal(bad.code, 2);
  } finally {
    await client.close();
    for (const worker of workers) await worker.stop();
    await openai.close();
    await nats.dispose();
    rmSync(directory, { recursive: true, force: true });
  }
});
