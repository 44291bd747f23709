import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import { startNatsServer } from './helpers/nats-server.js';
import { startFakeOpenAI } from './fakes/index.js';
import {
  startChildWorker,
  startInProcessWorker,
  testConfig,
  waitForUsageEvents,
  type ChildWorker,
} from './helpers/worker.js';

const body = (requestId: string) =>
  JSON.stringify({
    model: 'gpt-test',
    messages: [{ role: 'user', content: `hello ${requestId}` }],
    request_id: requestId,
  });

async function ask(client: NatsConnection, requestId: string): Promise<any> {
  const reply = await client.request('llm.proxy.request', body(requestId), { timeout: 15_000 });
  return reply.json();
}

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

describe('workers in a queue group', () => {
  test('two workers share the load; a full worker stops taking work and the other takes the rest', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    openai.setDefault({ kind: 'ok', delayMs: 300 });
    const config = testConfig({ openai: openai.baseUrl });
    const small = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl }, { worker: { max_in_flight: 2 } }),
    });
    const large = await startInProcessWorker({ natsUrl: nats.url, config });
    const client = await connect({ servers: nats.url });
    try {
      // Spaced a little, so that each request finds the other worker's subscription state settled.
      const pending: Array<Promise<any>> = [];
      for (let index = 0; index < 16; index++) {
        pending.push(ask(client, `bounded-${index}`));
        await sleep(20);
      }
      const replies = await Promise.all(pending);
      assert.ok(
        replies.every((reply) => reply.content?.startsWith('echo: hello')),
        JSON.stringify(replies.find((reply) => reply.error)),
      );
      const smallStats = small.worker.stats();
      const largeStats = large.worker.stats();
      assert.equal(smallStats.requests + largeStats.requests, 16);
      assert.ok(smallStats.requests >= 2, `the small worker served ${smallStats.requests}`);
      assert.ok(smallStats.pauses >= 1, 'the small worker paused at max_in_flight');
      assert.ok(smallStats.in_flight_peak <= 3, `the small worker held ${smallStats.in_flight_peak} at once (max 2)`);
      assert.ok(largeStats.requests >= 8, `the large worker served ${largeStats.requests}`);

      // Once idle again, the small worker is back in the queue group.
      assert.equal(small.worker.stats().paused, false);
      openai.setDefault({ kind: 'ok' });
      await Promise.all(Array.from({ length: 30 }, (_, index) => ask(client, `after-${index}`)));
      assert.ok(small.worker.stats().requests > smallStats.requests, 'the small worker takes requests again');
      assert.ok(large.worker.stats().requests > largeStats.requests);
      const events = await waitForUsageEvents(client, 46);
      assert.equal(new Set(events.map((event) => event.request_id)).size, 46);
    } finally {
      await client.close();
      await small.stop();
      await large.stop();
      await openai.close();
      await nats.dispose();
    }
  });

  test('a lone worker at max_in_flight leaves the queue group: extra requests get "no responders" at once, then it comes back', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    openai.setDefault({ kind: 'ok', delayMs: 800 });
    const worker = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl }, { worker: { max_in_flight: 1 } }),
    });
    const client = await connect({ servers: nats.url });
    try {
      const first = ask(client, 'lone-1');
      const deadline = Date.now() + 5_000;
      while (!worker.worker.stats().paused && Date.now() < deadline) await sleep(5);
      await client.flush();
      assert.equal(worker.worker.stats().paused, true);
      const started = performance.now();
      await assert.rejects(client.request('llm.proxy.request', body('lone-2'), { timeout: 5_000 }), (error: Error) =>
        /no responders|503/i.test(`${error.message} ${String(error.cause)}`),
      );
      assert.ok(performance.now() - started < 2_000, 'refused at once, not after the timeout');
      assert.equal((await first).content, 'echo: hello lone-1');
      const resumeDeadline = Date.now() + 5_000;
      while (worker.worker.stats().paused && Date.now() < resumeDeadline) await sleep(5);
      await worker.worker.connection.flush();
      openai.setDefault({ kind: 'ok' });
      assert.equal((await ask(client, 'lone-3')).content, 'echo: hello lone-3');
      assert.ok(worker.logs.lines.some((line) => line.includes('at max_in_flight')));
    } finally {
      await client.close();
      await worker.stop();
      await openai.close();
      await nats.dispose();
    }
  });

  test('SIGTERM: the worker stops taking requests, answers those in flight, publishes their events, exits 0', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    openai.setDefault({ kind: 'ok', delayMs: 1_500 });
    let child: ChildWorker | undefined;
    const client = await connect({ servers: nats.url });
    try {
      child = await startChildWorker({ natsUrl: nats.url, config: testConfig({ openai: openai.baseUrl }) });
      const pending = Array.from({ length: 5 }, (_, index) => ask(client, `drain-${index}`));
      const deadline = Date.now() + 10_000;
      while (openai.inFlight < 5 && Date.now() < deadline) await sleep(10);
      assert.equal(openai.inFlight, 5);
      child.signal('SIGTERM');
      const replies = await Promise.all(pending);
      assert.ok(replies.every((reply) => reply.content?.startsWith('echo: hello drain-')));
      const { code } = await child.exited;
      assert.equal(code, 0, child.stderr());
      const events = await waitForUsageEvents(client, 5);
      assert.deepEqual(events.map((event) => event.request_id).sort(), [
        'drain-0',
        'drain-1',
        'drain-2',
        'drain-3',
        'drain-4',
      ]);
      assert.ok(events.every((event) => event.status === 'ok' && event.worker_id === child!.workerId));
      assert.ok(child.lines.some((line) => line.includes('"worker stopped"') && line.includes('"inFlightAtStop":5')));
      // Nobody listens any more: a new request fails at once instead of hanging.
      await assert.rejects(client.request('llm.proxy.request', body('late'), { timeout: 5_000 }), /no responders|503/i);
    } finally {
      await client.close();
      await child?.dispose();
      await openai.close();
      await nats.dispose();
    }
  });

  test('a rolling restart of one of two workers under steady load loses no request', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    openai.setDefault({ kind: 'ok', delayMs: 80 });
    const config = testConfig({ openai: openai.baseUrl });
    const children: ChildWorker[] = [];
    const client = await connect({ servers: nats.url });
    try {
      const first = await startChildWorker({ natsUrl: nats.url, config });
      const second = await startChildWorker({ natsUrl: nats.url, config });
      children.push(first, second);
      let running = true;
      let sent = 0;
      const failures: string[] = [];
      const replies: Array<Promise<void>> = [];
      const load = (async () => {
        while (running) {
          const requestId = `roll-${sent++}`;
          replies.push(
            ask(client, requestId).then(
              (reply) => {
                if (reply.error !== undefined) failures.push(`${requestId}: ${reply.error.code}`);
              },
              (error: Error) => {
                failures.push(`${requestId}: ${error.message}`);
              },
            ),
          );
          await sleep(15);
        }
      })();
      await sleep(400);
      first.signal('SIGTERM');
      assert.equal((await first.exited).code, 0);
      const replacement = await startChildWorker({ natsUrl: nats.url, config });
      children.push(replacement);
      await sleep(400);
      running = false;
      await load;
      await Promise.all(replies);
      assert.deepEqual(failures, []);
      assert.ok(sent >= 40, `sent ${sent}`);
      const events = await waitForUsageEvents(client, sent, { timeoutMs: 15_000 });
      assert.equal(new Set(events.map((event) => event.request_id)).size, sent);
      const servedBy = new Set(events.map((event) => event.worker_id));
      assert.ok(servedBy.has(first.workerId) && servedBy.has(second.workerId) && servedBy.has(replacement.workerId));
    } finally {
      await client.close();
      for (const child of children) {
        child.signal('SIGTERM');
        await child.exited;
        await child.dispose();
      }
      await openai.close();
      await nats.dispose();
    }
  });

  test('a usage publish that fails (stream deleted) is retried and lands', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    const worker = await startInProcessWorker({ natsUrl: nats.url, config: testConfig({ openai: openai.baseUrl }) });
    const client = await connect({ servers: nats.url });
    try {
      const manager = await jetstreamManager(client);
      await manager.streams.delete('LLM_USAGE');
      const reply = await ask(client, 'after-delete');
      assert.equal(reply.content, 'echo: hello after-delete');
      const events = await waitForUsageEvents(client, 1);
      assert.equal(events[0]!.request_id, 'after-delete');
      assert.ok(worker.worker.publisher.counters.failedAttempts >= 1, 'the first publish failed');
      assert.equal(worker.worker.publisher.counters.pending, 0);
      assert.ok(worker.logs.lines.some((line) => line.includes('usage events are not being published')));
    } finally {
      await client.close();
      await worker.stop();
      await openai.close();
      await nats.dispose();
    }
  });
});
