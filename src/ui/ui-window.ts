/**
 * The operations page's memory of live traffic: the last hour of usage events per model, in ring
 * buffers of fixed size (per second for the last two minutes, per minute for the hour, latency as a
 * log-scale histogram per minute), the tail of the last events, and the agents refused by a limit.
 * Every map is capped: a client choosing new model or agent ids cannot make it grow.
 */
import type { UsageEvent } from '../contract/usage-event.js';

export const WINDOW_MINUTES = 60;
export const WINDOW_SECONDS = 120;
/** Models tracked one by one; the rest share `(other)`. */
export const MAX_MODELS = 32;
export const OTHER_MODEL = '(other)';
export const TAIL_SIZE = 200;
/** Agents remembered for "refused by a limit" and for their microDAO. */
export const MAX_REFUSED_AGENTS = 200;
export const MAX_KNOWN_AGENTS = 1_000;
/** Longest id or code kept in the tail (longer ones are cut). */
const MAX_FIELD_LENGTH = 160;

/** Latency histogram: bucket i holds latencies up to 2^(i/4) ms; the last one everything above. */
const BUCKETS = 84;
const bucketUpper = (index: number): number => 2 ** (index / 4);
function bucketOf(latencyMs: number): number {
  if (!(latencyMs > 1)) return 0;
  return Math.min(BUCKETS - 1, Math.ceil(4 * Math.log2(latencyMs)));
}

/** The fields of an event the page shows (never `key_id`, tags or anything a key could hide in). */
export interface TailEvent {
  ts: string;
  request_id: string;
  agent_id: string | null;
  microdao_id: string | null;
  model: string | null;
  provider: string | null;
  status: UsageEvent['status'];
  error_code: string | null;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cost_usd: number;
  latency_ms: number;
  stream: boolean;
  cached: boolean;
  worker_id: string;
}

const cut = (value: string | null | undefined): string | null =>
  value === null || value === undefined
    ? null
    : value.length > MAX_FIELD_LENGTH
      ? value.slice(0, MAX_FIELD_LENGTH)
      : value;

export function tailEventOf(event: UsageEvent): TailEvent {
  return {
    ts: event.ts,
    request_id: cut(event.request_id) ?? '',
    agent_id: cut(event.agent_id),
    microdao_id: cut(event.microdao_id),
    model: cut(event.model),
    provider: cut(event.provider),
    status: event.status,
    error_code: cut(event.error_code),
    prompt_tokens: event.prompt_tokens,
    completion_tokens: event.completion_tokens,
    total_tokens: event.total_tokens,
    cost_usd: event.cost_usd,
    latency_ms: event.latency_ms,
    stream: event.stream,
    cached: event.cached,
    worker_id: cut(event.worker_id) ?? '',
  };
}

/** One ring of counters indexed by a time unit (second or minute since the epoch). */
class Ring {
  readonly #stamps: Float64Array;
  readonly requests: Uint32Array;
  readonly errors: Uint32Array;
  readonly rejected: Uint32Array;

  constructor(readonly size: number) {
    this.#stamps = new Float64Array(size).fill(-1);
    this.requests = new Uint32Array(size);
    this.errors = new Uint32Array(size);
    this.rejected = new Uint32Array(size);
  }

  /** The slot of time unit `unit`, emptied first when it held an older unit; -1 when `unit` is out of the ring. */
  slot(unit: number, current: number, onReset?: (slot: number) => void): number {
    if (unit > current || unit <= current - this.size) return -1;
    const slot = unit % this.size;
    if (this.#stamps[slot] !== unit) {
      this.#stamps[slot] = unit;
      this.requests[slot] = 0;
      this.errors[slot] = 0;
      this.rejected[slot] = 0;
      onReset?.(slot);
    }
    return slot;
  }

  /** Values of `series` for the units current-size+1 … current, oldest first (0 for stale slots). */
  series(series: Uint32Array, current: number): number[] {
    const out: number[] = [];
    for (let unit = current - this.size + 1; unit <= current; unit++) {
      const slot = unit % this.size;
      out.push(this.#stamps[slot] === unit ? (series[slot] ?? 0) : 0);
    }
    return out;
  }

  isCurrent(slot: number, unit: number): boolean {
    return this.#stamps[slot] === unit;
  }
}

export interface ModelTraffic {
  model: string;
  /** Requests per second over the last minute. */
  rps: number;
  requests: number;
  errors: number;
  rejected: number;
  /** errors / requests over the hour. */
  error_rate: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  per_minute: { requests: number[]; errors: number[]; p95_ms: Array<number | null> };
}

class ModelWindow {
  readonly seconds = new Ring(WINDOW_SECONDS);
  readonly minutes = new Ring(WINDOW_MINUTES);
  readonly histogram = new Uint32Array(WINDOW_MINUTES * BUCKETS);

