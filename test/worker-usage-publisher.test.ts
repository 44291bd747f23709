import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { startNatsServer } from './helpers/nats-server.js';
import { waitForUsageEvents } from './helpers/worker.js';
import { connectionOptions } from '../src/bus/connect.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { subjectsFor } from '../src/contract/subjects.js';
import { createLogger } from '../src/telemetry/logger.js';
import { buildUsageEvent } from '../src/usage/event.js';
import { UsagePublisher } from '../src/usage/publisher.js';

const event = (requestId: string) =>
  buildUsageEvent({
    requestId,
    metadata: { agent_id: 'agent:sofia' },
    model: 'gpt-test',
    provider: 'openai',
    modelResolved: 'gpt-4o-mini',
    status: 'ok',
    errorCode: null,
    promptTokens: 10,
    completionTokens: 5,
    tokensEstimated: false,
    costUsd: 0.001,
    latencyMs: 12.3,
    ttftMs: null,
    stream: false,
    cached: false,
    attempts: [],
    workerId: 'test',
  });

test('usage events published while NATS is down are kept, retried, and land once it is back', async () => {
  const nats = await startNatsServer();
  const lines: string[] = [];
  const connection = await connect({ ...connectionOptions({ servers: nats.url }), reconnectTimeWait: 200, reconnectJitter: 50 });
  const subjects = subjectsFor('llm');
  const publisher = new UsagePublisher({
    connection,
    streamSubject: subjects.usageAll,
    subjectFor: subjects.usageFor,
    stream: usageStreamSchema.parse({}),
    logger: createLogger({ level: 'debug', destination: { write: (line: string) => lines.push(line) } }),
    ackTimeoutMs: 500,
    retryBaseMs: 50,
    retryMaxMs: 300,
  });
  try {
    await publisher.ensureStream();
    publisher.publish(event('before-outage'));
    assert.equal(await publisher.flush(5_000), 0);

    await nats.stop();
    for (let index = 0; index < 5; index++) publisher.publish(event(`during-outage-${index}`));
    // The same event twice (a retried publish from the worker's point of view) must be stored once.
    publisher.publish(event('during-outage-0'));
    await new Promise((resolve) => setTimeout(resolve, 800));
    assert.equal(publisher.pending, 6, 'all held while NATS is down');
    await nats.restart();

    assert.equal(await publisher.flush(15_000), 0, 'everything published after the restart');
    assert.ok(publisher.counters.failedAttempts >= 1);
    const checker = await connect({ servers: nats.url });
    const events = await waitForUsageEvents(checker, 6);
    assert.deepEqual(events.map((stored) => stored.request_id).sort(), ['before-outage', 'during-outage-0', 'during-outage-1', 'during-outage-2', 'during-outage-3', 'during-outage-4']);
    assert.ok(publisher.counters.duplicates >= 1);
    await checker.close();
  } finally {
    publisher.close();
    await connection.close();
    await nats.dispose();
  }
});

test('ensureStream creates the stream with the configured settings and updates it when they change', async () => {
  const nats = await startNatsServer();
  const connection = await connect({ servers: nats.url });
  const subjects = subjectsFor('llm');
  const logger = createLogger({ level: 'silent' });
  try {
    const first = new UsagePublisher({ connection, streamSubject: subjects.usageAll, subjectFor: subjects.usageFor, stream: usageStreamSchema.parse({ max_age: '30d' }), logger });
    await first.ensureStream();
    const manager = await jetstreamManager(connection);
    let info = await manager.streams.info('LLM_USAGE');
    assert.deepEqual(info.config.subjects, ['llm.usage.>']);
    assert.equal(info.config.max_age, 30 * 86_400 * 1e9);
    assert.equal(info.config.duplicate_window, 120 * 1e9);
    const second = new UsagePublisher({ connection, streamSubject: subjects.usageAll, subjectFor: subjects.usageFor, stream: usageStreamSchema.parse({ max_age: '7d', max_msgs: 1000 }), logger });
    await second.ensureStream();
    info = await manager.streams.info('LLM_USAGE');
    assert.equal(info.config.max_age, 7 * 86_400 * 1e9);
    assert.equal(info.config.max_msgs, 1000);
  } finally {
    await connection.close();
    await nats.dispose();
  }
});

