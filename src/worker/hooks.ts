import type { Context } from '@opentelemetry/api';
import type { LimitSetConfig } from '../config/limits-schema.js';
import type { ChatRequest } from '../contract/request.js';
import type { UsageStatus } from '../contract/usage-event.js';
import type { Logger } from '../telemetry/logger.js';

/**
 * The seam where admission control (rate limits, budgets: the limits module)
 * plugs into the request pipeline. The pipeline is:
 *
 *   size → JSON → ids → depth → auth → validate → model known → beforeRoute → cache → router → usage event + reply → afterRoute
 *
 * - `beforeRoute(context)` runs for every valid, authorized request of a known
 *   model, before the cache and the router. To refuse, throw a ProxyError
 *   (`rate_limited` with `retryAfterMs`, `budget_exceeded`…): the client gets
 *   that error reply and the usage event says `status: "rejected"`. It may
 *   keep per-request state (a reservation) in `context.state`.
 * - `afterRoute(context, outcome)` runs once per request that passed
 *   `beforeRoute`, whatever happened next (served, cached, failed,
 *   cancelled), after the usage event and the reply were sent (so a slow
 *   store never delays either): the place to settle a reservation with the
 *   real tokens/cost.
 *   Its errors are logged, never sent to the client.
 *
 * Hooks are awaited, so keep them to one round trip (Redis, KV).
 */
export interface RequestContext {
  /** The client's correlation id (`request_id`), or the event id when it gave none. */
  requestId: string;
  /** The worker's own id for this request: its usage event's key, unique whatever the client sends. */
  eventId: string;
  request: ChatRequest;
  agentId: string | undefined;
  /** The per-agent key the request came with, and its own limits (applied on top of the agent's). */
  key?: { id: string; limits: LimitSetConfig } | undefined;
  /** Epoch ms the worker received the request. */
  receivedAt: number;
  /** Epoch ms by which the request must be done. */
  deadlineAt: number;
  stream: boolean;
  logger: Logger;
  /** Free space for hooks (e.g. a reservation id), per request. */
  state: Record<string, unknown>;
  /** The prompt's token estimate, tokenized once per request (limits and accounting share it). */
  promptTokens(): number;
  /** The request span's context: a hook's own spans are its children (undefined when nothing is traced). */
  traceContext?: Context | undefined;
}

export interface RequestOutcome {
  status: UsageStatus;
  errorCode: string | null;
  /** The logical model that served the request (or the requested one). */
  model: string;
  promptTokens: number;
  completionTokens: number;
  tokensEstimated: boolean;
  costUsd: number;
  cached: boolean;
  /** Passed on to another worker after admission (a fallback on another node), which counts it itself. */
  handedOver?: boolean;
}

export interface RequestHooks {
  beforeRoute?(context: RequestContext): Promise<void> | void;
  afterRoute?(context: RequestContext, outcome: RequestOutcome): Promise<void> | void;
  /**
   * The request is about to be passed on to another worker after `beforeRoute` admitted it (a fallback on
   * another node), which admits and counts it itself: give back what `beforeRoute` counted, now, before
   * the other worker counts it. `afterRoute` still runs (with `handedOver`). When no other worker took
   * it after all (this worker answers it), `beforeRoute` runs again, its refusal ignored, so that it is
   * counted where it is answered; `afterRoute` then runs without `handedOver`.
   */
  handingOver?(context: RequestContext): Promise<void> | void;
}
