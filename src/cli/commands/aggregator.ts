/**
 * `llm-proxy aggregator`: the usage aggregator. Consumes LLM_USAGE, keeps the
 * rollups (snapshotted to KV) and answers `llm.proxy.usage` in the
 * `llm-usage` queue group. Run as many as you like; each has the full picture.
 */
import { hostname } from 'node:os';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { connectToNats } from '../../bus/connect.js';
import { configPathFromEnv, loadConfigFile, type ResolvedConfig } from '../../config/index.js';
import { createLogger, type Logger } from '../../telemetry/logger.js';
import { UsageAggregator } from '../../aggregator/aggregator.js';
import { observeAggregator } from '../../aggregator/aggregator-metrics.js';
import { VERSION } from '../../worker/index.js';
import { metricsPort, startProcessTelemetry } from '../process-telemetry.js';
import { secretFromEnv } from '../../auth/index.js';
import { openUsageLogPool } from '../../sink/pg-pool.js';
import { resolvePostgresSink } from './sink.js';

const help = `Usage: llm-proxy aggregator [--config config.yaml] [--metrics-port PORT|off]

Consumes the usage stream (nats.usage_stream, default LLM_USAGE) through a
durable consumer of its own, counts every request once (by event_id), keeps
rollups per agent, microDAO, model, provider and hour, snapshots them to a KV
bucket, and answers usage queries on <prefix>.proxy.usage (queue group
llm-usage; discoverable with \`nats micro ls\`).

Options:
  --config PATH   config file (default: $LLM_PROXY_CONFIG, else config.yaml)
  --metrics-port  where /metrics, /healthz and /readyz are served (default: $LLM_PROXY_METRICS_PORT,
                  else telemetry.aggregator_port, 9465); "off" for none

config.yaml, section "aggregator" (all optional):
  instance_id                  stable id of this instance (default: the host name)
  durable_name                 its durable consumer (default: llm-usage-<instance_id>)
  snapshot_bucket              KV bucket of snapshots (default: LLM_USAGE_SNAPSHOTS)
  snapshot_interval_ms         how often to snapshot, e.g. 60s (default), also on shutdown
  dedup_horizon                how long request ids are remembered (default: 24h)
  consumer_inactive_threshold  an unused durable is removed after (default: 7d); departed
                               instances' snapshots are deleted after it too
  hour_window                  how far back usage is kept per hour (default: 7d); per day before
  retention                    how long usage is kept at all (default: 400d; 0 or forever: always)

Queries reaching before the retention are answered from the PostgreSQL usage log
when one is configured ($LLM_PROXY_POSTGRES_URL or usage_sink.postgres.url, see
\`llm-proxy sink postgres\`); without one they are refused as out of range.

Every instance needs its own instance_id (two processes with one id would
take each other's durable consumer). SIGTERM/SIGINT: leave the queue group,
save a last snapshot, exit.

Environment: NATS_URL, NATS credentials (see nats.* in config.yaml), LLM_PROXY_CONFIG,
LLM_PROXY_SECRET (queries must then carry it as X-Internal-Secret).
`;

export interface RunningAggregator {
  logger: Logger;
  /** Leave the queue group, save a last snapshot, drain the connection. */
  stop(): Promise<void>;
}

/** Lag past which the aggregator says it is not ready (it keeps consuming; ops should look). */
const READY_MAX_LAG = 10_000;

/**
 * An aggregator on a connection of its own (used by `aggregator` and by `dev`). With `port` it has its
 * own metrics SDK and server (`/metrics`, `/healthz`, `/readyz`); without (in `dev`) its gauges go to
 * whatever meter provider the process registered.
 */
export async function startUsageAggregator(
  config: ResolvedConfig,
  servers?: string,
  port?: number | null,
): Promise<RunningAggregator> {
  // Before connecting: a secret set but empty stops the start.
  const secret = secretFromEnv(process.env);
  const logger = createLogger({ level: config.logging.level, base: { role: 'aggregator' } });
  const telemetry =
    port === undefined
      ? undefined
      : startProcessTelemetry({
          serviceName: 'llm-proxy-aggregator',
          serviceVersion: VERSION,
          telemetry: config.telemetry,
          port,
          logger,
        });
  let connection: NatsConnection;
  let aggregator: UsageAggregator;
  // The usage log, when there is one: the history before the aggregator's retention.
  const usageLogConfig = resolvePostgresSink(config, {});
  const usageLog =
    usageLogConfig === undefined
      ? undefined
      : openUsageLogPool(
          {
            url: usageLogConfig.url,
            schema: usageLogConfig.schema,
            poolSize: 2,
            applicationName: 'llm-proxy-aggregator',
          },
          logger,
        );
  try {
    connection = await connectToNats({ servers, nats: config.nats, name: `llm-proxy-aggregator@${hostname()}` });
    aggregator = await UsageAggregator.start({
      connection,
      subjectPrefix: config.nats.subject_prefix,
      usageStream: config.nats.usage_stream,
      aggregator: config.aggregator,
      logger,
      secret,
      usageLog,
    });
  } catch (error) {
    await usageLog?.end().catch(() => undefined);
    await telemetry?.stop();
    throw error;
  }
  // Between a disconnect and the reconnect the aggregator is not ready (isClosed() says false all along).
  let natsConnected = true;
  void (async () => {
    for await (const status of connection.status()) {
      if (status.type === 'disconnect') natsConnected = false;
      else if (status.type === 'reconnect') natsConnected = true;
    }
  })().catch(() => undefined);
  const unobserve = observeAggregator(
    {
      lag: () => aggregator.lag().catch(() => undefined),
      stats: () => aggregator.eventStats(),
    },
    telemetry?.meterProvider,
  );
  await telemetry?.serve(async () => {
    const connected = !connection.isClosed() && natsConnected;
    const lag = connected ? await aggregator.lag().catch(() => undefined) : undefined;
    const checks = [
      { name: 'nats', ok: connected, detail: connected ? `connected to ${connection.getServer()}` : 'not connected' },
      {
        name: 'lag',
        ok: lag !== undefined && lag < READY_MAX_LAG,
        detail:
          lag === undefined
            ? 'the usage stream does not answer'
            : `${lag} events behind (not ready at ${READY_MAX_LAG})`,
      },
    ];
    return { ready: checks.every((check) => check.ok), checks };
  });
  return {
    logger,
    async stop() {
      unobserve();
      await aggregator.stop();
      await connection.drain();
      await usageLog?.end().catch(() => undefined);
      await telemetry?.stop();
    },
  };
}

async function run(argv: string[]): Promise<number> {
  const { values } = parseCommandLine({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: { config: { type: 'string' }, 'metrics-port': { type: 'string' } },
  });
  const config = loadConfigFile(values.config ?? configPathFromEnv());
  const port = metricsPort(values['metrics-port'], process.env, config.telemetry.aggregator_port);
  if (port === 'invalid')
    throw new UsageError('--metrics-port (or LLM_PROXY_METRICS_PORT) must be a port number or "off"');
  const running = await startUsageAggregator(config, undefined, port);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      running.logger.info({ signal }, 'aggregator stopping');
      running.stop().then(
        () => resolve(0),
        (error: unknown) => {
          running.logger.error({ err: error }, 'aggregator did not stop cleanly');
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}

export const command: Command = {
  name: 'aggregator',
  summary: 'run a usage aggregator (rollups, snapshots, llm.proxy.usage)',
  help,
  run,
};
