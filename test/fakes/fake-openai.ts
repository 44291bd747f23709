/**
 * A fake OpenAI-compatible provider: a real HTTP server on 127.0.0.1 speaking
 * OpenAI's chat-completions wire format, with scripted faults.
 *
 * ```ts
 * import { startFakeOpenAI, fakeBehaviours } from '../test/fakes/index.js';
 * const fake = await startFakeOpenAI({ requireApiKey: 'sk-test' }); // options optional
 * // config: providers: { openai: { type: 'openai', base_url: fake.baseUrl, api_key_env: … } }
 * fake.enqueue(fakeBehaviours.rateLimited(2), { kind: 'ok', content: 'hi' }); // next two chat requests
 * fake.setDefault({ kind: 'ok' });                                           // after the queue
 * …
 * fake.requests[0].body.model; fake.requests[0].authorization; // 'Bearer sk-test'
 * await fake.waitForClosedByClient(1);                          // an abort reached the upstream
 * await fake.close();                                           // destroys open sockets
 * ```
 *
 * Routes: `POST /v1/chat/completions` (JSON, or SSE when the body has `stream: true`), `GET /v1/models`.
 * `fake.baseUrl` is `http://127.0.0.1:<port>/v1`.
 *
 * Default answer: `echo: <last user message>` with usage estimated from the request (~4 chars a token).
 * JSON replies have OpenAI's exact shape (id, object, created, model, system_fingerprint,
 * choices[{index, message{role, content, tool_calls?, reasoning_content?, refusal}, logprobs, finish_reason}],
 * usage{prompt_tokens, completion_tokens, total_tokens}).
 * Streams: `data: {chat.completion.chunk}` events (reasoning deltas first, then content with `role` in the
 * first, then tool-call deltas: id/name first, arguments in two pieces), a last chunk with an empty delta and
 * the finish_reason, a usage-only chunk (`choices: []`) when the request set `stream_options.include_usage`
 * and the behaviour's usage is not `null`, then `data: [DONE]`. One "chunk" in `afterChunks` is one event
 * before the finish chunk; the failure kinds never get further than the last such event.
 *
 * Behaviours: see `FakeBehaviour` in behaviour.ts (ok, status, malformed-json, empty-body, hang, reset,
 * stream-cut, stream-stall, stream-error, stream-end-early, huge; `delayMs` and `headers` on all; `quirks` on
 * streams) and the ready-made `fakeBehaviours`. Errors from `status` without `body`, and 401s from
 * `requireApiKey`, use OpenAI's shape `{"error":{"message","type","param","code"}}`; the 401 message echoes
 * the key received (as OpenAI does, partly), so that tests can prove it is redacted downstream.
 */
import type { FakeBehaviour, ReplyShape } from './behaviour.js';
import {
  estimateCompletionTokens,
  estimatePromptTokens,
  lastUserText,
  sendJson,
  splitContent,
  startFakeProvider,
  type FakeDialect,
  type FakeExchange,
  type FakeProvider,
  type FakeProviderOptions,
} from './fake-server.js';

export type FakeOpenAI = FakeProvider;
export type FakeOpenAIOptions = FakeProviderOptions;

let completionCounter = 0;

interface BuiltReply {
  id: string;
  created: number;
  model: string;
  content: string | null;
  reasoningContent: string | undefined;
  refusal: string | undefined;
  toolCalls: Array<{ id: string; type: 'function'; function: { name: string; arguments: string } }> | undefined;
  finishReason: string;
  usage:
    | {
        prompt_tokens: number;
        completion_tokens: number;
        total_tokens: number;
        prompt_tokens_details?: { cached_tokens: number };
      }
    | undefined;
  timings: ReplyShape['timings'];
}

