// By hand, not nats.js's `js.publish`: one `request()` per event (mux entry, timer, Error) was a visible share of a worker's CPU (docs/bench/results.md); see AckInbox.
import {
  createInbox,
  headers as createHeaders,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/nats-core';
import { inboxPrefixOf } from '../bus/inbox.js';
import { HEADERS } from '../contract/subjects.js';

export interface PublishAck {
  stream: string;
  seq: number;
  duplicate: boolean;
}

/**
 * JetStream's refusal of a publish. `permanent` when the same message can never be stored (too
 * large for the stream, headers too large): retrying it would only hold up the events behind it.
 */
export class PublishRefusedError extends Error {
  constructor(
    message: string,
    readonly errCode: number | undefined,
    readonly permanent: boolean,
  ) {
    super(message);
    this.name = 'PublishRefusedError';
  }
}

/** JetStream's error codes for a message it will never store (nats-server's errors.json). */
const PERMANENT_ERR_CODES = new Set([
  10054, // JSStreamMessageExceedsMaximumErr: message size exceeds maximum allowed
  10097, // JSStreamHeaderExceedsMaximumErr: header size exceeds maximum allowed
]);

interface PendingAck {
  resolve: (ack: PublishAck) => void;
  reject: (error: Error) => void;
  deadline: number;
}

/**
 * JetStream publishes whose acks all come back on one wildcard inbox, with one
 * sweep timer for the timeouts. nats.js's `js.publish` is a `request()` per
 * message: a mux entry, a timer and (on success too) an Error object each,
 * which the benchmark showed as a visible share of a worker's CPU at one
 * usage event per request. The protocol is JetStream's own: publish with a
 * reply subject and `Nats-Msg-Id`; the stream answers `{"stream", "seq",
 * "duplicate"?}` or `{"error": {…}}`, or the server answers 503 when no
 * stream captures the subject.
 */
export class AckInbox {
  readonly #connection: NatsConnection;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #pending = new Map<string, PendingAck>();
  readonly #subscription: Subscription;
  #sweep: NodeJS.Timeout | undefined;
  #next = 0;

  constructor(connection: NatsConnection, timeoutMs: number) {
    this.#connection = connection;
    this.#timeoutMs = timeoutMs;
    // Under the connection's inbox prefix: a worker's NATS user may subscribe only there.
    this.#prefix = createInbox(inboxPrefixOf(connection));
    this.#subscription = connection.subscribe(`${this.#prefix}.*`, {
      callback: (error, message) => {
        if (error !== null) return;
        // Anyone could publish here: a message nats.js cannot decode must not stop the connection's reader.
        try {
          this.#onAck(message);
        } catch {
          // Not an ack of ours; a real ack that went missing times out and is retried.
        }
      },
    });
  }

  get pending(): number {
    return this.#pending.size;
  }

  publish(subject: string, payload: string, msgId: string): Promise<PublishAck> {
    const token = String(this.#next++);
    const headers = createHeaders();
    headers.set(HEADERS.msgId, msgId);
    return new Promise<PublishAck>((resolve, reject) => {
      this.#pending.set(token, { resolve, reject, deadline: Date.now() + this.#timeoutMs });
      try {
        this.#connection.publish(subject, payload, { reply: `${this.#prefix}.${token}`, headers });
      } catch (error) {
        this.#pending.delete(token);
        reject(error as Error);
        return;
      }
      this.#armSweep();
    });
  }

  #onAck(message: Msg): void {
    const token = message.subject.slice(this.#prefix.length + 1);
    const pending = this.#pending.get(token);
    if (pending === undefined) return; // timed out already
    this.#pending.delete(token);
    if (message.data.length === 0 && message.headers?.code === 503) {
      pending.reject(new Error('no JetStream stream captures this subject (503 no responders)'));
      return;
    }
    let body: {
      stream?: unknown;
      seq?: unknown;
      duplicate?: unknown;
      error?: { code?: unknown; err_code?: unknown; description?: unknown };
    };
    try {
      body = message.json();
    } catch {
      pending.reject(new Error('JetStream sent an ack that is not JSON'));
      return;
    }
    if (body.error !== undefined) {
      const errCode = typeof body.error.err_code === 'number' ? body.error.err_code : undefined;
      const description = `JetStream refused the publish: ${String(body.error.description ?? 'no description')} (${String(body.error.code)}/${String(body.error.err_code)})`;
      pending.reject(
        new PublishRefusedError(description, errCode, errCode !== undefined && PERMANENT_ERR_CODES.has(errCode)),
      );
      return;
    }
    pending.resolve({ stream: String(body.stream), seq: Number(body.seq), duplicate: body.duplicate === true });
  }

  /** One timer for every pending ack; it stops when none is left. */
  #armSweep(): void {
    if (this.#sweep !== undefined) return;
    const period = Math.max(50, Math.min(1_000, this.#timeoutMs / 4));
    this.#sweep = setInterval(() => {
      const now = Date.now();
      for (const [token, pending] of this.#pending) {
        if (pending.deadline > now) continue;
        this.#pending.delete(token);
        pending.reject(new Error(`no JetStream ack within ${this.#timeoutMs} ms`));
      }
      if (this.#pending.size === 0) {
        clearInterval(this.#sweep);
        this.#sweep = undefined;
      }
    }, period);
    this.#sweep.unref();
  }

  close(): void {
    if (this.#sweep !== undefined) clearInterval(this.#sweep);
    this.#sweep = undefined;
    for (const pending of this.#pending.values()) pending.reject(new Error('publisher closed'));
    this.#pending.clear();
    if (!this.#subscription.isClosed()) this.#subscription.unsubscribe();
  }
}
