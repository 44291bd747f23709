/**
 * What `chat` and `stream` share before anything is sent: the request id, the
 * deadline handed to the worker, the headers (secret, trace context), and the
 * size check against the server's max_payload.
 */
import { randomUUID } from 'node:crypto';
import { context, propagation, type TextMapSetter } from '@opentelemetry/api';
import { Match, headers as natsHeaders, MsgHdrsImpl, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import { HEADERS, type ChatRequest, type Subjects } from '../contract/index.js';
import { LlmProxyError } from './errors.js';

/**
 * Time left for the worker's own deadline error to reach us before our timer
 * fires: without it both sides race and the caller gets a bare timeout
 * instead of the worker's answer.
 */
export function deadlineGraceMs(timeoutMs: number): number {
  return Math.min(1_000, Math.floor(timeoutMs / 10));
}

/** The largest `timeout_ms` the request schema accepts. */
const MAX_REQUEST_TIMEOUT_MS = 3_600_000;

function workerDeadline(timeoutMs: number): number {
  return Math.min(MAX_REQUEST_TIMEOUT_MS, Math.max(1, Math.floor(timeoutMs - deadlineGraceMs(timeoutMs))));
}

export interface EnvelopeInput {
  request: ChatRequest;
  stream: boolean;
  /** An explicit per-call timeout, if the caller gave one. */
  callTimeoutMs: number | undefined;
  clientTimeoutMs: number;
  secret: string | undefined;
  extraHeaders: Record<string, string> | undefined;
  /** The client's per-agent key, sent as `Authorization: Bearer <key>` (a call's own Authorization wins). */
  apiKey?: string | undefined;
}

export interface Envelope {
  requestId: string;
  /** How long the client waits for the (last) reply. */
  timeoutMs: number;
  body: Uint8Array;
  /** Undefined when there is nothing to say (no secret, no extra headers, no trace context). */
  headers: MsgHdrs | undefined;
}

const headerSetter: TextMapSetter<MsgHdrs> = {
  set(carrier, key, value) {
    carrier.set(key, value);
  },
};

/**
 * The request's headers, or undefined when there are none: an empty header
 * block would still be sent (as HPUB) and decoded by the worker on every request.
 */
export function buildHeaders(
  secret: string | undefined,
  extraHeaders?: Record<string, string>,
  apiKey?: string,
): MsgHdrs | undefined {
  const result = natsHeaders();
  if (extraHeaders !== undefined) for (const [name, value] of Object.entries(extraHeaders)) result.set(name, value);
  if (apiKey !== undefined && apiKey !== '' && !result.has(HEADERS.authorization, Match.IgnoreCase))
    result.set(HEADERS.authorization, `Bearer ${apiKey}`);
  if (secret !== undefined && secret !== '') result.set(HEADERS.secret, secret);
  // A no-op without an OpenTelemetry SDK; with one, the worker's span joins the caller's trace.
  propagation.inject(context.active(), result, headerSetter);
  return result.keys().length === 0 ? undefined : result;
}

/**
 * The client's deadline travels with the request as `timeout_ms` (like a gRPC
 * deadline), so the worker stops paying for an upstream call nobody waits for.
 * A request that already sets `timeout_ms` keeps it, and the client waits a
 * little longer than that for the worker's answer.
 */
export function buildEnvelope(input: EnvelopeInput): Envelope {
  const { request } = input;
  if (typeof request !== 'object' || request === null || Array.isArray(request)) {
    throw new LlmProxyError('invalid_request', 'request must be an object');
  }
  const requestId = request.request_id ?? randomUUID();
  const outgoing: ChatRequest = { ...request, request_id: requestId };
  if (input.stream) outgoing.stream = true;
  else if (request.stream === true) {
    throw new LlmProxyError('invalid_request', 'stream: true needs client.stream(), not client.chat()', { requestId });
  }

  let timeoutMs: number;
  if (input.callTimeoutMs !== undefined) {
    timeoutMs = input.callTimeoutMs;
    if (request.timeout_ms === undefined) outgoing.timeout_ms = workerDeadline(timeoutMs);
  } else if (request.timeout_ms !== undefined) {
    timeoutMs = request.timeout_ms + Math.max(1_000, deadlineGraceMs(request.timeout_ms));
  } else {
    timeoutMs = input.clientTimeoutMs;
    outgoing.timeout_ms = workerDeadline(timeoutMs);
  }
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new LlmProxyError('invalid_request', `timeoutMs must be a positive number, got ${timeoutMs}`, { requestId });
  }

  const body = new TextEncoder().encode(JSON.stringify(outgoing));
  const headers = buildHeaders(input.secret, input.extraHeaders, input.apiKey);
  return { requestId, timeoutMs, body, headers };
}

/**
 * nats.js would refuse the publish too, but with a generic argument error; we
 * answer with the contract's code and the numbers, before anything is sent.
 * Headers count towards max_payload.
 */
export function assertFitsMaxPayload(connection: NatsConnection, envelope: Envelope): void {
  const maxPayload = connection.info?.max_payload;
  if (maxPayload === undefined) return;
  const headerBytes = envelope.headers instanceof MsgHdrsImpl ? envelope.headers.encode().length : 0;
  const size = envelope.body.length + headerBytes;
  if (size > maxPayload) {
    throw new LlmProxyError(
      'payload_too_large',
      `request is ${size} bytes, over the NATS server's max_payload of ${maxPayload} bytes`,
      { requestId: envelope.requestId, retryable: false },
    );
  }
}

/**
 * `{"request_id"}` on the cancel subject: every worker listens, and the one
 * serving the request aborts its upstream call. Best effort: a closed
 * connection cannot say it, and the worker's deadline or its heartbeat's
 * no-responders still stop the call.
 */
export function publishCancel(
  connection: NatsConnection,
  subjects: Subjects,
  secret: string | undefined,
  requestId: string,
  /** The request's own `Authorization` value: with keys, only a cancel with the request's key stops it. */
  authorization?: string,
): void {
  if (connection.isClosed()) return;
  const extra =
    authorization === undefined || authorization === '' ? undefined : { [HEADERS.authorization]: authorization };
  try {
    connection.publish(subjects.cancel, JSON.stringify({ request_id: requestId }), {
      headers: buildHeaders(secret, extra),
    });
  } catch {
    // The connection is going away: see above.
  }
}
