import { z } from 'zod';
import { usageEventKey, usageEventSchema, type UsageEvent } from '../contract/usage-event.js';
import { usageEventTime } from '../usage/event-time.js';
import { msToMicros, usdToNano } from '../usage/units.js';
import { HOUR_MS, HOURS_PER_DAY, hourOf } from './time-buckets.js';

/**
 * The aggregator's state: counters per (time bucket, agent, microDAO, model,
 * provider, key id), the request ids seen recently, and the stream sequence
 * the state covers. Applying the events of a stream in order always gives the same
 * state (nothing here reads the wall clock), so a snapshot taken by one
 * aggregator is valid for any other.
 *
 * Memory is bounded by configuration, not by history: a time bucket is an hour for the last
 * `hourWindowMs` (whole UTC days), a UTC day before that, and buckets that ended more than
 * `retentionMs` ago are dropped. "Now" is the newest stream time seen (the server's clock at
 * publish), so compaction too is a function of the stream alone.
 */
export const COUNTERS = [
  'requests',
  'ok',
  'error',
  'rejected',
  'cancelled',
  'cached',
  'tokens_estimated',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  /** Cost in integer nano-dollars: sums stay exact; converted to USD only in replies. */
  'cost_nanousd',
  /** Latency in integer microseconds: sums do not depend on the order of addition. */
  'latency_us',
  /** Of the prompt tokens, those the provider served from its prompt cache (priced apart). */
  'cached_prompt_tokens',
  /** Cache hits: what the answers would have cost upstream, in integer nano-dollars. */
  'saved_nanousd',
] as const;
export type CounterName = (typeof COUNTERS)[number];

const INDEX = Object.fromEntries(COUNTERS.map((name, index) => [name, index])) as Record<CounterName, number>;

export interface Dimensions {
  agent: string | null;
  microdao: string | null;
  model: string | null;
  provider: string | null;
  /** The usage event's `key_id`: the per-agent key the requests came with (null: none, or an older event). */
  key: string | null;
}

export interface Cell {
  dimensions: Dimensions;
  /** Indexed like COUNTERS. */
  counts: number[];
}

export function counter(cell: Cell, name: CounterName): number {
  return cell.counts[INDEX[name]] ?? 0;
}

export { msToMicros, usdToNano };

export type ApplyOutcome = 'counted' | 'duplicate' | 'invalid' | 'already-applied' | 'expired';

/** How long buckets keep hour resolution, and how long any is kept (0: forever). */
export interface Compaction {
  hourWindowMs: number;
  retentionMs: number;
}

/** Hour resolution for every bucket, nothing dropped: the state before compaction existed. */
export const NO_COMPACTION: Compaction = { hourWindowMs: 0, retentionMs: 0 };

export interface StreamMessage {
  /** Stream sequence. */
  seq: number;
  data: Uint8Array;
  /** When the server stored the message (stream time, not the event's own clock). */
  storedAtMs: number;
}

export interface RollupStats {
  /** Events counted. */
  events: number;
  /** Second copies of a request id, not counted. */
  duplicates: number;
  /** Messages that are not a valid usage event (logged, skipped). */
  invalid: number;
  /** Events older than the retention when they arrived (not counted: their bucket is gone). */
  expired?: number;
}

const decoder = new TextDecoder();

export class UsageRollups {
  /** Bucket start (an hour number) → (dimensions' number → cell). A start in `dayBuckets` covers 24 hours. */
  readonly hours = new Map<number, Map<number, Cell>>();
  /** Starts of the buckets that hold a whole UTC day. */
  readonly dayBuckets = new Set<number>();
  /** Dimension values (agent ids, models…), each kept once, with a number for the cells' keys. */
  private readonly values = new Map<string, { id: number; value: string }>();
  /** Distinct dimension combinations (see combinationOf). */
  private readonly combinations = new Map<string, { id: number; dimensions: Dimensions }>();
  /** Readers (queries, snapshot saves) in progress: compaction waits for them. */
  private holds = 0;
  private compactionPending = false;
  /** The cut a save is reading, if any: what changes after it is copied aside first (see beginCut). */
  private cut: CutState | undefined;
  /**
   * Stream-time hour in which an id was first seen → ids. A set is only ever added to (or dropped
   * whole): a snapshot reads an hour's set up to the size it had at its cut (snapshot-codec.ts).
   */
  private readonly seen = new Map<number, Set<string>>();
  private newestStreamHour = Number.NEGATIVE_INFINITY;
  private readonly horizonHours: number;
  /** Highest stream sequence applied. */
  appliedSeq = 0;
  readonly stats: RollupStats = { events: 0, duplicates: 0, invalid: 0 };

