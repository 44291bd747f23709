import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import type { UsageEvent } from '../contract/usage-event.js';
import { counter, UsageRollups, rollupSnapshotSchema, usdToNano } from './rollups.js';
import { HOUR_MS } from './time-buckets.js';

const T0 = Date.parse('2026-11-27T10:00:00Z');
const encoder = new TextEncoder();

function event(requestId: string, overrides: Partial<UsageEvent> = {}): UsageEvent {
  return {
    v: 1,
    request_id: requestId,
    ts: new Date(T0 + 60_000).toISOString(),
    agent_id: 'agent:sofia',
    microdao_id: 'microdao:7',
    channel_id: null,
    model: 'gpt-4.1-mini',
    provider: 'openai',
    model_resolved: 'gpt-4-1106-preview',
    status: 'ok',
    error_code: null,
    prompt_tokens: 25,
    completion_tokens: 10,
    total_tokens: 35,
    tokens_estimated: false,
    cost_usd: 0.00055,
    latency_ms: 1234.5,
    ttft_ms: null,
    stream: false,
    cached: false,
    attempts: 1,
    worker_id: 'w1',
    ...overrides,
  };
}

function message(seq: number, body: unknown, storedAtMs = T0 + seq * 1000) {
  return { seq, data: encoder.encode(typeof body === 'string' ? body : JSON.stringify(body)), storedAtMs };
}

function onlyCell(rollups: UsageRollups) {
  const cells = [...rollups.hours.values()].flatMap((hour) => [...hour.values()]);
  assert.equal(cells.length, 1);
  return cells[0]!;
}

test('an event is counted once per request id; a replayed sequence is ignored', () => {
  const rollups = new UsageRollups(24 * HOUR_MS);
  assert.equal(rollups.apply(message(1, event('r1'))).outcome, 'counted');
  assert.equal(rollups.apply(message(2, event('r1'))).outcome, 'duplicate');
  assert.equal(rollups.apply(message(2, event('r2'))).outcome, 'already-applied');
  assert.equal(
    rollups.apply(message(3, event('r2', { status: 'error', cached: true, tokens_estimated: true }))).outcome,
    'counted',
  );
  const cell = onlyCell(rollups);
  assert.equal(counter(cell, 'requests'), 2);
  assert.equal(counter(cell, 'ok'), 1);
  assert.equal(counter(cell, 'error'), 1);
  assert.equal(counter(cell, 'cached'), 1);
  assert.equal(counter(cell, 'tokens_estimated'), 1);
  assert.equal(counter(cell, 'total_tokens'), 70);
  assert.equal(counter(cell, 'cost_nanousd'), 1_100_000);
  assert.equal(counter(cell, 'latency_us'), 2_469_000);
  assert.deepEqual(rollups.stats, { events: 2, duplicates: 1, invalid: 0 });
  assert.equal(rollups.appliedSeq, 3);
});

test('costs are summed in integer nano-dollars, exactly', () => {
  assert.equal(usdToNano(0.1) + usdToNano(0.2), usdToNano(0.3));
  assert.equal(usdToNano(0.00055), 550_000);
  assert.equal(usdToNano(1.5e-7), 150);
});

test('request ids are remembered for the dedup horizon of stream time, then forgotten', () => {
  const rollups = new UsageRollups(2 * HOUR_MS);
  rollups.apply(message(1, event('r1'), T0));
  // 1h59m later (stream time): still caught.
  assert.equal(rollups.apply(message(2, event('r1'), T0 + 2 * HOUR_MS - 60_000)).outcome, 'duplicate');
  // A later message moves stream time on by 4h: r1's hour is forgotten, its copy would now count.
  rollups.apply(message(3, event('r3'), T0 + 4 * HOUR_MS));
  assert.equal(rollups.rememberedIds(), 1);
  assert.equal(rollups.apply(message(4, event('r1'), T0 + 4 * HOUR_MS)).outcome, 'counted');
});

test('messages that are not usage events are skipped and counted as invalid', () => {
  const rollups = new UsageRollups(HOUR_MS);
  assert.deepEqual(rollups.apply(message(1, 'not json')), { outcome: 'invalid', problem: 'not JSON' });
  const result = rollups.apply(message(2, { ...event('r1'), prompt_tokens: -1 }));
  assert.equal(result.outcome, 'invalid');
  assert.match(result.problem ?? '', /^prompt_tokens: /);
  assert.equal(rollups.appliedSeq, 2);
  assert.equal(rollups.stats.invalid, 2);
});

test('an event whose ts is unreadable is counted at the time the server stored it', () => {
  const rollups = new UsageRollups(HOUR_MS);
  rollups.apply(message(1, event('r1', { ts: 'garbage' }), T0 + 5 * HOUR_MS + 5));
  assert.deepEqual([...rollups.hours.keys()], [T0 / HOUR_MS + 5]);
});

