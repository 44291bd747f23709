/**
 * Our (OpenAI-shaped) request to Gemini's `GenerateContentRequest`. System and developer messages,
 * wherever they are, become `systemInstruction`; user and tool messages `user` contents, assistant
 * messages `model` ones, consecutive ones of one role merged. `n` > 1 is `candidateCount` (up to
 * GEMINI_MAX_CANDIDATES, refused above). Parameters Gemini has no equivalent for (logit_bias,
 * logprobs, top_logprobs, user, parallel_tool_calls) are not sent;
 * `provider_options` may set anything Gemini knows (`safetySettings`, `cachedContent`…), its
 * `generationConfig` merged into ours.
 */
import { ProxyError } from '../../contract/errors.js';
import type { ChatMessage, ChatRequest } from '../../contract/request.js';

type GeminiPart = Record<string, unknown>;

export interface GeminiContent {
  role: 'user' | 'model';
  parts: GeminiPart[];
}

/**
 * The placeholder Google documents for a function call the API did not produce itself (Gemini 3
 * refuses a call without a thought signature; we do not carry the real ones through the agent).
 */
export const SKIP_THOUGHT_SIGNATURE = 'skip_thought_signature_validator';

/**
 * `reasoning_effort` as a thinking budget in tokens: low/medium/high as Google's own
 * OpenAI-compatible endpoint maps them (1K, 8K, 24K); minimal 512, the least every 2.5 model takes.
 */
export const THINKING_BUDGETS = { minimal: 512, low: 1024, medium: 8192, high: 24576 } as const;

/**
 * The most candidates (`generationConfig.candidateCount`, our `n`) one request may ask for: 1-8, as
 * Google documents it for the models that take more than one (Vertex AI's GenerationConfig
 * reference). Gemini 1.0 models, and some newer ones, take only 1 and answer a 400 of their own.
 */
export const GEMINI_MAX_CANDIDATES = 8;

/** Ids we made up (`call_<n>`, response.ts) are not Gemini's: they are not sent back to it. */
const GENERATED_ID = /^call_\d+$/;

function invalid(path: string, message: string): ProxyError {
  return new ProxyError('invalid_request', `${path}: ${message}`, { retryable: false });
}

const IMAGE_TYPES: Record<string, string> = {
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  heic: 'image/heic',
  heif: 'image/heif',
  gif: 'image/gif',
};