test('events published after the stream was deleted are refused (503), held, and land once the publisher recreates it', async () => {
  const nats = await startNatsServer();
  const connection = await connect({ ...connectionOptions({ servers: nats.url }) });
  const subjects = subjectsFor('llm');
  const stream = usageStreamSchema.parse({});
  const publisher = new UsagePublisher({
    connection,
    streamSubject: subjects.usageAll,
    subjectFor: subjects.usageFor,
    stream,
    logger: createLogger({ level: 'silent', destination: { write: () => undefined } }),
    ackTimeoutMs: 500,
    retryBaseMs: 20,
    retryMaxMs: 100,
  });
  try {
    await publisher.ensureStream();
    const manager = await jetstreamManager(connection);
    await manager.streams.delete(stream.name);
    for (let index = 0; index < 3; index++) publisher.publish(event(`orphan-${index}`));
    assert.equal(await publisher.flush(10_000), 0, 'held, then published once the stream was back');
    assert.ok(publisher.counters.failedAttempts >= 1, 'the first attempt was refused');
    const events = await waitForUsageEvents(connection, 3);
    assert.deepEqual(events.map((stored) => stored.request_id).sort(), ['orphan-0', 'orphan-1', 'orphan-2']);
    const info = await manager.streams.info(stream.name);
    assert.equal(info.state.messages, 3);
  } finally {
    publisher.close();
    await connection.close();
    await nats.dispose();
  }
});

test('events wait for the batch window and go out together; flush sends a waiting batch at once; close logs an unsent one', async () => {
  const nats = await startNatsServer();
  const connection = await connect({ ...connectionOptions({ servers: nats.url }) });
  const subjects = subjectsFor('llm');
  const lines: string[] = [];
  const make = (batchWindowMs: number) =>
    new UsagePublisher({
      connection,
      streamSubject: subjects.usageAll,
      subjectFor: subjects.usageFor,
      stream: usageStreamSchema.parse({}),
      logger: createLogger({ level: 'info', destination: { write: (line: string) => lines.push(line) } }),
      batchWindowMs,
    });
  const stored = async () => (await (await jetstreamManager(connection)).streams.info(usageStreamSchema.parse({}).name)).state.messages;
  const hour = 3_600_000;
  const waiting = make(hour);
  const closing = make(hour);
  const windowed = make(50);
  try {
    await waiting.ensureStream();
    await closing.ensureStream();
    await windowed.ensureStream();

    // A window of an hour: nothing goes out until flush() sends the batch.
    for (let index = 0; index < 3; index++) waiting.publish(event(`batched-${index}`));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(await stored(), 0, 'held for the window');
    assert.equal(waiting.pending, 3);
    assert.equal(await waiting.flush(5_000), 0);
    assert.equal(await stored(), 3);

    // A short window: out without anyone asking.
    windowed.publish(event('windowed-0'));
    windowed.publish(event('windowed-1'));
    const events = await waitForUsageEvents(connection, 5);
    assert.deepEqual(events.map((item) => item.request_id).sort(), ['batched-0', 'batched-1', 'batched-2', 'windowed-0', 'windowed-1']);
    assert.equal(windowed.pending, 0);

    // Closed before its window ended: the event is logged in full, not lost silently.
    closing.publish(event('never-sent'));
    closing.close();
    const logged = lines.map((line) => JSON.parse(line) as { msg: string; usage_event?: { request_id: string } }).filter((line) => line.usage_event !== undefined);
    assert.deepEqual(logged.map((line) => [line.usage_event!.request_id, line.msg]), [['never-sent', 'usage event could not be published before shutdown; logged in full']]);
    assert.equal(await stored(), 5);
  } finally {
    waiting.close();
    windowed.close();
    closing.close();
    await connection.close();
    await nats.dispose();
  }
});
