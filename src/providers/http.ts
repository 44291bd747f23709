/**
 * The one place that talks HTTP to providers (undici, through the provider's
 * own pool). Every failure leaves here as a ProxyError: transport errors by
 * their code, non-2xx answers by their status (provider-error.ts), and an
 * aborted signal as its reason.
 */
import type { Dispatcher } from 'undici';
import { ProxyError } from '../contract/errors.js';
import { errorFromStatus, errorFromTransport, malformedResponse } from './provider-error.js';
import type { CancelSignal } from './cancellation.js';
import type { ProviderSettings } from './types.js';

/** Longest error body read (an error page can be large; the message is cut to 500 characters anyway). */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

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

/** `http://host:11434` + `/api/chat`, `https://api.openai.com/v1` + `/chat/completions`. */
export function resolveEndpoint(baseUrl: string, path: string): { origin: string; path: string } {
  const url = new URL(baseUrl);
  const prefix = url.pathname.replace(/\/+$/, '');
  return { origin: url.origin, path: `${prefix}${path}${url.search}` };
}

export interface ProviderPost {
  settings: ProviderSettings;
  /** Path under the base URL, e.g. `/chat/completions`. */
  path: string;
  body: unknown;
  signal: CancelSignal;
  accept: string;
  /** Extra headers of the adapter (the configured ones and the key are added here). */
  headers?: Record<string, string>;
}

export type ProviderResponseBody = Dispatcher.ResponseData['body'];

export interface ProviderHttpResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: ProviderResponseBody;
}

function requestHeaders(post: ProviderPost): Record<string, string> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: post.accept,
    ...(post.settings.headers ?? {}),
    ...(post.headers ?? {}),
  };
  if (post.settings.apiKey !== undefined) headers.authorization = `Bearer ${post.settings.apiKey}`;
  return headers;
}

interface PreparedTarget {
  origin: string;
  path: string;
  headers: Record<string, string>;
}

/**
 * Endpoint and headers depend only on the provider, the adapter's path and
 * the accepted type: worked out once per combination rather than per call
 * (a URL parse and a header object on every request otherwise). undici copies
 * the headers it is given, so one object serves every call.
 */
const preparedTargets = new WeakMap<ProviderSettings, Map<string, PreparedTarget>>();

function preparedTarget(post: ProviderPost): PreparedTarget {
  const prepare = (): PreparedTarget => ({ ...resolveEndpoint(post.settings.baseUrl, post.path), headers: requestHeaders(post) });
  if (post.headers !== undefined) return prepare();
  let targets = preparedTargets.get(post.settings);
  if (targets === undefined) preparedTargets.set(post.settings, (targets = new Map()));
  const key = `${post.path} ${post.accept}`;
  let target = targets.get(key);
  if (target === undefined) targets.set(key, (target = prepare()));
  return target;
}

async function readLimitedText(body: ProviderResponseBody, limit: number): Promise<string> {
  const pieces: Buffer[] = [];
  let size = 0;
  for await (const piece of body) {
    const buffer = Buffer.isBuffer(piece) ? piece : Buffer.from(piece as Uint8Array);
    pieces.push(buffer);
    size += buffer.length;
    if (size >= limit) {
      body.destroy();
      break;
    }
  }
  return Buffer.concat(pieces).toString('utf8');
}

/** Why a call must not even start (aborted already, no API key), or undefined. */
function refusedBeforeSending(post: ProviderPost): ProxyError | undefined {
  const { settings, signal } = post;
  if (signal.aborted) return errorFromTransport(settings.name, signal.reason, signal);
  if (settings.apiKeyEnv !== undefined && settings.apiKey === undefined) {
    // Our configuration is at fault, not the agent: a 502, and no use retrying this deployment.
    return new ProxyError('upstream_error', `${settings.name}: no API key (environment variable ${settings.apiKeyEnv} is not set)`, {
      retryable: false,
    });
  }
  return undefined;
}

/**
 * POSTs JSON and resolves with a 2xx response whose body is still to be read (streams).
 * Throws a ProxyError for everything else.
 */
export async function postToProvider(post: ProviderPost): Promise<ProviderHttpResponse> {
  const { settings, signal } = post;
  const refused = refusedBeforeSending(post);
  if (refused !== undefined) throw refused;
  const target = preparedTarget(post);
  let response: Dispatcher.ResponseData;
  try {
    response = await settings.dispatcher.request({
      origin: target.origin,
      path: target.path,
      method: 'POST',
      headers: target.headers,
      body: JSON.stringify(post.body),
      // undici takes any object with addEventListener/removeEventListener, `aborted` and `reason`
      // (it checks for addEventListener, and types the option as AbortSignal | EventEmitter).
      signal: signal as AbortSignal,
    });
  } catch (error) {
    throw errorFromTransport(settings.name, error, signal);
  }
  if (response.statusCode >= 200 && response.statusCode < 300) {
    return { statusCode: response.statusCode, headers: response.headers, body: response.body };
  }
  let bodyText = '';
  try {
    bodyText = await readLimitedText(response.body, MAX_ERROR_BODY_BYTES);
  } catch (error) {
    // The status says enough; a body lost on the way only costs us the provider's wording, unless we were aborted.
    if (signal.aborted) throw errorFromTransport(settings.name, error, signal);
  }
  throw errorFromStatus({
    provider: settings.name,
    status: response.statusCode,
    headers: response.headers,
    bodyText,
    secrets: providerSecrets(settings),
  });
}

