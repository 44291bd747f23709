import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startInProcessWorker, testConfig, TEST_API_KEY, type InProcessWorker } from './helpers/worker.js';

/** `logging.requests`: which requests get a line of their own (each always has its usage event). */
describe('worker: logging.requests', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let client: NatsConnection;

  before(async () => {
    nats = await startNatsServer();
    openai = await startFakeOpenAI({ requireApiKey: TEST_API_KEY });
    client = await connect({ servers: nats.url });
  });

  after(async () => {
    await client?.close();
    await openai?.close();
    await nats?.dispose();
  });

  const ask = async (model: string, requestId: string) => {
    const body = {
      model,
      messages: [{ role: 'user', content: 'Hello!' }],
      request_id: requestId,
      metadata: { agent_id: 'agent:logs' },
    };
    const reply = await client.request('llm.proxy.request', JSON.stringify(body), { timeout: 10_000 });
    return reply.json<Record<string, unknown>>();
  };

  /** Runs one served and one failed request through a worker with this setting; returns its per-request lines. */
  async function requestLines(
    requests: 'all' | 'errors' | 'none' | undefined,
    tag: string,
  ): Promise<Array<Record<string, unknown>>> {
    const logging = requests === undefined ? { level: 'info' as const } : { level: 'info' as const, requests };
    let worker: InProcessWorker | undefined;
    try {
      worker = await startInProcessWorker({
        natsUrl: nats.url,
        config: testConfig({ openai: openai.baseUrl }, { logging }),
      });
      const served = await ask('gpt-test', `${tag}-ok`);
      assert.equal(served.content, 'echo: Hello!');
      const failed = await ask('no-such-model', `${tag}-bad`);
      assert.equal((failed.error as { code: string }).code, 'model_not_found');
      // The line is written just after the reply and the event; give it a moment.
      const deadline = Date.now() + 2_000;
      const lines = () =>
        worker!.logs.records().filter((line) => line.msg === 'request done' || line.msg === 'request failed');
      const wanted = requests === 'all' ? 2 : requests === 'none' ? 0 : 1;
      while (lines().length < wanted && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      return lines();
    } finally {
      await worker?.stop();
    }
  }

  test('default (errors): only the failed request gets a line, at warn, with its ids and code', async () => {
    const lines = await requestLines(undefined, 'default');
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0]!.msg, 'request failed');
    assert.equal(lines[0]!.level, 'warn');
    assert.equal(lines[0]!.request_id, 'default-bad');
    assert.equal(lines[0]!.agent_id, 'agent:logs');
    assert.equal(lines[0]!.code, 'model_not_found');
    assert.equal(lines[0]!.status, 'rejected');
  });

  test('all: a line per request, "request done" at info for the served one', async () => {
    const lines = await requestLines('all', 'all');
    assert.deepEqual(
      lines.map((line) => [line.msg, line.level, line.request_id, line.code]),
      [
        ['request done', 'info', 'all-ok', 'ok'],
        ['request failed', 'warn', 'all-bad', 'model_not_found'],
      ],
    );
    assert.equal(lines[0]!.model, 'gpt-test');
    assert.equal(typeof lines[0]!.latency_ms, 'number');
  });

  test('none: no per-request line at all', async () => {
    const lines = await requestLines('none', 'none');
    assert.deepEqual(lines, []);
  });
});
