/**
 * Logical model → deployments, with retries, fallbacks, cooldowns and deadlines.
 *
 * For one request: pick a deployment of the model by its strategy (never one
 * cooling down, an untried one first); on a retryable error try another, and
 * only when every available one has failed once, retry one after a backoff
 * (or the provider's Retry-After when longer), never sleeping past the
 * request's deadline; up to `routing.retry.attempts` tries per model, at least
 * one per deployment. Then the `fallbacks` in order (each with its own tries
 * and fallbacks, cycles skipped); `context_fallbacks` instead when the provider
 * said the prompt is too long. A non-retryable error ends the request, except
 * one that is the deployment's own (401/403/404…: `upstream_error`), which only
 * rules that deployment out. The request's deadline bounds everything and
 * ends it as `upstream_timeout`; with nothing available at all the answer is
 * `no_provider_available` at once, with `retryAfterMs` until the first cooldown ends.
 */
import type { ResolvedConfig, ResolvedModel } from '../config/load.js';
import type { RoutingStrategy } from '../config/schema.js';
import { asProxyError, ProxyError } from '../contract/errors.js';
import type { ModelInfo } from '../contract/models.js';
import type { AttemptRecord } from '../contract/reply.js';
import { roundMs } from '../contract/rounding.js';
import type { ChatRequest } from '../contract/request.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderStreamEvent } from '../providers/types.js';
import {
  attemptTarget,
  endAttemptFailure,
  endAttemptSuccess,
  startAttemptSpan,
  traceAttemptStream,
  type AttemptTarget,
} from '../telemetry/tracing.js';
import type { Span } from '@opentelemetry/api';
import { recordUsage } from './attempt-usage.js';
import { AttemptSignal, callerAbortReason, sleep } from './attempt-signal.js';
import { fitsBeforeDeadline, retryDelayMs, type BackoffPolicy } from './backoff.js';
import { DeploymentState, type CooldownPolicy } from './deployment-state.js';
import { pickDeployment, type Candidate, type PickOptions } from './pick.js';
import { RelayedStream, type OpenedStream } from './relayed-stream.js';
import type {
  DeploymentHealth,
  RoutedCall,
  RoutedResponse,
  RoutedStream,
  RoutePlan,
  RouteTarget,
  Router,
} from './types.js';

/** One deployment of one logical model, with everything the hot path needs settled at construction. */
export interface RouteEntry extends Candidate {
  model: CompiledModel;
  provider: Provider | undefined;
  providerName: string;
  physicalName: string;
  /** Deadline of one attempt: deployment, else model, else provider `timeout_ms`, else `worker.default_timeout_ms`. */
  timeoutMs: number;
  /** `provider/physical_name`, for messages. */
  label: string;
  target: RouteTarget;
  /** The attempt span's name and start attributes (telemetry/tracing.ts). */
  span: AttemptTarget;
}

export interface CompiledModel {
  name: string;
  config: ResolvedModel;
  entries: RouteEntry[];
  strategy: RoutingStrategy;
  /** Tries for this model's deployments: `routing.retry.attempts`, but at least one per deployment. */
  maxTries: number;
  /** Longest per-attempt timeout among the deployments (for requests that set no timeout_ms). */
  longestTimeoutMs: number;
  fallbacks: CompiledModel[];
  contextFallbacks: CompiledModel[];
}

/** A RoutePlan as the router makes it: the compiled model rides along, so routing looks nothing up again. */
interface CompiledPlan extends RoutePlan {
  readonly compiled: CompiledModel;
}

/** The state of one routed request, shared by every model of its fallback chain. */
interface Routing {
  call: RoutedCall;
  deadlineAt: number;
  /** The request's deadline in ms, for messages. */
  budgetMs: number;
  attempts: AttemptRecord[];
  lastError: ProxyError | undefined;
  /** Models entered, against fallback cycles; made on the first fallback only. */
  visited: Set<CompiledModel> | undefined;
}

/** A successful attempt: the value, and the attempt's signal, still armed (a stream keeps using it). */
interface Success<T> {
  value: T;
  entry: RouteEntry;
  signal: AttemptSignal;
  record: AttemptRecord;
  /** The attempt's span, still open: ended with the answer (or with the stream). */
  span: Span;
  /** Every attempt of the request so far, this one last. */
  attempts: AttemptRecord[];
  startedAt: number;
}

type Execute<T> = (entry: RouteEntry, providerCall: ProviderCall) => Promise<T>;

