/**
 * The HTTP front door: a stateless process that turns HTTP into the bus protocol (DESIGN.md, "HTTP
 * front door"): the seed's API, OpenAI's, and health. It is a bus client like any agent, through the
 * typed client of src/client; any number of them can run behind a load balancer.
 *
 * **Decision:** fastify, a well-kept HTTP server made for Node services that logs with pino as the
 * rest of llm-proxy does, and whose schema-less JSON routes and hooks cost little per request.
 */
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { NatsConnection } from '@nats-io/nats-core';
import { SecretCheck } from '../auth/index.js';
import { presentedKey, presentedSecret } from './credentials.js';
import type { HttpConfig } from '../config/http-schema.js';
import { ProxyError } from '../contract/errors.js';
import type { Logger } from '../telemetry/logger.js';
import { BusLink } from './bus-link.js';
import { sendError, type Dialect } from './chat-relay.js';
import { registerHealthRoutes } from './health-routes.js';
import { registerMetricsRoutes } from './metrics-routes.js';
import type { MeterProvider } from '@opentelemetry/api';
import type { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OPENAI_DIALECT, registerOpenAIRoutes } from './openai-routes.js';
import { registerSeedRoutes, SEED_DIALECT } from './seed-routes.js';
import { registerUiRoutes } from '../ui/ui-routes.js';

export interface FrontDoorOptions {
  http: HttpConfig;
  /** The connection, connecting or connected (the front door listens for HTTP meanwhile). */
  connecting: Promise<NatsConnection>;
  subjectPrefix: string;
  /** The shared secret: required from HTTP callers (`X-Internal-Secret` or `Authorization: Bearer`) and sent on to the workers. */
  secret: string | undefined;
  /**
   * Per-agent keys are on (`auth.mode` keys or mixed): a `Bearer llmp_…` goes on to the workers, which
   * check it, instead of being taken for the secret. Off (the default, `auth.mode: secret`), a key opens nothing here.
   */
  keys?: boolean;
  logger: Logger;
  /** Overrides `http.port` (0: any free port). */
  port?: number;
  host?: string;
  /** Serve `GET /metrics` (behind the secret) from this exporter, and time every HTTP request. */
  metrics?: { prometheus: PrometheusExporter; meterProvider?: MeterProvider };
}

export interface FrontDoor {
  readonly app: FastifyInstance;
  /** `http://host:port` it listens on. */
  readonly url: string;
  readonly bus: BusLink;
  close(): Promise<void>;
}

/** NATS's advised ceiling for max_payload: no request larger than this can reach a worker anyway. */
const DEFAULT_BODY_LIMIT_BYTES = 8 * 1024 * 1024;

/** The routes, for 405 answers with `Allow` (fastify answers an unknown method with 404). */
const ROUTES: Array<{ pattern: RegExp; methods: string[] }> = [
  { pattern: /^\/internal\/llm\/proxy$/, methods: ['POST'] },
  { pattern: /^\/internal\/llm\/(models|usage)$/, methods: ['GET', 'HEAD'] },
  { pattern: /^\/v1\/chat\/completions$/, methods: ['POST'] },
  { pattern: /^\/v1\/models(\/.+)?$/, methods: ['GET', 'HEAD'] },
  { pattern: /^\/(healthz|readyz|metrics)$/, methods: ['GET', 'HEAD'] },
];

/** OpenAI's envelope under `/v1`, DESIGN.md's error body everywhere else. */
function dialectFor(url: string): Dialect {
  return url.startsWith('/v1/') ? OPENAI_DIALECT : SEED_DIALECT;
}

function pathOf(request: FastifyRequest): string {
  const url = request.raw.url ?? '/';
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}

