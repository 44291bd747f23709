import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { CacheKey, CachedAnswer, JsonValue, ResponseCacheParts } from '../cache/index.js';
import { asProxyError, toErrorReply, type ErrorCode } from '../contract/errors.js';
import type { ChatReply, StreamChunk } from '../contract/reply.js';
import { roundMs } from '../contract/rounding.js';
import type { CancelSignal } from '../providers/transport/cancellation.js';
import { requestCost } from './accounting.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';
import type { StreamWriter } from './stream-writer.js';

/**
 * Answers from the response cache (issue 18), for both reply shapes: one reply, or a stream replayed
 * chunk by chunk. One entry serves both: a streamed answer is stored with its chunks (replayed as they
 * were sent), one that was not streamed is replayed as one chunk per choice.
 */

export type ReplayChunk = Omit<StreamChunk, 'seq'>;

/** Fields of a stream's terminal message that are not part of the answer itself. */
const STREAM_ONLY_FIELDS = ['done', 'ttft_ms', 'omitted', 'attempts'] as const;

/** What is stored of a served reply: the answer, without the stream's own fields or the attempts. */
export function storedReply(reply: ChatReply): ChatReply {
  const stored: ChatReply = { ...reply };
  for (const field of STREAM_ONLY_FIELDS) delete stored[field];
  return stored;
}

/**
 * Marks the record as answered from the cache (`cached: true`, no cost, the original tokens, what the
 * answer would have cost as `saved_usd`) and returns the stored reply made this request's.
 */
export function cachedReply(record: RequestRecord, hit: ChatReply, deps: StageDependencies): ChatReply {
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
  record.savedUsd = requestCost(deps.config, hit.model, record.tokens, []);
  const reply: ChatReply = {
    ...storedReply(hit),
    latency_ms: roundMs(performance.now() - record.started),
    request_id: record.requestId,
    cost_usd: 0,
    cached: true,
  };
  return reply;
}

/**
 * Records a live stream's chunks for the cache, up to a bound: once their text passes `maxBytes` (a
 * lower bound of their JSON size: UTF-8 never takes fewer bytes than UTF-16 units) the answer could not
 * be stored anyway, so recording stops and nothing is kept.
 */
export class ChunkRecorder {
  readonly #maxBytes: number;
  #chunks: ReplayChunk[] | undefined = [];
  #bytes = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  add(chunk: ReplayChunk): void {
    if (this.#chunks === undefined) return;
    this.#bytes +=
      16 +
      chunk.delta.length +
      (chunk.reasoning_delta?.length ?? 0) +
      (chunk.refusal_delta?.length ?? 0) +
      (chunk.tool_calls === undefined ? 0 : JSON.stringify(chunk.tool_calls).length);
    if (this.#bytes > this.#maxBytes) this.#chunks = undefined;
    else this.#chunks.push(chunk);
  }

  /** The chunks, or undefined when they passed the bound. */
  get chunks(): ReplayChunk[] | undefined {
    return this.#chunks;
  }
}

/** The chunks a reply that was not streamed replays as: one per choice, carrying everything it said. */
export function chunksOf(reply: ChatReply): ReplayChunk[] {
  if (reply.choices !== undefined && reply.choices.length > 1) {
    return reply.choices.map((choice) =>
      chunkOf(
        {
          content: choice.message.content,
          reasoning: choice.message.reasoning_content,
          refusal: choice.message.refusal ?? undefined,
          toolCalls: choice.message.tool_calls,
        },
        choice.index,
      ),
    );
  }
  return [
    chunkOf({
      content: reply.content,
      reasoning: reply.reasoning_content,
      refusal: reply.refusal,
      toolCalls: reply.tool_calls,
    }),
  ];
}

function chunkOf(
  said: { content: string | null; reasoning?: string; refusal?: string; toolCalls?: ChatReply['tool_calls'] },
  index?: number,
): ReplayChunk {
  const chunk: ReplayChunk = { ...(index === undefined ? {} : { index }), delta: said.content ?? '' };
  if (said.reasoning !== undefined && said.reasoning !== '') chunk.reasoning_delta = said.reasoning;
  if (said.refusal !== undefined && said.refusal !== '') chunk.refusal_delta = said.refusal;
  if (said.toolCalls !== undefined && said.toolCalls.length > 0)
    chunk.tool_calls = said.toolCalls.map((call, position) => ({
      index: position,
      id: call.id,
      type: 'function',
      function: { name: call.function.name, arguments: call.function.arguments },
    }));
  return chunk;
}

/** The answer to store for a stream that completed cleanly: the reply and the chunks as sent. */
export function streamedAnswer(model: string, reply: ChatReply, chunks: ReplayChunk[]): CachedAnswer {
  return { stored_at: Date.now(), model, reply: storedReply(reply), chunks: chunks as unknown as JsonValue[] };
}

const FINISH_REASONS = new Set(['stop', 'length', 'tool_calls', 'content_filter', 'error']);
const isCount = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;
const isOptionalString = (value: unknown) => value === undefined || typeof value === 'string';
const isObject = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === 'object' && !Array.isArray(value);

/** A reply's tool calls: `{id, function: {name, arguments}}` with strings. */
function areToolCalls(value: unknown): boolean {
  if (!Array.isArray(value)) return false;
  return value.every(
    (call) =>
      isObject(call) &&
      typeof call.id === 'string' &&
      isObject(call.function) &&
      typeof call.function.name === 'string' &&
      typeof call.function.arguments === 'string',
  );
}

/**
 * Whether a stored answer can be served: the reply fields the record and the client rely on, and chunks
 * that are chunks (no `seq` of their own, text where text goes). The store is ours, but a damaged or
 * foreign value must be a miss, never a malformed reply or a broken stream. Checked by hand: it runs on
 * every hit and touches a few fields per chunk.
 */
export function servable(answer: CachedAnswer): boolean {
  const reply = answer.reply as Partial<ChatReply> | null;
  if (reply === null || typeof reply !== 'object') return false;
  const usage = reply.usage;
  if (usage === null || typeof usage !== 'object' || !isCount(usage.prompt_tokens) || !isCount(usage.completion_tokens))
    return false;
  if (typeof reply.model !== 'string' || typeof reply.provider !== 'string' || typeof reply.model_resolved !== 'string')
    return false;
  if (reply.content !== null && typeof reply.content !== 'string') return false;
  if (!FINISH_REASONS.has(reply.finish_reason as string)) return false;
  if (!isOptionalString(reply.reasoning_content) || !isOptionalString(reply.refusal)) return false;
  if (reply.tool_calls !== undefined && !areToolCalls(reply.tool_calls)) return false;
  if (reply.choices !== undefined) {
    if (!Array.isArray(reply.choices)) return false;
    for (const choice of reply.choices as unknown[]) {
      if (!isObject(choice) || !isCount(choice.index) || !isObject(choice.message)) return false;
      const message = choice.message;
      if (message.content !== null && typeof message.content !== 'string') return false;
      if (!isOptionalString(message.reasoning_content)) return false;
      if (message.refusal !== null && !isOptionalString(message.refusal)) return false;
      if (message.tool_calls !== undefined && !areToolCalls(message.tool_calls)) return false;
    }
  }
  if (answer.chunks === undefined) return true;
  for (const value of answer.chunks) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
    const chunk = value as Record<string, unknown>;
    if ('seq' in chunk || typeof chunk.delta !== 'string') return false;
    if (!isOptionalString(chunk.reasoning_delta) || !isOptionalString(chunk.refusal_delta)) return false;
    if (chunk.index !== undefined && !isCount(chunk.index)) return false;
    if (chunk.tool_calls !== undefined) {
      if (!Array.isArray(chunk.tool_calls)) return false;
      for (const call of chunk.tool_calls as unknown[])
        if (!isObject(call) || !isCount(call.index) || (call.function !== undefined && !isObject(call.function)))
          return false;
    }
  }
  return true;
}

