import { parseJsonText, type StreamDecoder } from './transport/http.js';
import type { ProviderResponse, ProviderSettings, ProviderStreamEvent } from './types.js';

/**
 * A whole answer as stream events, every choice in turn, for a server that ignored `stream: true` and
 * answered JSON (shared by the adapters).
 */
export function responseAsEvents(response: ProviderResponse): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [{ type: 'model', modelResolved: response.modelResolved }];
  for (const [index, choice] of (response.choices ?? [response]).entries()) {
    const delta: Extract<ProviderStreamEvent, { type: 'delta' }> = { type: 'delta' };
    if (index !== 0) delta.index = index;
    if (choice.content !== null && choice.content !== '') delta.content = choice.content;
    if (choice.reasoningContent !== undefined) delta.reasoningContent = choice.reasoningContent;
    if (choice.refusal !== undefined) delta.refusal = choice.refusal;
    if (choice.logprobs !== undefined) delta.logprobs = choice.logprobs;
    if (choice.toolCalls !== undefined) {
      delta.toolCalls = choice.toolCalls.map((call, position) => ({
        index: position,
        id: call.id,
        type: 'function',
        function: { ...call.function },
      }));
    }
    if (Object.keys(delta).length > (index === 0 ? 1 : 2)) events.push(delta);
    events.push(
      index === 0
        ? { type: 'finish', finishReason: choice.finishReason }
        : { type: 'finish', finishReason: choice.finishReason, index },
    );
  }
  if (response.usage !== undefined) events.push({ type: 'usage', usage: response.usage });
  return events;
}

/**
 * A server that ignored `stream: true` and answered one JSON body: its events once the body is whole
 * (`parse` is the adapter's own, for a JSON answer).
 */
export class WholeAnswerDecoder implements StreamDecoder<ProviderStreamEvent> {
  #text = '';

  constructor(
    private readonly settings: ProviderSettings,
    private readonly statusCode: number,
    private readonly parse: (json: unknown) => ProviderResponse,
  ) {}

  push(text: string): void {
    this.#text += text;
  }

  end(out: ProviderStreamEvent[]): void {
    const json = parseJsonText(this.settings.name, this.#text, this.statusCode);
    for (const event of responseAsEvents(this.parse(json))) out.push(event);
  }
}
