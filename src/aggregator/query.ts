import { ProxyError } from '../contract/errors.js';
import { setImmediate as nextTurn } from 'node:timers/promises';
import {
  USAGE_GROUP_KEYS,
  usageQuerySchema,
  type UsageGroupKey,
  type UsageOrder,
  type UsageTotals,
} from '../contract/usage-query.js';
import { estimateReplyBytes, finishReply, queryDigest, type GroupRow } from './query-pages.js';
import { COUNTERS, type Cell, type CounterName, type UsageRollups } from './rollups.js';
import { dayLabel, hourLabel, HOUR_MS, HOURS_PER_DAY, parseInstant, sinceHourOf, untilHourOf } from './time-buckets.js';

/** Group key value for an event without that field (no agent id, no provider, no key…). */
export const NONE_LABEL = '(none)';

export interface ParsedUsageQuery {
  agent_id?: string;
  microdao_id?: string;
  model?: string;
  provider?: string;
  key_id?: string;
  /** First hour included. */
  sinceHour?: number;
  /** First hour excluded. */
  untilHour?: number;
  groupBy: UsageGroupKey[];
  /** Groups per page (undefined: all). */
  limit?: number;
  /** The previous page's `next_cursor`. */
  cursor?: string;
  orderBy: UsageOrder;
}

/** The reply's totals: the contract's fields, then the counts it leaves out. */
export interface AggregatedTotals extends UsageTotals {
  /** Of prompt_tokens, those the providers served from their prompt caches. */
  cached_prompt_tokens: number;
  /** What the cache hits among these requests would have cost upstream (their `saved_usd`). */
  saved_usd: number;
  ok: number;
  cancelled: number;
  tokens_estimated: number;
}

export interface AggregatedGroup extends AggregatedTotals {
  key: Partial<Record<UsageGroupKey, string>>;
}

export interface AggregatedReply extends AggregatedTotals {
  /** The range actually covered, after rounding to whole hours (days, past the hour window; null: open). */
  since: string | null;
  until: string | null;
  groups: AggregatedGroup[];
  /** Paged replies (limit, cursor or order_by given): the groups in all pages. */
  total_groups?: number;
  /** Paged replies: the cursor of the next page, null on the last. */
  next_cursor?: string | null;
}

function invalid(message: string): ProxyError {
  return new ProxyError('invalid_request', message, { retryable: false });
}

/** Validate a query body (already JSON-decoded); bad fields become `invalid_request` naming the field. */
export function parseUsageQuery(body: unknown, now: number): ParsedUsageQuery {
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw invalid('the query must be a JSON object');
  const result = usageQuerySchema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0];
    if (issue === undefined) throw invalid('invalid query');
    if (issue.code === 'unrecognized_keys')
      throw invalid(`unknown field ${issue.keys.map((key) => `"${key}"`).join(', ')}`);
    const path = issue.path.length === 0 ? 'query' : String(issue.path[0]);
    if (path === 'group_by') throw invalid(`group_by: must be one or more of ${USAGE_GROUP_KEYS.join(', ')}`);
    if (path === 'order_by') throw invalid('order_by: must be one of key, cost, tokens, requests');
    throw invalid(`${path}: ${issue.message}`);
  }
  const query = result.data;
  const parsed: ParsedUsageQuery = { groupBy: [], orderBy: query.order_by ?? 'key' };
  if (query.limit !== undefined) parsed.limit = query.limit;
  if (query.cursor !== undefined) parsed.cursor = query.cursor;
  for (const field of ['agent_id', 'microdao_id', 'model', 'provider', 'key_id'] as const) {
    const value = query[field];
    if (value !== undefined) parsed[field] = value;
  }
  for (const field of ['since', 'until'] as const) {
    const value = query[field];
    if (value === undefined) continue;
    const instant = parseInstant(value, now);
    if (instant === undefined)
      throw invalid(
        `${field}: ${JSON.stringify(value)} is neither an ISO 8601 timestamp nor a span such as 7d, 24h, 30m`,
      );
    if (field === 'since') parsed.sinceHour = sinceHourOf(instant);
    else parsed.untilHour = untilHourOf(instant);
  }
  if (parsed.sinceHour !== undefined && parsed.untilHour !== undefined && parsed.sinceHour >= parsed.untilHour) {
    throw invalid('since: must be before until');
  }
  const groupBy = query.group_by === undefined ? [] : Array.isArray(query.group_by) ? query.group_by : [query.group_by];
  parsed.groupBy = [...new Set(groupBy)];
  return parsed;
}

