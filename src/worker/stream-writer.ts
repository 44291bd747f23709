import { headers as createHeaders, RequestError, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { HEADERS, STREAM_MARKS, type StreamMark } from '../contract/subjects.js';
import type { ChatReply, StreamChunk } from '../contract/reply.js';
import type { ErrorReply } from '../contract/errors.js';
import type { Logger } from '../telemetry/logger.js';

function markHeaders(mark: StreamMark): MsgHdrs {
  const headers = createHeaders();
  headers.set(HEADERS.stream, mark);
  return headers;
}

const CHUNK_HEADERS = markHeaders(STREAM_MARKS.chunk);
const HEARTBEAT_HEADERS = markHeaders(STREAM_MARKS.heartbeat);
const HEARTBEAT_BODY = JSON.stringify({ heartbeat: true });

/** Header values are one line: a provider's message must not break the header block. */
export function headerSafe(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 1024);
}

/**
 * Writes one streamed reply on the client's inbox (DESIGN.md, "Streaming"):
 * chunks with `seq` from 0, heartbeats while the upstream is silent, and one
 * terminal message.
 *
 * Noticing a client that went away: a core publish to an inbox nobody
 * listens on vanishes silently, but a *request* to it fails at once with
 * no-responders. So once per `heartbeatMs` one message goes out as a request
 * (reply ignored): a heartbeat when the upstream is silent, otherwise the next
 * chunk. A no-responders answer calls `onClientGone`, which aborts the
 * upstream call.
 */
export class StreamWriter {
  readonly #connection: NatsConnection;
  readonly #inbox: string;
  readonly #heartbeatMs: number;
  readonly #onClientGone: () => void;
  readonly #logger: Logger;
  #seq = 0;
  #lastSentAt = Date.now();
  #lastProbeAt = Date.now();
  #timer: NodeJS.Timeout | undefined;
  #finished = false;
  #clientGone = false;

  constructor(options: { connection: NatsConnection; inbox: string; heartbeatMs: number; onClientGone: () => void; logger: Logger }) {
    this.#connection = options.connection;
    this.#inbox = options.inbox;
    this.#heartbeatMs = options.heartbeatMs;
    this.#onClientGone = options.onClientGone;
    this.#logger = options.logger;
  }

  /** Chunks sent so far (the next chunk's seq). */
  get chunks(): number {
    return this.#seq;
  }

  get clientGone(): boolean {
    return this.#clientGone;
  }

  startHeartbeats(): void {
    const tick = Math.max(10, Math.floor(this.#heartbeatMs / 2));
    this.#timer = setInterval(() => {
      if (this.#finished) return;
      if (Date.now() - this.#lastSentAt >= this.#heartbeatMs) this.#send(HEARTBEAT_BODY, HEARTBEAT_HEADERS, true);
    }, tick);
    this.#timer.unref();
  }

  chunk(chunk: Omit<StreamChunk, 'seq'>): void {
    if (this.#finished) return;
    const body: StreamChunk = { seq: this.#seq++, ...chunk };
    this.#send(JSON.stringify(body), CHUNK_HEADERS, Date.now() - this.#lastProbeAt >= this.#heartbeatMs);
  }

  /** The terminal message of a stream that completed. */
  end(reply: ChatReply): void {
    this.#finish(JSON.stringify(reply), markHeaders(STREAM_MARKS.end));
  }

  /** The terminal message of a stream that failed (never a clean end after a failure). */
  error(reply: ErrorReply): void {
    const headers = markHeaders(STREAM_MARKS.error);
    headers.set(HEADERS.serviceError, headerSafe(reply.error.message));
    headers.set(HEADERS.serviceErrorCode, String(reply.error.status));
    this.#finish(JSON.stringify(reply), headers);
  }

  stop(): void {
    this.#finished = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #finish(body: string, headers: MsgHdrs): void {
    if (this.#finished) return;
    this.stop();
    try {
      this.#connection.publish(this.#inbox, body, { headers });
    } catch (error) {
      this.#logger.warn({ err: error }, 'could not send the terminal stream message');
    }
  }

  #send(body: string, headers: MsgHdrs, probe: boolean): void {
    this.#lastSentAt = Date.now();
    try {
      if (!probe) {
        this.#connection.publish(this.#inbox, body, { headers });
        return;
      }
      this.#lastProbeAt = this.#lastSentAt;
      this.#connection.request(this.#inbox, body, { headers, timeout: Math.max(50, this.#heartbeatMs) }).then(
        () => undefined,
        (error: unknown) => {
          if (error instanceof RequestError && error.isNoResponders() && !this.#finished && !this.#clientGone) {
            this.#clientGone = true;
            this.#onClientGone();
          }
        },
      );
    } catch (error) {
      // A closed or draining connection: the request's own deadline/cancel handles the rest.
      this.#logger.debug({ err: error }, 'stream message not sent');
    }
  }
}
