import type { Msg, NatsConnection } from '@nats-io/nats-core';
import type { Context } from '@opentelemetry/api';
import { type Caller, type CallerCheck, readHeaders } from '../auth/index.js';
import type { ResolvedConfig } from '../config/load.js';
import { asProxyError, ProxyError, type ErrorCode } from '../contract/errors.js';
import { prepareRequestCheck } from '../contract/request.js';
import { roundMs } from '../contract/rounding.js';
import { Cancellation } from '../providers/transport/cancellation.js';
import type { Router } from '../router/types.js';
import type { Logger } from '../telemetry/logger.js';
import { endRequestSpan, requestTraceContext, startRequestSpan } from '../telemetry/tracing.js';
import type { UsagePublisher } from '../usage/publisher.js';
import { admit, ServedElsewhere } from './admission.js';
import { forwardRequest, NOT_PASSED, servedElsewhereRoute, type ForwardParts } from './forward.js';
import type { WorkerCounters } from './counters.js';
import { Delivery } from './delivery.js';
import type { RequestHooks } from './hooks.js';
import type { GatewayMetrics, RequestFacts } from '../telemetry/metrics.js';
import { answerOnce } from './one-reply.js';
import { RequestRecord } from './request-record.js';
import type { ResponseCacheParts } from '../cache/index.js';
import { relayStream } from './stream-reply.js';

export interface PipelineDependencies {
  connection: NatsConnection;
  config: ResolvedConfig;
  router: Router;
  publisher: UsagePublisher;
  /** Who is calling (the secret or a per-agent key, by `auth.mode`). */
  auth: CallerCheck;
  /** The response cache (memory in front of the shared store) and its coalescer; undefined when off. */
  cache: ResponseCacheParts | undefined;
  hooks: RequestHooks;
  counters: WorkerCounters;
  logger: Logger;
  workerId: string;
  maxRequestBytes: number;
  heartbeatMs: number;
  /** The worker's instruments; undefined when nothing reads them (then a request records nothing). */
  metrics: GatewayMetrics | undefined;
  /** Passing on requests for models this worker does not serve (issue 19); undefined: refused as unknown. */
  forward?: ForwardParts;
  /** Called when a request turns out to be a relay (it no longer takes one of the worker's `max_in_flight`). */
  onRelay?: () => void;
}

/** What the answering stages (one-reply.ts, stream-reply.ts) use. */
export interface StageDependencies extends PipelineDependencies {
  delivery: Delivery;
}

/**
 * Listens to a request once its reply (or terminal stream message) is out, in the order given:
 * awaited one after the other. (The usage event is not one of them: it leaves right before the
 * reply, from the Delivery's finish listener.)
 */
export type DoneListener = (record: RequestRecord) => void | Promise<void>;

/** One request in progress, for explicit cancels and shutdown. */
interface ActiveRequest {
  requestId: string;
  /** The key the request came with: only a cancel with the same key (or the secret) stops it. */
  keyId: string | undefined;
  controller: Cancellation;
}

/** A message whose header block cannot be read has no credentials either. */
const UNREADABLE: Caller = {
  key: undefined,
  refusal: "the message's header block is malformed",
  storeUnavailable: false,
};

/**
 * The request pipeline: one RequestRecord per message, through its stages (admission.ts, then
 * one-reply.ts or stream-reply.ts). Every path ends in exactly one reply (or one terminal stream
 * message) and one usage event; nothing throws out of `handle`. When the record finishes, its usage
 * event is published (right before the reply, same socket write); once the reply is out, the done
 * listeners run: the counters, the limits settle and the log line; then the span ends.
 */
export class RequestPipeline {
  readonly #deps: StageDependencies;
  readonly #active = new Set<ActiveRequest>();
  readonly #done: DoneListener[];
  /** For a request passed on after its admission (a fallback on another node): the limits' give-back only. */
  readonly #handedOver: DoneListener[];

  constructor(dependencies: PipelineDependencies) {
    const publishUsage = (record: RequestRecord) =>
      dependencies.publisher.publish(record.usageEvent(dependencies.workerId, dependencies.config.worker.node));
    this.#deps = { ...dependencies, delivery: new Delivery(dependencies.connection, publishUsage) };
    this.#done = doneListeners(dependencies);
    this.#handedOver = afterRouteListener(dependencies);
    // Compiled now, so that the first request does not wait for it (tens of ms).
    prepareRequestCheck();
  }

  /** Requests being worked on now. */
  get inFlight(): number {
    return this.#deps.counters.inFlight;
  }

  /**
   * Explicit cancel (`llm.proxy.cancel`): aborts every active request with this id; `byKey` (the
   * canceller's key id) limits it to that key's requests, undefined to any (a holder of the secret).
   */
  cancel(requestId: string, byKey?: string): number {
    let found = 0;
    for (const active of this.#active) {
      if (active.requestId !== requestId) continue;
      if (byKey !== undefined && active.keyId !== byKey) continue;
      active.controller.abort(new ProxyError('cancelled', `request ${requestId} was cancelled by the client`));
      found++;
    }
    return found;
  }

