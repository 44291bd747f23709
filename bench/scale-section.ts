/**
 * The `scale` section of `npm run bench`: the usage aggregator at sizes (issue 21). For each size,
 * synthetic but valid events (10,000 agents, 300 microDAOs, 8 models, timestamps over 90 days) go into
 * a stream of their own; a `llm-proxy aggregator` process (the project's build, default settings:
 * hours for 7 days, days before) catches up from nothing, answers queries (totals, one agent, every
 * agent over 30 days page by page, the top 20 by cost), saves its snapshot on SIGTERM and restarts
 * from it. Reported: catch-up rate, RSS, cells, snapshot size, save and restart times, query latency.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { usageStreamSchema } from '../src/config/schema.js';
import { subjectsFor } from '../src/contract/subjects.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { publishSynthetic } from './synthetic-usage.js';
import { type ManagedProcess, spawnManaged } from './processes.js';
import { sampleProcess } from './proc-stats.js';

export interface ScalePoint {
  events: number;
  /** Events a second while catching up from nothing. */
  catchUpPerSecond: number;
  rssMiB: number;
  snapshotMiB: number;
  /** SIGTERM to exit: leaving the queue group and the last snapshot. */
  saveSeconds: number;
  /** Start to answering with every event counted, from the snapshot. */
  restartSeconds: number;
  restartPeakRssMiB: number;
  queries: Array<{ name: string; ms: number; pages?: number }>;
}

export type ScaleSection = { skipped: string } | { points: ScalePoint[] };

export interface ScaleSectionContext {
  cliMain: string;
  natsUrl: string;
  sizes: number[];
  logDir: string;
  env: NodeJS.ProcessEnv;
  log(line: string): void;
}

const PREFIX = 'benchscale';
const STREAM = 'BENCH_SCALE_USAGE';
const BUCKET = 'BENCH_SCALE_SNAPSHOTS';
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function ask(connection: NatsConnection, body: unknown, timeoutMs = 60_000): Promise<Record<string, unknown>> {
  const reply = await connection.request(subjectsFor(PREFIX).usageQuery, JSON.stringify(body), { timeout: timeoutMs });
  return reply.json<Record<string, unknown>>();
}

/** Waits until the aggregator answers with `events` counted; returns the time it took. */
async function untilCounted(connection: NatsConnection, events: number, timeoutMs: number): Promise<number> {
  const started = performance.now();
  for (;;) {
    const reply = await ask(connection, {}, 5_000).catch(() => undefined);
    if (reply !== undefined && reply.total_requests === events) return (performance.now() - started) / 1000;
    if (performance.now() - started > timeoutMs)
      throw new Error(`aggregator: ${String(reply?.total_requests)} of ${events} after ${timeoutMs} ms`);
    await delay(200);
  }
}

async function timedQuery(connection: NatsConnection, name: string, body: Record<string, unknown>) {
  const started = performance.now();
  let pages = 0;
  let cursor: string | undefined;
  do {
    const reply = await ask(connection, { ...body, ...(cursor === undefined ? {} : { cursor }) });
    if ('error' in reply) throw new Error(`${name}: ${JSON.stringify(reply.error)}`);
    pages += 1;
    cursor =
      body.limit !== undefined && body.order_by === undefined
        ? ((reply.next_cursor as string | null) ?? undefined)
        : undefined;
  } while (cursor !== undefined);
  return { name, ms: performance.now() - started, ...(pages > 1 ? { pages } : {}) };
}

