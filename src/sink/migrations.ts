import type { PoolClient } from 'pg';

/**
 * The usage log's schema, as numbered migrations. Each runs once, in its own transaction, under an
 * advisory lock: two sinks starting together apply it once (the second waits, then finds it done).
 * A migration is never edited after it has shipped; a change is a new one at the end.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Lock id of the migration step (any constant; chosen once: "llmproxy" in ASCII, folded to 31 bits). */
const MIGRATION_LOCK = 0x6c6d7078;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'usage events, hourly rollups, dead letters',
    sql: `
-- One row per usage event. event_key is what deduplicates: the worker's event_id, or request_id for
-- events written before event_id existed (request_id is the client's correlation id and may repeat).
-- Partitioned by month of ts; the key includes ts because a partitioned table's keys must hold the
-- partition column (two copies of an event carry the same ts, so they still meet in one partition).
CREATE TABLE usage_events (
  event_key            text NOT NULL,
  ts                   timestamptz NOT NULL,
  request_id           text NOT NULL,
  event_id             text,
  agent_id             text,
  microdao_id          text,
  channel_id           text,
  model                text,
  provider             text,
  model_resolved       text,
  status               text NOT NULL,
  error_code           text,
  prompt_tokens        bigint NOT NULL,
  completion_tokens    bigint NOT NULL,
  total_tokens         bigint NOT NULL,
  cached_prompt_tokens bigint NOT NULL DEFAULT 0,
  tokens_estimated     boolean NOT NULL,
  cost_usd             numeric(20, 9) NOT NULL,
  latency_ms           double precision NOT NULL,
  -- latency_ms in whole microseconds, rounded as the aggregator rounds it: sums agree to the digit.
  latency_us           bigint NOT NULL,
  ttft_ms              double precision,
  stream               boolean NOT NULL,
  cached               boolean NOT NULL,
  attempts             integer NOT NULL,
  worker_id            text NOT NULL,
  key_id               text,
  claimed_agent_id     text,
  attempt_details      jsonb,
  tags                 jsonb,
  -- Fields of the event this schema has no column for (newer versions, passthrough), and the
  -- event's own ts when it was unreadable (ts then holds the time the stream stored it).
  extra                jsonb,
  stream_name          text NOT NULL,
  stream_seq           bigint NOT NULL,
  stored_at            timestamptz NOT NULL,
  inserted_at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (event_key, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX usage_events_ts ON usage_events USING brin (ts);
CREATE INDEX usage_events_microdao_ts ON usage_events (microdao_id, ts);
CREATE INDEX usage_events_agent_ts ON usage_events (agent_id, ts);

-- The same cells as the aggregator keeps (hour x agent x microDAO x model x provider x key), kept
-- by the sink in the transaction that inserts the events, from the rows actually inserted: the
-- usage queries read these, so a year is a few hundred thousand rows, not millions.
CREATE TABLE usage_hourly (
  hour                 timestamptz NOT NULL,
  agent_id             text,
  microdao_id          text,
  model                text,
  provider             text,
  key_id               text,
  requests             bigint NOT NULL,
  ok                   bigint NOT NULL,
  errors               bigint NOT NULL,
  rejected             bigint NOT NULL,
  cancelled            bigint NOT NULL,
  cached               bigint NOT NULL,
  tokens_estimated     bigint NOT NULL,
  prompt_tokens        bigint NOT NULL,
  completion_tokens    bigint NOT NULL,
  total_tokens         bigint NOT NULL,
  cached_prompt_tokens bigint NOT NULL,
  cost_usd             numeric(24, 9) NOT NULL,
  latency_us           bigint NOT NULL,
  CONSTRAINT usage_hourly_cell UNIQUE NULLS NOT DISTINCT (hour, agent_id, microdao_id, model, provider, key_id)
);
CREATE INDEX usage_hourly_microdao ON usage_hourly (microdao_id, hour);
CREATE INDEX usage_hourly_agent ON usage_hourly (agent_id, hour);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);

-- Messages of the usage stream that are not a usage event this schema can hold, with the reason.
-- Keyed by the stream position, so a replay files each once.
CREATE TABLE usage_dead_letters (
  stream_name  text NOT NULL,
  stream_seq   bigint NOT NULL,
  stored_at    timestamptz NOT NULL,
  subject      text NOT NULL,
  reason       text NOT NULL,
  payload      bytea NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream_name, stream_seq, stored_at)
);
`,
  },
  {
    version: 2,
    name: 'views: per day and microDAO, agent, model, provider; monthly invoice lines',
    sql: `
${['microdao_id', 'agent_id', 'model', 'provider']
  .map(
    (column) => `
CREATE VIEW usage_daily_by_${column.replace('_id', '')} AS
SELECT (ts AT TIME ZONE 'UTC')::date AS day,
       ${column},
       count(*) AS requests,
       count(*) FILTER (WHERE status = 'error') AS errors,
       count(*) FILTER (WHERE status = 'rejected') AS rejected,
       sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens,
       sum(total_tokens) AS total_tokens,
       sum(cost_usd) AS cost_usd,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms
  FROM usage_events
 GROUP BY 1, 2;`,
  )
  .join('\n')}

-- A bill's lines: per month (UTC), microDAO and logical model; cost is the sum of the events' costs.
CREATE VIEW usage_invoice_lines AS
SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM') AS month,
       microdao_id,
       model,
       sum(requests) AS requests,
       sum(prompt_tokens) AS prompt_tokens,
       sum(cached_prompt_tokens) AS cached_prompt_tokens,
       sum(completion_tokens) AS completion_tokens,
       sum(total_tokens) AS total_tokens,
       sum(cost_usd) AS cost_usd
  FROM usage_hourly
 GROUP BY 1, 2, 3;
`,
  },
  {
    version: 3,
    name: 'index on the UTC day of usage_events, for the daily views',
    sql: `
-- The daily views group by the UTC day of ts; a filter on their "day" reaches usage_events as this
-- expression, which the BRIN index on ts cannot serve. Measured on 3M events over a year: one day of
-- usage_daily_by_microdao went from 0.75 s (every partition scanned) to 0.04 s.
CREATE INDEX usage_events_day ON usage_events (((ts AT TIME ZONE 'UTC')::date));
`,
  },
  {
    version: 4,
    name: 'saved_usd: what cache hits would have cost',
    sql: `
-- A cache hit costs 0; saved_usd is what its answer cost when it was asked upstream (issue 18).
ALTER TABLE usage_events ADD COLUMN saved_usd numeric(20, 9) NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN saved_usd numeric(24, 9) NOT NULL DEFAULT 0;
`,
  },
  {
    version: 5,
    name: 'node: the node of the worker that handled the request',
    sql: `
-- The worker's node (worker.node, default its host name; issue 19). Null for events written before it.
-- Not a dimension of usage_hourly: the rollups stay per agent, microDAO, model, provider and key.
ALTER TABLE usage_events ADD COLUMN node text;
`,
  },
];

