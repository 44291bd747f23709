/**
 * A fake Ollama server: a real HTTP server on 127.0.0.1 speaking Ollama's
 * native API, with scripted faults. Same API as the OpenAI fake (see
 * fake-openai.ts and `FakeProvider` in fake-server.ts); only the wire format differs.
 *
 * Routes: `POST /api/chat` (NDJSON when `stream` is true or absent, as Ollama streams by default; one JSON
 * object when `stream: false`), `GET /api/tags`. `fake.baseUrl` is `http://127.0.0.1:<port>` (no `/v1`).
 *
 * Replies carry Ollama's fields: `model`, `created_at`, `message{role, content, thinking?, tool_calls?
 * [{function{name, arguments (an object)}}]}`, `done`, `done_reason`, `total_duration`, `load_duration`,
 * `prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration` (counts omitted when the
 * behaviour's usage is `null`). Streams: thinking lines first, then content lines, then one line with all
 * tool calls (Ollama does not split them), then the final `done: true` line with the counts. One "chunk" in
 * `afterChunks` is one line before the final one. Errors are `{"error":"…"}`, in a body or as a stream line.
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

export type FakeOllama = FakeProvider;
export type FakeOllamaOptions = FakeProviderOptions;

interface BuiltOllamaReply {
  model: string;
  content: string;
  thinking: string | undefined;
  toolCalls: Array<{ function: { name: string; arguments: Record<string, unknown> } }> | undefined;
  doneReason: string;
  promptEvalCount: number | undefined;
  evalCount: number | undefined;
}

function buildReply(shape: ReplyShape, body: any): BuiltOllamaReply {
  const content = shape.content === undefined ? `echo: ${lastUserText(body)}` : (shape.content ?? '');
  const toolCalls = shape.toolCalls?.map((call) => ({
    function: {
      name: call.name,
      arguments:
        typeof call.arguments === 'string' ? (JSON.parse(call.arguments) as Record<string, unknown>) : call.arguments,
    },
  }));
  return {
    model: shape.model ?? (typeof body?.model === 'string' ? body.model : 'fake-model'),
    content,
    thinking: shape.reasoningContent,
    toolCalls,
    doneReason: shape.finishReason ?? 'stop',
    promptEvalCount:
      shape.usage === null || shape.usage?.promptTokens === null
        ? undefined
        : (shape.usage?.promptTokens ?? estimatePromptTokens(body)),
    evalCount:
      shape.usage === null
        ? undefined
        : (shape.usage?.completionTokens ??
          estimateCompletionTokens(content + (shape.reasoningContent ?? '') + JSON.stringify(toolCalls ?? ''))),
  };
}

function finalFields(reply: BuiltOllamaReply): Record<string, unknown> {
  const fields: Record<string, unknown> = {
    done: true,
    done_reason: reply.doneReason,
    total_duration: 123_456_789,
    load_duration: 1_234_567,
  };
  if (reply.promptEvalCount !== undefined) {
    fields.prompt_eval_count = reply.promptEvalCount;
    fields.prompt_eval_duration = 12_345_678;
  }
  if (reply.evalCount !== undefined) {
    fields.eval_count = reply.evalCount;
    fields.eval_duration = 98_765_432;
  }
  return fields;
}

function line(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}

/** Stands for the content that grows in a `huge` answer: the line is cut there. */
const HUGE_CONTENT = '@@huge-content@@';

/** `kind: 'huge'`: one JSON answer, one NDJSON content line or a run of small lines that grows (behaviour.ts). */
async function replyHuge(exchange: FakeExchange, behaviour: Extract<FakeBehaviour, { kind: 'huge' }>): Promise<void> {
  const response = exchange.response;
  const reply = buildReply(
    { content: HUGE_CONTENT, usage: { promptTokens: 10, completionTokens: 10 } },
    exchange.record.body,
  );
  const createdAt = new Date().toISOString();
  if (behaviour.shape === 'json') {
    const json = JSON.stringify({
      model: reply.model,
      created_at: createdAt,
      message: { role: 'assistant', content: HUGE_CONTENT },
      ...finalFields(reply),
    });
    const [head = '', tail = ''] = json.split(HUGE_CONTENT);
    response.writeHead(behaviour.status ?? 200, {
      'content-type': 'application/json; charset=utf-8',
      ...(behaviour.headers ?? {}),
    });
    if (await exchange.writeRepeated(head, 'x', tail, behaviour.bytes)) response.end();
    return;
  }
  const [head = '', rest = ''] = line({
    model: reply.model,
    created_at: createdAt,
    message: { role: 'assistant', content: HUGE_CONTENT },
    done: false,
  }).split(HUGE_CONTENT);
  const finalLine = line({
    model: reply.model,
    created_at: createdAt,
    message: { role: 'assistant', content: '' },
    ...finalFields(reply),
  });
  response.writeHead(behaviour.status ?? 200, { 'content-type': 'application/x-ndjson', ...(behaviour.headers ?? {}) });
  const written =
    behaviour.shape === 'line'
      ? await exchange.writeRepeated(head, 'x', rest + finalLine, behaviour.bytes)
      : await exchange.writeRepeated('', `${head}x${rest}`, finalLine, behaviour.bytes);
  if (written) response.end();
}