export interface RouterOptions {
  config: ResolvedConfig;
  providers: Map<string, Provider>;
  /** Epoch ms; injectable for tests. */
  now?: () => number;
  /** In [0, 1); injectable for tests. */
  random?: () => number;
}

export class DeploymentRouter implements Router {
  private readonly models = new Map<string, CompiledModel>();
  private readonly states = new Map<string, DeploymentState>();
  private readonly backoff: BackoffPolicy;
  private readonly defaultTimeoutMs: number;
  private readonly now: () => number;
  private readonly random: () => number;
  /** Reused for every pick (filled in just before the synchronous call), to allocate nothing per attempt. */
  private readonly pickOptions: PickOptions;

  constructor(options: RouterOptions) {
    const { config, providers } = options;
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    const routing = config.routing;
    this.backoff = {
      baseMs: routing.retry.base_backoff_ms,
      maxMs: routing.retry.max_backoff_ms,
      jitter: routing.retry.jitter,
    };
    this.pickOptions = {
      strategy: routing.strategy,
      now: 0,
      random: this.random,
      exploration: routing.exploration,
      tried: undefined,
      excluded: undefined,
    };
    this.defaultTimeoutMs = config.worker.default_timeout_ms;
    const cooldown: CooldownPolicy = {
      failures: routing.cooldown.failures,
      windowMs: routing.cooldown.window_ms,
      durationMs: routing.cooldown.duration_ms,
    };

    for (const [name, modelConfig] of config.models) {
      const model: CompiledModel = {
        name,
        config: modelConfig,
        entries: [],
        strategy: modelConfig.routing?.strategy ?? routing.strategy,
        maxTries: Math.max(routing.retry.attempts, modelConfig.deployments.length),
        longestTimeoutMs: 0,
        fallbacks: [],
        contextFallbacks: [],
      };
      for (const deployment of modelConfig.deployments) {
        const key = `${deployment.provider}\u0000${deployment.physical_name}`;
        let state = this.states.get(key);
        if (state === undefined) {
          state = new DeploymentState(deployment.provider, deployment.physical_name, cooldown);
          this.states.set(key, state);
        }
        const provider = providers.get(deployment.provider);
        const timeoutMs =
          deployment.timeout_ms ??
          modelConfig.timeout_ms ??
          config.providers.get(deployment.provider)?.timeout_ms ??
          this.defaultTimeoutMs;
        model.longestTimeoutMs = Math.max(model.longestTimeoutMs, timeoutMs);
        model.entries.push({
          model,
          provider,
          providerName: deployment.provider,
          physicalName: deployment.physical_name,
          weight: deployment.weight,
          usable: provider !== undefined,
          state,
          timeoutMs,
          label: `${deployment.provider}/${deployment.physical_name}`,
          target: { model: name, provider: deployment.provider, physicalName: deployment.physical_name },
          span: attemptTarget({
            model: name,
            provider: deployment.provider,
            physicalName: deployment.physical_name,
            baseUrl: config.providers.get(deployment.provider)?.base_url,
          }),
        });
      }
      this.models.set(name, model);
    }
    for (const model of this.models.values()) {
      model.fallbacks = model.config.fallbacks.flatMap((name) => this.models.get(name) ?? []);
      model.contextFallbacks = model.config.context_fallbacks.flatMap((name) => this.models.get(name) ?? []);
    }
  }

  hasModel(name: string): boolean {
    return this.models.has(name);
  }

  listModels(): ModelInfo[] {
    const now = this.now();
    const list: ModelInfo[] = [];
    for (const model of this.models.values()) {
      const first = model.entries[0];
      list.push({
        name: model.name,
        provider: first?.providerName ?? '',
        physical_name: first?.physicalName ?? '',
        max_tokens: model.config.max_tokens ?? null,
        cost_per_1k_prompt: model.config.cost_per_1k_prompt,
        cost_per_1k_completion: model.config.cost_per_1k_completion,
        deployments: model.entries.map((entry) => ({
          provider: entry.providerName,
          physical_name: entry.physicalName,
          weight: entry.weight,
          state: stateName(entry, now),
        })),
        fallbacks: [...model.config.fallbacks],
      });
    }
    return list;
  }

  health(): DeploymentHealth[] {
    const now = this.now();
    const rows: DeploymentHealth[] = [];
    for (const model of this.models.values()) {
      for (const entry of model.entries) {
        const coolingDown = entry.state.isCoolingDown(now);
        rows.push({
          model: model.name,
          provider: entry.providerName,
          physical_name: entry.physicalName,
          weight: entry.weight,
          state: coolingDown ? 'cooling_down' : 'healthy',
          cooldown_until: coolingDown ? new Date(entry.state.cooldownUntil).toISOString() : null,
          in_flight: entry.state.inFlight,
          ewma_latency_ms: entry.state.ewmaLatencyMs === undefined ? null : roundMs(entry.state.ewmaLatencyMs),
          recent_failures: entry.state.recentFailures(now),
        });
      }
    }
    return rows;
  }

