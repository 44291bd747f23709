import type pg from 'pg';
import { finishReply, type GroupRow } from '../aggregator/query-pages.js';
import { groupValue, replyRange, totalsOf, type AggregatedReply, type ParsedUsageQuery } from '../aggregator/query.js';
import type { CounterName, Dimensions } from '../aggregator/rollups.js';
import { HOUR_MS, HOURS_PER_DAY } from '../aggregator/time-buckets.js';
import type { UsageGroupKey } from '../contract/usage-query.js';

/**
 * `llm.proxy.usage` answered from the PostgreSQL usage log instead of an aggregator's memory: the
 * same filters, groups, order and numbers, read from `usage_hourly` (the aggregator's cells, one row
 * per hour and dimensions). The grouping is done by PostgreSQL; the labels, the order and the
 * reply's numbers are formed by the aggregator's own functions, so both answers agree to the digit.
 */

/** Dimension of a cell → its column in `usage_hourly` (a fixed list: no text from a query reaches the SQL). */
const DIMENSION_COLUMNS = {
  agent: 'agent_id',
  microdao: 'microdao_id',
  model: 'model',
  provider: 'provider',
  key: 'key_id',
} as const satisfies Record<keyof Dimensions, string>;

type DimensionKey = keyof typeof DIMENSION_COLUMNS;

/** Filters of a parsed query → their columns. */
const FILTER_COLUMNS = ['agent_id', 'microdao_id', 'model', 'provider', 'key_id'] as const;

/** The aggregator's counters (but cost) → the expressions over `usage_hourly` that sum to them. */
const COUNTER_COLUMNS = [
  ['requests', 'requests'],
  ['ok', 'ok'],
  ['error', 'errors'],
  ['rejected', 'rejected'],
  ['cancelled', 'cancelled'],
  ['cached', 'cached'],
  ['tokens_estimated', 'tokens_estimated'],
  ['prompt_tokens', 'prompt_tokens'],
  ['completion_tokens', 'completion_tokens'],
  ['total_tokens', 'total_tokens'],
  ['latency_us', 'latency_us'],
  ['cached_prompt_tokens', 'cached_prompt_tokens'],
  // numeric(24, 9) dollars times 1e9: a whole number of nano-dollars, exactly.
  ['saved_nanousd', '(saved_usd * 1000000000)'],
] as const satisfies ReadonlyArray<readonly [Exclude<CounterName, 'cost_nanousd'>, string]>;

const isDimension = (key: UsageGroupKey): key is DimensionKey => key in DIMENSION_COLUMNS;

/** Hour number (`floor(ms / HOUR_MS)`, as the aggregator numbers hours) of `usage_hourly.hour`. */
const HOUR_NUMBER = `floor(extract(epoch FROM hour) / ${HOUR_MS / 1000})::bigint`;
/** The first hour number of the UTC day of `usage_hourly.hour`. */
const DAY_FIRST_HOUR = `(floor(extract(epoch FROM hour) / ${(HOURS_PER_DAY * HOUR_MS) / 1000})::bigint * ${HOURS_PER_DAY})`;

export interface UsageSql {
  text: string;
  values: string[];
  /** The dimensions selected, in the order of the result's `d0`, `d1`… columns. */
  dimensions: DimensionKey[];
  /** Whether the rows carry `hour_number` (an hour, or the first hour of a day, for the labels). */
  timed: boolean;
}

