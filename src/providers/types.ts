import type { Dispatcher } from 'undici';
import type { ChatRequest, ToolCall } from '../contract/request.js';
import type { ChoiceLogprobs, FinishReason, ToolCallDelta } from '../contract/reply.js';
import type { ProviderType } from '../config/schema.js';
import type { CancelSignal } from './transport/cancellation.js';

/**
 * What a provider adapter needs to know, handed in by whoever builds it.
 * A provider knows nothing of NATS, logging setup or config files.
 */
export interface ProviderSettings {
  /** The name the provider has in config.yaml (`openai`, `local`…). */
  name: string;
  type: ProviderType;
  baseUrl: string;
  /** Never logged, never put in an error message. */
  apiKey?: string | undefined;
  /**
   * The environment variable that should hold the key (`api_key_env`). When it is named but unset,
   * calls fail with `upstream_error` naming the variable instead of reaching the provider unauthenticated.
   */
  apiKeyEnv?: string | undefined;
  headers?: Record<string, string> | undefined;
  /** `api_version`: Azure's `api-version`, Anthropic's `anthropic-version` (each adapter has its default). */
  apiVersion?: string | undefined;
  /** Most bytes of one 2xx answer body, JSON or a whole stream (`max_response_bytes`; default 32 MiB). */
  maxResponseBytes?: number | undefined;
  /**
   * Longest SSE line, SSE event's data or NDJSON line (`max_line_bytes`; default 4 MiB, or
   * maxResponseBytes when smaller), counted in UTF-16 code units of the decoded text (sse.ts).
   */
  maxLineBytes?: number | undefined;
  /** The undici pool for this provider (one per provider, keep-alive). */
  dispatcher: Dispatcher;
}

/** One call to one deployment. */
export interface ProviderCall {
  /** The provider's own model name (`physical_name`). */
  model: string;
  /** The validated request; our own fields (metadata, request_id…) are not sent upstream. */
  request: ChatRequest;
  /** Aborted on deadline, client cancel or worker shutdown. */
  signal: CancelSignal;
}

export interface ProviderUsage {
  promptTokens: number;
  completionTokens: number;
  /**
   * The side the provider did not count (its number here is 0): the worker estimates that side
   * only, and flags the request's tokens as estimated. Absent: both are the provider's.
   */
  missing?: 'prompt' | 'completion';
  /** Of the prompt tokens, those the provider served from its prompt cache (priced apart). */
  cachedPromptTokens?: number;
}

/** One answer of the provider: the only one, or one of `n`. */
export interface ProviderChoice {
  content: string | null;
  toolCalls?: ToolCall[];
  reasoningContent?: string;
  /** The model refused (OpenAI's `message.refusal`). */
  refusal?: string;
  finishReason: FinishReason;
  /** When the request asked for `logprobs`. */
  logprobs?: ChoiceLogprobs;
}

/** The first choice's fields, and every choice in `choices` when the provider gave more than one. */
export interface ProviderResponse extends ProviderChoice {
  choices?: ProviderChoice[];
  /** Undefined when the provider reported no usage (the caller then estimates). */
  usage?: ProviderUsage;
  /** The model name the provider says it used (falls back to the requested one). */
  modelResolved: string;
}

/** What a streaming call yields, in order. Errors are thrown as ProxyError. */
export type ProviderStreamEvent =
  | {
      type: 'delta';
      /** The choice (of `n`) this delta belongs to; absent: the first. */
      index?: number;
      content?: string;
      reasoningContent?: string;
      refusal?: string;
      toolCalls?: ToolCallDelta[];
      logprobs?: ChoiceLogprobs;
    }
  | { type: 'finish'; finishReason: FinishReason; index?: number }
  | { type: 'usage'; usage: ProviderUsage }
  | { type: 'model'; modelResolved: string };

export interface Provider {
  readonly name: string;
  readonly type: ProviderType;
  chat(call: ProviderCall): Promise<ProviderResponse>;
  stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent>;
}