function buildReply(shape: ReplyShape, body: any): BuiltReply {
  completionCounter += 1;
  const content = shape.content === undefined ? `echo: ${lastUserText(body)}` : shape.content;
  const toolCalls = shape.toolCalls?.map((call, index) => ({
    id: call.id ?? `call_fake_${completionCounter}_${index}`,
    type: 'function' as const,
    function: {
      name: call.name,
      arguments: typeof call.arguments === 'string' ? call.arguments : JSON.stringify(call.arguments),
    },
  }));
  const promptTokens = shape.usage?.promptTokens ?? estimatePromptTokens(body);
  const completionTokens =
    shape.usage?.completionTokens ??
    estimateCompletionTokens(
      (content ?? '') + (shape.reasoningContent ?? '') + (shape.refusal ?? '') + JSON.stringify(toolCalls ?? ''),
    );
  return {
    id: `chatcmpl-fake${completionCounter}`,
    created: Math.floor(Date.now() / 1000),
    model: shape.model ?? (typeof body?.model === 'string' ? body.model : 'fake-model'),
    content,
    reasoningContent: shape.reasoningContent,
    refusal: shape.refusal,
    toolCalls,
    finishReason: shape.finishReason ?? (toolCalls !== undefined && toolCalls.length > 0 ? 'tool_calls' : 'stop'),
    usage:
      shape.usage === null
        ? undefined
        : {
            prompt_tokens: promptTokens,
            completion_tokens: completionTokens,
            total_tokens: promptTokens + completionTokens,
            ...(shape.usage?.cachedPromptTokens !== undefined
              ? { prompt_tokens_details: { cached_tokens: shape.usage.cachedPromptTokens } }
              : {}),
          },
    timings: shape.timings,
  };
}

/** How many choices the request asked for (`n`), as OpenAI reads it. */
function choiceCount(body: any): number {
  return typeof body?.n === 'number' && body.n > 1 ? Math.floor(body.n) : 1;
}

/** Choice `index`'s content: the reply's for the first, the same with ` #<index>` for the others (n > 1). */
function choiceContent(reply: BuiltReply, index: number): string | null {
  return index === 0 || reply.content === null ? reply.content : `${reply.content} #${index}`;
}

/** OpenAI's per-token `logprobs` for some text cut in pieces, when the request asked for them; else null. */
function logprobsFor(body: any, pieces: string[]): object | null {
  if (body?.logprobs !== true) return null;
  const top = typeof body.top_logprobs === 'number' ? body.top_logprobs : 0;
  return {
    content: pieces.map((token, position) => {
      const logprob = -(position + 1) / 100;
      const bytes = [...Buffer.from(token, 'utf8')];
      return {
        token,
        logprob,
        bytes,
        top_logprobs: Array.from({ length: top }, (_, rank) => ({
          token: rank === 0 ? token : `${token}~${rank}`,
          logprob: logprob - rank,
          bytes: [...Buffer.from(rank === 0 ? token : `${token}~${rank}`, 'utf8')],
        })),
      };
    }),
    refusal: null,
  };
}

function completionJson(reply: BuiltReply, body: any = undefined): object {
  const choices = Array.from({ length: choiceCount(body) }, (_, index) => {
    const content = choiceContent(reply, index);
    const message: Record<string, unknown> = {
      role: 'assistant',
      content,
      refusal: reply.refusal ?? null,
    };
    if (reply.reasoningContent !== undefined) message.reasoning_content = reply.reasoningContent;
    if (reply.toolCalls !== undefined) message.tool_calls = reply.toolCalls;
    return {
      index,
      message,
      logprobs: logprobsFor(body, splitContent(content ?? '', undefined)),
      finish_reason: reply.finishReason,
    };
  });
  const json: Record<string, unknown> = {
    id: reply.id,
    object: 'chat.completion',
    created: reply.created,
    model: reply.model,
    system_fingerprint: 'fp_fake',
    choices,
  };
  if (reply.usage !== undefined) json.usage = reply.usage;
  if (reply.timings !== undefined) json.timings = reply.timings;
  return json;
}

