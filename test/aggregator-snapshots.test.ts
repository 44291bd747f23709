import { test } from 'node:test';
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { parseUsageQuery, runUsageQuery } from '../src/aggregator/query.js';
import { COUNTERS, UsageRollups, type Compaction } from '../src/aggregator/rollups.js';
import { SnapshotStore, snapshotOfCut, type SnapshotManifest } from '../src/aggregator/snapshot-store.js';
import { HOUR_MS } from '../src/aggregator/time-buckets.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { FIXED_DATES, makeEvents, NOW } from './helpers/usage-events.js';

/**
 * Snapshots in format v2 (streamed records, chunk by chunk) over a real nats-server: round trip, v1
 * still read, a large save that does not hold the event loop while events and queries go on, cleanup
 * of stale chunks and of departed instances, and a snapshot overwritten while it is read.
 */

const subjects = subjectsFor('llm');
const usageStream = usageStreamSchema.parse({});
const DAY_MS = 24 * HOUR_MS;
const COMPACTION: Compaction = { hourWindowMs: DAY_MS, retentionMs: 0 };
const STREAM = { name: 'LLM_USAGE', created: '2026-11-01T00:00:00Z' };
const encoder = new TextEncoder();

/** Rollups over 72 hours of events, a third with a key id: hour and day buckets, ids in many hours. */
function rollupsOf(count: number, from = 0, seed = ''): UsageRollups {
  const rollups = new UsageRollups(DAY_MS, COMPACTION);
  const events = makeEvents(from + count)
    .slice(from)
    .map((event, index) => ({
      ...event,
      request_id: `${event.request_id}${seed}`,
      ...(index % 3 === 0 ? { key_id: `K${(index % 4).toString().padStart(11, '0')}` } : {}),
    }))
    .sort((left, right) => Date.parse(left.ts) - Date.parse(right.ts));
  for (const event of events)
    rollups.apply({
      seq: rollups.appliedSeq + 1,
      data: encoder.encode(JSON.stringify(event)),
      storedAtMs: Date.parse(event.ts),
    });
  return rollups;
}

function snapshotOf(rollups: UsageRollups) {
  return snapshotOfCut(rollups.beginCut(), true);
}

/**
 * A large synthetic state: `cells` cells over 720 hour buckets before NOW and 80 day buckets before those,
 * `ids` remembered ids in the last 24 hours. Built through restoreCell (as a snapshot load does).
 */
function largeState(cells: number, ids: number): UsageRollups {
  const rollups = new UsageRollups(DAY_MS);
  const positions = COUNTERS.map((_, index) => index);
  const models = ['gpt-4.1-mini', 'deepseek-chat', 'llama3', 'gpt-4o-mini', 'claude', 'gemini', 'mistral', 'qwen'];
  const lastHour = Math.floor(NOW / HOUR_MS);
  const firstHour = lastHour - 719;
  const firstDay = Math.floor(firstHour / 24) * 24;
  for (let index = 0; index < cells; index += 1) {
    const slot = index % 800;
    const day = slot >= 720;
    const start = day ? firstDay - (slot - 719) * 24 : firstHour + slot;
    const row = Math.floor(index / 800);
    const requests = 1 + (index % 50);
    const prompt = (index * 7919) % 100_000;
    const completion = (index * 104_729) % 10_000;
    rollups.restoreCell(
      start,
      day,
      {
        agent: `agent:synthetic-${row % 500}`,
        microdao: `microdao:${Math.floor(row / 4000)}`,
        model: models[Math.floor(row / 500) % 8] ?? null,
        provider: 'openai',
        key: row % 3 === 0 ? null : `K${(row % 1000).toString().padStart(11, '0')}`,
      },
      [requests, requests - 1, 1, 0, 0, 0, 0, prompt, completion, prompt + completion, index * 1_000, index * 10, 0],
      positions,
    );
  }
  for (let hour = 0; hour < 24; hour += 1) {
    const set: string[] = [];
    for (let id = 0; id < ids / 24; id += 1) set.push(`synthetic-${hour}-${id}-${(id * 2_654_435_761) % 1e9}`);
    rollups.restoreSeen(lastHour - 23 + hour, set);
  }
  Object.assign(rollups.stats, { events: cells * 25, duplicates: 3, invalid: 1 });
  return rollups;
}

async function withServer(run: (server: NatsServerHandle, connection: NatsConnection) => Promise<void>) {
  const server = await startNatsServer();
  const connection = await connect({ servers: server.url, name: 'snapshots-test' });
  try {
    await run(server, connection);
  } finally {
    await connection.close();
    await server.dispose();
  }
}

