import { randomUUID } from 'node:crypto';
import { type Caller, withKeyIdentity } from '../auth/index.js';
import type { ResolvedConfig } from '../config/load.js';
import type { ErrorCode, ProxyError } from '../contract/errors.js';
import type { AttemptRecord, ChatReply, ChoiceLogprobs, FinishReason, ReplyChoice } from '../contract/reply.js';
import type { ChatRequest, RequestMetadata, ToolCall } from '../contract/request.js';
import { roundMs } from '../contract/rounding.js';
import type { UsageStatus } from '../contract/usage-event.js';
import type { ProviderChoice, ProviderUsage } from '../providers/types.js';
import type { Logger } from '../telemetry/logger.js';
import { buildUsageEvent, type BuiltUsageEvent } from '../usage/event.js';
import { estimatePromptTokens } from '../usage/tokens.js';
import { countTokens, requestCost, type ProducedOutput, type TokenCount } from './accounting.js';
import type { RequestContext, RequestOutcome } from './hooks.js';

/** The answer's own part of a reply (the rest comes from the record). */
export interface AnswerOutput {
  content: string | null;
  finishReason: FinishReason;
  toolCalls?: ToolCall[] | undefined;
  reasoningContent?: string | undefined;
  refusal?: string | undefined;
  logprobs?: ChoiceLogprobs | undefined;
  /** Every choice (the first too), when the provider gave more than one (`n` > 1). */
  choices?: ProviderChoice[] | undefined;
}

/** A provider's choice in OpenAI's shape (`choices[i]`). */
function replyChoice(choice: ProviderChoice, index: number): ReplyChoice {
  const message: ReplyChoice['message'] = {
    role: 'assistant',
    content: choice.content,
    refusal: choice.refusal ?? null,
  };
  if (choice.toolCalls !== undefined && choice.toolCalls.length > 0) message.tool_calls = choice.toolCalls;
  if (choice.reasoningContent !== undefined && choice.reasoningContent !== '')
    message.reasoning_content = choice.reasoningContent;
  return { index, message, logprobs: choice.logprobs ?? null, finish_reason: choice.finishReason };
}

/**
 * One request as the worker handles it: one record, filled in as the request moves through the
 * stages (admission, one reply or a relayed stream) and never copied. The reply, the usage event
 * and the limits' outcome are views of it; `finish` fixes its outcome right before the reply is
 * written, and what happens then (the usage event, the limits settle, counters, the log line)
 * listens to the finished record (pipeline.ts).
 */
export class RequestRecord {
  /** The worker's own id for this request: the usage event's key and the concurrency lease's. */
  readonly eventId: string = randomUUID();
  /** The client's correlation id, or `eventId` when it gave no valid one. */
  requestId: string = this.eventId;
  /** Epoch ms the request arrived. */
  readonly receivedAt = Date.now();
  /** `performance.now()` when the request arrived. */
  readonly started = performance.now();
  metadata: RequestMetadata | undefined;
  /** The request's own child logger (request and agent ids) once its ids are known. */
  logger: Logger;
  requestedModel: string | null = null;
  /** The logical model that served the request (a fallback, maybe). */
  model: string | null = null;
  provider: string | null = null;
  modelResolved: string | null = null;
  /** Passed every refusal check: from here on a failure is `error`, not `rejected`. */
  accepted = false;
  tokens: TokenCount = { promptTokens: 0, completionTokens: 0, estimated: false };
  costUsd = 0;
  /** A cache hit: what the answer would have cost upstream (the usage event's `saved_usd`). */
  savedUsd = 0;
  ttftMs: number | null = null;
  stream = false;
  cached = false;
  /** Passed on to a worker that serves the model (forward.ts): that worker answers and publishes the event. */
  handedOver = false;
  attempts: AttemptRecord[] = [];
  /** The validated request, once it is one. */
  request: ChatRequest | undefined;
  /** Set once the request passed its checks (the hooks see it; afterRoute settles it). */
  context: RequestContext | undefined;
  /** How the request ended: undefined (served) or the error code, once `finished`. */
  code: ErrorCode | undefined;
  finished = false;
  /** Milliseconds from arrival to `finish`. */
  latencyMs = 0;
  /**
   * The sender is not let in (no secret or key, a bad key, headers that cannot be read, metadata that
   * contradicts its key): its event goes to `unauthenticated`, not to the agent it names.
   */
  unauthenticated: boolean;
  #promptTokens: number | undefined;

  constructor(
    /** Who sent it (auth/caller.ts): a verified key decides the agent and microDAO. */
    readonly caller: Caller,
    logger: Logger,
  ) {
    this.logger = logger;
    this.unauthenticated = caller.refusal !== undefined;
    // Known before the body is read: a key's request refused for its size or its JSON is still its agent's.
    if (caller.key !== undefined) this.metadata = withKeyIdentity(undefined, caller.key);
  }

  get status(): UsageStatus {
    if (this.code === undefined) return 'ok';
    if (this.code === 'cancelled') return 'cancelled';
    return this.accepted ? 'error' : 'rejected';
  }