/**
 * POSTs JSON and resolves with the whole JSON answer of a 2xx response; everything else
 * is a ProxyError, as from `postToProvider` + `readJsonBody`. For whole (non-streamed)
 * answers this takes undici's dispatch handler rather than `request()`: the body is
 * collected as it arrives, with no Readable stream per response and its event
 * machinery (about 5 µs less per call in a microbenchmark, see docs/bench/results.md).
 */
export function postForJson(post: ProviderPost): Promise<unknown> {
  const refused = refusedBeforeSending(post);
  if (refused !== undefined) return Promise.reject(refused);
  const target = preparedTarget(post);
  return new Promise((resolve, reject) => {
    post.settings.dispatcher.dispatch(
      { origin: target.origin, path: target.path, method: 'POST', headers: target.headers, body: JSON.stringify(post.body) },
      new JsonResponseHandler(post.settings, post.signal, resolve, reject),
    );
  });
}

/** Collects one response for `postForJson`; settles its promise exactly once. */
class JsonResponseHandler implements Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | undefined;
  #listening = false;
  #settled = false;
  #statusCode = 0;
  #headers: Record<string, string | string[] | undefined> = {};
  #chunks: Buffer[] = [];
  #size = 0;

  constructor(
    private readonly settings: ProviderSettings,
    private readonly signal: CancelSignal,
    private readonly resolve: (value: unknown) => void,
    private readonly reject: (error: ProxyError) => void,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
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
    this.#controller?.abort(this.#abortReason());
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    this.#statusCode = statusCode;
    this.#headers = headers;
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    // An error page is read up to MAX_ERROR_BODY_BYTES (the message is cut anyway); the rest is drained.
    if (!this.#ok() && this.#size >= MAX_ERROR_BODY_BYTES) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
  }

  onResponseEnd(): void {
    this.#release();
    const text = this.#chunks.length === 1 ? this.#chunks[0]!.toString('utf8') : Buffer.concat(this.#chunks, this.#size).toString('utf8');
    const name = this.settings.name;
    if (!this.#ok()) {
      this.#fail(errorFromStatus({ provider: name, status: this.#statusCode, headers: this.#headers, bodyText: text, secrets: providerSecrets(this.settings) }));
      return;
    }
    let json: unknown;
    try {
      json = parseJsonText(name, text, this.#statusCode);
    } catch (error) {
      this.#fail(error as ProxyError);
      return;
    }
    this.#settled = true;
    this.resolve(json);
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#release();
    this.#fail(errorFromTransport(this.settings.name, error, this.signal));
  }

  #ok(): boolean {
    return this.#statusCode >= 200 && this.#statusCode < 300;
  }

  /** What undici is aborted with: the signal's reason when it is an Error, as undici's own `request()` does. */
  #abortReason(): Error {
    const reason: unknown = this.signal.reason;
    return reason instanceof Error ? reason : new Error('the request was aborted');
  }

  #fail(error: ProxyError): void {
    if (this.#settled) return;
    this.#settled = true;
    this.reject(error);
  }

  #release(): void {
    if (!this.#listening) return;
    this.signal.removeEventListener('abort', this);
    this.#listening = false;
  }
}

/** Reads a whole JSON body; malformed or empty JSON is an `upstream_error`. */
export async function readJsonBody(settings: ProviderSettings, response: ProviderHttpResponse, signal: CancelSignal): Promise<unknown> {
  let text: string;
  try {
    text = await response.body.text();
  } catch (error) {
    throw errorFromTransport(settings.name, error, signal);
  }
  return parseJsonText(settings.name, text, response.statusCode);
}

/** A whole 2xx body as JSON; empty or malformed is an `upstream_error` (`malformedResponse`). */
function parseJsonText(provider: string, text: string, status: number): unknown {
  if (text.trim() === '') throw malformedResponse(provider, 'empty response body', status);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw malformedResponse(provider, 'malformed JSON in response', status);
  }
}

/**
 * The body as decoded text pieces, as they arrive (multi-byte characters split across reads are
 * kept whole). Leaving the loop early destroys the body, which closes the connection: the
 * provider sees the abort and stops generating.
 */
export async function* readTextPieces(settings: ProviderSettings, response: ProviderHttpResponse, signal: CancelSignal): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8');
  let finished = false;
  try {
    for await (const piece of response.body) {
      const text = decoder.decode(piece as Uint8Array, { stream: true });
      if (text !== '') yield text;
    }
    const rest = decoder.decode();
    if (rest !== '') yield rest;
    finished = true;
  } catch (error) {
    throw errorFromTransport(settings.name, error, signal);
  } finally {
    if (!finished && !response.body.destroyed) response.body.destroy();
  }
}