async function keysOf(kv: KV, filter: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const key of await kv.keys(filter)) keys.push(key);
  return keys.sort();
}

test('v2 round trip through KV: hour and day buckets, keys, ids, stats; chunked; read as one document too', async () => {
  await withServer(async (_server, connection) => {
    const store = await SnapshotStore.open(connection, 'SNAPS', { chunkBytes: 2048 });
    const rollups = rollupsOf(3_000);
    const original = snapshotOf(rollups);
    assert.ok((original.day_buckets?.length ?? 0) > 0 && original.cell_keys?.some((key) => key !== null));
    const manifest = await store.saveCut('one', rollups.beginCut(), STREAM);
    assert.equal(manifest.v, 2);
    assert.equal(manifest.seq, 3_000);
    assert.equal(manifest.cells, original.cells.length);
    assert.equal(manifest.ids, rollups.rememberedIds());
    assert.ok(manifest.chunks > 5, `${manifest.bytes} bytes in ${manifest.chunks} chunks`);

    const loaded = await store.loadRollups('one', DAY_MS, COMPACTION);
    assert.ok(loaded !== undefined);
    assert.deepEqual(loaded.manifest, manifest);
    assert.equal(loaded.rollups.appliedSeq, 3_000);
    assert.deepEqual(snapshotOf(loaded.rollups), original);
    assert.deepEqual(loaded.rollups.stats, rollups.stats);
    // The restored rollups go on as the original would: a second copy of a remembered event is a duplicate.
    const again = makeEvents(1)[0] as UsageEvent;
    const lastStored = Math.max(...makeEvents(3_000).map((event) => Date.parse(event.ts)));
    const copy = { seq: 3_001, data: encoder.encode(JSON.stringify(again)), storedAtMs: lastStored };
    assert.equal(loaded.rollups.apply(copy).outcome, rollups.apply(copy).outcome);

    assert.deepEqual((await store.load('one'))?.snapshot, original, 'load() gives the v1 document of a v2 snapshot');
    assert.equal(await store.loadRollups('nobody', DAY_MS), undefined);
  });
});

test('a v1 snapshot (one JSON document) still loads, and the next save writes v2 in the other slot', async () => {
  await withServer(async (_server, connection) => {
    const store = await SnapshotStore.open(connection, 'SNAPS', { chunkBytes: 4096 });
    const rollups = rollupsOf(1_500);
    const v1 = await store.save('old', snapshotOfCut(rollups.beginCut(), true), STREAM);
    assert.equal(v1.v, 1);
    const loaded = await store.loadRollups('old', DAY_MS, COMPACTION);
    assert.equal(loaded?.manifest.v, 1);
    assert.deepEqual(snapshotOf(loaded.rollups), snapshotOf(rollups));

    const v2 = await store.saveCut('old', loaded.rollups.beginCut(), STREAM);
    assert.equal(v2.v, 2);
    assert.notEqual(v2.slot, v1.slot);
    assert.deepEqual(
      snapshotOf((await store.loadRollups('old', DAY_MS, COMPACTION))?.rollups as UsageRollups),
      snapshotOf(rollups),
    );
  });
});

