import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { startNatsServer } from './helpers/nats-server.js';
import { createTestDatabase, testPool } from './helpers/pg-database.js';
import { handCompute, makeEvents, NOW } from './helpers/usage-events.js';
import { FIXED_DATES } from './helpers/usage-events.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { parseUsageQuery } from '../src/aggregator/query.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { postgresSinkSchema } from '../src/config/usage-sink-schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { parseConfigText } from '../src/config/index.js';
import { checkSystemHealth } from '../src/health/system-health.js';
import { migrate, MIGRATIONS } from '../src/sink/migrations.js';
import { MonthlyPartitions, partitionName } from '../src/sink/partitions.js';
import { PostgresUsageSink } from '../src/sink/postgres-sink.js';
import { runUsageQueryPostgres } from '../src/sink/usage-query.js';

/**
 * The PostgreSQL usage log over a real nats-server and the machine's PostgreSQL: every event once,
 * whatever happens to the sinks (SIGKILL mid-copy, two at once, duplicates in the stream), the same
 * totals as the aggregator's, bad messages filed as dead letters, the schema migrated once.
 */

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const subjects = subjectsFor('llm');
const usageStream = usageStreamSchema.parse({});
/** A password in the sink's URL (trust auth ignores it): it must never be printed. */
const PASSWORD = 'Pw9-never-printed-4u';

interface Logged {
  level: string;
  fields: unknown;
  message: unknown;
}

