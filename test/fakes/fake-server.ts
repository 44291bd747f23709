/**
 * The machinery shared by the fake providers: a real HTTP server on
 * 127.0.0.1 (port 0), a behaviour queue, request recording, in-flight and
 * client-closed counting, and a stream writer that can reproduce the quirks of
 * real SSE/NDJSON streams. Each fake (fake-openai.ts, fake-ollama.ts) adds its
 * wire format as a `FakeDialect`.
 */
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setMaxListeners } from 'node:events';
import type { FakeBehaviour, FakeBehaviourKind, StreamQuirk } from './behaviour.js';

export interface RecordedRequest {
  method: string;
  /** Path with query string, e.g. `/v1/chat/completions`. */
  path: string;
  headers: IncomingHttpHeaders;
  /** The `authorization` header as received (e.g. `Bearer sk-test`), if any. */
  authorization: string | undefined;
  /** The body parsed as JSON; `undefined` when empty or not JSON (see `rawBody`). */
  body: any;
  rawBody: string;
  /** `Date.now()` when the request headers arrived. */
  time: number;
  /** The behaviour used to answer (chat requests only). */
  behaviour: FakeBehaviourKind | undefined;
  /** Set when the client closed the connection before the response ended. */
  closedByClient: boolean;
  /** The client's TCP port: requests with the same port came over the same (kept-alive) connection. */
  remotePort: number | undefined;
}

export interface FakeProviderOptions {
  /** When set, chat requests without `Authorization: Bearer <requireApiKey>` get a 401 in the provider's error shape. */
  requireApiKey?: string;
  /** The behaviour used when the queue is empty (default `{kind: 'ok'}`). */
  defaultBehaviour?: FakeBehaviour;
  /** Model names listed by `GET /v1/models` / `GET /api/tags`. */
  models?: string[];
}

export interface FakeProvider {
  /** What goes in config `base_url` (`http://127.0.0.1:<port>/v1` for OpenAI, `http://127.0.0.1:<port>` for Ollama). */
  readonly baseUrl: string;
  /** `http://127.0.0.1:<port>`. */
  readonly origin: string;
  readonly port: number;
  /** Every request received (chat and listing), in arrival order. */
  readonly requests: RecordedRequest[];
  /** Only the chat requests (`POST …/chat/completions` or `POST /api/chat`). */
  readonly chatRequests: RecordedRequest[];
  /** Requests whose response has not ended and whose connection is still open. */
  readonly inFlight: number;
  /** Requests whose connection the client closed before the response ended (aborts reaching upstream). */
  readonly closedByClient: number;
  /** Queue behaviours for the next chat requests, consumed in order; then the default applies. */
  enqueue(...behaviours: FakeBehaviour[]): void;
  /** The behaviour for chat requests once the queue is empty. */
  setDefault(behaviour: FakeBehaviour): void;
  /** Empties the queue (the default stays). */
  clearQueue(): void;
  /** Behaviours still queued. */
  readonly queued: number;
  /** Resolves with `requests` once at least `count` requests (of any kind) have arrived. */
  waitForRequests(count: number, timeoutMs?: number): Promise<RecordedRequest[]>;
  /** Resolves once `closedByClient >= count`. */
  waitForClosedByClient(count: number, timeoutMs?: number): Promise<void>;
  /** Resolves once no request is in flight. */
  waitForIdle(timeoutMs?: number): Promise<void>;
  /** Closes the server and destroys every open socket (hanging requests included). */
  close(): Promise<void>;
}

/** One chat request being answered, handed to the dialect. */
export interface FakeExchange {
  readonly request: IncomingMessage;
  readonly response: ServerResponse;
  readonly record: RecordedRequest;
  /** True once the connection is gone (closed by the client, destroyed by the fake, or the fake closed). */
  readonly gone: boolean;
  /** Waits; resolves false when the connection went away meanwhile. */
  sleep(milliseconds: number): Promise<boolean>;
  /** Destroys the connection on purpose (not counted as closed by the client). */
  destroy(): void;
  /**
   * Writes encoded events (each a complete SSE event or NDJSON line, `\n` line ends) with the
   * given quirks and spacing. Resolves false when the connection went away meanwhile.
   */
  writeFrames(frames: string[], options: WriteFramesOptions): Promise<boolean>;
  /**
   * Writes `head`, then `unit` over and over until the body is about `bytes` long (forever without),
   * then `tail`; in 64 KiB pieces, each written once the previous one has left (the fake holds one
   * piece, however long the body). Resolves false when the connection went away meanwhile.
   */
  writeRepeated(head: string, unit: string, tail: string, bytes: number | undefined): Promise<boolean>;
}