  deadlineFor(request: ChatRequest, receivedAt: number): number {
    return this.deadlineOf(request, this.models.get(request.model), receivedAt);
  }

  plan(request: ChatRequest, receivedAt: number): RoutePlan | undefined {
    const model = this.models.get(request.model);
    if (model === undefined) return undefined;
    const plan: CompiledPlan = {
      model: model.name,
      deadlineAt: this.deadlineOf(request, model, receivedAt),
      compiled: model,
    };
    return plan;
  }

  private deadlineOf(request: ChatRequest, model: CompiledModel | undefined, receivedAt: number): number {
    if (request.timeout_ms !== undefined) return receivedAt + request.timeout_ms;
    return receivedAt + Math.max(this.defaultTimeoutMs, model?.longestTimeoutMs ?? 0);
  }

  async chat(call: RoutedCall): Promise<RoutedResponse> {
    const success = await this.route(call, executeChat);
    success.signal.release();
    success.entry.state.inFlight--;
    const response = success.value as RoutedResponse;
    const latencyMs = performance.now() - success.startedAt;
    success.entry.state.recordSuccess(latencyMs);
    const record = success.record;
    record.model_resolved = response.modelResolved;
    record.latency_ms = roundMs(latencyMs);
    if (response.usage !== undefined) recordUsage(record, response.usage);
    response.target = success.entry.target;
    response.attempts = success.attempts;
    endAttemptSuccess(success.span, response);
    return response;
  }

  async stream(call: RoutedCall): Promise<RoutedStream> {
    const success = await this.route(call, executeStream);
    const latencyMs = performance.now() - success.startedAt;
    success.entry.state.recordSuccess(latencyMs);
    const opened = success.value;
    success.record.latency_ms = roundMs(latencyMs);
    if (opened.modelResolved !== undefined) success.record.model_resolved = opened.modelResolved;
    const attempts = success.attempts;
    const events = new RelayedStream(opened, {
      signal: success.signal,
      state: success.entry.state,
      record: success.record,
      attempts,
      now: this.now,
    });
    return {
      target: success.entry.target,
      attempts,
      events: traceAttemptStream(events, success.span, opened.modelResolved),
    };
  }

  /** Resolve the model, then try deployments and fallbacks until one answers or the request must fail. */
  private async route<T>(call: RoutedCall, execute: Execute<T>): Promise<Success<T>> {
    const request = call.request;
    const plan = call.plan as CompiledPlan | undefined;
    const model = plan?.compiled ?? this.models.get(request.model);
    const attempts: AttemptRecord[] = [];
    if (model === undefined) {
      throw new ProxyError('model_not_found', `model "${request.model}" is not configured`, { attempts });
    }
    const startedAt = this.now();
    let deadlineAt: number;
    if (plan !== undefined) {
      deadlineAt = plan.deadlineAt;
    } else {
      const given = call.deadlineAt;
      deadlineAt =
        given !== undefined && given > 0 && Number.isFinite(given) ? given : this.deadlineOf(request, model, startedAt);
      if (request.timeout_ms !== undefined && startedAt + request.timeout_ms < deadlineAt)
        deadlineAt = startedAt + request.timeout_ms;
    }
    const routing: Routing = {
      call,
      deadlineAt,
      budgetMs: deadlineAt - startedAt,
      attempts,
      lastError: undefined,
      visited: undefined,
    };
    if (call.signal.aborted) throw withAttempts(callerAbortReason(call.signal), attempts);
    const success = await this.routeModel(model, routing, execute);
    if (success === undefined) throw withAttempts(this.exhaustedError(model, routing), attempts);
    return success;
  }

