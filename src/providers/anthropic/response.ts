/**
 * Anthropic's answers to ours: a whole message to a ProviderResponse, and the stream's events,
 * one at a time, to ProviderStreamEvents through a small state machine.
 */
import type { ToolCall } from '../../contract/request.js';
import type { FinishReason, ToolCallDelta } from '../../contract/reply.js';
import { parseProviderPayload } from '../transport/parse-provider-payload.js';
import { malformedResponse } from '../transport/provider-error.js';
import type { ProviderResponse, ProviderSettings, ProviderStreamEvent, ProviderUsage } from '../types.js';
import { errorFromAnthropicPayload, isAnthropicError } from './errors.js';
import {
  contentBlockDeltaSchema,
  contentBlockStartSchema,
  contentBlockStopSchema,
  messageDeltaSchema,
  messageStartSchema,
  type AnthropicContentBlock,
  type AnthropicMessage,
  type AnthropicUsage,
} from './schema.js';

/** `stop_reason` to ours; an unknown (newer) reason is a normal stop. */
export function mapAnthropicStopReason(reason: string | null | undefined): FinishReason {
  switch (reason) {
    case 'max_tokens':
    case 'model_context_window_exceeded':
      return 'length';
    case 'tool_use':
      return 'tool_calls';
    case 'refusal':
      return 'content_filter';
    default:
      // end_turn, stop_sequence, pause_turn (a server tool's long turn, paused).
      return 'stop';
  }
}

/**
 * Anthropic counts the prompt in three parts: `input_tokens` (after the last cache breakpoint),
 * `cache_read_input_tokens` and `cache_creation_input_tokens`; the prompt is their sum.
 */
export function convertAnthropicUsage(usage: AnthropicUsage): ProviderUsage {
  const cacheRead = usage.cache_read_input_tokens ?? 0;
  const converted: ProviderUsage = {
    promptTokens: (usage.input_tokens ?? 0) + cacheRead + (usage.cache_creation_input_tokens ?? 0),
    completionTokens: usage.output_tokens ?? 0,
  };
  if (cacheRead > 0) converted.cachedPromptTokens = cacheRead;
  return converted;
}

/** A `tool_use` block without id or name: the caller reports it as a malformed answer. */
export class IncompleteToolUseError extends Error {}

function toolCallOf(block: AnthropicContentBlock): ToolCall {
  if (typeof block.id !== 'string' || typeof block.name !== 'string') throw new IncompleteToolUseError();
  return {
    id: block.id,
    type: 'function',
    function: { name: block.name, arguments: JSON.stringify(block.input ?? {}) },
  };
}

export function convertAnthropicMessage(message: AnthropicMessage, requestedModel: string): ProviderResponse {
  let text: string | null = null;
  let thinking: string | undefined;
  const toolCalls: ToolCall[] = [];
  for (const block of message.content) {
    if (block.type === 'text') text = (text ?? '') + (block.text ?? '');
    else if (block.type === 'thinking') thinking = (thinking ?? '') + (block.thinking ?? '');
    else if (block.type === 'tool_use') toolCalls.push(toolCallOf(block));
    // redacted_thinking, server tool blocks and their results: nothing an OpenAI-shaped reply can carry.
  }
  const response: ProviderResponse = {
    content: text,
    finishReason: mapAnthropicStopReason(message.stop_reason),
    modelResolved: message.model ?? requestedModel,
  };
  if (toolCalls.length > 0) response.toolCalls = toolCalls;
  if (thinking !== undefined && thinking !== '') response.reasoningContent = thinking;
  if (message.usage !== undefined && message.usage !== null) response.usage = convertAnthropicUsage(message.usage);
  return response;
}

/** What a content block of the stream is to us, by its index. */
type OpenBlock =
  | { kind: 'text' | 'thinking' | 'other' }
  | { kind: 'tool'; ordinal: number; input: unknown; argumentsSent: boolean };

/** What the stream converter remembers between events. */
export interface AnthropicStreamState {
  blocks: Map<number, OpenBlock>;
  toolCallCount: number;
  /** `message_start`'s counts, updated by `message_delta`'s (cumulative). */
  usage: AnthropicUsage;
  finished: boolean;
  /** `message_stop` came: the answer is complete. */
  stopped: boolean;
}

export function createAnthropicStreamState(): AnthropicStreamState {
  return { blocks: new Map(), toolCallCount: 0, usage: {}, finished: false, stopped: false };
}

type Delta = Extract<ProviderStreamEvent, { type: 'delta' }>;

/** `message_start`: the model (once) and the prompt's counts. */
export function onMessageStart(
  model: string | null | undefined,
  usage: AnthropicUsage | null | undefined,
  state: AnthropicStreamState,
): ProviderStreamEvent[] {
  if (usage !== undefined && usage !== null) Object.assign(state.usage, withoutNulls(usage));
  return model === undefined || model === null || model === '' ? [] : [{ type: 'model', modelResolved: model }];
}

