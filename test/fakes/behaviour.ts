/**
 * What a fake provider does with one chat request: a discriminated union on
 * `kind`, shared by the OpenAI and the Ollama fakes. Every behaviour accepts
 * `delayMs` (wait before the status line: "slow headers") and `headers`
 * (extra response headers). See fake-openai.ts for the full API.
 */

export interface FakeUsage {
  /** Ollama: `null` leaves out `prompt_eval_count`, as Ollama does for a prompt served from its cache. */
  promptTokens: number | null;
  completionTokens: number;
  /** OpenAI fake only: `prompt_tokens_details.cached_tokens`, prompt tokens served from its cache. */
  cachedPromptTokens?: number;
}

export interface FakeToolCall {
  /** OpenAI only; defaults to `call_fake_<n>`. Ollama has no ids. */
  id?: string;
  name: string;
  /** An object (Ollama's shape) or a JSON string (OpenAI's); each fake converts to its own wire shape. */
  arguments: Record<string, unknown> | string;
}

/**
 * Oddities of real streams that a parser must survive:
 * - `split-writes`: every write cut into small pieces at odd byte offsets (inside `data:`, inside JSON,
 *   between `\r` and `\n`, inside multi-byte UTF-8), each piece sent separately a moment apart;
 * - `coalesce`: all events of the stream sent in one write (several events per read);
 * - `comments`: a `: keep-alive` comment before every event (SSE); a blank line for NDJSON;
 * - `crlf`: `\r\n` line ends instead of `\n`;
 * - `empty-data`: an empty `data:` event before every event (SSE); a whitespace-only line for NDJSON;
 * - `no-space`: `data:{…}` without the space after the colon (SSE only; some servers write it so).
 */
export type StreamQuirk = 'split-writes' | 'coalesce' | 'comments' | 'crlf' | 'empty-data' | 'no-space';

interface CommonBehaviour {
  /** Milliseconds to wait before answering at all (before the status line). */
  delayMs?: number;
  /** Extra response headers. */
  headers?: Record<string, string>;
}

/** The reply a successful (or partly successful) behaviour produces, JSON or streamed. */
export interface ReplyShape {
  /** Default: `echo: <text of the last user message>`. `null` for a tool-call-only answer. */
  content?: string | null;
  toolCalls?: FakeToolCall[];
  /** OpenAI: `reasoning_content` (DeepSeek-R1); Ollama: `message.thinking`. */
  reasoningContent?: string;
  /** OpenAI fake only: `message.refusal` (streamed as `delta.refusal` pieces); set `content: null` with it, as OpenAI does. */
  refusal?: string;
  /** Default: estimated from the request and the content. `null`: report no usage at all. */
  usage?: FakeUsage | null;
  /** Model name reported back; default: the model of the request. */
  model?: string;
  /**
   * OpenAI fake only: llama.cpp server's `timings` object, added to the JSON body and to the stream's
   * finish chunk (combine with `usage: null` to be a llama.cpp that sends no `usage`).
   */
  timings?: { prompt_n: number; cache_n?: number; predicted_n: number };
  /** OpenAI `finish_reason` / Ollama `done_reason`; default `stop` (`tool_calls` for OpenAI tool calls). */
  finishReason?: string;
  /** Streaming: the content pieces, or how many pieces to cut the content into (default: one per word). */
  chunks?: number | string[];
  /** Streaming: pause between two events. */
  chunkIntervalMs?: number;
  quirks?: StreamQuirk[];
}

