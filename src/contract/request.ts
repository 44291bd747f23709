import { z } from 'zod';
import { ProxyError } from './errors.js';
import { MAX_ID_LENGTH, MAX_TAG_VALUE_LENGTH, REQUEST_ID_PATTERN, SAFE_TEXT_PATTERN } from './client-ids.js';
import { fastCheck } from './fast-check.js';

/**
 * The request body of `llm.proxy.request` (DESIGN.md, "Request"): OpenAI's
 * chat-completions parameters plus our own. Unknown top-level fields are
 * refused by name so that a typo (`max_token`) never silently does nothing.
 * Nested objects (tools, response_format, provider_options) are passed through
 * to providers as given: they belong to the provider's API, not to us.
 */
const textPart = z.object({ type: z.literal('text'), text: z.string() }).passthrough();
const imagePart = z
  .object({
    type: z.literal('image_url'),
    image_url: z.object({ url: z.string().min(1), detail: z.enum(['auto', 'low', 'high']).optional() }).passthrough(),
  })
  .passthrough();
// Other part types (input_audio, file, …) pass through; `text` and `image_url` parts must have their own shape.
const otherPart = z
  .object({
    type: z
      .string()
      .regex(/^(?!text$|image_url$)./, 'a text part needs "text", an image_url part needs "image_url.url"'),
  })
  .passthrough();

/** The longest `timeout_ms` a request may ask for (one hour). */
export const MAX_TIMEOUT_MS = 3_600_000;

export const contentPartSchema = z.union([textPart, imagePart, otherPart]);

const toolCallSchema = z
  .object({
    id: z.string(),
    type: z.literal('function'),
    function: z.object({ name: z.string(), arguments: z.string() }).passthrough(),
  })
  .passthrough();

const messageSchema = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
    content: z.union([z.string(), z.array(contentPartSchema), z.null()]).optional(),
    name: z.string().optional(),
    tool_calls: z.array(toolCallSchema).optional(),
    tool_call_id: z.string().optional(),
    reasoning_content: z.string().optional(),
  })
  .passthrough()
  .superRefine((message, context) => {
    if (message.role === 'tool' && message.tool_call_id === undefined) {
      context.addIssue({ code: 'custom', message: 'a tool message needs tool_call_id', path: ['tool_call_id'] });
    }
    if (!hasNeededContent(message))
      context.addIssue({ code: 'custom', message: 'content is required', path: ['content'] });
  });

/** Content, or an assistant message that calls tools instead. */
function hasNeededContent(message: { role: string; content?: unknown; tool_calls?: unknown }): boolean {
  return (
    (message.content !== undefined && message.content !== null) ||
    (message.role === 'assistant' && message.tool_calls !== undefined)
  );
}

/** What the message schema's refinement checks, for the fast check (a JSON Schema cannot say it). */
function messageIsComplete(message: {
  role: string;
  content?: unknown;
  tool_calls?: unknown;
  tool_call_id?: unknown;
}): boolean {
  return !(message.role === 'tool' && message.tool_call_id === undefined) && hasNeededContent(message);
}

/** Ids and tags: the rules of client-ids.ts (which also bounds the number and names of tags, checked before this schema). */
const safeText = 'contains a control character or a lone surrogate';
const metadataId = z.string().min(1).max(MAX_ID_LENGTH).regex(SAFE_TEXT_PATTERN, safeText);
const metadataSchema = z
  .object({ agent_id: metadataId.optional(), microdao_id: metadataId.optional(), channel_id: metadataId.optional() })
  .catchall(z.string().max(MAX_TAG_VALUE_LENGTH).regex(SAFE_TEXT_PATTERN, safeText));

const toolSchema = z
  .object({
    type: z.literal('function'),
    function: z
      .object({
        name: z.string().min(1),
        description: z.string().optional(),
        parameters: z.record(z.string(), z.unknown()).optional(),
      })
      .passthrough(),
  })
  .passthrough();