/** `content_block_start`: a tool call opens with its id and name (index = its ordinal among tool calls). */
export function onContentBlockStart(
  index: number,
  block: AnthropicContentBlock,
  state: AnthropicStreamState,
): ProviderStreamEvent[] {
  if (block.type === 'text' || block.type === 'thinking') {
    state.blocks.set(index, { kind: block.type });
    // Anthropic starts a block empty; text already there is sent all the same.
    const start = block.type === 'text' ? block.text : block.thinking;
    if (start === undefined || start === null || start === '') return [];
    return [block.type === 'text' ? { type: 'delta', content: start } : { type: 'delta', reasoningContent: start }];
  }
  if (block.type !== 'tool_use') {
    // Server tools (web search…) run at Anthropic: their blocks and input deltas are not ours to relay.
    state.blocks.set(index, { kind: 'other' });
    return [];
  }
  if (typeof block.id !== 'string' || typeof block.name !== 'string') throw new IncompleteToolUseError();
  const ordinal = state.toolCallCount++;
  state.blocks.set(index, { kind: 'tool', ordinal, input: block.input, argumentsSent: false });
  const delta: ToolCallDelta = {
    index: ordinal,
    id: block.id,
    type: 'function',
    function: { name: block.name, arguments: '' },
  };
  return [{ type: 'delta', toolCalls: [delta] }];
}

/** `content_block_delta`: text, thinking, or a piece of a tool call's arguments; signatures are dropped. */
export function onContentBlockDelta(
  index: number,
  delta: { type: string; text?: string | null; thinking?: string | null; partial_json?: string | null },
  state: AnthropicStreamState,
): ProviderStreamEvent[] {
  const block = state.blocks.get(index);
  let event: Delta | undefined;
  if (delta.type === 'text_delta' && block?.kind === 'text' && delta.text) {
    event = { type: 'delta', content: delta.text };
  } else if (delta.type === 'thinking_delta' && block?.kind === 'thinking' && delta.thinking) {
    event = { type: 'delta', reasoningContent: delta.thinking };
  } else if (delta.type === 'input_json_delta' && block?.kind === 'tool' && delta.partial_json) {
    block.argumentsSent = true;
    event = { type: 'delta', toolCalls: [{ index: block.ordinal, function: { arguments: delta.partial_json } }] };
  }
  return event === undefined ? [] : [event];
}

/** `content_block_stop`: a tool call that got no argument pieces gets its (empty) input whole. */
export function onContentBlockStop(index: number, state: AnthropicStreamState): ProviderStreamEvent[] {
  const block = state.blocks.get(index);
  state.blocks.delete(index);
  if (block?.kind !== 'tool' || block.argumentsSent) return [];
  const input = JSON.stringify(block.input ?? {});
  return [{ type: 'delta', toolCalls: [{ index: block.ordinal, function: { arguments: input } }] }];
}

/** `message_delta`: the finish reason (once) and the counts so far (cumulative: the last one wins). */
export function onMessageDelta(
  stopReason: string | null | undefined,
  usage: AnthropicUsage | null | undefined,
  state: AnthropicStreamState,
): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (stopReason !== undefined && stopReason !== null && !state.finished) {
    state.finished = true;
    events.push({ type: 'finish', finishReason: mapAnthropicStopReason(stopReason) });
  }
  if (usage !== undefined && usage !== null) {
    Object.assign(state.usage, withoutNulls(usage));
    events.push({ type: 'usage', usage: convertAnthropicUsage(state.usage) });
  }
  return events;
}

function withoutNulls(usage: AnthropicUsage): AnthropicUsage {
  return Object.fromEntries(Object.entries(usage).filter(([, value]) => typeof value === 'number'));
}

/**
 * One decoded stream event to our events. An `error` event (or any error envelope) is thrown as
 * the ProxyError its type maps to; `ping` and event types Anthropic may add are ignored.
 */
export function convertAnthropicEvent(
  settings: ProviderSettings,
  json: unknown,
  state: AnthropicStreamState,
): ProviderStreamEvent[] {
  if (isAnthropicError(json)) throw errorFromAnthropicPayload(settings, json);
  const type = typeof json === 'object' && json !== null ? (json as { type?: unknown }).type : undefined;
  if (typeof type !== 'string') throw malformedResponse(settings.name, 'stream event without a type', 200);
  const what = `${type} event`;
  switch (type) {
    case 'message_start': {
      const { message } = parseProviderPayload(settings, json, messageStartSchema, what);
      return onMessageStart(message.model, message.usage, state);
    }
    case 'content_block_start': {
      const event = parseProviderPayload(settings, json, contentBlockStartSchema, what);
      try {
        return onContentBlockStart(event.index, event.content_block, state);
      } catch (error) {
        if (error instanceof IncompleteToolUseError)
          throw malformedResponse(settings.name, 'a tool_use block without id or name', 200);
        throw error;
      }
    }
    case 'content_block_delta': {
      const event = parseProviderPayload(settings, json, contentBlockDeltaSchema, what);
      return onContentBlockDelta(event.index, event.delta, state);
    }
    case 'content_block_stop':
      return onContentBlockStop(parseProviderPayload(settings, json, contentBlockStopSchema, what).index, state);
    case 'message_delta': {
      const event = parseProviderPayload(settings, json, messageDeltaSchema, what);
      return onMessageDelta(event.delta?.stop_reason, event.usage, state);
    }
    case 'message_stop':
      state.stopped = true;
      return [];
    default:
      return [];
  }
}