/** The highest version in {@link MIGRATIONS}: what a fully migrated schema is at. */
export const SCHEMA_VERSION = MIGRATIONS.reduce((highest, migration) => Math.max(highest, migration.version), 0);

export interface MigrationResult {
  /** Versions this call applied (empty when another sink, or an earlier run, had). */
  applied: number[];
  version: number;
}

/**
 * Brings `schema` (created when missing) to {@link SCHEMA_VERSION}.
 * A database at a newer version than this code knows is refused: an older sink must not write into
 * tables whose meaning has moved on.
 */
export async function migrate(client: PoolClient, schema: string): Promise<MigrationResult> {
  const applied: number[] = [];
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdentifier(schema)}`);
    // The schema named, whatever the client's search_path: the tables never land in another one.
    await client.query(`SET LOCAL search_path TO ${quoteIdentifier(schema)}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS llm_proxy_migrations (
         version    integer PRIMARY KEY,
         name       text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ version: number }>('SELECT version FROM llm_proxy_migrations');
    const done = new Set(rows.map((row) => row.version));
    const newest = Math.max(0, ...done);
    if (newest > SCHEMA_VERSION)
      throw new Error(
        `the usage log in schema "${schema}" is at version ${newest}; this llm-proxy knows up to ${SCHEMA_VERSION}: upgrade it`,
      );
    for (const migration of MIGRATIONS) {
      if (done.has(migration.version)) continue;
      await client.query(migration.sql);
      await client.query('INSERT INTO llm_proxy_migrations (version, name) VALUES ($1, $2)', [
        migration.version,
        migration.name,
      ]);
      applied.push(migration.version);
    }
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
  return { applied, version: SCHEMA_VERSION };
}

/** A PostgreSQL identifier, quoted (schema names come from config). */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
