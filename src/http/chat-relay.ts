import type { FastifyReply, FastifyRequest } from 'fastify';
import { propagation, ROOT_CONTEXT } from '@opentelemetry/api';
import type { LlmProxyClient } from '../client/index.js';
import { asProxyError, type ProxyError } from '../contract/errors.js';
import type { ChatReply, StreamChunk } from '../contract/reply.js';
import type { ChatRequest } from '../contract/request.js';
import { keyHeaders } from './credentials.js';
import { SseResponse } from './sse.js';

/** An error as one HTTP answer. */
export interface HttpError {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

/**
 * How one API (the seed's, OpenAI's) writes the answers of the bus: a whole reply, an error, and a
 * stream's events. The relay below is the same for both.
 */
export interface Dialect {
  reply(reply: ChatReply): unknown;
  error(error: ProxyError): HttpError;
  /** A stream's SSE events; `begin` runs when the SSE response opens. */
  stream(request: ChatRequest): {
    begin(sse: SseResponse): void;
    chunk(sse: SseResponse, chunk: StreamChunk): void;
    end(sse: SseResponse, reply: ChatReply): void;
    /** A failure after the SSE response opened: never a clean end. */
    fail(sse: SseResponse, error: ProxyError): void;
  };
}

export function sendError(reply: FastifyReply, dialect: Dialect, error: unknown): void {
  const answer = dialect.error(asProxyError(error));
  void reply.code(answer.status).headers(answer.headers).send(answer.body);
}

/**
 * The NATS headers of a request onto the bus: the caller's key, and its W3C trace context
 * (`traceparent`, `tracestate`) read and written again through OTel's propagator, so that the
 * worker's request span continues the HTTP caller's trace. Only a context the propagator accepts
 * goes on (none without one registered: trace-sdk.ts registers the W3C one).
 */
function busHeaders(request: FastifyRequest): Record<string, string> | undefined {
  const headers = keyHeaders(request);
  if (request.headers.traceparent === undefined) return headers;
  const carrier: Record<string, string> = {};
  propagation.inject(propagation.extract(ROOT_CONTEXT, request.headers), carrier);
  return headers === undefined ? carrier : { ...headers, ...carrier };
}

/** True once the client went away before the answer was complete (the socket closed). */
function whenClientGone(reply: FastifyReply, onGone: () => void): () => void {
  const listener = () => {
    if (!reply.raw.writableFinished) onGone();
  };
  reply.raw.once('close', listener);
  return () => reply.raw.off('close', listener);
}

/**
 * One chat request onto the bus through the typed client, answered in `dialect`. A client that
 * disconnects cancels the request on the bus at once (`llm.proxy.cancel`: the worker aborts the
 * upstream call and its usage event says `cancelled`).
 */
export async function relayChat(
  request: FastifyRequest,
  reply: FastifyReply,
  client: LlmProxyClient,
  body: ChatRequest,
  dialect: Dialect,
  heartbeatMs: number,
): Promise<void> {
  if (body.stream === true) {
    await relayStream(request, reply, client, body, dialect, heartbeatMs);
    return;
  }
  const controller = new AbortController();
  const forget = whenClientGone(reply, () => controller.abort());
  try {
    const answer = await client.chat(body, { signal: controller.signal, headers: busHeaders(request) });
    await reply.code(200).send(dialect.reply(answer));
  } catch (error) {
    if (!controller.signal.aborted) sendError(reply, dialect, error);
  } finally {
    forget();
  }
}

/**
 * A streamed request: the first event is awaited for up to one heartbeat interval before the SSE
 * response opens, so that a refusal (unauthorized, invalid, rate limited…) is still a plain error
 * with its HTTP status; after that every chunk is relayed as it comes, and the end or the failure
 * closes the response.
 */
async function relayStream(
  request: FastifyRequest,
  reply: FastifyReply,
  client: LlmProxyClient,
  body: ChatRequest,
  dialect: Dialect,
  heartbeatMs: number,
): Promise<void> {
  const stream = client.stream(body, { headers: busHeaders(request) });
  const forget = whenClientGone(reply, () => stream.cancel());
  const events = dialect.stream(body);
  const sse = new SseResponse(reply.raw, heartbeatMs);
  reply.hijack();
  const iterator = stream[Symbol.asyncIterator]();
  try {
    let next = iterator.next();
    let timer: NodeJS.Timeout | undefined;
    const first = await Promise.race([
      next,
      new Promise<'waiting'>((resolve) => {
        timer = setTimeout(() => resolve('waiting'), heartbeatMs);
      }),
    ]).finally(() => clearTimeout(timer));
    sse.open();
    events.begin(sse);
    if (first !== 'waiting') {
      if (first.done === true) next = Promise.resolve(first);
      else {
        events.chunk(sse, first.value);
        next = iterator.next();
      }
    }
    for (let result = await next; result.done !== true; result = await iterator.next()) events.chunk(sse, result.value);
    events.end(sse, await stream.final);
  } catch (error) {
    const failure = asProxyError(error);
    if (reply.raw.destroyed) return;
    if (!sse.opened) {
      // Refused before anything was sent: a plain error with its status.
      const answer = dialect.error(failure);
      reply.raw.writeHead(answer.status, { 'content-type': 'application/json; charset=utf-8', ...answer.headers });
      reply.raw.end(JSON.stringify(answer.body));
      return;
    }
    events.fail(sse, failure);
  } finally {
    forget();
    sse.end();
  }
}
