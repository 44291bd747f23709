import { createHash } from 'node:crypto';
import { z } from 'zod';
import { ProxyError } from '../contract/errors.js';
import type { AggregatedGroup, AggregatedReply, AggregatedTotals, ParsedUsageQuery } from './query.js';

/**
 * The groups of a usage reply in order, and in pages: `order_by` key (ascending key values, the
 * default) or the largest first by cost, tokens or requests (ties by key); `limit` groups per page and
 * `next_cursor` for the next. A cursor names the last group of its page (not an offset), so a group
 * that appears or grows between two pages neither repeats nor hides the others; it carries a digest
 * of the query, and is refused with another. One module for the aggregator and the PostgreSQL log.
 */

/** One group, before it is paged. */
export interface GroupRow {
  values: string[];
  totals: AggregatedTotals;
  /** The group's cost in nano-dollars (exact, for ordering by cost). */
  costNano: bigint;
}

const cursorSchema = z
  .object({
    /** Digest of the query the cursor belongs to. */
    q: z.string(),
    /** The last group's key values. */
    k: z.array(z.string()),
    /** The last group's measure (order_by cost: nano-dollars; tokens, requests: the count), as text. */
    m: z.string().regex(/^\d+$/).optional(),
  })
  .strict();

type Cursor = z.infer<typeof cursorSchema>;

function invalid(message: string): ProxyError {
  return new ProxyError('invalid_request', message, { retryable: false });
}

/** Whether a reply is paged: it then carries `total_groups` and `next_cursor`. */
export function isPaged(query: ParsedUsageQuery): boolean {
  return query.limit !== undefined || query.cursor !== undefined || query.orderBy !== 'key';
}

/** What identifies a query for its cursors: filters, range, groups and order (not the page). */
export function queryDigest(query: ParsedUsageQuery): string {
  const identity = [
    query.agent_id ?? null,
    query.microdao_id ?? null,
    query.model ?? null,
    query.provider ?? null,
    query.key_id ?? null,
    query.sinceHour ?? null,
    query.untilHour ?? null,
    query.groupBy,
    query.orderBy,
  ];
  return createHash('sha256').update(JSON.stringify(identity)).digest('base64url').slice(0, 16);
}

function measure(row: GroupRow, query: ParsedUsageQuery): bigint {
  switch (query.orderBy) {
    case 'cost':
      return row.costNano;
    case 'tokens':
      return BigInt(row.totals.total_tokens);
    case 'requests':
      return BigInt(row.totals.total_requests);
    case 'key':
      return 0n;
  }
}

function compareKeys(left: readonly string[], right: readonly string[]): number {
  for (let index = 0; index < left.length; index += 1) {
    const a = left[index] ?? '';
    const b = right[index] ?? '';
    if (a !== b) return a < b ? -1 : 1;
  }
  return 0;
}

/** Position order of two (measure, key) pairs: the larger measure first, then the key ascending. */
function comparePositions(
  left: { measure: bigint; values: readonly string[] },
  right: { measure: bigint; values: readonly string[] },
): number {
  if (left.measure !== right.measure) return left.measure > right.measure ? -1 : 1;
  return compareKeys(left.values, right.values);
}

function decodeCursor(text: string, query: ParsedUsageQuery): Cursor {
  let cursor: Cursor;
  try {
    cursor = cursorSchema.parse(JSON.parse(Buffer.from(text, 'base64url').toString('utf8')));
  } catch {
    throw invalid('cursor: not a cursor of llm.proxy.usage (pass next_cursor as it was received)');
  }
  if (cursor.q !== queryDigest(query) || cursor.k.length !== query.groupBy.length)
    throw invalid(
      'cursor: it belongs to another query (filters, since/until, group_by and order_by must stay as on the first page; a relative since such as 7d moves with the hour)',
    );
  if ((cursor.m === undefined) !== (query.orderBy === 'key')) throw invalid('cursor: it belongs to another order_by');
  return cursor;
}

function encodeCursor(row: GroupRow, query: ParsedUsageQuery): string {
  const cursor: Cursor = {
    q: queryDigest(query),
    k: row.values,
    ...(query.orderBy === 'key' ? {} : { m: measure(row, query).toString() }),
  };
  return Buffer.from(JSON.stringify(cursor), 'utf8').toString('base64url');
}

/** Orders the groups, keeps the page the query asks for, and forms the reply. */
export function finishReply(
  totals: AggregatedTotals,
  rows: GroupRow[],
  query: ParsedUsageQuery,
  range: { since: string | null; until: string | null },
): AggregatedReply {
  const positioned = rows.map((row) => ({ row, measure: measure(row, query), values: row.values }));
  positioned.sort(comparePositions);
  let from = 0;
  if (query.cursor !== undefined) {
    const cursor = decodeCursor(query.cursor, query);
    const after = { measure: cursor.m === undefined ? 0n : BigInt(cursor.m), values: cursor.k };
    // The first group strictly after the cursor's position (binary search over the sorted groups).
    let low = 0;
    let high = positioned.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (comparePositions(positioned[middle] as (typeof positioned)[number], after) <= 0) low = middle + 1;
      else high = middle;
    }
    from = low;
  }
  const to = query.limit === undefined ? positioned.length : Math.min(positioned.length, from + query.limit);
  const page = positioned.slice(from, to).map((entry) => entry.row);
  const groups: AggregatedGroup[] = page.map((row) => ({
    key: Object.fromEntries(query.groupBy.map((key, index) => [key, row.values[index] as string])),
    ...row.totals,
  }));
  const last = page.at(-1);
  return {
    ...totals,
    ...range,
    groups,
    ...(isPaged(query)
      ? {
          total_groups: positioned.length,
          next_cursor: to < positioned.length && last !== undefined ? encodeCursor(last, query) : null,
        }
      : {}),
  };
}

/** Bytes of a reply's JSON per group beyond its key values (measured: ~360; kept generous). */
const GROUP_OVERHEAD_BYTES = 420;

/**
 * An upper estimate of a reply's size, from its groups' key values alone, so that a reply too large
 * for the bus is refused before it is built.
 */
export function estimateReplyBytes(rows: readonly GroupRow[], query: ParsedUsageQuery): number {
  let bytes = 1_024;
  const count = query.limit === undefined ? rows.length : Math.min(rows.length, query.limit);
  for (let index = 0; index < count; index += 1) {
    const row = rows[index] as GroupRow;
    bytes += GROUP_OVERHEAD_BYTES;
    for (const value of row.values) bytes += value.length * 2 + 16;
  }
  return bytes;
}
