/**
 * The `sink` section of `npm run bench`: how many usage events a second `llm-proxy sink postgres`
 * sustains (one process, then two sharing the durable), and how long the usage log's queries take
 * over what it wrote. Synthetic but valid events (10,000 agents, 300 microDAOs, 8 models, 90 days) go
 * into a stream of their own; each round copies them into a fresh database on the machine's
 * PostgreSQL ($LLM_PROXY_BENCH_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/postgres), dropped
 * afterwards. Without a PostgreSQL the section says it was skipped.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { parseUsageQuery } from '../src/aggregator/query.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { invoiceFor } from '../src/sink/invoice.js';
import { runUsageQueryPostgres } from '../src/sink/usage-query.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { publishSynthetic } from './synthetic-usage.js';
import { type ManagedProcess, spawnManaged } from './processes.js';
import { ProcessSampler, usageFromSamples } from './proc-stats.js';

export interface SinkRound {
  sinks: number;
  events: number;
  /** From the first row committed to the last. */
  seconds: number;
  eventsPerSecond: number;
  /** Mean CPU of the sink processes together, in cores; their peak RSS, MiB. */
  cpuCores: number;
  peakRssMiB: number;
}

export interface SinkQuery {
  name: string;
  /** Median and max of the repetitions, ms. */
  medianMs: number;
  maxMs: number;
}

export type SinkSection =
  | { skipped: string }
  | {
      events: number;
      publishPerSecond: number;
      rounds: SinkRound[];
      queries: SinkQuery[];
      rows: number;
      hourlyCells: number;
      databaseMiB: number;
    };

export interface SinkSectionContext {
  cliMain: string;
  natsUrl: string;
  events: number;
  logDir: string;
  env: NodeJS.ProcessEnv;
  log(line: string): void;
}