  /**
   * Try one model's deployments. Returns the success, or undefined when every
   * deployment failed with a retryable error or none could take traffic (the
   * caller then moves on to the next fallback); throws when the request must
   * end now (cancelled, out of time, an error no other deployment would fix).
   */
  private async routeModel<T>(
    model: CompiledModel,
    routing: Routing,
    execute: Execute<T>,
  ): Promise<Success<T> | undefined> {
    const call = routing.call;
    let tried: Set<RouteEntry> | undefined;
    let excluded: Set<RouteEntry> | undefined;
    let tries = 0;
    while (tries < model.maxTries) {
      let now = this.now();
      if (now >= routing.deadlineAt) throw this.deadlineError(model, routing);
      const pickOptions = this.pickOptions;
      pickOptions.strategy = model.strategy;
      pickOptions.now = now;
      pickOptions.tried = tried;
      pickOptions.excluded = excluded;
      const entry = pickDeployment(model.entries, pickOptions);
      if (entry === undefined) break;
      if (tried?.has(entry)) {
        // Every deployment available has failed once already: back off before trying one again.
        const delayMs = retryDelayMs(tries, this.backoff, this.random, routing.lastError?.retryAfterMs);
        if (!fitsBeforeDeadline(now, delayMs, routing.deadlineAt)) break;
        await sleep(delayMs, call.signal).catch((error: unknown) => {
          throw withAttempts(asProxyError(error), routing.attempts);
        });
        now = this.now();
        // The wait may have seen the deployment taken out by another request.
        if (entry.state.isCoolingDown(now)) continue;
      }
      tries++;
      try {
        return await this.attempt(entry, routing, execute);
      } catch (thrown) {
        const error = asProxyError(thrown);
        routing.lastError = error;
        if (call.signal.aborted) throw withAttempts(callerAbortReason(call.signal), routing.attempts);
        if (this.now() >= routing.deadlineAt) throw this.deadlineError(model, routing);
        if (error.contextLengthExceeded) {
          const fallback = await this.routeFallbacks(model.contextFallbacks, model, routing, execute);
          if (fallback !== undefined) return fallback;
          throw withAttempts(routing.lastError ?? error, routing.attempts);
        }
        if (!error.retryable) {
          if (!isDeploymentFault(error)) throw withAttempts(error, routing.attempts);
          // The deployment refused for a reason of its own (bad key, unknown model name, no credit):
          // never again for this request, but another deployment or a fallback may serve it.
          (excluded ??= new Set()).add(entry);
          continue;
        }
        (tried ??= new Set()).add(entry);
      }
    }
    return this.routeFallbacks(model.fallbacks, model, routing, execute);
  }

  private async routeFallbacks<T>(
    fallbacks: CompiledModel[],
    from: CompiledModel,
    routing: Routing,
    execute: Execute<T>,
  ): Promise<Success<T> | undefined> {
    if (fallbacks.length === 0) return undefined;
    const visited = (routing.visited ??= new Set([from]));
    visited.add(from);
    for (const fallback of fallbacks) {
      if (visited.has(fallback)) continue;
      visited.add(fallback);
      const success = await this.routeModel(fallback, routing, execute);
      if (success !== undefined) return success;
    }
    return undefined;
  }

  /** One call to one deployment, under its own deadline; records the attempt and the deployment's health. */
  private async attempt<T>(entry: RouteEntry, routing: Routing, execute: Execute<T>): Promise<Success<T>> {
    const now = this.now();
    const untilRequestDeadline = routing.deadlineAt - now;
    const requestDeadlineFirst = untilRequestDeadline <= entry.timeoutMs;
    // A timeout is the deployment's failure when it had its full allowance, or the request set no
    // timeout of its own; not when a client's short timeout_ms cut it, or one client's tight
    // deadline could take a deployment out for everyone.
    const timeoutBlamesDeployment =
      !requestDeadlineFirst || routing.call.request.timeout_ms === undefined || untilRequestDeadline >= entry.timeoutMs;
    const signal = new AttemptSignal(
      routing.call.signal,
      requestDeadlineFirst ? untilRequestDeadline : entry.timeoutMs,
      entry.label,
      requestDeadlineFirst ? routing.budgetMs : -1,
      timeoutBlamesDeployment,
    );
    const record: AttemptRecord = {
      model: entry.model.name,
      provider: entry.providerName,
      model_resolved: entry.physicalName,
      error_code: null,
      latency_ms: 0,
    };
    routing.attempts.push(record);
    const span = startAttemptSpan(routing.call.traceContext, entry.span, routing.attempts.length);
    const startedAt = performance.now();
    entry.state.inFlight++;
    try {
      const value = await execute(entry, {
        model: entry.physicalName,
        request: withModelMaxTokens(routing.call.request, entry.model.config.max_tokens),
        signal: signal.signal,
      });
      return { value, entry, signal, record, span, attempts: routing.attempts, startedAt };
    } catch (thrown) {
      signal.release();
      entry.state.inFlight--;
      const error = asProxyError(thrown);
      endAttemptFailure(span, error.code);
      const latencyMs = performance.now() - startedAt;
      record.error_code = error.code;
      record.latency_ms = roundMs(latencyMs);
      // A cancelled call, or one cut by the request's own deadline, says nothing about the
      // deployment; nor does a request that no deployment could serve (invalid_request…).
      if ((error.retryable || isDeploymentFault(error)) && error.code !== 'cancelled' && signal.blamesDeployment) {
        if (error.code === 'upstream_timeout') entry.state.recordLatency(latencyMs);
        entry.state.recordFailure(this.now(), error);
      }
      throw error;
    }
  }

