/**
 * `llm-proxy dev`: the one-command start for a new user. Uses the NATS
 * server at NATS_URL when one answers; otherwise starts `nats-server -js`
 * as a child process (store in .llm-proxy/nats) when it is installed, or says
 * exactly how to install it. Then runs one usage aggregator (so that
 * `llm-proxy usage` answers), the HTTP front door on 127.0.0.1:7007, a
 * PostgreSQL usage sink when a database is configured, and one worker in the foreground.
 */
import type { Command } from '../command.js';
import { parseCommandLine, parsePortFlag } from '../command.js';
import { configPathFromEnv } from '../../config/index.js';
import {
  findOnPath,
  isNatsReachable,
  NATS_INSTALL_HELP,
  startDevNatsServer,
  type DevNatsServer,
} from '../../bus/dev-server.js';
import { natsUrlFromEnv } from '../../bus/connect.js';
import { startUsageAggregator, type RunningAggregator } from './aggregator.js';
import { startHttpFrontDoor } from './http.js';
import { resolvePostgresSink, startPostgresSink, type RunningSink } from './sink.js';
import { redactUrl } from '../../config/redact-url.js';
import type { FrontDoor } from '../../http/front-door.js';
import { secretFromEnv } from '../../auth/index.js';
import { loadConfigOrExplain, runWorkerUntilSignal } from './worker.js';

const help = `Usage: llm-proxy dev [--config FILE] [--nats URL] [--store DIR] [--port PORT] [--no-aggregator] [--no-http] [--no-sink]

Starts everything needed to try llm-proxy on one machine:
  1. NATS: uses the server at --nats / $NATS_URL (default nats://127.0.0.1:4222) when one
     answers; otherwise starts \`nats-server -js\` there as a child process (JetStream store in
     --store, default .llm-proxy/nats) and stops it on exit. When nats-server is not installed,
     prints how to install it and exits 1.
  2. One usage aggregator (answers \`llm-proxy usage\`), unless --no-aggregator.
  3. The HTTP front door (the seed's API and OpenAI's /v1) on http.host:http.port
     (127.0.0.1:7007), unless --no-http.
  4. A PostgreSQL usage sink (\`llm-proxy sink postgres\`) when a database is configured
     ($LLM_PROXY_POSTGRES_URL or usage_sink.postgres.url), unless --no-sink.
  5. One worker with the config file, in the foreground (Ctrl-C drains and exits).

Options:
  --config FILE   config file (default: $LLM_PROXY_CONFIG, else config.yaml)
  --nats URL      where NATS is or should be started (default: $NATS_URL, else nats://127.0.0.1:4222)
  --store DIR     JetStream store of a server started here (default: .llm-proxy/nats)
  --port PORT     the front door's port (default: http.port, 7007)
  --no-aggregator do not start the usage aggregator
  --no-http       do not start the HTTP front door
  --no-sink       do not start the PostgreSQL usage sink

Example:
  OPENAI_API_KEY=sk-... llm-proxy dev
  # then, in another shell:  llm-proxy chat --model gpt-4.1-mini "Hello!"
`;

/** How long dev's sink waits for its database at start before it gives up (the worker runs regardless). */
const DEV_SINK_START_WINDOW_MS = 15_000;

export const command: Command = {
  name: 'dev',
  summary: 'start NATS (if none is running), a usage aggregator, the HTTP front door and one worker: the quick start',
  help,
  async run(argv) {
    const { values } = parseCommandLine({
      args: argv,
      options: {
        config: { type: 'string' },
        nats: { type: 'string' },
        store: { type: 'string' },
        port: { type: 'string' },
        'no-aggregator': { type: 'boolean' },
        'no-http': { type: 'boolean' },
        'no-sink': { type: 'boolean' },
      },
      allowPositionals: false,
    });
    const port = parsePortFlag(values.port);
    const config = loadConfigOrExplain(values.config ?? configPathFromEnv());
    if (config === undefined) return 1;
    // A secret set but empty is refused before anything starts.
    secretFromEnv(process.env);
    const url = values.nats ?? natsUrlFromEnv();

    let devServer: DevNatsServer | undefined;
    if (await isNatsReachable(url)) {
      process.stderr.write(`llm-proxy dev: using the NATS server at ${url}\n`);
    } else {
      const executable = findOnPath('nats-server');
      if (executable === undefined) {
        process.stderr.write(`${NATS_INSTALL_HELP}\n`);
        return 1;
      }
      devServer = await startDevNatsServer({
        url,
        executable,
        ...(values.store !== undefined ? { storeDir: values.store } : {}),
      });
      process.stderr.write(
        `llm-proxy dev: no NATS answered at ${url}; started nats-server (pid ${devServer.pid}, JetStream store ${devServer.storeDir}); it stops when this command does\n`,
      );
    }
    const servers = devServer?.url ?? url;
    let aggregator: RunningAggregator | undefined;
    let frontDoor: FrontDoor | undefined;
    let sink: Promise<RunningSink | undefined> | undefined;
    try {
      const sinkConfig = values['no-sink'] === true ? undefined : resolvePostgresSink(config, {});
      if (sinkConfig !== undefined) {
        const where = redactUrl(sinkConfig.url);
        // In the background: a database that is slow to answer does not hold the worker back.
        sink = startPostgresSink(config, sinkConfig, { servers, startWindowMs: DEV_SINK_START_WINDOW_MS }).then(
          (running) => {
            process.stderr.write(`llm-proxy dev: usage sink writing every usage event to PostgreSQL at ${where}\n`);
            return running;
          },
          (error: unknown) => {
            process.stderr.write(
              `llm-proxy dev: the usage sink did not start (PostgreSQL at ${where}): ${error instanceof Error ? error.message : String(error)}\n`,
            );
            return undefined;
          },
        );
      }
      if (values['no-aggregator'] !== true) aggregator = await startUsageAggregator(config, servers);
      if (values['no-http'] !== true) {
        frontDoor = await startHttpFrontDoor(config, servers, port === undefined ? {} : { port });
        process.stderr.write(
          `llm-proxy dev: HTTP front door on ${frontDoor.url} (POST /internal/llm/proxy, POST /v1/chat/completions)\n`,
        );
      }
      return await runWorkerUntilSignal(config, servers);
    } finally {
      await frontDoor?.close().catch(() => undefined);
      await (await sink)?.stop().catch(() => undefined);
      await aggregator
        ?.stop()
        .catch((error: unknown) => aggregator?.logger.error({ err: error }, 'aggregator did not stop cleanly'));
      await devServer?.stop();
    }
  },
};
