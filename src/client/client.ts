/**
 * The typed client agents use instead of hand-rolling NATS inboxes, timeouts
 * and error headers: `chat` for one reply, `stream` for chunks as the model
 * produces them. Every failure is an `LlmProxyError`.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { errors as natsErrors } from '@nats-io/nats-core';
import {
  DEFAULT_SUBJECT_PREFIX,
  HEADERS,
  isErrorReply,
  subjectsFor,
  type ChatReply,
  type ChatRequest,
  type Subjects,
} from '../contract/index.js';
import type { ModelInfo, ModelsReply, NodeInfo } from '../contract/models.js';
import type { UsageQuery, UsageQueryReply } from '../contract/usage-query.js';
import { LlmProxyError, errorFromBody, errorFromNats, errorFromServiceHeaders } from './errors.js';
import { assertFitsMaxPayload, buildEnvelope, buildHeaders, publishCancel, type Envelope } from './request-envelope.js';
import { startChatStream, type ChatStream } from './stream.js';

/** Matches the worker's default deadline (`worker.default_timeout_ms`). */
export const DEFAULT_TIMEOUT_MS = 120_000;
/** More than 3 × the worker's default heartbeat (`worker.heartbeat_ms`, 1 s). */
export const DEFAULT_IDLE_TIMEOUT_MS = 5_000;
/** Validation, limits and routing happen before the first chunk or heartbeat. */
export const DEFAULT_FIRST_MESSAGE_TIMEOUT_MS = 10_000;
/** Models and usage queries answer from memory: seconds are plenty. */
const ASK_TIMEOUT_MS = 5_000;

export interface ClientOptions {
  /** NATS server URL(s); the client then owns the connection and `close()` closes it. */
  servers?: string | string[];
  /** An existing connection; `close()` leaves it open. */
  connection?: NatsConnection;
  /** Other connection options (credentials, TLS…) when the client connects itself. */
  connectOptions?: Omit<NodeConnectionOptions, 'servers' | 'name'>;
  /** Sent as `X-Internal-Secret` (the worker's `LLM_PROXY_SECRET`). */
  secret?: string;
  /** A per-agent key (`llm-proxy keys create`), sent as `Authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** Default deadline of a call; sent to the worker as `timeout_ms` when the request sets none. */
  timeoutMs?: number;
  /** Longest silence between two stream messages before the worker is deemed gone. */
  idleTimeoutMs?: number;
  /** How long a stream may wait for its first message (chunk, heartbeat or end). */
  firstMessageTimeoutMs?: number;
  /** Subject prefix (`llm` by default: `llm.proxy.request`). */
  subjectPrefix?: string;
  /** Connection name shown by `nats server report connections`. */
  name?: string;
  /** Prefix of stream inboxes, for accounts whose permissions restrict `_INBOX.>`. */
  inboxPrefix?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Deadline of this call (overrides the client's `timeoutMs`). */
  timeoutMs?: number;
  /** Extra NATS headers (e.g. `tracestate`); the secret and `traceparent` are set by the client. */
  headers?: Record<string, string>;
}

export interface AskOptions {
  timeoutMs?: number;
  /** Extra NATS headers; an `Authorization` here replaces the client's `apiKey` for this call. */
  headers?: Record<string, string>;
}

export interface StreamOptions extends CallOptions {
  idleTimeoutMs?: number;
  firstMessageTimeoutMs?: number;
}

export interface LlmProxyClient {
  /** One request, one reply. Throws `LlmProxyError`. */
  chat(request: ChatRequest, options?: CallOptions): Promise<ChatReply>;
  /** A streamed reply: iterate the chunks, then `await stream.final`. Never throws synchronously. */
  stream(request: ChatRequest, options?: StreamOptions): ChatStream;
  /** `llm.proxy.models`: the models the workers route (`health: true` adds each deployment's state). Throws `LlmProxyError`. */
  models(options?: AskOptions & { health?: boolean }): Promise<ModelsReply & { health?: unknown[] }>;
  /** `llm.proxy.nodes`: every worker on the bus, with its node, host and models (`unionModels` merges them). */
  nodes(options?: AskOptions): Promise<NodeInfo[]>;
  /**
   * The models of every worker on the bus (the union of `nodes()`), or, when no worker answers
   * `llm.proxy.nodes` (workers older than it, or a NATS user without it), `models()`'s list.
   */
  allModels(options?: AskOptions): Promise<ModelInfo[]>;
  /** `llm.proxy.usage`: the aggregators' answer to a usage query. Throws `LlmProxyError`. */
  usage(query: UsageQuery, options?: AskOptions): Promise<UsageQueryReply>;
  /** The subjects in use (from `subjectPrefix`). */
  readonly subjects: Subjects;
  /** The NATS connection (owned or borrowed). */
  readonly connection: NatsConnection;
  /** Closes the connection only if the client opened it. */
  close(): Promise<void>;
}

function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0)
    throw new TypeError(`${name} must be a positive number of milliseconds, got ${value}`);
  return value;
}

