import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { Svcm } from '@nats-io/services';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { UsageRollups } from '../src/aggregator/rollups.js';
import { SnapshotStore } from '../src/aggregator/snapshot-store.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { handCompute, HOUR, makeEvents, NOW, type HandQuery } from './helpers/usage-events.js';
import { FIXED_DATES } from './helpers/usage-events.js';
import { ensureUsageStream } from '../src/usage/stream.js';

/**
 * The aggregator's proof over a real nats-server: 10,000 events from three
 * concurrent publishers with duplicates of both kinds, a crash and restart,
 * a late second aggregator, and every total checked against a hand
 * computation over the same events.
 */

const subjects = subjectsFor('llm');
const usageStream = usageStreamSchema.parse({});

/** Query bodies sent to llm.proxy.usage, with the hand computation each must equal. */
const QUERIES: Array<{ body: Record<string, unknown>; hand: HandQuery }> = [
  { body: {}, hand: {} },
  { body: { agent_id: 'agent:sofia' }, hand: { agent_id: 'agent:sofia' } },
  {
    body: { microdao_id: 'microdao:7', since: '7d', group_by: 'model' },
    hand: { microdao_id: 'microdao:7', sinceMs: NOW - 7 * 24 * HOUR, group_by: ['model'] },
  },
  {
    body: { model: 'deepseek-chat', group_by: ['provider', 'day'] },
    hand: { model: 'deepseek-chat', group_by: ['provider', 'day'] },
  },
  { body: { provider: 'openai', group_by: 'agent' }, hand: { provider: 'openai', group_by: ['agent'] } },
  {
    body: { since: '24h', group_by: ['microdao', 'agent'] },
    hand: { sinceMs: NOW - 24 * HOUR, group_by: ['microdao', 'agent'] },
  },
  {
    body: { since: '2026-11-25T05:30:00Z', until: '2026-11-25T20:10:00.000Z', group_by: 'hour' },
    hand: {
      sinceMs: Date.parse('2026-11-25T05:30:00Z'),
      untilMs: Date.parse('2026-11-25T20:10:00Z'),
      group_by: ['hour'],
    },
  },
  {
    body: { agent_id: 'agent:helion', microdao_id: 'microdao:9', until: '30m', group_by: ['day', 'model'] },
    hand: {
      agent_id: 'agent:helion',
      microdao_id: 'microdao:9',
      untilMs: NOW - 30 * 60_000,
      group_by: ['day', 'model'],
    },
  },
];

function assertMatchesHand(
  reply: Record<string, unknown>,
  expected: ReturnType<typeof handCompute>,
  label: string,
): void {
  const { cents, ...exact } = expected;
  assert.deepEqual(reply, exact, label);
  assert.equal(Math.round((reply.cost_usd as number) * 100), cents, `${label}: to the cent`);
}

async function publishAll(
  connection: NatsConnection,
  items: Array<{ event: UsageEvent; msgID: string }>,
  batch = 200,
): Promise<{ stored: number; duplicates: number }> {
  const js = jetstream(connection);
  let stored = 0;
  let duplicates = 0;
  for (let start = 0; start < items.length; start += batch) {
    const acks = await Promise.all(
      items
        .slice(start, start + batch)
        .map(({ event, msgID }) =>
          js.publish(subjects.usageFor(agentToken(event.agent_id)), JSON.stringify(event), { msgID }),
        ),
    );
    for (const ack of acks) {
      if (ack.duplicate) duplicates += 1;
      else stored += 1;
    }
  }
  return { stored, duplicates };
}

/** Three "workers", each publishing its share of the events concurrently (and its deliberate duplicates). */
async function publishFromWorkers(
  workers: NatsConnection[],
  events: UsageEvent[],
  options: { sameIdEvery: number; newIdEvery: number },
) {
  const results = await Promise.all(
    workers.map((worker, workerIndex) => {
      const mine = events.filter((_, index) => index % workers.length === workerIndex);
      const items: Array<{ event: UsageEvent; msgID: string }> = [];
      mine.forEach((event, index) => {
        items.push({ event, msgID: event.request_id });
        // A retried publish inside the duplicate window: the stream itself drops it.
        if (index % options.sameIdEvery === 0) items.push({ event, msgID: event.request_id });
        // A second copy the stream cannot recognise (as after the window): the aggregator must drop it.
        if (index % options.newIdEvery === 0) items.push({ event, msgID: `${event.request_id}#again` });
      });
      return publishAll(worker, items);
    }),
  );
  return results.reduce(
    (sum, result) => ({ stored: sum.stored + result.stored, duplicates: sum.duplicates + result.duplicates }),
    { stored: 0, duplicates: 0 },
  );
}