function collectingLogger(lines: Logged[]) {
  const at =
    (level: string) =>
    (fields: unknown, message?: unknown): void => {
      lines.push({ level, fields, message });
    };
  return { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') } as never;
}

async function publish(connection: NatsConnection, events: UsageEvent[], withMsgId = true): Promise<void> {
  const js = jetstream(connection);
  for (let start = 0; start < events.length; start += 200) {
    await Promise.all(
      events
        .slice(start, start + 200)
        .map((event) =>
          js.publish(
            subjects.usageFor(agentToken(event.agent_id)),
            JSON.stringify(event),
            withMsgId ? { msgID: event.event_id ?? event.request_id, timeout: 30_000 } : { timeout: 30_000 },
          ),
        ),
    );
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last === undefined ? '' : ` (last error: ${String(last)})`}`);
}

function startSinkProcess(configPath: string, url: string, env: Record<string, string>) {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', MAIN, 'sink', 'postgres', '--config', configPath, '--url', url, '--metrics-port', 'off'],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output = { text: '' };
  child.stdout?.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
  return { child, output };
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

const count = async (pool: pg.Pool, sql: string): Promise<number> => Number((await pool.query(sql)).rows[0].n);
const nanoOf = (events: UsageEvent[]) =>
  events.reduce((total, event) => total + BigInt(Math.round(event.cost_usd * 1e9)), 0n);

test('10,000 events with duplicates, a sink SIGKILLed mid-copy and restarted, a second sink at once: each event once, totals equal to the aggregator’s', {
  timeout: 120_000,
}, async () => {
  const server = await startNatsServer();
  const database = await createTestDatabase('llmp_sink');
  const url = new URL(database.url);
  url.password = PASSWORD;
  const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-sink-'));
  const configPath = join(directory, 'config.yaml');
  writeFileSync(
    configPath,
    [
      'providers:',
      '  local: {base_url: "http://127.0.0.1:11434"}',
      'models:',
      '  llama3: {provider: local}',
      'logging: {level: info}',
      'usage_sink:',
      '  postgres: {batch_size: 100, pool_size: 2}',
      '',
    ].join('\n'),
  );
  const connection = await connect({ servers: server.url });
  const logs: Logged[] = [];
  let child: ReturnType<typeof startSinkProcess> | undefined;
  let inProcess: PostgresUsageSink | undefined;
  let aggregator: UsageAggregator | undefined;
  const outputs: string[] = [];
  try {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    // 10,000 events; every other one carries an event id. 50 more reuse a request id with an event id of
    // their own (a client that repeats its correlation id): requests of their own, counted.
    const base = makeEvents(10_000).map((event, index) =>
      index % 2 === 0 ? { ...event, event_id: `ev-${index.toString(36)}` } : event,
    );
    const reused = base
      .slice(0, 50)
      .map((event, index) => ({ ...event, event_id: `ev-again-${index}`, ts: base[index + 100]?.ts ?? event.ts }));
    const events = [...base, ...reused];
    await publish(connection, events.slice(0, 6_000));
    // Copies that the stream's dedup window does not catch (no msg id): the log must still hold each event once.
    await publish(connection, events.slice(0, 700), false);

    const env = { NATS_URL: server.url };
    child = startSinkProcess(configPath, url.toString(), env);
    inProcess = await PostgresUsageSink.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      sink: { ...postgresSinkSchema.parse({}), url: url.toString(), batch_size: 100, pool_size: 2 },
      logger: collectingLogger(logs),
    });
    await publish(connection, events.slice(6_000));

    // Mid-copy: some batches are committed, far from all; the child is killed with no goodbye.
    await until('the first rows committed', async () =>
      (await count(database.pool, 'SELECT count(*) AS n FROM usage_events')) >= 1_500 ? true : undefined,
    );
    child.child.kill('SIGKILL');
    await exited(child.child);
    outputs.push(child.output.text);
    const atKill = await count(database.pool, 'SELECT count(*) AS n FROM usage_events');
    assert.ok(atKill < events.length, `the kill came mid-copy (${atKill} rows of ${events.length})`);
    await publish(connection, events.slice(9_000), false);
    child = startSinkProcess(configPath, url.toString(), env);

    await until('the sinks caught up', async () => ((await inProcess?.lag()) === 0 ? true : undefined));
    await until('every event in the log', async () =>
      (await count(database.pool, 'SELECT count(*) AS n FROM usage_events')) === events.length ? true : undefined,
    );

    aggregator = await UsageAggregator.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({ snapshot_interval_ms: '10m', instance_id: 'sink-test', ...FIXED_DATES }),
      now: () => NOW,
    });
    await until('the aggregator caught up', async () => ((await aggregator?.lag()) === 0 ? true : undefined));

    // Each event once: as many rows and distinct keys as events; the copies were skipped, not lost.
    assert.equal(await count(database.pool, 'SELECT count(DISTINCT event_key) AS n FROM usage_events'), events.length);
    assert.equal(await count(database.pool, 'SELECT count(*) AS n FROM usage_dead_letters'), 0);
    const hourly = await database.pool.query(
      'SELECT sum(requests)::text AS requests, sum(total_tokens)::text AS tokens, (sum(cost_usd) * 1e9)::bigint::text AS nano FROM usage_hourly',
    );
    assert.equal(Number(hourly.rows[0].requests), events.length);
    assert.equal(
      BigInt(hourly.rows[0].nano),
      nanoOf(events),
      'the hourly cells hold the events’ cost to the nano-dollar',
    );
    const raw = await database.pool.query('SELECT (sum(cost_usd) * 1e9)::bigint::text AS nano FROM usage_events');
    assert.equal(BigInt(raw.rows[0].nano), nanoOf(events), 'the rows hold the events’ cost to the nano-dollar');

    // The same answers as the aggregator's, to the token and the nano-dollar, and as a hand computation.
    for (const body of [
      {},
      { group_by: ['microdao', 'model'] },
      { agent_id: 'agent:sofia', group_by: ['day'] },
      { since: '2026-11-25T06:00:00Z', until: '2026-11-26T00:00:00Z', group_by: ['provider', 'hour'] },
    ]) {
      const reply = await connection.request(subjects.usageQuery, JSON.stringify(body), { timeout: 10_000 });
      const fromLog = await runUsageQueryPostgres(database.pool, parseUsageQuery(body, NOW));
      assert.deepEqual(fromLog, reply.json(), `same reply for ${JSON.stringify(body)}`);
    }
    const { cents, ...hand } = handCompute(events, { group_by: ['microdao'] });
    const everything = await runUsageQueryPostgres(database.pool, parseUsageQuery({ group_by: ['microdao'] }, NOW));
    assert.deepEqual(everything, hand);
    assert.equal(Math.round(everything.cost_usd * 100), cents, 'to the cent');

    // An aggregator whose retention (3 days back from the stream's now) ends after these November events:
    // it holds none of them; a query reaching back is answered from the usage log, or refused without one.
    const short = { snapshot_interval_ms: '10m', hour_window: '1d', retention: '3d' };
    const withLog = await UsageAggregator.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({ ...short, instance_id: 'sink-test-short' }),
      now: () => NOW,
      usageLog: database.pool,
    });
    const withoutLog = await UsageAggregator.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({ ...short, instance_id: 'sink-test-nolog' }),
      now: () => NOW,
    });
    try {
      await until('the short aggregators caught up', async () =>
        (await withLog.lag()) === 0 && (await withoutLog.lag()) === 0 ? true : undefined,
      );
      assert.equal(withLog.eventStats().events, 0, 'every event is past its retention');
      const back = { since: '2026-11-24T00:00:00Z', group_by: ['microdao', 'model'] };
      assert.deepEqual(
        await withLog.queryAsync(back),
        await runUsageQueryPostgres(database.pool, parseUsageQuery(back, NOW)),
      );
      await assert.rejects(withoutLog.queryAsync(back), /out of range: this aggregator keeps usage from/);
    } finally {
      await withLog.stop();
      await withoutLog.stop();
    }

    // Both sinks took part; no log line or output carries the password.
    assert.ok((inProcess.stats.inserted ?? 0) > 0 && inProcess.stats.inserted < events.length);
    await inProcess.stop();
    inProcess = undefined;
    child.child.kill('SIGTERM');
    await exited(child.child);
    outputs.push(child.output.text);
    assert.equal(child.child.exitCode, 0, child.output.text);
    const printed = `${outputs.join('\n')}\n${JSON.stringify(logs)}`;
    assert.match(printed, /usage sink started/);
    assert.ok(!printed.includes(PASSWORD), 'the password is never printed');
  } finally {
    child?.child.kill('SIGKILL');
    if (child !== undefined) await exited(child.child);
    await inProcess?.stop();
    await aggregator?.stop();
    await connection.close();
    await server.stop();
    await database.drop();
    rmSync(directory, { recursive: true, force: true });
  }
});

test('bad messages go to usage_dead_letters with the reason and never block the events behind them', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const database = await createTestDatabase('llmp_dead');
  const connection = await connect({ servers: server.url });
  let sink: PostgresUsageSink | undefined;
  try {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    const events = makeEvents(300);
    const js = jetstream(connection);
    await publish(connection, events.slice(0, 100));
    const bad: Array<[string, string]> = [
      ['llm.usage.x', 'not json at all'],
      ['llm.usage.x', JSON.stringify([1, 2, 3])],
      ['llm.usage.x', JSON.stringify({ ...events[0], request_id: 'x'.repeat(300), prompt_tokens: -5 })],
      ['llm.usage.x', JSON.stringify({ ...events[1], request_id: 'nul\u0000in-id', event_id: 'e-nul' })],
      ['llm.usage.x', JSON.stringify({ ...events[2], status: 'exploded', event_id: 'e-status' })],
    ];
    for (const [subject, body] of bad) await js.publish(subject, body);
    await publish(connection, events.slice(100));

    sink = await PostgresUsageSink.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      sink: { ...postgresSinkSchema.parse({}), url: database.url, batch_size: 50 },
      logger: collectingLogger([]),
    });
    await until('the sink caught up', async () =>
      (await sink?.lag()) === 0 &&
      (await count(database.pool, 'SELECT count(*) AS n FROM usage_events')) === events.length
        ? true
        : undefined,
    );
    const { rows } = await database.pool.query<{ stream_seq: string; reason: string; payload: Buffer }>(
      'SELECT stream_seq::text, reason, payload FROM usage_dead_letters ORDER BY stream_seq',
    );
    assert.equal(rows.length, bad.length, JSON.stringify(rows.map((row) => row.reason)));
    rows.forEach((row, index) => {
      assert.equal(Number(row.stream_seq), 101 + index, 'filed with its stream sequence');
      assert.equal(row.payload.toString(), bad[index]?.[1], 'the message as it was, byte for byte');
      assert.ok(row.reason.length > 0);
    });
    assert.match(rows[0]?.reason ?? '', /JSON/i);
    assert.equal(sink.stats.dead_letters, bad.length);
    assert.equal(sink.stats.inserted, events.length);

    // `llm-proxy health` sees the sinks' durable and its lag from the bus.
    const config = parseConfigText(
      `providers: {local: {base_url: "http://127.0.0.1:11434"}}\nmodels: {llama3: {provider: local}}\nusage_sink: {postgres: {url: "${database.url}"}}\n`,
      'health.yaml',
      {},
    );
    const report = await checkSystemHealth({ connection, config, env: {} });
    const usageSink = report.checks.find((check) => check.name === 'usage_sink');
    assert.deepEqual(
      { ok: usageSink?.ok, warning: usageSink?.warning, lag: usageSink?.lag, durable: usageSink?.durable },
      { ok: true, warning: undefined, lag: 0, durable: 'llm-usage-sink-postgres' },
    );
    await sink.stop();
    sink = undefined;
    await publish(
      connection,
      makeEvents(3).map((event) => ({ ...event, event_id: `later-${event.request_id}` })),
    );
    const behind = await checkSystemHealth({ connection, config, env: {} });
    assert.equal(behind.checks.find((check) => check.name === 'usage_sink')?.lag, 3, 'events wait for the sink');
    await jetstreamManager(connection).then((manager) =>
      manager.consumers.delete(usageStream.name, 'llm-usage-sink-postgres'),
    );
    const never = (await checkSystemHealth({ connection, config, env: {} })).checks.find(
      (check) => check.name === 'usage_sink',
    );
    assert.equal(never?.warning, true);
    assert.match(never?.detail ?? '', /no sink has run/);
  } finally {
    await sink?.stop();
    await connection.close();
    await server.stop();
    await database.drop();
  }
});

test('the schema is migrated once by sinks that start together; a newer schema is refused', async () => {
  const database = await createTestDatabase('llmp_migrate');
  const pools = Array.from({ length: 4 }, () => testPool(database.url, 1));
  try {
    const results = await Promise.all(
      pools.map(async (pool) => {
        const client = await pool.connect();
        try {
          return await migrate(client, 'usage');
        } finally {
          client.release();
        }
      }),
    );
    const applied = results.flatMap((result) => result.applied);
    assert.deepEqual(
      applied.sort((a, b) => a - b),
      MIGRATIONS.map((migration) => migration.version),
      'each migration applied by exactly one of them',
    );
    assert.ok(results.every((result) => result.version === MIGRATIONS.at(-1)?.version));
    const recorded = await database.pool.query('SELECT version FROM usage.llm_proxy_migrations ORDER BY version');
    assert.deepEqual(
      recorded.rows.map((row) => Number(row.version)),
      MIGRATIONS.map((migration) => migration.version),
    );
    await database.pool.query(
      "INSERT INTO usage.llm_proxy_migrations (version, name) VALUES (999, 'from a newer llm-proxy')",
    );
    const client = await pools[0]?.connect();
    try {
      await assert.rejects(() => migrate(client as pg.PoolClient, 'usage'), /999/);
    } finally {
      client?.release();
    }
  } finally {
    await Promise.all(pools.map((pool) => pool.end()));
    await database.drop();
  }
});

test('retention drops whole months that ended before it; the hourly cells (and so the invoices) stay', {
  timeout: 60_000,
}, async () => {
  const server = await startNatsServer();
  const database = await createTestDatabase('llmp_retention');
  const connection = await connect({ servers: server.url });
  let sink: PostgresUsageSink | undefined;
  try {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    const now = Date.parse('2026-12-15T12:00:00Z');
    const months = ['2026-08-10', '2026-09-10', '2026-10-10', '2026-11-10', '2026-12-10'];
    const events = makeEvents(months.length * 10).map((event, index) => ({
      ...event,
      ts: `${months[Math.floor(index / 10)]}T10:00:00.000Z`,
    }));
    await publish(connection, events);
    const start = (batchSize = 1000) =>
      PostgresUsageSink.start({
        connection,
        subjectPrefix: 'llm',
        usageStream,
        // 60 days before Dec 15: August and September ended before it; October did not.
        sink: { ...postgresSinkSchema.parse({ retention: '60d', batch_size: batchSize }), url: database.url },
        logger: collectingLogger([]),
        now: () => now,
      });
    sink = await start();
    await until('the sink caught up', async () => ((await sink?.lag()) === 0 ? true : undefined));
    // The events were written after the start's retention pass; a restart applies it again.
    await sink.stop();
    // Restarted with another batch size: the shared durable keeps its place and takes the new bound.
    sink = await start(2_000);
    const durable = await (await jetstreamManager(connection)).consumers.info(
      usageStream.name,
      'llm-usage-sink-postgres',
    );
    assert.equal(durable.config.max_ack_pending, 8_000);
    assert.equal(durable.ack_floor.stream_seq, events.length);
    const partitions = await new MonthlyPartitions(database.pool).list();
    assert.deepEqual(partitions.map(partitionName), [
      'usage_events_p202610',
      'usage_events_p202611',
      'usage_events_p202612',
      'usage_events_p202701',
    ]);
    assert.equal(await count(database.pool, 'SELECT count(*) AS n FROM usage_events'), 30);
    assert.equal(await count(database.pool, 'SELECT sum(requests) AS n FROM usage_hourly'), 50);
  } finally {
    await sink?.stop();
    await connection.close();
    await server.stop();
    await database.drop();
  }
});
