import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeEvents } from '../../test/helpers/usage-events.js';
import { UsageRollups, type Compaction } from './rollups.js';
import { decodeStream, encodeCut, SnapshotDecoder } from './snapshot-codec.js';
import { snapshotOfCut } from './snapshot-store.js';
import { HOUR_MS } from './time-buckets.js';

const DAY_MS = 24 * HOUR_MS;
/** Hours for the last day, whole days before it: both kinds of bucket. */
const COMPACTION: Compaction = { hourWindowMs: DAY_MS, retentionMs: 0 };
const encoder = new TextEncoder();

/** Rollups over 72 hours of events (some with a key id), stored in order of their own time. */
function rollupsOf(count: number, from = 0): UsageRollups {
  const rollups = new UsageRollups(DAY_MS, COMPACTION);
  applyEvents(rollups, count, from);
  return rollups;
}

function applyEvents(rollups: UsageRollups, count: number, from = 0): void {
  const events = makeEvents(from + count)
    .slice(from)
    .map((event, index) =>
      index % 3 === 0 ? { ...event, key_id: `K${(index % 4).toString().padStart(11, '0')}` } : event,
    )
    .sort((left, right) => Date.parse(left.ts) - Date.parse(right.ts));
  for (const event of events) {
    rollups.apply({
      seq: rollups.appliedSeq + 1,
      data: encoder.encode(JSON.stringify(event)),
      storedAtMs: Date.parse(event.ts),
    });
  }
}

function snapshotOf(rollups: UsageRollups) {
  return snapshotOfCut(rollups.beginCut(), true);
}

async function encodeAll(rollups: UsageRollups, options = {}): Promise<Buffer> {
  const cut = rollups.beginCut();
  const parts: Buffer[] = [];
  try {
    for await (const part of encodeCut(cut, undefined, options)) parts.push(part);
  } finally {
    cut.end();
  }
  return Buffer.concat(parts);
}

test('v2 records rebuild the same rollups: hour and day buckets, keys, ids, stats', async () => {
  const rollups = rollupsOf(3_000);
  const original = snapshotOf(rollups);
  assert.ok(original.day_buckets !== undefined && original.day_buckets.length > 0, 'some buckets are days');
  assert.ok(
    original.cell_keys?.some((key) => key !== null),
    'some cells have a key',
  );
  assert.ok(original.seen.length > 1);

  const text = await encodeAll(rollups, { cellsPerBatch: 64, idsPerLine: 100 });
  const lines = text.toString('utf8').trimEnd().split('\n');
  assert.deepEqual(Object.keys(JSON.parse(lines[0] as string)), ['v', 'seq', 'dedup_horizon_ms', 'counters', 'stats']);
  assert.deepEqual(JSON.parse(lines.at(-1) as string), {
    end: true,
    cells: original.cells.length,
    ids: rollups.rememberedIds(),
  });

  // Fed in pieces of every size, split anywhere (inside lines, inside UTF-8 sequences).
  for (const size of [1, 7, 4096, text.length]) {
    const pieces = async function* () {
      for (let offset = 0; offset < text.length; offset += size) yield text.subarray(offset, offset + size);
    };
    const { header, rollups: restored } = await decodeStream(pieces(), DAY_MS, COMPACTION);
    assert.equal(header.seq, rollups.appliedSeq);
    assert.equal(restored.appliedSeq, rollups.appliedSeq);
    assert.deepEqual(snapshotOf(restored), original, `pieces of ${size} bytes`);
  }
});

test('events applied while a cut is encoded are not in it', async () => {
  const reference = rollupsOf(2_000);
  const rollups = rollupsOf(2_000);
  const cut = rollups.beginCut();
  const parts: Buffer[] = [];
  let batches = 0;
  try {
    for await (const part of encodeCut(cut, undefined, { cellsPerBatch: 64, idsPerLine: 50 })) {
      parts.push(part);
      // Between batches: more events (new cells, cells already written and not yet written, new ids).
      if (batches < 5) applyEvents(rollups, 200, 2_000 + batches * 200);
      batches += 1;
    }
  } finally {
    cut.end();
  }
  assert.ok(batches > 5);
  assert.equal(rollups.appliedSeq, 3_000, 'the events were applied meanwhile');
  const { rollups: restored } = await decodeStream([Buffer.concat(parts)], DAY_MS, COMPACTION);
  assert.deepEqual(snapshotOf(restored), snapshotOf(reference));
});