/** `data:` URLs go inline (base64); https and gs:// links by reference, Gemini fetches them. */
export function convertImageUrl(url: string, path: string): GeminiPart {
  const data = /^data:([^,]*?),(.*)$/s.exec(url);
  if (data !== null) {
    const [, meta = '', payload = ''] = data;
    const base64 = /;base64$/i.test(meta);
    const mimeType = (base64 ? meta.slice(0, -';base64'.length) : meta).split(';')[0] || 'application/octet-stream';
    const bytes = base64
      ? payload.replace(/\s+/g, '')
      : Buffer.from(decodeURIComponent(payload), 'utf8').toString('base64');
    return { inlineData: { mimeType, data: bytes } };
  }
  if (/^(https|gs):\/\//i.test(url)) {
    const extension = /\.([a-z0-9]+)(?:[?#]|$)/i.exec(url)?.[1]?.toLowerCase();
    const mimeType = extension === undefined ? undefined : IMAGE_TYPES[extension];
    return { fileData: mimeType === undefined ? { fileUri: url } : { mimeType, fileUri: url } };
  }
  throw invalid(path, 'Gemini takes images as data: URLs, https:// or gs:// links');
}

/** A message's parts as Gemini parts: text and images; anything else is refused by path. */
function convertContentParts(content: ChatMessage['content'], path: string): GeminiPart[] {
  if (content === undefined || content === null) return [];
  if (typeof content === 'string') return content === '' ? [] : [{ text: content }];
  return content.flatMap((part, index): GeminiPart[] => {
    const partPath = `${path}.${index}`;
    if (part.type === 'text') {
      const text = (part as { text: string }).text;
      return text === '' ? [] : [{ text }];
    }
    if (part.type === 'image_url')
      return [convertImageUrl((part as { image_url: { url: string } }).image_url.url, `${partPath}.image_url.url`)];
    throw invalid(partPath, `Gemini adapter does not accept content parts of type "${part.type}"`);
  });
}

/** The text of a system or tool message (its text parts joined). */
function textOf(content: ChatMessage['content'], path: string): string {
  const parts = convertContentParts(content, path);
  if (parts.some((part) => typeof part.text !== 'string')) throw invalid(path, 'only text is accepted here');
  return parts.map((part) => part.text as string).join('\n');
}

function parseArguments(text: string, path: string): Record<string, unknown> {
  if (text.trim() === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalid(path, 'not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw invalid(path, 'must be a JSON object');
  return parsed as Record<string, unknown>;
}

/** A tool's answer: a JSON object as it is, anything else under `output` (the key Gemini's docs name). */
function functionResponseBody(text: string): Record<string, unknown> {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed))
      return parsed as Record<string, unknown>;
  } catch {
    // Not JSON: plain text.
  }
  return { output: text };
}

export function convertToGeminiContents(messages: ChatMessage[]): {
  contents: GeminiContent[];
  systemInstruction?: { parts: GeminiPart[] };
} {
  const contents: GeminiContent[] = [];
  const system: GeminiPart[] = [];
  const toolNames = new Map<string, string>();
  const add = (role: GeminiContent['role'], parts: GeminiPart[]): void => {
    if (parts.length === 0) return;
    const last = contents.at(-1);
    if (last?.role === role) last.parts.push(...parts);
    else contents.push({ role, parts });
  };
  messages.forEach((message, index) => {
    const path = `messages.${index}`;
    if (message.role === 'system' || message.role === 'developer') {
      const text = textOf(message.content, `${path}.content`);
      if (text !== '') system.push({ text });
    } else if (message.role === 'user') {
      add('user', convertContentParts(message.content, `${path}.content`));
    } else if (message.role === 'assistant') {
      const parts = convertContentParts(message.content, `${path}.content`);
      (message.tool_calls ?? []).forEach((call, callIndex) => {
        const args = parseArguments(call.function.arguments, `${path}.tool_calls.${callIndex}.function.arguments`);
        const functionCall = GENERATED_ID.test(call.id)
          ? { name: call.function.name, args }
          : { id: call.id, name: call.function.name, args };
        // Only the first call of a step carries a signature (Google's thought-signature rules).
        parts.push(callIndex === 0 ? { functionCall, thoughtSignature: SKIP_THOUGHT_SIGNATURE } : { functionCall });
        // Later ids shadow earlier ones: ours (call_0…) repeat from one answer to the next.
        toolNames.set(call.id, call.function.name);
      });
      add('model', parts);
    } else {
      const id = message.tool_call_id ?? '';
      const name = toolNames.get(id) ?? message.name;
      if (name === undefined)
        throw invalid(
          `${path}.tool_call_id`,
          'no earlier assistant tool call has this id (Gemini needs the function name)',
        );
      const response = functionResponseBody(textOf(message.content, `${path}.content`));
      add('user', [{ functionResponse: GENERATED_ID.test(id) ? { name, response } : { id, name, response } }]);
    }
  });
  if (contents.length === 0) throw invalid('messages', 'Gemini needs at least one user or assistant message');
  return system.length === 0 ? { contents } : { contents, systemInstruction: { parts: system } };
}

/** A JSON Schema as Gemini's `*JsonSchema` fields take it: without the `$schema` meta keyword. */
function jsonSchema(schema: unknown): unknown {
  if (typeof schema !== 'object' || schema === null || !('$schema' in schema)) return schema;
  const { $schema: _ignored, ...rest } = schema as Record<string, unknown>;
  return rest;
}

function convertTools(tools: ChatRequest['tools']): unknown[] | undefined {
  if (tools === undefined || tools.length === 0) return undefined;
  const functionDeclarations = tools.map(({ function: fn }) =>
    defined({ name: fn.name, description: fn.description, parametersJsonSchema: jsonSchema(fn.parameters) }),
  );
  return [{ functionDeclarations }];
}

function convertToolChoice(choice: ChatRequest['tool_choice']): Record<string, unknown> | undefined {
  if (choice === undefined) return undefined;
  if (typeof choice === 'object')
    return { functionCallingConfig: { mode: 'ANY', allowedFunctionNames: [choice.function.name] } };
  const mode = { auto: 'AUTO', none: 'NONE', required: 'ANY' }[choice];
  return { functionCallingConfig: { mode } };
}

function convertResponseFormat(format: ChatRequest['response_format']): Record<string, unknown> {
  if (format === undefined || format.type === 'text') return {};
  const schema = (format as { json_schema?: { schema?: unknown } }).json_schema?.schema;
  if (format.type === 'json_schema' && schema !== undefined)
    return { responseMimeType: 'application/json', responseJsonSchema: jsonSchema(schema) };
  return { responseMimeType: 'application/json' };
}

function defined(entries: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(entries).filter(([, value]) => value !== undefined));
}

export function convertToGeminiRequest(request: ChatRequest): Record<string, unknown> {
  const n = request.n ?? 1;
  // Above what Google documents: refused here, before anything is sent.
  if (n > GEMINI_MAX_CANDIDATES)
    throw invalid('n', `Gemini generates at most ${GEMINI_MAX_CANDIDATES} candidates per request (got ${n})`);
  const generationConfig = defined({
    candidateCount: n > 1 ? n : undefined,
    temperature: request.temperature,
    topP: request.top_p,
    maxOutputTokens: request.max_tokens ?? request.max_completion_tokens,
    stopSequences: typeof request.stop === 'string' ? [request.stop] : request.stop,
    seed: request.seed,
    presencePenalty: request.presence_penalty,
    frequencyPenalty: request.frequency_penalty,
    ...convertResponseFormat(request.response_format),
    thinkingConfig:
      request.reasoning_effort === undefined
        ? undefined
        : { thinkingBudget: THINKING_BUDGETS[request.reasoning_effort], includeThoughts: true },
  });
  const tools = convertTools(request.tools);
  const { generationConfig: extraConfig, ...providerOptions } = request.provider_options ?? {};
  const mergedConfig =
    typeof extraConfig === 'object' && extraConfig !== null && !Array.isArray(extraConfig)
      ? { ...generationConfig, ...(extraConfig as Record<string, unknown>) }
      : generationConfig;
  const body = defined({
    ...convertToGeminiContents(request.messages),
    tools,
    toolConfig: tools === undefined ? undefined : convertToolChoice(request.tool_choice),
    generationConfig: Object.keys(mergedConfig).length > 0 ? mergedConfig : undefined,
  });
  return { ...body, ...providerOptions };
}