  /**
   * `dedupHorizonMs`: a second copy of an event (same `event_id`; `request_id` for older events) stored within this long
   * (stream time) of the first is recognised. Ids are kept per stream-time
   * hour, so up to one extra hour is remembered.
   */
  constructor(
    readonly dedupHorizonMs: number,
    readonly compaction: Compaction = NO_COMPACTION,
  ) {
    this.horizonHours = Math.max(1, Math.ceil(dedupHorizonMs / HOUR_MS));
  }

  /** The newest stream hour seen (the rollups' "now"); undefined before the first message. */
  get newestHour(): number | undefined {
    return Number.isFinite(this.newestStreamHour) ? this.newestStreamHour : undefined;
  }

  /** First hour kept at hour resolution (a UTC day's start); earlier buckets are days. -Infinity: all hours. */
  hourRegionStart(): number {
    if (this.compaction.hourWindowMs <= 0 || !Number.isFinite(this.newestStreamHour)) return Number.NEGATIVE_INFINITY;
    const start = this.newestStreamHour - Math.ceil(this.compaction.hourWindowMs / HOUR_MS);
    return Math.floor(start / HOURS_PER_DAY) * HOURS_PER_DAY;
  }

  /** First hour kept at all (a UTC day's start); -Infinity: everything is kept. */
  retentionStart(): number {
    if (this.compaction.retentionMs <= 0 || !Number.isFinite(this.newestStreamHour)) return Number.NEGATIVE_INFINITY;
    const start = this.newestStreamHour - Math.ceil(this.compaction.retentionMs / HOUR_MS);
    return Math.floor(start / HOURS_PER_DAY) * HOURS_PER_DAY;
  }

