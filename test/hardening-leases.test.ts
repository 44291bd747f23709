/**
 * Issue 12, item 4: a request_id shared by concurrent requests (or the id `__proto__`) must not get
 * around `concurrent`. Leases are keyed by the worker-made event id, on every backend.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import { REDIS_URL, redisReachable } from './helpers/redis.js';
import { startFakeOpenAI } from './fakes/index.js';
import { startNatsServer } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig } from './helpers/worker.js';

const redisSkip = (await redisReachable())
  ? undefined
  : `Redis is not reachable at ${REDIS_URL}: redis backend skipped`;

for (const backend of ['memory', 'nats', 'redis'] as const) {
  test(`${backend}: ten concurrent requests sharing one request_id (or "__proto__") get exactly "concurrent: 2" slots`, {
    skip: backend === 'redis' ? redisSkip : undefined,
  }, async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    // Slow enough that all ten are in flight together.
    openai.setDefault({ kind: 'ok', delayMs: 600 });
    const prefix = `llm-leases-test:${randomUUID().slice(0, 8)}:`;
    const worker = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig(
        { openai: openai.baseUrl },
        {
          cache: { enabled: false },
          limits: {
            enabled: true,
            backend,
            redis_url: REDIS_URL,
            redis_key_prefix: prefix,
            default: { rpm: null, concurrent: 2 },
          },
        },
      ),
    });
    const client = await connect({ servers: nats.url });
    try {
      for (const [round, requestId] of [
        [1, 'shared-id'],
        [2, '__proto__'],
      ] as const) {
        const agent = `agent:leases-${round}`;
        const body = JSON.stringify({
          model: 'gpt-test',
          messages: [{ role: 'user', content: 'hi' }],
          request_id: requestId,
          metadata: { agent_id: agent },
        });
        const replies = await Promise.all(
          Array.from({ length: 10 }, () =>
            client
              .request('llm.proxy.request', body, { timeout: 15_000 })
              .then((reply) => reply.json() as { content?: string; error?: { code: string } }),
          ),
        );
        const served = replies.filter((reply) => reply.content === 'echo: hi').length;
        const refused = replies.filter((reply) => reply.error?.code === 'rate_limited').length;
        assert.deepEqual(
          { served, refused },
          { served: 2, refused: 8 },
          `request_id ${requestId}: ${JSON.stringify(replies.find((reply) => reply.error !== undefined && reply.error.code !== 'rate_limited'))}`,
        );
      }
    } finally {
      await client.close();
      await worker.stop();
      await openai.close();
      await nats.dispose();
      if (backend === 'redis') {
        const cleaner = new Redis(REDIS_URL);
        const keys = await cleaner.keys(`${prefix}*`);
        if (keys.length > 0) await cleaner.del(...keys);
        cleaner.disconnect();
      }
    }
  });
}