/**
 * A client over an existing connection is ready at once; one that connects
 * itself resolves once connected. (`await` suits both.)
 */
export function createClient(options: ClientOptions & { connection: NatsConnection }): LlmProxyClient;
export function createClient(options: ClientOptions): Promise<LlmProxyClient>;
export function createClient(options: ClientOptions): LlmProxyClient | Promise<LlmProxyClient> {
  const settings = {
    subjects: subjectsFor(options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX),
    secret: options.secret,
    apiKey: options.apiKey,
    timeoutMs: positive('timeoutMs', options.timeoutMs, DEFAULT_TIMEOUT_MS),
    idleTimeoutMs: positive('idleTimeoutMs', options.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS),
    firstMessageTimeoutMs: positive(
      'firstMessageTimeoutMs',
      options.firstMessageTimeoutMs,
      DEFAULT_FIRST_MESSAGE_TIMEOUT_MS,
    ),
    inboxPrefix: options.inboxPrefix,
  };
  if (options.connection !== undefined) {
    return new NatsLlmProxyClient({ ...settings, connection: options.connection, ownsConnection: false });
  }
  const servers = options.servers;
  if (servers === undefined) throw new TypeError('createClient needs `servers` or `connection`');
  return connect({
    // No async stack traces per request (two Error objects each): the caller's options may still ask for them.
    noAsyncTraces: true,
    ...options.connectOptions,
    servers,
    name: options.name ?? 'llm-proxy-client',
    ...(options.inboxPrefix !== undefined ? { inboxPrefix: options.inboxPrefix } : {}),
  }).then((connection) => new NatsLlmProxyClient({ ...settings, connection, ownsConnection: true }));
}

interface ClientSettings {
  connection: NatsConnection;
  ownsConnection: boolean;
  subjects: Subjects;
  secret: string | undefined;
  apiKey: string | undefined;
  timeoutMs: number;
  idleTimeoutMs: number;
  firstMessageTimeoutMs: number;
  inboxPrefix: string | undefined;
}

class NatsLlmProxyClient implements LlmProxyClient {
  readonly #settings: ClientSettings;

  constructor(settings: ClientSettings) {
    this.#settings = settings;
  }

  get subjects(): Subjects {
    return this.#settings.subjects;
  }

  get connection(): NatsConnection {
    return this.#settings.connection;
  }

