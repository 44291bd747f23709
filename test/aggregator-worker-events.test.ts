import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { startNatsServer } from './helpers/nats-server.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { subjectsFor } from '../src/contract/subjects.js';
import { createLogger } from '../src/telemetry/logger.js';
import { buildUsageEvent, UsagePublisher, type UsageEventInput } from '../src/usage/index.js';
import { ensureUsageStream } from '../src/usage/stream.js';

/**
 * The aggregator depends on no worker code, but it must count what workers
 * actually publish: events built and published by the worker's own modules,
 * an unauthenticated one included, and both sides agreeing on the stream.
 */

test("events built and published by the worker's publisher are counted, and both sides agree on the stream", {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  try {
    const workerConnection = await connect({ servers: server.url, name: 'worker' });
    const aggregatorConnection = await connect({ servers: server.url, name: 'aggregator' });
    connections.push(workerConnection, aggregatorConnection);
    const usageStream = usageStreamSchema.parse({ max_age: '30d', duplicate_window: '5m' });
    const subjects = subjectsFor('llm');
    const publisher = new UsagePublisher({
      connection: workerConnection,
      streamSubject: subjects.usageAll,
      subjectFor: (token) => subjects.usageFor(token),
      stream: usageStream,
      logger: createLogger({ level: 'silent' }),
    });
    await publisher.ensureStream();
    const manager = await jetstreamManager(aggregatorConnection);
    const before = await manager.streams.info(usageStream.name);
    await ensureUsageStream(manager, usageStream, 'llm');
    const after = await manager.streams.info(usageStream.name);
    assert.deepEqual(
      after.config,
      before.config,
      "the aggregator finds the worker's stream as it wants it (no tug of war)",
    );

    const aggregator = await UsageAggregator.start({
      connection: aggregatorConnection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({ instance_id: 'compat' }),
    });
    const base: UsageEventInput = {
      eventId: 'e-1',
      requestId: 'r-1',
      timestamp: new Date('2026-11-27T21:05:00Z'),
      metadata: { agent_id: 'agent:sofia', microdao_id: 'microdao:7', channel_id: 'c-1', team: 'blue' },
      model: 'gpt-4.1-mini',
      provider: 'openai',
      modelResolved: 'gpt-4-1106-preview',
      status: 'ok',
      errorCode: null,
      promptTokens: 25,
      completionTokens: 10,
      tokensEstimated: false,
      costUsd: 0.00055,
      latencyMs: 1234.5,
      ttftMs: null,
      stream: false,
      cached: false,
      attempts: [],
      workerId: 'w-1',
    };
    publisher.publish(buildUsageEvent(base));
    publisher.publish(buildUsageEvent(base)); // the same event (same event id) again: stored once
    publisher.publish(
      buildUsageEvent({
        ...base,
        eventId: 'e-2',
        requestId: 'r-2',
        metadata: { agent_id: 'a.b' },
        status: 'error',
        errorCode: 'upstream_error',
        completionTokens: 0,
        costUsd: 0.00025,
        latencyMs: 20,
      }),
    );
    publisher.publish(
      buildUsageEvent({
        ...base,
        eventId: 'e-3',
        requestId: 'r-3',
        unauthenticated: true,
        status: 'rejected',
        errorCode: 'unauthorized',
        model: null,
        provider: null,
        modelResolved: null,
        promptTokens: 0,
        completionTokens: 0,
        costUsd: 0,
        latencyMs: 0.4,
      }),
    );
    assert.equal(await publisher.flush(10_000), 0);
    const { state } = await manager.streams.info(usageStream.name);
    assert.equal(state.messages, 3);
    await aggregator.waitForSeq(state.last_seq);

    const reply = aggregator.query({ group_by: 'agent' });
    assert.equal(reply.total_requests, 3);
    assert.equal(reply.total_tokens, 35 + 25);
    assert.equal(reply.cost_usd, 0.0008);
    assert.equal(reply.rejected, 1);
    assert.equal(reply.errors, 1);
    assert.deepEqual(
      reply.groups.map((group) => [group.key.agent, group.total_requests]),
      [
        ['(none)', 1],
        ['a.b', 1],
        ['agent:sofia', 1],
      ],
      'the unauthenticated request is attributed to nobody, not to the agent it claimed',
    );
    publisher.close();
    await aggregator.stop();
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});