/** Fastify's own refusals (bad JSON, a body over the limit, a wrong content type) as DESIGN.md's codes. */
function fromFastifyError(error: FastifyError): ProxyError {
  if (error.statusCode === 413 || error.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
    return new ProxyError('payload_too_large', `request body is larger than the limit (${error.message})`);
  if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE')
    return new ProxyError('invalid_request', 'Content-Type must be application/json');
  if (error.code === 'FST_ERR_CTP_EMPTY_JSON_BODY')
    return new ProxyError('invalid_request', 'request body is empty: send a JSON object');
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500)
    return new ProxyError('invalid_request', `request body is not valid JSON (${error.message})`);
  return new ProxyError('internal', 'internal error in the front door');
}

export async function startFrontDoor(options: FrontDoorOptions): Promise<FrontDoor> {
  const { http, logger } = options;
  const secret = new SecretCheck(options.secret);
  const bus = new BusLink(options.connecting, { secret: options.secret, subjectPrefix: options.subjectPrefix, logger });
  // The front door may start before NATS answers, so the server's max_payload is not known yet: the
  // typed client refuses a request over it (413) before sending; this bound is the most ever read.
  const bodyLimit = http.body_limit ?? DEFAULT_BODY_LIMIT_BYTES;
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit,
    requestTimeout: http.request_timeout_ms,
    keepAliveTimeout: http.keep_alive_timeout_ms,
    return503OnClosing: true,
    // Node checks the headers and request timeouts only every connectionsCheckingInterval (30 s by default).
    http: {
      headersTimeout: http.headers_timeout_ms,
      requestTimeout: http.request_timeout_ms,
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(http.headers_timeout_ms / 2))),
    },
  });
  // Only JSON bodies: anything else is refused with a clear error (not read as a string).
  app.removeContentTypeParser('text/plain');

  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const path = pathOf(request);
    if (path === '/healthz' || path === '/readyz') return;
    if (path === '/ui' || path.startsWith('/ui/')) return; // the operations page checks its own sessions (src/ui/ui-auth.ts)
    // A per-agent key goes on to the workers, which hold the key store and decide. Usage figures of
    // every agent are not a key holder's to read: that route still needs the secret.
    // `/metrics` is answered here, not by a worker: it needs the secret whatever else is presented.
    if (
      options.keys === true &&
      path !== '/internal/llm/usage' &&
      path !== '/metrics' &&
      presentedKey(request) !== undefined
    )
      return;
    if (!secret.allowsValue(presentedSecret(request))) {
      sendError(
        reply,
        dialectFor(path),
        new ProxyError('unauthorized', 'missing or wrong X-Internal-Secret header (or Authorization: Bearer <secret>)'),
      );
      return reply;
    }
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const failure = fromFastifyError(error);
    if (failure.code === 'internal') request.log.error({ err: error }, 'front door request failed');
    sendError(reply, dialectFor(pathOf(request)), failure);
  });

  app.setNotFoundHandler((request, reply) => {
    const path = pathOf(request);
    const route = ROUTES.find((candidate) => candidate.pattern.test(path));
    const dialect = dialectFor(path);
    if (route !== undefined) {
      const answer = dialect.error(
        new ProxyError(
          'invalid_request',
          `${request.method} is not allowed on ${path}; use ${route.methods.join(' or ')}`,
        ),
      );
      void reply
        .code(405)
        .headers({ ...answer.headers, allow: route.methods.join(', ') })
        .send(answer.body);
      return;
    }
    const answer = dialect.error(new ProxyError('invalid_request', `no route ${request.method} ${path}`));
    void reply.code(404).headers(answer.headers).send(answer.body);
  });

  if (options.metrics !== undefined)
    registerMetricsRoutes(app, options.metrics.prometheus, options.metrics.meterProvider);
  registerHealthRoutes(app, bus);
  registerSeedRoutes(app, bus, http.heartbeat_ms);
  registerOpenAIRoutes(app, bus, http.heartbeat_ms);
  registerUiRoutes(app, options);

  const address = await app.listen({ host: options.host ?? http.host, port: options.port ?? http.port });
  logger.info(
    { address, body_limit: bodyLimit, secret_required: secret.enabled, keys: options.keys === true },
    'front door listening',
  );
  return {
    app,
    url: address,
    bus,
    async close() {
      await app.close();
      await bus.close();
    },
  };
}