  async chat(request: ChatRequest, options: CallOptions = {}): Promise<ChatReply> {
    const { connection, subjects } = this.#settings;
    const envelope = this.#envelope(request, false, options);
    if (envelope instanceof LlmProxyError) throw envelope;
    const { requestId, timeoutMs } = envelope;
    const signal = options.signal;
    if (signal?.aborted === true)
      throw new LlmProxyError('cancelled', 'cancelled before sending', { requestId, cause: signal.reason });
    assertFitsMaxPayload(connection, envelope);

    // nats.js requests take no AbortSignal: race the reply against the abort, and
    // tell the worker so it stops the upstream call. The late reply is dropped.
    let onAbort: (() => void) | undefined;
    // With a per-agent key, only a cancel carrying the request's own key stops it.
    const authorization = envelope.headers?.get(HEADERS.authorization);
    const tellWorker = () => publishCancel(connection, subjects, this.#settings.secret, requestId, authorization);
    const aborted =
      signal === undefined
        ? undefined
        : new Promise<never>((_, reject) => {
            onAbort = () => {
              tellWorker();
              reject(new LlmProxyError('cancelled', 'cancelled by the client', { requestId, cause: signal.reason }));
            };
            signal.addEventListener('abort', onAbort, { once: true });
          });
    let message: Awaited<ReturnType<NatsConnection['request']>>;
    // The model's own subject first (only workers that serve it listen there); when no worker does, the
    // seed's subject, where any worker answers with the reason (or passes it on to a node that has it).
    const route = routeFor(subjects, request.model);
    let subject = route[0]!;
    try {
      for (let index = 0; ; index += 1) {
        subject = route[index]!;
        try {
          const reply = connection.request(subject, envelope.body, { timeout: timeoutMs, headers: envelope.headers });
          message = await (aborted === undefined ? reply : Promise.race([reply, aborted]));
          break;
        } catch (error) {
          if (index + 1 < route.length && isNoResponders(error)) continue;
          throw error;
        }
      }
    } catch (error) {
      const failure = errorFromNats(error, { subject, timeoutMs, requestId });
      if (failure.code === 'upstream_timeout') tellWorker();
      throw failure;
    } finally {
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }

    let body: unknown;
    try {
      body = message.json();
    } catch {
      const status = message.headers?.get(HEADERS.serviceErrorCode) ?? '';
      if (status !== '')
        throw errorFromServiceHeaders(status, message.headers?.get(HEADERS.serviceError) ?? '', requestId);
      throw new LlmProxyError('upstream_error', 'worker sent a reply that is not JSON', { requestId });
    }
    if (isErrorReply(body)) throw errorFromBody(body.error, requestId);
    if (typeof body !== 'object' || body === null)
      throw new LlmProxyError('upstream_error', 'worker sent a reply that is not an object', { requestId });
    return body as ChatReply;
  }

  stream(request: ChatRequest, options: StreamOptions = {}): ChatStream {
    const settings = this.#settings;
    const envelope = this.#envelope(request, true, options);
    const requestId =
      envelope instanceof LlmProxyError ? (envelope.requestId ?? request.request_id ?? '') : envelope.requestId;
    const totalMs = envelope instanceof LlmProxyError ? 1 : envelope.timeoutMs;
    return startChatStream({
      connection: settings.connection,
      subjects: settings.subjects,
      route: routeFor(settings.subjects, request.model),
      envelope,
      requestId,
      secret: settings.secret,
      signal: options.signal,
      inboxPrefix: settings.inboxPrefix,
      timeouts: {
        firstMessageMs: options.firstMessageTimeoutMs ?? settings.firstMessageTimeoutMs,
        idleMs: options.idleTimeoutMs ?? settings.idleTimeoutMs,
        totalMs,
      },
    });
  }

  models(options: AskOptions & { health?: boolean } = {}): Promise<ModelsReply & { health?: unknown[] }> {
    return this.#ask(this.#settings.subjects.models, options.health === true ? { health: true } : {}, options);
  }

  /**
   * Every worker on the bus (issue 19): each answers `llm.proxy.nodes` with its node, host and the models
   * it serves. Gathered until no answer came for `NODES_STALL_MS` after the last one (the first must come
   * within `timeoutMs`, default 1 s). A refusal (a wrong secret or key) is thrown when no worker answered;
   * no worker at all is `no_provider_available`.
   */
  async nodes(options: AskOptions = {}): Promise<NodeInfo[]> {
    const subject = this.#settings.subjects.nodes;
    const timeoutMs = options.timeoutMs ?? NODES_FIRST_ANSWER_MS;
    const nodes: NodeInfo[] = [];
    let refusal: LlmProxyError | undefined;
    try {
      const answers = await this.#settings.connection.requestMany(subject, '{}', {
        strategy: 'stall',
        stall: NODES_STALL_MS,
        maxWait: timeoutMs,
        headers: buildHeaders(this.#settings.secret, options.headers, this.#settings.apiKey),
      });
      for await (const message of answers) {
        let answer: unknown;
        try {
          answer = message.json();
        } catch {
          continue;
        }
        if (isErrorReply(answer)) refusal ??= errorFromBody(answer.error);
        else if (typeof answer === 'object' && answer !== null && Array.isArray((answer as NodeInfo).models))
          nodes.push(answer as NodeInfo);
      }
    } catch (error) {
      throw errorFromNats(error, { subject, timeoutMs, requestId: '' });
    }
    if (nodes.length === 0 && refusal !== undefined) throw refusal;
    return nodes;
  }