/** Where cost_nanousd sits in a cell's counts. */
const COST_INDEX = COUNTERS.indexOf('cost_nanousd');
/** Cost summed as a number up to here (exact below 2^53), then carried into the BigInt. */
const COST_CARRY = 2 ** 50;

/**
 * Sums of the counters, by position (a hot loop: no maps, no allocation per cell). Cost is exact:
 * whole nano-dollars summed as a number while that is exact, carried into a BigInt beyond.
 */
class Accumulator {
  readonly counts = new Float64Array(COUNTERS.length);
  private costSmall = 0;
  private costBig = 0n;

  add(cell: Cell): void {
    const values = cell.counts;
    const counts = this.counts;
    for (let index = 0; index < values.length; index += 1) {
      if (index === COST_INDEX) continue;
      counts[index] = (counts[index] as number) + (values[index] as number);
    }
    this.costSmall += values[COST_INDEX] ?? 0;
    if (this.costSmall >= COST_CARRY || this.costSmall <= -COST_CARRY) {
      this.costBig += BigInt(this.costSmall);
      this.costSmall = 0;
    }
  }

  get costNano(): bigint {
    return this.costBig + BigInt(this.costSmall);
  }

  totals(): AggregatedTotals {
    return totalsOf((name) => this.counts[COUNTERS.indexOf(name)] ?? 0, this.costNano);
  }
}

/**
 * The reply's totals from summed counters (`get` by the rollups' counter names; cost in nano-dollars):
 * the one place a reply's numbers are formed, for the aggregator and the PostgreSQL log alike.
 */
export function totalsOf(get: (name: CounterName) => number, costNano: bigint): AggregatedTotals {
  const requests = get('requests');
  return {
    total_requests: requests,
    total_tokens: get('total_tokens'),
    avg_latency_ms: averageLatencyMs(get('latency_us'), requests),
    success_rate: requests === 0 ? 0 : get('ok') / requests,
    prompt_tokens: get('prompt_tokens'),
    completion_tokens: get('completion_tokens'),
    cached_prompt_tokens: get('cached_prompt_tokens'),
    cost_usd: nanoToUsd(costNano),
    ok: get('ok'),
    errors: get('error'),
    rejected: get('rejected'),
    cancelled: get('cancelled'),
    cached: get('cached'),
    tokens_estimated: get('tokens_estimated'),
    saved_usd: get('saved_nanousd') / 1e9,
  };
}

/** Mean latency in ms, to the microsecond. */
export function averageLatencyMs(latencySumMicros: number, requests: number): number {
  return requests === 0 ? 0 : Math.round(latencySumMicros / requests) / 1000;
}

export function nanoToUsd(nano: bigint): number {
  return Number(nano) / 1e9;
}

function matches(cell: Cell, query: ParsedUsageQuery): boolean {
  const { agent, microdao, model, provider, key } = cell.dimensions;
  return (
    (query.agent_id === undefined || agent === query.agent_id) &&
    (query.microdao_id === undefined || microdao === query.microdao_id) &&
    (query.model === undefined || model === query.model) &&
    (query.provider === undefined || provider === query.provider) &&
    (query.key_id === undefined || key === query.key_id)
  );
}

/** The value of group key `key` for a cell of hour `hour` ({@link NONE_LABEL} for a missing field). */
export function groupValue(key: UsageGroupKey, hour: number, cell: Pick<Cell, 'dimensions'>): string {
  switch (key) {
    case 'agent':
      return cell.dimensions.agent ?? NONE_LABEL;
    case 'microdao':
      return cell.dimensions.microdao ?? NONE_LABEL;
    case 'model':
      return cell.dimensions.model ?? NONE_LABEL;
    case 'provider':
      return cell.dimensions.provider ?? NONE_LABEL;
    case 'key':
      return cell.dimensions.key ?? NONE_LABEL;
    case 'day':
      return dayLabel(hour);
    case 'hour':
      return hourLabel(hour);
  }
}

/** The cells a scan visits between two checks of its time slice. */
const CELLS_PER_STEP = 2_048;

/**
 * The query as the rollups can answer it: before the hour window the resolution is the day, so a
 * bound there is widened to whole days (the reply's since/until say so) and group_by hour is refused;
 * before the retention nothing is kept, so a range reaching there is out of range ({@link UsageOutOfRange}).
 * Without since, the range starts at the retention.
 */