test('a snapshot restores the same state, seen ids included', () => {
  const rollups = new UsageRollups(24 * HOUR_MS);
  rollups.apply(message(1, event('r1')));
  rollups.apply(message(2, event('r2', { agent_id: null, provider: null, status: 'rejected' })));
  const snapshot = rollupSnapshotSchema.parse(JSON.parse(JSON.stringify(rollups.toSnapshot())));
  const restored = UsageRollups.fromSnapshot(snapshot, 24 * HOUR_MS);
  assert.deepEqual(restored.toSnapshot(), rollups.toSnapshot());
  assert.equal(restored.apply(message(3, event('r1'))).outcome, 'duplicate');
  assert.equal(restored.apply(message(2, event('r9'))).outcome, 'already-applied');
});

test('a snapshot with counters in another order (or missing ones) loads by name', () => {
  const rollups = UsageRollups.fromSnapshot(
    {
      v: 1,
      seq: 7,
      dedup_horizon_ms: HOUR_MS,
      counters: ['total_tokens', 'requests'],
      cells: [[100, 'a', null, 'm', 'p', 35, 2]],
      seen: [],
      stats: { events: 2, duplicates: 0, invalid: 0 },
    },
    HOUR_MS,
  );
  const cell = onlyCell(rollups);
  assert.equal(counter(cell, 'requests'), 2);
  assert.equal(counter(cell, 'total_tokens'), 35);
  assert.equal(counter(cell, 'ok'), 0);
});

test('the key id is a dimension: events with and without key_id are counted in separate cells', () => {
  const rollups = new UsageRollups(HOUR_MS);
  rollups.apply(message(1, event('r1', { key_id: 'AAAAAAAAAAAA' })));
  rollups.apply(message(2, event('r2', { key_id: 'AAAAAAAAAAAA' })));
  rollups.apply(message(3, event('r3', { key_id: 'BBBBBBBBBBBB' })));
  rollups.apply(message(4, event('r4')));
  const cells = [...rollups.hours.values()].flatMap((hour) => [...hour.values()]);
  assert.deepEqual(
    cells.map((cell) => [cell.dimensions.key, counter(cell, 'requests')]),
    [
      ['AAAAAAAAAAAA', 2],
      ['BBBBBBBBBBBB', 1],
      [null, 1],
    ],
  );
});

/** The snapshot schema before key ids were counted (what an older aggregator reads with). */
const dimensionBefore = z.string().nullable();
const snapshotSchemaBefore = z.object({
  v: z.literal(1),
  seq: z.number().int().nonnegative(),
  dedup_horizon_ms: z.number(),
  counters: z.array(z.string()),
  cells: z.array(
    z.tuple([z.number().int(), dimensionBefore, dimensionBefore, dimensionBefore, dimensionBefore]).rest(z.number()),
  ),
  seen: z.array(z.tuple([z.number().int(), z.array(z.string())])),
  stats: z.object({ events: z.number(), duplicates: z.number(), invalid: z.number() }),
});

test('key ids survive a snapshot, beside the cells (an older reader still gets the right totals)', () => {
  const rollups = new UsageRollups(24 * HOUR_MS);
  rollups.apply(message(1, event('r1', { key_id: 'AAAAAAAAAAAA' })));
  rollups.apply(message(2, event('r2', { key_id: 'BBBBBBBBBBBB', agent_id: null })));
  rollups.apply(message(3, event('r3')));
  rollups.apply(message(4, event('r4', { key_id: 'AAAAAAAAAAAA' })));
  const written = JSON.parse(JSON.stringify(rollups.toSnapshot()));
  assert.deepEqual(written.cell_keys, ['AAAAAAAAAAAA', 'BBBBBBBBBBBB', null]);
  assert.deepEqual(
    written.cells.map((row: unknown[]) => row.slice(0, 5)),
    [
      [T0 / HOUR_MS, 'agent:sofia', 'microdao:7', 'gpt-4.1-mini', 'openai'],
      [T0 / HOUR_MS, null, 'microdao:7', 'gpt-4.1-mini', 'openai'],
      [T0 / HOUR_MS, 'agent:sofia', 'microdao:7', 'gpt-4.1-mini', 'openai'],
    ],
    'the cell rows keep their layout',
  );

  const restored = UsageRollups.fromSnapshot(rollupSnapshotSchema.parse(written), 24 * HOUR_MS);
  assert.deepEqual(restored.toSnapshot(), rollups.toSnapshot());

  // An aggregator of the previous version reads the same snapshot: cells that differ only by key merge.
  const before = snapshotSchemaBefore.parse(written);
  assert.equal('cell_keys' in before, false);
  const older = UsageRollups.fromSnapshot(before, 24 * HOUR_MS);
  const cells = [...older.hours.values()].flatMap((hour) => [...hour.values()]);
  assert.deepEqual(
    cells.map((cell) => [cell.dimensions.agent, counter(cell, 'requests')]),
    [
      ['agent:sofia', 3],
      [null, 1],
    ],
  );
});

