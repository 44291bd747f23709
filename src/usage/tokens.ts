import { createRequire } from 'node:module';
import type { ChatMessage, ChatRequest } from '../contract/request.js';
import type { ToolCall } from '../contract/request.js';

/**
 * Token estimates for when a provider reports no usage. One encoding
 * (o200k_base, GPT-4o/4.1's) loaded on first use; for other model families
 * it is an estimate, and the event says so with `tokens_estimated: true`.
 * The per-message overhead follows OpenAI's published counting recipe:
 * 3 tokens per message, 1 more for a name, 3 to prime the reply.
 */
const TOKENS_PER_MESSAGE = 3;
const TOKENS_PER_NAME = 1;
const REPLY_PRIMING_TOKENS = 3;

function contentText(content: ChatMessage['content']): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part) => {
      if (part.type === 'text' && typeof (part as { text?: unknown }).text === 'string')
        return (part as { text: string }).text;
      return '';
    })
    .join('');
}

/** Images and other non-text parts: a flat allowance rather than nothing. */
const NON_TEXT_PART_TOKENS = 85;

function nonTextParts(content: ChatMessage['content']): number {
  if (!Array.isArray(content)) return 0;
  return content.filter((part) => part.type !== 'text').length;
}

type CountTokens = (text: string) => number;
let encodingCount: CountTokens | undefined;

/**
 * The encoding is about 35 MB of heap. Loaded (synchronously, once) when first
 * needed, so that a worker whose providers report usage never holds it: every
 * full GC would otherwise walk it, which the benchmark showed in the tail.
 */
function countTokens(text: string): number {
  encodingCount ??= (
    createRequire(import.meta.url)('gpt-tokenizer/encoding/o200k_base') as { countTokens: CountTokens }
  ).countTokens;
  return encodingCount(text);
}

/**
 * Longest piece handed to the encoder at once. Its byte-pair merging is quadratic in the length of one
 * pre-tokenized word: 80,000 characters without a break took 2.9 s and 150,000 took 13 s, so a prompt
 * of one long "word" could stall a worker (and limits tokenize every prompt). Longer text is counted in
 * pieces cut at white space where there is some (then the count is the same) and hard in a run without
 * any (a few tokens off per cut, in text that is an estimate anyway).
 */
const MAX_PIECE = 2_000;

export function countTextTokens(text: string): number {
  if (text === '') return 0;
  if (text.length <= MAX_PIECE) return countTokens(text);
  let total = 0;
  let start = 0;
  while (start < text.length) {
    let end = Math.min(start + MAX_PIECE, text.length);
    if (end < text.length) {
      const space = text.slice(start, end).search(/\s\S*$/);
      if (space > 0) end = start + space;
      // Never between the two halves of a surrogate pair.
      else if (/[\ud800-\udbff]/.test(text[end - 1]!)) end -= 1;
    }
    total += countTokens(text.slice(start, end));
    start = end;
  }
  return total;
}

function toolCallsText(toolCalls: ToolCall[] | undefined): string {
  if (toolCalls === undefined) return '';
  return toolCalls.map((call) => `${call.function.name}${call.function.arguments}`).join('');
}

export function estimatePromptTokens(request: Pick<ChatRequest, 'messages' | 'tools'>): number {
  let total = REPLY_PRIMING_TOKENS;
  for (const message of request.messages) {
    total += TOKENS_PER_MESSAGE;
    total += countTextTokens(message.role);
    total += countTextTokens(contentText(message.content));
    total += nonTextParts(message.content) * NON_TEXT_PART_TOKENS;
    total += countTextTokens(toolCallsText(message.tool_calls));
    if (message.name !== undefined) total += TOKENS_PER_NAME + countTextTokens(message.name);
  }
  if (request.tools !== undefined && request.tools.length > 0) total += countTextTokens(JSON.stringify(request.tools));
  return total;
}

export function estimateCompletionTokens(output: {
  content?: string | null;
  reasoningContent?: string | undefined;
  refusal?: string | undefined;
  toolCalls?: ToolCall[] | undefined;
}): number {
  return (
    countTextTokens(output.content ?? '') +
    countTextTokens(output.reasoningContent ?? '') +
    countTextTokens(output.refusal ?? '') +
    countTextTokens(toolCallsText(output.toolCalls))
  );
}
