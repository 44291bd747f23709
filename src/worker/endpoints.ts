/**
 * The worker's subjects other than `llm.proxy.request` (intake.ts): the `models` endpoint of the
 * micro-service, the `cancel` and `nodes` subscriptions, and the connection's status log. A new
 * subscription or health check goes here, wired in worker.ts.
 */
import { hostname } from 'node:os';
import { headers as createHeaders, type Msg, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import type { Service, ServiceMsg } from '@nats-io/services';
import { type Caller, type CallerCheck, callerError, readHeaders } from '../auth/index.js';
import { REQUEST_ID_PATTERN } from '../contract/client-ids.js';
import { ProxyError, toErrorReply } from '../contract/errors.js';
import type { ModelInfo, ModelsReply, NodeInfo } from '../contract/models.js';
import { HEADERS, QUEUE_GROUPS, type Subjects } from '../contract/subjects.js';
import type { DeploymentHealth, Router } from '../router/types.js';
import type { Logger } from '../telemetry/logger.js';
import type { WorkerCounters } from './counters.js';
import type { RequestPipeline } from './pipeline.js';

/** The `llm.proxy.models` reply; `health` only when the request asked `{"health": true}`. */
export interface WorkerModelsReply extends ModelsReply {
  health?: DeploymentHealth[];
}

/** How long a worker that does not have a cancelled request waits before saying so (README, "Cancelling"). */
export const CANCEL_NOT_FOUND_DELAY_MS = 500;

interface EndpointParts {
  subjects: Subjects;
  auth: CallerCheck;
  counters: WorkerCounters;
  workerId: string;
  logger: Logger;
}

/** An answer on a subject other than the request subject; a requester that has gone away is not an error. */
function respondQuietly(message: Msg, body: unknown): void {
  try {
    message.respond(JSON.stringify(body));
  } catch {
    // The connection is closing: the requester times out, as it would have anyway.
  }
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
 * Who sent a models request or a cancel (the secret suffices for these, in every mode: ops tools hold
 * it), or why it is refused: a header block that cannot be read, missing or wrong credentials.
 */
async function callerOf(message: Msg, auth: CallerCheck): Promise<Caller | ProxyError> {
  const { headers, malformed } = readHeaders(message);
  if (malformed) return new ProxyError('invalid_request', "the message's header block is malformed");
  const caller = await auth.identify(headers, true);
  return callerError(caller) ?? caller;
}

/** `llm.proxy.models` (queue group `llm-proxy`): the routable models; `{"health": true}` adds each deployment's state. */
export function addModelsEndpoint(service: Service, router: Router, parts: EndpointParts): void {
  service.addEndpoint('models', {
    subject: parts.subjects.models,
    queue: QUEUE_GROUPS.workers,
    metadata: { description: 'the models this worker can route; {"health": true} adds each deployment state' },
    handler: async (_error: Error | null, message: ServiceMsg) => {
      parts.counters.modelsRequests++;
      const caller = await callerOf(message, parts.auth);
      if (caller instanceof ProxyError) {
        respondWithError(message, caller);
        return;
      }
      let withHealth = false;
      try {
        const body = message.data.length === 0 ? {} : (message.json() as { health?: unknown });
        withHealth = typeof body === 'object' && body !== null && body.health === true;
      } catch {
        // An unreadable body asks for the plain list.
      }
      const allowed = caller.key?.models;
      const reply: WorkerModelsReply = { models: visibleModels(router, allowed), worker_id: parts.workerId };
      if (withHealth) reply.health = router.health();
      message.respond(JSON.stringify(reply));
    },
  });
}

/** A key limited to some models (`allowed`) sees those only; the secret, or a key without a list, sees all. */
function visibleModels(router: Router, allowed: readonly string[] | null | undefined): ModelInfo[] {
  const models = router.listModels();
  return allowed == null ? models : models.filter((model) => allowed.includes(model.name));
}

/** What a `llm.proxy.nodes` reply says of the worker besides its models. */
export interface NodeIdentity {
  /** `worker.node`. */
  node: string;
  version: string;
  startedAt: string;
  maxInFlight: number;
  /** Default: `os.hostname()`. */
  host?: string;
}

/**
 * `llm.proxy.nodes` reaches every worker (no queue group): each answers with its {@link NodeInfo}, so
 * that a requester gathering the answers (`llm-proxy models`) sees which nodes serve which models.
 * Credentials as on `llm.proxy.models`: the secret, or a key (one limited to some models sees those
 * only, in `models` and `health`); a refusal is answered as an error by every worker.
 */
export function subscribeNodes(
  connection: NatsConnection,
  router: Router,
  parts: EndpointParts,
  identity: NodeIdentity,
): Subscription {
  const host = identity.host ?? hostname();
  const handle = async (message: Msg): Promise<void> => {
    if (message.reply === undefined || message.reply === '') return;
    parts.counters.modelsRequests++;
    const caller = await callerOf(message, parts.auth);
    if (caller instanceof ProxyError) {
      respondWithError(message, caller);
      return;
    }
    const allowed = caller.key?.models;
    const models = visibleModels(router, allowed);
    const names = new Set(models.map((model) => model.name));
    const reply: NodeInfo = {
      worker_id: parts.workerId,
      node: identity.node,
      host,
      version: identity.version,
      started_at: identity.startedAt,
      models,
      health: router.health().filter((row) => names.has(row.model)),
      in_flight: parts.counters.inFlight,
      max_in_flight: identity.maxInFlight,
    };
    respondQuietly(message, reply);
  };
  return connection.subscribe(parts.subjects.nodes, {
    callback: (error, message) => {
      if (error !== null) return;
      // As for cancels: a callback that throws would stop the connection's reader.
      handle(message).catch((failure: unknown) => parts.logger.error({ err: failure }, 'nodes request failed'));
    },
  });
}

/**
 * `llm.proxy.cancel` reaches every worker (no queue group). The one running the request aborts it
 * and, when the cancel was sent as a request, answers at once; a worker without it answers
 * `cancelled: false` only after CANCEL_NOT_FOUND_DELAY_MS, so that a requester gets the holder's
 * answer first, and an answer in any case.
 */
export function subscribeCancel(
  connection: NatsConnection,
  pipeline: Pick<RequestPipeline, 'cancel'>,
  parts: EndpointParts,
): Subscription {
  const handle = async (message: Msg): Promise<void> => {
    const answers = message.reply !== undefined && message.reply !== '';
    const caller = await callerOf(message, parts.auth);
    if (caller instanceof ProxyError) {
      parts.counters.cancelsRefused++;
      if (answers) respondWithError(message, caller);
      return;
    }
    let requestId: unknown;
    try {
      requestId = (message.json() as { request_id?: unknown } | null)?.request_id;
    } catch {
      requestId = undefined;
    }
    if (typeof requestId !== 'string' || !REQUEST_ID_PATTERN.test(requestId)) {
      if (answers)
        respondWithError(
          message,
          new ProxyError(
            'invalid_request',
            'a cancel is {"request_id": "<the request\'s id>"} (1-128 visible ASCII characters)',
          ),
        );
      return;
    }
    // With a key, only that key's requests; with the secret (or no auth), any.
    if (pipeline.cancel(requestId, caller.key?.id) === 0) {
      if (answers)
        setTimeout(
          () => respondQuietly(message, { request_id: requestId, cancelled: false, worker_id: parts.workerId }),
          CANCEL_NOT_FOUND_DELAY_MS,
        ).unref();
      return;
    }
    parts.counters.cancels++;
    parts.logger.info({ request_id: requestId }, 'request cancelled by the client');
    if (answers) respondQuietly(message, { request_id: requestId, cancelled: true, worker_id: parts.workerId });
  };
  return connection.subscribe(parts.subjects.cancel, {
    callback: (error, message) => {
      if (error !== null) return;
      // A callback that throws stops nats.js's reader for the whole connection: never let one out.
      handle(message).catch((failure: unknown) => parts.logger.error({ err: failure }, 'cancel handling failed'));
    },
  });
}

/** Disconnects, reconnects, errors and slow consumers in the log. */
export function logConnectionStatus(
  connection: NatsConnection,
  logger: Logger,
  on: { disconnected?: () => void; reconnected?: () => void } = {},
): void {
  void (async () => {
    for await (const status of connection.status()) {
      if (status.type === 'disconnect') {
        logger.warn({ server: status.server }, 'disconnected from NATS; reconnecting');
        on.disconnected?.();
      } else if (status.type === 'reconnect') {
        logger.info({ server: status.server }, 'reconnected to NATS');
        on.reconnected?.();
      } else if (status.type === 'error') logger.error({ err: status.error }, 'NATS connection error');
      else if (status.type === 'slowConsumer') logger.warn({ subject: status.sub.getSubject() }, 'slow consumer');
    }
  })().catch(() => undefined);
}
