import type { ToolCall } from '../../contract/request.js';
import type { ToolCallDelta } from '../../contract/reply.js';
import { mapOllamaFinishReason } from './finish-reason.js';
import type { OllamaChat, OllamaResponseToolCall } from './schema.js';
import type { ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../types.js';

/** Ollama tool calls (no ids, arguments an object) to OpenAI's (`call_<n>`, arguments a JSON string). */
export function convertOllamaToolCall(call: OllamaResponseToolCall, index: number): ToolCall {
  const args = call.function.arguments;
  return {
    id: `call_${index}`,
    type: 'function',
    function: { name: call.function.name, arguments: typeof args === 'string' ? args : JSON.stringify(args ?? {}) },
  };
}

/**
 * Ollama's counts, kept as given. It leaves out `prompt_eval_count` when the prompt came from its
 * cache: then its `eval_count` is still the real completion count, and only the prompt is marked
 * missing (the worker estimates that side alone). Neither count: no usage.
 */
export function convertOllamaUsage(chat: OllamaChat): ProviderUsage | undefined {
  const prompt = typeof chat.prompt_eval_count === 'number' ? chat.prompt_eval_count : undefined;
  const completion = typeof chat.eval_count === 'number' ? chat.eval_count : undefined;
  if (prompt === undefined && completion === undefined) return undefined;
  if (prompt === undefined) return { promptTokens: 0, completionTokens: completion!, missing: 'prompt' };
  if (completion === undefined) return { promptTokens: prompt, completionTokens: 0, missing: 'completion' };
  return { promptTokens: prompt, completionTokens: completion };
}

export function convertOllamaChat(chat: OllamaChat, requestedModel: string): ProviderResponse {
  const toolCalls = chat.message?.tool_calls?.map(convertOllamaToolCall);
  const hasToolCalls = toolCalls !== undefined && toolCalls.length > 0;
  const content = chat.message?.content ?? '';
  const response: ProviderResponse = {
    // Ollama sends "" next to tool calls; OpenAI's shape is null there.
    content: content === '' && hasToolCalls ? null : content,
    finishReason: mapOllamaFinishReason(chat.done_reason, hasToolCalls),
    modelResolved: chat.model ?? requestedModel,
  };
  if (hasToolCalls) response.toolCalls = toolCalls;
  if (chat.message?.thinking !== undefined && chat.message.thinking !== null && chat.message.thinking !== '') {
    response.reasoningContent = chat.message.thinking;
  }
  const usage = convertOllamaUsage(chat);
  if (usage !== undefined) response.usage = usage;
  return response;
}

export interface OllamaStreamState {
  modelSent: boolean;
  toolCallCount: number;
  done: boolean;
}

export function createOllamaStreamState(): OllamaStreamState {
  return { modelSent: false, toolCallCount: 0, done: false };
}

/** One NDJSON line to our events: model (once), delta, and on `done: true` finish and usage. */
export function convertOllamaChunk(chunk: OllamaChat, state: OllamaStreamState): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (!state.modelSent && chunk.model !== undefined && chunk.model !== null && chunk.model !== '') {
    state.modelSent = true;
    events.push({ type: 'model', modelResolved: chunk.model });
  }
  const message = chunk.message;
  if (message !== undefined && message !== null) {
    const delta: Extract<ProviderStreamEvent, { type: 'delta' }> = { type: 'delta' };
    if (message.content !== undefined && message.content !== null && message.content !== '')
      delta.content = message.content;
    if (message.thinking !== undefined && message.thinking !== null && message.thinking !== '')
      delta.reasoningContent = message.thinking;
    if (message.tool_calls !== undefined && message.tool_calls !== null && message.tool_calls.length > 0) {
      // Ollama sends each call whole, so one delta carries id, name and all the arguments.
      delta.toolCalls = message.tool_calls.map((call): ToolCallDelta => {
        const index = state.toolCallCount;
        state.toolCallCount += 1;
        const converted = convertOllamaToolCall(call, index);
        return { index, id: converted.id, type: 'function', function: { ...converted.function } };
      });
    }
    if (delta.content !== undefined || delta.reasoningContent !== undefined || delta.toolCalls !== undefined)
      events.push(delta);
  }
  if (chunk.done === true && !state.done) {
    state.done = true;
    events.push({ type: 'finish', finishReason: mapOllamaFinishReason(chunk.done_reason, state.toolCallCount > 0) });
    const usage = convertOllamaUsage(chunk);
    if (usage !== undefined) events.push({ type: 'usage', usage });
  }
  return events;
}