  /** Shutdown past the drain timeout: abort what is still running (each still gets a reply and an event). */
  abortAll(reason: ProxyError): void {
    for (const active of this.#active) active.controller.abort(reason);
  }

  async handle(message: Msg): Promise<void> {
    const deps = this.#deps;
    deps.counters.started();
    // Read once, without throwing (a header block nats.js cannot decode is refused in admission).
    const { headers, malformed } = readHeaders(message);
    const span = startRequestSpan(message.subject, headers);
    // The attempts' and the limits' spans are its children (undefined when nothing is traced).
    const traceContext = requestTraceContext(span);
    // Known before anything is read, so that every refusal of a sender without credentials is kept off the
    // agent it names. Synchronous, unless the key store is being read (after a start or a reconnect).
    const identified = malformed ? UNREADABLE : deps.auth.identify(headers);
    const caller = identified instanceof Promise ? await identified : identified;
    const record = new RequestRecord(caller, deps.logger);
    try {
      await this.#run(message, record, malformed, traceContext);
    } catch (error) {
      // The stages answer their own errors; reaching here is a bug, still answered (once: not after the reply went out).
      record.logger.error({ err: error }, 'request pipeline failed');
      deps.delivery.error(message, record, asProxyError(error), record.stream);
    } finally {
      // Another worker answers a request handed over, and publishes its event: nothing of it is counted here but that.
      if (record.handedOver) deps.counters.handedOver();
      // A request with no reply subject still ends, and has its event.
      else deps.delivery.finish(record, record.code);
      const listeners = !record.handedOver ? this.#done : record.context === undefined ? [] : this.#handedOver;
      for (const listener of listeners) {
        try {
          // Only a listener that returned a promise is waited for (a microtask less for the others).
          const pending = listener(record);
          if (pending instanceof Promise) await pending;
        } catch (error) {
          record.logger.error({ err: error }, 'a request listener failed');
        }
      }
      endRequestSpan(span, record);
    }
  }

  async #run(
    message: Msg,
    record: RequestRecord,
    headersMalformed: boolean,
    traceContext: Context | undefined,
  ): Promise<ErrorCode | undefined> {
    const deps = this.#deps;
    const admitted = await admit(message, record, headersMalformed, deps, traceContext);
    if (admitted instanceof ProxyError) return deps.delivery.error(message, record, admitted, record.stream);
    if (admitted instanceof ServedElsewhere) {
      const forwardDeps = { ...deps, forward: deps.forward! };
      const timeoutMs = admitted.timeoutMs ?? deps.config.worker.default_timeout_ms;
      const route = servedElsewhereRoute(message, record, admitted.model, forwardDeps);
      // That route answers the client itself when no worker has the model: never NOT_PASSED.
      const code = await forwardRequest(message, record, route, timeoutMs, forwardDeps);
      return code === NOT_PASSED ? undefined : code;
    }
    const controller = new Cancellation();
    const active: ActiveRequest = { requestId: record.requestId, keyId: record.caller.key?.id, controller };
    this.#active.add(active);
    try {
      if (!record.stream) return await answerOnce(message, record, admitted, controller.signal, deps);
      deps.counters.streams++;
      deps.metrics?.streamOpened();
      try {
        return await relayStream(message, record, admitted, controller, deps);
      } finally {
        deps.metrics?.streamClosed();
      }
    } finally {
      this.#active.delete(active);
    }
  }
}

/** What the metrics take from a finished record. */
function requestFacts(record: RequestRecord): RequestFacts {
  return {
    model: record.model ?? record.requestedModel ?? '',
    provider: record.provider,
    status: record.status,
    errorCode: record.code,
    stream: record.stream,
    cached: record.cached,
    latencyMs: record.latencyMs,
    ttftMs: record.ttftMs,
    promptTokens: record.tokens.promptTokens,
    completionTokens: record.tokens.completionTokens,
    costUsd: record.costUsd,
    agentId: record.metadata?.agent_id ?? null,
    attempts: record.attempts.map((attempt) => ({
      model: attempt.model,
      provider: attempt.provider,
      modelResolved: attempt.model_resolved,
      errorCode: attempt.error_code,
      latencyMs: attempt.latency_ms,
    })),
  };
}

/** What runs once a request's reply is out, in order: the counters, the metrics, the limits settle, the log line. */
function doneListeners(deps: PipelineDependencies): DoneListener[] {
  const listeners: DoneListener[] = [(record) => deps.counters.finished(record.code)];
  const metrics = deps.metrics;
  if (metrics !== undefined) listeners.push((record) => metrics.recordRequest(requestFacts(record)));
  listeners.push(...afterRouteListener(deps));
  const logRequests = deps.config.logging.requests;
  if (logRequests !== 'none') {
    listeners.push((record) => {
      const served = record.code === undefined || record.code === 'cancelled';
      if (logRequests === 'errors' && served) return;
      const line = {
        code: record.code ?? 'ok',
        status: record.status,
        model: record.model ?? record.requestedModel,
        latency_ms: roundMs(record.latencyMs),
        stream: record.stream,
        cached: record.cached,
      };
      if (served) record.logger.info(line, 'request done');
      else record.logger.warn(line, 'request failed');
    });
  }
  return listeners;
}

/** The `afterRoute` hook (the limits' settle) as a done listener, for a request that passed `beforeRoute`. */
function afterRouteListener(deps: PipelineDependencies): DoneListener[] {
  const afterRoute = deps.hooks.afterRoute;
  if (afterRoute === undefined) return [];
  return [
    async (record) => {
      if (record.context === undefined) return;
      try {
        await afterRoute(record.context, record.outcome());
      } catch (error) {
        record.logger.error({ err: error }, 'afterRoute hook failed');
      }
    },
  ];
}
