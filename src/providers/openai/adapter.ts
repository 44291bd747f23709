/**
 * Any OpenAI-compatible chat-completions API: OpenAI, DeepSeek, vLLM,
 * llama.cpp server, LM Studio. `POST {base_url}/chat/completions`, JSON or SSE.
 */
import {
  convertOpenAIChunk,
  convertOpenAICompletion,
  createOpenAIStreamState,
  type OpenAIStreamState,
} from './response.js';
import { convertToOpenAIRequest } from './request.js';
import { bearerAuth, postForEvents, postForJson, type AuthHeaders } from '../transport/http.js';
import { openAIChunkSchema, openAICompletionSchema } from './schema.js';
import { streamEndedEarly } from '../transport/provider-error.js';
import type { SseEvent } from '../transport/sse.js';
import { fastCheck } from '../../contract/fast-check.js';
import { parseProviderPayload } from '../transport/parse-provider-payload.js';
import { SseJsonDecoder } from '../transport/sse-json-decoder.js';
import { WholeAnswerDecoder } from '../response-events.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from '../types.js';

/** Where an OpenAI-shaped API takes a model's chat completions, and how it wants the key. */
export interface OpenAIWire {
  chatPath(model: string): string;
  auth: AuthHeaders;
}

const OPENAI_WIRE: OpenAIWire = { chatPath: () => '/chat/completions', auth: bearerAuth };

function parseCompletion(settings: ProviderSettings, json: unknown, model: string): ProviderResponse {
  return convertOpenAICompletion(parseProviderPayload(settings, json, openAICompletionSchema, 'response'), model);
}

/** SSE from the provider: `data:` events of JSON chunks, up to `[DONE]`. */
class SseDecoder extends SseJsonDecoder<ProviderStreamEvent> {
  readonly #state: OpenAIStreamState = createOpenAIStreamState();
  #done = false;

  protected override get complete(): boolean {
    // After [DONE] the body is only read on so that the connection ends cleanly and goes back to the pool.
    return this.#done;
  }

  protected override onRawEvent(event: SseEvent): boolean {
    if (event.data.trim() !== '[DONE]') return false;
    this.#done = true;
    return true;
  }

  protected onJson(json: unknown, event: SseEvent, out: ProviderStreamEvent[]): void {
    const chunk = parseProviderPayload(this.settings, json, openAIChunkSchema, 'stream chunk', event.event === 'error');
    for (const item of convertOpenAIChunk(chunk, this.#state)) out.push(item);
  }

  protected onEnd(): void {
    // A finish reason without [DONE] is a complete answer (some servers omit [DONE]); neither is a cut stream.
    if (!this.#done && !this.#state.finished) throw streamEndedEarly(this.settings.name);
  }
}

function streamChat(
  settings: ProviderSettings,
  wire: OpenAIWire,
  call: ProviderCall,
): AsyncIterableIterator<ProviderStreamEvent> {
  return postForEvents<ProviderStreamEvent>(
    {
      settings,
      path: wire.chatPath(call.model),
      auth: wire.auth,
      body: convertToOpenAIRequest(call.model, call.request, true),
      signal: call.signal,
      accept: 'text/event-stream',
    },
    (headers, statusCode) =>
      String(headers['content-type'] ?? '').includes('application/json')
        ? new WholeAnswerDecoder(settings, statusCode, (json) => parseCompletion(settings, json, call.model))
        : new SseDecoder(settings),
  );
}

/** `wire`: Azure's deployments path and `api-key` (azure/adapter.ts); OpenAI's own by default. */
export function createOpenAICompatibleProvider(settings: ProviderSettings, wire: OpenAIWire = OPENAI_WIRE): Provider {
  // The payload checks are compiled now, not on the first answer (contract/fast-check.ts).
  fastCheck(openAICompletionSchema);
  fastCheck(openAIChunkSchema);
  return {
    name: settings.name,
    type: settings.type,
    async chat(call: ProviderCall): Promise<ProviderResponse> {
      const json = await postForJson({
        settings,
        path: wire.chatPath(call.model),
        auth: wire.auth,
        body: convertToOpenAIRequest(call.model, call.request, false),
        signal: call.signal,
        accept: 'application/json',
      });
      return parseCompletion(settings, json, call.model);
    },
    stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
      return streamChat(settings, wire, call);
    },
  };
}
