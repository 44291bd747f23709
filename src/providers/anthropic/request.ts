/**
 * Our (OpenAI-shaped) request to the body of Anthropic's `POST /v1/messages`.
 *
 * - system and developer messages are lifted, in order, into `system`;
 * - user and assistant messages become content blocks; `role: 'tool'` messages become `tool_result`
 *   blocks of a user message; consecutive messages of one role are merged into one turn;
 * - assistant `reasoning_content` is not sent back: Anthropic takes earlier thinking only as the
 *   signed blocks it produced, which an OpenAI-shaped history does not carry;
 * - `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `logprobs` and `top_logprobs`
 *   have no Anthropic equivalent and are not sent; `provider_options` is merged last, so that it
 *   can set anything Anthropic knows (`top_k`, `thinking: {type: 'adaptive'}`, `service_tier`…).
 */
import { ProxyError } from '../../contract/errors.js';
import type { ChatMessage, ChatRequest } from '../../contract/request.js';

/** Anthropic requires max_tokens; this is sent when neither the request nor the model config set one. */
export const DEFAULT_ANTHROPIC_MAX_TOKENS = 4096;

/**
 * `reasoning_effort` as an extended-thinking budget. Anthropic's minimum budget is 1024 and the
 * budget must stay below max_tokens (it is part of it): the budget is capped at max_tokens - 1,
 * and a request whose max_tokens leaves less than the minimum is refused.
 */
export const THINKING_BUDGET_TOKENS = { minimal: 1024, low: 1024, medium: 4096, high: 16384 } as const;
const MIN_THINKING_BUDGET_TOKENS = 1024;

/** The image types Anthropic accepts as base64 data. */
const IMAGE_MEDIA_TYPES: ReadonlySet<string> = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp']);

type Block = Record<string, unknown>;

export interface AnthropicMessageParam {
  role: 'user' | 'assistant';
  content: Block[];
}

type ContentPart = Exclude<NonNullable<ChatMessage['content']>, string>[number];

function invalid(path: string, message: string): ProxyError {
  return new ProxyError('invalid_request', `${path}: ${message}`, { retryable: false });
}

/** A text block; a `cache_control` on the part (prompt caching) goes along. Empty text: none (Anthropic refuses it). */
function textBlock(text: string, part?: ContentPart): Block | undefined {
  if (text === '') return undefined;
  const cacheControl = (part as { cache_control?: unknown } | undefined)?.cache_control;
  return cacheControl === undefined ? { type: 'text', text } : { type: 'text', text, cache_control: cacheControl };
}