const toolChoiceSchema = z.union([
  z.enum(['none', 'auto', 'required']),
  z.object({ type: z.literal('function'), function: z.object({ name: z.string() }).passthrough() }).passthrough(),
]);

const responseFormatSchema = z.object({ type: z.enum(['text', 'json_object', 'json_schema']) }).passthrough();

export const chatRequestSchema = z
  .object({
    model: z.string().min(1).max(256),
    messages: z.array(messageSchema).min(1, 'messages must not be empty'),
    max_tokens: z.number().int().positive().optional(),
    max_completion_tokens: z.number().int().positive().optional(),
    temperature: z.number().min(0).max(2).optional(),
    top_p: z.number().min(0).max(1).optional(),
    stop: z.union([z.string(), z.array(z.string()).max(4)]).optional(),
    seed: z.number().int().optional(),
    /** Choices to generate (OpenAI allows up to 128); a provider type that cannot refuses n > 1 by name. */
    n: z.number().int().min(1).max(128).optional(),
    presence_penalty: z.number().min(-2).max(2).optional(),
    frequency_penalty: z.number().min(-2).max(2).optional(),
    logit_bias: z.record(z.string(), z.number()).optional(),
    logprobs: z.boolean().optional(),
    top_logprobs: z.number().int().min(0).max(20).optional(),
    user: z.string().optional(),
    tools: z.array(toolSchema).optional(),
    tool_choice: toolChoiceSchema.optional(),
    parallel_tool_calls: z.boolean().optional(),
    response_format: responseFormatSchema.optional(),
    stream: z.boolean().optional(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).passthrough().optional(),
    reasoning_effort: z.enum(['minimal', 'low', 'medium', 'high']).optional(),
    metadata: metadataSchema.optional(),
    request_id: z.string().regex(REQUEST_ID_PATTERN, 'must be 1-128 visible ASCII characters').optional(),
    timeout_ms: z.number().int().positive().max(MAX_TIMEOUT_MS).optional(),
    /** auto (default): cacheable requests use the cache; bypass: not at all; refresh: ask upstream, store; force: cache even with tools. */
    cache: z.enum(['auto', 'bypass', 'refresh', 'force']).optional(),
    provider_options: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type ChatMessage = ChatRequest['messages'][number];
export type ToolCall = z.infer<typeof toolCallSchema>;
export type RequestMetadata = z.infer<typeof metadataSchema>;

/** One line per problem, each naming the field: `messages.0.role: Invalid enum value…`. */
export function describeZodIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map(String).join('.');
      if (issue.code === 'unrecognized_keys') {
        const where = path === '' ? '' : `${path}: `;
        return `${where}unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((key) => `"${key}"`).join(', ')}`;
      }
      return path === '' ? issue.message : `${path}: ${issue.message}`;
    })
    .join('; ');
}

/**
 * The request's fast check (contract/fast-check.ts): ajv over zod's JSON Schema of the request, plus
 * the message rule a JSON Schema cannot say. Exported for the equivalence test.
 */
export function passesFastCheck(body: unknown): boolean {
  return fastCheck(chatRequestSchema)(body) && (body as ChatRequest).messages.every(messageIsComplete);
}

/** Compile the request's fast check now (at worker start) rather than on the first request. */
export function prepareRequestCheck(): void {
  fastCheck(chatRequestSchema);
}

/**
 * Validate a decoded JSON body; throws `invalid_request` naming every field at fault. An accepted
 * body is returned as it is (zod would return a copy with the same keys and values).
 */
export function parseChatRequest(body: unknown): ChatRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ProxyError('invalid_request', 'request body must be a JSON object');
  }
  if (passesFastCheck(body)) return body as ChatRequest;
  const result = chatRequestSchema.safeParse(body);
  if (!result.success) throw new ProxyError('invalid_request', describeZodIssues(result.error));
  return result.data;
}