export type FakeBehaviour =
  /** A normal answer: JSON, or a stream when the request asks for one. */
  | ({ kind: 'ok' } & ReplyShape & CommonBehaviour)
  /**
   * An HTTP error. `body` is sent as is (a string verbatim, an object as JSON); without `body`, `message`
   * is wrapped in the provider's error shape (OpenAI `{"error":{"message","type","param","code"}}`,
   * Ollama `{"error":"…"}`). `cutBody`: the connection is reset halfway through the body (its
   * Content-Length promised all of it).
   */
  | ({ kind: 'status'; status: number; body?: string | object; message?: string; cutBody?: boolean } & CommonBehaviour)
  /** Status (default 200) with a body that is not valid JSON. */
  | ({ kind: 'malformed-json'; status?: number } & CommonBehaviour)
  /** Status (default 200) with an empty body. */
  | ({ kind: 'empty-body'; status?: number } & CommonBehaviour)
  /** Never answers (no status line); the connection stays open until the client or `close()` ends it. */
  | ({ kind: 'hang' } & CommonBehaviour)
  /** Destroys the connection before the status line (the client sees ECONNRESET / socket closed). */
  | ({ kind: 'reset' } & CommonBehaviour)
  /** Streams `afterChunks` events, then destroys the connection. A JSON request gets half its body, then the reset. */
  | ({ kind: 'stream-cut'; afterChunks: number } & ReplyShape & CommonBehaviour)
  /** Streams `afterChunks` events, then goes silent forever (for body timeouts and heartbeats). */
  | ({ kind: 'stream-stall'; afterChunks: number } & ReplyShape & CommonBehaviour)
  /**
   * Streams `afterChunks` events, then an error event (OpenAI: `data: {"error":{…}}`; Ollama: `{"error":"…"}`)
   * and ends the response. A JSON request gets a 500 with the error body.
   */
  | ({ kind: 'stream-error'; afterChunks: number; message?: string } & ReplyShape & CommonBehaviour)
  /**
   * Streams `afterChunks` events, then ends the response cleanly without a finish reason and without
   * `[DONE]` / `done: true`. A JSON request gets half its body and a clean end.
   */
  | ({ kind: 'stream-end-early'; afterChunks: number } & ReplyShape & CommonBehaviour)
  /**
   * A 200 answer too big to take, written as fast as the client reads it (the fake holds one 64 KiB
   * piece at a time, so that it can send gigabytes):
   * - `line`: one streamed line whose content grows (OpenAI: an SSE `data:` line; Ollama: an NDJSON line);
   * - `events`: small valid content events (OpenAI SSE) or lines (Ollama NDJSON), one after another;
   * - `json`: one JSON answer (`application/json`, whatever the request's `stream`) whose content grows.
   * With `bytes`, the body stops at about that size and is closed properly (the line, event or JSON
   * completed, the stream finished), so that a client with bounds large enough gets a valid answer;
   * without, it never ends (until the client closes the connection). `status`: another status than 200
   * (an error page without end, with `json`).
   */
  | ({ kind: 'huge'; shape: HugeShape; bytes?: number; status?: number } & CommonBehaviour);

export type HugeShape = 'line' | 'events' | 'json';

export type FakeBehaviourKind = FakeBehaviour['kind'];

/** Ready-made behaviours for the common failure cases. */
export const fakeBehaviours = {
  ok(shape: ReplyShape = {}): FakeBehaviour {
    return { kind: 'ok', ...shape };
  },
  /** 429 with `Retry-After` in seconds (a number), as an HTTP date (a Date), or verbatim (a string). */
  rateLimited(retryAfter?: number | Date | string, extraHeaders: Record<string, string> = {}): FakeBehaviour {
    const headers: Record<string, string> = { ...extraHeaders };
    if (typeof retryAfter === 'number') headers['retry-after'] = String(retryAfter);
    else if (retryAfter instanceof Date) headers['retry-after'] = retryAfter.toUTCString();
    else if (typeof retryAfter === 'string') headers['retry-after'] = retryAfter;
    return {
      kind: 'status',
      status: 429,
      headers,
      body: {
        error: {
          message: 'Rate limit reached for requests. Please try again later.',
          type: 'requests',
          param: null,
          code: 'rate_limit_exceeded',
        },
      },
    };
  },
  serverError(status = 500, message = 'The server had an error while processing your request.'): FakeBehaviour {
    return { kind: 'status', status, message };
  },
  /** OpenAI's real 400 for a prompt longer than the context window. */
  contextLengthExceeded(): FakeBehaviour {
    return {
      kind: 'status',
      status: 400,
      body: {
        error: {
          message:
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9021 tokens. Please reduce the length of the messages.",
          type: 'invalid_request_error',
          param: 'messages',
          code: 'context_length_exceeded',
        },
      },
    };
  },
  /** Ollama's answer when the prompt does not fit (seen with `truncate: false` / newer servers). */
  ollamaContextLengthExceeded(): FakeBehaviour {
    return { kind: 'status', status: 400, body: { error: 'the input length exceeds the context length' } };
  },
  unauthorized(message = 'Incorrect API key provided.'): FakeBehaviour {
    return { kind: 'status', status: 401, message };
  },
  slowHeaders(delayMs: number, shape: ReplyShape = {}): FakeBehaviour {
    return { kind: 'ok', delayMs, ...shape };
  },
  hang(): FakeBehaviour {
    return { kind: 'hang' };
  },
  reset(): FakeBehaviour {
    return { kind: 'reset' };
  },
  malformedJson(status = 200): FakeBehaviour {
    return { kind: 'malformed-json', status };
  },
  emptyBody(status = 200): FakeBehaviour {
    return { kind: 'empty-body', status };
  },
  /** An answer of about `bytes` (endless without), growing as `shape` says (see `kind: 'huge'`). */
  huge(shape: HugeShape, bytes?: number): FakeBehaviour {
    return bytes === undefined ? { kind: 'huge', shape } : { kind: 'huge', shape, bytes };
  },
} as const;
