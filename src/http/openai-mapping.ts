/**
 * OpenAI's chat-completions wire formats ↔ ours (DESIGN.md "Request", "Reply", "Streaming"): pure
 * functions, no I/O. Ours already takes OpenAI's parameters as they are, so a request needs only
 * its agent; answers are reshaped into `chat.completion`, `chat.completion.chunk` and OpenAI's
 * error envelope, with DESIGN.md's statuses so that SDKs raise their own typed errors.
 */
import { ProxyError, type ErrorCode } from '../contract/errors.js';
import type { ModelInfo } from '../contract/models.js';
import type { ChatReply, FinishReason, ReplyChoice, StreamChunk } from '../contract/reply.js';

/**
 * An OpenAI body → ours: the agent from the body's `metadata`, else the `X-Agent-Id` header, else
 * OpenAI's `user`; with `fromKey` (the caller showed a per-agent key), from nothing: the key says who
 * the agent is, and `user` stays OpenAI's end-user id. Fields are kept as they are (the worker
 * refuses unknown ones by name).
 */
export function requestFromOpenAI(
  body: unknown,
  identity: { agentId?: string; microdaoId?: string; fromKey?: boolean },
): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ProxyError('invalid_request', 'request body must be a JSON object');
  const request = { ...(body as Record<string, unknown>) };
  const given = request.metadata;
  const metadata: Record<string, unknown> =
    typeof given === 'object' && given !== null && !Array.isArray(given) ? { ...given } : {};
  if (given !== undefined && (typeof given !== 'object' || given === null || Array.isArray(given))) return request; // the worker names the problem
  if (identity.fromKey === true) return request;
  if (metadata.agent_id === undefined) {
    const agentId =
      identity.agentId ?? (typeof request.user === 'string' && request.user !== '' ? request.user : undefined);
    if (agentId !== undefined) metadata.agent_id = agentId;
  }
  if (metadata.microdao_id === undefined && identity.microdaoId !== undefined)
    metadata.microdao_id = identity.microdaoId;
  if (Object.keys(metadata).length > 0) request.metadata = metadata;
  return request;
}

/** Our finish reasons are OpenAI's, but for `error` (an answer cut by its provider), which OpenAI has not: `stop`. */
function finishReason(reason: FinishReason): string {
  return reason === 'error' ? 'stop' : reason;
}

/** What llm-proxy adds to an OpenAI answer (SDKs keep unknown fields and ignore them). */
function extras(reply: ChatReply): Record<string, unknown> {
  return {
    request_id: reply.request_id,
    provider: reply.provider,
    model_resolved: reply.model_resolved,
    cost_usd: reply.cost_usd,
    cached: reply.cached,
    latency_ms: reply.latency_ms,
    ...(reply.tokens_estimated === true ? { tokens_estimated: true } : {}),
    ...(reply.attempts !== undefined ? { attempts: reply.attempts } : {}),
  };
}

const usageOf = (reply: ChatReply) => ({
  prompt_tokens: reply.usage.prompt_tokens,
  completion_tokens: reply.usage.completion_tokens,
  total_tokens: reply.usage.total_tokens,
});

/** Our reply's first choice in OpenAI's shape (the reply's own fields). */
function firstChoice(reply: ChatReply): ReplyChoice {
  const message: ReplyChoice['message'] = { role: 'assistant', content: reply.content, refusal: reply.refusal ?? null };
  if (reply.tool_calls !== undefined && reply.tool_calls.length > 0) message.tool_calls = reply.tool_calls;
  if (reply.reasoning_content !== undefined) message.reasoning_content = reply.reasoning_content;
  return { index: 0, message, logprobs: reply.logprobs ?? null, finish_reason: reply.finish_reason };
}

/** Our reply → OpenAI's `chat.completion`: every choice when there are several (`n` > 1). */
export function completionFromReply(reply: ChatReply, created: number): Record<string, unknown> {
  const choices = reply.choices ?? [firstChoice(reply)];
  return {
    id: `chatcmpl-${reply.request_id}`,
    object: 'chat.completion',
    created,
    model: reply.model,
    choices: choices.map((choice) => ({ ...choice, finish_reason: finishReason(choice.finish_reason) })),
    usage: usageOf(reply),
    system_fingerprint: null,
    llm_proxy: extras(reply),
  };
}

/**
 * The `chat.completion.chunk`s of one stream, in OpenAI's order: a role chunk per choice, deltas
 * (each with its choice's index), a finish chunk per choice, the usage chunk when asked for.
 */