/** `data:` URLs as base64 sources, http(s) URLs as URL sources. */
export function imageBlock(url: string, path: string): Block {
  if (/^https?:\/\//i.test(url)) return { type: 'image', source: { type: 'url', url } };
  const match = /^data:([^,]*?),(.*)$/s.exec(url);
  if (match === null) throw invalid(path, 'an image must be a data: URL or an http(s) URL');
  const [, meta = '', payload = ''] = match;
  const mediaType = (meta.split(';')[0] ?? '').trim().toLowerCase();
  if (!IMAGE_MEDIA_TYPES.has(mediaType)) {
    throw invalid(path, `Anthropic accepts image/jpeg, image/png, image/gif and image/webp, not "${mediaType}"`);
  }
  const data = /;base64$/i.test(meta)
    ? payload.replace(/\s+/g, '')
    : Buffer.from(decodeURIComponent(payload), 'utf8').toString('base64');
  return { type: 'image', source: { type: 'base64', media_type: mediaType, data } };
}

/** Message content as text and image blocks. */
function contentBlocks(content: ChatMessage['content'], path: string): Block[] {
  if (content === undefined || content === null) return [];
  if (typeof content === 'string') {
    const block = textBlock(content);
    return block === undefined ? [] : [block];
  }
  const blocks: Block[] = [];
  content.forEach((part, index) => {
    const partPath = `${path}.${index}`;
    if (part.type === 'text') {
      const block = textBlock((part as { text: string }).text, part);
      if (block !== undefined) blocks.push(block);
    } else if (part.type === 'image_url') {
      blocks.push(imageBlock((part as { image_url: { url: string } }).image_url.url, `${partPath}.image_url.url`));
    } else {
      throw invalid(partPath, `Anthropic does not accept content parts of type "${part.type}"`);
    }
  });
  return blocks;
}

/** The text blocks of a system or developer message (images are refused there). */
function systemBlocks(message: ChatMessage, path: string): Block[] {
  const blocks = contentBlocks(message.content, `${path}.content`);
  if (blocks.some((block) => block.type !== 'text'))
    throw invalid(`${path}.content`, 'a system message takes text only');
  return blocks;
}

/** One tool call's arguments (a JSON string) as the object `tool_use.input` must be. */
function toolInput(text: string, path: string): Record<string, unknown> {
  if (text.trim() === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalid(path, 'not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalid(path, 'must be a JSON object');
  }
  return parsed as Record<string, unknown>;
}

function assistantBlocks(message: ChatMessage, path: string): Block[] {
  const blocks = contentBlocks(message.content, `${path}.content`);
  message.tool_calls?.forEach((call, index) => {
    blocks.push({
      type: 'tool_use',
      id: call.id,
      name: call.function.name,
      input: toolInput(call.function.arguments, `${path}.tool_calls.${index}.function.arguments`),
    });
  });
  return blocks;
}

function toolResultBlock(message: ChatMessage, path: string): Block {
  const block: Block = { type: 'tool_result', tool_use_id: message.tool_call_id };
  if (typeof message.content === 'string') {
    if (message.content !== '') block.content = message.content;
  } else {
    const blocks = contentBlocks(message.content, `${path}.content`);
    if (blocks.length > 0) block.content = blocks;
  }
  return block;
}

/**
 * Appends a turn, merged into the previous one when the role is the same (Anthropic wants turns
 * to alternate); in a user turn, `tool_result` blocks go first, as Anthropic requires.
 */
function pushTurn(messages: AnthropicMessageParam[], role: 'user' | 'assistant', content: Block[]): void {
  if (content.length === 0) return;
  const last = messages[messages.length - 1];
  if (last === undefined || last.role !== role) {
    messages.push({ role, content });
    return;
  }
  const merged = [...last.content, ...content];
  last.content =
    role === 'user'
      ? [
          ...merged.filter((block) => block.type === 'tool_result'),
          ...merged.filter((block) => block.type !== 'tool_result'),
        ]
      : merged;
}

/** `system` (a string; text blocks when one carries `cache_control`) and the alternating turns. */
export function convertToAnthropicMessages(chat: ChatMessage[]): {
  system: string | Block[] | undefined;
  messages: AnthropicMessageParam[];
} {
  const system: Block[] = [];
  const messages: AnthropicMessageParam[] = [];
  chat.forEach((message, index) => {
    const path = `messages.${index}`;
    switch (message.role) {
      case 'system':
      case 'developer':
        system.push(...systemBlocks(message, path));
        break;
      case 'user':
        pushTurn(messages, 'user', contentBlocks(message.content, `${path}.content`));
        break;
      case 'assistant':
        pushTurn(messages, 'assistant', assistantBlocks(message, path));
        break;
      case 'tool':
        pushTurn(messages, 'user', [toolResultBlock(message, path)]);
        break;
    }
  });
  if (system.length === 0) return { system: undefined, messages };
  if (system.some((block) => block.cache_control !== undefined)) return { system, messages };
  return { system: system.map((block) => block.text as string).join('\n\n'), messages };
}

export function convertTools(tools: ChatRequest['tools']): Block[] | undefined {
  return tools?.map((tool) => {
    const converted: Block = {
      name: tool.function.name,
      input_schema: tool.function.parameters ?? { type: 'object', properties: {} },
    };
    if (tool.function.description !== undefined) converted.description = tool.function.description;
    const strict = (tool.function as { strict?: unknown }).strict;
    if (typeof strict === 'boolean') converted.strict = strict;
    return converted;
  });
}

/** `tool_choice` and `parallel_tool_calls: false` as Anthropic's `tool_choice`. */
export function convertToolChoice(request: ChatRequest): Block | undefined {
  const choice = request.tool_choice;
  const oneCallAtMost = request.parallel_tool_calls === false;
  let converted: Block;
  if (choice === undefined) {
    if (!oneCallAtMost || request.tools === undefined) return undefined;
    converted = { type: 'auto' };
  } else if (choice === 'none') {
    return { type: 'none' };
  } else if (choice === 'auto') {
    converted = { type: 'auto' };
  } else if (choice === 'required') {
    converted = { type: 'any' };
  } else {
    converted = { type: 'tool', name: choice.function.name };
  }
  if (oneCallAtMost) converted.disable_parallel_tool_use = true;
  return converted;
}

export function convertThinking(effort: ChatRequest['reasoning_effort'], maxTokens: number): Block | undefined {
  if (effort === undefined) return undefined;
  const budget = Math.min(THINKING_BUDGET_TOKENS[effort], maxTokens - 1);
  if (budget < MIN_THINKING_BUDGET_TOKENS) {
    throw invalid(
      'reasoning_effort',
      `Anthropic's extended thinking needs max_tokens above ${MIN_THINKING_BUDGET_TOKENS} (it is ${maxTokens})`,
    );
  }
  return { type: 'enabled', budget_tokens: budget };
}

/**
 * `json_schema` as Anthropic's structured outputs (`output_config.format`; models without them
 * answer 400). `json_object` is refused: Anthropic has no JSON mode without a schema.
 */
export function convertResponseFormat(format: ChatRequest['response_format']): Block | undefined {
  if (format === undefined || format.type === 'text') return undefined;
  if (format.type === 'json_object') {
    throw invalid('response_format', 'Anthropic has no json_object mode; use json_schema with a schema');
  }
  const schema = (format as { json_schema?: { schema?: unknown } }).json_schema?.schema;
  if (typeof schema !== 'object' || schema === null) throw invalid('response_format', 'json_schema.schema is required');
  return { format: { type: 'json_schema', schema } };
}

function defined(entries: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(entries).filter(([, value]) => value !== undefined));
}

/** The body of `POST {base_url}/messages`; `provider_options` last, so that it can override anything. */
export function convertToAnthropicRequest(
  model: string,
  request: ChatRequest,
  stream: boolean,
): Record<string, unknown> {
  if (request.n !== undefined && request.n > 1) {
    throw new ProxyError('invalid_request', 'anthropic: n > 1 is not supported by this provider', { retryable: false });
  }
  const maxTokens = request.max_tokens ?? request.max_completion_tokens ?? DEFAULT_ANTHROPIC_MAX_TOKENS;
  const { system, messages } = convertToAnthropicMessages(request.messages);
  const body = defined({
    model,
    max_tokens: maxTokens,
    system,
    messages,
    stop_sequences: typeof request.stop === 'string' ? [request.stop] : request.stop,
    temperature: request.temperature,
    top_p: request.top_p,
    // OpenAI's end-user id has Anthropic's counterpart; our own `metadata` is never sent.
    metadata: request.user === undefined ? undefined : { user_id: request.user },
    tools: convertTools(request.tools),
    tool_choice: convertToolChoice(request),
    thinking: convertThinking(request.reasoning_effort, maxTokens),
    output_config: convertResponseFormat(request.response_format),
    stream: stream ? true : undefined,
  });
  return { ...body, ...(request.provider_options ?? {}) };
}
