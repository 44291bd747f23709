import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createClient, type LlmProxyError, type ChatRequest } from '../src/client/index.js';
import type { ConfigInput } from '../src/config/index.js';
import { startFakeOllama } from './fakes/index.js';
import { startLeafCluster } from './helpers/leaf-cluster.js';
import { startInProcessWorker, testConfig, waitForUsageEvents } from './helpers/worker.js';

/**
 * A leaf node without `default_js_domain` (issue 19): its server refuses `$JS.API.>` and `$KV.>` across
 * the link, so an edge worker names the hub's JetStream domain itself (`nats.jetstream_domain`). Its
 * usage stream check, its events and its limits then live in the hub's JetStream.
 */

function body(requestId: string, agentId: string): ChatRequest {
  return {
    model: 'local-test',
    messages: [{ role: 'user', content: 'hi' }],
    request_id: requestId,
    metadata: { agent_id: agentId },
  };
}

test("an edge worker with nats.jetstream_domain keeps its events and limits in the hub's JetStream", {
  timeout: 90_000,
}, async () => {
  const cluster = await startLeafCluster({ defaultJsDomain: false });
  const ollama = await startFakeOllama();
  const limits: ConfigInput['limits'] = {
    enabled: true,
    backend: 'nats',
    default: { rpm: null },
    agents: { 'agent:edge': { rpm: 3 } },
  };
  const worker = await startInProcessWorker({
    natsUrl: cluster.leafUrl,
    config: testConfig(
      { ollama: ollama.baseUrl },
      { limits, cache: { enabled: false }, nats: { jetstream_domain: cluster.domain }, worker: { node: 'edge-1' } },
    ),
  });
  const agent = await createClient({ servers: cluster.leafUrl, timeoutMs: 10_000 });
  const hub = await connect({ servers: cluster.hubUrl });
  try {
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, index) => agent.chat(body(`edge-${index}`, 'agent:edge'))),
    );
    assert.equal(results.filter((result) => result.status === 'fulfilled').length, 3, 'rpm 3, counted on the hub');
    for (const result of results)
      if (result.status === 'rejected') assert.equal((result.reason as LlmProxyError).code, 'rate_limited');
    const events = await waitForUsageEvents(hub, 6, { timeoutMs: 15_000 });
    const mine = events.filter((event) => event.request_id.startsWith('edge-'));
    assert.equal(mine.length, 6, 'every event in the hub stream, once');
    assert.ok(mine.every((event) => (event as { node?: string }).node === 'edge-1'));
    assert.equal(worker.worker.stats().usage_events.pending, 0);
    assert.equal(worker.worker.stats().limits?.storeErrors, 0, 'the limits store answered every time');
  } finally {
    await agent.close();
    await hub.close();
    await worker.stop();
    await ollama.close();
    await cluster.close();
  }
});
