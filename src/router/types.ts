import type { Context } from '@opentelemetry/api';
import type { AttemptRecord } from '../contract/reply.js';
import type { ChatRequest } from '../contract/request.js';
import type { DeploymentHealth, ModelInfo } from '../contract/models.js';
import type { CancelSignal } from '../providers/transport/cancellation.js';
import type { ProviderResponse, ProviderStreamEvent } from '../providers/types.js';

/**
 * A request the router can serve, resolved once (`Router.plan`): its logical model and the deadline
 * the router will hold it to. The worker uses the deadline for the concurrency lease; the router
 * enforces it (each attempt's own timer, which a stream keeps until its end).
 */
export interface RoutePlan {
  readonly model: string;
  /** Epoch ms by which everything (all retries, fallbacks, and a stream to its end) must be done. */
  readonly deadlineAt: number;
}

/** One routed request: the router owns retries, fallbacks and the deadline. */
export interface RoutedCall {
  request: ChatRequest;
  /** Client cancel or worker shutdown (an AbortSignal will do, or the cheaper Cancellation). */
  signal: CancelSignal;
  /** The plan of `Router.plan` (no second model lookup, one deadline); else `deadlineAt` is used. */
  plan?: RoutePlan;
  /** Epoch ms by which everything must be done, when there is no plan. */
  deadlineAt?: number;
  /** The request span's context: each attempt's span is its child (telemetry/tracing.ts). */
  traceContext?: Context | undefined;
}

/** Where a request was finally served. */
export interface RouteTarget {
  /** The logical model that served it (the requested one, or a fallback). */
  model: string;
  provider: string;
  physicalName: string;
}

export interface RoutedResponse extends ProviderResponse {
  target: RouteTarget;
  /** Every deployment tried, in order, the successful one last. */
  attempts: AttemptRecord[];
}

export interface RoutedStream {
  target: RouteTarget;
  /** Attempts made before this stream started (the successful one last). */
  attempts: AttemptRecord[];
  /**
   * The events of the deployment that answered. The first event has already
   * arrived when `stream()` resolves: retries and fallbacks happen only before
   * it; a failure after it is thrown from this iterable as a ProxyError.
   */
  events: AsyncIterable<ProviderStreamEvent>;
}

export interface ChatRouter {
  hasModel(name: string): boolean;
  listModels(): ModelInfo[];
  /** Throws ProxyError (model_not_found, upstream_*, no_provider_available…) with `attempts` set. */
  chat(call: RoutedCall): Promise<RoutedResponse>;
  stream(call: RoutedCall): Promise<RoutedStream>;
}

/** One deployment's state, for `llm-proxy models --health` (defined with the wire types: `llm.proxy.nodes` carries it). */
export type { DeploymentHealth } from '../contract/models.js';

export interface Router extends ChatRouter {
  health(): DeploymentHealth[];
  /**
   * Epoch ms by which a request received at `receivedAt` must be done: its own `timeout_ms`
   * when set, else the longest of `worker.default_timeout_ms` and its model's per-attempt timeouts.
   */
  deadlineFor(request: ChatRequest, receivedAt: number): number;
  /** The request's model resolved and its deadline fixed, or undefined when no such model is configured. */
  plan(request: ChatRequest, receivedAt: number): RoutePlan | undefined;
}
