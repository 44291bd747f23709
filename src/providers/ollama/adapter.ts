/**
 * Ollama's native API: `POST {base_url}/api/chat`, one JSON object, or NDJSON
 * lines when streaming (the last one `done: true` with the token counts).
 */
import { convertOllamaChat, convertOllamaChunk, createOllamaStreamState, type OllamaStreamState } from './response.js';
import { convertToOllamaRequest } from './request.js';
import { maxLineBytes, postForEvents, postForJson, type StreamDecoder } from '../transport/http.js';
import { LineTooLongError, NdjsonParser, NdjsonSyntaxError } from '../transport/ndjson.js';
import { ollamaChatSchema } from './schema.js';
import { lineTooLong, malformedResponse, streamEndedEarly } from '../transport/provider-error.js';
import { fastCheck } from '../../contract/fast-check.js';
import { parseProviderPayload } from '../transport/parse-provider-payload.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderSettings, ProviderStreamEvent } from '../types.js';

const CHAT_PATH = '/api/chat';

function parseChat(settings: ProviderSettings, json: unknown): ReturnType<typeof ollamaChatSchema.parse> {
  return parseProviderPayload(settings, json, ollamaChatSchema, 'response');
}

/** NDJSON from Ollama: one JSON object per line, the last one `done: true` with the token counts. */
class NdjsonDecoder implements StreamDecoder<ProviderStreamEvent> {
  readonly #parser: NdjsonParser;
  readonly #state: OllamaStreamState = createOllamaStreamState();

  constructor(private readonly settings: ProviderSettings) {
    this.#parser = new NdjsonParser(maxLineBytes(settings));
  }

  push(text: string, out: ProviderStreamEvent[]): void {
    try {
      // Lines before a bad one are converted (and reach the caller) before the error is thrown.
      for (const value of this.#parser.push(text)) this.#convert(value, out);
    } catch (error) {
      if (error instanceof NdjsonSyntaxError)
        throw malformedResponse(this.settings.name, 'malformed JSON in stream', 200);
      if (error instanceof LineTooLongError)
        throw lineTooLong(this.settings.name, maxLineBytes(this.settings), error.what, 200);
      throw error;
    }
  }

  end(out: ProviderStreamEvent[]): void {
    let rest: unknown[];
    try {
      rest = this.#parser.finish();
    } catch {
      // Half a line when the body ended: the stream was cut, the JSON was not wrong.
      throw streamEndedEarly(this.settings.name);
    }
    for (const value of rest) this.#convert(value, out);
    if (!this.#state.done) throw streamEndedEarly(this.settings.name);
  }

  #convert(value: unknown, out: ProviderStreamEvent[]): void {
    // Lines after `done: true` would be a server bug; ignore them rather than fail a finished answer.
    if (this.#state.done) return;
    for (const event of convertOllamaChunk(parseChat(this.settings, value), this.#state)) out.push(event);
  }
}

function streamChat(settings: ProviderSettings, call: ProviderCall): AsyncIterableIterator<ProviderStreamEvent> {
  return postForEvents<ProviderStreamEvent>(
    {
      settings,
      path: CHAT_PATH,
      body: convertToOllamaRequest(call.model, call.request, true),
      signal: call.signal,
      accept: 'application/x-ndjson',
    },
    () => new NdjsonDecoder(settings),
  );
}

export function createOllamaProvider(settings: ProviderSettings): Provider {
  // The payload check is compiled now, not on the first answer (contract/fast-check.ts).
  fastCheck(ollamaChatSchema);
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
