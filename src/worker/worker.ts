import { readFileSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/nats-core';
import { Svcm, type Service } from '@nats-io/services';
import type { ResolvedConfig } from '../config/load.js';
import { QUEUE_GROUPS, subjectsFor, type Subjects } from '../contract/subjects.js';
import {
  configFingerprint,
  createLimiter,
  createLimitHooks,
  DIMENSIONS,
  SCOPE_KINDS,
  type Limiter,
} from '../limits/index.js';
import { createProviders, type ProviderSet } from '../providers/registry.js';
import { createRouter } from '../router/index.js';
import type { Router } from '../router/types.js';
import { connectToNats } from '../bus/connect.js';
import { createLogger, type Logger } from '../telemetry/logger.js';
import { estimatePromptTokens } from '../usage/tokens.js';
import { UsagePublisher } from '../usage/publisher.js';
import { CallerCheck, KeyDirectory, SecretCheck, secretFromEnv } from '../auth/index.js';
import { WorkerCounters, workerStats, type WorkerStats } from './counters.js';
import { addModelsEndpoint, logConnectionStatus, subscribeCancel, subscribeNodes } from './endpoints.js';
import { GatewayMetrics } from '../telemetry/metrics.js';
import type { Readiness } from '../telemetry/process-server.js';
import { workerReadiness } from './readiness.js';
import type { MeterProvider } from '@opentelemetry/api';
import type { RequestHooks } from './hooks.js';
import { RequestIntake } from './intake.js';
import { RequestPipeline } from './pipeline.js';
import { createResponseCache } from '../cache/index.js';
import { BusModels } from './bus-models.js';
import { subscribeCachePurge } from './cache-purge.js';
import { createShutdown, IdleWatch, type ShutdownReport } from './shutdown.js';

export type { ShutdownReport } from './shutdown.js';
export { CANCEL_NOT_FOUND_DELAY_MS, type WorkerModelsReply } from './endpoints.js';

export const SERVICE_NAME = 'llm-proxy';

/** The package version, read once (the same relative path works from src/ and dist/). */
export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
      .version;
  } catch {
    return '0.0.0';
  }
})();

/** `kind:dimension` keys of every scope kind, at 0. */
function zeroed(dimensions: readonly string[]): Record<string, number> {
  return Object.fromEntries(SCOPE_KINDS.flatMap((kind) => dimensions.map((dimension) => [`${kind}:${dimension}`, 0])));
}

export interface WorkerOptions {
  config: ResolvedConfig;
  /** An open connection to use; the worker then leaves it open on stop. Else it connects itself. */
  connection?: NatsConnection;
  /** NATS URL(s) when the worker connects itself; default `NATS_URL` or nats://127.0.0.1:4222. */
  servers?: string | string[];
  env?: NodeJS.ProcessEnv;
  /** Default: a pino logger at `logging.level` writing JSON lines to stdout. */
  logger?: Logger;
  /**
   * `X-Internal-Secret` value required on requests, models and cancels; default `LLM_PROXY_SECRET`
   * (set but empty is refused: startWorker throws); `null` = none.
   */
  secret?: string | null;
  /** Admission/settlement hooks; default: the limits of `config.limits` (none when `limits.enabled` is false). */
  hooks?: RequestHooks;
  /** Default: `createProviders(config)`; closed on stop only when the worker made them. */
  providers?: ProviderSet;
  /** Default: `createRouter({config, providers})`. */
  router?: Router;
  /** Where the worker's metrics go (an OpenTelemetry SDK's meter provider); none: no metrics are recorded. */
  meterProvider?: MeterProvider | undefined;
}

export interface Worker {
  /** Also the service id in `$SRV.INFO` and `worker_id` in events. */
  readonly id: string;
  readonly connection: NatsConnection;
  readonly subjects: Subjects;
  readonly router: Router;
  readonly publisher: UsagePublisher;
  stats(): WorkerStats;
  /** Whether it can serve now (`/readyz`): NATS, the usage stream, held events, deployments. */
  ready(): Promise<Readiness>;
  /** Graceful stop: stop taking requests, finish those in flight, flush events, drain. Idempotent. */
  stop(options?: { drainTimeoutMs?: number }): Promise<ShutdownReport>;
  /** Resolves when the worker stopped (through `stop()` or because its connection closed). */
  readonly stopped: Promise<ShutdownReport>;
}

/**
 * Start one worker: connect (unless given a connection), make sure the usage
 * stream exists, register the `llm-proxy` micro-service (PING/INFO/STATS and
 * `llm.proxy.models`), subscribe `llm.proxy.request` in queue group
 * `llm-proxy` and `llm.proxy.cancel` (every worker).
 */
