import { readFileSync } from 'node:fs';
import { headers as createHeaders, type Msg, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import { Svcm, type Service, type ServiceMsg } from '@nats-io/services';
import type { ResolvedConfig } from '../config/load.js';
import { ProxyError, toErrorReply } from '../contract/errors.js';
import { REQUEST_ID_PATTERN } from '../contract/client-ids.js';
import type { ModelsReply } from '../contract/models.js';
import { HEADERS, QUEUE_GROUPS, subjectsFor, type Subjects } from '../contract/subjects.js';
import { createLimiter, createLimitHooks, type Limiter } from '../limits/index.js';
import { createProviders, type ProviderSet } from '../providers/registry.js';
import { createRouter } from '../router/index.js';
import type { DeploymentHealth, Router } from '../router/types.js';
import { connectToNats } from '../bus/connect.js';
import { createLogger, type Logger } from '../telemetry/logger.js';
import { estimatePromptTokens } from '../usage/tokens.js';
import { UsagePublisher } from '../usage/publisher.js';
import { readHeaders, SecretCheck, secretFromEnv } from '../auth/index.js';
import { WorkerCounters, type WorkerStats } from './counters.js';
import type { RequestHooks } from './hooks.js';
import { RequestIntake } from './intake.js';
import { RequestPipeline } from './request-handler.js';
import { ResponseCache } from './response-cache.js';

export const SERVICE_NAME = 'llm-proxy';

/** The package version, read once (the same relative path works from src/ and dist/). */
export const VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
})();

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
}

/** The `llm.proxy.models` reply; `health` only when the request asked `{"health": true}`. */
export interface WorkerModelsReply extends ModelsReply {
  health?: DeploymentHealth[];
}

export interface ShutdownReport {
  /** Requests in flight when stop began. */
  inFlightAtStop: number;
  /** Requests still running at the drain timeout, then aborted (each still answered). */
  aborted: number;
  /** Usage events not acked by the end (logged in full). */
  unpublishedEvents: number;
}

export interface Worker {
  /** Also the service id in `$SRV.INFO` and `worker_id` in events. */
  readonly id: string;
  readonly connection: NatsConnection;
  readonly subjects: Subjects;
  readonly router: Router;
  readonly publisher: UsagePublisher;
  stats(): WorkerStats;
  /** Graceful stop: stop taking requests, finish those in flight, flush events, drain. Idempotent. */
  stop(options?: { drainTimeoutMs?: number }): Promise<ShutdownReport>;
  /** Resolves when the worker stopped (through `stop()` or because its connection closed). */
  readonly stopped: Promise<ShutdownReport>;
}

/** How long a worker that does not have a cancelled request waits before saying so (README, "Cancelling"). */
export const CANCEL_NOT_FOUND_DELAY_MS = 500;

/** An answer on a subject other than the request subject; a requester that has gone away is not an error. */
function respondQuietly(message: Msg, body: unknown): void {
  try {
    message.respond(JSON.stringify(body));
  } catch {
    // The connection is closing: the requester times out, as it would have anyway.
  }
}

/** Why a message on models or cancel is refused (a header block that cannot be read, a missing or wrong secret), or undefined. */
function refusalOf(message: Msg, secret: SecretCheck): ProxyError | undefined {
  const { headers, malformed } = readHeaders(message);
  if (malformed) return new ProxyError('invalid_request', 'the message\'s header block is malformed');
  return secret.allows(headers) ? undefined : new ProxyError('unauthorized', `missing or wrong ${HEADERS.secret} header`);
}

