/**
 * `llm-proxy worker`: one worker, until SIGTERM/SIGINT. The first signal
 * drains (stop taking requests, finish those in flight, flush usage events,
 * exit 0); a second one exits at once with 130.
 */
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { ConfigError, configPathFromEnv, missingApiKeys, type ResolvedConfig } from '../../config/index.js';
import { natsUrlFromEnv } from '../../bus/connect.js';
import { createLogger } from '../../telemetry/logger.js';
import { startWorker, VERSION } from '../../worker/index.js';
import { metricsPort, startProcessTelemetry } from '../process-telemetry.js';
import { tuneV8ForWorker } from '../v8-tuning.js';
import { loadCheckedConfig } from '../load-config.js';

const help = `Usage: llm-proxy worker [--config FILE] [--nats URL] [--metrics-port PORT|off]

Starts one llm-proxy worker: it answers chat requests on llm.proxy.request
(queue group "llm-proxy"; start as many as you like), llm.proxy.models,
llm.proxy.nodes (every worker: its node, worker.node, and what it serves) and
$SRV.PING/INFO/STATS, and publishes one usage event per request to the
LLM_USAGE JetStream stream. Logs are JSON lines on stdout.
SIGTERM/SIGINT: stop taking requests, finish those in flight, publish their
usage events, exit 0.

Options:
  --config FILE   config file (default: $LLM_PROXY_CONFIG, else config.yaml)
  --nats URL      NATS server URL(s), comma-separated (default: $NATS_URL, else nats://127.0.0.1:4222)
  --metrics-port  where /metrics, /healthz and /readyz are served (default: $LLM_PROXY_METRICS_PORT,
                  else telemetry.worker_port, 9464); "off" for none

Environment:
  NATS_URL, LLM_PROXY_CONFIG, LLM_PROXY_SECRET (require X-Internal-Secret on requests),
  the providers' key variables named by api_key_env (e.g. OPENAI_API_KEY),
  NATS credentials: NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED, NATS_CREDS
  (or the variables named in the config's nats section).

Example:
  OPENAI_API_KEY=sk-... NATS_URL=nats://127.0.0.1:4222 llm-proxy worker --config config.yaml
`;

export function loadConfigOrExplain(path: string): ResolvedConfig | undefined {
  try {
    return loadCheckedConfig(path);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`llm-proxy: ${error.message}\n`);
      return undefined;
    }
    throw error;
  }
}

/** Runs a worker until a signal; returns the exit code. Shared with `llm-proxy dev`. */
export async function runWorkerUntilSignal(
  config: ResolvedConfig,
  servers: string,
  port: number | null = config.telemetry.worker_port,
): Promise<number> {
  const v8Flags = tuneV8ForWorker();
  const logger = createLogger({ level: config.logging.level });
  if (v8Flags.length > 0) logger.debug({ v8_flags: v8Flags }, 'V8 flags set for a long-running worker');
  for (const { provider, env } of missingApiKeys(config)) {
    logger.warn({ provider, env }, `provider "${provider}": ${env} is not set; its calls will fail until it is`);
  }
  const telemetry = startProcessTelemetry({
    serviceName: 'llm-proxy-worker',
    serviceVersion: VERSION,
    telemetry: config.telemetry,
    port,
    logger,
  });
  let worker: Awaited<ReturnType<typeof startWorker>>;
  try {
    worker = await startWorker({ config, servers, logger, meterProvider: telemetry.meterProvider });
  } catch (error) {
    await telemetry.stop();
    throw error;
  }
  await telemetry.serve(() => worker.ready());
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    signalled = true;
    logger.info({ signal }, 'signal received: draining');
    void worker.stop();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  await worker.stopped;
  await telemetry.stop();
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  // A stop we did not ask for (the connection closed for good) is a failure.
  const code = signalled ? 0 : 1;
  // Should a library keep a handle open, do not hang: exit anyway, a moment later.
  setTimeout(() => process.exit(code), 3_000).unref();
  return code;
}

export const command: Command = {
  name: 'worker',
  summary: 'start one worker (answers llm.proxy.request in queue group llm-proxy)',
  help,
  async run(argv) {
    const { values } = parseCommandLine({
      args: argv,
      options: { config: { type: 'string' }, nats: { type: 'string' }, 'metrics-port': { type: 'string' } },
      allowPositionals: false,
    });
    const config = loadConfigOrExplain(values.config ?? configPathFromEnv());
    if (config === undefined) return 1;
    const port = metricsPort(values['metrics-port'], process.env, config.telemetry.worker_port);
    if (port === 'invalid')
      throw new UsageError('--metrics-port (or LLM_PROXY_METRICS_PORT) must be a port number or "off"');
    return runWorkerUntilSignal(config, values.nats ?? natsUrlFromEnv(), port);
  },
};