test('stale chunks beyond a smaller snapshot are purged; departed instances are removed, recent and own kept', async () => {
  await withServer(async (_server, connection) => {
    const kv = await new Kvm(connection).open('SNAPS');
    const store = await SnapshotStore.open(connection, 'SNAPS', { chunkBytes: 1024 });

    // Slot a: a big snapshot, then b, then a small one in a: a's chunks past the small one's count go.
    const big = await store.saveCut('me', rollupsOf(2_000).beginCut(), STREAM);
    await store.saveCut('me', rollupsOf(50).beginCut(), STREAM);
    const small = await store.saveCut('me', rollupsOf(50).beginCut(), STREAM);
    assert.equal(small.slot, big.slot);
    assert.ok(big.chunks > small.chunks + 2, `${big.chunks} then ${small.chunks} chunks`);
    const inSlot = await keysOf(kv, `chunk.me.${small.slot}.*`);
    assert.deepEqual(
      inSlot,
      Array.from({ length: small.chunks }, (_, index) => `chunk.me.${small.slot}.${index}`).sort(),
    );
    assert.equal((await kv.get(`chunk.me.${small.slot}.${small.chunks}`))?.operation ?? 'PURGE', 'PURGE');
    assert.deepEqual(
      snapshotOf((await store.loadRollups('me', DAY_MS, COMPACTION))?.rollups as UsageRollups),
      snapshotOf(rollupsOf(50)),
    );

    // Other instances: one departed 8 days ago, one saved an hour ago, one departed but ahead of ours.
    const other = await SnapshotStore.open(connection, 'SNAPS', { chunkBytes: 1024 });
    const backdate = async (instance: string, ageMs: number, seq?: number) => {
      const manifest = (await other.manifest(instance)) as SnapshotManifest;
      const saved_at = new Date(Date.now() - ageMs).toISOString();
      await kv.put(`manifest.${instance}`, JSON.stringify({ ...manifest, saved_at, seq: seq ?? manifest.seq }));
    };
    for (const instance of ['gone', 'recent', 'ahead']) {
      await other.saveCut(instance, rollupsOf(40).beginCut(), STREAM);
      await other.saveCut(instance, rollupsOf(30).beginCut(), STREAM);
    }
    await backdate('gone', 8 * DAY_MS);
    await backdate('recent', HOUR_MS);
    await backdate('ahead', 8 * DAY_MS, small.seq + 1);
    // A first save that never got its manifest (only chunks), long ago: its chunks' age is theirs, so only a
    // short threshold removes them (below).
    await kv.put('chunk.crashed.a.0', new Uint8Array([1, 2, 3]));

    assert.deepEqual(await store.removeDeparted('me', 7 * DAY_MS), ['gone']);
    assert.deepEqual(await keysOf(kv, 'manifest.*'), ['manifest.ahead', 'manifest.me', 'manifest.recent']);
    assert.deepEqual(await keysOf(kv, 'chunk.gone.>'), []);
    assert.ok((await keysOf(kv, 'chunk.recent.>')).length > 0);
    assert.ok((await keysOf(kv, 'chunk.ahead.>')).length > 0, 'a departed snapshot ahead of ours stays');
    assert.deepEqual(await keysOf(kv, 'chunk.crashed.>'), ['chunk.crashed.a.0']);
    assert.equal(await store.loadRollups('gone', DAY_MS), undefined);

    await sleep(50);
    assert.deepEqual(await store.removeDeparted('me', 40), ['recent']);
    assert.deepEqual(await keysOf(kv, 'chunk.crashed.>'), [], 'chunks no manifest names, as old, go too');
    assert.deepEqual(await keysOf(kv, 'manifest.*'), ['manifest.ahead', 'manifest.me']);
    assert.ok((await keysOf(kv, 'chunk.me.>')).length > 0, 'own snapshot stays');
    // Nothing is removed for an instance that has no snapshot of its own yet.
    assert.deepEqual(await store.removeDeparted('newcomer', 0), []);
  });
});

test('the aggregator removes a departed instance after its first save (consumer_inactive_threshold)', async () => {
  await withServer(async (_server, connection) => {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    const info = await (await jetstreamManager(connection)).streams.info(usageStream.name);
    const stream = { name: info.config.name, created: info.created };
    const kv = await new Kvm(connection).open('LLM_USAGE_SNAPSHOTS');
    const other = await SnapshotStore.open(connection, 'LLM_USAGE_SNAPSHOTS');
    for (const instance of ['old-host', 'other-host']) {
      const rollups = new UsageRollups(DAY_MS);
      await other.saveCut(instance, rollups.beginCut(), stream);
    }
    const manifest = (await other.manifest('old-host')) as SnapshotManifest;
    await kv.put(
      'manifest.old-host',
      JSON.stringify({ ...manifest, saved_at: new Date(Date.now() - 3 * DAY_MS).toISOString() }),
    );

    const aggregator = await UsageAggregator.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({
        instance_id: 'new-host',
        snapshot_interval_ms: '10m',
        consumer_inactive_threshold: '2d',
        ...FIXED_DATES,
      }),
      now: () => NOW,
    });
    assert.equal(aggregator.startPoint.snapshot, 'adopted');
    await aggregator.stop();
    assert.deepEqual(await keysOf(kv, 'manifest.*'), ['manifest.new-host', 'manifest.other-host']);
    assert.deepEqual(await keysOf(kv, 'chunk.old-host.>'), []);
  });
});

