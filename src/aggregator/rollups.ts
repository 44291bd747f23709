import { z } from 'zod';
import { usageEventKey, usageEventSchema, type UsageEvent } from '../contract/usage-event.js';
import { usageEventTime } from '../usage/event-time.js';
import { msToMicros, usdToNano } from '../usage/units.js';
import { HOUR_MS, hourOf } from './time-buckets.js';

/**
 * The aggregator's state: counters per (hour, agent, microDAO, model,
 * provider, key id), the request ids seen recently, and the stream sequence
 * the state covers. Applying the events of a stream in order always gives the same
 * state (nothing here reads the wall clock), so a snapshot taken by one
 * aggregator is valid for any other.
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

export type ApplyOutcome = 'counted' | 'duplicate' | 'invalid' | 'already-applied';

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
}

const decoder = new TextDecoder();

export class UsageRollups {
  /** hour → (dimensions key → cell). */
  readonly hours = new Map<number, Map<string, Cell>>();
  /** Stream-time hour in which an id was first seen → ids. */
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
  constructor(readonly dedupHorizonMs: number) {
    this.horizonHours = Math.max(1, Math.ceil(dedupHorizonMs / HOUR_MS));
  }

  /** Apply one stream message; messages must come in stream order. */
  apply(message: StreamMessage): { outcome: ApplyOutcome; event?: UsageEvent; problem?: string } {
    if (message.seq <= this.appliedSeq) return { outcome: 'already-applied' };
    this.appliedSeq = message.seq;
    const streamHour = hourOf(message.storedAtMs);
    if (streamHour > this.newestStreamHour) {
      this.newestStreamHour = streamHour;
      this.forgetIdsBefore(streamHour - this.horizonHours);
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
    ids.add(key);
    this.add(hourOf(usageEventTime(event.ts, message.storedAtMs)), event);
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

  private add(hour: number, event: UsageEvent): void {
    const dimensions: Dimensions = {
      agent: event.agent_id,
      microdao: event.microdao_id,
      model: event.model,
      provider: event.provider,
      key: event.key_id ?? null,
    };
    const cell = this.cellFor(hour, dimensions);
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
    bump('latency_us', msToMicros(event.latency_ms));
  }

  private cellFor(hour: number, dimensions: Dimensions): Cell {
    let cells = this.hours.get(hour);
    if (cells === undefined) {
      cells = new Map();
      this.hours.set(hour, cells);
    }
    const key = JSON.stringify([
      dimensions.agent,
      dimensions.microdao,
      dimensions.model,
      dimensions.provider,
      dimensions.key,
    ]);
    let cell = cells.get(key);
    if (cell === undefined) {
      cell = { dimensions, counts: COUNTERS.map(() => 0) };
      cells.set(key, cell);
    }
    return cell;
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
      seen: [...this.seen].map(([hour, ids]) => [hour, [...ids]]),
      stats: { ...this.stats },
    };
  }

  /**
   * Rebuild from a snapshot; counters are matched by name, so a snapshot with fewer counters still
   * loads, and one without `cell_keys` (written before keys were counted) has no key in any cell.
   */
  static fromSnapshot(snapshot: RollupSnapshot, dedupHorizonMs: number): UsageRollups {
    const rollups = new UsageRollups(dedupHorizonMs);
    rollups.appliedSeq = snapshot.seq;
    const positions = snapshot.counters.map((name) => (name in INDEX ? INDEX[name as CounterName] : -1));
    for (const [cellIndex, row] of snapshot.cells.entries()) {
      const [hour, agent, microdao, model, provider, ...values] = row;
      const key = snapshot.cell_keys?.[cellIndex] ?? null;
      const cell = rollups.cellFor(hour, { agent, microdao, model, provider, key });
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
    return rollups;
  }
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
    seen: z.array(z.tuple([z.number().int(), z.array(z.string())])),
    stats: z.object({ events: z.number(), duplicates: z.number(), invalid: z.number() }),
  })
  .refine((snapshot) => snapshot.cell_keys === undefined || snapshot.cell_keys.length === snapshot.cells.length, {
    message: 'cell_keys must have one entry per cell',
    path: ['cell_keys'],
  });

export type RollupSnapshot = z.infer<typeof rollupSnapshotSchema>;