export function resolveRange(rollups: UsageRollups, query: ParsedUsageQuery): ParsedUsageQuery {
  const resolved = { ...query };
  const keptFrom = rollups.retentionStart();
  if (Number.isFinite(keptFrom)) {
    if (resolved.sinceHour === undefined) resolved.sinceHour = keptFrom;
    else if (resolved.sinceHour < keptFrom) throw new UsageOutOfRange(keptFrom);
    if (resolved.untilHour !== undefined && resolved.untilHour <= keptFrom) throw new UsageOutOfRange(keptFrom);
  }
  const hourFrom = rollups.hourRegionStart();
  const reachesDays =
    rollups.dayBuckets.size > 0 && (resolved.sinceHour === undefined || resolved.sinceHour < hourFrom);
  if (reachesDays && resolved.groupBy.includes('hour'))
    throw invalid(
      `group_by: hour covers only since ${new Date(hourFrom * HOUR_MS).toISOString()} (aggregator.hour_window); before it usage is kept per day: group by day, or ask from then`,
    );
  if (resolved.sinceHour !== undefined && resolved.sinceHour < hourFrom)
    resolved.sinceHour = Math.floor(resolved.sinceHour / HOURS_PER_DAY) * HOURS_PER_DAY;
  if (resolved.untilHour !== undefined && resolved.untilHour < hourFrom)
    resolved.untilHour = Math.ceil(resolved.untilHour / HOURS_PER_DAY) * HOURS_PER_DAY;
  return resolved;
}

/** A range reaching before the oldest usage the aggregator keeps (aggregator.retention). */
export class UsageOutOfRange extends ProxyError {
  constructor(readonly keptFromHour: number) {
    super(
      'invalid_request',
      `out of range: this aggregator keeps usage from ${new Date(keptFromHour * HOUR_MS).toISOString()} (aggregator.retention); ask from then, or read the PostgreSQL usage log (llm-proxy usage --source postgres)`,
      { retryable: false },
    );
  }
}

/** The sums a scan builds: the totals and one accumulator per group. */
class Scan {
  readonly total = new Accumulator();
  readonly groups = new Map<string, { values: string[]; accumulator: Accumulator }>();
  cells = 0;

  constructor(readonly query: ParsedUsageQuery) {}

  private buckets: IterableIterator<[number, Map<number, Cell>]> | undefined;
  /** The cells of the bucket being visited (taken when the bucket is reached) and the next one's index. */
  private bucketCells: Cell[] | undefined;
  private next = 0;
  private bucketStart = 0;

  /**
   * Visits up to `budget` more cells of the query's range; true when every bucket is done. Resumable:
   * it goes on where it stopped, buckets added meanwhile are visited too, and a bucket's cells are
   * those it had when the scan reached it.
   */
  step(rollups: UsageRollups, budget: number): boolean {
    const { query } = this;
    this.buckets ??= rollups.hours.entries();
    const grouped = query.groupBy.length > 0;
    let left = budget;
    for (;;) {
      if (this.bucketCells === undefined) {
        const entry = this.buckets.next();
        if (entry.done === true) return true;
        const [start, cells] = entry.value;
        const end = start + (rollups.dayBuckets.has(start) ? HOURS_PER_DAY : 1);
        if (query.sinceHour !== undefined && start < query.sinceHour) continue;
        if (query.untilHour !== undefined && end > query.untilHour) continue;
        this.bucketStart = start;
        this.bucketCells = [...cells.values()];
        this.next = 0;
      }
      const cells = this.bucketCells;
      const stop = Math.min(cells.length, this.next + left);
      for (let index = this.next; index < stop; index += 1) {
        const cell = cells[index] as Cell;
        if (!matches(cell, query)) continue;
        this.total.add(cell);
        if (grouped) this.addToGroup(cell);
      }
      left -= stop - this.next;
      this.cells += stop - this.next;
      this.next = stop;
      if (stop === cells.length) this.bucketCells = undefined;
      if (left <= 0) return false;
    }
  }

  private addToGroup(cell: Cell): void {
    const values = this.query.groupBy.map((key) => groupValue(key, this.bucketStart, cell));
    const groupKey = values.length === 1 ? (values[0] as string) : JSON.stringify(values);
    let group = this.groups.get(groupKey);
    if (group === undefined) {
      group = { values, accumulator: new Accumulator() };
      this.groups.set(groupKey, group);
    }
    group.accumulator.add(cell);
  }

  rows(): GroupRow[] {
    return [...this.groups.values()].map(({ values, accumulator }) => ({
      values,
      totals: accumulator.totals(),
      costNano: accumulator.costNano,
    }));
  }

  reply(maxBytes?: number): AggregatedReply {
    return replyOf(this.total.totals(), this.rows(), this.query, maxBytes);
  }
}

