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
  delta: string;
  reasoning_delta?: string;
  /** A piece of the model's refusal (OpenAI's `delta.refusal`). */
  refusal_delta?: string;
  tool_calls?: ToolCallDelta[];
}

export interface StreamHeartbeat {
  seq: number;
  heartbeat: true;
}

export type ReplyBody = ChatReply | ErrorReply;

export function isErrorReply(body: unknown): body is ErrorReply {
  return typeof body === 'object' && body !== null && 'error' in body;
}