test('a snapshot overwritten while it is read is detected, and read again', async () => {
  await withServer(async (server, connection) => {
    const writerConnection = await connect({ servers: server.url, name: 'writer' });
    try {
      const reader = await SnapshotStore.open(connection, 'SNAPS', { chunkBytes: 1024 });
      const writer = await SnapshotStore.open(writerConnection, 'SNAPS', { chunkBytes: 1024 });
      await writer.saveCut('busy', rollupsOf(800, 0, '-1').beginCut(), STREAM);

      // The reader's chunk reads: after the third chunk of an attempt, the other instance saves twice (the
      // second save rewrites the slot being read), once.
      const kv = (reader as unknown as { kv: KV }).kv;
      const get = kv.get.bind(kv);
      let reads = 0;
      let race: UsageRollups[] = [];
      kv.get = async (key, options) => {
        if (key.startsWith('chunk.')) {
          reads += 1;
          if (reads === 3) for (const state of race.splice(0)) await writer.saveCut('busy', state.beginCut(), STREAM);
        }
        return get(key, options);
      };
      race = [rollupsOf(800, 800, '-2'), rollupsOf(800, 1_600, '-3')];
      const first = (await reader.manifest('busy')) as SnapshotManifest;
      await assert.rejects(
        reader.readRollups(first, DAY_MS, COMPACTION),
        /chunk \d+ of busy was overwritten while read/,
      );

      // The same race seen by the digest alone (a manifest whose KV revision the reader does not know).
      reads = 0;
      race = [rollupsOf(800, 2_400, '-4'), rollupsOf(800, 3_200, '-5')];
      const copy = JSON.parse(JSON.stringify(await reader.manifest('busy'))) as SnapshotManifest;
      await assert.rejects(
        reader.readRollups(copy, DAY_MS, COMPACTION),
        /does not match its manifest|malformed|truncated|incorrect header|invalid/,
      );

      // loadRollups reads the manifest again and gets the newest snapshot whole.
      reads = 0;
      const newest = rollupsOf(800, 4_000, '-7');
      race = [rollupsOf(800, 4_800, '-6'), newest];
      const loaded = await reader.loadRollups('busy', DAY_MS, COMPACTION);
      assert.ok(reads > 3 + 3, 'read again');
      assert.deepEqual(snapshotOf(loaded?.rollups as UsageRollups), snapshotOf(newest));
    } finally {
      await writerConnection.close();
    }
  });
});

async function publishAll(connection: NatsConnection, events: UsageEvent[]): Promise<void> {
  const js = jetstream(connection);
  for (let start = 0; start < events.length; start += 100) {
    await Promise.all(
      events
        .slice(start, start + 100)
        .map((event) =>
          js.publish(subjects.usageFor(agentToken(event.agent_id)), JSON.stringify(event), { msgID: event.request_id }),
        ),
    );
  }
}

/**
 * Events arriving as from busy workers, 25 every 10 ms, published without waiting for acks (so that the
 * publishing side, in this process too, adds little to the event loop's load).
 */
async function trickle(connection: NatsConnection, events: UsageEvent[]): Promise<void> {
  for (let start = 0; start < events.length; start += 25) {
    for (const event of events.slice(start, start + 25)) {
      const headers = natsHeaders();
      headers.set('Nats-Msg-Id', event.request_id);
      connection.publish(subjects.usageFor(agentToken(event.agent_id)), JSON.stringify(event), { headers });
    }
    await sleep(10);
  }
  await connection.flush();
}

/** The longest the event loop was held while `during` ran (ms), measured by a histogram. */
async function maxStall<T>(during: () => Promise<T>): Promise<{ value: T; stallMs: number }> {
  const histogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  try {
    const value = await during();
    // A stall at the very end is seen only once the loop turns again.
    await sleep(30);
    return { value, stallMs: histogram.max / 1e6 };
  } finally {
    histogram.disable();
  }
}

