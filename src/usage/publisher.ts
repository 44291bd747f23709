import { jsOptions } from '../bus/jetstream-domain.js';
import { appendFile, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { InvalidArgumentError, InvalidSubjectError, type NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager } from '@nats-io/jetstream';
import type { UsageStreamConfig } from '../config/schema.js';
import type { UsageEvent } from '../contract/usage-event.js';
import type { Logger } from '../telemetry/logger.js';
import { AckInbox, PublishRefusedError } from './ack-inbox.js';
import type { BuiltUsageEvent } from './event.js';
import { ensureUsageStreamCapturing, usageStreamConfig, type UsageStreamWanted } from './stream.js';

/**
 * Publishes usage events to JetStream and never drops one silently.
 *
 * Each event is written at once, with `Nats-Msg-Id` = its event id (the worker's own id for the
 * request), so a retried publish is stored once (within the stream's duplicate window). The worker
 * calls `publish` right before it writes the reply, so both leave in one socket write, the event
 * first. The ack is awaited in the background. An event that could not be stored yet (NATS down,
 * stream missing, ack timeout) is kept in memory and retried with backoff, oldest first, until
 * acked. An event that can never be stored (a subject the server would refuse, a message over a
 * size limit) is not retried: it is logged in full, counted (`deadLettered`) and appended to the
 * dead-letter file, and the others flow on. The retry queue is bounded generously; past the bound
 * the oldest event is dropped with an error log carrying the whole event. `flush()` is for
 * shutdown: it waits for the queue to empty, and logs in full whatever it could not publish in time.
 */
export interface UsagePublisherOptions {
  connection: NatsConnection;
  /** Subjects the stream captures: `<prefix>.usage.>`. */
  streamSubject: string;
  /** Prefix of event subjects: `<prefix>.usage`. */
  subjectFor: (token: string) => string;
  stream: UsageStreamConfig;
  logger: Logger;
  /** Events held in memory at most before the oldest is dropped (loudly). Default 100 000. */
  maxQueued?: number;
  /** Wait for one ack. Default 5 s. */
  ackTimeoutMs?: number;
  /** Retry backoff bounds. Defaults 100 ms … 5 s. */
  retryBaseMs?: number;
  retryMaxMs?: number;
}

export interface UsagePublisherCounters {
  /** Events acked by the stream (duplicates included). */
  published: number;
  /** Acks that said the stream already had this event id. */
  duplicates: number;
  /** Publish attempts that failed and will be retried (each retry counts). */
  failedAttempts: number;
  /** Events waiting to be published right now. */
  pending: number;
  /** Events dropped because the queue was full or the publisher closed (each logged in full). */
  dropped: number;
  /** Events that can never be published: logged in full and written to the dead-letter file. */
  deadLettered: number;
}

interface QueuedEvent {
  subject: string;
  event: UsageEvent;
  payload: string;
  tries: number;
}

type Attempt = 'published' | 'retry' | 'dead';

/** Longest event subject published: nats-server closes a connection whose protocol line passes max_control_line (4 KiB by default). */
const MAX_SUBJECT_LENGTH = 512;
/** Whitespace, wildcards or an empty token: a subject no event may be published on. */
const UNPUBLISHABLE_SUBJECT = /[\s*>]|\.\.|^\.|\.$/;
/** Room left for the protocol's header block (`Nats-Msg-Id`) when checking an event against max_payload. */
const HEADER_ROOM_BYTES = 128;

/** Why a publish was refused for good (it can never succeed), or undefined when a retry may succeed. */
function permanentRefusal(error: unknown): string | undefined {
  if (error instanceof PublishRefusedError) return error.permanent ? error.message : undefined;
  // nats.js refuses a header value or a payload it will never send; a closed or draining connection is another matter.
  if (error instanceof InvalidArgumentError || error instanceof InvalidSubjectError) return error.message;
  return undefined;
}

export class UsagePublisher {
  readonly #options: UsagePublisherOptions;
  readonly #acks: AckInbox;
  readonly #queue: QueuedEvent[] = [];
  readonly #maxQueued: number;
  #inFlight = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #retrying = false;
  #closed = false;
  #streamReady = false;
  /** Publishes are failing: warned once, until the retry queue drains. */
  #failing = false;
  #idleWaiters: Array<() => void> = [];
  readonly counters: UsagePublisherCounters = {
    published: 0,
    duplicates: 0,
    failedAttempts: 0,
    pending: 0,
    dropped: 0,
    deadLettered: 0,
  };

  constructor(options: UsagePublisherOptions) {
    this.#options = options;
    this.#acks = new AckInbox(options.connection, options.ackTimeoutMs ?? 5_000);
    this.#maxQueued = options.maxQueued ?? 100_000;
  }

  /** The stream's wanted settings, from `nats.usage_stream`. */
  streamConfig(): UsageStreamWanted {
    return usageStreamConfig(this.#options.stream, this.#options.streamSubject);
  }

  /** Create the stream if missing, update it if its settings differ (see `ensureUsageStreamCapturing`). Throws if NATS refuses. */
  async ensureStream(): Promise<void> {
    const manager = await jetstreamManager(this.#options.connection, {
      ...jsOptions(this.#options.connection),
      timeout: this.#options.ackTimeoutMs ?? 5_000,
    });
    await ensureUsageStreamCapturing(manager, this.#options.stream, this.#options.streamSubject, this.#options.logger);
    this.#streamReady = true;
  }

  /**
   * Publish one event now: it is written to the connection before this returns, so a reply written
   * next goes out after it, in the same socket write. The ack and any retries happen in the
   * background, off the reply's critical path.
   */
  publish(built: BuiltUsageEvent): void {
    const item: QueuedEvent = {
      subject: this.#options.subjectFor(built.token),
      event: built.event,
      payload: JSON.stringify(built.event),
      tries: 0,
    };
    if (this.#closed) {
      this.counters.dropped++;
      this.#options.logger.error(
        { usage_event: item.event, subject: item.subject },
        'usage event after the publisher closed; logged in full',
      );
      return;
    }
    this.counters.pending++;
    this.#inFlight++;
    void this.#attempt(item).then((result) => {
      this.#inFlight--;
      if (result === 'retry') this.#enqueue(item);
      this.#notifyIfIdle();
    });
  }

  /** One publish of one event and its ack. The event is written synchronously, before the first await. */
  async #attempt(item: QueuedEvent): Promise<Attempt> {
    item.tries++;
    const never = this.#unpublishable(item);
    if (never !== undefined) return this.#deadLetter(item, never);
    try {
      const ack = await this.#acks.publish(item.subject, item.payload, item.event.event_id ?? item.event.request_id);
      this.counters.published++;
      this.counters.pending--;
      if (ack.duplicate) this.counters.duplicates++;
      return 'published';
    } catch (error) {
      const permanent = permanentRefusal(error);
      if (permanent !== undefined) return this.#deadLetter(item, permanent);
      this.counters.failedAttempts++;
      // One warning per outage (a leaderless stream fails every event for seconds), the rest at debug.
      const details = {
        event_id: item.event.event_id,
        request_id: item.event.request_id,
        subject: item.subject,
        tries: item.tries,
        err: error,
      };
      if (this.#failing) this.#options.logger.debug(details, 'usage event not published yet; kept for retry');
      else
        this.#options.logger.warn(
          details,
          'usage events are not being published; holding them for retry (further failures at debug level)',
        );
      this.#failing = true;
      return 'retry';
    }
  }

  /** Why this event can never be published, found before sending (a bad subject would cost the connection), or undefined. */
  #unpublishable(item: QueuedEvent): string | undefined {
    if (item.subject.length > MAX_SUBJECT_LENGTH || UNPUBLISHABLE_SUBJECT.test(item.subject)) {
      return `the subject is not publishable (${item.subject.length} characters)`;
    }
    const maxPayload = this.#options.connection.info?.max_payload;
    if (maxPayload !== undefined && item.payload.length * 3 + HEADER_ROOM_BYTES > maxPayload) {
      const bytes = Buffer.byteLength(item.payload);
      if (bytes + HEADER_ROOM_BYTES > maxPayload)
        return `the event (${bytes} bytes) does not fit the server's max_payload (${maxPayload} bytes)`;
    }
    return undefined;
  }

  /** An event that can never be published: logged in full, counted, and appended to the dead-letter file. */
  #deadLetter(item: QueuedEvent, reason: string): Attempt {
    this.counters.deadLettered++;
    this.counters.pending--;
    const file = this.#options.stream.dead_letter_file ?? undefined;
    this.#options.logger.error(
      { usage_event: item.event, subject: item.subject, reason, dead_letter_file: file },
      'usage event can never be published: logged in full and set aside',
    );
    if (file !== undefined) {
      const line = `${JSON.stringify({ dead_lettered_at: new Date().toISOString(), reason, subject: item.subject, event: item.event })}\n`;
      void mkdir(dirname(file), { recursive: true })
        .then(() => appendFile(file, line))
        .catch((error: unknown) => {
          this.#options.logger.error(
            { err: error, dead_letter_file: file, event_id: item.event.event_id },
            'could not write the dead-letter file (the event is in the log line before this one)',
          );
        });
    }
    return 'dead';
  }

  #enqueue(item: QueuedEvent): void {
    if (this.#closed) {
      // An ack still outstanding when the publisher closed: it may or may not be stored; keep it in the log.
      this.counters.dropped++;
      this.counters.pending--;
      this.#options.logger.error(
        { usage_event: item.event, subject: item.subject },
        'usage event not acknowledged before shutdown; logged in full',
      );
      return;
    }
    this.#queue.push(item);
    while (this.#queue.length > this.#maxQueued) {
      const dropped = this.#queue.shift()!;
      this.counters.dropped++;
      this.counters.pending--;
      this.#options.logger.error(
        { usage_event: dropped.event, subject: dropped.subject, queued: this.#queue.length },
        'usage event queue is full: the oldest event is dropped here and logged in full',
      );
    }
    this.#scheduleRetry();
  }

  #scheduleRetry(delayMs?: number): void {
    if (this.#retryTimer !== undefined || this.#retrying || this.#queue.length === 0) return;
    const head = this.#queue[0]!;
    const base = this.#options.retryBaseMs ?? 100;
    const max = this.#options.retryMaxMs ?? 5_000;
    const backoff = Math.min(max, base * 2 ** Math.min(head.tries, 16));
    const delay = delayMs ?? (head.tries === 0 ? 0 : backoff * (0.5 + Math.random() * 0.5));
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#drainQueue();
    }, delay);
    // A pending retry must not keep a finished process alive; flush() is the way to wait for it.
    this.#retryTimer.unref();
  }

  async #drainQueue(): Promise<void> {
    if (this.#retrying) return;
    this.#retrying = true;
    try {
      while (this.#queue.length > 0 && !this.#options.connection.isClosed()) {
        const head = this.#queue[0]!;
        if (!this.#streamReady || head.tries > 0) {
          // The stream may be missing (deleted, or NATS lost its store): make sure it exists.
          try {
            await this.ensureStream();
          } catch (error) {
            this.#options.logger.debug({ err: error }, 'usage stream not reachable yet');
          }
        }
        const result = await this.#attempt(head);
        if (result === 'retry') break;
        this.#queue.shift();
        if (this.#queue.length === 0) {
          this.#failing = false;
          this.#options.logger.info('usage event queue drained');
        }
      }
    } finally {
      this.#retrying = false;
      this.#notifyIfIdle();
      if (this.#queue.length > 0 && !this.#options.connection.isClosed()) this.#scheduleRetry();
    }
  }

  #notifyIfIdle(): void {
    if (this.#queue.length > 0 || this.#inFlight > 0) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /** Events not yet acked (queued or being published). */
  get pending(): number {
    return this.counters.pending;
  }

  /**
   * Wait until every event is acked, at most `timeoutMs`. Returns the number
   * still unpublished; those are logged in full (never silently lost).
   */
  async flush(timeoutMs: number): Promise<number> {
    if (this.#queue.length > 0 && !this.#retrying) {
      if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
      void this.#drainQueue();
    }
    if (this.#queue.length > 0 || this.#inFlight > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.#idleWaiters.push(resolve)),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    }
    return this.counters.pending;
  }

  /** Stop retrying; whatever is still queued is logged in full. */
  close(): void {
    this.#closed = true;
    this.#acks.close();
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    for (const item of this.#queue) {
      this.#options.logger.error(
        { usage_event: item.event, subject: item.subject },
        'usage event could not be published before shutdown; logged in full',
      );
    }
    this.#queue.length = 0;
  }
}
