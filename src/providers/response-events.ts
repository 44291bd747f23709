import type { ProviderResponse, ProviderStreamEvent } from './types.js';

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
