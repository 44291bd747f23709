/**
 * `llm-proxy ui`: the operations page on a small HTTP server of its own (src/ui/): workers and
 * aggregators, traffic of the last hour, spending, deployments, limits and the live tail. Reads the
 * limits store with the workers' config, which the front door's `/ui` does not.
 */
import { hostname } from 'node:os';
import { closeOnSignal } from '../until-signal.js';
import type { NatsConnection } from '@nats-io/nats-core';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Command } from '../command.js';
import { parseCommandLine, parsePortFlag } from '../command.js';
import { secretFromEnv } from '../../auth/index.js';
import { connectToNats, natsUrlFromEnv } from '../../bus/connect.js';
import { configPathFromEnv, type ResolvedConfig } from '../../config/index.js';
import { createLimiter, type Limiter } from '../../limits/index.js';
import { createLogger, type Logger } from '../../telemetry/logger.js';
import type { UiFeed } from '../../ui/ui-feed.js';
import type { StandingReader } from '../../ui/ui-polls.js';
import { loadAssets, registerUiRoutes, type UiRouteOptions } from '../../ui/ui-routes.js';
import { loadConfigOrExplain } from './worker.js';

export const DEFAULT_UI_PORT = 8090;

const help = `Usage: llm-proxy ui [--config FILE] [--nats URL] [--host HOST] [--port PORT]

Serves the operations page at http://HOST:PORT/ui: workers and aggregators
found through $SRV, requests per second, errors and latency per model over
the last hour, tokens and cost today and this month (per model, microDAO and
the top agents), deployments and cooldowns, agents near or over their limits,
and the live tail of usage events. It updates itself (server-sent events).

With LLM_PROXY_SECRET set, the page asks for it once (a form; the browser then
holds a 12-hour HttpOnly session cookie, never the secret). Without it the page
is open to anyone who reaches the port: keep the default host.

Options:
  --config FILE   the workers' config (default: $LLM_PROXY_CONFIG, else config.yaml):
                  subject prefix, usage stream, limits store
  --nats URL      NATS server URL(s) (default: $NATS_URL, else nats://127.0.0.1:4222)
  --host HOST     address to listen on (default: 127.0.0.1)
  --port PORT     port (default: ${DEFAULT_UI_PORT})

Example:
  LLM_PROXY_SECRET=s3cret llm-proxy ui --port 8090   # then open http://127.0.0.1:8090/ui
`;

export interface UiServer {
  readonly app: FastifyInstance;
  readonly url: string;
  readonly feed: UiFeed;
  close(): Promise<void>;
}

export interface UiServerOptions {
  config: ResolvedConfig;
  servers: string;
  secret: string | undefined;
  host?: string;
  port?: number;
  logger?: Logger;
  intervals?: UiRouteOptions['intervals'];
}

/** Why there is no standing to read, or undefined when the limits store can be read. */
function limitsNoteFor(config: ResolvedConfig): string | undefined {
  if (!config.limits.enabled) return 'limits are off in this config (limits.enabled: false)';
  if (config.limits.backend === 'memory')
    return 'limits.backend is memory: each worker counts on its own, there is no shared standing to read';
  return undefined;
}

export async function startUiServer(options: UiServerOptions): Promise<UiServer> {
  const { config } = options;
  loadAssets(); // throws, naming the folder, when the page's files were not built or copied
  const logger = options.logger ?? createLogger({ level: config.logging.level, base: { role: 'ui' } });
  const connecting = connectToNats({ servers: options.servers, nats: config.nats, name: `llm-proxy-ui@${hostname()}` });
  connecting.catch((error: unknown) => logger.error({ err: error }, 'could not connect to NATS'));
  const limitsNote = limitsNoteFor(config);
  let limiter: Promise<Limiter> | undefined;
  const standing: StandingReader | undefined =
    limitsNote === undefined
      ? async (agentId, standingOptions) => {
          limiter ??= connecting.then((connection) => createLimiter(config.limits, { nats: connection }));
          try {
            return await (await limiter).standing(agentId, standingOptions);
          } catch (error) {
            // A store that could not be opened (no permission yet, Redis down) is tried again next time.
            if (await limiter.then(() => false).catch(() => true)) limiter = undefined;
            throw error;
          }
        }
      : undefined;

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 16_384,
    return503OnClosing: true,
  });
  app.get('/', (_request, reply) => reply.redirect('/ui', 302));
  app.get('/healthz', async () => ({ status: 'ok' }));
  const feed = registerUiRoutes(app, {
    connecting,
    subjectPrefix: config.nats.subject_prefix,
    secret: options.secret,
    logger,
    standing,
    limitsNote,
    usageStream: config.nats.usage_stream.name,
    intervals: options.intervals,
    alwaysOn: true,
  });
  const url = await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? DEFAULT_UI_PORT });
  logger.info({ address: url, secret_required: options.secret !== undefined }, 'operations page listening at /ui');
  return {
    app,
    url,
    feed,
    async close() {
      await app.close();
      await (await limiter?.catch(() => undefined))?.close();
      const connection: NatsConnection | undefined = await connecting.catch(() => undefined);
      if (connection !== undefined && !connection.isClosed()) await connection.drain().catch(() => undefined);
    },
  };
}

export const command: Command = {
  name: 'ui',
  summary: 'serve the operations page (/ui): services, traffic, spend, deployments, limits, live events',
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
    const server = await startUiServer({
      config,
      servers: values.nats ?? natsUrlFromEnv(),
      secret: secretFromEnv(process.env),
      ...(values.host !== undefined ? { host: values.host } : {}),
      ...(port !== undefined ? { port } : {}),
    });
    process.stderr.write(`llm-proxy ui: the operations page is at ${server.url}/ui\n`);
    return closeOnSignal(() => server.close());
  },
};
