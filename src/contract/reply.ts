import type { ErrorReply } from './errors.js';
import type { ToolCall } from './request.js';

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'error';

export interface TokenUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** One deployment tried for a request (DESIGN.md: `attempts` when more than one was tried). */
export interface AttemptRecord {
  /** The logical model this attempt served (the requested one, or a fallback): its prices price the attempt. */
  model: string;
  provider: string;
  model_resolved: string;
  /** `null` for the attempt that succeeded. */
  error_code: string | null;
  latency_ms: number;
  prompt_tokens?: number;
  completion_tokens?: number;
}

/** One token's log probability, as OpenAI gives it (`logprobs.content[i]`). */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs?: Array<{ token: string; logprob: number; bytes: number[] | null }>;
}

/** A choice's log probabilities, OpenAI's shape: `content` for the answer's tokens, `refusal` for a refusal's. */
export interface ChoiceLogprobs {
  content: TokenLogprob[] | null;
  refusal?: TokenLogprob[] | null;
}

/** One choice of a request with `n` > 1, OpenAI's shape (`choices[i]` of a chat completion). */
export interface ReplyChoice {
  index: number;
  message: {
    role: 'assistant';
    content: string | null;
    refusal: string | null;
    tool_calls?: ToolCall[];
    reasoning_content?: string;
  };
  logprobs: ChoiceLogprobs | null;
  finish_reason: FinishReason;
}

/** The reply to `llm.proxy.request` (DESIGN.md, "Reply"); seed fields first. */
export interface ChatReply {
  content: string | null;
  usage: TokenUsage;
  provider: string;
  model_resolved: string;
  latency_ms: number;
  model: string;
  request_id: string;
  finish_reason: FinishReason;
  cost_usd: number;
  cached: boolean;
  tokens_estimated?: boolean;
  tool_calls?: ToolCall[];
  reasoning_content?: string;
  /** The model's refusal (OpenAI's `message.refusal`); `content` is then usually null. */
  refusal?: string;
  /** The first choice's log probabilities, when the request asked for `logprobs`. */
  logprobs?: ChoiceLogprobs;
  /** Every choice, when the request asked for `n` > 1 (the first is also `content`, `finish_reason`…). */
  choices?: ReplyChoice[];
  attempts?: AttemptRecord[];
  /** Streaming terminal message only. */
  done?: true;
  ttft_ms?: number | null;
  /**
   * Streaming terminal message only, and only when the whole reply would not
   * fit the NATS server's `max_payload`: the fields left out of it because the
   * chunks already carried them (`content`, `reasoning_content`, `tool_calls`,
   * as a last resort `logprobs`, `choices`). An omitted `content` is sent as
   * `null`. The typed client fills the first three back in from the chunks and
   * keeps this field so the caller can tell.
   */
  omitted?: string[];
}

/** A tool-call delta in OpenAI's streaming shape. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function?: { name?: string; arguments?: string };
}

/**
 * One streamed chunk (DESIGN.md, "Streaming"). A provider delta too large for
 * one NATS message arrives as several chunks (its text cut between characters).
 */
export interface StreamChunk {
  seq: number;
  /** The choice this chunk belongs to, on every chunk of a request with `n` > 1. */
  index?: number;
  delta: string;
  reasoning_delta?: string;
  /** A piece of the model's refusal (OpenAI's `delta.refusal`). */
  refusal_delta?: string;
  tool_calls?: ToolCallDelta[];
  /** The log probabilities of this chunk's tokens, when the request asked for `logprobs`. */
  logprobs?: ChoiceLogprobs;
}

export interface StreamHeartbeat {
  seq: number;
  heartbeat: true;
}

export type ReplyBody = ChatReply | ErrorReply;

export function isErrorReply(body: unknown): body is ErrorReply {
  return typeof body === 'object' && body !== null && 'error' in body;
}
