import type { Msg } from '@nats-io/nats-core';
import { asProxyError, type ErrorCode } from '../contract/errors.js';
import type { ChatReply } from '../contract/reply.js';
import type { CachedAnswer, Coalesced } from '../cache/index.js';
import type { CancelSignal } from '../providers/transport/cancellation.js';
import type { Admitted } from './admission.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';
import { cacheKeyFor, isCacheable } from './response-cache.js';
import { noteFinishReasons } from '../telemetry/tracing.js';
import { cachedReply, lookupAnswer, storedReply } from './cache-replay.js';
import { toFallbacksElsewhere } from './fallbacks-elsewhere.js';
import { NOT_PASSED } from './forward.js';

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
  const { request } = admitted;
  const traceContext = admitted.context.traceContext;
  const cache = deps.cache !== undefined && isCacheable(request) ? deps.cache : undefined;
  const key = cache === undefined ? undefined : cacheKeyFor(request, deps.config.models.get(request.model));
  if (cache !== undefined && key !== undefined) {
    if (request.cache !== 'refresh') {
      const hit = await lookupAnswer(cache, key, record.logger);
      if (hit !== undefined) return replyFromCache(message, record, hit.reply, traceContext, deps);
    }
    // Identical requests in flight share one upstream call (streamed or not: one entry serves both):
    // the first computes, the others wait for it (bounded by cache.coalesce_wait_ms) and are answered as
    // cache hits.
    let outcome: Coalesced<CachedAnswer>;
    try {
      outcome = await cache.coalescer.run(
        key,
        async () => {
          const { reply } = await routed(record, admitted, signal, deps);
          return { stored_at: Date.now(), model: request.model, reply };
        },
        () => lookupAnswer(cache, key, record.logger),
        signal,
      );
    } catch (error) {
      return failedOrElsewhere(message, record, admitted, error, deps);
    }
    if (outcome.role === 'joined' || outcome.role === 'shared')
      return replyFromCache(message, record, outcome.value.reply, traceContext, deps);
    const { reply } = outcome.value;
    noteFinishReasons(traceContext, reply.finish_reason, reply.choices);
    const code = deps.delivery.reply(message, record, reply);
    if (code === undefined && reply.finish_reason !== 'error')
      void cache.store.set(key, { ...outcome.value, reply: storedReply(reply) }).catch(() => undefined);
    return code;
  }
  try {
    const { reply } = await routed(record, admitted, signal, deps);
    noteFinishReasons(traceContext, reply.finish_reason, reply.choices);
    return deps.delivery.reply(message, record, reply);
  } catch (error) {
    return failedOrElsewhere(message, record, admitted, error, deps);
  }
}

/** The router's answer for this request, recorded on its record (throws the router's error). */
async function routed(
  record: RequestRecord,
  admitted: Admitted,
  signal: CancelSignal,
  deps: StageDependencies,
): Promise<{ reply: ChatReply }> {
  const { request, plan } = admitted;
  record.accepted = true;
  const response = await deps.router.chat({ request, signal, plan, traceContext: admitted.context.traceContext });
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
  return { reply };
}

/** The router's error answered here, unless the request's fallbacks on other nodes take it (fallbacks-elsewhere.ts). */
async function failedOrElsewhere(
  message: Msg,
  record: RequestRecord,
  admitted: Admitted,
  error: unknown,
  deps: StageDependencies,
): Promise<ErrorCode | undefined> {
  const proxyError = asProxyError(error);
  const passed = await toFallbacksElsewhere(message, record, admitted, proxyError, deps);
  if (passed !== NOT_PASSED) return passed;
  return failed(message, record, proxyError, deps);
}

function failed(message: Msg, record: RequestRecord, error: unknown, deps: StageDependencies): ErrorCode | undefined {
  const proxyError = asProxyError(error);
  record.failed(deps.config, proxyError);
  if (proxyError.code === 'internal') record.logger.error({ err: error }, 'unexpected error while routing');
  return deps.delivery.error(message, record, proxyError);
}

/** A cache hit: the stored answer with this request's id, `cached: true`, no cost; the original token counts. */
function replyFromCache(
  message: Msg,
  record: RequestRecord,
  hit: ChatReply,
  traceContext: Admitted['context']['traceContext'],
  deps: StageDependencies,
): ErrorCode | undefined {
  noteFinishReasons(traceContext, hit.finish_reason, hit.choices);
  return deps.delivery.reply(message, record, cachedReply(record, hit, deps));
}