/** The statement answering a query: one row per group (one row in all without group_by; none when nothing matches). */
export function usageSql(query: ParsedUsageQuery): UsageSql {
  const values: string[] = [];
  const parameter = (value: string): string => {
    values.push(value);
    return `$${values.length}`;
  };
  const where: string[] = [];
  for (const column of FILTER_COLUMNS) {
    const value = query[column];
    if (value !== undefined) where.push(`${column} = ${parameter(value)}`);
  }
  // Whole hours: `hour >= since` is the aggregator's `hourOf(hour) >= sinceHour` for a bound on the hour.
  const { since, until } = replyRange(query);
  if (since !== null) where.push(`hour >= ${parameter(since)}::timestamptz`);
  if (until !== null) where.push(`hour < ${parameter(until)}::timestamptz`);

  const dimensions = [...new Set(query.groupBy.filter(isDimension))];
  const selected = dimensions.map((key, index) => `${DIMENSION_COLUMNS[key]} AS d${index}`);
  // `hour` needs the hour itself; `day` alone, the day's first hour (fewer groups for PostgreSQL to form).
  const timeExpression = query.groupBy.includes('hour')
    ? HOUR_NUMBER
    : query.groupBy.includes('day')
      ? DAY_FIRST_HOUR
      : undefined;
  if (timeExpression !== undefined) selected.push(`${timeExpression}::text AS hour_number`);
  const groupCount = selected.length;
  for (const [counter, column] of COUNTER_COLUMNS) selected.push(`sum(${column})::bigint::text AS ${counter}`);
  // cost_usd is numeric(24, 9): its sum times 1e9 is a whole number of nano-dollars, exactly.
  selected.push('(sum(cost_usd) * 1000000000)::bigint::text AS cost_nanousd');

  const text = [
    `SELECT ${selected.join(', ')}`,
    'FROM usage_hourly',
    where.length === 0 ? '' : `WHERE ${where.join(' AND ')}`,
    groupCount === 0 ? '' : `GROUP BY ${Array.from({ length: groupCount }, (_, index) => index + 1).join(', ')}`,
    // Without GROUP BY an aggregate answers one row even over no rows: none here, as the aggregator has no group.
    'HAVING count(*) > 0',
  ]
    .filter((line) => line !== '')
    .join('\n');
  return { text, values, dimensions, timed: timeExpression !== undefined };
}

type UsageRow = Record<string, string | null>;

/** Exact sums of counters (BigInt), converted to numbers only for the reply, as the aggregator's are. */
class Sums {
  private readonly counts = new Map<CounterName, bigint>();
  costNano = 0n;

  add(row: UsageRow): void {
    for (const [counter] of COUNTER_COLUMNS)
      this.counts.set(counter, (this.counts.get(counter) ?? 0n) + BigInt(row[counter] ?? '0'));
    this.costNano += BigInt(row.cost_nanousd ?? '0');
  }

  addSums(other: Sums): void {
    for (const [counter, value] of other.counts) this.counts.set(counter, (this.counts.get(counter) ?? 0n) + value);
    this.costNano += other.costNano;
  }

  totals() {
    return totalsOf((name) => Number(this.counts.get(name) ?? 0n), this.costNano);
  }
}

/**
 * Answers a parsed usage query from `usage_hourly`: the reply `runUsageQuery` gives from an aggregator
 * that counted the same events (same totals to the token and the nano-dollar, same groups, labels and
 * order, same `since`/`until`).
 */
export async function runUsageQueryPostgres(
  pool: Pick<pg.Pool, 'query'>,
  query: ParsedUsageQuery,
): Promise<AggregatedReply> {
  const sql = usageSql(query);
  const { rows } = await pool.query<UsageRow>({ text: sql.text, values: sql.values });
  const total = new Sums();
  const groups = new Map<string, { values: string[]; sums: Sums }>();
  for (const row of rows) {
    const rowSums = new Sums();
    rowSums.add(row);
    total.addSums(rowSums);
    if (query.groupBy.length === 0) continue;
    const cell = { dimensions: { agent: null, microdao: null, model: null, provider: null, key: null } as Dimensions };
    sql.dimensions.forEach((key, index) => {
      cell.dimensions[key] = row[`d${index}`] ?? null;
    });
    const hour = sql.timed ? Number(row.hour_number) : 0;
    const values = query.groupBy.map((key) => groupValue(key, hour, cell));
    // Rows whose labels coincide (a field null in one and "(none)" in the other) are one group, as in the aggregator.
    const groupKey = JSON.stringify(values);
    const group = groups.get(groupKey);
    if (group === undefined) groups.set(groupKey, { values, sums: rowSums });
    else group.sums.addSums(rowSums);
  }
  const groupRows: GroupRow[] = [...groups.values()].map(({ values, sums }) => ({
    values,
    totals: sums.totals(),
    costNano: sums.costNano,
  }));
  return finishReply(total.totals(), groupRows, query, replyRange(query));
}
