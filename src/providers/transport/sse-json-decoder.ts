/**
 * What every SSE-speaking adapter does with its body (OpenAI, Anthropic, Gemini): SSE events parsed
 * as they arrive, the line bound of the provider, each event's data as JSON (half an event at the end
 * is a cut stream, not bad JSON); the adapter says what an event means and when a stream is complete.
 */
import { maxLineBytes, type StreamDecoder } from './http.js';
import { lineTooLong, malformedResponse, streamEndedEarly } from './provider-error.js';
import { LineTooLongError, SseParser, type SseEvent } from './sse.js';
import type { ProviderSettings } from '../types.js';

export abstract class SseJsonDecoder<E> implements StreamDecoder<E> {
  readonly #parser: SseParser;

  constructor(protected readonly settings: ProviderSettings) {
    this.#parser = new SseParser(maxLineBytes(settings));
  }

  /** One event's JSON to events (appended to `out`); throw a ProxyError for an error event. */
  protected abstract onJson(json: unknown, event: SseEvent, out: E[]): void;

  /** The body ended after every event was taken: append the last events, or throw for a stream cut short. */
  protected abstract onEnd(out: E[]): void;

  /** An event that is not JSON by design (OpenAI's `[DONE]`): true when the adapter took it. */
  protected onRawEvent(_event: SseEvent): boolean {
    return false;
  }

  /** True once the stream said it is complete: later events are read (so the connection is reused), not used. */
  protected get complete(): boolean {
    return false;
  }

  /** Every piece of text as it arrives (before parsing), for adapters that also look at the raw body. */
  protected onText(_text: string): void {}

  push(text: string, out: E[]): void {
    this.onText(text);
    const events: SseEvent[] = [];
    try {
      this.#parser.push(text, events);
    } catch (error) {
      // The events completed before the line that is too long reach the caller first.
      this.#convert(events, out, false);
      if (error instanceof LineTooLongError)
        throw lineTooLong(this.settings.name, maxLineBytes(this.settings), error.what, 200);
      throw error;
    }
    this.#convert(events, out, false);
  }

  end(out: E[]): void {
    this.#convert(this.#parser.finish(), out, true);
    this.onEnd(out);
  }

  #convert(events: SseEvent[], out: E[], atEnd: boolean): void {
    for (const event of events) {
      if (this.complete || this.onRawEvent(event)) continue;
      let json: unknown;
      try {
        json = JSON.parse(event.data);
      } catch {
        // Half an event when the body ended: the stream was cut, the JSON was not wrong.
        throw atEnd
          ? streamEndedEarly(this.settings.name)
          : malformedResponse(this.settings.name, 'malformed JSON in stream', 200);
      }
      this.onJson(json, event, out);
    }
  }
}
