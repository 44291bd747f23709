/**
 * Anthropic's wire format for the fake (fake-anthropic.ts): a reply shape built into a Messages API
 * message, its stream as `event: <type>\ndata: <json>\n\n` frames, and the error body.
 */
import { estimateCompletionTokens, estimatePromptTokens, lastUserText, splitContent } from './fake-server.js';

export interface AnthropicFakeToolUse {
  /** Default `toolu_fake_<n>_<i>`. */
  id?: string;
  name: string;
  input: Record<string, unknown>;
}

export interface AnthropicReplyShape {
  /** Default `echo: <last user text>`; `null`: no text block. */
  text?: string | null;
  thinking?: string;
  toolUses?: AnthropicFakeToolUse[];
  /** Default `tool_use` with tool uses, else `end_turn`. */
  stopReason?: string;
  usage?: {
    inputTokens?: number;
    outputTokens?: number;
    cacheReadInputTokens?: number;
    cacheCreationInputTokens?: number;
  };
  /** Model reported back; default the request's. */
  model?: string;
  textPieces?: number | string[];
  /** input_json_delta pieces per tool use (after the empty first one); default 4. */
  argumentPieces?: number;
  splitWrites?: boolean;
  /** Pause between two events (not with splitWrites). */
  intervalMs?: number;
}

export const ERROR_TYPE_BY_STATUS: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  504: 'timeout_error',
  529: 'overloaded_error',
};

let messageCounter = 0;

export function errorBody(type: string, message: string): object {
  messageCounter += 1;
  return { type: 'error', error: { type, message }, request_id: `req_fake${messageCounter}` };
}

export interface Built {
  id: string;
  model: string;
  blocks: Array<Record<string, any>>;
  stopReason: string;
  usage: Record<string, number>;
}

export function build(shape: AnthropicReplyShape, body: any): Built {
  messageCounter += 1;
  const text = shape.text === undefined ? `echo: ${lastUserText(body)}` : shape.text;
  const blocks: Array<Record<string, any>> = [];
  if (shape.thinking !== undefined)
    blocks.push({ type: 'thinking', thinking: shape.thinking, signature: `sig-fake-${messageCounter}` });
  if (text !== null) blocks.push({ type: 'text', text });
  shape.toolUses?.forEach((tool, index) => {
    blocks.push({
      type: 'tool_use',
      id: tool.id ?? `toolu_fake_${messageCounter}_${index}`,
      name: tool.name,
      input: tool.input,
    });
  });
  const usage = shape.usage ?? {};
  return {
    id: `msg_fake${messageCounter}`,
    model: shape.model ?? (typeof body?.model === 'string' ? body.model : 'claude-fake'),
    blocks,
    stopReason: shape.stopReason ?? ((shape.toolUses?.length ?? 0) > 0 ? 'tool_use' : 'end_turn'),
    usage: {
      input_tokens: usage.inputTokens ?? estimatePromptTokens(body),
      cache_creation_input_tokens: usage.cacheCreationInputTokens ?? 0,
      cache_read_input_tokens: usage.cacheReadInputTokens ?? 0,
      output_tokens: usage.outputTokens ?? estimateCompletionTokens(JSON.stringify(blocks)),
    },
  };
}

export function messageJson(built: Built): object {
  return {
    id: built.id,
    type: 'message',
    role: 'assistant',
    model: built.model,
    content: built.blocks,
    stop_reason: built.stopReason,
    stop_sequence: null,
    usage: built.usage,
  };
}

const sse = (type: string, data: object): string => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;

function piecesOf(text: string, count: number): string[] {
  const characters = Array.from(text);
  const size = Math.max(1, Math.ceil(characters.length / count));
  const pieces: string[] = [];
  for (let at = 0; at < characters.length; at += size) pieces.push(characters.slice(at, at + size).join(''));
  return pieces;
}

/** The events before message_delta, and message_delta + message_stop. */
export function streamFrames(built: Built, shape: AnthropicReplyShape): { body: string[]; tail: string[] } {
  const body = [
    sse('message_start', {
      message: { ...messageJson(built), content: [], stop_reason: null, usage: { ...built.usage, output_tokens: 1 } },
    }),
  ];
  built.blocks.forEach((block, index) => {
    const delta = (value: object): string => sse('content_block_delta', { index, delta: value });
    if (block.type === 'thinking') {
      body.push(
        sse('content_block_start', { index, content_block: { type: 'thinking', thinking: '', signature: '' } }),
      );
      for (const piece of splitContent(block.thinking, undefined))
        body.push(delta({ type: 'thinking_delta', thinking: piece }));
      body.push(delta({ type: 'signature_delta', signature: block.signature }));
    } else if (block.type === 'text') {
      body.push(sse('content_block_start', { index, content_block: { type: 'text', text: '' } }));
      for (const piece of splitContent(block.text, shape.textPieces))
        body.push(delta({ type: 'text_delta', text: piece }));
    } else {
      body.push(sse('content_block_start', { index, content_block: { ...block, input: {} } }));
      body.push(delta({ type: 'input_json_delta', partial_json: '' }));
      for (const piece of piecesOf(JSON.stringify(block.input), shape.argumentPieces ?? 4))
        body.push(delta({ type: 'input_json_delta', partial_json: piece }));
    }
    body.push(sse('content_block_stop', { index }));
    if (index === 0) body.splice(2, 0, sse('ping', {}));
  });
  const tail = [
    sse('message_delta', {
      delta: { stop_reason: built.stopReason, stop_sequence: null },
      usage: { output_tokens: built.usage.output_tokens },
    }),
    sse('message_stop', {}),
  ];
  return { body, tail };
}
