import type { Msg } from '@nats-io/nats-core';
import { asProxyError, ProxyError, toErrorReply, type ErrorCode } from '../contract/errors.js';
import { roundMs } from '../contract/rounding.js';
import type { Cancellation } from '../providers/transport/cancellation.js';
import type { ProviderUsage } from '../providers/types.js';
import type { Admitted } from './admission.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';
import { StreamWriter } from './stream-writer.js';
import { StreamedChoice } from './streamed-choice.js';
import { noteFinishReasons } from '../telemetry/tracing.js';
import type { CachedAnswer, Coalesced } from '../cache/index.js';
import type { ChatReply } from '../contract/reply.js';
import { ChunkRecorder, lookupAnswer, replayStream, streamedAnswer, type ReplayChunk } from './cache-replay.js';
import { cacheKeyFor, isCacheable } from './response-cache.js';
import { toFallbacksElsewhere } from './fallbacks-elsewhere.js';
import { NOT_PASSED } from './forward.js';

/**
 * The stream stage: a cached answer replayed when the request is cacheable and one is there, else the
 * router's stream relayed chunk by chunk to the client's inbox, with heartbeats while the upstream (or
 * the identical request this one waits for) is silent, and exactly one terminal message (the whole
 * reply, or an error), the usage event right before it. A stream that completed cleanly is cached with
 * its chunks; one that failed or was cancelled is not.
 */
export async function relayStream(
  message: Msg,
  record: RequestRecord,
  admitted: Admitted,
  controller: Cancellation,
  deps: StageDependencies,
): Promise<ErrorCode | undefined> {
  const { request } = admitted;
  const writer = new StreamWriter({
    connection: deps.connection,
    inbox: message.reply!,
    heartbeatMs: deps.heartbeatMs,
    logger: record.logger,
    onClientGone: () => controller.abort(new ProxyError('cancelled', 'the client stopped listening')),
  });
  writer.startHeartbeats();
  try {
    const cache = deps.cache !== undefined && isCacheable(request) ? deps.cache : undefined;
    if (cache === undefined) return (await relayLive(writer, record, admitted, controller, deps)).code;
    const key = cacheKeyFor(request, deps.config.models.get(request.model));
    if (request.cache !== 'refresh') {
      const hit = await lookupAnswer(cache, key, record.logger);
      if (hit !== undefined) return await replayStream(writer, record, hit, controller.signal, deps);
    }
    // Identical requests share one upstream call: the first streams live, the others (streamed or not)
    // wait for it and are answered from its answer. A leader without an answer (failed, cancelled) lets
    // the waiting ones elect another.
    let liveCode: ErrorCode | undefined;
    let outcome: Coalesced<CachedAnswer>;
    try {
      outcome = await cache.coalescer.run(
        key,
        async () => {
          const recorder = new ChunkRecorder(deps.config.cache.max_entry_bytes);
          const live = await relayLive(writer, record, admitted, controller, deps, recorder);
          liveCode = live.code;
          if (live.reply === undefined || recorder.chunks === undefined) throw NO_ANSWER;
          const answer = streamedAnswer(request.model, live.reply, recorder.chunks);
          void cache.store.set(key, answer).catch(() => undefined);
          return answer;
        },
        () => lookupAnswer(cache, key, record.logger),
        controller.signal,
      );
    } catch (error) {
      if (error === NO_ANSWER) return liveCode;
      // Cancelled (or its client gone) while waiting for an identical request's answer.
      if (controller.signal.aborted) return failStream(writer, record, controller, deps, error);
      throw error;
    }
    if (outcome.role === 'joined' || outcome.role === 'shared')
      return await replayStream(writer, record, outcome.value, controller.signal, deps);
    return liveCode;
  } catch (error) {
    // The router failed before anything was sent: outside any coalesced computation (identical requests
    // waiting for an answer to share must not wait for a relay, which has none), another node's fallback
    // may take it.
    if (!(error instanceof Elsewhere)) throw error;
    const passed = await toFallbacksElsewhere(message, record, admitted, asProxyError(error.cause), deps, () =>
      // Once a fallback answers, its own heartbeats and chunks reach the client: this writer says no more.
      writer.stop(),
    );
    return passed !== NOT_PASSED ? passed : failStream(writer, record, controller, deps, error.cause);
  } finally {
    writer.stop();
  }
}

/** Thrown out of a coalesced stream that produced nothing to share (its own client got the outcome). */
const NO_ANSWER = Symbol('no answer to share');

/** Thrown out of relayLive when the router failed before anything was sent: relayStream passes it on. */
class Elsewhere {
  constructor(readonly cause: unknown) {}
}

/**
 * The router's stream relayed live. Returns the outcome's code and, for a clean end the client got,
 * the reply (for the cache). Throws only `Elsewhere`: the router failed before the first content, and
 * the request may still go to its model's fallbacks on other nodes.
 */
