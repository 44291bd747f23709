import { headers as createHeaders, type Msg, type NatsConnection } from '@nats-io/nats-core';
import { ProxyError, toErrorReply, type ErrorCode } from '../contract/errors.js';
import type { ChatReply } from '../contract/reply.js';
import { HEADERS, STREAM_MARKS } from '../contract/subjects.js';
import { fitsMaxPayload } from './max-payload.js';
import type { RequestRecord } from './request-record.js';
import { headerSafe } from './stream-writer.js';

function errorHeaders(status: number, message: string, stream: boolean) {
  const headers = createHeaders();
  // A client waiting for a stream reads the terminal mark; a plain request ignores it.
  if (stream) headers.set(HEADERS.stream, STREAM_MARKS.error);
  headers.set(HEADERS.serviceError, headerSafe(message));
  headers.set(HEADERS.serviceErrorCode, String(status));
  return headers;
}

/**
 * The one way a request ends: its record is finished (the finish listener publishes the usage
 * event, which nats.js writes to the connection's buffer at once), then the reply is written on
 * the same connection, so both leave in one socket write, the event first: a reply that reached
 * the server means its event did too. A stream ends the same way through `finish`, right before
 * its terminal message (stream-reply.ts).
 */
export class Delivery {
  constructor(
    private readonly connection: NatsConnection,
    private readonly onFinished: (record: RequestRecord) => void,
  ) {}

  /** Ends the record with `code`; false when it had ended already (nothing more may be sent). */
  finish(record: RequestRecord, code: ErrorCode | undefined): boolean {
    if (record.finished) return false;
    record.finish(code);
    this.onFinished(record);
    return true;
  }

  /**
   * A served answer. One too large for the server's max_payload becomes a payload_too_large error,
   * decided before the record ends so that its event says what the client got.
   */
  reply(message: Msg, record: RequestRecord, reply: ChatReply): ErrorCode | undefined {
    const body = JSON.stringify(reply);
    if (!fitsMaxPayload(this.connection, body, 0)) {
      return this.error(
        message,
        record,
        new ProxyError(
          'payload_too_large',
          `the reply is larger than the NATS server's max_payload (${this.connection.info?.max_payload ?? '?'} bytes)`,
        ),
      );
    }
    if (!this.finish(record, undefined)) return record.code;
    try {
      message.respond(body);
    } catch (error) {
      record.logger.warn({ err: error }, 'reply could not be sent');
    }
    return undefined;
  }

  /** An error answer (when the request has a reply subject; its event in any case). */
  error(message: Msg, record: RequestRecord, error: ProxyError, stream = false): ErrorCode {
    if (!this.finish(record, error.code)) return record.code ?? error.code;
    if (message.reply === undefined || message.reply === '') return error.code;
    const body = toErrorReply(error, record.requestId);
    try {
      message.respond(JSON.stringify(body), { headers: errorHeaders(body.error.status, body.error.message, stream) });
    } catch (sendError) {
      record.logger.warn({ err: sendError }, 'error reply could not be sent');
    }
    return error.code;
  }
}