export interface WriteFramesOptions {
  format: 'sse' | 'ndjson';
  intervalMs?: number;
  quirks?: StreamQuirk[];
}

export interface FakeDialect {
  /** `/v1` for OpenAI, `` for Ollama. */
  basePath: string;
  /** The chat route: a path, or a pattern (Azure's `/openai/deployments/<name>/chat/completions`). */
  chatPath: string | RegExp;
  /** The API key as the provider reads it from the request; default: `Authorization: Bearer <key>`. */
  apiKeyOf?: (headers: IncomingHttpHeaders) => string | undefined;
  /** The provider's error body for a message (used for `status` without `body`, 401s, unknown routes). */
  errorBody(message: string, status: number): object;
  /** Answers `GET` routes (model listings); `undefined` for an unknown route. */
  get(path: string, options: FakeProviderOptions): object | undefined;
  /** Answers a chat request for the behaviours `ok`, `stream-*` and `huge`. */
  reply(
    exchange: FakeExchange,
    behaviour: Extract<
      FakeBehaviour,
      { kind: 'ok' | 'stream-cut' | 'stream-stall' | 'stream-error' | 'stream-end-early' | 'huge' }
    >,
  ): Promise<void>;
}

const DEFAULT_WAIT_MS = 10_000;

async function readBody(request: IncomingMessage): Promise<string> {
  const pieces: Buffer[] = [];
  for await (const piece of request) pieces.push(piece as Buffer);
  return Buffer.concat(pieces).toString('utf8');
}