test('ids added to an hour while that hour is written are not in it', async () => {
  const reference = rollupsOf(2_000);
  const rollups = rollupsOf(2_000);
  const newest = Math.max(...snapshotOf(rollups).seen.map(([hour]) => hour));
  const cut = rollups.beginCut();
  const parts: Buffer[] = [];
  let added = 0;
  try {
    for await (const part of encodeCut(cut, undefined, { idsPerLine: 10, idLinesPerBatch: 1 })) {
      parts.push(part);
      // In the middle of the newest hour's ids (not changed since the cut, so read as it is): one more id there.
      if (part.includes(`{"hour":${newest},`) && added < 3) {
        const event = { ...makeEvents(1)[0], request_id: `late-${added}` };
        rollups.apply({
          seq: rollups.appliedSeq + 1,
          data: encoder.encode(JSON.stringify(event)),
          storedAtMs: newest * HOUR_MS + 1,
        });
        added += 1;
      }
    }
  } finally {
    cut.end();
  }
  assert.equal(added, 3);
  const { rollups: restored } = await decodeStream([Buffer.concat(parts)], DAY_MS, COMPACTION);
  assert.deepEqual(snapshotOf(restored), snapshotOf(reference));
});

test('a truncated, extended or malformed v2 snapshot is refused', async () => {
  const text = (await encodeAll(rollupsOf(300))).toString('utf8');
  const decode = (body: string) => decodeStream([Buffer.from(body)], DAY_MS, COMPACTION);
  const lines = text.trimEnd().split('\n');
  await assert.rejects(decode(lines.slice(0, -1).join('\n')), /truncated/);
  await assert.rejects(decode(`${lines.slice(0, -2).join('\n')}\n${lines.at(-1)}\n`), /end record says/);
  await assert.rejects(decode(`${text}[1,0,null,null,null,null,null,1]\n`), /after its end/);
  await assert.rejects(decode(text.replace(/\n\[(\d+),[01],/, '\n[$1,2,')), /cell 0 is malformed/);
  await assert.rejects(decode(''), /no header/);
  await assert.rejects(decode(text.replace('"v":2', '"v":3')));
  // The same hour's ids split by another hour would lose the first part: refused.
  const seen = lines.filter((line) => line.startsWith('{"hour"'));
  const first = seen[0] as string;
  const other = seen.find((line) => JSON.parse(line).hour !== JSON.parse(first).hour) as string;
  const decoder = new SnapshotDecoder(DAY_MS, COMPACTION);
  decoder.push(Buffer.from(`${lines[0]}\n${first}\n${other}\n`));
  assert.throws(() => decoder.push(Buffer.from(`${first}\n`)), /not consecutive/);
});

test('counters are matched by name: a v2 snapshot with fewer or reordered counters loads', async () => {
  const header = {
    v: 2,
    seq: 9,
    dedup_horizon_ms: HOUR_MS,
    counters: ['total_tokens', 'requests', 'future'],
    stats: {
      events: 2,
      duplicates: 0,
      invalid: 0,
    },
  };
  const body = [
    JSON.stringify(header),
    JSON.stringify([100, 0, 'a', null, 'm', 'p', null, 35, 2, 7]),
    JSON.stringify({ hour: 100, ids: ['r1'] }),
    JSON.stringify({ hour: 100, ids: ['r2'] }),
    JSON.stringify({ end: true, cells: 1, ids: 2 }),
  ].join('\n');
  const { rollups } = await decodeStream([Buffer.from(body)], HOUR_MS, { hourWindowMs: 0, retentionMs: 0 });
  const snapshot = snapshotOf(rollups);
  assert.equal(snapshot.seq, 9);
  assert.deepEqual(snapshot.cells, [[100, 'a', null, 'm', 'p', 2, 0, 0, 0, 0, 0, 0, 0, 0, 35, 0, 0, 0, 0]]);
  assert.deepEqual(snapshot.seen, [[100, ['r1', 'r2']]]);
});
