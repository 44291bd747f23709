import {
  headers as createHeaders,
  MsgHdrsImpl,
  RequestError,
  type MsgHdrs,
  type NatsConnection,
} from '@nats-io/nats-core';
import { HEADERS, STREAM_MARKS, type StreamMark } from '../contract/subjects.js';
import type { ChatReply, StreamChunk } from '../contract/reply.js';
import { ProxyError, toErrorReply, type ErrorCode, type ErrorReply } from '../contract/errors.js';
import { fitsMaxPayload } from './max-payload.js';
import type { Logger } from '../telemetry/logger.js';

function markHeaders(mark: StreamMark): MsgHdrs {
  const headers = createHeaders();
  headers.set(HEADERS.stream, mark);
  return headers;
}

/** What a header block adds to a message's size: nats.js counts it against max_payload. */
function headerBytes(headers: MsgHdrs): number {
  // Our headers are always nats.js's own; anything else gets a generous allowance.
  return headers instanceof MsgHdrsImpl ? headers.encode().length : 4096;
}

const CHUNK_HEADERS = markHeaders(STREAM_MARKS.chunk);
const CHUNK_HEADER_BYTES = headerBytes(CHUNK_HEADERS);
const HEARTBEAT_HEADERS = markHeaders(STREAM_MARKS.heartbeat);
const HEARTBEAT_BODY = JSON.stringify({ heartbeat: true });

/** The JSON around one piece of a cut delta, at its largest (any seq, either text field). */
const PIECE_ENVELOPE_BYTES = Buffer.byteLength(
  JSON.stringify({ seq: Number.MAX_SAFE_INTEGER, index: 127, delta: '', reasoning_delta: '' }),
);

/** Below this many bytes of text per chunk, cutting a delta would make a flood of crumbs: refuse instead. */
const MIN_PIECE_BYTES = 256;

/**
 * Fields of the `end` message that the chunks already carried, so a client can
 * rebuild them; left out (largest first) when the whole reply would not fit.
 */
const REBUILDABLE_FIELDS = ['content', 'reasoning_content', 'tool_calls'] as const;
/** Not carried by chunks: left out only when leaving out the others was not enough. */
const LAST_RESORT_FIELDS = ['logprobs', 'choices'] as const;
/** The order `omitted` lists them in, whatever order they were left out in. */
const OMITTABLE_FIELDS: readonly string[] = [...REBUILDABLE_FIELDS, ...LAST_RESORT_FIELDS];

const isPresent = (value: unknown): boolean =>
  value !== undefined && value !== null && value !== '' && !(Array.isArray(value) && value.length === 0);

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
const isLowSurrogate = (code: number) => code >= 0xdc00 && code <= 0xdfff;

/** UTF-8 bytes that JSON.stringify writes for one UTF-16 unit (a lone surrogate and most control characters become `\uXXXX`). */
function jsonUnitBytes(code: number): number {
  if (code >= 0x20 && code < 0x80) return code === 0x22 || code === 0x5c ? 2 : 1;
  if (code < 0x20) return code === 0x08 || code === 0x09 || code === 0x0a || code === 0x0c || code === 0x0d ? 2 : 6;
  if (code < 0x800) return 2;
  if (code >= 0xd800 && code <= 0xdfff) return 6;
  return 3;
}

/**
 * Cuts `text` into pieces that each take at most `budget` bytes inside a JSON
 * string (UTF-8, escapes counted), filling each piece as far as it goes and
 * never separating the two halves of a surrogate pair. `budget` must be at
 * least 6 (the largest single unit).
 */
export function splitJsonText(text: string, budget: number): string[] {
  const pieces: string[] = [];
  let start = 0;
  let bytes = 0;
  for (let index = 0; index < text.length; ) {
    const code = text.charCodeAt(index);
    const pair = isHighSurrogate(code) && index + 1 < text.length && isLowSurrogate(text.charCodeAt(index + 1));
    const cost = pair ? 4 : jsonUnitBytes(code);
    if (bytes + cost > budget && index > start) {
      pieces.push(text.slice(start, index));
      start = index;
      bytes = 0;
    }
    bytes += cost;
    index += pair ? 2 : 1;
  }
  if (start < text.length) pieces.push(text.slice(start));
  return pieces;
}

