/**
 * Our (OpenAI-shaped) request to Ollama's `POST /api/chat` body. Parameters
 * Ollama has no equivalent for (logit_bias, logprobs, n, user, tool_choice,
 * parallel_tool_calls, reasoning_effort) are not sent; `provider_options`
 * can set anything Ollama knows (`think`, `keep_alive`, `options.num_ctx`…).
 */
import { ProxyError } from '../../contract/errors.js';
import type { ChatMessage, ChatRequest } from '../../contract/request.js';

export interface OllamaToolCall {
  function: { name: string; arguments: Record<string, unknown> };
}

export interface OllamaMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  images?: string[];
  thinking?: string;
  tool_calls?: OllamaToolCall[];
  /** Which tool a `tool` message answers (Ollama matches by name, it has no call ids). */
  tool_name?: string;
}

function invalid(path: string, message: string): ProxyError {
  return new ProxyError('invalid_request', `${path}: ${message}`, { retryable: false });
}

/** The base64 payload of a `data:` URL (base64 or percent-encoded). */
export function imageFromDataUrl(url: string, path: string): string {
  const match = /^data:([^,]*?),(.*)$/s.exec(url);
  if (match === null) throw invalid(path, 'Ollama accepts images only as data: URLs (base64), not links');
  const [, meta = '', payload = ''] = match;
  if (/;base64$/i.test(meta)) return payload.replace(/\s+/g, '');
  return Buffer.from(decodeURIComponent(payload), 'utf8').toString('base64');
}

function convertContent(content: ChatMessage['content'], path: string): { text: string; images: string[] } {
  if (content === undefined || content === null) return { text: '', images: [] };
  if (typeof content === 'string') return { text: content, images: [] };
  const texts: string[] = [];
  const images: string[] = [];
  content.forEach((part, index) => {
    const partPath = `${path}.${index}`;
    if (part.type === 'text' && typeof (part as { text?: unknown }).text === 'string') {
      texts.push((part as { text: string }).text);
    } else if (part.type === 'image_url') {
      const url = (part as { image_url?: { url?: unknown } }).image_url?.url;
      if (typeof url !== 'string') throw invalid(partPath, 'image_url.url is required');
      images.push(imageFromDataUrl(url, `${partPath}.image_url.url`));
    } else {
      throw invalid(partPath, `Ollama does not accept content parts of type "${part.type}"`);
    }
  });
  return { text: texts.join('\n'), images };
}

/** OpenAI tool calls (arguments as a JSON string) to Ollama's (arguments as an object). */
export function convertToolCallsToOllama(
  toolCalls: NonNullable<ChatMessage['tool_calls']>,
  path: string,
): OllamaToolCall[] {
  return toolCalls.map((call, index) => {
    const text = call.function.arguments.trim();
    let parsed: unknown = {};
    if (text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch {
        throw invalid(`${path}.${index}.function.arguments`, 'not valid JSON');
      }
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw invalid(`${path}.${index}.function.arguments`, 'must be a JSON object');
    }
    return { function: { name: call.function.name, arguments: parsed as Record<string, unknown> } };
  });
}

export function convertToOllamaMessages(messages: ChatMessage[]): OllamaMessage[] {
  const toolNames = new Map<string, string>();
  return messages.map((message, index) => {
    const path = `messages.${index}`;
    const { text, images } = convertContent(message.content, `${path}.content`);
    const role = message.role === 'developer' ? 'system' : message.role;
    const converted: OllamaMessage = { role, content: text };
    if (images.length > 0) converted.images = images;
    if (message.role === 'assistant') {
      if (message.reasoning_content !== undefined) converted.thinking = message.reasoning_content;
      if (message.tool_calls !== undefined && message.tool_calls.length > 0) {
        converted.tool_calls = convertToolCallsToOllama(message.tool_calls, `${path}.tool_calls`);
        // Later ids shadow earlier ones: ids are only unique within one assistant turn (ours are call_0, call_1…).
        for (const call of message.tool_calls) toolNames.set(call.id, call.function.name);
      }
    }
    if (message.role === 'tool' && message.tool_call_id !== undefined) {
      const toolName = toolNames.get(message.tool_call_id);
      if (toolName !== undefined) converted.tool_name = toolName;
    }
    return converted;
  });
}

/** `response_format` to Ollama's `format`: `"json"` or a JSON schema object. */
export function convertResponseFormat(responseFormat: ChatRequest['response_format']): unknown {
  if (responseFormat === undefined || responseFormat.type === 'text') return undefined;
  if (responseFormat.type === 'json_object') return 'json';
  const schema = (responseFormat as { json_schema?: { schema?: unknown } }).json_schema?.schema;
  return schema ?? 'json';
}

function defined(entries: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(entries).filter(([, value]) => value !== undefined));
}

export function convertToOllamaRequest(model: string, request: ChatRequest, stream: boolean): Record<string, unknown> {
  // Ollama's /api/chat generates one answer per call.
  if (request.n !== undefined && request.n > 1)
    throw invalid('n', 'Ollama generates one choice per request (n must be 1)');
  const options = defined({
    temperature: request.temperature,
    top_p: request.top_p,
    seed: request.seed,
    num_predict: request.max_completion_tokens ?? request.max_tokens,
    stop: typeof request.stop === 'string' ? [request.stop] : request.stop,
    presence_penalty: request.presence_penalty,
    frequency_penalty: request.frequency_penalty,
  });
  const { options: extraOptions, ...providerOptions } = request.provider_options ?? {};
  const mergedOptions =
    typeof extraOptions === 'object' && extraOptions !== null && !Array.isArray(extraOptions)
      ? { ...options, ...(extraOptions as Record<string, unknown>) }
      : options;
  const body = defined({
    model,
    messages: convertToOllamaMessages(request.messages),
    stream,
    options: Object.keys(mergedOptions).length > 0 ? mergedOptions : undefined,
    tools: request.tools,
    format: convertResponseFormat(request.response_format),
  });
  return { ...body, ...providerOptions };
}
