/**
 * `llm-proxy sink postgres`: copies every usage event of LLM_USAGE into PostgreSQL, exactly once.
 */
import { hostname } from 'node:os';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { connectToNats } from '../../bus/connect.js';
import { configPathFromEnv, loadConfigFile, type ResolvedConfig } from '../../config/index.js';
import {
  POSTGRES_URL_ENV,
  postgresSinkSchema,
  postgresUrlProblem,
  type PostgresSinkConfig,
} from '../../config/usage-sink-schema.js';
import { createLogger, type Logger } from '../../telemetry/logger.js';
import { PostgresUsageSink } from '../../sink/postgres-sink.js';
import { observeSink } from '../../sink/sink-metrics.js';
import { VERSION } from '../../worker/index.js';
import { metricsPort, startProcessTelemetry } from '../process-telemetry.js';
import { closeOnSignal } from '../until-signal.js';
import { SINK_MAX_LAG } from '../../health/defaults.js';

const help = `Usage: llm-proxy sink postgres [--url URL] [--schema NAME] [--config FILE] [--metrics-port PORT|off]

Copies every usage event of the usage stream (nats.usage_stream, default LLM_USAGE) into
PostgreSQL, exactly once: table usage_events (one row per event, keyed by its event id),
usage_hourly (the aggregator's cells, for fast queries and invoices), usage_dead_letters
(messages that are not storable events, with the reason), and views per day and microDAO,
agent, model and provider. The schema is created or migrated at start (versioned; safe to
start several sinks at once). From the stream's first event on the first run; afterwards
from where the sinks left off.

Run as many as you like against one database: they share one durable consumer
(usage_sink.postgres.durable_name) and split the events between them.

Options:
  --url URL        postgres://user:password@host:5432/database
                   (default: $${POSTGRES_URL_ENV}, else usage_sink.postgres.url)
  --schema NAME    schema of the tables (default: usage_sink.postgres.schema, public)
  --config PATH    config file (default: $LLM_PROXY_CONFIG, else config.yaml)
  --metrics-port   where /metrics, /healthz and /readyz are served (default: $LLM_PROXY_METRICS_PORT,
                   else telemetry.sink_port, 9466); "off" for none

config.yaml, section "usage_sink.postgres" (all optional):
  url            the database (prefer $${POSTGRES_URL_ENV}: no password in the file)
  schema         schema of the tables (default: public)
  durable_name   the durable consumer the sinks share (default: llm-usage-sink-postgres)
  batch_size     most events per transaction (default: 1000)
  retention      how long raw events are kept, whole months dropped (default: forever), e.g. 400d
  pool_size      connections per sink (default: 4)

SIGTERM/SIGINT: commit and acknowledge the batch in hand, exit.

Examples:
  ${POSTGRES_URL_ENV}=postgres://llm@127.0.0.1:5432/llm_usage llm-proxy sink postgres
  psql llm_usage -c 'SELECT * FROM usage_daily_by_microdao ORDER BY day DESC LIMIT 10'
`;

export interface RunningSink {
  sink: PostgresUsageSink;
  logger: Logger;
  stop(): Promise<void>;
}

/** `usage_sink.postgres` with the URL resolved: flag, then environment, then config. Undefined without a URL. */
export function resolvePostgresSink(
  config: Pick<ResolvedConfig, 'usage_sink'>,
  overrides: { url?: string | undefined; schema?: string | undefined },
  env: NodeJS.ProcessEnv = process.env,
): (PostgresSinkConfig & { url: string }) | undefined {
  const configured = config.usage_sink.postgres ?? postgresSinkSchema.parse({});
  const url = overrides.url || env[POSTGRES_URL_ENV] || configured.url;
  if (url === undefined || url === '') return undefined;
  const problem = postgresUrlProblem(url);
  if (problem !== undefined)
    throw new UsageError(
      `${overrides.url ? '--url' : env[POSTGRES_URL_ENV] ? POSTGRES_URL_ENV : 'usage_sink.postgres.url'} ${problem}`,
    );
  let schema = configured.schema;
  if (overrides.schema !== undefined) {
    const parsed = postgresSinkSchema.shape.schema.safeParse(overrides.schema);
    if (!parsed.success)
      throw new UsageError('--schema must be a lower-case PostgreSQL identifier (letters, digits, "_")');
    schema = parsed.data;
  }
  return { ...configured, url, schema };
}

