/**
 * A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 speaking Anthropic's wire format,
 * with scripted behaviours. Its own server (fake-server.ts checks `Authorization: Bearer`, and its
 * behaviours are OpenAI/Ollama-shaped) with the same kind of API as the other fakes; the messages
 * and stream frames it sends are built in anthropic-wire.ts.
 *
 * ```ts
 * const fake = await startFakeAnthropic({ requireApiKey: 'sk-ant-test' });
 * // config: providers: { anthropic: { type: 'anthropic', base_url: fake.baseUrl, api_key_env: … } }
 * fake.enqueue(anthropicBehaviours.overloaded(), { kind: 'ok', text: 'hi' }); // next two requests
 * fake.messageRequests[0].apiKey; fake.messageRequests[0].anthropicVersion; fake.messageRequests[0].body
 * await fake.close();
 * ```
 *
 * Route: `POST /v1/messages` (JSON, or SSE when the body has `stream: true`); `fake.baseUrl` ends in
 * `/v1`. Checks, before any behaviour: `x-api-key` (401 `authentication_error` when it is not
 * `requireApiKey`), `anthropic-version` (400 when missing), `max_tokens` and `messages` (400).
 * Errors have Anthropic's body `{"type":"error","error":{"type","message"},"request_id"}`.
 *
 * Default answer: `echo: <last user text>`, usage estimated. Streams are `event: <type>\ndata: <json>\n\n`:
 * message_start, then per block (thinking, text, each tool_use) content_block_start, deltas
 * (thinking_delta + signature_delta; text_delta per word or `textPieces`; input_json_delta: an empty
 * one, then the input's JSON in `argumentPieces` pieces) and content_block_stop, a ping after the
 * first block's start, message_delta (stop_reason, cumulative output_tokens), message_stop.
 * `afterEvents` (stream-error, stream-cut) counts events from message_start; neither reaches
 * message_delta. `splitWrites`: the body written in slices of 1-13 bytes, 1 ms apart, so that
 * events (and multi-byte characters) arrive cut at odd offsets; `splitsInsideCharacters` counts
 * the cuts that fell inside a UTF-8 character.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { sendJson } from './fake-server.js';
import {
  build,
  ERROR_TYPE_BY_STATUS,
  errorBody,
  messageJson,
  streamFrames,
  type AnthropicReplyShape,
} from './anthropic-wire.js';

export type { AnthropicFakeToolUse, AnthropicReplyShape } from './anthropic-wire.js';

interface Common {
  delayMs?: number;
  headers?: Record<string, string>;
}

export type AnthropicBehaviour =
  | ({ kind: 'ok' } & AnthropicReplyShape & Common)
  /** An HTTP error with Anthropic's body; `errorType` defaults to the status's type. */
  | ({ kind: 'status'; status: number; errorType?: string; message?: string } & Common)
  /** Streams `afterEvents` events, then an `error` event, then ends. A JSON request gets the error as HTTP. */
  | ({ kind: 'stream-error'; afterEvents: number; errorType?: string; message?: string } & AnthropicReplyShape & Common)
  /** Streams `afterEvents` events, then ends the body cleanly, without message_delta or message_stop (JSON: a cut body). */
  | ({ kind: 'stream-cut'; afterEvents: number } & AnthropicReplyShape & Common);

export const anthropicBehaviours = {
  rateLimited(retryAfterSeconds: number): AnthropicBehaviour {
    return {
      kind: 'status',
      status: 429,
      headers: { 'retry-after': String(retryAfterSeconds) },
      message: 'This request would exceed the rate limit for your organization of 50 requests per minute.',
    };
  },
  overloaded(): AnthropicBehaviour {
    return { kind: 'status', status: 529, message: 'Overloaded' };
  },
  invalidRequest(message: string): AnthropicBehaviour {
    return { kind: 'status', status: 400, message };
  },
} as const;

export interface RecordedAnthropicRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  apiKey: string | undefined;
  anthropicVersion: string | undefined;
  /** The body parsed as JSON; undefined when it was not JSON. */
  body: any;
  behaviour: AnthropicBehaviour['kind'] | undefined;
  /** With splitWrites: how many write boundaries fell inside a multi-byte UTF-8 character. */
  splitsInsideCharacters: number;
}

export interface FakeAnthropicOptions {
  requireApiKey?: string;
  defaultBehaviour?: AnthropicBehaviour;
}

export interface FakeAnthropic {
  readonly baseUrl: string;
  readonly requests: RecordedAnthropicRequest[];
  /** Only `POST /v1/messages`. */
  readonly messageRequests: RecordedAnthropicRequest[];
  enqueue(...behaviours: AnthropicBehaviour[]): void;
  setDefault(behaviour: AnthropicBehaviour): void;
  clearQueue(): void;
  close(): Promise<void>;
}

const SLICE_SIZES = [1, 2, 5, 3, 7, 1, 11, 4, 13, 2];

function sendError(response: ServerResponse, status: number, message: string, type?: string, headers = {}): void {
  sendJson(response, status, errorBody(type ?? ERROR_TYPE_BY_STATUS[status] ?? 'api_error', message), headers);
}