export async function runScaleSection(context: ScaleSectionContext): Promise<ScaleSection> {
  const connection = await connect({ servers: context.natsUrl });
  const manager = await jetstreamManager(connection);
  const points: ScalePoint[] = [];
  let aggregator: ManagedProcess | undefined;
  try {
    for (const size of context.sizes) {
      await manager.streams.delete(STREAM).catch(() => undefined);
      await manager.streams.delete(`KV_${BUCKET}`).catch(() => undefined);
      const usageStream = usageStreamSchema.parse({ name: STREAM, max_bytes: -1, max_age: 0 });
      await ensureUsageStream(manager, usageStream, PREFIX);
      context.log(`scale: publishing ${size} synthetic usage events`);
      await publishSynthetic(connection, PREFIX, size, 'scale');
      const configPath = join(context.logDir, `scale-${size}.yaml`);
      writeFileSync(
        configPath,
        [
          'providers: {local: {base_url: "http://127.0.0.1:11434"}}',
          'models: {llama3: {provider: local}}',
          'logging: {level: warn}',
          `nats: {subject_prefix: ${PREFIX}, usage_stream: {name: ${STREAM}, max_bytes: -1, max_age: 0}}`,
          `aggregator: {instance_id: scale, snapshot_bucket: ${BUCKET}, snapshot_interval_ms: 1d}`,
          '',
        ].join('\n'),
      );
      const start = async (name: string) =>
        (
          await spawnManaged({
            name,
            command: process.execPath,
            args: [context.cliMain, 'aggregator', '--config', configPath, '--metrics-port', 'off'],
            env: { ...context.env, NATS_URL: context.natsUrl },
            logDir: context.logDir,
          })
        ).process;

      aggregator = await start(`scale-${size}`);
      const catchUp = await untilCounted(connection, size, 30 * 60_000);
      const rss = (sampleProcess(aggregator.pid)?.rssBytes ?? 0) / 2 ** 20;
      const queries = [
        await timedQuery(connection, 'totals, all kept', {}),
        await timedQuery(connection, 'one agent, all kept, by day', { agent_id: 'agent:42', group_by: 'day' }),
        await timedQuery(connection, 'one microDAO, 30 days, by model', {
          microdao_id: 'microdao:7',
          since: '30d',
          group_by: 'model',
        }),
        await timedQuery(connection, 'every agent, 30 days, pages of 1000', {
          since: '30d',
          group_by: 'agent',
          limit: 1000,
        }),
        await timedQuery(connection, 'top 20 agents by cost, 30 days', {
          since: '30d',
          group_by: 'agent',
          limit: 20,
          order_by: 'cost',
        }),
      ];

      const stopping = performance.now();
      await aggregator.stop(10 * 60_000);
      const saveSeconds = (performance.now() - stopping) / 1000;
      aggregator = undefined;
      const kv = await new Kvm(connection).open(BUCKET);
      const manifest = (await kv.get('manifest.scale'))?.json<{ bytes: number }>();

      const restarting = performance.now();
      aggregator = await start(`scale-${size}-restart`);
      let peak = 0;
      const sampler = setInterval(() => {
        peak = Math.max(peak, sampleProcess((aggregator as ManagedProcess).pid)?.rssBytes ?? 0);
      }, 100);
      try {
        await untilCounted(connection, size, 30 * 60_000);
      } finally {
        clearInterval(sampler);
      }
      const restartSeconds = (performance.now() - restarting) / 1000;
      await aggregator.stop(10 * 60_000);
      aggregator = undefined;
      points.push({
        events: size,
        catchUpPerSecond: size / catchUp,
        rssMiB: rss,
        snapshotMiB: (manifest?.bytes ?? 0) / 2 ** 20,
        saveSeconds,
        restartSeconds,
        restartPeakRssMiB: peak / 2 ** 20,
        queries,
      });
      context.log(`scale: ${size} events: caught up at ${Math.round(size / catchUp)}/s, RSS ${Math.round(rss)} MiB`);
    }
    return { points };
  } finally {
    await aggregator?.stop(5_000).catch(() => undefined);
    await manager.streams.delete(STREAM).catch(() => undefined);
    await manager.streams.delete(`KV_${BUCKET}`).catch(() => undefined);
    await connection.close();
  }
}

export function renderScaleSection(section: ScaleSection): string {
  const lines = ['## Usage aggregator at scale', ''];
  if ('skipped' in section) return `${[...lines, `Skipped: ${section.skipped}.`, ''].join('\n')}\n`;
  lines.push(
    'Synthetic events (10,000 agents, 300 microDAOs, 8 models, 90 days) caught up from nothing by one `llm-proxy aggregator` (default settings: hours for 7 days, days before), queried over NATS, stopped (last snapshot) and restarted from its snapshot.',
    '',
    '| events | catch-up (events/s) | RSS (MiB) | snapshot (MiB, gzip) | SIGTERM to exit, with the save (s) | restart (s) | restart peak RSS (MiB) |',
    '|---:|---:|---:|---:|---:|---:|---:|',
    ...section.points.map(
      (point) =>
        `| ${point.events.toLocaleString('en-US')} | ${Math.round(point.catchUpPerSecond).toLocaleString('en-US')} | ${Math.round(point.rssMiB)} | ${point.snapshotMiB.toFixed(1)} | ${point.saveSeconds.toFixed(1)} | ${point.restartSeconds.toFixed(1)} | ${Math.round(point.restartPeakRssMiB)} |`,
    ),
    '',
    '| events | query | ms |',
    '|---:|---|---:|',
    ...section.points.flatMap((point) =>
      point.queries.map(
        (query) =>
          `| ${point.events.toLocaleString('en-US')} | ${query.name}${query.pages === undefined ? '' : ` (${query.pages} pages)`} | ${query.ms.toFixed(0)} |`,
      ),
    ),
    '',
  );
  return `${lines.join('\n')}\n`;
}