test('a snapshot written before key ids were counted loads: no key in any cell', () => {
  // Exactly what the previous version wrote: no cell_keys, four dimensions per cell.
  const hour = T0 / HOUR_MS;
  const old = JSON.parse(
    `{"v":1,"seq":2,"dedup_horizon_ms":3600000,"counters":["requests","ok","error","rejected","cancelled","cached","tokens_estimated","prompt_tokens","completion_tokens","total_tokens","cost_nanousd","latency_us"],"cells":[[${hour},"agent:sofia","microdao:7","gpt-4.1-mini","openai",2,2,0,0,0,0,0,50,20,70,1100000,2469000]],"seen":[[${hour},["r1","r2"]]],"stats":{"events":2,"duplicates":0,"invalid":0}}`,
  );
  const rollups = UsageRollups.fromSnapshot(rollupSnapshotSchema.parse(old), HOUR_MS);
  const cell = onlyCell(rollups);
  assert.deepEqual(cell.dimensions, {
    agent: 'agent:sofia',
    microdao: 'microdao:7',
    model: 'gpt-4.1-mini',
    provider: 'openai',
    key: null,
  });
  assert.equal(counter(cell, 'requests'), 2);
  assert.equal(counter(cell, 'cost_nanousd'), 1_100_000);
  // Saved again with no key anywhere, it is the same document, with the counters added since (cached prompt
  // tokens, saved nano-dollars) at 0.
  assert.deepEqual(JSON.parse(JSON.stringify(rollups.toSnapshot())), {
    ...old,
    counters: [...old.counters, 'cached_prompt_tokens', 'saved_nanousd'],
    cells: old.cells.map((row: unknown[]) => [...row, 0, 0]),
  });
  // Events with a key after the restore get cells of their own.
  rollups.apply(message(3, event('r3', { key_id: 'AAAAAAAAAAAA' }), T0 + HOUR_MS));
  assert.equal(rollups.apply(message(4, event('r1', { key_id: 'AAAAAAAAAAAA' }), T0 + HOUR_MS)).outcome, 'duplicate');
  assert.deepEqual(rollups.toSnapshot().cell_keys, [null, 'AAAAAAAAAAAA']);
});

test('a snapshot whose cell_keys do not match its cells is refused', () => {
  const snapshot = new UsageRollups(HOUR_MS);
  snapshot.apply(message(1, event('r1', { key_id: 'AAAAAAAAAAAA' })));
  const written = JSON.parse(JSON.stringify(snapshot.toSnapshot()));
  written.cell_keys.push(null);
  const result = rollupSnapshotSchema.safeParse(written);
  assert.equal(result.success, false);
  assert.deepEqual(result.error?.issues[0]?.path, ['cell_keys']);
});

test('compaction waits while the rollups are held; a cut yields the state at its sequence while events go on', () => {
  const DAY = 24 * HOUR_MS;
  const rollups = new UsageRollups(HOUR_MS, { hourWindowMs: DAY, retentionMs: 0 });
  rollups.apply(message(1, event('a', { ts: new Date(T0).toISOString() }), T0));
  const release = rollups.hold();
  // Three days later in stream time: the first hour is due to become a day, but the rollups are held.
  rollups.apply(message(2, event('b', { ts: new Date(T0 + 3 * DAY).toISOString() }), T0 + 3 * DAY));
  assert.equal(rollups.dayBuckets.size, 0, 'held: nothing folded yet');
  release();
  assert.equal(rollups.dayBuckets.size, 1, 'released: the pending compaction ran');

  const cut = rollups.beginCut();
  // After the cut: an existing cell grows, a new cell appears, a new id is remembered.
  rollups.apply(message(3, event('c', { ts: new Date(T0 + 3 * DAY).toISOString() }), T0 + 3 * DAY));
  rollups.apply(message(4, event('d', { ts: new Date(T0 + 3 * DAY).toISOString(), model: 'other' }), T0 + 3 * DAY));
  const cells = [...cut.cells()];
  assert.equal(cut.seq, 2);
  assert.deepEqual(
    cells.map((cell) => [cell.day, cell.dimensions.model, cell.counts[0]]).sort((a, b) => Number(b[0]) - Number(a[0])),
    [
      [true, 'gpt-4.1-mini', 1],
      [false, 'gpt-4.1-mini', 1],
    ],
    'the cut holds the state at sequence 2 only',
  );
  const seen = new Set(cut.seen().flatMap(([, ids]) => [...ids]));
  assert.ok(seen.has('b') && !seen.has('c') && !seen.has('d'));
  cut.end();
  assert.equal(rollups.cellCount(), 3);
});