/** Header values are one line: a provider's message must not break the header block. */
export function headerSafe(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 1024);
}

/**
 * Writes one streamed reply on the client's inbox (DESIGN.md, "Streaming"):
 * chunks with `seq` from 0, heartbeats while the upstream is silent, and one
 * terminal message.
 *
 * Everything it sends fits the server's `max_payload` (nats.js refuses a
 * larger publish): a delta too large for one message goes out as several
 * chunks, and an `end` message too large leaves out what the chunks already
 * carried and names it in `omitted`. Sizes are measured only for a message
 * long enough to possibly be too large, so small chunks cost nothing extra.
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

  constructor(options: {
    connection: NatsConnection;
    inbox: string;
    heartbeatMs: number;
    onClientGone: () => void;
    logger: Logger;
  }) {
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

  /**
   * Sends one delta as the next chunk, or as several consecutive chunks when
   * it is larger than `max_payload` (its text cut between characters).
   * Throws a `payload_too_large` ProxyError, having sent nothing of it, when
   * it cannot be made to fit (a tool-call delta is not cut): the caller then
   * ends the stream with `error()`.
   */
  chunk(chunk: Omit<StreamChunk, 'seq'>): void {
    if (this.#finished) return;
    const body = JSON.stringify({ seq: this.#seq, ...chunk });
    if (!this.#fits(body, CHUNK_HEADER_BYTES)) {
      this.#sendInPieces(chunk);
      return;
    }
    this.#seq += 1;
    this.#sendChunk(body);
  }

  /**
   * The terminal message of a stream that completed. A reply too large for
   * `max_payload` goes without the fields the chunks carried (`omitted` names
   * them); one that does not fit even so becomes a `payload_too_large` error
   * terminal. Returns that code, or `undefined` for a clean end.
   *
   * `beforeSend`, when given, is called once with the same outcome right
   * before the terminal message is written: the place for the usage event,
   * which must leave just before the reply and say what the client got.
   */
  end(reply: ChatReply, beforeSend?: (code: ErrorCode | undefined) => void): ErrorCode | undefined {
    if (this.#finished) return undefined;
    const headers = markHeaders(STREAM_MARKS.end);
    const endHeaderBytes = headerBytes(headers);
    let body = JSON.stringify(reply);
    if (!this.#fits(body, endHeaderBytes)) {
      const fitted = this.#withoutStreamedFields(reply, endHeaderBytes);
      if (fitted === undefined) {
        const maxPayload = this.#maxPayload();
        this.#logger.error(
          { bytes: Buffer.byteLength(body), max_payload: maxPayload },
          'the stream end does not fit max_payload even without the streamed fields',
        );
        const tooLarge = new ProxyError(
          'payload_too_large',
          `the reply does not fit the NATS server's max_payload (${maxPayload} bytes), even without the streamed content`,
        );
        beforeSend?.(tooLarge.code);
        this.error(toErrorReply(tooLarge, reply.request_id));
        return tooLarge.code;
      }
      this.#logger.info(
        { omitted: fitted.omitted, bytes: Buffer.byteLength(body), max_payload: this.#maxPayload() },
        'stream end larger than max_payload: streamed fields left out',
      );
      body = fitted.body;
    }
    beforeSend?.(undefined);
    this.#finish(body, headers);
    return undefined;
  }

  /** The terminal message of a stream that failed (never a clean end after a failure). */
  error(reply: ErrorReply): void {
    if (this.#finished) return;
    const headers = markHeaders(STREAM_MARKS.error);
    headers.set(HEADERS.serviceError, headerSafe(reply.error.message));
    headers.set(HEADERS.serviceErrorCode, String(reply.error.status));
    let body = JSON.stringify(reply);
    // An error body is small; one that is not (a huge message, many attempts) keeps what identifies the error.
    if (!this.#fits(body, headerBytes(headers))) {
      const { code, status, retryable, retry_after_ms, request_id } = reply.error;
      body = JSON.stringify({
        error: { code, status, message: headerSafe(reply.error.message), retryable, retry_after_ms, request_id },
      });
    }
    this.#finish(body, headers);
  }

  stop(): void {
    this.#finished = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #maxPayload(): number | undefined {
    return this.#connection.info?.max_payload;
  }

  #fits(body: string, headerSize: number): boolean {
    return fitsMaxPayload(this.#connection, body, headerSize);
  }

  #sendChunk(body: string): void {
    this.#send(body, CHUNK_HEADERS, Date.now() - this.#lastProbeAt >= this.#heartbeatMs);
  }

  /** A delta larger than one message: reasoning text, then content text, each cut to fit; tool calls whole, last. */
  #sendInPieces(chunk: Omit<StreamChunk, 'seq'>): void {
    const maxPayload = this.#maxPayload() ?? Number.POSITIVE_INFINITY;
    const budget = maxPayload - CHUNK_HEADER_BYTES - PIECE_ENVELOPE_BYTES;
    const pieces: Array<Omit<StreamChunk, 'seq'>> = [];
    if (budget >= MIN_PIECE_BYTES) {
      for (const text of splitJsonText(chunk.reasoning_delta ?? '', budget))
        pieces.push({ delta: '', reasoning_delta: text });
      for (const text of splitJsonText(chunk.refusal_delta ?? '', budget))
        pieces.push({ delta: '', refusal_delta: text });
      for (const text of splitJsonText(chunk.delta, budget)) pieces.push({ delta: text });
    }
    if (chunk.tool_calls !== undefined) pieces.push({ delta: '', tool_calls: chunk.tool_calls });
    if (chunk.logprobs !== undefined) pieces.push({ delta: '', logprobs: chunk.logprobs });
    // Every piece of a choice's delta says which choice it belongs to.
    if (chunk.index !== undefined)
      for (const [at, piece] of pieces.entries()) pieces[at] = { index: chunk.index, ...piece };
    // Every piece is measured before the first goes out: a delta that cannot fit is refused whole.
    const bodies = pieces.map((piece, index) => JSON.stringify({ seq: this.#seq + index, ...piece }));
    const tooLarge = budget < MIN_PIECE_BYTES || bodies.some((body) => !this.#fits(body, CHUNK_HEADER_BYTES));
    if (tooLarge) {
      const bytes = Buffer.byteLength(JSON.stringify(chunk));
      const what =
        chunk.tool_calls !== undefined
          ? 'a tool-call delta'
          : chunk.logprobs !== undefined
            ? 'a delta with logprobs'
            : 'a delta';
      this.#logger.warn(
        { bytes, max_payload: maxPayload, seq: this.#seq },
        'stream delta cannot be cut to fit max_payload',
      );
      throw new ProxyError(
        'payload_too_large',
        `${what} of ${bytes} bytes does not fit the NATS server's max_payload (${maxPayload} bytes)`,
        { retryable: false },
      );
    }
    for (const body of bodies) {
      this.#seq += 1;
      this.#sendChunk(body);
    }
  }

  /**
   * The reply without the fields the chunks carried, largest first, until it
   * fits; then, as a last resort, without those they did not carry. An omitted
   * `content` stays as `null` (the reply's shape keeps it).
   */
  #withoutStreamedFields(reply: ChatReply, headerSize: number): { body: string; omitted: string[] } | undefined {
    const record: Record<string, unknown> = { ...reply };
    const size = (name: string) => JSON.stringify(record[name]).length;
    const rebuildable = REBUILDABLE_FIELDS.filter((name) => isPresent(record[name])).sort(
      (left, right) => size(right) - size(left),
    );
    const order = [...rebuildable, ...LAST_RESORT_FIELDS.filter((name) => isPresent(record[name]))];
    const leftOut = new Set<string>();
    for (const name of order) {
      leftOut.add(name);
      if (name === 'content') record.content = null;
      else delete record[name];
      const omitted = OMITTABLE_FIELDS.filter((field) => leftOut.has(field));
      const body = JSON.stringify({ ...record, omitted });
      if (this.#fits(body, headerSize)) return { body, omitted };
    }
    return undefined;
  }

  #finish(body: string, headers: MsgHdrs): void {
    if (this.#finished) return;
    this.stop();
    try {
      this.#connection.publish(this.#inbox, body, { headers });
    } catch (error) {
      // The one message the client waits for: without it, it only learns of the end from its idle timeout.
      this.#logger.error(
        { err: error, bytes: Buffer.byteLength(body), max_payload: this.#maxPayload() },
        'could not send the terminal stream message',
      );
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