  /** The prompt's token estimate, tokenized once for the limits and for accounting together. */
  promptTokens(): number {
    this.#promptTokens ??= this.request === undefined ? 0 : estimatePromptTokens(this.request);
    return this.#promptTokens;
  }

  /** Fixes the outcome; called once, right before the reply (or the stream's terminal message) is written. */
  finish(code: ErrorCode | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.code = code;
    this.latencyMs = performance.now() - this.started;
  }

  /** A served answer: where it came from, its tokens (the provider's, else estimated once) and its cost. */
  answered(config: Pick<ResolvedConfig, 'models'>, usage: ProviderUsage | undefined, output: ProducedOutput): void {
    this.tokens = countTokens(usage, () => this.promptTokens(), output);
    this.costUsd = requestCost(config, this.model ?? undefined, this.tokens, this.attempts);
  }

  /**
   * A failed request: tokens already consumed (a stream's output so far, or failed attempts that
   * reported usage) are kept and priced.
   */
  failed(
    config: Pick<ResolvedConfig, 'models'>,
    error: ProxyError,
    streamed?: { usage: ProviderUsage | undefined; output: ProducedOutput },
  ): void {
    if (error.attempts !== undefined && error.attempts.length > 0) this.attempts = error.attempts;
    const last = this.attempts[this.attempts.length - 1];
    if (this.provider === null && last !== undefined) {
      this.provider = last.provider;
      this.modelResolved = last.model_resolved;
    }
    const output = streamed?.output;
    if (
      streamed !== undefined &&
      (streamed.usage !== undefined ||
        (output!.content ?? '') !== '' ||
        (output!.reasoningContent ?? '') !== '' ||
        (output!.refusal ?? '') !== '' ||
        (output!.toolCalls?.length ?? 0) > 0)
    ) {
      this.answered(config, streamed.usage, output!);
      return;
    }
    let promptTokens = 0;
    let completionTokens = 0;
    for (const attempt of this.attempts) {
      promptTokens += attempt.prompt_tokens ?? 0;
      completionTokens += attempt.completion_tokens ?? 0;
    }
    this.tokens = { promptTokens, completionTokens, estimated: false };
    this.costUsd = requestCost(config, undefined, undefined, this.attempts);
  }

  /** The reply view (DESIGN.md, "Reply"), seed fields first. */
  reply(output: AnswerOutput): ChatReply {
    const reply: ChatReply = {
      content: output.content,
      usage: {
        prompt_tokens: this.tokens.promptTokens,
        completion_tokens: this.tokens.completionTokens,
        total_tokens: this.tokens.promptTokens + this.tokens.completionTokens,
      },
      provider: this.provider ?? '',
      model_resolved: this.modelResolved ?? '',
      latency_ms: roundMs(performance.now() - this.started),
      model: this.model ?? '',
      request_id: this.requestId,
      finish_reason: output.finishReason,
      cost_usd: this.costUsd,
      cached: this.cached,
    };
    if (this.tokens.estimated) reply.tokens_estimated = true;
    if (output.toolCalls !== undefined && output.toolCalls.length > 0) reply.tool_calls = output.toolCalls;
    if (output.reasoningContent !== undefined && output.reasoningContent !== '')
      reply.reasoning_content = output.reasoningContent;
    if (output.refusal !== undefined && output.refusal !== '') reply.refusal = output.refusal;
    if (output.logprobs !== undefined) reply.logprobs = output.logprobs;
    if (output.choices !== undefined && output.choices.length > 1) reply.choices = output.choices.map(replyChoice);
    if (this.attempts.length > 1) reply.attempts = this.attempts;
    return reply;
  }

  /** The usage event view (DESIGN.md, "Usage event"), by the worker `workerId` on `node`. */
  usageEvent(workerId: string, node?: string): BuiltUsageEvent {
    return buildUsageEvent({
      eventId: this.eventId,
      requestId: this.requestId,
      metadata: this.metadata,
      unauthenticated: this.unauthenticated,
      keyId: this.caller.key?.id,
      model: this.model ?? this.requestedModel,
      provider: this.provider,
      modelResolved: this.modelResolved,
      status: this.status,
      errorCode: this.code ?? null,
      promptTokens: this.tokens.promptTokens,
      completionTokens: this.tokens.completionTokens,
      tokensEstimated: this.tokens.estimated,
      cachedPromptTokens: this.tokens.cachedPromptTokens,
      costUsd: this.costUsd,
      savedUsd: this.cached ? this.savedUsd : undefined,
      latencyMs: this.latencyMs,
      ttftMs: this.ttftMs,
      stream: this.stream,
      cached: this.cached,
      attempts: this.attempts,
      workerId,
      node,
    });
  }

  /** The limits' view (`afterRoute`'s outcome). */
  outcome(): RequestOutcome {
    return {
      status: this.status,
      errorCode: this.code ?? null,
      model: this.model ?? this.requestedModel ?? '',
      promptTokens: this.tokens.promptTokens,
      completionTokens: this.tokens.completionTokens,
      tokensEstimated: this.tokens.estimated,
      costUsd: this.costUsd,
      cached: this.cached,
      ...(this.handedOver ? { handedOver: true } : {}),
    };
  }
}
