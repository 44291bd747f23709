import type { Msg } from '@nats-io/nats-core';
import { asProxyError, type ErrorCode } from '../contract/errors.js';
import type { ChatReply } from '../contract/reply.js';
import { roundMs } from '../contract/rounding.js';
import type { CancelSignal } from '../providers/transport/cancellation.js';
import type { Admitted } from './admission.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';
import { cacheKey, isCacheable } from './response-cache.js';
import { noteFinishReasons } from '../telemetry/tracing.js';

/**
 * The one-reply stage: a cached answer when the request is cacheable and one is there, else the
 * router's answer, delivered as one reply (and cached when cacheable).
 */
export async function answerOnce(
  message: Msg,
  record: RequestRecord,
  admitted: Admitted,
  signal: CancelSignal,
  deps: StageDependencies,
): Promise<ErrorCode | undefined> {
  const { request, plan } = admitted;
  const traceContext = admitted.context.traceContext;
  const key = deps.cache !== undefined && isCacheable(request) ? cacheKey(request) : undefined;
  if (key !== undefined) {
    const hit = deps.cache!.get(key);
    if (hit !== undefined) {
      noteFinishReasons(traceContext, hit.finish_reason, hit.choices);
      return replyFromCache(message, record, hit, deps);
    }
  }
  record.accepted = true;
  try {
    const response = await deps.router.chat({ request, signal, plan, traceContext });
    record.attempts = response.attempts;
    record.model = response.target.model;
    record.provider = response.target.provider;
    record.modelResolved = response.modelResolved;
    record.answered(deps.config, response.usage, response);
    const reply = record.reply({
      content: response.content,
      finishReason: response.finishReason,
      toolCalls: response.toolCalls,
      reasoningContent: response.reasoningContent,
      refusal: response.refusal,
      logprobs: response.logprobs,
      // No more choices than were asked for, whatever the provider sent.
      choices: (request.n ?? 1) > 1 ? response.choices?.slice(0, request.n) : undefined,
    });
    noteFinishReasons(traceContext, reply.finish_reason, reply.choices);
    const code = deps.delivery.reply(message, record, reply);
    if (code === undefined && key !== undefined && reply.finish_reason !== 'error') deps.cache!.set(key, reply);
    return code;
  } catch (error) {
    const proxyError = asProxyError(error);
    record.failed(deps.config, proxyError);
    if (proxyError.code === 'internal') record.logger.error({ err: error }, 'unexpected error while routing');
    return deps.delivery.error(message, record, proxyError);
  }
}

/** A cache hit: the stored answer with this request's id, `cached: true`, no cost; the original token counts. */
function replyFromCache(
  message: Msg,
  record: RequestRecord,
  hit: ChatReply,
  deps: StageDependencies,
): ErrorCode | undefined {
  deps.counters.cacheHits++;
  record.accepted = true;
  record.cached = true;
  record.model = hit.model;
  record.provider = hit.provider;
  record.modelResolved = hit.model_resolved;
  record.tokens = {
    promptTokens: hit.usage.prompt_tokens,
    completionTokens: hit.usage.completion_tokens,
    estimated: hit.tokens_estimated === true,
  };
  record.costUsd = 0;
  const reply: ChatReply = {
    ...hit,
    latency_ms: roundMs(performance.now() - record.started),
    request_id: record.requestId,
    cost_usd: 0,
    cached: true,
  };
  delete reply.attempts;
  return deps.delivery.reply(message, record, reply);
}
