/**
 * Any OpenAI-compatible chat-completions API: OpenAI, DeepSeek, vLLM,
 * llama.cpp server, LM Studio. `POST {base_url}/chat/completions`, JSON or SSE.
 */
import { convertOpenAIChunk, convertOpenAICompletion, createOpenAIStreamState, type OpenAIStreamState } from './convert-openai-response.js';
import { convertToOpenAIRequest } from './convert-to-openai-request.js';
import { postForJson, postToProvider, readJsonBody, readTextPieces, type ProviderHttpResponse } from './http.js';
import { openAIChunkSchema, openAICompletionSchema } from './openai-response-schema.js';
import { malformedResponse, streamEndedEarly } from './provider-error.js';
import { SseParser, type SseEvent } from './sse.js';
import { parseProviderPayload } from './parse-provider-payload.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from './types.js';

const CHAT_PATH = '/chat/completions';


function parseCompletion(settings: ProviderSettings, json: unknown, model: string): ProviderResponse {
  return convertOpenAICompletion(parseProviderPayload(settings, json, openAICompletionSchema, 'response'), model);
}

/** A whole reply as stream events, for a server that ignored `stream: true` and answered JSON. */
function completionAsEvents(response: ProviderResponse): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [{ type: 'model', modelResolved: response.modelResolved }];
  const delta: Extract<ProviderStreamEvent, { type: 'delta' }> = { type: 'delta' };
  if (response.content !== null && response.content !== '') delta.content = response.content;
  if (response.reasoningContent !== undefined) delta.reasoningContent = response.reasoningContent;
  if (response.toolCalls !== undefined) {
    delta.toolCalls = response.toolCalls.map((call, index) => ({ index, id: call.id, type: 'function', function: { ...call.function } }));
  }
  if (delta.content !== undefined || delta.reasoningContent !== undefined || delta.toolCalls !== undefined) events.push(delta);
  events.push({ type: 'finish', finishReason: response.finishReason });
  if (response.usage !== undefined) events.push({ type: 'usage', usage: response.usage });
  return events;
}

/** One SSE event to our events; `'done'` for `[DONE]`. */
function convertSseEvent(settings: ProviderSettings, event: SseEvent, state: OpenAIStreamState, atEnd: boolean): ProviderStreamEvent[] | 'done' {
  const data = event.data.trim();
  if (data === '[DONE]') return 'done';
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    // Half an event when the body ended: the stream was cut, the JSON was not wrong.
    throw atEnd ? streamEndedEarly(settings.name) : malformedResponse(settings.name, 'malformed JSON in stream', 200);
  }
  return convertOpenAIChunk(parseProviderPayload(settings, json, openAIChunkSchema, 'stream chunk', event.event === 'error'), state);
}

async function* streamChat(settings: ProviderSettings, call: ProviderCall): AsyncGenerator<ProviderStreamEvent> {
  const response: ProviderHttpResponse = await postToProvider({
    settings,
    path: CHAT_PATH,
    body: convertToOpenAIRequest(call.model, call.request, true),
    signal: call.signal,
    accept: 'text/event-stream',
  });
  const contentType = String(response.headers['content-type'] ?? '');
  if (contentType.includes('application/json')) {
    yield* completionAsEvents(parseCompletion(settings, await readJsonBody(settings, response, call.signal), call.model));
    return;
  }

  const parser = new SseParser();
  const state = createOpenAIStreamState();
  let done = false;
  // A generator, so that events before a failing one in the same read still reach the caller first.
  function* handle(events: SseEvent[], atEnd = false): Generator<ProviderStreamEvent> {
    for (const event of events) {
      // After [DONE] we only read on so that the connection ends cleanly and goes back to the pool.
      if (done) continue;
      const converted = convertSseEvent(settings, event, state, atEnd);
      if (converted === 'done') done = true;
      else yield* converted;
    }
  }
  for await (const text of readTextPieces(settings, response, call.signal)) {
    yield* handle(parser.push(text));
  }
  yield* handle(parser.finish(), true);
  // A finish reason without [DONE] is a complete answer (some servers omit [DONE]); neither is a cut stream.
  if (!done && !state.finished) throw streamEndedEarly(settings.name);
}

export function createOpenAICompatibleProvider(settings: ProviderSettings): Provider {
  return {
    name: settings.name,
    type: settings.type,
    async chat(call: ProviderCall): Promise<ProviderResponse> {
      const json = await postForJson({
        settings,
        path: CHAT_PATH,
        body: convertToOpenAIRequest(call.model, call.request, false),
        signal: call.signal,
        accept: 'application/json',
      });
      return parseCompletion(settings, json, call.model);
    },
    stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
      return streamChat(settings, call);
    },
  };
}