  /**
   * Keeps the buckets as they are until the returned release is called (a query or a save reading them
   * across several turns of the event loop). Events are still applied meanwhile; only compaction waits.
   */
  hold(): () => void {
    this.holds += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holds -= 1;
      if (this.holds === 0 && this.compactionPending) this.compact();
    };
  }

  /**
   * Folds the hour buckets before the hour window into day buckets, and drops the buckets that ended
   * before the retention. Cheap when nothing is due: it looks only at bucket starts.
   */
  compact(): void {
    if (this.holds > 0) {
      this.compactionPending = true;
      return;
    }
    this.compactionPending = false;
    const hourStart = this.hourRegionStart();
    const keepFrom = this.retentionStart();
    for (const [start, cells] of this.hours) {
      const day = this.dayBuckets.has(start);
      const end = start + (day ? HOURS_PER_DAY : 1);
      if (end <= keepFrom) {
        this.hours.delete(start);
        this.dayBuckets.delete(start);
        continue;
      }
      if (day || start >= hourStart) continue;
      this.hours.delete(start);
      const dayStart = Math.floor(start / HOURS_PER_DAY) * HOURS_PER_DAY;
      for (const cell of cells.values()) {
        const target = this.cellFor(dayStart, cell.dimensions, true);
        cell.counts.forEach((value, index) => {
          target.counts[index] = (target.counts[index] ?? 0) + value;
        });
      }
    }
  }

  /** The bucket an event of `hour` belongs in, or undefined when its bucket is past the retention. */
  private bucketOf(hour: number): { start: number; day: boolean } | undefined {
    if (hour < this.retentionStart()) return undefined;
    if (hour < this.hourRegionStart()) return { start: Math.floor(hour / HOURS_PER_DAY) * HOURS_PER_DAY, day: true };
    return { start: hour, day: false };
  }

  /** Cells in the rollups (for stats and the documented memory bound). */
  cellCount(): number {
    let total = 0;
    for (const cells of this.hours.values()) total += cells.size;
    return total;
  }

  /** Apply one stream message; messages must come in stream order. */
  apply(message: StreamMessage): { outcome: ApplyOutcome; event?: UsageEvent; problem?: string } {
    if (message.seq <= this.appliedSeq) return { outcome: 'already-applied' };
    this.appliedSeq = message.seq;
    const streamHour = hourOf(message.storedAtMs);
    if (streamHour > this.newestStreamHour) {
      const first = !Number.isFinite(this.newestStreamHour);
      this.newestStreamHour = streamHour;
      this.forgetIdsBefore(streamHour - this.horizonHours);
      if (!first && (this.compaction.hourWindowMs > 0 || this.compaction.retentionMs > 0)) this.compact();
    }

    let parsed: ReturnType<typeof usageEventSchema.safeParse>;
    try {
      parsed = usageEventSchema.safeParse(JSON.parse(decoder.decode(message.data)));
    } catch {
      this.stats.invalid += 1;
      return { outcome: 'invalid', problem: 'not JSON' };
    }
    if (!parsed.success) {
      this.stats.invalid += 1;
      const issue = parsed.error.issues[0];
      return {
        outcome: 'invalid',
        problem: issue === undefined ? 'invalid' : `${issue.path.join('.')}: ${issue.message}`,
      };
    }
    const event = parsed.data;
    const key = usageEventKey(event);
    if (this.hasSeen(key)) {
      this.stats.duplicates += 1;
      return { outcome: 'duplicate', event };
    }
    let ids = this.seen.get(streamHour);
    if (ids === undefined) {
      ids = new Set();
      this.seen.set(streamHour, ids);
    }
    // A save reading this set as of its cut gets it as it was, copied once, before it changes.
    if (this.cut !== undefined && this.cut.seen.get(streamHour) === ids) this.cut.seen.set(streamHour, new Set(ids));
    ids.add(key);
    const bucket = this.bucketOf(hourOf(usageEventTime(event.ts, message.storedAtMs)));
    if (bucket === undefined) {
      this.stats.expired = (this.stats.expired ?? 0) + 1;
      return { outcome: 'expired', event };
    }
    this.add(bucket.start, bucket.day, event);
    this.stats.events += 1;
    return { outcome: 'counted', event };
  }

  private hasSeen(requestId: string): boolean {
    for (const ids of this.seen.values()) if (ids.has(requestId)) return true;
    return false;
  }

  private forgetIdsBefore(hour: number): void {
    for (const bucket of this.seen.keys()) if (bucket < hour) this.seen.delete(bucket);
  }

  private add(hour: number, day: boolean, event: UsageEvent): void {
    const dimensions: Dimensions = {
      agent: event.agent_id,
      microdao: event.microdao_id,
      model: event.model,
      provider: event.provider,
      key: event.key_id ?? null,
    };
    const cell = this.cellFor(hour, dimensions, day);
    const cut = this.cut;
    if (cut !== undefined && !cut.created.has(cell) && !cut.before.has(cell)) cut.before.set(cell, [...cell.counts]);
    const counts = cell.counts;
    const bump = (name: CounterName, amount: number) => {
      counts[INDEX[name]] = (counts[INDEX[name]] ?? 0) + amount;
    };
    bump('requests', 1);
    bump(event.status, 1);
    if (event.cached) bump('cached', 1);
    if (event.tokens_estimated) bump('tokens_estimated', 1);
    bump('prompt_tokens', event.prompt_tokens);
    bump('completion_tokens', event.completion_tokens);
    bump('total_tokens', event.total_tokens);
    if (event.cached_prompt_tokens !== undefined) bump('cached_prompt_tokens', event.cached_prompt_tokens);
    bump('cost_nanousd', usdToNano(event.cost_usd));
    if (event.saved_usd !== undefined) bump('saved_nanousd', usdToNano(event.saved_usd));
    bump('latency_us', msToMicros(event.latency_ms));
  }

  private cellFor(hour: number, dimensions: Dimensions, day = false): Cell {
    let cells = this.hours.get(hour);
    if (cells === undefined) {
      cells = new Map();
      this.hours.set(hour, cells);
      if (day) this.dayBuckets.add(hour);
    }
    const combination = this.combinationOf(dimensions);
    let cell = cells.get(combination.id);
    if (cell === undefined) {
      cell = { dimensions: combination.dimensions, counts: COUNTERS.map(() => 0) };
      cells.set(combination.id, cell);
      this.cut?.created.add(cell);
    }
    return cell;
  }

  /**
   * One Dimensions object per distinct combination, shared by its cells in every bucket, and a number
   * that keys them. Measured: 462 → ~300 bytes a cell (no key string, no copies of the values per cell).
   */
  private combinationOf(dimensions: Dimensions): { id: number; dimensions: Dimensions } {
    const agent = this.intern(dimensions.agent);
    const microdao = this.intern(dimensions.microdao);
    const model = this.intern(dimensions.model);
    const provider = this.intern(dimensions.provider);
    const key = this.intern(dimensions.key);
    const name = `${agent.id}.${microdao.id}.${model.id}.${provider.id}.${key.id}`;
    let combination = this.combinations.get(name);
    if (combination === undefined) {
      combination = {
        id: this.combinations.size + 1,
        dimensions: {
          agent: agent.value,
          microdao: microdao.value,
          model: model.value,
          provider: provider.value,
          key: key.value,
        },
      };
      this.combinations.set(name, combination);
    }
    return combination;
  }

  /** One copy of each dimension value, and its number. */
  private intern(value: string | null): { id: number; value: string | null } {
    if (value === null) return NULL_VALUE;
    let known = this.values.get(value);
    if (known === undefined) {
      known = { id: this.values.size + 1, value };
      this.values.set(value, known);
    }
    return known;
  }

  /**
   * A consistent cut of the state, readable across many turns of the event loop while events go on
   * being applied: a cell's counts are copied aside the first time it changes after the cut, cells
   * created after it are left out, the id set of the current hour is copied before it grows, and
   * compaction waits until `end()`. What the cut yields is the state at `seq`, exactly.
   */
  beginCut(): RollupCut {
    if (this.cut !== undefined) throw new Error('a cut is already being read');
    const release = this.hold();
    const state: CutState = { before: new Map(), created: new Set(), seen: new Map(this.seen) };
    this.cut = state;
    const buckets = [...this.hours].map(([start, cells]) => ({ start, day: this.dayBuckets.has(start), cells }));
    return {
      seq: this.appliedSeq,
      stats: { ...this.stats },
      dedupHorizonMs: this.dedupHorizonMs,
      bucketCount: buckets.length,
      *cells(): Generator<CutCell> {
        for (const bucket of buckets) {
          for (const cell of bucket.cells.values()) {
            if (state.created.has(cell)) continue;
            yield {
              start: bucket.start,
              day: bucket.day,
              dimensions: cell.dimensions,
              counts: state.before.get(cell) ?? cell.counts,
            };
          }
        }
      },
      seen: () => [...state.seen],
      end: () => {
        if (this.cut === state) this.cut = undefined;
        release();
      },
    };
  }

  /** Adds counts to a cell (building the rollups from a snapshot); counters by position in `positions`. */
  restoreCell(start: number, day: boolean, dimensions: Dimensions, values: number[], positions: number[]): void {
    const cell = this.cellFor(start, dimensions, day);
    values.forEach((value, index) => {
      const position = positions[index];
      if (position !== undefined && position >= 0) cell.counts[position] = (cell.counts[position] ?? 0) + value;
    });
  }

  /** Restores remembered ids of a stream hour (building the rollups from a snapshot). */
  restoreSeen(hour: number, ids: Iterable<string>): void {
    this.seen.set(hour, new Set(ids));
    if (hour > this.newestStreamHour) this.newestStreamHour = hour;
  }

  /** Request ids currently remembered (for stats and the documented bound). */
  rememberedIds(): number {
    let total = 0;
    for (const ids of this.seen.values()) total += ids.size;
    return total;
  }

  /**
   * The key ids are not in the cell rows but in `cell_keys`, beside them (left out when no cell has
   * one): a version that predates keys still reads the snapshot, and merges the cells that differ only
   * by key, so its totals stay right.
   */
  toSnapshot(): RollupSnapshot {
    const cells: RollupSnapshot['cells'] = [];
    const cellKeys: Array<string | null> = [];
    let keyed = false;
    for (const [hour, hourCells] of this.hours) {
      for (const cell of hourCells.values()) {
        const { agent, microdao, model, provider, key } = cell.dimensions;
        cells.push([hour, agent, microdao, model, provider, ...cell.counts]);
        cellKeys.push(key);
        if (key !== null) keyed = true;
      }
    }
    return {
      v: 1,
      seq: this.appliedSeq,
      dedup_horizon_ms: this.dedupHorizonMs,
      counters: [...COUNTERS],
      cells,
      ...(keyed ? { cell_keys: cellKeys } : {}),
      ...(this.dayBuckets.size > 0 ? { day_buckets: [...this.dayBuckets] } : {}),
      seen: [...this.seen].map(([hour, ids]) => [hour, [...ids]]),
      stats: { ...this.stats },
    };
  }

  /**
   * Rebuild from a snapshot; counters are matched by name, so a snapshot with fewer counters still
   * loads, and one without `cell_keys` (written before keys were counted) has no key in any cell.
   */
  static fromSnapshot(
    snapshot: RollupSnapshot,
    dedupHorizonMs: number,
    compaction: Compaction = NO_COMPACTION,
  ): UsageRollups {
    const rollups = new UsageRollups(dedupHorizonMs, compaction);
    rollups.appliedSeq = snapshot.seq;
    const days = new Set(snapshot.day_buckets ?? []);
    const positions = snapshot.counters.map((name) => (name in INDEX ? INDEX[name as CounterName] : -1));
    for (const [cellIndex, row] of snapshot.cells.entries()) {
      const [hour, agent, microdao, model, provider, ...values] = row;
      const key = snapshot.cell_keys?.[cellIndex] ?? null;
      const cell = rollups.cellFor(hour, { agent, microdao, model, provider, key }, days.has(hour));
      values.forEach((value, index) => {
        const position = positions[index];
        if (position !== undefined && position >= 0) cell.counts[position] = (cell.counts[position] ?? 0) + value;
      });
    }
    for (const [hour, ids] of snapshot.seen) {
      rollups.seen.set(hour, new Set(ids));
      if (hour > rollups.newestStreamHour) rollups.newestStreamHour = hour;
    }
    Object.assign(rollups.stats, snapshot.stats);
    // A snapshot taken with another window (or before compaction existed) is brought to this one's.
    if (compaction.hourWindowMs > 0 || compaction.retentionMs > 0) rollups.compact();
    return rollups;
  }
}

