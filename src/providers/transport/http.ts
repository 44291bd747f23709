/**
 * The one place that talks HTTP to providers (undici, through the provider's
 * own pool). Every failure leaves here as a ProxyError: transport errors by
 * their code, non-2xx answers by their status (provider-error.ts), and an
 * aborted signal as its reason.
 */
import { TextDecoder } from 'node:util';
import type { Dispatcher } from 'undici';
import { asProxyError, ProxyError } from '../../contract/errors.js';
import { DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_RESPONSE_BYTES } from '../../config/schema.js';
import { errorFromStatus, errorFromTransport, malformedResponse, responseTooLarge } from './provider-error.js';
import type { CancelSignal } from './cancellation.js';
import type { ProviderSettings } from '../types.js';

/** Longest error body read (an error page can be large; the message is cut to 500 characters anyway). */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** Most bytes of one 2xx answer of this provider (`max_response_bytes`), the config's default when the settings name none. */
export function maxResponseBytes(settings: ProviderSettings): number {
  return settings.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
}

/** Longest line or SSE event's data of this provider's streams (`max_line_bytes`), for the decoders. */
export function maxLineBytes(settings: ProviderSettings): number {
  return settings.maxLineBytes ?? Math.min(DEFAULT_MAX_LINE_BYTES, maxResponseBytes(settings));
}

const SECRET_HEADER_PATTERN = /authorization|api[-_]?key|token|secret|key$/i;

/** What must never appear in an error message: the API key and the values of secret-looking configured headers. */
export function providerSecrets(settings: ProviderSettings): string[] {
  const secrets: string[] = [];
  if (settings.apiKey !== undefined) secrets.push(settings.apiKey);
  for (const [name, value] of Object.entries(settings.headers ?? {})) {
    if (SECRET_HEADER_PATTERN.test(name)) secrets.push(value, value.replace(/^Bearer\s+/i, ''));
  }
  return secrets;
}

/**
 * `http://host:11434` + `/api/chat`, `https://api.openai.com/v1` + `/chat/completions`; a query in
 * either (Azure's `?api-version=`) is kept, the path's after the base URL's.
 */
export function resolveEndpoint(baseUrl: string, path: string): { origin: string; path: string } {
  const url = new URL(baseUrl);
  const prefix = url.pathname.replace(/\/+$/, '');
  const queryAt = path.indexOf('?');
  const pathOnly = queryAt === -1 ? path : path.slice(0, queryAt);
  const query = [url.search.slice(1), queryAt === -1 ? '' : path.slice(queryAt + 1)].filter((part) => part !== '');
  return { origin: url.origin, path: `${prefix}${pathOnly}${query.length === 0 ? '' : `?${query.join('&')}`}` };
}

/** The headers that carry a provider's API key: each adapter names its own (Anthropic `x-api-key`, Azure `api-key`…). */
export type AuthHeaders = (apiKey: string) => Record<string, string>;

/** OpenAI's and most others': `Authorization: Bearer <key>`. */
export const bearerAuth: AuthHeaders = (apiKey) => ({ authorization: `Bearer ${apiKey}` });

export interface ProviderPost {
  settings: ProviderSettings;
  /** Path under the base URL, e.g. `/chat/completions`; may carry a query. */
  path: string;
  body: unknown;
  signal: CancelSignal;
  accept: string;
  /**
   * The adapter's own headers (`anthropic-version`…). With `auth`, the same for every call of one
   * adapter to one path: they are worked out once per provider, path and accepted type.
   */
  headers?: Record<string, string>;
  /** How the API key is sent; default `bearerAuth`. */
  auth?: AuthHeaders;
}

function requestHeaders(post: ProviderPost): Record<string, string> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: post.accept,
    ...(post.settings.headers ?? {}),
    ...(post.headers ?? {}),
  };
  if (post.settings.apiKey !== undefined) Object.assign(headers, (post.auth ?? bearerAuth)(post.settings.apiKey));
  return headers;
}

interface PreparedTarget {
  origin: string;
  path: string;
  headers: Record<string, string>;
}