function sseEvent(data: unknown): string {
  return `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;
}

/**
 * The events before the finish chunk, and the events from it to `[DONE]`. With `n` > 1 the choices'
 * events are interleaved, one of each in turn, as OpenAI's are; with `logprobs`, each content delta
 * carries its token's.
 */
function streamFrames(
  reply: BuiltReply,
  shape: ReplyShape,
  includeUsage: boolean,
  request: any = undefined,
): { body: string[]; tail: string[] } {
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}): string =>
    sseEvent({
      id: reply.id,
      object: 'chat.completion.chunk',
      created: reply.created,
      model: reply.model,
      system_fingerprint: 'fp_fake',
      choices,
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });

  const count = choiceCount(request);
  const perChoice: string[][] = [];
  for (let index = 0; index < count; index++) {
    const deltaChunk = (delta: Record<string, unknown>, logprobs: object | null = null): string =>
      chunk([{ index, delta, logprobs, finish_reason: null }]);
    const events: string[] = [];
    let first = true;
    const withRole = (delta: Record<string, unknown>): Record<string, unknown> => {
      if (!first) return delta;
      first = false;
      return { role: 'assistant', ...delta };
    };
    for (const piece of splitContent(reply.reasoningContent ?? '', undefined))
      events.push(deltaChunk(withRole({ reasoning_content: piece })));
    for (const piece of splitContent(reply.refusal ?? '', undefined))
      events.push(deltaChunk(withRole({ refusal: piece })));
    for (const piece of splitContent(choiceContent(reply, index) ?? '', index === 0 ? shape.chunks : undefined))
      events.push(deltaChunk(withRole({ content: piece }), logprobsFor(request, [piece])));
    reply.toolCalls?.forEach((call, position) => {
      events.push(
        deltaChunk(
          withRole({
            tool_calls: [
              { index: position, id: call.id, type: 'function', function: { name: call.function.name, arguments: '' } },
            ],
          }),
        ),
      );
      const half = Math.ceil(call.function.arguments.length / 2);
      for (const piece of [call.function.arguments.slice(0, half), call.function.arguments.slice(half)]) {
        if (piece !== '')
          events.push(deltaChunk({ tool_calls: [{ index: position, function: { arguments: piece } }] }));
      }
    });
    if (first) events.push(deltaChunk(withRole({ content: '' })));
    perChoice.push(events);
  }
  const body: string[] = [];
  for (let turn = 0; perChoice.some((events) => turn < events.length); turn++)
    for (const events of perChoice) if (turn < events.length) body.push(events[turn]!);

  const tail: string[] = Array.from({ length: count }, (_, index) =>
    chunk(
      [{ index, delta: {}, logprobs: null, finish_reason: reply.finishReason }],
      reply.timings === undefined || index < count - 1 ? {} : { timings: reply.timings },
    ),
  );
  if (includeUsage && reply.usage !== undefined) tail.push(chunk([], { usage: reply.usage }));
  tail.push(sseEvent('[DONE]'));
  return { body, tail };
}

function openAIErrorBody(message: string, status: number): object {
  const type =
    status === 401
      ? 'invalid_request_error'
      : status === 429
        ? 'requests'
        : status >= 500
          ? 'server_error'
          : 'invalid_request_error';
  const code = status === 401 ? 'invalid_api_key' : status === 404 ? 'model_not_found' : null;
  return { error: { message, type, param: null, code } };
}

/** Stands for the content that grows in a `huge` answer: the frame is cut there. */
const HUGE_CONTENT = '@@huge-content@@';

/** `kind: 'huge'`: a chat completion, an SSE content line or a run of small events that grows (behaviour.ts). */
async function replyHuge(exchange: FakeExchange, behaviour: Extract<FakeBehaviour, { kind: 'huge' }>): Promise<void> {
  const body = exchange.record.body;
  const response = exchange.response;
  const reply = buildReply({ content: HUGE_CONTENT, usage: { promptTokens: 10, completionTokens: 10 } }, body);
  if (behaviour.shape === 'json') {
    const [head = '', tail = ''] = JSON.stringify(completionJson(reply)).split(HUGE_CONTENT);
    response.writeHead(behaviour.status ?? 200, { 'content-type': 'application/json', ...(behaviour.headers ?? {}) });
    if (await exchange.writeRepeated(head, 'x', tail, behaviour.bytes)) response.end();
    return;
  }
  const { body: frames, tail } = streamFrames(
    reply,
    { chunks: [HUGE_CONTENT] },
    body?.stream_options?.include_usage === true,
  );
  const [head = '', rest = ''] = (frames[0] ?? '').split(HUGE_CONTENT);
  response.writeHead(behaviour.status ?? 200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    ...(behaviour.headers ?? {}),
  });
  const written =
    behaviour.shape === 'line'
      ? await exchange.writeRepeated(head, 'x', rest + tail.join(''), behaviour.bytes)
      : await exchange.writeRepeated('', `${head}x${rest}`, tail.join(''), behaviour.bytes);
  if (written) response.end();
}

const openAIDialect: FakeDialect = {
  basePath: '/v1',
  chatPath: '/v1/chat/completions',
  errorBody: openAIErrorBody,
  get(path, options) {
    if (path !== '/v1/models') return undefined;
    const names = options.models ?? ['fake-model'];
    return {
      object: 'list',
      data: names.map((id) => ({ id, object: 'model', created: 1_700_000_000, owned_by: 'fake' })),
    };
  },
  async reply(exchange: FakeExchange, behaviour) {
    if (behaviour.kind === 'huge') return replyHuge(exchange, behaviour);
    const body = exchange.record.body;
    const reply = buildReply(behaviour, body);
    const extraHeaders = behaviour.headers ?? {};
    const response = exchange.response;

    if (body?.stream !== true) {
      const json = JSON.stringify(completionJson(reply, body));
      if (behaviour.kind === 'ok') {
        sendJson(response, 200, JSON.parse(json), extraHeaders);
        return;
      }
      if (behaviour.kind === 'stream-error') {
        sendJson(
          response,
          500,
          openAIErrorBody(behaviour.message ?? 'The server had an error while processing your request.', 500),
          extraHeaders,
        );
        return;
      }
      response.writeHead(200, { 'content-type': 'application/json', ...extraHeaders });
      response.write(json.slice(0, Math.floor(json.length / 2)));
      if (behaviour.kind === 'stream-cut') {
        await exchange.sleep(20);
        exchange.destroy();
      } else if (behaviour.kind === 'stream-end-early') {
        response.end();
      }
      return;
    }

    const includeUsage = body?.stream_options?.include_usage === true;
    const { body: bodyFrames, tail } = streamFrames(reply, behaviour, includeUsage, body);
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      ...extraHeaders,
    });
    const writeOptions = {
      format: 'sse' as const,
      intervalMs: behaviour.chunkIntervalMs ?? 0,
      quirks: behaviour.quirks ?? [],
    };

    if (behaviour.kind === 'ok') {
      if (await exchange.writeFrames([...bodyFrames, ...tail], writeOptions)) response.end();
      return;
    }
    const sent = bodyFrames.slice(0, Math.max(0, Math.min(behaviour.afterChunks, bodyFrames.length)));
    if (!(await exchange.writeFrames(sent, writeOptions))) return;
    switch (behaviour.kind) {
      case 'stream-cut':
        // Let the written events leave before the reset, so that the client sees them first.
        await exchange.sleep(20);
        exchange.destroy();
        return;
      case 'stream-stall':
        return;
      case 'stream-error': {
        const error = {
          error: {
            message: behaviour.message ?? 'The server had an error while processing your request.',
            type: 'server_error',
            param: null,
            code: null,
          },
        };
        if (await exchange.writeFrames([sseEvent(error)], { ...writeOptions, intervalMs: 0 })) response.end();
        return;
      }
      case 'stream-end-early':
        response.end();
        return;
    }
  },
};

/**
 * Azure OpenAI's data plane: the same answers under `/openai/deployments/<deployment>/chat/completions`
 * (`?api-version=` required, as Azure does: 404 without), the key in `api-key`. `baseUrl` is the origin.
 */
const azureDialect: FakeDialect = {
  ...openAIDialect,
  basePath: '',
  chatPath: /^\/openai\/deployments\/[^/]+\/chat\/completions$/,
  apiKeyOf: (headers) => (typeof headers['api-key'] === 'string' ? headers['api-key'] : undefined),
  get: () => undefined,
  async reply(exchange, behaviour) {
    if (!/[?&]api-version=[^&]+/.test(exchange.record.path)) {
      sendJson(exchange.response, 404, { error: { code: '404', message: 'Resource not found' } });
      return;
    }
    return openAIDialect.reply(exchange, behaviour);
  },
};

/** Starts a fake Azure OpenAI resource on 127.0.0.1 (a free port). */
export function startFakeAzureOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  return startFakeProvider(azureDialect, options);
}

/** Starts a fake OpenAI-compatible server on 127.0.0.1 (a free port). */
export function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  return startFakeProvider(openAIDialect, options);
}
