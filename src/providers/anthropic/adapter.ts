/**
 * Anthropic's Messages API: `POST {base_url}/messages` (base_url `https://api.anthropic.com/v1`),
 * the key in `x-api-key`, the API version in `anthropic-version`; one JSON message, or SSE events
 * (`message_start` … `message_stop`) with `stream: true`.
 */
import { convertToAnthropicRequest } from './request.js';
import {
  convertAnthropicEvent,
  convertAnthropicMessage,
  createAnthropicStreamState,
  IncompleteToolUseError,
  type AnthropicStreamState,
} from './response.js';
import { anthropicMessageSchema } from './schema.js';
import { errorFromAnthropicPayload, isAnthropicError } from './errors.js';
import { postForEvents, postForJson, type AuthHeaders } from '../transport/http.js';
import { malformedResponse, streamEndedEarly } from '../transport/provider-error.js';
import type { SseEvent } from '../transport/sse.js';
import { parseProviderPayload } from '../transport/parse-provider-payload.js';
import { SseJsonDecoder } from '../transport/sse-json-decoder.js';
import { WholeAnswerDecoder } from '../response-events.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from '../types.js';

/** The API version sent when the config names none (`api_version`); the current one since 2023. */
export const DEFAULT_ANTHROPIC_VERSION = '2023-06-01';

const MESSAGES_PATH = '/messages';

const anthropicAuth: AuthHeaders = (apiKey) => ({ 'x-api-key': apiKey });

function parseMessage(settings: ProviderSettings, json: unknown, model: string): ProviderResponse {
  if (isAnthropicError(json)) throw errorFromAnthropicPayload(settings, json);
  const message = parseProviderPayload(settings, json, anthropicMessageSchema, 'response');
  try {
    return convertAnthropicMessage(message, model);
  } catch (error) {
    if (error instanceof IncompleteToolUseError)
      throw malformedResponse(settings.name, 'a tool_use block without id or name', 200);
    throw error;
  }
}

/** Anthropic's SSE: `event: <type>` and `data: <json>` per event, up to `message_stop`. */
export class AnthropicSseDecoder extends SseJsonDecoder<ProviderStreamEvent> {
  readonly #state: AnthropicStreamState = createAnthropicStreamState();

  protected override get complete(): boolean {
    // After message_stop the body is only read on so that the connection goes back to the pool.
    return this.#state.stopped;
  }

  protected onJson(json: unknown, event: SseEvent, out: ProviderStreamEvent[]): void {
    if (event.event === 'error') throw errorFromAnthropicPayload(this.settings, json);
    for (const item of convertAnthropicEvent(this.settings, json, this.#state)) out.push(item);
  }

  protected onEnd(): void {
    // A stop reason without message_stop is a complete answer; neither is a cut stream.
    if (!this.#state.stopped && !this.#state.finished) throw streamEndedEarly(this.settings.name);
  }
}

export function createAnthropicProvider(settings: ProviderSettings): Provider {
  // One object for every call: the transport works headers out once per provider and path.
  const headers = { 'anthropic-version': settings.apiVersion ?? DEFAULT_ANTHROPIC_VERSION };
  return {
    name: settings.name,
    type: settings.type,
    async chat(call: ProviderCall): Promise<ProviderResponse> {
      const json = await postForJson({
        settings,
        path: MESSAGES_PATH,
        auth: anthropicAuth,
        headers,
        body: convertToAnthropicRequest(call.model, call.request, false),
        signal: call.signal,
        accept: 'application/json',
      });
      return parseMessage(settings, json, call.model);
    },
    stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
      return postForEvents<ProviderStreamEvent>(
        {
          settings,
          path: MESSAGES_PATH,
          auth: anthropicAuth,
          headers,
          body: convertToAnthropicRequest(call.model, call.request, true),
          signal: call.signal,
          accept: 'text/event-stream',
        },
        (responseHeaders, statusCode) =>
          String(responseHeaders['content-type'] ?? '').includes('application/json')
            ? new WholeAnswerDecoder(settings, statusCode, (json) => parseMessage(settings, json, call.model))
            : new AnthropicSseDecoder(settings),
      );
    },
  };
}
