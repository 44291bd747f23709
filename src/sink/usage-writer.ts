import type pg from 'pg';
import type { UsageMessage } from '../usage/consumer.js';
import { decodeUsageMessage, EVENT_COLUMNS, type EventRow } from './event-row.js';
import type { MonthlyPartitions } from './partitions.js';
import { describePgError, isRowError, isTransient } from './pg-pool.js';

/** What one batch did. */
export interface WriteResult {
  /** Events stored now. */
  inserted: number;
  /** Events already stored (a replay, a redelivery, another sink, a second copy in the batch). */
  duplicates: number;
  /** Messages filed in `usage_dead_letters`. */
  deadLetters: number;
}

interface DeadLetter {
  message: UsageMessage;
  reason: string;
}

interface PendingRow {
  row: EventRow;
  message: UsageMessage;
}

/** Longest reason kept for a dead letter. */
const MAX_REASON = 500;
/** Times a batch is tried again after a deadlock or a serialization failure. */
const TRANSIENT_RETRIES = 5;

const COLUMN_NAMES = EVENT_COLUMNS.map(([name]) => name);

/** The counters of `usage_hourly`, summed from the rows just inserted. */
const HOURLY_SUMS: Array<[column: string, expression: string]> = [
  ['requests', 'count(*)'],
  ['ok', "count(*) FILTER (WHERE status = 'ok')"],
  ['errors', "count(*) FILTER (WHERE status = 'error')"],
  ['rejected', "count(*) FILTER (WHERE status = 'rejected')"],
  ['cancelled', "count(*) FILTER (WHERE status = 'cancelled')"],
  ['cached', 'count(*) FILTER (WHERE cached)'],
  ['tokens_estimated', 'count(*) FILTER (WHERE tokens_estimated)'],
  ['prompt_tokens', 'sum(prompt_tokens)'],
  ['completion_tokens', 'sum(completion_tokens)'],
  ['total_tokens', 'sum(total_tokens)'],
  ['cached_prompt_tokens', 'sum(cached_prompt_tokens)'],
  ['cost_usd', 'sum(cost_usd)'],
  ['saved_usd', 'sum(saved_usd)'],
  ['latency_us', 'sum(latency_us)'],
];
const CELL = ['agent_id', 'microdao_id', 'model', 'provider', 'key_id'];

/**
 * One statement per batch: the events go in through `unnest` of one array per column (one prepared
 * shape whatever the batch size), conflicts on the event key are skipped, and only the rows actually
 * inserted are added to their hourly cells, so a replay never counts twice. Cells are upserted in
 * key order and events inserted in key order, so two sinks never deadlock on each other.
 */
const INSERT_EVENTS = `
WITH input AS (
  SELECT * FROM unnest(${EVENT_COLUMNS.map(([, type], index) => `$${index + 1}::${type}[]`).join(', ')})
    AS t(${COLUMN_NAMES.join(', ')})
), inserted AS (
  INSERT INTO usage_events (${COLUMN_NAMES.join(', ')})
  SELECT ${COLUMN_NAMES.join(', ')} FROM input ORDER BY event_key, ts
  ON CONFLICT DO NOTHING
  RETURNING *
), cells AS (
  INSERT INTO usage_hourly (hour, ${CELL.join(', ')}, ${HOURLY_SUMS.map(([column]) => column).join(', ')})
  SELECT date_trunc('hour', ts, 'UTC'), ${CELL.join(', ')}, ${HOURLY_SUMS.map(([, expression]) => expression).join(', ')}
    FROM inserted
   GROUP BY 1, 2, 3, 4, 5, 6
   ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT ON CONSTRAINT usage_hourly_cell DO UPDATE SET
    ${HOURLY_SUMS.map(([column]) => `${column} = usage_hourly.${column} + EXCLUDED.${column}`).join(',\n    ')}
  RETURNING 1
)
SELECT (SELECT count(*) FROM inserted)::int AS inserted`;

const INSERT_DEAD_LETTERS = `
INSERT INTO usage_dead_letters (stream_name, stream_seq, stored_at, subject, reason, payload)
SELECT * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::bytea[])
ON CONFLICT DO NOTHING`;