export class CompletionChunks {
  constructor(
    private readonly stream: {
      requestId: string;
      model: string;
      created: number;
      includeUsage: boolean;
      /** `n`: how many choices the stream carries. */
      choices?: number;
    },
  ) {}

  #chunk(choices: unknown[], more: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      id: `chatcmpl-${this.stream.requestId}`,
      object: 'chat.completion.chunk',
      created: this.stream.created,
      model: this.stream.model,
      system_fingerprint: null,
      choices,
      ...more,
    };
  }

  first(): Record<string, unknown> {
    const choices = [];
    for (let index = 0; index < (this.stream.choices ?? 1); index++)
      choices.push({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
    return this.#chunk(choices);
  }

  chunk(chunk: StreamChunk): Record<string, unknown> {
    const delta: Record<string, unknown> = {};
    if (chunk.delta !== '') delta.content = chunk.delta;
    if (chunk.reasoning_delta !== undefined && chunk.reasoning_delta !== '')
      delta.reasoning_content = chunk.reasoning_delta;
    if (chunk.refusal_delta !== undefined && chunk.refusal_delta !== '') delta.refusal = chunk.refusal_delta;
    if (chunk.tool_calls !== undefined && chunk.tool_calls.length > 0) delta.tool_calls = chunk.tool_calls;
    return this.#chunk([{ index: chunk.index ?? 0, delta, logprobs: chunk.logprobs ?? null, finish_reason: null }]);
  }

  end(reply: ChatReply): Array<Record<string, unknown>> {
    const finishes = (reply.choices ?? [firstChoice(reply)]).map((choice) => ({
      index: choice.index,
      delta: {},
      logprobs: null,
      finish_reason: finishReason(choice.finish_reason),
    }));
    const finish = this.#chunk(finishes, { llm_proxy: extras(reply) });
    if (!this.stream.includeUsage) return [finish];
    return [finish, this.#chunk([], { usage: usageOf(reply) })];
  }
}

/** One SSE event of OpenAI's stream. */
export function sseData(value: object | '[DONE]'): string {
  return `data: ${value === '[DONE]' ? value : JSON.stringify(value)}\n\n`;
}

/**
 * OpenAI's error `type` for each of our codes (what OpenAI itself sends where it has an equivalent).
 * SDKs choose their error class by status: 400 BadRequestError, 401 AuthenticationError,
 * 404 NotFoundError, 429 RateLimitError, ≥ 500 InternalServerError; 402, 413 and 499 have no class
 * of their own and arrive as the generic APIError with that status.
 */
const ERROR_TYPES: Record<ErrorCode, string> = {
  invalid_request: 'invalid_request_error',
  unauthorized: 'authentication_error',
  budget_exceeded: 'insufficient_quota',
  model_not_found: 'invalid_request_error',
  payload_too_large: 'invalid_request_error',
  rate_limited: 'rate_limit_error',
  cancelled: 'request_cancelled',
  internal: 'server_error',
  upstream_error: 'server_error',
  no_provider_available: 'server_error',
  upstream_timeout: 'server_error',
};

/** OpenAI's own code where it has one for the same thing; ours otherwise. */
const OPENAI_CODES: Partial<Record<ErrorCode, string>> = {
  unauthorized: 'invalid_api_key',
  rate_limited: 'rate_limit_exceeded',
  budget_exceeded: 'insufficient_quota',
  model_not_found: 'model_not_found',
};

export interface OpenAIErrorAnswer {
  status: number;
  headers: Record<string, string>;
  body: { error: { message: string; type: string; code: string | null; param: string | null } };
}

/** Our error → OpenAI's envelope with DESIGN.md's status; `retry-after` (seconds) and `retry-after-ms` when known (the SDKs read both). */
export function openAIError(
  error: { code: ErrorCode; status: number; message: string; retryAfterMs?: number | undefined },
  param: string | null = null,
): OpenAIErrorAnswer {
  const headers: Record<string, string> = {};
  if (error.retryAfterMs !== undefined) {
    headers['retry-after'] = String(Math.max(1, Math.ceil(error.retryAfterMs / 1000)));
    headers['retry-after-ms'] = String(Math.max(0, Math.round(error.retryAfterMs)));
  }
  return {
    status: error.status,
    headers,
    body: {
      error: {
        message: error.message,
        type: ERROR_TYPES[error.code],
        code: OPENAI_CODES[error.code] ?? error.code,
        param,
      },
    },
  };
}

export function modelObject(model: ModelInfo): Record<string, unknown> {
  return { id: model.name, object: 'model', created: 0, owned_by: model.provider };
}

export function modelList(models: ModelInfo[]): Record<string, unknown> {
  return { object: 'list', data: models.map(modelObject) };
}