/**
 * Endpoint and headers depend only on the provider, the adapter's path and
 * the accepted type (an adapter's headers and auth are its own constants):
 * worked out once per combination rather than per call
 * (a URL parse and a header object on every request otherwise). undici copies
 * the headers it is given, so one object serves every call.
 */
const preparedTargets = new WeakMap<ProviderSettings, Map<string, PreparedTarget>>();

function preparedTarget(post: ProviderPost): PreparedTarget {
  const prepare = (): PreparedTarget => ({
    ...resolveEndpoint(post.settings.baseUrl, post.path),
    headers: requestHeaders(post),
  });
  let targets = preparedTargets.get(post.settings);
  if (targets === undefined) preparedTargets.set(post.settings, (targets = new Map()));
  const key = `${post.path} ${post.accept}`;
  let target = targets.get(key);
  if (target === undefined) targets.set(key, (target = prepare()));
  return target;
}

/** Why a call must not even start (aborted already, no API key), or undefined. */
function refusedBeforeSending(post: ProviderPost): ProxyError | undefined {
  const { settings, signal } = post;
  if (signal.aborted) return errorFromTransport(settings.name, signal.reason, signal);
  if (settings.apiKeyEnv !== undefined && settings.apiKey === undefined) {
    // Our configuration is at fault, not the agent: a 502, and no use retrying this deployment.
    return new ProxyError(
      'upstream_error',
      `${settings.name}: no API key (environment variable ${settings.apiKeyEnv} is not set)`,
      {
        retryable: false,
      },
    );
  }
  return undefined;
}

/**
 * What the two kinds of call share: the caller's signal aborts the request, a non-2xx answer is
 * read up to MAX_ERROR_BODY_BYTES (and drained up to `max_response_bytes`, past which the connection is
 * closed) and becomes a ProxyError by its status, a transport failure by
 * its code, and a 2xx body past the provider's `max_response_bytes` (declared or counted) aborts
 * the request (the connection closes, the provider stops) and fails it. Subclasses take the 2xx
 * body; `failed` must drop whatever they collected. One object per call serves as undici's handler
 * and as the signal's listener (no closures per call).
 */
abstract class ProviderResponseHandler implements Dispatcher.DispatchHandler {
  protected controller: Dispatcher.DispatchController | undefined;
  #listening = false;
  #statusCode = 0;
  #headers: Record<string, string | string[] | undefined> = {};
  #errorChunks: Buffer[] | undefined;
  #errorSize = 0;
  /** Bytes of the 2xx body so far; past the limit, the rest is ignored until undici reports the abort. */
  #bodySize = 0;
  #cutOff = false;

  constructor(
    protected readonly settings: ProviderSettings,
    protected readonly signal: CancelSignal,
  ) {}

  /** The 2xx response started (status and headers known). */
  protected abstract okStart(headers: Record<string, string | string[] | undefined>): void;
  /** A piece of a 2xx body. */
  protected abstract okData(chunk: Buffer): void;
  /** A 2xx body ended. */
  protected abstract okEnd(): void;
  /** The call failed: a non-2xx status, a transport error, an abort or a body too large. Drops what was collected. */
  protected abstract failed(error: ProxyError): void;

  get statusCode(): number {
    return this.#statusCode;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.signal.aborted) {
      controller.abort(this.#abortReason());
      return;
    }
    if (!this.#listening) {
      this.signal.addEventListener('abort', this);
      this.#listening = true;
    }
  }