const PREFIX = 'benchsink';
const STREAM = 'BENCH_SINK_USAGE';
const DAY = 86_400_000;

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function timed(repeat: number, work: () => Promise<unknown>): Promise<{ medianMs: number; maxMs: number }> {
  const times: number[] = [];
  for (let round = 0; round < repeat; round += 1) {
    const started = performance.now();
    await work();
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return { medianMs: times[Math.floor(times.length / 2)] as number, maxMs: times.at(-1) as number };
}

function databaseUrl(admin: string, name: string): string {
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return url.toString();
}

export async function runSinkSection(context: SinkSectionContext): Promise<SinkSection> {
  const adminUrl = process.env.LLM_PROXY_BENCH_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
  const admin = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 3_000 });
  try {
    await admin.connect();
  } catch (error) {
    return {
      skipped: `no PostgreSQL at ${new URL(adminUrl).host}: ${error instanceof Error ? error.message : String(error)}`,
    };
  }
  const connection = await connect({ servers: context.natsUrl });
  const databases: string[] = [];
  const running: ManagedProcess[] = [];
  try {
    const usageStream = usageStreamSchema.parse({ name: STREAM, max_bytes: -1, max_age: 0 });
    const manager = await jetstreamManager(connection);
    await manager.streams.delete(STREAM).catch(() => undefined);
    await ensureUsageStream(manager, usageStream, PREFIX);
    context.log(`sink: publishing ${context.events} synthetic usage events`);
    const publishPerSecond = await publishSynthetic(connection, PREFIX, context.events, 'sink');

    const rounds: SinkRound[] = [];
    let firstDatabase: string | undefined;
    for (const sinks of [1, 2]) {
      const name = `llmp_bench_${randomBytes(4).toString('hex')}`;
      await admin.query(`CREATE DATABASE ${name}`);
      databases.push(name);
      firstDatabase ??= name;
      const url = databaseUrl(adminUrl, name);
      const configPath = join(context.logDir, `sink-${sinks}.yaml`);
      writeFileSync(
        configPath,
        [
          'providers: {local: {base_url: "http://127.0.0.1:11434"}}',
          'models: {llama3: {provider: local}}',
          'logging: {level: warn}',
          `nats: {subject_prefix: ${PREFIX}, usage_stream: {name: ${STREAM}, max_bytes: -1, max_age: 0}}`,
          `usage_sink: {postgres: {durable_name: bench-sink-${name}}}`,
          '',
        ].join('\n'),
      );
      const pool = new pg.Pool({ connectionString: url, max: 1 });
      const processes: ManagedProcess[] = [];
      for (let index = 0; index < sinks; index += 1) {
        const { process: sink } = await spawnManaged({
          name: `sink-${sinks}-${index}`,
          command: process.execPath,
          args: [context.cliMain, 'sink', 'postgres', '--config', configPath, '--url', url, '--metrics-port', 'off'],
          env: { ...context.env, NATS_URL: context.natsUrl },
          logDir: context.logDir,
        });
        processes.push(sink);
        running.push(sink);
      }
      const sampler = new ProcessSampler(new Map(processes.map((sink) => [sink.name, sink.pid])));
      sampler.start(250);
      let first: number | undefined;
      let rows = 0;
      const deadline = Date.now() + 15 * 60_000;
      while (rows < context.events) {
        if (Date.now() > deadline)
          throw new Error(`sink round ${sinks}: ${rows} of ${context.events} rows after 15 min`);
        await delay(100);
        rows = Number(
          (await pool.query('SELECT count(*) AS n FROM usage_events').catch(() => ({ rows: [{ n: 0 }] }))).rows[0].n,
        );
        if (rows > 0) first ??= performance.now();
      }
      const seconds = (performance.now() - (first as number)) / 1000;
      const usages = [...sampler.stop().values()].map((samples) => usageFromSamples(samples));
      await pool.end();
      for (const sink of processes) await sink.stop(10_000);
      rounds.push({
        sinks,
        events: context.events,
        seconds,
        eventsPerSecond: context.events / seconds,
        cpuCores: usages.reduce((total, usage) => total + (usage?.cpuPercent ?? 0) / 100, 0),
        peakRssMiB: Math.max(0, ...usages.map((usage) => (usage?.rssMaxBytes ?? 0) / 2 ** 20)),
      });
      context.log(`sink: ${sinks} sink(s): ${Math.round(context.events / seconds)} events/s`);
    }

    const pool = new pg.Pool({ connectionString: databaseUrl(adminUrl, firstDatabase as string), max: 1 });
    try {
      await pool.query('ANALYZE');
      const at = Date.now();
      const month = new Date(at - 30 * DAY).toISOString().slice(0, 7);
      const query = (body: Record<string, unknown>) => () => runUsageQueryPostgres(pool, parseUsageQuery(body, at));
      const plan: Array<[string, () => Promise<unknown>]> = [
        ['usage: totals, all time', query({})],
        [
          'usage: one microDAO, 30 days, by model',
          query({ microdao_id: 'microdao:7', since: '30d', group_by: ['model'] }),
        ],
        ['usage: one agent, all time, by day', query({ agent_id: 'agent:42', group_by: ['day'] })],
        ['usage: 30 days by microDAO and model', query({ since: '30d', group_by: ['microdao', 'model'] })],
        ['usage: 7 days by agent', query({ since: '7d', group_by: ['agent'] })],
        [`invoice: microdao:7, ${month}`, () => invoiceFor(pool, { microdao: 'microdao:7', month })],
        [
          'view usage_daily_by_microdao, one microDAO, 30 days',
          () =>
            pool.query(
              "SELECT * FROM usage_daily_by_microdao WHERE microdao_id = 'microdao:7' AND day >= (now() - interval '30 days')::date",
            ),
        ],
      ];
      const queries: SinkQuery[] = [];
      for (const [name, work] of plan) queries.push({ name, ...(await timed(5, work)) });
      const sizes = await pool.query(
        `SELECT (SELECT count(*) FROM usage_events) AS rows, (SELECT count(*) FROM usage_hourly) AS cells,
                pg_database_size(current_database()) AS bytes`,
      );
      return {
        events: context.events,
        publishPerSecond,
        rounds,
        queries,
        rows: Number(sizes.rows[0].rows),
        hourlyCells: Number(sizes.rows[0].cells),
        databaseMiB: Number(sizes.rows[0].bytes) / 2 ** 20,
      };
    } finally {
      await pool.end();
    }
  } finally {
    for (const sink of running) await sink.stop(5_000).catch(() => undefined);
    for (const name of databases)
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    await jetstreamManager(connection)
      .then((manager) => manager.streams.delete(STREAM))
      .catch(() => undefined);
    await connection.close();
  }
}

export function renderSinkSection(section: SinkSection): string {
  const lines = ['## Usage log in PostgreSQL (`llm-proxy sink postgres`)', ''];
  if ('skipped' in section) return `${[...lines, `Skipped: ${section.skipped}.`, ''].join('\n')}\n`;
  lines.push(
    `${section.events.toLocaleString('en-US')} synthetic events (10,000 agents, 300 microDAOs, 8 models, 90 days), published at ${Math.round(section.publishPerSecond).toLocaleString('en-US')}/s into a stream of their own, then copied by the sink process(es) into a fresh database (batch_size 1000, pool_size 4).`,
    '',
    '| sinks | events/s | seconds | CPU (cores) | peak RSS (MiB) |',
    '|---:|---:|---:|---:|---:|',
    ...section.rounds.map(
      (round) =>
        `| ${round.sinks} | ${Math.round(round.eventsPerSecond).toLocaleString('en-US')} | ${round.seconds.toFixed(1)} | ${round.cpuCores.toFixed(2)} | ${Math.round(round.peakRssMiB)} |`,
    ),
    '',
    `Queries over the first round's database (${section.rows.toLocaleString('en-US')} rows, ${section.hourlyCells.toLocaleString('en-US')} hourly cells, ${Math.round(section.databaseMiB)} MiB), 5 runs each:`,
    '',
    '| query | median ms | max ms |',
    '|---|---:|---:|',
    ...section.queries.map((query) => `| ${query.name} | ${query.medianMs.toFixed(1)} | ${query.maxMs.toFixed(1)} |`),
    '',
  );
  return `${lines.join('\n')}\n`;
}