/** A coded error answer (DESIGN.md's error body and the micro-service headers). */
function respondWithError(message: Msg, error: ProxyError): void {
  const body = toErrorReply(error);
  const headers = createHeaders();
  headers.set(HEADERS.serviceError, body.error.message);
  headers.set(HEADERS.serviceErrorCode, String(body.error.status));
  try {
    message.respond(JSON.stringify(body), { headers });
  } catch {
    // As above.
  }
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
  if (ownsConnection) logger.info({ servers: options.servers ?? env.NATS_URL ?? 'nats://127.0.0.1:4222' }, 'connecting to NATS (retrying until it answers)');
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
    logger.error({ err: error, stream: config.nats.usage_stream.name }, 'usage stream could not be checked or created; events will be held and retried');
  }

  // Limits are on unless switched off: with them off no hook runs at all (nothing on the hot path).
  let limiter: Limiter | undefined;
  let hooks: RequestHooks = options.hooks ?? {};
  if (options.hooks === undefined && config.limits.enabled) {
    limiter = await createLimiter(config.limits, { nats: connection, env });
    hooks = createLimitHooks(limiter, { models: config.models, limits: config.limits, estimatePromptTokens });
    logger.info({ backend: limiter.backend }, 'limits enabled');
  }

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

  const pipeline = new RequestPipeline({
    connection,
    config,
    router,
    publisher,
    secret,
    cache: config.cache.enabled ? new ResponseCache({ maxEntries: config.cache.max_entries, ttlMs: config.cache.ttl_ms }) : undefined,
    hooks,
    counters,
    logger: workerLogger,
    workerId,
    maxRequestBytes: config.worker.max_request_bytes ?? connection.info?.max_payload ?? 1024 * 1024,
    heartbeatMs: config.worker.heartbeat_ms,
  });

  let idleWaiters: Array<() => void> = [];
  const intake = new RequestIntake({
    connection,
    subject: subjects.request,
    queue: QUEUE_GROUPS.workers,
    maxInFlight: config.worker.max_in_flight,
    logger: workerLogger,
    onMessage: (message) => {
      const handled = pipeline.handle(message);
      intake.started(counters.inFlight);
      void handled
        .catch((failure: unknown) => workerLogger.error({ err: failure }, 'request handling failed outside the pipeline'))
        .finally(() => {
          intake.finished(counters.inFlight);
          if (counters.inFlight === 0) {
            const waiters = idleWaiters;
            idleWaiters = [];
            for (const resolve of waiters) resolve();
          }
        });
    },
  });

  stats = () => ({
    worker_id: workerId,
    started: startedAt,
    requests: counters.requests,
    ok: counters.ok,
    errors: counters.errors,
    by_code: { ...counters.byCode },
    streams: counters.streams,
    cache_hits: counters.cacheHits,
    in_flight: counters.inFlight,
    in_flight_peak: counters.inFlightPeak,
    max_in_flight: config.worker.max_in_flight,
    paused: intake.paused,
    pauses: intake.pauses,
    models_requests: counters.modelsRequests,
    cancels: counters.cancels,
    cancels_refused: counters.cancelsRefused,
    usage_events: {
      published: publisher.counters.published,
      duplicates: publisher.counters.duplicates,
      failed_attempts: publisher.counters.failedAttempts,
      pending: publisher.counters.pending,
      dropped: publisher.counters.dropped,
      dead_lettered: publisher.counters.deadLettered,
    },
    ...(limiter === undefined ? {} : { limits: { backend: limiter.backend, ...limiter.counters() } }),
  });

  service.addEndpoint('models', {
    subject: subjects.models,
    queue: QUEUE_GROUPS.workers,
    metadata: { description: 'the models this worker can route; {"health": true} adds each deployment state' },
    handler: (_error: Error | null, message: ServiceMsg) => {
      counters.modelsRequests++;
      const refused = refusalOf(message, secret);
      if (refused !== undefined) {
        respondWithError(message, refused);
        return;
      }
      let withHealth = false;
      try {
        const body = message.data.length === 0 ? {} : (message.json() as { health?: unknown });
        withHealth = typeof body === 'object' && body !== null && body.health === true;
      } catch {
        // An unreadable body asks for the plain list.
      }
      const reply: WorkerModelsReply = { models: router.listModels(), worker_id: workerId };
      if (withHealth) reply.health = router.health();
      message.respond(JSON.stringify(reply));
    },
  });

  const cancelSubscription: Subscription = connection.subscribe(subjects.cancel, {
    callback: (error, message) => {
      if (error !== null) return;
      // A callback that throws stops nats.js's reader for the whole connection: never let one out.
      try {
        handleCancel(message);
      } catch (failure) {
        workerLogger.error({ err: failure }, 'cancel handling failed');
      }
    },
  });
  /**
   * `llm.proxy.cancel` reaches every worker. The one running the request aborts it and, when the
   * cancel was sent as a request, answers at once; a worker without it answers `cancelled: false`
   * only after CANCEL_NOT_FOUND_DELAY_MS, so that a requester gets the holder's answer first, and an
   * answer in any case.
   */
  const handleCancel = (message: Msg) => {
    const answers = message.reply !== undefined && message.reply !== '';
    const refused = refusalOf(message, secret);
    if (refused !== undefined) {
      counters.cancelsRefused++;
      if (answers) respondWithError(message, refused);
      return;
    }
    let requestId: unknown;
    try {
      requestId = (message.json() as { request_id?: unknown } | null)?.request_id;
    } catch {
      requestId = undefined;
    }
    if (typeof requestId !== 'string' || !REQUEST_ID_PATTERN.test(requestId)) {
      if (answers) respondWithError(message, new ProxyError('invalid_request', 'a cancel is {"request_id": "<the request\'s id>"} (1-128 visible ASCII characters)'));
      return;
    }
    const found = pipeline.cancel(requestId);
    if (found === 0) {
      if (answers) {
        const timer = setTimeout(() => respondQuietly(message, { request_id: requestId, cancelled: false, worker_id: workerId }), CANCEL_NOT_FOUND_DELAY_MS);
        timer.unref();
      }
      return;
    }
    counters.cancels++;
    workerLogger.info({ request_id: requestId }, 'request cancelled by the client');
    if (answers) respondQuietly(message, { request_id: requestId, cancelled: true, worker_id: workerId });
  };

  intake.open();
  await connection.flush();

  void (async () => {
    for await (const status of connection.status()) {
      if (status.type === 'disconnect') workerLogger.warn({ server: status.server }, 'disconnected from NATS; reconnecting');
      else if (status.type === 'reconnect') workerLogger.info({ server: status.server }, 'reconnected to NATS');
      else if (status.type === 'error') workerLogger.error({ err: status.error }, 'NATS connection error');
      else if (status.type === 'slowConsumer') workerLogger.warn({ subject: status.sub.getSubject() }, 'slow consumer');
    }
  })().catch(() => undefined);

  workerLogger.info(
    {
      version: VERSION,
      server: connection.getServer(),
      request_subject: subjects.request,
      queue: QUEUE_GROUPS.workers,
      models: [...config.models.keys()],
      max_in_flight: config.worker.max_in_flight,
      secret_required: secret.enabled,
    },
    'worker started',
  );

  let stopping: Promise<ShutdownReport> | undefined;
  let resolveStopped!: (report: ShutdownReport) => void;
  const stopped = new Promise<ShutdownReport>((resolve) => (resolveStopped = resolve));

  const waitForIdle = (timeoutMs: number): Promise<boolean> => {
    if (counters.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  };

  /**
   * Order matters (NATS-NOTES, "Shutdown"): `drain()` would finish dispatched
   * callbacks but not the async work they started. So: leave the queue group
   * (drain the request subscription), stop the service, finish the requests
   * in flight, publish their usage events, and only then drain the connection.
   */
  const stop = (stopOptions: { drainTimeoutMs?: number } = {}): Promise<ShutdownReport> => {
    if (stopping !== undefined) return stopping;
    stopping = (async () => {
      const drainTimeoutMs = stopOptions.drainTimeoutMs ?? config.worker.drain_timeout_ms;
      const inFlightAtStop = counters.inFlight;
      workerLogger.info({ in_flight: inFlightAtStop, drain_timeout_ms: drainTimeoutMs }, 'stopping: no new requests; finishing those in flight');
      if (!connection.isClosed()) {
        await intake.close();
        await service.stop().catch(() => undefined);
      }
      let aborted = 0;
      if (!(await waitForIdle(drainTimeoutMs))) {
        aborted = counters.inFlight;
        workerLogger.warn({ in_flight: aborted }, 'drain timeout: aborting the requests still running');
        pipeline.abortAll(new ProxyError('no_provider_available', 'the worker is shutting down', { retryable: true }));
        await waitForIdle(5_000);
      }
      if (!cancelSubscription.isClosed()) cancelSubscription.unsubscribe();
      const unpublishedEvents = connection.isClosed() ? publisher.pending : await publisher.flush(10_000);
      publisher.close();
      await limiter?.close().catch((error: unknown) => workerLogger.warn({ err: error }, 'closing the limiter failed'));
      if (ownsProviders) await providerSet.close().catch((error: unknown) => workerLogger.warn({ err: error }, 'closing provider pools failed'));
      if (ownsConnection && !connection.isClosed()) await connection.drain().catch(() => undefined);
      const report: ShutdownReport = { inFlightAtStop, aborted, unpublishedEvents };
      workerLogger.info(report, 'worker stopped');
      resolveStopped(report);
      return report;
    })();
    return stopping;
  };

  void connection.closed().then((error) => {
    if (stopping !== undefined) return;
    workerLogger.error({ err: error }, 'NATS connection closed; the worker stops');
    void stop({ drainTimeoutMs: 0 });
  });

  return {
    id: workerId,
    connection,
    subjects,
    router,
    publisher,
    stats: () => stats(),
    stop,
    stopped,
  };
}
