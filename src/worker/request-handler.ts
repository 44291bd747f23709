import { randomUUID } from 'node:crypto';
import { headers as createHeaders, type Msg, type NatsConnection } from '@nats-io/nats-core';
import type { ResolvedConfig } from '../config/load.js';
import { asProxyError, ProxyError, toErrorReply, type ErrorCode } from '../contract/errors.js';
import type { AttemptRecord, ChatReply, FinishReason } from '../contract/reply.js';
import { checkClientIds, MAX_JSON_DEPTH, nestsDeeperThan } from '../contract/client-ids.js';
import { parseChatRequest, prepareRequestCheck, type ChatRequest, type RequestMetadata, type ToolCall } from '../contract/request.js';
import { HEADERS, STREAM_MARKS } from '../contract/subjects.js';
import type { UsageStatus } from '../contract/usage-event.js';
import { Cancellation } from '../providers/cancellation.js';
import type { ProviderUsage } from '../providers/types.js';
import type { Router } from '../router/types.js';
import { endRequestSpan, startRequestSpan } from '../telemetry/tracing.js';
import { requestLogger, type Logger } from '../telemetry/logger.js';
import { buildUsageEvent } from '../usage/event.js';
import type { UsagePublisher } from '../usage/publisher.js';
import { countTokens, requestCost, ToolCallAssembler, type TokenCount } from './accounting.js';
import { readHeaders, type SecretCheck } from '../auth/index.js';
import type { WorkerCounters } from './counters.js';
import type { RequestContext, RequestHooks, RequestOutcome } from './hooks.js';
import { cacheKey, isCacheable, type ResponseCache } from './response-cache.js';
import { fitsMaxPayload } from './max-payload.js';
import { headerSafe, StreamWriter } from './stream-writer.js';

export interface PipelineDependencies {
  connection: NatsConnection;
  config: ResolvedConfig;
  router: Router;
  publisher: UsagePublisher;
  secret: SecretCheck;
  cache: ResponseCache | undefined;
  hooks: RequestHooks;
  counters: WorkerCounters;
  logger: Logger;
  workerId: string;
  maxRequestBytes: number;
  heartbeatMs: number;
}

/** What becomes the usage event; filled in as the request goes through the pipeline. */
interface Accounting {
  /** The worker's own id for this request: the usage event's key and the concurrency lease's. */
  eventId: string;
  /** The client's correlation id, or `eventId` when it gave no valid one. */
  requestId: string;
  metadata: RequestMetadata | undefined;
  /** The sender did not show the secret: its event goes to `unauthenticated`, whatever it was refused for. */
  unauthenticated: boolean;
  /** The event has left (it goes right before the reply, in the same socket write). */
  eventSent: boolean;
  requestedModel: string | null;
  /** The logical model that served the request (a fallback, maybe), else the requested one. */
  model: string | null;
  provider: string | null;
  modelResolved: string | null;
  /** Passed every refusal check: from here on a failure is `error`, not `rejected`. */
  accepted: boolean;
  tokens: TokenCount;
  costUsd: number;
  ttftMs: number | null;
  stream: boolean;
  cached: boolean;
  attempts: AttemptRecord[];
  /** `performance.now()` when the request arrived. */
  started: number;
  /** Set once the request passed the size/JSON/auth/validation checks: afterRoute runs for it. */
  context: RequestContext | undefined;
}

/** One request in progress, for explicit cancels and shutdown. */
interface ActiveRequest {
  requestId: string;
  controller: Cancellation;
}

const roundMs = (value: number) => Math.round(value * 10) / 10;

function errorHeaders(status: number, message: string, stream: boolean) {
  const headers = createHeaders();
  // A client waiting for a stream reads the terminal mark; a plain request ignores it.
  if (stream) headers.set(HEADERS.stream, STREAM_MARKS.error);
  headers.set(HEADERS.serviceError, headerSafe(message));
  headers.set(HEADERS.serviceErrorCode, String(status));
  return headers;
}

function usageStatus(accounting: Accounting, code: ErrorCode | undefined): UsageStatus {
  if (code === undefined) return 'ok';
  if (code === 'cancelled') return 'cancelled';
  return accounting.accepted ? 'error' : 'rejected';
}

