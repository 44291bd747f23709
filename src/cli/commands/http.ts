/**
 * `llm-proxy http`: one HTTP front door (the seed's API on port 7007, OpenAI's under /v1), a bus
 * client like any agent. Start as many as you like behind a load balancer; SIGTERM stops taking
 * connections, finishes the requests in flight and exits 0.
 */
import { hostname } from 'node:os';
import { closeOnSignal } from '../until-signal.js';
import type { Command } from '../command.js';
import { parseCommandLine, parsePortFlag } from '../command.js';
import { secretFromEnv } from '../../auth/index.js';
import { connectToNats, natsUrlFromEnv } from '../../bus/connect.js';
import { configPathFromEnv, type ResolvedConfig } from '../../config/index.js';
import { startFrontDoor, type FrontDoor } from '../../http/front-door.js';
import { createLogger } from '../../telemetry/logger.js';
import { loadConfigOrExplain } from './worker.js';
import { VERSION } from '../../worker/index.js';
import { startProcessTelemetry, type ProcessTelemetry } from '../process-telemetry.js';

const help = `Usage: llm-proxy http [--config FILE] [--nats URL] [--host HOST] [--port PORT]

Starts one HTTP front door: the seed's API and an OpenAI-compatible API,
turned into requests on the bus (start workers with \`llm-proxy worker\`).

  POST /internal/llm/proxy          the seed's request → reply (stream: true → SSE)
  GET  /internal/llm/models         the models the workers route
  GET  /internal/llm/usage?agent_id=…&since=…&group_by=…   usage from the aggregators
  POST /v1/chat/completions         OpenAI's chat completions (stream: true → SSE, [DONE])
  GET  /v1/models, /v1/models/{id}  OpenAI's model list
  GET  /healthz, /readyz            up; NATS connected and a worker answering
  GET  /metrics                     Prometheus metrics of this process (needs the secret)

It listens at once and connects to NATS in the background (/readyz says 503
until NATS and a worker answer). With LLM_PROXY_SECRET set, callers send it as
X-Internal-Secret or Authorization: Bearer <secret>.

Options:
  --config FILE   config file (default: $LLM_PROXY_CONFIG, else config.yaml); section "http"
  --nats URL      NATS server URL(s), comma-separated (default: $NATS_URL, else nats://127.0.0.1:4222)
  --host HOST     address to listen on (default: http.host, 127.0.0.1)
  --port PORT     port (default: http.port, 7007)

Example:
  LLM_PROXY_SECRET=s3cret llm-proxy http --port 7007
`;

/** Starts a front door for `config` on a connection of its own (used by \`http\` and by \`dev\`). */
export async function startHttpFrontDoor(
  config: ResolvedConfig,
  servers: string,
  overrides: { host?: string; port?: number } = {},
  telemetry?: ProcessTelemetry,
): Promise<FrontDoor> {
  const secret = secretFromEnv(process.env);
  const logger = createLogger({ level: config.logging.level, base: { role: 'http' } });
  const connecting = connectToNats({ servers, nats: config.nats, name: `llm-proxy-http@${hostname()}` });
  return startFrontDoor({
    http: config.http,
    connecting,
    subjectPrefix: config.nats.subject_prefix,
    secret,
    keys: config.auth.mode !== 'secret',
    logger,
    ...(telemetry?.prometheus === undefined
      ? {}
      : { metrics: { prometheus: telemetry.prometheus, meterProvider: telemetry.meterProvider } }),
    ...overrides,
  });
}

export const command: Command = {
  name: 'http',
  summary: 'run an HTTP front door (the seed API on :7007 and OpenAI-compatible /v1)',
  help,
  async run(argv) {
    const { values } = parseCommandLine({
      args: argv,
      options: {
        config: { type: 'string' },
        nats: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
      },
      allowPositionals: false,
    });
    const port = parsePortFlag(values.port);
    const config = loadConfigOrExplain(values.config ?? configPathFromEnv());
    if (config === undefined) return 1;
    // Metrics and traces of this process; /metrics is served by the front door itself, on its port.
    const telemetry = startProcessTelemetry({
      serviceName: 'llm-proxy-http',
      serviceVersion: VERSION,
      telemetry: config.telemetry,
      port: null,
      servesMetrics: true,
      logger: createLogger({ level: config.logging.level, base: { role: 'http' } }),
    });
    const frontDoor = await startHttpFrontDoor(
      config,
      values.nats ?? natsUrlFromEnv(),
      {
        ...(values.host !== undefined ? { host: values.host } : {}),
        ...(port !== undefined ? { port } : {}),
      },
      telemetry,
    );
    return closeOnSignal(() => frontDoor.close().then(() => telemetry.stop()));
  },
};