/** The reply of a scan's sums: refused before it is built when it would not fit in `maxBytes`. */
function replyOf(
  totals: AggregatedTotals,
  rows: GroupRow[],
  query: ParsedUsageQuery,
  maxBytes: number | undefined,
): AggregatedReply {
  if (maxBytes !== undefined && estimateReplyBytes(rows, query) > maxBytes)
    throw new ProxyError(
      'payload_too_large',
      `the reply (${rows.length} groups) would exceed max_payload (${maxBytes} bytes): page it with limit (and cursor), order_by for the top groups, a narrower range, or fewer group_by keys`,
      { retryable: false },
    );
  return finishReply(totals, rows, query, replyRange(query));
}

/**
 * The sums of paged queries, kept briefly: the pages after the first are cut from the same sums
 * (consistent with each other, and costing only their own groups) instead of scanning again.
 */
export class ScanCache {
  private readonly entries = new Map<string, { at: number; totals: AggregatedTotals; rows: GroupRow[] }>();

  constructor(
    private readonly ttlMs = 15_000,
    private readonly maxEntries = 8,
  ) {}

  get(key: string, now: number): { totals: AggregatedTotals; rows: GroupRow[] } | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    if (now - entry.at > this.ttlMs) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  set(key: string, value: { totals: AggregatedTotals; rows: GroupRow[] }, now: number): void {
    this.entries.delete(key);
    this.entries.set(key, { at: now, ...value });
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }
}

/** Answer a parsed query from the rollups, in one go (tests, small states). */
export function runUsageQuery(rollups: UsageRollups, query: ParsedUsageQuery): AggregatedReply {
  const scan = new Scan(resolveRange(rollups, query));
  scan.step(rollups, Number.POSITIVE_INFINITY);
  return scan.reply();
}

export interface AsyncQueryOptions {
  /** Longest stretch the scan runs before it lets the event loop turn (default 4 ms). */
  sliceMs?: number;
  /** Longest a query may take in all before it is refused as too costly (default 10 s). */
  budgetMs?: number;
  /** Refuse a reply larger than this (the bus's max_payload), before building it. */
  maxBytes?: number;
  /** Where the sums of paged queries are kept for their next pages. */
  cache?: ScanCache;
}

/**
 * Answer a parsed query from the rollups without holding the process: the scan runs in slices of a
 * few milliseconds, events go on being applied between them (a query sees each cell as it is when
 * visited), compaction waits until it is done, and a scan longer than its budget is refused.
 */
export async function runUsageQueryAsync(
  rollups: UsageRollups,
  query: ParsedUsageQuery,
  options: AsyncQueryOptions = {},
): Promise<AggregatedReply> {
  const sliceMs = options.sliceMs ?? 4;
  const budgetMs = options.budgetMs ?? 10_000;
  const resolved = resolveRange(rollups, query);
  const paged = resolved.limit !== undefined;
  const cacheKey = paged ? queryDigest(resolved) : undefined;
  if (cacheKey !== undefined && resolved.cursor !== undefined) {
    const cached = options.cache?.get(cacheKey, performance.now());
    if (cached !== undefined) return replyOf(cached.totals, cached.rows, resolved, options.maxBytes);
  }
  const release = rollups.hold();
  try {
    const scan = new Scan(resolved);
    const started = performance.now();
    let sliceStarted = started;
    while (!scan.step(rollups, CELLS_PER_STEP)) {
      const now = performance.now();
      if (now - sliceStarted < sliceMs) continue;
      if (now - started > budgetMs)
        throw new ProxyError(
          'invalid_request',
          `the query is too costly: ${scan.cells} cells scanned in ${Math.round(now - started)} ms; narrow the range or filter by agent_id, microdao_id or model`,
          { retryable: false },
        );
      await nextTurn();
      sliceStarted = performance.now();
    }
    if (cacheKey === undefined || options.cache === undefined) return scan.reply(options.maxBytes);
    const sums = { totals: scan.total.totals(), rows: scan.rows() };
    options.cache.set(cacheKey, sums, performance.now());
    return replyOf(sums.totals, sums.rows, resolved, options.maxBytes);
  } finally {
    release();
  }
}

/** The range a reply covers, as the query's whole hours (null: open). */
export function replyRange(query: Pick<ParsedUsageQuery, 'sinceHour' | 'untilHour'>): {
  since: string | null;
  until: string | null;
} {
  return {
    since: query.sinceHour === undefined ? null : new Date(query.sinceHour * HOUR_MS).toISOString(),
    until: query.untilHour === undefined ? null : new Date(query.untilHour * HOUR_MS).toISOString(),
  };
}

/** The order of groups: by their key values, in group_by order (plain string comparison). */
export function compareValues(left: string[], right: string[]): number {
  for (let index = 0; index < left.length; index += 1) {
    const a = left[index] ?? '';
    const b = right[index] ?? '';
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}
