/**
 * Ollama's native API: `POST {base_url}/api/chat`, one JSON object, or NDJSON
 * lines when streaming (the last one `done: true` with the token counts).
 */
import { convertOllamaChat, convertOllamaChunk, createOllamaStreamState, type OllamaStreamState } from './convert-ollama-response.js';
import { convertToOllamaRequest } from './convert-to-ollama-request.js';
import { postForJson, postToProvider, readTextPieces } from './http.js';
import { NdjsonParser, NdjsonSyntaxError } from './ndjson.js';
import { ollamaChatSchema } from './ollama-response-schema.js';
import { malformedResponse, streamEndedEarly } from './provider-error.js';
import { parseProviderPayload } from './parse-provider-payload.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from './types.js';

const CHAT_PATH = '/api/chat';


function parseChat(settings: ProviderSettings, json: unknown): ReturnType<typeof ollamaChatSchema.parse> {
  return parseProviderPayload(settings, json, ollamaChatSchema, 'response');
}

/** A generator, so that events before a failing line in the same read still reach the caller first. */
function* convertLines(settings: ProviderSettings, values: Iterable<unknown>, state: OllamaStreamState): Generator<ProviderStreamEvent> {
  for (const value of values) {
    // Lines after `done: true` would be a server bug; ignore them rather than fail a finished answer.
    if (state.done) continue;
    yield* convertOllamaChunk(parseChat(settings, value), state);
  }
}

async function* streamChat(settings: ProviderSettings, call: ProviderCall): AsyncGenerator<ProviderStreamEvent> {
  const response = await postToProvider({
    settings,
    path: CHAT_PATH,
    body: convertToOllamaRequest(call.model, call.request, true),
    signal: call.signal,
    accept: 'application/x-ndjson',
  });
  const parser = new NdjsonParser();
  const state = createOllamaStreamState();
  try {
    for await (const text of readTextPieces(settings, response, call.signal)) {
      yield* convertLines(settings, parser.push(text), state);
    }
  } catch (error) {
    if (error instanceof NdjsonSyntaxError) throw malformedResponse(settings.name, 'malformed JSON in stream', 200);
    throw error;
  }
  let rest: unknown[];
  try {
    rest = parser.finish();
  } catch {
    // Half a line when the body ended: the stream was cut, the JSON was not wrong.
    throw streamEndedEarly(settings.name);
  }
  yield* convertLines(settings, rest, state);
  if (!state.done) throw streamEndedEarly(settings.name);
}

export function createOllamaProvider(settings: ProviderSettings): Provider {
  return {
    name: settings.name,
    type: settings.type,
    async chat(call: ProviderCall): Promise<ProviderResponse> {
      const json = await postForJson({
        settings,
        path: CHAT_PATH,
        body: convertToOllamaRequest(call.model, call.request, false),
        signal: call.signal,
        accept: 'application/json',
      });
      const chat = parseChat(settings, json);
      if (chat.done === false) throw malformedResponse(settings.name, 'incomplete response (done: false)', 200);
      return convertOllamaChat(chat, call.model);
    },
    stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
      return streamChat(settings, call);
    },
  };
}