  constructor(readonly model: string) {}

  add(atMs: number, nowMs: number, status: UsageEvent['status'], latencyMs: number): void {
    const second = Math.floor(atMs / 1_000);
    const minute = Math.floor(atMs / 60_000);
    const secondSlot = this.seconds.slot(second, Math.floor(nowMs / 1_000));
    const minuteSlot = this.minutes.slot(minute, Math.floor(nowMs / 60_000), (slot) =>
      this.histogram.fill(0, slot * BUCKETS, (slot + 1) * BUCKETS),
    );
    for (const [ring, slot] of [
      [this.seconds, secondSlot],
      [this.minutes, minuteSlot],
    ] as const) {
      if (slot < 0) continue;
      ring.requests[slot] = (ring.requests[slot] ?? 0) + 1;
      if (status === 'error') ring.errors[slot] = (ring.errors[slot] ?? 0) + 1;
      if (status === 'rejected') ring.rejected[slot] = (ring.rejected[slot] ?? 0) + 1;
    }
    // Latency of calls that reached a provider: refusals answer in microseconds and would hide it.
    if (minuteSlot >= 0 && (status === 'ok' || status === 'error')) {
      const index = minuteSlot * BUCKETS + bucketOf(latencyMs);
      this.histogram[index] = (this.histogram[index] ?? 0) + 1;
    }
  }

  traffic(nowMs: number): ModelTraffic {
    const minute = Math.floor(nowMs / 60_000);
    const second = Math.floor(nowMs / 1_000);
    const lastMinute = this.seconds.series(this.seconds.requests, second).slice(-60);
    const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);
    const requests = this.minutes.series(this.minutes.requests, minute);
    const errors = this.minutes.series(this.minutes.errors, minute);
    const rejected = sum(this.minutes.series(this.minutes.rejected, minute));
    const hour = new Uint32Array(BUCKETS);
    const p95PerMinute: Array<number | null> = [];
    for (let unit = minute - WINDOW_MINUTES + 1; unit <= minute; unit++) {
      const slot = unit % WINDOW_MINUTES;
      if (!this.minutes.isCurrent(slot, unit)) {
        p95PerMinute.push(null);
        continue;
      }
      const one = this.histogram.subarray(slot * BUCKETS, (slot + 1) * BUCKETS);
      for (let index = 0; index < BUCKETS; index++) hour[index] = (hour[index] ?? 0) + (one[index] ?? 0);
      p95PerMinute.push(percentile(one, 0.95));
    }
    const total = sum(requests);
    const errorCount = sum(errors);
    return {
      model: this.model,
      rps: sum(lastMinute) / 60,
      requests: total,
      errors: errorCount,
      rejected,
      error_rate: total === 0 ? 0 : errorCount / total,
      p50_ms: percentile(hour, 0.5),
      p95_ms: percentile(hour, 0.95),
      p99_ms: percentile(hour, 0.99),
      per_minute: { requests, errors, p95_ms: p95PerMinute },
    };
  }

  /** Requests per second of the last WINDOW_SECONDS seconds. */
  perSecond(nowMs: number): { requests: number[]; errors: number[] } {
    const second = Math.floor(nowMs / 1_000);
    return {
      requests: this.seconds.series(this.seconds.requests, second),
      errors: this.seconds.series(this.seconds.errors, second),
    };
  }
}

/** The upper bound of the bucket holding quantile `q` (within 19 % of the true value), null when empty. */
function percentile(histogram: Uint32Array, q: number): number | null {
  let count = 0;
  for (const value of histogram) count += value;
  if (count === 0) return null;
  const rank = Math.ceil(q * count);
  let seen = 0;
  for (let index = 0; index < histogram.length; index++) {
    seen += histogram[index] ?? 0;
    if (seen >= rank) return Math.round(bucketUpper(index) * 10) / 10;
  }
  return null;
}

export interface RefusedAgent {
  agent_id: string;
  microdao_id: string | null;
  count: number;
  last_code: string;
  last_at: string;
}

const LIMIT_CODES = new Set(['rate_limited', 'budget_exceeded']);