/**
 * The cached answer for `key`, when there is one that can be served; a damaged one is removed (and
 * logged) so that the next request stores a good answer in its place.
 */
export async function lookupAnswer(
  cache: ResponseCacheParts,
  key: CacheKey,
  logger: RequestRecord['logger'],
): Promise<CachedAnswer | undefined> {
  const found = await cache.store.get(key);
  if (found === undefined || servable(found)) return found;
  logger.warn({ cache_model: key.model }, 'a cached answer could not be served (damaged or foreign): removed');
  void cache.store.delete(key).catch(() => undefined);
  return undefined;
}

/** Chunks replayed between two turns of the event loop (a long answer does not hold the worker). */
const CHUNKS_PER_TURN = 64;

/**
 * A cached answer replayed on a stream: its chunks (or one per choice), then the terminal message
 * (`cached: true`, `done: true`, `ttft_ms` the time to the first replayed chunk), the usage event right
 * before it, as for a live stream. A client that cancels or goes away ends it as `cancelled`.
 */
export async function replayStream(
  writer: StreamWriter,
  record: RequestRecord,
  answer: CachedAnswer,
  signal: CancelSignal,
  deps: StageDependencies,
): Promise<ErrorCode | undefined> {
  const reply = cachedReply(record, answer.reply, deps);
  const chunks = (answer.chunks as unknown as ReplayChunk[] | undefined) ?? chunksOf(answer.reply);
  try {
    for (let index = 0; index < chunks.length; index += 1) {
      if (signal.aborted) throw signal.reason;
      if (record.ttftMs === null) record.ttftMs = performance.now() - record.started;
      writer.chunk(chunks[index]!);
      if ((index + 1) % CHUNKS_PER_TURN === 0) await yieldToLoop();
    }
    if (signal.aborted) throw signal.reason;
  } catch (error) {
    // Cancelled (or a chunk that cannot be sent): nothing was billed, and nothing counts as saved.
    const proxyError = asProxyError(error);
    record.savedUsd = 0;
    if (deps.delivery.finish(record, proxyError.code)) writer.error(toErrorReply(proxyError, record.requestId));
    return proxyError.code;
  }
  const terminal: ChatReply = {
    ...reply,
    latency_ms: roundMs(performance.now() - record.started),
    done: true,
    ttft_ms: record.ttftMs === null ? null : roundMs(record.ttftMs),
  };
  return writer.end(terminal, (code) => deps.delivery.finish(record, code));
}
