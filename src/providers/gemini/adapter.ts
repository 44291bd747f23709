/**
 * Google's Gemini API (Generative Language API): `POST {base_url}/models/{model}:generateContent`,
 * or `:streamGenerateContent?alt=sse` (`data:` events of GenerateContentResponse, no end marker),
 * the key in `x-goog-api-key` (never in the URL, where it would reach access logs).
 */
import { ProxyError } from '../../contract/errors.js';
import { fastCheck } from '../../contract/fast-check.js';
import { postForEvents, postForJson, providerSecrets, type AuthHeaders } from '../transport/http.js';
import { responseAsEvents } from '../response-events.js';
import { parseProviderPayload } from '../transport/parse-provider-payload.js';
import { SseJsonDecoder } from '../transport/sse-json-decoder.js';
import { errorFromStatus, streamEndedEarly } from '../transport/provider-error.js';
import type { SseEvent } from '../transport/sse.js';
import { convertToGeminiRequest } from './request.js';
import {
  convertGeminiChunk,
  convertGeminiResponse,
  createGeminiStreamState,
  endGeminiStream,
  type GeminiStreamState,
} from './response.js';
import { geminiResponseSchema, type GeminiResponse } from './schema.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from '../types.js';

const geminiAuth: AuthHeaders = (apiKey) => ({ 'x-goog-api-key': apiKey });

/** `gemini-2.5-flash` (or `models/gemini-2.5-flash`) to its path under the base URL. */
function modelPath(model: string, method: 'generateContent' | 'streamGenerateContent?alt=sse'): string {
  return `/models/${encodeURIComponent(model.replace(/^models\//, ''))}:${method}`;
}

/**
 * Google's error object (`{"error":{"code":503,"message","status"}}`), sent in a stream after the
 * 200 or in place of an answer: mapped as an HTTP answer with that code would be.
 */
function geminiErrorPayload(settings: ProviderSettings, json: unknown): ProxyError | undefined {
  const error = (json as { error?: { code?: unknown } } | null)?.error;
  if (typeof error !== 'object' || error === null || typeof error.code !== 'number') return undefined;
  return errorFromStatus({
    provider: settings.name,
    status: error.code,
    headers: {},
    bodyText: JSON.stringify(json),
    secrets: providerSecrets(settings),
  });
}

function parseResponse(settings: ProviderSettings, json: unknown, what: string): GeminiResponse {
  const error = geminiErrorPayload(settings, json);
  if (error !== undefined) throw error;
  return parseProviderPayload(settings, json, geminiResponseSchema, what);
}

/**
 * Gemini's 400s that the shared status table cannot tell apart: a wrong key or a region Google
 * does not serve is the deployment's fault (`upstream_error`, so that the router may try another
 * deployment), and "The input token count (N) exceeds the maximum number of tokens allowed (M)"
 * is a prompt too long for the model's context.
 */
const DEPLOYMENT_FAULT = /API key not valid|API_KEY_INVALID|location is not supported/i;
const CONTEXT_LENGTH = /input token count .*exceeds the maximum number of tokens/i;

export function mapGeminiError(error: unknown): unknown {
  if (!(error instanceof ProxyError) || error.upstreamStatus !== 400) return error;
  if (DEPLOYMENT_FAULT.test(error.message))
    return new ProxyError('upstream_error', error.message, { retryable: false, upstreamStatus: 400, cause: error });
  if (CONTEXT_LENGTH.test(error.message) && !error.contextLengthExceeded)
    return new ProxyError(error.code, error.message, {
      retryable: error.retryable,
      upstreamStatus: 400,
      contextLengthExceeded: true,
      cause: error,
    });
  return error;
}

/** Most characters kept of the raw stream, to read an error Google wrote without `data:` framing. */
const RAW_TAIL_CHARACTERS = 16 * 1024;

/**
 * SSE events of GenerateContentResponse; the stream is complete once candidate 0 (the first choice)
 * carried a finish reason. `choiceCount`: the `n` asked for (candidates past the first are choices too).
 */