  async allModels(options: AskOptions = {}): Promise<ModelInfo[]> {
    let nodes: NodeInfo[] = [];
    try {
      nodes = await this.nodes(options);
    } catch (error) {
      // A refusal is the caller's (a wrong key or secret); anything else: ask the way DESIGN.md's front door does.
      if (error instanceof LlmProxyError && error.code === 'unauthorized') throw error;
    }
    if (nodes.length > 0) return unionModels(nodes);
    return (await this.models(options)).models;
  }

  usage(query: UsageQuery, options: AskOptions = {}): Promise<UsageQueryReply> {
    return this.#ask(this.#settings.subjects.usageQuery, query, options);
  }

  /** A plain request/reply on one of the other subjects, with the secret; error replies and bus failures as LlmProxyError. */
  async #ask<T>(subject: string, body: unknown, options: AskOptions): Promise<T> {
    const timeoutMs = options.timeoutMs ?? ASK_TIMEOUT_MS;
    let message: Awaited<ReturnType<NatsConnection['request']>>;
    try {
      message = await this.#settings.connection.request(subject, JSON.stringify(body), {
        timeout: timeoutMs,
        headers: buildHeaders(this.#settings.secret, options.headers, this.#settings.apiKey),
      });
    } catch (error) {
      throw errorFromNats(error, { subject, timeoutMs, requestId: '' });
    }
    let reply: unknown;
    try {
      reply = message.json();
    } catch {
      throw new LlmProxyError('upstream_error', `the answer on ${subject} is not JSON`);
    }
    if (isErrorReply(reply)) throw errorFromBody(reply.error);
    return reply as T;
  }

  async close(): Promise<void> {
    if (!this.#settings.ownsConnection || this.#settings.connection.isClosed()) return;
    await this.#settings.connection.close();
  }

  #envelope(request: ChatRequest, stream: boolean, options: CallOptions): Envelope | LlmProxyError {
    try {
      return buildEnvelope({
        request,
        stream,
        callTimeoutMs: options.timeoutMs,
        clientTimeoutMs: this.#settings.timeoutMs,
        secret: this.#settings.secret,
        extraHeaders: options.headers,
        apiKey: this.#settings.apiKey,
      });
    } catch (error) {
      if (error instanceof LlmProxyError) return error;
      throw error;
    }
  }
}

/**
 * Where a chat request goes (issue 19): its model's subject `llm.proxy.model.<token>`, then, when no
 * worker listens there, `llm.proxy.request`. A request without a usable model goes straight to the
 * latter (the worker refuses it with the reason).
 */
export function routeFor(subjects: Subjects, model: unknown): string[] {
  if (typeof model !== 'string' || model === '' || model.length > 256) return [subjects.request];
  return [subjects.modelFor(model), subjects.request];
}

function isNoResponders(error: unknown): boolean {
  if (error instanceof natsErrors.NoRespondersError) return true;
  return error instanceof natsErrors.RequestError && error.isNoResponders();
}

/** How long `nodes()` waits for the first worker's answer, and for each next one after the last. */
const NODES_FIRST_ANSWER_MS = 1_000;
const NODES_STALL_MS = 150;

/** The models of every node, once each (the first node's description of a model wins), by name. */
export function unionModels(nodes: readonly NodeInfo[]): ModelInfo[] {
  const byName = new Map<string, ModelInfo>();
  for (const node of nodes) for (const model of node.models) if (!byName.has(model.name)) byName.set(model.name, model);
  return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
}