/**
 * The request pipeline (see hooks.ts for the order and the seam for limits).
 * Every path ends in exactly one reply (or one terminal stream message) and
 * one usage event; nothing throws out of `handle`.
 */
export class RequestPipeline {
  readonly #deps: PipelineDependencies;
  readonly #active = new Set<ActiveRequest>();

  constructor(dependencies: PipelineDependencies) {
    this.#deps = dependencies;
    // Compiled now, so that the first request does not wait for it (tens of ms).
    prepareRequestCheck();
  }

  /** Requests being worked on now. */
  get inFlight(): number {
    return this.#deps.counters.inFlight;
  }

  /** Explicit cancel (`llm.proxy.cancel`): aborts every active request with this id. */
  cancel(requestId: string): number {
    let found = 0;
    for (const active of this.#active) {
      if (active.requestId !== requestId) continue;
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
    const receivedAt = Date.now();
    const started = performance.now();
    deps.counters.started();
    const { headers, malformed } = readHeaders(message);
    const span = startRequestSpan(message.subject, headers);
    const eventId = randomUUID();
    const accounting: Accounting = {
      started,
      context: undefined,
      eventId,
      requestId: eventId,
      metadata: undefined,
      // Known before anything is read, so that every refusal of a sender without the secret is kept off the agent it names.
      unauthenticated: malformed || !deps.secret.allows(headers),
      eventSent: false,
      requestedModel: null,
      model: null,
      provider: null,
      modelResolved: null,
      accepted: false,
      tokens: { promptTokens: 0, completionTokens: 0, estimated: false },
      costUsd: 0,
      ttftMs: null,
      stream: false,
      cached: false,
      attempts: [],
    };
    let logger = deps.logger;
    let errorCode: ErrorCode | undefined;
    try {
      errorCode = malformed
        ? this.#refuseMalformedHeaders(message, accounting, logger)
        : await this.#run(message, accounting, receivedAt, (child) => (logger = child));
    } catch (error) {
      // #run answers its own errors; reaching here is a bug, still answered (once: not after a reply went out).
      logger.error({ err: error }, 'request pipeline failed');
      if (!accounting.eventSent) {
        const proxyError = asProxyError(error);
        errorCode = proxyError.code;
        this.#replyError(message, proxyError, accounting, logger, accounting.stream);
      }
    } finally {
      deps.counters.finished(errorCode);
      const status = usageStatus(accounting, errorCode);
      // A request with nothing to answer (no reply subject) still has its event.
      if (!accounting.eventSent) this.#publishUsage(accounting, errorCode);
      const context = accounting.context;
      if (context !== undefined && deps.hooks.afterRoute !== undefined) {
        await this.#afterRoute(context, {
          status,
          errorCode: errorCode ?? null,
          model: accounting.model ?? accounting.requestedModel ?? '',
          promptTokens: accounting.tokens.promptTokens,
          completionTokens: accounting.tokens.completionTokens,
          tokensEstimated: accounting.tokens.estimated,
          costUsd: accounting.costUsd,
          cached: accounting.cached,
        }, logger);
      }
      endRequestSpan(span, { requestId: accounting.requestId, model: accounting.requestedModel ?? undefined, errorCode });
      const served = errorCode === undefined || errorCode === 'cancelled';
      const logRequests = deps.config.logging.requests;
      if (logRequests === 'all' || (logRequests === 'errors' && !served)) {
        const line = { code: errorCode ?? 'ok', status, model: accounting.model ?? accounting.requestedModel, latency_ms: roundMs(performance.now() - started), stream: accounting.stream, cached: accounting.cached };
        if (served) logger.info(line, 'request done');
        else logger.warn(line, 'request failed');
      }
    }
  }

  /**
   * The request's one usage event. Called right before the reply (or the stream's terminal message)
   * is written: both go out on this connection in the same socket write, the event first, so a
   * reply that reached the server means its event did too ("answered ⇒ billed", even when the
   * worker is killed the next moment). The ack is awaited in the background (publisher.ts).
   */
  #publishUsage(accounting: Accounting, code: ErrorCode | undefined): void {
    accounting.eventSent = true;
    this.#deps.publisher.publish(
      buildUsageEvent({
        eventId: accounting.eventId,
        requestId: accounting.requestId,
        metadata: accounting.metadata,
        unauthenticated: accounting.unauthenticated,
        model: accounting.model ?? accounting.requestedModel,
        provider: accounting.provider,
        modelResolved: accounting.modelResolved,
        status: usageStatus(accounting, code),
        errorCode: code ?? null,
        promptTokens: accounting.tokens.promptTokens,
        completionTokens: accounting.tokens.completionTokens,
        tokensEstimated: accounting.tokens.estimated,
        costUsd: accounting.costUsd,
        latencyMs: performance.now() - accounting.started,
        ttftMs: accounting.ttftMs,
        stream: accounting.stream,
        cached: accounting.cached,
        attempts: accounting.attempts,
        workerId: this.#deps.workerId,
      }),
    );
  }

  /** A header block that cannot be decoded: the sender's fault, refused before anything else is read. */
  #refuseMalformedHeaders(message: Msg, accounting: Accounting, logger: Logger): ErrorCode {
    const error = new ProxyError('invalid_request', 'the message\'s header block is malformed (a header name with a space or a non-ASCII character, or a value with a bare CR or LF)');
    this.#replyError(message, error, accounting, logger);
    return error.code;
  }

  async #afterRoute(context: RequestContext, outcome: RequestOutcome, logger: Logger): Promise<void> {
    try {
      await this.#deps.hooks.afterRoute!(context, outcome);
    } catch (error) {
      logger.error({ err: error }, 'afterRoute hook failed');
    }
  }

  /** Returns the error code the request ended with, or undefined when it was served. */
  async #run(
    message: Msg,
    accounting: Accounting,
    receivedAt: number,
    setLogger: (logger: Logger) => void,
  ): Promise<ErrorCode | undefined> {
    const deps = this.#deps;
    let logger = deps.logger;
    const refuse = (error: ProxyError): ErrorCode => {
      this.#replyError(message, error, accounting, logger, accounting.stream);
      return error.code;
    };

    // 1. Size, before anything reads the body.
    if (message.data.length > deps.maxRequestBytes) {
      return refuse(new ProxyError('payload_too_large', `request body is ${message.data.length} bytes; the limit is ${deps.maxRequestBytes}`));
    }
    // 2. JSON.
    let body: unknown;
    try {
      body = JSON.parse(message.string());
    } catch {
      return refuse(new ProxyError('invalid_request', 'request body is not valid JSON'));
    }
    // 3. The client's ids, before anything uses them (the log line, the event, the reply). Only
    // top-level fields and metadata's values are read: safe on a body of any depth.
    const { ids, problem } = checkClientIds(body);
    if (ids.requestId !== undefined) accounting.requestId = ids.requestId;
    accounting.metadata = ids.metadata;
    accounting.requestedModel = ids.model ?? null;
    accounting.stream = ids.stream ?? false;
    logger = requestLogger(deps.logger, accounting.requestId, ids.metadata?.agent_id);
    setLogger(logger);
    if (problem !== undefined) return refuse(problem);
    if (nestsDeeperThan(body, MAX_JSON_DEPTH)) {
      return refuse(new ProxyError('invalid_request', `request body nests objects or arrays deeper than ${MAX_JSON_DEPTH} levels`));
    }

    // 4. Auth: a refused request is not attributed to the agent it names.
    if (accounting.unauthenticated) {
      return refuse(new ProxyError('unauthorized', `missing or wrong ${HEADERS.secret} header`));
    }
    // 5. Validation (names every field at fault).
    let request: ChatRequest;
    try {
      request = parseChatRequest(body);
    } catch (error) {
      return refuse(asProxyError(error));
    }
    accounting.stream = request.stream === true;
    if (!deps.router.hasModel(request.model)) {
      return refuse(new ProxyError('model_not_found', `unknown model "${request.model}"`));
    }
    if (message.reply === undefined || message.reply === '') {
      return refuse(new ProxyError('invalid_request', 'the message has no reply subject: send it as a NATS request'));
    }

    const context: RequestContext = {
      requestId: accounting.requestId,
      eventId: accounting.eventId,
      request,
      agentId: request.metadata?.agent_id,
      receivedAt,
      deadlineAt: deps.router.deadlineFor(request, receivedAt),
      stream: accounting.stream,
      logger,
      state: {},
    };
    // 6. Admission (limits module): may refuse with rate_limited / budget_exceeded.
    if (deps.hooks.beforeRoute !== undefined) {
      try {
        await deps.hooks.beforeRoute(context);
      } catch (error) {
        accounting.context = context;
        return refuse(asProxyError(error));
      }
    }
    accounting.context = context;

    // 7. Cache.
    const cacheable = deps.cache !== undefined && isCacheable(request);
    const key = cacheable ? cacheKey(request) : undefined;
    if (key !== undefined) {
      const hit = deps.cache!.get(key);
      if (hit !== undefined) {
        deps.counters.cacheHits++;
        accounting.accepted = true;
        accounting.cached = true;
        accounting.model = hit.model;
        accounting.provider = hit.provider;
        accounting.modelResolved = hit.model_resolved;
        accounting.tokens = { promptTokens: hit.usage.prompt_tokens, completionTokens: hit.usage.completion_tokens, estimated: hit.tokens_estimated === true };
        accounting.costUsd = 0;
        const reply: ChatReply = { ...hit, latency_ms: roundMs(performance.now() - accounting.started), request_id: accounting.requestId, cost_usd: 0, cached: true };
        delete reply.attempts;
        return this.#respond(message, reply, accounting, logger);
      }
    }

    // 8. Route.
    accounting.accepted = true;
    const controller = new Cancellation();
    const active: ActiveRequest = { requestId: accounting.requestId, controller };
    this.#active.add(active);
    const remainingMs = Math.max(0, context.deadlineAt - Date.now());
    const deadlineTimer = setTimeout(
      () => controller.abort(new ProxyError('upstream_timeout', `no complete answer within ${context.deadlineAt - receivedAt} ms`)),
      remainingMs,
    );
    try {
      if (accounting.stream) {
        deps.counters.streams++;
        return await this.#stream(message, request, context, controller, accounting, logger);
      }
      return await this.#chat(message, request, context, controller, accounting, logger, key);
    } finally {
      clearTimeout(deadlineTimer);
      this.#active.delete(active);
    }
  }

  async #chat(
    message: Msg,
    request: ChatRequest,
    context: RequestContext,
    controller: Cancellation,
    accounting: Accounting,
    logger: Logger,
    key: string | undefined,
  ): Promise<ErrorCode | undefined> {
    const deps = this.#deps;
    try {
      const response = await deps.router.chat({ request, signal: controller.signal, deadlineAt: context.deadlineAt });
      accounting.attempts = response.attempts;
      accounting.model = response.target.model;
      accounting.provider = response.target.provider;
      accounting.modelResolved = response.modelResolved;
      accounting.tokens = countTokens(request, response.usage, response);
      accounting.costUsd = requestCost(deps.config, response.target.model, accounting.tokens, response.attempts, request.model);
      const reply = this.#buildReply(accounting, {
        content: response.content,
        finishReason: response.finishReason,
        toolCalls: response.toolCalls,
        reasoningContent: response.reasoningContent,
        latencyMs: performance.now() - accounting.started,
      });
      const code = this.#respond(message, reply, accounting, logger);
      if (code === undefined && key !== undefined && reply.finish_reason !== 'error') deps.cache!.set(key, reply);
      return code;
    } catch (error) {
      const proxyError = asProxyError(error);
      this.#recordFailure(proxyError, accounting, request.model, undefined);
      if (proxyError.code === 'internal') logger.error({ err: error }, 'unexpected error while routing');
      this.#replyError(message, proxyError, accounting, logger);
      return proxyError.code;
    }
  }

  async #stream(
    message: Msg,
    request: ChatRequest,
    context: RequestContext,
    controller: Cancellation,
    accounting: Accounting,
    logger: Logger,
  ): Promise<ErrorCode | undefined> {
    const deps = this.#deps;
    const writer = new StreamWriter({
      connection: deps.connection,
      inbox: message.reply!,
      heartbeatMs: deps.heartbeatMs,
      logger,
      onClientGone: () => controller.abort(new ProxyError('cancelled', 'the client stopped listening')),
    });
    writer.startHeartbeats();
    let content = '';
    let reasoning = '';
    const toolCalls = new ToolCallAssembler();
    let finishReason: FinishReason | undefined;
    let usage: ProviderUsage | undefined;
    const produced = (): { content: string; reasoningContent: string; toolCalls: ToolCall[] } => ({ content, reasoningContent: reasoning, toolCalls: toolCalls.calls() });
    try {
      const routed = await deps.router.stream({ request, signal: controller.signal, deadlineAt: context.deadlineAt });
      accounting.attempts = routed.attempts;
      accounting.model = routed.target.model;
      accounting.provider = routed.target.provider;
      accounting.modelResolved = routed.target.physicalName;
      for await (const event of routed.events) {
        if (event.type === 'delta') {
          const delta = event.content ?? '';
          const hasTools = event.toolCalls !== undefined && event.toolCalls.length > 0;
          if (delta === '' && (event.reasoningContent ?? '') === '' && !hasTools) continue;
          if (accounting.ttftMs === null) accounting.ttftMs = performance.now() - accounting.started;
          content += delta;
          if (event.reasoningContent !== undefined) reasoning += event.reasoningContent;
          if (hasTools) toolCalls.add(event.toolCalls!);
          writer.chunk({
            delta,
            ...(event.reasoningContent !== undefined && event.reasoningContent !== '' ? { reasoning_delta: event.reasoningContent } : {}),
            ...(hasTools ? { tool_calls: event.toolCalls } : {}),
          });
        } else if (event.type === 'finish') {
          finishReason = event.finishReason;
        } else if (event.type === 'usage') {
          usage = event.usage;
        } else if (event.type === 'model') {
          accounting.modelResolved = event.modelResolved;
        }
        // A provider that keeps yielding after an abort must not keep us streaming.
        if (controller.signal.aborted) throw controller.signal.reason;
      }
      if (controller.signal.aborted) throw controller.signal.reason;
      if (finishReason === undefined) {
        throw new ProxyError('upstream_error', 'the upstream stream ended before it said it was finished');
      }
      const output = produced();
      accounting.tokens = countTokens(request, usage, output);
      accounting.costUsd = requestCost(deps.config, accounting.model ?? undefined, accounting.tokens, accounting.attempts, request.model);
      const reply = this.#buildReply(accounting, {
        content: output.content === '' && toolCalls.size > 0 ? null : output.content,
        finishReason,
        toolCalls: toolCalls.size > 0 ? output.toolCalls : undefined,
        reasoningContent: reasoning === '' ? undefined : reasoning,
        latencyMs: performance.now() - accounting.started,
      });
      reply.done = true;
      reply.ttft_ms = accounting.ttftMs === null ? null : roundMs(accounting.ttftMs);
      // The event leaves right before the terminal message, saying what the client got (an end too large even without the streamed fields becomes an error).
      return writer.end(reply, (code) => this.#publishUsage(accounting, code));
    } catch (error) {
      const proxyError = asProxyError(controller.signal.aborted && isProxyAbort(controller.signal.reason) ? controller.signal.reason : error);
      this.#recordFailure(proxyError, accounting, request.model, { request, usage, output: produced() });
      if (proxyError.code === 'internal') logger.error({ err: error }, 'unexpected error while streaming');
      if (writer.clientGone) logger.info({ chunks: writer.chunks }, 'stream client went away; upstream call aborted');
      this.#publishUsage(accounting, proxyError.code);
      writer.error(toErrorReply(proxyError, accounting.requestId));
      return proxyError.code;
    } finally {
      writer.stop();
    }
  }

  /** Accounting for a failed request: tokens already consumed (stream output, attempts) are kept and priced. */
  #recordFailure(
    error: ProxyError,
    accounting: Accounting,
    requestedModel: string,
    streamed: { request: ChatRequest; usage: ProviderUsage | undefined; output: { content: string; reasoningContent: string; toolCalls: ToolCall[] } } | undefined,
  ): void {
    if (error.attempts !== undefined && error.attempts.length > 0) accounting.attempts = error.attempts;
    const last = accounting.attempts[accounting.attempts.length - 1];
    if (accounting.provider === null && last !== undefined) {
      accounting.provider = last.provider;
      accounting.modelResolved = last.model_resolved;
    }
    const produced = streamed !== undefined && (streamed.usage !== undefined || streamed.output.content !== '' || streamed.output.reasoningContent !== '' || streamed.output.toolCalls.length > 0);
    if (produced) {
      accounting.tokens = countTokens(streamed.request, streamed.usage, streamed.output);
      accounting.costUsd = requestCost(this.#deps.config, accounting.model ?? undefined, accounting.tokens, accounting.attempts, requestedModel);
      return;
    }
    let promptTokens = 0;
    let completionTokens = 0;
    for (const attempt of accounting.attempts) {
      promptTokens += attempt.prompt_tokens ?? 0;
      completionTokens += attempt.completion_tokens ?? 0;
    }
    accounting.tokens = { promptTokens, completionTokens, estimated: false };
    accounting.costUsd = requestCost(this.#deps.config, undefined, undefined, accounting.attempts, requestedModel);
  }

  #buildReply(
    accounting: Accounting,
    output: { content: string | null; finishReason: FinishReason; toolCalls: ToolCall[] | undefined; reasoningContent: string | undefined; latencyMs: number },
  ): ChatReply {
    const reply: ChatReply = {
      content: output.content,
      usage: {
        prompt_tokens: accounting.tokens.promptTokens,
        completion_tokens: accounting.tokens.completionTokens,
        total_tokens: accounting.tokens.promptTokens + accounting.tokens.completionTokens,
      },
      provider: accounting.provider ?? '',
      model_resolved: accounting.modelResolved ?? '',
      latency_ms: roundMs(output.latencyMs),
      model: accounting.model ?? '',
      request_id: accounting.requestId,
      finish_reason: output.finishReason,
      cost_usd: accounting.costUsd,
      cached: accounting.cached,
    };
    if (accounting.tokens.estimated) reply.tokens_estimated = true;
    if (output.toolCalls !== undefined && output.toolCalls.length > 0) reply.tool_calls = output.toolCalls;
    if (output.reasoningContent !== undefined && output.reasoningContent !== '') reply.reasoning_content = output.reasoningContent;
    if (accounting.attempts.length > 1) reply.attempts = accounting.attempts;
    return reply;
  }

  /**
   * Sends a reply, its usage event right before it. A reply too large for the server's max_payload
   * becomes a payload_too_large error, decided before the event leaves so that the event says what
   * the client got.
   */
  #respond(message: Msg, reply: ChatReply, accounting: Accounting, logger: Logger): ErrorCode | undefined {
    const body = JSON.stringify(reply);
    if (!fitsMaxPayload(this.#deps.connection, body, 0)) {
      const tooLarge = new ProxyError('payload_too_large', `the reply is larger than the NATS server's max_payload (${this.#deps.connection.info?.max_payload ?? '?'} bytes)`);
      this.#replyError(message, tooLarge, accounting, logger);
      return tooLarge.code;
    }
    this.#publishUsage(accounting, undefined);
    try {
      message.respond(body);
    } catch (error) {
      logger.warn({ err: error }, 'reply could not be sent');
    }
    return undefined;
  }

  /** Sends an error reply (when the request has a reply subject), its usage event right before it. */
  #replyError(message: Msg, error: ProxyError, accounting: Accounting, logger: Logger, stream = false): void {
    if (!accounting.eventSent) this.#publishUsage(accounting, error.code);
    if (message.reply === undefined || message.reply === '') return;
    const body = toErrorReply(error, accounting.requestId);
    try {
      message.respond(JSON.stringify(body), { headers: errorHeaders(body.error.status, body.error.message, stream) });
    } catch (sendError) {
      logger.warn({ err: sendError }, 'error reply could not be sent');
    }
  }
}

function isProxyAbort(reason: unknown): reason is ProxyError {
  return reason instanceof ProxyError;
}