function parseJson(text: string): unknown {
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Size of one write of `writeRepeated`. */
const REPEATED_PIECE_BYTES = 64 * 1024;

/** Byte offsets that land in awkward places; cycled through when splitting writes. */
const SPLIT_SIZES = [1, 2, 5, 3, 7, 1, 11, 4, 13, 2];

function applyLineQuirks(frame: string, format: 'sse' | 'ndjson', quirks: ReadonlySet<StreamQuirk>): string {
  let text = frame;
  if (quirks.has('no-space') && format === 'sse') text = text.replace(/^data: /gm, 'data:');
  if (quirks.has('empty-data')) text = (format === 'sse' ? 'data:\n\n' : '   \n') + text;
  if (quirks.has('comments')) text = (format === 'sse' ? ': keep-alive\n\n' : '\n') + text;
  if (quirks.has('crlf')) text = text.replace(/\n/g, '\r\n');
  return text;
}

export async function startFakeProvider(
  dialect: FakeDialect,
  options: FakeProviderOptions = {},
): Promise<FakeProvider> {
  const requests: RecordedRequest[] = [];
  const queue: FakeBehaviour[] = [];
  let defaultBehaviour: FakeBehaviour = options.defaultBehaviour ?? { kind: 'ok' };
  let inFlight = 0;
  let closedByClient = 0;
  let closing = false;
  const sockets = new Set<Socket>();
  const closeController = new AbortController();
  // Every exchange that sleeps listens on it: hundreds at once under load tests.
  setMaxListeners(0, closeController.signal);
  const waiters = new Set<() => void>();

  function notify(): void {
    for (const waiter of [...waiters]) waiter();
  }

  function waitUntil(condition: () => boolean, description: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (condition()) return resolve();
      const check = (): void => {
        if (!condition()) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`fake provider: timed out after ${timeoutMs} ms waiting for ${description}`));
      }, timeoutMs);
      waiters.add(check);
    });
  }

  function isChatPath(path: string): boolean {
    const bare = path.split('?')[0] ?? path;
    return typeof dialect.chatPath === 'string' ? bare === dialect.chatPath : dialect.chatPath.test(bare);
  }
  const apiKeyOf =
    dialect.apiKeyOf ??
    ((headers: IncomingHttpHeaders) => headers.authorization?.replace(/^Bearer\s+/i, '') ?? undefined);

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = request.url ?? '/';
    const record: RecordedRequest = {
      method: request.method ?? 'GET',
      path,
      headers: request.headers,
      authorization: request.headers.authorization,
      body: undefined,
      rawBody: '',
      time: Date.now(),
      behaviour: undefined,
      closedByClient: false,
      remotePort: request.socket.remotePort,
    };
    inFlight += 1;
    let destroyedByFake = false;
    let gone = false;
    let settled = false;
    const settle = (): void => {
      if (settled) return;
      settled = true;
      inFlight -= 1;
      notify();
    };
    response.on('close', () => {
      gone = true;
      if (!response.writableEnded && !destroyedByFake && !closing) {
        record.closedByClient = true;
        closedByClient += 1;
      }
      settle();
    });
    response.on('finish', settle);

    record.rawBody = await readBody(request).catch(() => '');
    record.body = parseJson(record.rawBody);
    requests.push(record);
    notify();

    const exchange: FakeExchange = {
      request,
      response,
      record,
      get gone() {
        return gone || closing || response.destroyed;
      },
      async sleep(milliseconds) {
        if (milliseconds > 0) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, milliseconds);
            function done(): void {
              clearTimeout(timer);
              closeController.signal.removeEventListener('abort', done);
              response.off('close', done);
              resolve();
            }
            closeController.signal.addEventListener('abort', done, { once: true });
            response.once('close', done);
          });
        }
        return !exchange.gone;
      },
      destroy() {
        destroyedByFake = true;
        request.socket.destroy();
      },
      async writeFrames(frames, writeOptions) {
        const quirks = new Set(writeOptions.quirks ?? []);
        const encoded = frames.map((frame) => applyLineQuirks(frame, writeOptions.format, quirks));
        const batches = quirks.has('coalesce') ? [encoded.join('')] : encoded;
        let sizeIndex = 0;
        for (let index = 0; index < batches.length; index += 1) {
          if (index > 0 && !(await exchange.sleep(writeOptions.intervalMs ?? 0))) return false;
          if (exchange.gone) return false;
          const bytes = Buffer.from(batches[index] ?? '', 'utf8');
          if (!quirks.has('split-writes')) {
            response.write(bytes);
            continue;
          }
          let offset = 0;
          while (offset < bytes.length) {
            const size = SPLIT_SIZES[sizeIndex % SPLIT_SIZES.length] ?? 1;
            sizeIndex += 1;
            response.write(bytes.subarray(offset, offset + size));
            offset += size;
            // A pause so that the pieces leave as separate TCP segments and reach the client as separate reads.
            if (!(await exchange.sleep(1))) return false;
          }
        }
        return !exchange.gone;
      },
      async writeRepeated(head, unit, tail, bytes) {
        /** Writes and, when the socket's buffer is full, waits until it drains (or the connection goes). */
        const write = async (data: string | Buffer): Promise<boolean> => {
          if (exchange.gone) return false;
          if (!response.write(data)) {
            await new Promise<void>((resolve) => {
              const done = (): void => {
                response.off('drain', done);
                response.off('close', done);
                closeController.signal.removeEventListener('abort', done);
                resolve();
              };
              response.once('drain', done);
              response.once('close', done);
              closeController.signal.addEventListener('abort', done, { once: true });
            });
          }
          return !exchange.gone;
        };
        const unitBytes = Buffer.byteLength(unit);
        const unitsPerPiece = Math.max(1, Math.floor(REPEATED_PIECE_BYTES / unitBytes));
        const piece = Buffer.from(unit.repeat(unitsPerPiece));
        let units =
          bytes === undefined
            ? Number.POSITIVE_INFINITY
            : Math.max(0, Math.floor((bytes - Buffer.byteLength(head) - Buffer.byteLength(tail)) / unitBytes));
        if (head !== '' && !(await write(head))) return false;
        while (units > 0) {
          const count = Math.min(units, unitsPerPiece);
          if (!(await write(count === unitsPerPiece ? piece : piece.subarray(0, count * unitBytes)))) return false;
          units -= count;
        }
        return tail === '' || (await write(tail));
      },
    };

    if (record.method === 'GET') {
      const body = dialect.get(path.split('?')[0] ?? path, options);
      sendJson(response, body === undefined ? 404 : 200, body ?? dialect.errorBody(`no route for GET ${path}`, 404));
      return;
    }
    if (record.method !== 'POST' || !isChatPath(path)) {
      sendJson(response, 404, dialect.errorBody(`no route for ${record.method} ${path}`, 404));
      return;
    }

    const behaviour = queue.shift() ?? defaultBehaviour;
    record.behaviour = behaviour.kind;

    const received = apiKeyOf(record.headers);
    if (options.requireApiKey !== undefined && received !== options.requireApiKey) {
      // Like OpenAI, the message echoes what was received, so that tests can prove redaction downstream.
      sendJson(
        response,
        401,
        dialect.errorBody(
          `Incorrect API key provided: ${received}. You can find your API key in your account settings.`,
          401,
        ),
      );
      return;
    }

    if (!(await exchange.sleep(behaviour.delayMs ?? 0))) return;
    const extraHeaders = behaviour.headers ?? {};

    switch (behaviour.kind) {
      case 'hang':
        return;
      case 'reset':
        exchange.destroy();
        return;
      case 'status': {
        const body =
          behaviour.body === undefined
            ? JSON.stringify(dialect.errorBody(behaviour.message ?? `fake error ${behaviour.status}`, behaviour.status))
            : typeof behaviour.body === 'string'
              ? behaviour.body
              : JSON.stringify(behaviour.body);
        if (behaviour.cutBody === true) {
          response.writeHead(behaviour.status, {
            'content-type': 'application/json',
            'content-length': String(Buffer.byteLength(body)),
            ...extraHeaders,
          });
          response.write(body.slice(0, Math.floor(body.length / 2)));
          await exchange.sleep(20);
          exchange.destroy();
          return;
        }
        response.writeHead(behaviour.status, { 'content-type': 'application/json', ...extraHeaders });
        response.end(body);
        return;
      }
      case 'malformed-json':
        response.writeHead(behaviour.status ?? 200, { 'content-type': 'application/json', ...extraHeaders });
        response.end(
          '{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": {"role": "assistant", "content": "unterminat',
        );
        return;
      case 'empty-body':
        response.writeHead(behaviour.status ?? 200, { 'content-type': 'application/json', ...extraHeaders });
        response.end();
        return;
      default:
        await dialect.reply(exchange, behaviour);
    }
  }

  const server: Server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent && !response.destroyed) {
        sendJson(response, 500, dialect.errorBody(`fake provider crashed: ${String(error)}`, 500));
      } else {
        response.destroy();
      }
    });
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const origin = `http://127.0.0.1:${port}`;

  return {
    baseUrl: origin + dialect.basePath,
    origin,
    port,
    requests,
    get chatRequests() {
      return requests.filter((record) => record.method === 'POST' && isChatPath(record.path));
    },
    get inFlight() {
      return inFlight;
    },
    get closedByClient() {
      return closedByClient;
    },
    get queued() {
      return queue.length;
    },
    enqueue(...behaviours) {
      queue.push(...behaviours);
    },
    setDefault(behaviour) {
      defaultBehaviour = behaviour;
    },
    clearQueue() {
      queue.length = 0;
    },
    async waitForRequests(count, timeoutMs = DEFAULT_WAIT_MS) {
      await waitUntil(() => requests.length >= count, `${count} request(s) (have ${requests.length})`, timeoutMs);
      return requests;
    },
    waitForClosedByClient(count, timeoutMs = DEFAULT_WAIT_MS) {
      return waitUntil(
        () => closedByClient >= count,
        `${count} connection(s) closed by the client (have ${closedByClient})`,
        timeoutMs,
      );
    },
    waitForIdle(timeoutMs = DEFAULT_WAIT_MS) {
      return waitUntil(() => inFlight === 0, `no request in flight (have ${inFlight})`, timeoutMs);
    },
    async close() {
      if (closing) return;
      closing = true;
      closeController.abort();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  response.end(text);
}

/** The text of the last user message (string content, or its text parts joined). */
export function lastUserText(body: any): string {
  const messages: any[] = Array.isArray(body?.messages) ? body.messages : [];
  for (let index = messages.length - 1; index >= 0; index -= 1) {
    const message = messages[index];
    if (message?.role !== 'user') continue;
    if (typeof message.content === 'string') return message.content;
    if (Array.isArray(message.content)) {
      return message.content
        .filter((part: any) => part?.type === 'text' && typeof part.text === 'string')
        .map((part: any) => part.text)
        .join(' ');
    }
  }
  return '';
}

/** A plausible token count: about four characters a token, a few tokens of overhead per message. */
export function estimatePromptTokens(body: any): number {
  const messages: any[] = Array.isArray(body?.messages) ? body.messages : [];
  let total = 3;
  for (const message of messages) total += 4 + Math.ceil(JSON.stringify(message?.content ?? '').length / 4);
  return total;
}

export function estimateCompletionTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

/** Content cut into stream pieces: explicit pieces, N roughly equal pieces, or one piece per word. */
export function splitContent(content: string, chunks: number | string[] | undefined): string[] {
  if (Array.isArray(chunks)) return chunks;
  if (content === '') return [];
  if (typeof chunks === 'number' && chunks > 0) {
    const characters = Array.from(content);
    const size = Math.ceil(characters.length / chunks);
    const pieces: string[] = [];
    for (let index = 0; index < characters.length; index += size)
      pieces.push(characters.slice(index, index + size).join(''));
    return pieces;
  }
  return content.match(/\S+\s*|\s+/g) ?? [content];
}
