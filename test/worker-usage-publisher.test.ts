import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
import { buildUsageEvent, type UsageEventInput } from '../src/usage/event.js';
import { UsagePublisher } from '../src/usage/publisher.js';

/** An event as the worker builds it; the same `requestId` twice is one event published twice (same event id). */
const builtInput = (requestId: string): UsageEventInput => ({
  eventId: `event-${requestId}`,
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
const event = (requestId: string) => buildUsageEvent(builtInput(requestId));

test('usage events published while NATS is down are kept, retried, and land once it is back', async () => {
  const nats = await startNatsServer();
  const lines: string[] = [];
  const connection = await connect({
    ...connectionOptions({ servers: nats.url }),
    reconnectTimeWait: 200,
    reconnectJitter: 50,
  });
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
    assert.deepEqual(events.map((stored) => stored.request_id).sort(), [
      'before-outage',
      'during-outage-0',
      'during-outage-1',
      'during-outage-2',
      'during-outage-3',
      'during-outage-4',
    ]);
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
    const first = new UsagePublisher({
      connection,
      streamSubject: subjects.usageAll,
      subjectFor: subjects.usageFor,
      stream: usageStreamSchema.parse({ max_age: '30d' }),
      logger,
    });
    await first.ensureStream();
    const manager = await jetstreamManager(connection);
    let info = await manager.streams.info('LLM_USAGE');
    assert.deepEqual(info.config.subjects, ['llm.usage.>']);
    assert.equal(info.config.max_age, 30 * 86_400 * 1e9);
    assert.equal(info.config.duplicate_window, 120 * 1e9);
    const second = new UsagePublisher({
      connection,
      streamSubject: subjects.usageAll,
      subjectFor: subjects.usageFor,
      stream: usageStreamSchema.parse({ max_age: '7d', max_msgs: 1000 }),
      logger,
    });
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

test('an event is on the wire before publish() returns: a reply written next reaches the server after it', async () => {
  const nats = await startNatsServer();
  const connection = await connect({ ...connectionOptions({ servers: nats.url }) });
  const observer = await connect({ servers: nats.url });
  const subjects = subjectsFor('llm');
  const publisher = new UsagePublisher({
    connection,
    streamSubject: subjects.usageAll,
    subjectFor: subjects.usageFor,
    stream: usageStreamSchema.parse({}),
    logger: createLogger({ level: 'silent' }),
  });
  try {
    await publisher.ensureStream();
    const seen: string[] = [];
    observer.subscribe('llm.usage.>', {
      callback: (_error, message) => void seen.push(`event ${(message.json() as { request_id: string }).request_id}`),
    });
    observer.subscribe('test.reply.>', { callback: (_error, message) => void seen.push(`reply ${message.string()}`) });
    await observer.flush();
    for (let index = 0; index < 50; index++) {
      publisher.publish(event(`ordered-${index}`));
      connection.publish(`test.reply.${index}`, `ordered-${index}`);
    }
    await connection.flush();
    await publisher.flush(5_000);
    const deadline = Date.now() + 5_000;
    while (seen.length < 100 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    const expected = Array.from({ length: 50 }, (_, index) => [
      `event ordered-${index}`,
      `reply ordered-${index}`,
    ]).flat();
    assert.deepEqual(seen, expected, 'each event arrives before the reply written after it');
  } finally {
    publisher.close();
    await observer.close();
    await connection.close();
    await nats.dispose();
  }
});

test('an event that can never be published is set aside (logged in full, counted, dead-letter file) and the others flow on', async () => {
  const nats = await startNatsServer({ maxPayload: 8 * 1024 });
  const connection = await connect({ ...connectionOptions({ servers: nats.url }) });
  const subjects = subjectsFor('llm');
  const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-dead-letter-'));
  const deadLetterFile = join(directory, 'nested', 'dead.jsonl');
  const lines: string[] = [];
  const stream = usageStreamSchema.parse({ dead_letter_file: deadLetterFile });
  const publisher = new UsagePublisher({
    connection,
    streamSubject: subjects.usageAll,
    // A subject no server would take, for one agent: the publisher must catch it before it costs the connection.
    subjectFor: (token) => (token === 'agent:evil' ? `llm.usage.${'x'.repeat(5_000)}` : subjects.usageFor(token)),
    stream,
    logger: createLogger({ level: 'info', destination: { write: (line: string) => lines.push(line) } }),
    ackTimeoutMs: 1_000,
    retryBaseMs: 20,
    retryMaxMs: 100,
  });
  const withAgent = (requestId: string, agentId: string, tags: Record<string, string> = {}) =>
    buildUsageEvent({ ...builtInput(requestId), metadata: { agent_id: agentId, ...tags } });
  try {
    // The stream takes messages of up to 1 KiB only: JetStream itself refuses a larger one, for good.
    const manager = await jetstreamManager(connection);
    await manager.streams.add({ ...publisher.streamConfig(), max_msg_size: 1_024 });
    await publisher.ensureStream();
    const bigTags = Object.fromEntries(Array.from({ length: 10 }, (_, index) => [`tag${index}`, 'v'.repeat(100)]));
    const hugeTags = Object.fromEntries(Array.from({ length: 30 }, (_, index) => [`tag${index}`, 'v'.repeat(400)]));
    publisher.publish(withAgent('good-0', 'agent:sofia'));
    publisher.publish(withAgent('bad-subject', 'agent:evil'));
    publisher.publish(withAgent('good-1', 'agent:sofia'));
    publisher.publish(withAgent('over-stream-limit', 'agent:sofia', bigTags));
    publisher.publish(withAgent('good-2', 'agent:sofia'));
    publisher.publish(withAgent('over-max-payload', 'agent:sofia', hugeTags));
    publisher.publish(withAgent('good-3', 'agent:sofia'));
    assert.equal(await publisher.flush(10_000), 0, 'nothing left pending: no event waits behind one that can never go');
    assert.equal(publisher.counters.deadLettered, 3);
    assert.equal(publisher.counters.failedAttempts, 0, 'none of them was retried');
    assert.equal(connection.isClosed(), false);
    const events = await waitForUsageEvents(connection, 4);
    assert.deepEqual(events.map((stored) => stored.request_id).sort(), ['good-0', 'good-1', 'good-2', 'good-3']);

    const logged = lines
      .map((line) => JSON.parse(line) as { msg: string; usage_event?: { request_id: string }; reason?: string })
      .filter((line) => line.usage_event !== undefined);
    assert.deepEqual(logged.map((line) => line.usage_event!.request_id).sort(), [
      'bad-subject',
      'over-max-payload',
      'over-stream-limit',
    ]);
    const deadline = Date.now() + 5_000;
    let written: Array<{ reason: string; event: { request_id: string; tags?: Record<string, string> } }> = [];
    while (Date.now() < deadline) {
      written = existsSync(deadLetterFile)
        ? readFileSync(deadLetterFile, 'utf8')
            .trim()
            .split('\n')
            .map((line) => JSON.parse(line))
        : [];
      if (written.length === 3) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.deepEqual(written.map((line) => line.event.request_id).sort(), [
      'bad-subject',
      'over-max-payload',
      'over-stream-limit',
    ]);
    const overStream = written.find((line) => line.event.request_id === 'over-stream-limit')!;
    assert.match(overStream.reason, /maximum/, overStream.reason);
    assert.deepEqual(overStream.event.tags, bigTags, 'the whole event is kept');
  } finally {
    publisher.close();
    await connection.close();
    await nats.dispose();
    rmSync(directory, { recursive: true, force: true });
  }
});