/** Remembers only up to `limit` keys; the least recently set goes first. */
function setCapped<V>(map: Map<string, V>, key: string, value: V, limit: number): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > limit) map.delete(map.keys().next().value as string);
}

export class TrafficWindow {
  readonly #models = new Map<string, ModelWindow>();
  readonly #tail: TailEvent[] = [];
  readonly #refused = new Map<string, RefusedAgent>();
  readonly #microdaoOf = new Map<string, string>();
  #known = new Set<string>();

  constructor(private readonly now: () => number = Date.now) {}

  /** The models the workers route: tracked even when only refusals name them. */
  setKnownModels(names: Iterable<string>): void {
    this.#known = new Set(names);
  }

  /** A live event: counted, and the newest of the tail. */
  add(event: UsageEvent): TailEvent {
    const tail = this.#count(event);
    this.#tail.push(tail);
    if (this.#tail.length > TAIL_SIZE) this.#tail.shift();
    return tail;
  }

  /** Events from before the live ones (oldest first): counted, and put in the tail before the live ones. */
  addHistory(events: UsageEvent[]): void {
    const older = events.map((event) => this.#count(event));
    this.#tail.unshift(...older.slice(-Math.max(0, TAIL_SIZE - this.#tail.length)));
  }

  #count(event: UsageEvent): TailEvent {
    const now = this.now();
    const parsed = Date.parse(event.ts);
    const at = Number.isFinite(parsed) ? Math.min(parsed, now) : now;
    this.#windowFor(event).add(at, now, event.status, event.latency_ms);
    const tail = tailEventOf(event);
    if (tail.agent_id !== null && tail.microdao_id !== null)
      setCapped(this.#microdaoOf, tail.agent_id, tail.microdao_id, MAX_KNOWN_AGENTS);
    if (tail.agent_id !== null && event.status === 'rejected' && LIMIT_CODES.has(event.error_code ?? '')) {
      const before = this.#refused.get(tail.agent_id);
      setCapped(
        this.#refused,
        tail.agent_id,
        {
          agent_id: tail.agent_id,
          microdao_id: tail.microdao_id,
          count: (before?.count ?? 0) + 1,
          last_code: event.error_code ?? '',
          last_at: new Date(at).toISOString(),
        },
        MAX_REFUSED_AGENTS,
      );
    }
    return tail;
  }

  /**
   * A model with its own window: one the workers list, or one an answered request named (only
   * configured models reach a provider); refusals of unknown names share `(other)`, as does
   * everything past MAX_MODELS.
   */
  #windowFor(event: UsageEvent): ModelWindow {
    const name = event.model ?? OTHER_MODEL;
    const existing = this.#models.get(name);
    if (existing !== undefined) return existing;
    const trusted = this.#known.has(name) || event.status === 'ok' || event.status === 'error';
    const key = trusted && this.#models.size < MAX_MODELS ? name : OTHER_MODEL;
    let window = this.#models.get(key);
    if (window === undefined) {
      window = new ModelWindow(key);
      this.#models.set(key, window);
    }
    return window;
  }

  /** Per model over the last hour, busiest first; and all models' requests and errors per second. */
  traffic(): { models: ModelTraffic[]; per_second: { requests: number[]; errors: number[] } } {
    const now = this.now();
    const models = [...this.#models.values()].map((window) => window.traffic(now));
    models.sort((left, right) => right.requests - left.requests || left.model.localeCompare(right.model));
    const requests = new Array<number>(WINDOW_SECONDS).fill(0);
    const errors = new Array<number>(WINDOW_SECONDS).fill(0);
    for (const window of this.#models.values()) {
      const series = window.perSecond(now);
      for (let index = 0; index < WINDOW_SECONDS; index++) {
        requests[index] = (requests[index] ?? 0) + (series.requests[index] ?? 0);
        errors[index] = (errors[index] ?? 0) + (series.errors[index] ?? 0);
      }
    }
    return { models: models.filter((model) => model.requests > 0), per_second: { requests, errors } };
  }

  tail(): TailEvent[] {
    return [...this.#tail];
  }

  /** Agents refused by a rate limit or a budget in the last hour, the latest first. */
  refused(): RefusedAgent[] {
    const since = this.now() - 3_600_000;
    return [...this.#refused.values()].filter((agent) => Date.parse(agent.last_at) >= since).reverse();
  }

  microdaoOf(agentId: string): string | undefined {
    return this.#microdaoOf.get(agentId);
  }
}