export class GeminiSseDecoder extends SseJsonDecoder<ProviderStreamEvent> {
  readonly #state: GeminiStreamState;
  /** The raw text's end: at least RAW_TAIL_CHARACTERS, cut back to that once twice as long (amortized O(1)). */
  #tail = '';

  constructor(settings: ProviderSettings, choiceCount = 1) {
    super(settings);
    this.#state = createGeminiStreamState(choiceCount);
  }

  protected override onText(text: string): void {
    this.#keepTail(text);
  }

  protected onJson(json: unknown, _event: SseEvent, out: ProviderStreamEvent[]): void {
    for (const item of convertGeminiChunk(parseResponse(this.settings, json, 'stream chunk'), this.#state))
      out.push(item);
  }

  protected onEnd(out: ProviderStreamEvent[]): void {
    if (!this.#state.finished) throw this.#bareError() ?? streamEndedEarly(this.settings.name);
    for (const event of endGeminiStream(this.#state)) out.push(event);
  }

  #keepTail(text: string): void {
    this.#tail += text;
    if (this.#tail.length > 2 * RAW_TAIL_CHARACTERS) this.#tail = this.#tail.slice(-RAW_TAIL_CHARACTERS);
  }

  /** An error object written as plain JSON, not as an SSE event, before the body ended (the SDKs read it too). */
  #bareError(): ProxyError | undefined {
    const raw = this.#tail;
    // Nested lines of Google's pretty-printed JSON are indented: a `{` at a line start opens the object.
    const start = raw.lastIndexOf('\n{') + 1;
    if (start === 0 && !raw.startsWith('{')) return undefined;
    try {
      return geminiErrorPayload(this.settings, JSON.parse(raw.slice(start)));
    } catch {
      return undefined;
    }
  }
}

/** The stream's failures through mapGeminiError. */
function mapStreamErrors(
  events: AsyncIterableIterator<ProviderStreamEvent>,
): AsyncIterableIterator<ProviderStreamEvent> {
  return {
    next: () =>
      events.next().catch((error: unknown) => {
        throw mapGeminiError(error);
      }),
    return: () => events.return!(),
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

export function createGeminiProvider(settings: ProviderSettings): Provider {
  // The payload check is compiled now, not on the first answer (contract/fast-check.ts).
  fastCheck(geminiResponseSchema);
  const chat = async (call: ProviderCall): Promise<ProviderResponse> => {
    let json: unknown;
    try {
      json = await postForJson({
        settings,
        path: modelPath(call.model, 'generateContent'),
        auth: geminiAuth,
        body: convertToGeminiRequest(call.request),
        signal: call.signal,
        accept: 'application/json',
      });
    } catch (error) {
      throw mapGeminiError(error);
    }
    const choiceCount = call.request.n ?? 1;
    return convertGeminiResponse(parseResponse(settings, json, 'response'), call.model, settings.name, choiceCount);
  };
  return {
    name: settings.name,
    type: settings.type,
    chat,
    stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
      // Google documents several candidates for generateContent only ("streamGenerateContent is not
      // supported"): a streamed n > 1 is asked whole and relayed as the events of its choices.
      if ((call.request.n ?? 1) > 1) return wholeAnswerAsStream(chat(call));
      const events = postForEvents<ProviderStreamEvent>(
        {
          settings,
          path: modelPath(call.model, 'streamGenerateContent?alt=sse'),
          auth: geminiAuth,
          body: convertToGeminiRequest(call.request),
          signal: call.signal,
          accept: 'text/event-stream',
        },
        () => new GeminiSseDecoder(settings, call.request.n ?? 1),
      );
      return mapStreamErrors(events);
    },
  };
}

async function* wholeAnswerAsStream(answer: Promise<ProviderResponse>): AsyncIterableIterator<ProviderStreamEvent> {
  yield* responseAsEvents(await answer);
}