  private deadlineError(model: CompiledModel, routing: Routing): ProxyError {
    return new ProxyError(
      'upstream_timeout',
      `model "${model.name}": no answer within the request's deadline (${Math.round(routing.budgetMs)} ms)`,
      {
        attempts: routing.attempts,
      },
    );
  }

  /** Nothing answered: the last upstream error, or `no_provider_available` when no deployment could even be tried. */
  private exhaustedError(model: CompiledModel, routing: Routing): ProxyError {
    if (routing.lastError !== undefined) return routing.lastError;
    const now = this.now();
    let recoversAt = Infinity;
    const models = routing.visited ?? [model];
    for (const visited of models) {
      for (const entry of visited.entries)
        if (entry.usable && entry.state.cooldownUntil < recoversAt) recoversAt = entry.state.cooldownUntil;
    }
    const names =
      routing.visited === undefined
        ? `"${model.name}"`
        : [...routing.visited].map((visited) => `"${visited.name}"`).join(', ');
    return new ProxyError(
      'no_provider_available',
      `no deployment of model ${names} can take a request now (all cooling down or unconfigured)`,
      {
        ...(Number.isFinite(recoversAt) && recoversAt > now ? { retryAfterMs: recoversAt - now } : {}),
      },
    );
  }
}

const executeChat: Execute<ProviderResponse> = (entry, providerCall) => (entry.provider as Provider).chat(providerCall);

/**
 * Open a stream and read it up to its first content: until then a failure is
 * still the router's to retry, since the agent has received nothing.
 */
const executeStream: Execute<OpenedStream> = async (entry, providerCall) => {
  const iterator = (entry.provider as Provider).stream(providerCall)[Symbol.asyncIterator]();
  let buffered: ProviderStreamEvent[] | undefined;
  let modelResolved: string | undefined;
  try {
    for (;;) {
      const next = await iterator.next();
      if (next.done === true) return { iterator, buffered: buffered ?? [], ended: true, modelResolved };
      const event = next.value;
      if (event.type === 'model') modelResolved = event.modelResolved;
      (buffered ??= []).push(event);
      if (event.type === 'delta' && carriesContent(event)) return { iterator, buffered, ended: false, modelResolved };
    }
  } catch (error) {
    await iterator.return?.().catch(() => undefined);
    throw error;
  }
};

/**
 * A non-retryable error that is the deployment's fault rather than the request's: the providers
 * layer gives 401/403/404/402… `upstream_error` (a 502 for the agent) and the request's own faults
 * (400, 413, 422) `invalid_request` / `payload_too_large`.
 */
export function isDeploymentFault(error: ProxyError): boolean {
  return error.code === 'upstream_error';
}

/**
 * A request that sets no completion limit gets its model's `max_tokens` (the model's configured most
 * tokens in one answer) as `max_tokens`; one that sets `max_tokens` or `max_completion_tokens` keeps it.
 */
export function withModelMaxTokens(request: ChatRequest, modelMaxTokens: number | undefined): ChatRequest {
  if (modelMaxTokens === undefined || request.max_tokens !== undefined || request.max_completion_tokens !== undefined)
    return request;
  return { ...request, max_tokens: modelMaxTokens };
}

/** An empty delta (a role-only chunk) sends the agent nothing, so it does not end the time for retries. */
function carriesContent(event: Extract<ProviderStreamEvent, { type: 'delta' }>): boolean {
  return (
    (event.content ?? '') !== '' ||
    (event.reasoningContent ?? '') !== '' ||
    (event.refusal ?? '') !== '' ||
    (event.toolCalls?.length ?? 0) > 0
  );
}

function stateName(entry: RouteEntry, now: number): string {
  if (!entry.usable) return 'unconfigured';
  return entry.state.isCoolingDown(now) ? 'cooling_down' : 'healthy';
}

function withAttempts(error: ProxyError, attempts: AttemptRecord[]): ProxyError {
  error.attempts = attempts;
  return error;
}