const NULL_VALUE = { id: 0, value: null } as const;

interface CutState {
  /** Counts of cells as they were at the cut, for the cells changed since. */
  before: Map<Cell, number[]>;
  /** Cells created since the cut. */
  created: Set<Cell>;
  /** The id sets as of the cut (the current hour's replaced by a copy before it grows). */
  seen: Map<number, Set<string>>;
}

/** One cell as of a cut. */
export interface CutCell {
  start: number;
  day: boolean;
  dimensions: Dimensions;
  counts: readonly number[];
}

/** A consistent cut of the rollups (UsageRollups.beginCut); call end() when done reading. */
export interface RollupCut {
  seq: number;
  stats: RollupStats;
  dedupHorizonMs: number;
  bucketCount: number;
  cells(): Generator<CutCell>;
  seen(): Array<[number, Set<string>]>;
  end(): void;
}

/** Position of each named counter in COUNTERS (-1: a counter this version does not know). */
export function counterPositions(names: readonly string[]): number[] {
  return names.map((name) => (name in INDEX ? INDEX[name as CounterName] : -1));
}

const dimension = z.string().nullable();

/** The JSON a snapshot holds (before compression and chunking). */
export const rollupSnapshotSchema = z
  .object({
    v: z.literal(1),
    seq: z.number().int().nonnegative(),
    dedup_horizon_ms: z.number(),
    counters: z.array(z.string()),
    /** [hour, agent, microdao, model, provider, …counts in `counters` order]. */
    cells: z.array(z.tuple([z.number().int(), dimension, dimension, dimension, dimension]).rest(z.number())),
    /** The key id of each cell, by index in `cells`; absent when no cell has one (and before keys were counted). */
    cell_keys: z.array(dimension).optional(),
    /** Starts of the cells' buckets that hold a whole UTC day (the others are hours). */
    day_buckets: z.array(z.number().int()).optional(),
    seen: z.array(z.tuple([z.number().int(), z.array(z.string())])),
    stats: z.object({
      events: z.number(),
      duplicates: z.number(),
      invalid: z.number(),
      expired: z.number().optional(),
    }),
  })
  .refine((snapshot) => snapshot.cell_keys === undefined || snapshot.cell_keys.length === snapshot.cells.length, {
    message: 'cell_keys must have one entry per cell',
    path: ['cell_keys'],
  });

export type RollupSnapshot = z.infer<typeof rollupSnapshotSchema>;