const ollamaDialect: FakeDialect = {
  basePath: '',
  chatPath: '/api/chat',
  errorBody(message) {
    return { error: message };
  },
  get(path, options) {
    if (path !== '/api/tags') return undefined;
    const names = options.models ?? ['llama3.2:3b'];
    return {
      models: names.map((name) => ({
        name,
        model: name,
        modified_at: '2026-01-01T00:00:00.000000000Z',
        size: 2_019_393_189,
        digest: 'a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72',
        details: {
          parent_model: '',
          format: 'gguf',
          family: 'llama',
          families: ['llama'],
          parameter_size: '3.2B',
          quantization_level: 'Q4_K_M',
        },
      })),
    };
  },
  async reply(exchange, behaviour) {
    if (behaviour.kind === 'huge') return replyHuge(exchange, behaviour);
    const body = exchange.record.body;
    const reply = buildReply(behaviour, body);
    const extraHeaders = behaviour.headers ?? {};
    const response = exchange.response;
    const createdAt = (): string => new Date().toISOString();

    if (body?.stream === false) {
      const message: Record<string, unknown> = { role: 'assistant', content: reply.content };
      if (reply.thinking !== undefined) message.thinking = reply.thinking;
      if (reply.toolCalls !== undefined) message.tool_calls = reply.toolCalls;
      const json = JSON.stringify({ model: reply.model, created_at: createdAt(), message, ...finalFields(reply) });
      if (behaviour.kind === 'ok') {
        sendJson(response, 200, JSON.parse(json), extraHeaders);
        return;
      }
      if (behaviour.kind === 'stream-error') {
        sendJson(response, 500, { error: behaviour.message ?? 'model runner has unexpectedly stopped' }, extraHeaders);
        return;
      }
      response.writeHead(200, { 'content-type': 'application/json; charset=utf-8', ...extraHeaders });
      response.write(json.slice(0, Math.floor(json.length / 2)));
      if (behaviour.kind === 'stream-cut') {
        await exchange.sleep(20);
        exchange.destroy();
      } else if (behaviour.kind === 'stream-end-early') {
        response.end();
      }
      return;
    }

    const partial = (message: Record<string, unknown>): string =>
      line({
        model: reply.model,
        created_at: createdAt(),
        message: { role: 'assistant', content: '', ...message },
        done: false,
      });
    const bodyLines: string[] = [];
    for (const piece of splitContent(reply.thinking ?? '', undefined)) bodyLines.push(partial({ thinking: piece }));
    for (const piece of splitContent(reply.content, behaviour.chunks)) bodyLines.push(partial({ content: piece }));
    if (reply.toolCalls !== undefined) bodyLines.push(partial({ tool_calls: reply.toolCalls }));
    const finalLine = line({
      model: reply.model,
      created_at: createdAt(),
      message: { role: 'assistant', content: '' },
      ...finalFields(reply),
    });

    response.writeHead(200, { 'content-type': 'application/x-ndjson', ...extraHeaders });
    const writeOptions = {
      format: 'ndjson' as const,
      intervalMs: behaviour.chunkIntervalMs ?? 0,
      quirks: behaviour.quirks ?? [],
    };
    if (behaviour.kind === 'ok') {
      if (await exchange.writeFrames([...bodyLines, finalLine], writeOptions)) response.end();
      return;
    }
    const sent = bodyLines.slice(0, Math.max(0, Math.min(behaviour.afterChunks, bodyLines.length)));
    if (!(await exchange.writeFrames(sent, writeOptions))) return;
    switch (behaviour.kind) {
      case 'stream-cut':
        await exchange.sleep(20);
        exchange.destroy();
        return;
      case 'stream-stall':
        return;
      case 'stream-error':
        if (
          await exchange.writeFrames([line({ error: behaviour.message ?? 'model runner has unexpectedly stopped' })], {
            ...writeOptions,
            intervalMs: 0,
          })
        ) {
          response.end();
        }
        return;
      case 'stream-end-early':
        response.end();
        return;
    }
  },
};

/** Starts a fake Ollama server on 127.0.0.1 (a free port). */
export function startFakeOllama(options: FakeOllamaOptions = {}): Promise<FakeOllama> {
  return startFakeProvider(ollamaDialect, options);
}