test('a large snapshot is saved without holding the event loop: events and queries go on, the cut is exact', {
  timeout: 240_000,
}, async () => {
  await withServer(async (server, connection) => {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    const info = await (await jetstreamManager(connection)).streams.info(usageStream.name);
    const stream = { name: info.config.name, created: info.created };
    const settings = aggregatorSchema.parse({ instance_id: 'large', snapshot_interval_ms: '10m', ...FIXED_DATES });

    // 300,000 cells and 100,000 remembered ids, saved as the aggregator's own snapshot (before any event).
    {
      const store = await SnapshotStore.open(connection, settings.snapshot_bucket);
      const state = largeState(300_000, 100_000);
      const started = performance.now();
      const manifest = await store.saveCut('large', state.beginCut(), stream);
      console.log(
        `# large state: ${manifest.cells} cells, ${manifest.ids} ids, ${manifest.bytes} bytes in ${manifest.chunks} chunks, first save ${Math.round(performance.now() - started)} ms`,
      );
    }
    const events = makeEvents(1_000);
    const workers = await connect({ servers: server.url, name: 'worker' });
    const aggregatorConnections: NatsConnection[] = [];
    const start = async () => {
      const own = await connect({ servers: server.url, name: 'aggregator-large' });
      aggregatorConnections.push(own);
      const started = performance.now();
      const aggregator = await UsageAggregator.start({
        connection: own,
        subjectPrefix: 'llm',
        usageStream,
        aggregator: settings,
        now: () => NOW,
      });
      return { aggregator, own, restoreMs: performance.now() - started };
    };
    try {
      const first = await start();
      const { aggregator } = first;
      assert.equal(aggregator.startPoint.snapshot, 'own');
      const synthetic = aggregator.query({});
      await publishAll(workers, events.slice(0, 500));
      await aggregator.waitForSeq(500);

      // The event loop's own noise on this machine (other suites, the server), as a floor for the bound below.
      const { stallMs: idleStallMs } = await maxStall(() => sleep(500));

      // The save, while 500 more events arrive and queries are asked over NATS.
      const query = {
        since: new Date(NOW - 2 * HOUR_MS).toISOString(),
        until: new Date(NOW).toISOString(),
        group_by: 'agent',
      };
      let saving = true;
      const latencies: number[] = [];
      let appliedWhileSaving = false;
      const saveStarted = performance.now();
      const { value: manifest, stallMs } = await maxStall(async () => {
        const save = aggregator.snapshot().finally(() => {
          saving = false;
        });
        const traffic = (async () => {
          await trickle(workers, events.slice(500));
          await aggregator.waitForSeq(1_000, 60_000);
          appliedWhileSaving = saving;
        })();
        const asking = (async () => {
          while (saving) {
            const asked = performance.now();
            await workers.request(subjects.usageQuery, JSON.stringify(query), { timeout: 10_000 });
            latencies.push(performance.now() - asked);
            await sleep(50);
          }
        })();
        const saved = await save;
        await Promise.all([traffic, asking]);
        return saved;
      });
      const saveMs = performance.now() - saveStarted;
      const slowest = Math.max(...latencies);
      console.log(
        `# save ${Math.round(saveMs)} ms (${manifest.bytes} bytes, ${manifest.chunks} chunks), max stall ${Math.round(stallMs)} ms (idle ${Math.round(idleStallMs)} ms), ${latencies.length} queries, slowest ${Math.round(slowest)} ms, restore ${Math.round(first.restoreMs)} ms`,
      );
      assert.equal(manifest.v, 2);
      assert.ok(appliedWhileSaving, 'the 500 events were applied while the save went on');
      assert.ok(manifest.seq >= 500 && manifest.seq < 1_000, `the cut (seq ${manifest.seq}) was taken at the start`);
      assert.ok(latencies.length > 0);
      assert.ok(
        slowest < Math.min(1_000, saveMs / 2),
        `queries answered in ${Math.round(slowest)} ms during a ${Math.round(saveMs)} ms save`,
      );
      assert.ok(stallMs < 100 + idleStallMs, `the event loop was held ${Math.round(stallMs)} ms at most`);

      // Exactly the state at the cut: the synthetic state plus events 1..seq, nothing after.
      const store = await SnapshotStore.open(connection, settings.snapshot_bucket);
      const saved = await store.loadRollups(manifest, settings.dedup_horizon);
      assert.ok(saved !== undefined);
      const totals = runUsageQuery(saved.rollups, parseUsageQuery({}, NOW));
      const counted = events.slice(0, manifest.seq);
      assert.equal(totals.total_requests, synthetic.total_requests + manifest.seq);
      assert.equal(
        totals.total_tokens,
        synthetic.total_tokens + counted.reduce((sum, event) => sum + event.total_tokens, 0),
      );
      assert.equal(saved.rollups.stats.events, aggregator.eventStats().events - (1_000 - manifest.seq));

      // A crash after the save: the restart replays what came after the cut, and every total is the same.
      const before = aggregator.query({ group_by: ['model', 'day'] });
      await first.own.close();
      const second = await start();
      assert.equal(second.aggregator.startPoint.snapshotSeq, manifest.seq);
      assert.equal(second.aggregator.startPoint.startSeq, manifest.seq + 1);
      await second.aggregator.waitForSeq(1_000);
      assert.deepEqual(second.aggregator.query({ group_by: ['model', 'day'] }), before);
      assert.equal(second.aggregator.query({}).total_requests, synthetic.total_requests + 1_000);
    } finally {
      await workers.close();
      for (const own of aggregatorConnections) await own.close().catch(() => undefined);
    }
  });
});