export async function startWorker(options: WorkerOptions): Promise<Worker> {
  const { config } = options;
  const env = options.env ?? process.env;
  // Before connecting: a secret that cannot be right stops the start.
  const secret = new SecretCheck(options.secret === null ? undefined : (options.secret ?? secretFromEnv(env)));
  const logger = options.logger ?? createLogger({ level: config.logging.level });
  const ownsConnection = options.connection === undefined;
  if (ownsConnection)
    logger.info(
      { servers: options.servers ?? env.NATS_URL ?? 'nats://127.0.0.1:4222' },
      'connecting to NATS (retrying until it answers)',
    );
  const connection =
    options.connection ??
    (await connectToNats({ servers: options.servers, nats: config.nats, env, name: `${SERVICE_NAME}-worker` }));
  const subjects = subjectsFor(config.nats.subject_prefix);
  const ownsProviders = options.providers === undefined;
  const providerSet = options.providers ?? createProviders(config);
  const router = options.router ?? createRouter({ config, providers: providerSet.providers });
  const counters = new WorkerCounters();
  const startedAt = new Date().toISOString();

  const publisher = new UsagePublisher({
    connection,
    streamSubject: subjects.usageAll,
    subjectFor: (token) => subjects.usageFor(token),
    stream: config.nats.usage_stream,
    logger: logger.child({ component: 'usage' }),
  });
  try {
    await publisher.ensureStream();
  } catch (error) {
    // Not fatal: events are kept and the stream is created on the first retry that reaches JetStream.
    logger.error(
      { err: error, stream: config.nats.usage_stream.name },
      'usage stream could not be checked or created; events will be held and retried',
    );
  }

  // Limits are on unless switched off: with them off no hook runs at all (nothing on the hot path).
  let limiter: Limiter | undefined;
  let hooks: RequestHooks = options.hooks ?? {};
  if (options.hooks === undefined && config.limits.enabled) {
    limiter = await createLimiter(config.limits, { nats: connection, env });
    hooks = createLimitHooks(limiter, { models: config.models, limits: config.limits, estimatePromptTokens });
    // The fingerprint is what `llm-proxy limits` shows as the workers' limits config.
    logger.info({ backend: limiter.backend, limits_config: configFingerprint(config.limits) }, 'limits enabled');
  }

  // Per-agent keys: every record held in memory, kept current by a watch (auth/key-directory.ts).
  let directory: KeyDirectory | undefined;
  if (config.auth.mode !== 'secret') {
    directory = new KeyDirectory({
      connection,
      bucket: config.auth.keys_bucket,
      logger: logger.child({ component: 'keys' }),
    });
    // Not fatal when the store cannot be read yet: requests needing a key are refused until it can.
    await directory.start(config.auth.key_store_wait_ms);
    if (limiter === undefined)
      logger.warn("auth.mode uses keys but limits are off: the keys' own limits (rpm, tpm, budgets) are not applied");
  }
  const auth = new CallerCheck({
    mode: config.auth.mode,
    secret,
    directory,
    waitMs: config.auth.key_store_wait_ms,
  });

  let stats: () => WorkerStats = () => {
    throw new Error('not started');
  };
  const service: Service = await new Svcm(connection).add({
    name: SERVICE_NAME,
    version: VERSION,
    description: 'LLM gateway worker: chat completions over NATS',
    queue: QUEUE_GROUPS.workers,
    metadata: { request_subject: subjects.request, models_subject: subjects.models, cancel_subject: subjects.cancel },
    // The framework cannot see async work; our own counters go in each endpoint's `data`.
    statsHandler: () => Promise.resolve(stats()),
  });
  const workerId = service.info().id;
  const workerLogger = logger.child({ worker_id: workerId });

  // Shared by every worker (cache.backend, default the JetStream KV bucket), with this worker's memory in front.
  const cache = config.cache.enabled
    ? createResponseCache(config.cache, { nats: connection, logger: workerLogger })
    : undefined;

  // Metrics only for a meter provider given (the CLI's, when something reads them): none, nothing recorded.
  const metrics =
    options.meterProvider === undefined
      ? undefined
      : new GatewayMetrics({
          models: config.models,
          agentLabel: config.telemetry.agent_label,
          meterProvider: options.meterProvider,
        });
  const unobserve = metrics?.observe({
    inFlight: () => counters.inFlight,
    usageEvents: () => publisher.counters,
    // Every scope kind and dimension from the start (at 0), so that the first refusal is an increase too.
    limitRefusals: () => (limiter === undefined ? {} : { ...zeroed(DIMENSIONS), ...limiter.counters().refusedBy }),
    limitBudgetNear: () =>
      limiter === undefined ? {} : { ...zeroed(['daily_usd', 'monthly_usd']), ...limiter.counters().budgetNear },
    deployments: () =>
      router.health().map((deployment) => ({
        model: deployment.model,
        provider: deployment.provider,
        deployment: deployment.physical_name,
        coolingDown: deployment.state === 'cooling_down',
      })),
    // Counters kept by the stores, read without I/O (never the shared store's stats(), which may ask the server).
    cache: () => cache?.store.counters(),
  });

  // The models offered on the bus, as heard from the other workers (forward.ts's error code when none is left).
  const busModels = new BusModels({
    worker_id: workerId,
    node: config.worker.node,
    models: [...config.models.keys()],
    fallbacks: Object.fromEntries(
      [...config.models.values()]
        .filter((model) => model.fallbacks.length > 0)
        .map((model) => [model.name, model.fallbacks]),
    ),
  });
  // What takes a place in max_in_flight: the requests in flight but those passed on to another worker.
  const busy = () => counters.inFlight - counters.relaying;
  const pipeline = new RequestPipeline({
    forward: { connection, subjectFor: (model) => subjects.modelFor(model), busModels },
    onRelay: () => intake.finished(busy()),
    connection,
    config,
    router,
    publisher,
    auth,
    cache,
    hooks,
    counters,
    logger: workerLogger,
    workerId,
    maxRequestBytes: config.worker.max_request_bytes ?? connection.info?.max_payload ?? 1024 * 1024,
    heartbeatMs: config.worker.heartbeat_ms,
    metrics,
  });

  const idle = new IdleWatch(counters);
  const intake = new RequestIntake({
    connection,
    // The seed's subject, and one per model this worker serves (issue 19: a request sent to its model's
    // subject reaches only a worker that has the model).
    subjects: [subjects.request, ...[...config.models.keys()].map((model) => subjects.modelFor(model))],
    queue: QUEUE_GROUPS.workers,
    maxInFlight: config.worker.max_in_flight,
    logger: workerLogger,
    onMessage: (message) => {
      const handled = pipeline.handle(message);
      intake.started(busy());
      void handled
        .catch((failure: unknown) =>
          workerLogger.error({ err: failure }, 'request handling failed outside the pipeline'),
        )
        .finally(() => {
          intake.finished(busy());
          idle.requestDone();
        });
    },
  });

  stats = () =>
    workerStats({
      workerId,
      startedAt,
      counters,
      maxInFlight: config.worker.max_in_flight,
      intake,
      publisher,
      limiter,
    });

  const endpointParts = { subjects, auth, counters, workerId, logger: workerLogger };
  addModelsEndpoint(service, router, endpointParts);
  const nodesSubscription = subscribeNodes(connection, router, endpointParts, {
    node: config.worker.node,
    version: VERSION,
    startedAt,
    maxInFlight: config.worker.max_in_flight,
  });
  const cancelSubscription = subscribeCancel(connection, pipeline, endpointParts);
  busModels.start(connection, subjects, workerLogger);
  // `llm-proxy cache purge` empties every worker's memory tier too.
  const purgeSubscription =
    cache === undefined
      ? undefined
      : subscribeCachePurge(connection, subjects.cachePurge, {
          cache: cache.store,
          auth,
          workerId,
          logger: workerLogger,
        });
  intake.open();
  await connection.flush();
  let natsConnected = true;
  logConnectionStatus(connection, workerLogger, {
    disconnected: () => {
      natsConnected = false;
    },
    reconnected: () => {
      natsConnected = true;
      metrics?.reconnected();
    },
  });

  workerLogger.info(
    {
      version: VERSION,
      node: config.worker.node,
      server: connection.getServer(),
      request_subject: subjects.request,
      queue: QUEUE_GROUPS.workers,
      models: [...config.models.keys()],
      max_in_flight: config.worker.max_in_flight,
      secret_required: secret.enabled,
      auth_mode: config.auth.mode,
    },
    'worker started',
  );

  const closers: Array<{ name: string; close: () => Promise<void> }> = [
    { name: 'the metrics', close: async () => unobserve?.() },
  ];
  if (limiter !== undefined) closers.push({ name: 'the limiter', close: () => limiter.close() });
  if (cache !== undefined) closers.push({ name: 'the response cache', close: () => cache.store.close() });
  closers.push({
    name: 'the bus models',
    close: async () => {
      busModels.stop();
      purgeSubscription?.unsubscribe();
    },
  });
  if (directory !== undefined) closers.push({ name: 'the key directory', close: () => directory.close() });
  if (ownsProviders) closers.push({ name: 'provider pools', close: () => providerSet.close() });
  const { stop, stopped } = createShutdown({
    connection,
    ownsConnection,
    intake,
    service,
    cancelSubscription,
    nodesSubscription,
    pipeline,
    counters,
    idle,
    publisher,
    closers,
    drainTimeoutMs: config.worker.drain_timeout_ms,
    logger: workerLogger,
  });

  return {
    id: workerId,
    connection,
    subjects,
    router,
    publisher,
    stats: () => stats(),
    ready: () =>
      workerReadiness({
        connection,
        natsConnected: () => natsConnected,
        publisher,
        router,
        usageStream: config.nats.usage_stream.name,
      }),
    stop,
    stopped,
  };
}