  /** The caller's signal aborted: stop the request; undici answers with onResponseError. */
  handleEvent(): void {
    this.controller?.abort(this.#abortReason());
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    this.#statusCode = statusCode;
    this.#headers = headers;
    if (!this.#ok()) return;
    // A body announced larger than allowed is not even started.
    if (Number(headers['content-length']) > maxResponseBytes(this.settings)) {
      this.#cutOff = true;
      this.#refuseOversized();
      return;
    }
    this.okStart(headers);
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#cutOff) return;
    this.#bodySize += chunk.length;
    const overLimit = this.#bodySize > maxResponseBytes(this.settings);
    if (overLimit) this.#cutOff = true;
    if (this.#ok()) {
      if (overLimit) this.#refuseOversized();
      else this.okData(chunk);
      return;
    }
    if (overLimit) {
      // An error page without end is not drained forever: its status says enough, and the connection goes.
      this.release();
      this.#failByStatus();
      this.controller?.abort(new Error('the error body exceeded max_response_bytes'));
      return;
    }
    // An error page is read up to MAX_ERROR_BODY_BYTES (the message is cut anyway); the rest is drained, up to max_response_bytes.
    if (this.#errorSize >= MAX_ERROR_BODY_BYTES) return;
    (this.#errorChunks ??= []).push(chunk);
    this.#errorSize += chunk.length;
  }

  onResponseEnd(): void {
    this.release();
    if (this.#cutOff) return;
    if (this.#ok()) this.okEnd();
    else this.#failByStatus();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.release();
    // An error page lost on the way: its status (and Retry-After) says enough, unless we were aborted.
    if (this.#statusCode !== 0 && !this.#ok() && !this.signal.aborted) this.#failByStatus();
    else this.failed(errorFromTransport(this.settings.name, error, this.signal));
  }

  /**
   * Past `max_response_bytes`: fail (the subclass drops what it holds, so that the memory can be
   * reclaimed at once) and abort, which closes the connection; undici then reports the abort through
   * onResponseError, which finds the call failed already.
   */
  #refuseOversized(): void {
    const error = responseTooLarge(this.settings.name, maxResponseBytes(this.settings), this.#statusCode);
    this.release();
    this.failed(error);
    this.controller?.abort(error);
  }

  /** A non-2xx answer as a ProxyError, with as much of its body as was read. */
  #failByStatus(): void {
    const bodyText =
      this.#errorChunks === undefined ? '' : Buffer.concat(this.#errorChunks, this.#errorSize).toString('utf8');
    this.failed(
      errorFromStatus({
        provider: this.settings.name,
        status: this.#statusCode,
        headers: this.#headers,
        bodyText,
        secrets: providerSecrets(this.settings),
      }),
    );
  }

  /** Stop listening to the caller's signal (the call is over). */
  protected release(): void {
    if (!this.#listening) return;
    this.signal.removeEventListener('abort', this);
    this.#listening = false;
  }

  #ok(): boolean {
    return this.#statusCode >= 200 && this.#statusCode < 300;
  }

  /** What undici is aborted with: the signal's reason when it is an Error, as undici's own `request()` does. */
  #abortReason(): Error {
    const reason: unknown = this.signal.reason;
    return reason instanceof Error ? reason : new Error('the request was aborted');
  }
}

function dispatchPost(post: ProviderPost, handler: Dispatcher.DispatchHandler): void {
  const target = preparedTarget(post);
  post.settings.dispatcher.dispatch(
    {
      origin: target.origin,
      path: target.path,
      method: 'POST',
      headers: target.headers,
      body: JSON.stringify(post.body),
    },
    handler,
  );
}

/**
 * POSTs JSON and resolves with the whole JSON answer of a 2xx response; everything else is a
 * ProxyError. The body is collected by undici's dispatch handler as it arrives, so that a response
 * costs no Readable stream and its event machinery, which the worker would pay on every call
 * (docs/bench/results.md).
 */
export function postForJson(post: ProviderPost): Promise<unknown> {
  const refused = refusedBeforeSending(post);
  if (refused !== undefined) return Promise.reject(refused);
  return new Promise((resolve, reject) => {
    dispatchPost(post, new JsonResponseHandler(post.settings, post.signal, resolve, reject));
  });
}

/** Collects one response for `postForJson`; settles its promise exactly once. */
class JsonResponseHandler extends ProviderResponseHandler {
  #settled = false;
  #chunks: Buffer[] = [];
  #size = 0;

  constructor(
    settings: ProviderSettings,
    signal: CancelSignal,
    private readonly resolve: (value: unknown) => void,
    private readonly reject: (error: ProxyError) => void,
  ) {
    super(settings, signal);
  }

  protected okStart(): void {}

  protected okData(chunk: Buffer): void {
    if (this.#settled) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
  }

  protected okEnd(): void {
    if (this.#settled) return;
    const chunks = this.#chunks;
    this.#chunks = [];
    let json: unknown;
    try {
      const text =
        chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks, this.#size).toString('utf8');
      json = parseJsonText(this.settings.name, text, this.statusCode);
    } catch (error) {
      // Also a body past V8's longest string (ERR_STRING_TOO_LONG), were max_response_bytes set that high.
      this.failed(
        error instanceof ProxyError
          ? error
          : malformedResponse(this.settings.name, 'unreadable response body', this.statusCode),
      );
      return;
    }
    this.#settled = true;
    this.resolve(json);
  }

  protected failed(error: ProxyError): void {
    this.#chunks = [];
    this.#size = 0;
    if (this.#settled) return;
    this.#settled = true;
    this.reject(error);
  }
}

/** A whole 2xx body as JSON; empty or malformed is an `upstream_error` (`malformedResponse`). */
export function parseJsonText(provider: string, text: string, status: number): unknown {
  if (text.trim() === '') throw malformedResponse(provider, 'empty response body', status);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw malformedResponse(provider, 'malformed JSON in response', status);
  }
}

/**
 * Turns a provider's streamed body into events: decoded text goes in as it arrives, in pieces of any
 * size (multi-byte characters split across reads are kept whole), and the events it completes come out.
 */
export interface StreamDecoder<E> {
  /** Appends to `out` the events `text` completes. Throws a ProxyError for a malformed stream; events appended before the throw still reach the caller, first. */
  push(text: string, out: E[]): void;
  /** The body ended: appends the last events, or throws (a stream cut short). */
  end(out: E[]): void;
}

/** Picks the decoder for a 2xx answer from its headers (content type) and status. */
export type DecoderFor<E> = (
  headers: Record<string, string | string[] | undefined>,
  statusCode: number,
) => StreamDecoder<E>;

/** Unread events past which reading from the provider pauses until the consumer catches up (TCP then holds the provider back). */
const PAUSE_AT_EVENTS = 1024;
const RESUME_AT_EVENTS = 256;

/**
 * POSTs JSON and iterates the events of a streamed 2xx answer, decoded by the decoder that
 * `decoderFor` picks from the response headers (SSE, NDJSON, or a JSON body from a server that
 * ignored `stream: true`). A non-2xx status, a transport failure, an abort or a decoder's error is
 * thrown from `next()` as a ProxyError, after the events that came before it. `return()` (a consumer
 * that stops early) aborts the call, which closes the connection: the provider sees it and stops
 * generating.
 *
 * Push-based underneath: undici hands each network read to the decoder at once, and `next()` takes
 * from the queue of events. One `next()` at a time, as `for await` does (a second call before the
 * first settled would replace its waiter). Before, a read went through undici's Readable body, its
 * async iterator and two async generators before a consumer saw an event (docs/bench/results.md).
 */
export function postForEvents<E>(post: ProviderPost, decoderFor: DecoderFor<E>): AsyncIterableIterator<E> {
  const stream = new ProviderEventStream<E>(post.settings, post.signal, decoderFor);
  const refused = refusedBeforeSending(post);
  if (refused !== undefined) stream.refuse(refused);
  else dispatchPost(post, stream);
  return stream;
}

interface Waiter<E> {
  resolve: (result: IteratorResult<E>) => void;
  reject: (error: ProxyError) => void;
}

class ProviderEventStream<E> extends ProviderResponseHandler implements AsyncIterableIterator<E> {
  #decoder: StreamDecoder<E> | undefined;
  #text: TextDecoder | undefined;
  /** Events decoded and not yet taken; `#head` is the next one. */
  #queue: E[] = [];
  #head = 0;
  #failure: ProxyError | undefined;
  /** The provider's body ended cleanly: once the queue is empty, the iteration is done. */
  #ended = false;
  /** The consumer is done with it: a failure thrown, or `return()` called. */
  #closed = false;
  #waiter: Waiter<E> | undefined;

  constructor(
    settings: ProviderSettings,
    signal: CancelSignal,
    private readonly decoderFor: DecoderFor<E>,
  ) {
    super(settings, signal);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** The call could not even start: the first `next()` throws this. */
  refuse(error: ProxyError): void {
    this.#failure = error;
  }

  next(): Promise<IteratorResult<E>> {
    const outcome = this.#outcome();
    if (outcome === undefined) {
      return new Promise((resolve, reject) => {
        this.#waiter = { resolve, reject };
      });
    }
    return outcome instanceof ProxyError ? Promise.reject(outcome) : Promise.resolve(outcome);
  }

  /** The consumer stops early: abort the call if it is still under way. */
  return(): Promise<IteratorResult<E>> {
    if (!this.#closed) {
      this.#closed = true;
      this.#queue = [];
      this.#head = 0;
      this.#decoder = undefined;
      this.#text = undefined;
      if (!this.#ended && this.#failure === undefined)
        this.controller?.abort(new Error('the stream was closed before its end'));
      this.release();
      this.#waiter?.resolve({ done: true, value: undefined });
      this.#waiter = undefined;
    }
    return Promise.resolve({ done: true, value: undefined });
  }

  override onRequestStart(controller: Dispatcher.DispatchController): void {
    // return() came before undici started the request: do not send it.
    if (this.#closed) {
      controller.abort(new Error('the stream was closed before its end'));
      return;
    }
    super.onRequestStart(controller);
  }

  protected okStart(headers: Record<string, string | string[] | undefined>): void {
    this.#decoder = this.decoderFor(headers, this.statusCode);
    this.#text = new TextDecoder('utf-8');
  }

  protected okData(chunk: Buffer): void {
    if (this.#closed || this.#failure !== undefined || this.#decoder === undefined) return;
    try {
      const text = this.#text!.decode(chunk, { stream: true });
      if (text !== '') this.#decoder!.push(text, this.#queue);
    } catch (error) {
      // A malformed stream: stop reading (the connection closes, the provider stops generating).
      const failure = asProxyError(error);
      this.failed(failure);
      this.controller?.abort(failure);
      return;
    }
    if (this.#queue.length - this.#head >= PAUSE_AT_EVENTS && this.controller?.paused === false)
      this.controller.pause();
    this.#wake();
  }

  protected okEnd(): void {
    if (this.#closed || this.#failure !== undefined || this.#decoder === undefined) return;
    try {
      const rest = this.#text!.decode();
      if (rest !== '') this.#decoder!.push(rest, this.#queue);
      this.#decoder!.end(this.#queue);
    } catch (error) {
      this.failed(asProxyError(error));
      return;
    }
    this.#ended = true;
    this.#wake();
  }

  protected failed(error: ProxyError): void {
    // Whatever the decoder holds (a long unfinished line) goes now; the events decoded so far stay queued.
    this.#decoder = undefined;
    this.#text = undefined;
    if (this.#closed || this.#failure !== undefined || this.#ended) return;
    this.#failure = error;
    this.#wake();
  }

  #take(): E {
    const value = this.#queue[this.#head]!;
    this.#head++;
    if (this.#head === this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
    }
    if (this.controller?.paused === true && this.#queue.length - this.#head <= RESUME_AT_EVENTS)
      this.controller.resume();
    return value;
  }

  /** What `next()` gets now: the next event, the end, the failure (thrown once), or undefined to wait. */
  #outcome(): IteratorResult<E> | ProxyError | undefined {
    if (this.#head < this.#queue.length) return { done: false, value: this.#take() };
    if (this.#closed || this.#ended) return { done: true, value: undefined };
    if (this.#failure === undefined) return undefined;
    this.#closed = true;
    return this.#failure;
  }

  /** Hand a waiting `next()` what there is now, if anything. */
  #wake(): void {
    const waiter = this.#waiter;
    if (waiter === undefined) return;
    const outcome = this.#outcome();
    if (outcome === undefined) return;
    this.#waiter = undefined;
    if (outcome instanceof ProxyError) waiter.reject(outcome);
    else waiter.resolve(outcome);
  }
}