/** A sink on a connection of its own (used by `sink postgres` and by `dev`). */
export async function startPostgresSink(
  config: ResolvedConfig,
  sinkConfig: PostgresSinkConfig & { url: string },
  options: { servers?: string; port?: number | null; startWindowMs?: number } = {},
): Promise<RunningSink> {
  const logger = createLogger({ level: config.logging.level, base: { role: 'sink' } });
  const telemetry =
    options.port === undefined
      ? undefined
      : startProcessTelemetry({
          serviceName: 'llm-proxy-sink',
          serviceVersion: VERSION,
          telemetry: config.telemetry,
          port: options.port,
          logger,
        });
  let connection: NatsConnection | undefined;
  let sink: PostgresUsageSink;
  try {
    connection = await connectToNats({
      servers: options.servers,
      nats: config.nats,
      name: `llm-proxy-sink@${hostname()}`,
    });
    sink = await PostgresUsageSink.start({
      connection,
      subjectPrefix: config.nats.subject_prefix,
      usageStream: config.nats.usage_stream,
      sink: sinkConfig,
      logger,
      ...(options.startWindowMs === undefined ? {} : { startWindowMs: options.startWindowMs }),
    });
  } catch (error) {
    await connection?.close().catch(() => undefined);
    await telemetry?.stop();
    throw error;
  }
  const nats = connection;
  const unobserve = observeSink(
    { lag: () => sink.lag().catch(() => undefined), stats: () => sink.stats },
    telemetry?.meterProvider,
  );
  await telemetry?.serve(async () => {
    const connected = !nats.isClosed();
    const lag = connected ? await sink.lag().catch(() => undefined) : undefined;
    const database = await sink.pool
      .query('SELECT 1')
      .then(() => true)
      .catch(() => false);
    const checks = [
      { name: 'nats', ok: connected, detail: connected ? `connected to ${nats.getServer()}` : 'not connected' },
      { name: 'database', ok: database, detail: database ? 'answers' : 'does not answer' },
      {
        name: 'lag',
        ok: lag !== undefined && lag < SINK_MAX_LAG,
        detail: lag === undefined ? 'the durable consumer does not answer' : `${lag} events behind`,
      },
    ];
    return { ready: checks.every((check) => check.ok), checks };
  });
  return {
    sink,
    logger,
    async stop() {
      unobserve();
      await sink.stop();
      await nats.drain().catch(() => undefined);
      await telemetry?.stop();
    },
  };
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      url: { type: 'string' },
      schema: { type: 'string' },
      config: { type: 'string' },
      'metrics-port': { type: 'string' },
    },
  });
  if (positionals.length !== 1 || positionals[0] !== 'postgres')
    throw new UsageError('say which sink: `llm-proxy sink postgres` (the one there is)');
  const config = loadConfigFile(values.config ?? configPathFromEnv());
  const sinkConfig = resolvePostgresSink(config, { url: values.url, schema: values.schema });
  if (sinkConfig === undefined)
    throw new UsageError(`no database: give --url, or set ${POSTGRES_URL_ENV}, or usage_sink.postgres.url`);
  const port = metricsPort(values['metrics-port'], process.env, config.telemetry.sink_port);
  if (port === 'invalid')
    throw new UsageError('--metrics-port (or LLM_PROXY_METRICS_PORT) must be a port number or "off"');
  const running = await startPostgresSink(config, sinkConfig, { port });
  return closeOnSignal(async () => {
    running.logger.info('sink stopping');
    await running.stop();
  });
}

export const command: Command = {
  name: 'sink',
  summary: 'copy every usage event into PostgreSQL, exactly once (`sink postgres`)',
  help,
  run,
};