/**
 * Writes a batch of usage messages in one transaction: valid events into `usage_events` (and their
 * hourly cells), the rest into `usage_dead_letters` with the reason. A row the database refuses
 * (a NUL character in a string, a value out of range…) is found by halving the batch under
 * savepoints and filed as a dead letter; the others still go in. Connection errors are thrown: the
 * caller retries the whole batch (nothing of it was committed).
 */
export async function writeUsageBatch(
  pool: pg.Pool,
  partitions: MonthlyPartitions,
  streamName: string,
  messages: readonly UsageMessage[],
): Promise<WriteResult> {
  const dead: DeadLetter[] = [];
  const byKey = new Map<string, PendingRow>();
  let duplicates = 0;
  const months = new Set<number>();
  for (const message of messages) {
    const decoded = decodeUsageMessage(message, streamName);
    if (decoded.kind === 'dead') {
      dead.push({ message, reason: decoded.reason });
      continue;
    }
    const key = `${decoded.row.event_key}\u0000${decoded.row.ts}`;
    if (byKey.has(key)) {
      duplicates += 1;
      continue;
    }
    byKey.set(key, { row: decoded.row, message });
    months.add(decoded.month);
  }
  const rows = [...byKey.values()].sort((left, right) => compareRows(left.row, right.row));
  await partitions.ensure(months);

  for (let attempt = 0; ; attempt += 1) {
    const client = await pool.connect();
    try {
      const deadLetters = [...dead];
      await client.query('BEGIN');
      const inserted = await insertOrFile(client, rows, deadLetters);
      if (deadLetters.length > 0) await insertDeadLetters(client, streamName, deadLetters);
      await client.query('COMMIT');
      return {
        inserted,
        duplicates: duplicates + (rows.length - inserted - (deadLetters.length - dead.length)),
        deadLetters: deadLetters.length,
      };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      if (!isTransient(error) || attempt >= TRANSIENT_RETRIES) throw error;
    } finally {
      client.release();
    }
  }
}

function compareRows(left: EventRow, right: EventRow): number {
  const a = String(left.event_key);
  const b = String(right.event_key);
  if (a !== b) return a < b ? -1 : 1;
  return String(left.ts) < String(right.ts) ? -1 : String(left.ts) > String(right.ts) ? 1 : 0;
}

/** Inserts rows; when the database refuses one, halves the set under savepoints until the culprits are found. */
async function insertOrFile(client: pg.PoolClient, rows: PendingRow[], dead: DeadLetter[]): Promise<number> {
  if (rows.length === 0) return 0;
  await client.query('SAVEPOINT usage_rows');
  try {
    const result = await client.query<{ inserted: number }>(INSERT_EVENTS, columnArrays(rows));
    await client.query('RELEASE SAVEPOINT usage_rows');
    return result.rows[0]?.inserted ?? 0;
  } catch (error) {
    await client.query('ROLLBACK TO SAVEPOINT usage_rows');
    await client.query('RELEASE SAVEPOINT usage_rows');
    if (!isRowError(error)) throw error;
    const [only] = rows;
    if (rows.length === 1 && only !== undefined) {
      dead.push({ message: only.message, reason: `refused by the database: ${describePgError(error).message}` });
      return 0;
    }
    const half = Math.ceil(rows.length / 2);
    return (
      (await insertOrFile(client, rows.slice(0, half), dead)) + (await insertOrFile(client, rows.slice(half), dead))
    );
  }
}

function columnArrays(rows: PendingRow[]): unknown[][] {
  return COLUMN_NAMES.map((column) => rows.map(({ row }) => row[column]));
}

async function insertDeadLetters(client: pg.PoolClient, streamName: string, dead: DeadLetter[]): Promise<void> {
  await client.query(INSERT_DEAD_LETTERS, [
    dead.map(() => streamName),
    dead.map(({ message }) => message.seq),
    dead.map(({ message }) => new Date(message.storedAtMs).toISOString()),
    dead.map(({ message }) => message.subject),
    dead.map(({ reason }) => reason.replaceAll('\u0000', '').slice(0, MAX_REASON)),
    dead.map(({ message }) => Buffer.from(message.data)),
  ]);
}
