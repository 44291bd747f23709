/**
 * A streamed reply (DESIGN.md, "Streaming") read from the client's own inbox
 * subscription rather than `requestMany` (NATS-NOTES, "Streaming a reply"):
 * `requestMany` bounds the whole stream by one `maxWait` and ends silently.
 *
 * The request is published with the inbox as its reply subject, so a bus with
 * no worker answers at once with a 503 status message on the inbox. After
 * that, three timers guard the stream: the first message, the silence between
 * two messages (the worker sends heartbeats while the model is silent, so a
 * long silence means the worker is gone), and the whole stream.
 */
import { createInbox, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { inboxPrefixOf } from '../bus/inbox.js';
import {
  HEADERS,
  STREAM_MARKS,
  isErrorReply,
  type ChatReply,
  type ErrorReply,
  type StreamChunk,
  type Subjects,
} from '../contract/index.js';
import { ToolCallAssembler } from '../contract/tool-call-assembler.js';
import { LlmProxyError, errorFromBody, errorFromNats, errorFromServiceHeaders } from './errors.js';
import { assertFitsMaxPayload, publishCancel, type Envelope } from './request-envelope.js';

/**
 * The chunks of one streamed reply, in order, and its end.
 *
 * ```ts
 * const stream = client.stream(request);
 * for await (const chunk of stream) process.stdout.write(chunk.delta);
 * const reply = await stream.final; // usage, cost, finish_reason, ttft_ms
 * ```
 *
 * When the whole reply was too large for one NATS message, the worker's end
 * message leaves out what the chunks carried (`omitted`); `final` has it
 * filled back in from the chunks (`content`, `reasoning_content`,
 * `tool_calls`), and keeps `omitted` so the caller can tell.
 *
 * Iterating throws an `LlmProxyError` when the stream fails (after the chunks
 * that arrived before the failure); `final` rejects with the same error.
 * Leaving the loop early (`break`, `return`, a throw in the loop body) cancels
 * the request, and so do `cancel()` and the call's AbortSignal. `final` can be
 * awaited without iterating: the chunks are then only buffered.
 */
export interface ChatStream extends AsyncIterable<StreamChunk> {
  /** The request's `request_id` (the one given, or the one generated for it). */
  readonly requestId: string;
  /** The terminal reply (`done: true`, `ttft_ms`, usage, cost), or the stream's error. */
  readonly final: Promise<ChatReply>;
  /** The terminal reply once the stream has ended, else `undefined`. */
  readonly reply: ChatReply | undefined;
  /** Stop the stream and tell the worker to abort the upstream call. No effect once ended. */
  cancel(): void;
}

export interface StreamTimeouts {
  firstMessageMs: number;
  idleMs: number;
  totalMs: number;
}

export interface StreamStart {
  connection: NatsConnection;
  subjects: Subjects;
  /**
   * The subjects to try in order, the next one when no worker listens on one (issue 19: the model's
   * subject, then `llm.proxy.request`); default `[subjects.request]`.
   */
  route?: string[];
  /** The request ready to send, or the error that stopped it before sending. */
  envelope: Envelope | LlmProxyError;
  requestId: string;
  secret: string | undefined;
  timeouts: StreamTimeouts;
  signal: AbortSignal | undefined;
  inboxPrefix: string | undefined;
}

type State = 'open' | 'ended' | 'failed';

interface Waiter {
  resolve(result: IteratorResult<StreamChunk>): void;
  reject(error: unknown): void;
}

class NatsChatStream implements ChatStream {
  readonly requestId: string;
  readonly final: Promise<ChatReply>;
  #resolveFinal!: (reply: ChatReply) => void;
  #rejectFinal!: (error: LlmProxyError) => void;
  readonly #start: StreamStart;
  #state: State = 'open';
  #reply: ChatReply | undefined;
  #error: LlmProxyError | undefined;
  readonly #queue: StreamChunk[] = [];
  #waiter: Waiter | undefined;
  #iterated = false;
  #expectedSeq = 0;
  /**
   * What the chunks carried, assembled: to tell a complete stream from one that lost its
   * last chunks, and to fill in what an end message left out (`omitted`). Strings joined
   * with `+=` are ropes in V8: nothing is copied per chunk.
   */
  #content = '';
  #reasoning = '';
  #toolCalls: ToolCallAssembler | undefined;
  #subscription: Subscription | undefined;
  #silenceTimer: NodeJS.Timeout | undefined;
  #totalTimer: NodeJS.Timeout | undefined;
  #onAbort: (() => void) | undefined;
  readonly #route: string[];
  #routeIndex = 0;
  #inbox = '';

  constructor(start: StreamStart) {
    this.#start = start;
    this.#route = start.route ?? [start.subjects.request];
    this.requestId = start.requestId;
    this.final = new Promise<ChatReply>((resolve, reject) => {
      this.#resolveFinal = resolve;
      this.#rejectFinal = reject;
    });
    // A caller that only iterates gets the error from the loop; `final` must not
    // then crash the process as an unhandled rejection.
    this.final.catch(() => undefined);
    this.#open();
  }

  get reply(): ChatReply | undefined {
    return this.#reply;
  }

  cancel(): void {
    if (this.#state !== 'open') return;
    this.#fail(new LlmProxyError('cancelled', 'cancelled by the client', { requestId: this.requestId }), {
      tellWorker: true,
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamChunk> {
    if (this.#iterated) throw new TypeError('a ChatStream can be iterated only once');
    this.#iterated = true;
    return {
      next: () => this.#next(),
      return: async () => {
        this.cancel();
        this.#queue.length = 0;
        return { done: true, value: undefined };
      },
    };
  }

  #next(): Promise<IteratorResult<StreamChunk>> {
    const chunk = this.#queue.shift();
    if (chunk !== undefined) return Promise.resolve({ done: false, value: chunk });
    if (this.#state === 'ended') return Promise.resolve({ done: true, value: undefined });
    if (this.#state === 'failed') {
      const error = this.#error;
      // Thrown once; a loop that catches and calls next() again sees the end.
      this.#error = undefined;
      return error === undefined ? Promise.resolve({ done: true, value: undefined }) : Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** The subject the request went to last (of `route`). */
  get #subject(): string {
    return this.#route[this.#routeIndex] ?? this.#start.subjects.request;
  }

  /** Publishes the request on the current subject of its route, with the stream's inbox as reply subject. */
  #send(): void {
    const envelope = this.#start.envelope as Envelope;
    this.#start.connection.publish(this.#subject, envelope.body, { reply: this.#inbox, headers: envelope.headers });
  }

  #open(): void {
    const { connection, envelope, signal, timeouts } = this.#start;
    if (envelope instanceof LlmProxyError) {
      this.#fail(envelope, { tellWorker: false });
      return;
    }
    if (signal?.aborted === true) {
      this.#fail(
        new LlmProxyError('cancelled', 'cancelled before sending', { requestId: this.requestId, cause: signal.reason }),
        {
          tellWorker: false,
        },
      );
      return;
    }
    try {
      assertFitsMaxPayload(connection, envelope);
      // Else the connection's prefix: a NATS user may be allowed to subscribe only under its own.
      const inbox = createInbox(this.#start.inboxPrefix ?? inboxPrefixOf(connection));
      const subscription = connection.subscribe(inbox, {
        callback: (error, message) => {
          // A message nats.js cannot decode (anyone may publish to an inbox; a worker never sends one) is
          // skipped: thrown here it would stop the connection's reader.
          try {
            this.#onMessage(error, message);
          } catch {
            // Skipped; a real message lost to it shows as a seq gap or the idle timeout.
          }
        },
      });
      this.#subscription = subscription;
      void subscription.closed.then(() => {
        if (this.#state === 'open') {
          this.#fail(
            new LlmProxyError('upstream_error', 'the NATS connection closed during the stream', {
              requestId: this.requestId,
            }),
            {
              tellWorker: false,
            },
          );
        }
      });
      // SUB goes out before PUB on the same connection, so the worker's first
      // message cannot arrive before the server knows about the inbox.
      this.#inbox = inbox;
      this.#send();
    } catch (error) {
      this.#fail(
        errorFromNats(error, { subject: this.#subject, timeoutMs: timeouts.totalMs, requestId: this.requestId }),
        {
          tellWorker: false,
        },
      );
      return;
    }
    this.#armSilenceTimer(timeouts.firstMessageMs, () => `no reply from a worker within ${timeouts.firstMessageMs} ms`);
    this.#totalTimer = setTimeout(() => {
      this.#fail(
        new LlmProxyError('upstream_timeout', `stream not finished within ${timeouts.totalMs} ms`, {
          requestId: this.requestId,
        }),
        {
          tellWorker: true,
        },
      );
    }, timeouts.totalMs);
    if (signal !== undefined) {
      this.#onAbort = () => {
        this.#fail(
          new LlmProxyError('cancelled', 'cancelled by the client', {
            requestId: this.requestId,
            cause: signal.reason,
          }),
          {
            tellWorker: true,
          },
        );
      };
      signal.addEventListener('abort', this.#onAbort, { once: true });
    }
  }

  #armSilenceTimer(delayMs: number, describe: () => string): void {
    clearTimeout(this.#silenceTimer);
    this.#silenceTimer = setTimeout(() => {
      this.#fail(new LlmProxyError('upstream_timeout', describe(), { requestId: this.requestId }), {
        tellWorker: true,
      });
    }, delayMs);
  }

  #onMessage(error: Error | null, message: Msg): void {
    if (this.#state !== 'open') return;
    const requestId = this.requestId;
    if (error !== null) {
      this.#fail(
        errorFromNats(error, {
          subject: this.#subject,
          timeoutMs: this.#start.timeouts.totalMs,
          requestId,
        }),
        {
          tellWorker: true,
        },
      );
      return;
    }
    // The server's answer to a request nobody is subscribed to: a status-only message. The next subject
    // of the route, if any, is tried (only before anything else came: a 503 can only be the first message).
    if (message.data.length === 0 && message.headers?.code === 503) {
      if (this.#routeIndex + 1 < this.#route.length) {
        this.#routeIndex += 1;
        try {
          this.#send();
          return;
        } catch {
          // Failed below, as no worker listening.
        }
      }
      this.#fail(
        new LlmProxyError('no_provider_available', `no worker is listening on ${this.#subject}`, {
          requestId,
        }),
        {
          tellWorker: false,
        },
      );
      return;
    }
    const idleMs = this.#start.timeouts.idleMs;
    this.#armSilenceTimer(
      idleMs,
      () => `stream silent for ${idleMs} ms after ${this.#expectedSeq} chunk(s): the worker stopped sending`,
    );

    // Heartbeats come as requests (the worker learns from no-responders that we left); they are never answered.
    const mark = message.headers?.get(HEADERS.stream) ?? '';
    if (mark === STREAM_MARKS.heartbeat) return;

    let body: unknown;
    try {
      body = message.json();
    } catch {
      this.#fail(
        new LlmProxyError('upstream_error', `worker sent a ${mark || 'stream'} message that is not JSON`, {
          requestId,
        }),
        {
          tellWorker: true,
        },
      );
      return;
    }

    if (mark === STREAM_MARKS.chunk) {
      this.#onChunk(body);
      return;
    }
    if (mark === STREAM_MARKS.error || isErrorReply(body)) {
      this.#fail(this.#errorFrom(body, message), { tellWorker: false });
      return;
    }
    if (mark === STREAM_MARKS.end || (typeof body === 'object' && body !== null && 'content' in body)) {
      const reply = body as ChatReply;
      // Sequence numbers catch a gap only before a later chunk; a lost last chunk shows here
      // (unless the end left the content out: then only the sequence numbers vouch for it).
      if (typeof reply.content === 'string' && reply.content.length !== this.#content.length) {
        this.#fail(
          new LlmProxyError(
            'upstream_error',
            `stream ended with ${this.#content.length} of ${reply.content.length} characters received: chunk(s) missing before the end`,
            { requestId },
          ),
          { tellWorker: false },
        );
        return;
      }
      if (Array.isArray(reply.omitted)) this.#fillOmitted(reply, reply.omitted);
      this.#succeed(reply);
      return;
    }
    this.#fail(
      new LlmProxyError(
        'upstream_error',
        `worker sent an unexpected stream message (${mark || 'no LLM-Stream header'})`,
        { requestId },
      ),
      {
        tellWorker: true,
      },
    );
  }

  #onChunk(body: unknown): void {
    const seq = typeof body === 'object' && body !== null ? (body as { seq?: unknown }).seq : undefined;
    if (typeof seq !== 'number' || !Number.isInteger(seq)) {
      this.#fail(
        new LlmProxyError('upstream_error', 'worker sent a chunk without a sequence number', {
          requestId: this.requestId,
        }),
        {
          tellWorker: true,
        },
      );
      return;
    }
    if (seq !== this.#expectedSeq) {
      const message =
        seq > this.#expectedSeq
          ? `chunk ${this.#expectedSeq} missing (received chunk ${seq})`
          : `chunk ${seq} out of order (expected chunk ${this.#expectedSeq})`;
      this.#fail(new LlmProxyError('upstream_error', message, { requestId: this.requestId }), { tellWorker: true });
      return;
    }
    this.#expectedSeq += 1;
    const chunk = body as StreamChunk;
    if (typeof chunk.delta !== 'string') chunk.delta = '';
    // The reply's own fields are the first choice's; the others (`n` > 1) come whole in the end's `choices`.
    if (chunk.index === undefined || chunk.index === 0) {
      this.#content += chunk.delta;
      if (typeof chunk.reasoning_delta === 'string') this.#reasoning += chunk.reasoning_delta;
      if (Array.isArray(chunk.tool_calls)) (this.#toolCalls ??= new ToolCallAssembler()).add(chunk.tool_calls);
    }
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      waiter.resolve({ done: false, value: chunk });
    } else {
      this.#queue.push(chunk);
    }
  }

  /** Puts back what the end message left out, from the chunks, as the worker assembled it (the same rules). */
  #fillOmitted(reply: ChatReply, omitted: unknown[]): void {
    const toolCalls = this.#toolCalls;
    if (omitted.includes('content'))
      reply.content = this.#content === '' && toolCalls !== undefined && toolCalls.size > 0 ? null : this.#content;
    if (omitted.includes('reasoning_content') && this.#reasoning !== '') reply.reasoning_content = this.#reasoning;
    if (omitted.includes('tool_calls') && toolCalls !== undefined && toolCalls.size > 0)
      reply.tool_calls = toolCalls.calls();
  }

  #errorFrom(body: unknown, message: Msg): LlmProxyError {
    if (isErrorReply(body)) return errorFromBody((body as ErrorReply).error, this.requestId);
    const headers = message.headers;
    const description = headers?.get(HEADERS.serviceError) ?? '';
    const status = headers?.get(HEADERS.serviceErrorCode) ?? '';
    if (status !== '') return errorFromServiceHeaders(status, description, this.requestId);
    return new LlmProxyError('upstream_error', 'worker ended the stream with an error it did not describe', {
      requestId: this.requestId,
    });
  }

  #succeed(reply: ChatReply): void {
    this.#state = 'ended';
    this.#reply = reply;
    this.#close();
    this.#resolveFinal(reply);
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      waiter.resolve({ done: true, value: undefined });
    }
  }

  #fail(error: LlmProxyError, how: { tellWorker: boolean }): void {
    if (this.#state !== 'open') return;
    this.#state = 'failed';
    this.#error = error;
    if (how.tellWorker) this.#publishCancel();
    this.#close();
    this.#rejectFinal(error);
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      this.#error = undefined;
      waiter.reject(error);
    }
  }

  #publishCancel(): void {
    // Nothing was sent when there is no subscription.
    if (this.#subscription === undefined) return;
    const { connection, subjects, secret, envelope } = this.#start;
    const authorization = envelope instanceof LlmProxyError ? undefined : envelope.headers?.get(HEADERS.authorization);
    publishCancel(connection, subjects, secret, this.requestId, authorization);
  }

  #close(): void {
    clearTimeout(this.#silenceTimer);
    clearTimeout(this.#totalTimer);
    if (this.#onAbort !== undefined) this.#start.signal?.removeEventListener('abort', this.#onAbort);
    const subscription = this.#subscription;
    if (subscription !== undefined && !subscription.isClosed() && !this.#start.connection.isClosed()) {
      subscription.unsubscribe();
    }
  }
}

export function startChatStream(start: StreamStart): ChatStream {
  return new NatsChatStream(start);
}