async function relayLive(
  writer: StreamWriter,
  record: RequestRecord,
  admitted: Admitted,
  controller: Cancellation,
  deps: StageDependencies,
  recorder?: ChunkRecorder,
): Promise<{ code: ErrorCode | undefined; reply?: ChatReply }> {
  const { request, plan } = admitted;
  // Choice 0 is the reply's own fields; the others (`n` > 1) only its `choices`.
  const choices: StreamedChoice[] = [new StreamedChoice()];
  const several = (request.n ?? 1) > 1;
  let usage: ProviderUsage | undefined;
  const produced = () => {
    const outputs = choices.map((choice) => choice.output());
    return { ...outputs[0]!, ...(outputs.length > 1 ? { choices: outputs } : {}) };
  };
  record.accepted = true;
  try {
    const traceContext = admitted.context.traceContext;
    const routed = await deps.router.stream({ request, signal: controller.signal, plan, traceContext });
    record.attempts = routed.attempts;
    record.model = routed.target.model;
    record.provider = routed.target.provider;
    record.modelResolved = routed.target.physicalName;
    for await (const event of routed.events) {
      if (event.type === 'delta') {
        const delta = event.content ?? '';
        const hasTools = event.toolCalls !== undefined && event.toolCalls.length > 0;
        if (
          delta === '' &&
          (event.reasoningContent ?? '') === '' &&
          (event.refusal ?? '') === '' &&
          !hasTools &&
          event.logprobs === undefined
        )
          continue;
        const index = event.index ?? 0;
        // A provider's index past what was asked for is not trusted to grow the reply without bound.
        if (index >= (request.n ?? 1)) continue;
        if (record.ttftMs === null) record.ttftMs = performance.now() - record.started;
        while (choices.length <= index) choices.push(new StreamedChoice());
        choices[index]!.add(event);
        const chunk: ReplayChunk = {
          ...(several ? { index } : {}),
          delta,
          ...(event.reasoningContent !== undefined && event.reasoningContent !== ''
            ? { reasoning_delta: event.reasoningContent }
            : {}),
          ...(event.refusal !== undefined && event.refusal !== '' ? { refusal_delta: event.refusal } : {}),
          ...(hasTools ? { tool_calls: event.toolCalls } : {}),
          ...(event.logprobs !== undefined ? { logprobs: event.logprobs } : {}),
        };
        writer.chunk(chunk);
        recorder?.add(chunk);
      } else if (event.type === 'finish') {
        const index = event.index ?? 0;
        if (index >= (request.n ?? 1)) continue;
        while (choices.length <= index) choices.push(new StreamedChoice());
        choices[index]!.finishReason = event.finishReason;
      } else if (event.type === 'usage') {
        usage = event.usage;
      } else if (event.type === 'model') {
        record.modelResolved = event.modelResolved;
      }
      // A provider that keeps yielding after an abort must not keep us streaming.
      if (controller.signal.aborted) throw controller.signal.reason;
    }
    if (controller.signal.aborted) throw controller.signal.reason;
    if (choices[0]!.finishReason === undefined)
      throw new ProxyError('upstream_error', 'the upstream stream ended before it said it was finished');
    const output = produced();
    record.answered(deps.config, usage, output);
    const reply = record.reply({
      content: output.content,
      finishReason: output.finishReason,
      toolCalls: output.toolCalls,
      reasoningContent: output.reasoningContent,
      refusal: output.refusal,
      logprobs: output.logprobs,
      choices: output.choices,
    });
    reply.done = true;
    noteFinishReasons(traceContext, reply.finish_reason, reply.choices);
    reply.ttft_ms = record.ttftMs === null ? null : roundMs(record.ttftMs);
    // The record ends right before the terminal message, with what the client gets (an end too large
    // even without the streamed fields becomes an error).
    const code = writer.end(reply, (outcome) => deps.delivery.finish(record, outcome));
    return code === undefined && reply.finish_reason !== 'error' ? { code, reply } : { code };
  } catch (error) {
    // Nothing sent yet (fallbacks happen only before the first content): another node's fallback may take it.
    if (writer.chunks === 0 && !controller.signal.aborted) throw new Elsewhere(error);
    return { code: failStream(writer, record, controller, deps, error, { usage, output: produced() }) };
  }
}

/** A stream that ends in an error (the cancellation's reason when cancelled): recorded, then one terminal error message. */
function failStream(
  writer: StreamWriter,
  record: RequestRecord,
  controller: Cancellation,
  deps: StageDependencies,
  error: unknown,
  partial?: Parameters<RequestRecord['failed']>[2],
): ErrorCode {
  const proxyError = asProxyError(
    controller.signal.aborted && controller.signal.reason instanceof ProxyError ? controller.signal.reason : error,
  );
  record.failed(deps.config, proxyError, partial);
  if (proxyError.code === 'internal') record.logger.error({ err: error }, 'unexpected error while streaming');
  if (writer.clientGone)
    record.logger.info({ chunks: writer.chunks }, 'stream client went away; upstream call aborted');
  if (deps.delivery.finish(record, proxyError.code)) writer.error(toErrorReply(proxyError, record.requestId));
  return proxyError.code;
}