async function lastSeq(connection: NatsConnection): Promise<number> {
  const manager = await jetstreamManager(connection);
  return (await manager.streams.info(usageStream.name)).state.last_seq;
}

async function startAggregator(
  server: NatsServerHandle,
  settings: Record<string, unknown>,
  connections: NatsConnection[],
) {
  const connection = await connect({ servers: server.url, name: `aggregator-${String(settings.instance_id)}` });
  connections.push(connection);
  const aggregator = await UsageAggregator.start({
    connection,
    subjectPrefix: 'llm',
    usageStream,
    aggregator: aggregatorSchema.parse({ snapshot_interval_ms: '10m', ...FIXED_DATES, ...settings }),
    now: () => NOW,
    snapshotChunkBytes: 16 * 1024,
  });
  return { connection, aggregator };
}

async function askUsage(connection: NatsConnection, body: unknown) {
  const reply = await connection.request(subjects.usageQuery, typeof body === 'string' ? body : JSON.stringify(body), {
    timeout: 10_000,
  });
  return { reply, body: reply.json<Record<string, unknown>>() };
}

test('10,000 events, 3 publishers, duplicates, a crash and a late second aggregator: every total matches', {
  timeout: 120_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  const open = async (name: string) => {
    const connection = await connect({ servers: server.url, name });
    connections.push(connection);
    return connection;
  };
  try {
    const workers = await Promise.all([open('worker-1'), open('worker-2'), open('worker-3')]);
    const client = await open('client');
    await ensureUsageStream(await jetstreamManager(client), usageStream, 'llm');
    const events = makeEvents(10_000);
    const phase = (from: number, to: number) => events.slice(from, to);

    // Phase 1: aggregator A counts 4,000 events, then saves a snapshot.
    let a = await startAggregator(server, { instance_id: 'a' }, connections);
    assert.equal(a.aggregator.startPoint.snapshot, 'none');
    assert.equal(a.aggregator.startPoint.startSeq, 1);
    const first = await publishFromWorkers(workers, phase(0, 4_000), { sameIdEvery: 40, newIdEvery: 50 });
    assert.ok(first.duplicates > 0, 'some publishes were dropped by the duplicate window');
    await a.aggregator.waitForSeq(await lastSeq(client));
    const snapshot = await a.aggregator.snapshot();
    assert.ok(snapshot.chunks > 1, `the snapshot is chunked (${snapshot.bytes} bytes in ${snapshot.chunks} chunks)`);

    // Phase 2: A applies 2,000 more (acked, not snapshotted), then dies hard: its connection closes, no last snapshot.
    await publishFromWorkers(workers, phase(4_000, 6_000), { sameIdEvery: 40, newIdEvery: 50 });
    const appliedBeforeCrash = await lastSeq(client);
    await a.aggregator.waitForSeq(appliedBeforeCrash);
    await a.connection.close();

    // While A is down: 2,000 new events, and second copies of phase-1 events under new message ids.
    await publishFromWorkers(workers, phase(6_000, 8_000), { sameIdEvery: 40, newIdEvery: 50 });
    await publishAll(
      workers[0] as NatsConnection,
      phase(0, 4_000)
        .filter((_, index) => index % 97 === 0)
        .map((event) => ({ event, msgID: `${event.request_id}#late` })),
    );

    // A returns: it starts from its snapshot, replays what it had applied but not saved, and catches up.
    a = await startAggregator(server, { instance_id: 'a' }, connections);
    assert.equal(a.aggregator.startPoint.snapshot, 'own');
    assert.equal(a.aggregator.startPoint.snapshotSeq, snapshot.seq);
    assert.equal(a.aggregator.startPoint.startSeq, snapshot.seq + 1, 'consumption resumes right after the snapshot');
    assert.ok(a.aggregator.startPoint.startSeq <= appliedBeforeCrash, 'events applied after the snapshot are replayed');

    // Phase 3: the last 2,000 events while a second aggregator B, with no snapshot of its own, starts late.
    const [, b] = await Promise.all([
      publishFromWorkers(workers, phase(8_000, 10_000), { sameIdEvery: 40, newIdEvery: 50 }),
      (async () => {
        await new Promise((resolve) => setTimeout(resolve, 100));
        return startAggregator(server, { instance_id: 'b', snapshot_bucket: 'LLM_USAGE_SNAPSHOTS_B' }, connections);
      })(),
    ]);
    assert.equal(b.aggregator.startPoint.snapshot, 'none');
    assert.equal(b.aggregator.startPoint.startSeq, 1, 'without a snapshot the stream is read from its start');

    const finalSeq = await lastSeq(client);
    assert.ok(finalSeq > 10_000, 'the stream holds second copies the aggregators must drop');
    await Promise.all([a.aggregator.waitForSeq(finalSeq), b.aggregator.waitForSeq(finalSeq)]);

    for (const instance of [a.aggregator, b.aggregator]) {
      const status = instance.status();
      assert.equal(status.events, 10_000, `${instance.instanceId} counted each request once`);
      assert.equal(status.duplicates, finalSeq - 10_000, `${instance.instanceId} dropped every second copy`);
      assert.equal(status.invalid, 0);
    }

    // Each aggregator has the full picture, and both match the hand computation, through the wire and in process.
    for (const { body, hand } of QUERIES) {
      const expected = handCompute(events, hand);
      const label = JSON.stringify(body);
      assertMatchesHand(a.aggregator.query(body) as unknown as Record<string, unknown>, expected, `a ${label}`);
      assertMatchesHand(b.aggregator.query(body) as unknown as Record<string, unknown>, expected, `b ${label}`);
      const { reply, body: answer } = await askUsage(client, body);
      assert.equal(reply.headers?.get('Nats-Service-Error-Code') ?? '', '');
      assertMatchesHand(answer, expected, `wire ${label}`);
      if (hand.group_by !== undefined)
        assert.ok((answer.groups as unknown[]).length > 1, `${label} has several groups`);
    }
    const seedFields = Object.keys((await askUsage(client, {})).body).slice(0, 4);
    assert.deepEqual(
      seedFields,
      ['total_requests', 'total_tokens', 'avg_latency_ms', 'success_rate'],
      "the seed's fields come first",
    );

    // Both are discoverable as one micro-service.
    const pings = await new Svcm(client).client().ping('llm-usage');
    const ids: string[] = [];
    for await (const ping of pings) ids.push(ping.id);
    assert.equal(ids.length, 2);

    await Promise.all([a.aggregator.stop(), b.aggregator.stop()]);
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});

test('a stopped aggregator resumes from its snapshot, counts what was sent meanwhile, and a new one adopts the snapshot', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  try {
    const worker = await connect({ servers: server.url, name: 'worker' });
    connections.push(worker);
    await ensureUsageStream(await jetstreamManager(worker), usageStream, 'llm');
    const events = makeEvents(600);
    const publish = (list: UsageEvent[]) =>
      publishAll(
        worker,
        list.map((event) => ({ event, msgID: event.request_id })),
      );

    let first = await startAggregator(server, { instance_id: 'solo' }, connections);
    await publish(events.slice(0, 300));
    await first.aggregator.waitForSeq(300);
    await first.aggregator.stop();
    assert.equal(
      first.aggregator.lastSnapshot?.seq,
      300,
      'a graceful stop saves a snapshot covering everything applied',
    );

    // Down for a while: these events wait in the stream.
    await publish(events.slice(300, 600));
    // Second copies of already-counted events, stored by the stream (new message ids): remembered through the snapshot.
    await publishAll(
      worker,
      events.slice(0, 20).map((event) => ({ event, msgID: `${event.request_id}#retry` })),
    );

    first = await startAggregator(server, { instance_id: 'solo' }, connections);
    assert.deepEqual(
      first.aggregator.startPoint,
      { snapshot: 'own', snapshotInstance: 'solo', snapshotSeq: 300, startSeq: 301 },
      'no replay of what the snapshot holds',
    );
    assert.equal(first.aggregator.appliedSeq() >= 300, true);
    await first.aggregator.waitForSeq(620);
    assert.equal(first.aggregator.status().events, 600);
    assert.equal(first.aggregator.status().duplicates, 20);
    assertMatchesHand(
      first.aggregator.query({ group_by: ['agent', 'model'] }) as unknown as Record<string, unknown>,
      handCompute(events, { group_by: ['agent', 'model'] }),
      'after the gap',
    );
    const saved = await first.aggregator.snapshot();
    assert.equal(saved.seq, 620);

    // A new instance, no snapshot of its own, same bucket: it takes the most advanced snapshot instead of replaying.
    const late = await startAggregator(server, { instance_id: 'newcomer' }, connections);
    assert.deepEqual(late.aggregator.startPoint, {
      snapshot: 'adopted',
      snapshotInstance: 'solo',
      snapshotSeq: 620,
      startSeq: 621,
    });
    assert.deepEqual(late.aggregator.query({ group_by: 'hour' }), first.aggregator.query({ group_by: 'hour' }));

    // The durable consumer carries the instance's name and resumes after the snapshot.
    const manager = await jetstreamManager(worker);
    const info = await manager.consumers.info(usageStream.name, 'llm-usage-newcomer');
    assert.equal(info.config.opt_start_seq, 621);
    assert.equal(info.config.ack_policy, 'explicit');

    await Promise.all([first.aggregator.stop(), late.aggregator.stop()]);
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});

test('bad queries get invalid_request naming the field, with the service error headers', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  try {
    const client = await connect({ servers: server.url, name: 'client' });
    connections.push(client);
    const { aggregator } = await startAggregator(server, { instance_id: 'q' }, connections);
    const cases: Array<{ body: unknown; field: string }> = [
      { body: { group_by: 'week' }, field: 'group_by' },
      { body: { group_by: ['model', 'moon'] }, field: 'group_by' },
      { body: { since: 'yesterday' }, field: 'since' },
      { body: { until: '2026-13-45' }, field: 'until' },
      { body: { since: '1d', until: '2d' }, field: 'since' },
      { body: { agent: 'agent:sofia' }, field: '"agent"' },
      { body: { agent_id: 7 }, field: 'agent_id' },
      { body: '{"since": ', field: 'JSON' },
      { body: '[1,2]', field: 'JSON object' },
      { body: { 'line\nbreak': 1 }, field: 'unknown field' },
    ];
    for (const { body, field } of cases) {
      const { reply, body: answer } = await askUsage(client, body);
      const error = (answer as { error?: { code: string; status: number; message: string } }).error;
      assert.equal(error?.code, 'invalid_request', JSON.stringify(body));
      assert.equal(error?.status, 400);
      assert.ok(error?.message.includes(field), `${JSON.stringify(body)} → ${error?.message}`);
      assert.equal(reply.headers?.get('Nats-Service-Error-Code'), '400');
      assert.equal(reply.headers?.get('Nats-Service-Error'), error?.message.replace(/\n/g, ' '));
    }
    // An empty body is the all-time totals.
    const { body: empty } = await askUsage(client, '');
    assert.equal(empty.total_requests, 0);
    assert.deepEqual(empty.groups, []);

    // Ops see each instance's progress in `nats micro stats llm-usage`.
    const stats = await new Svcm(client).client().stats('llm-usage');
    const endpoints = [];
    for await (const stat of stats) endpoints.push(...(stat.endpoints ?? []));
    assert.equal(endpoints.length, 1);
    assert.equal(endpoints[0]?.subject, 'llm.proxy.usage');
    assert.equal(endpoints[0]?.queue_group, 'llm-usage');
    assert.deepEqual(endpoints[0]?.data, {
      instance: 'q',
      durable: 'llm-usage-q',
      applied_seq: 0,
      events: 0,
      duplicates: 0,
      invalid: 0,
      remembered_ids: 0,
      start_seq: 1,
      start_snapshot: 'none',
      snapshot_seq: 0,
    });
    await aggregator.stop();
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});

test('messages missing from the delivery are read from the stream, so nothing is skipped', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  try {
    const worker = await connect({ servers: server.url, name: 'worker' });
    connections.push(worker);
    const manager = await jetstreamManager(worker);
    await ensureUsageStream(manager, usageStream, 'llm');
    const events = makeEvents(200);
    const publish = (list: UsageEvent[]) =>
      publishAll(
        worker,
        list.map((event) => ({ event, msgID: event.request_id })),
      );

    const { aggregator } = await startAggregator(server, { instance_id: 'holes' }, connections);
    await publish(events.slice(0, 100));
    await aggregator.waitForSeq(100);

    // The durable is replaced by one that starts at 151: 101..150 are never delivered (as if lost in flight).
    const durable = await manager.consumers.info(usageStream.name, aggregator.durableName);
    await manager.consumers.delete(usageStream.name, aggregator.durableName);
    await publish(events.slice(100, 200));
    await manager.consumers.add(usageStream.name, { ...durable.config, opt_start_seq: 151 });

    await aggregator.waitForSeq(200, 45_000);
    assert.equal(aggregator.status().events, 200);
    assertMatchesHand(
      aggregator.query({ group_by: 'model' }) as unknown as Record<string, unknown>,
      handCompute(events, { group_by: ['model'] }),
      'after the hole',
    );
    await aggregator.stop();
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});

test('key ids through the real aggregator: group_by key, key_id, over a snapshot written before keys were counted', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const connections: NatsConnection[] = [];
  try {
    const worker = await connect({ servers: server.url, name: 'worker' });
    connections.push(worker);
    const manager = await jetstreamManager(worker);
    const stream = await ensureUsageStream(manager, usageStream, 'llm');
    const publish = (list: UsageEvent[]) =>
      publishAll(
        worker,
        list.map((event) => ({ event, msgID: event.request_id })),
      );
    const KEYS = ['Ab3dEf6hIj9k', 'Zz0yXw1vUt2s'] as const;
    const events = makeEvents(400);
    // Events 0..199 are from before keys existed; after that, two of three requests came with a key.
    const keyed = events.map((event, index) => {
      const key = index < 200 ? undefined : KEYS[index % 3];
      return key === undefined ? event : { ...event, key_id: key };
    });

    // A snapshot of the first 200 events in the layout the previous version wrote (none has a key: no cell_keys).
    await publish(keyed.slice(0, 200));
    const before = new UsageRollups(aggregatorSchema.parse({}).dedup_horizon);
    for (let seq = 1; seq <= 200; seq += 1) {
      const message = await manager.streams.getMessage(usageStream.name, { seq });
      assert.ok(message !== null);
      before.apply({ seq, data: message.data, storedAtMs: message.time.getTime() });
    }
    const legacy = JSON.parse(JSON.stringify(before.toSnapshot()));
    assert.equal('cell_keys' in legacy, false, 'the layout the previous version wrote');
    assert.equal(legacy.cells[0].length, 5 + legacy.counters.length);
    const store = await SnapshotStore.open(worker, 'LLM_USAGE_SNAPSHOTS');
    await store.save('keys', legacy, { name: stream.config.name, created: stream.created });

    await publish(keyed.slice(200, 400));
    const first = await startAggregator(server, { instance_id: 'keys' }, connections);
    assert.deepEqual(first.aggregator.startPoint, {
      snapshot: 'own',
      snapshotInstance: 'keys',
      snapshotSeq: 200,
      startSeq: 201,
    });
    await first.aggregator.waitForSeq(400);

    // Per key: what a hand computation over that key's events gives ("(none)": events without key_id).
    const labelOf = (event: UsageEvent) => event.key_id ?? '(none)';
    const totalsOf = (list: UsageEvent[], hand: HandQuery = {}) => {
      const { cents: _cents, since: _since, until: _until, groups, ...totals } = handCompute(list, hand);
      return { totals, groups };
    };
    const expectedByKey = ['(none)', ...KEYS].map((label) => ({
      key: { key: label },
      ...totalsOf(keyed.filter((event) => labelOf(event) === label)).totals,
    }));
    const { reply, body: byKey } = await askUsage(worker, { group_by: 'key' });
    assert.equal(reply.headers?.get('Nats-Service-Error-Code') ?? '', '');
    assert.deepEqual(byKey.groups, expectedByKey);
    assert.equal(byKey.total_requests, 400);

    const onlyA = keyed.filter((event) => event.key_id === KEYS[0]);
    assertMatchesHand(
      (await askUsage(worker, { key_id: KEYS[0], group_by: ['agent', 'model'] })).body,
      handCompute(onlyA, { group_by: ['agent', 'model'] }),
      'key_id filter',
    );
    const { body: byAgentKey } = await askUsage(worker, { agent_id: 'agent:sofia', group_by: ['key', 'day'] });
    const sofia = keyed.filter((event) => event.agent_id === 'agent:sofia');
    assert.deepEqual(
      (byAgentKey.groups as Array<{ key: Record<string, string>; total_requests: number }>).map((group) => [
        group.key.key,
        group.key.day,
        group.total_requests,
      ]),
      ['(none)', ...KEYS].flatMap((label) =>
        totalsOf(
          sofia.filter((event) => labelOf(event) === label),
          { group_by: ['day'] },
        ).groups.map((group) => [label, group.key.day, group.total_requests]),
      ),
      'agent filter with key grouping',
    );

    // A graceful stop saves the keys; a new instance adopts that snapshot and answers the same.
    await first.aggregator.stop();
    const saved = await store.load('keys');
    assert.ok(saved?.snapshot.cell_keys?.includes(KEYS[0]));
    const adopter = await startAggregator(server, { instance_id: 'keys-adopter' }, connections);
    assert.equal(adopter.aggregator.startPoint.snapshot, 'adopted');
    assert.equal(adopter.aggregator.startPoint.snapshotSeq, 400);
    assert.deepEqual(
      adopter.aggregator.query({ group_by: ['key', 'hour'] }),
      first.aggregator.query({ group_by: ['key', 'hour'] }),
    );
    assert.deepEqual((await askUsage(worker, { group_by: 'key' })).body.groups, expectedByKey);
    await adopter.aggregator.stop();
  } finally {
    await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
    await server.dispose();
  }
});