export async function startFakeAnthropic(options: FakeAnthropicOptions = {}): Promise<FakeAnthropic> {
  const requests: RecordedAnthropicRequest[] = [];
  const queue: AnthropicBehaviour[] = [];
  let defaultBehaviour: AnthropicBehaviour = options.defaultBehaviour ?? { kind: 'ok' };
  const sockets = new Set<Socket>();
  let closing = false;
  const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

  async function write(
    response: ServerResponse,
    frames: string[],
    shape: AnthropicReplyShape,
    record: RecordedAnthropicRequest,
  ) {
    if (shape.splitWrites !== true) {
      for (const [index, frame] of frames.entries()) {
        if (index > 0 && (shape.intervalMs ?? 0) > 0) await sleep(shape.intervalMs ?? 0);
        if (closing || response.destroyed) return;
        response.write(frame);
      }
      return;
    }
    const bytes = Buffer.from(frames.join(''), 'utf8');
    let offset = 0;
    for (let slice = 0; offset < bytes.length; slice += 1) {
      const end = Math.min(bytes.length, offset + (SLICE_SIZES[slice % SLICE_SIZES.length] ?? 1));
      if (closing || response.destroyed) return;
      response.write(bytes.subarray(offset, end));
      // A continuation byte right after the cut: the cut fell inside a character.
      if (end < bytes.length && ((bytes[end] ?? 0) & 0xc0) === 0x80) record.splitsInsideCharacters += 1;
      offset = end;
      await sleep(1);
    }
  }

  async function answer(response: ServerResponse, record: RecordedAnthropicRequest, behaviour: AnthropicBehaviour) {
    if ((behaviour.delayMs ?? 0) > 0) await sleep(behaviour.delayMs ?? 0);
    const headers = behaviour.headers ?? {};
    if (behaviour.kind === 'status') {
      sendError(
        response,
        behaviour.status,
        behaviour.message ?? `fake error ${behaviour.status}`,
        behaviour.errorType,
        headers,
      );
      return;
    }
    const built = build(behaviour, record.body);
    const errorType = behaviour.kind === 'stream-error' ? (behaviour.errorType ?? 'overloaded_error') : undefined;
    const errorMessage = (behaviour.kind === 'stream-error' && behaviour.message) || 'Overloaded';
    if (record.body.stream !== true) {
      if (behaviour.kind === 'ok') sendJson(response, 200, messageJson(built), headers);
      else if (errorType !== undefined) sendError(response, 529, errorMessage, errorType, headers);
      else
        response.writeHead(200, { 'content-type': 'application/json', ...headers }).end('{"id":"msg_cut","type":"mess');
      return;
    }
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      ...headers,
    });
    const { body, tail } = streamFrames(built, behaviour);
    let frames = [...body, ...tail];
    if (behaviour.kind !== 'ok') {
      frames = body.slice(0, behaviour.afterEvents);
      if (errorType !== undefined)
        frames.push(`event: error\ndata: ${JSON.stringify(errorBody(errorType, errorMessage))}\n\n`);
    }
    await write(response, frames, behaviour, record);
    if (!response.destroyed) response.end();
  }

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const pieces: Buffer[] = [];
    for await (const piece of request) pieces.push(piece as Buffer);
    let body: any;
    try {
      body = JSON.parse(Buffer.concat(pieces).toString('utf8'));
    } catch {
      body = undefined;
    }
    const header = (name: string) =>
      typeof request.headers[name] === 'string' ? (request.headers[name] as string) : undefined;
    const record: RecordedAnthropicRequest = {
      method: request.method ?? 'GET',
      path: request.url ?? '/',
      headers: request.headers,
      apiKey: header('x-api-key'),
      anthropicVersion: header('anthropic-version'),
      body,
      behaviour: undefined,
      splitsInsideCharacters: 0,
    };
    requests.push(record);
    if (record.method !== 'POST' || record.path !== '/v1/messages') {
      sendError(response, 404, `Not found: ${record.method} ${record.path}`);
      return;
    }
    if (options.requireApiKey !== undefined && record.apiKey !== options.requireApiKey) {
      sendError(response, 401, 'invalid x-api-key');
      return;
    }
    if (record.anthropicVersion === undefined) {
      sendError(response, 400, 'anthropic-version: header is required');
      return;
    }
    if (
      typeof body !== 'object' ||
      body === null ||
      !Array.isArray(body.messages) ||
      typeof body.max_tokens !== 'number'
    ) {
      sendError(
        response,
        400,
        typeof body?.max_tokens === 'number' ? 'messages: Field required' : 'max_tokens: Field required',
      );
      return;
    }
    const behaviour = queue.shift() ?? defaultBehaviour;
    record.behaviour = behaviour.kind;
    await answer(response, record, behaviour);
  }

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) sendError(response, 500, `fake crashed: ${String(error)}`);
      else response.destroy();
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    baseUrl: `${origin}/v1`,
    requests,
    get messageRequests() {
      return requests.filter((record) => record.method === 'POST' && record.path === '/v1/messages');
    },
    enqueue: (...behaviours) => void queue.push(...behaviours),
    setDefault: (behaviour) => {
      defaultBehaviour = behaviour;
    },
    clearQueue: () => {
      queue.length = 0;
    },
    async close() {
      if (closing) return;
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
