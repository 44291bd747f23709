import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Logger } from '../telemetry/logger.js';

/**
 * The request subscription, with a bound on work in flight.
 *
 * NATS queue groups have no back-pressure: a member gets its share whatever
 * its load. So a worker at `max_in_flight` leaves the queue group (drains its
 * subscription: messages already on their way are still delivered, none is
 * lost) and the server sends the rest to the other workers; it joins again
 * when in flight falls to the low-water mark. With no other worker, clients
 * get "no responders" at once rather than a worker that falls over.
 *
 * It subscribes `llm.proxy.request` and, since issue 19, the subject of every model the worker serves
 * (`llm.proxy.model.<token>`), all in the queue group: leaving and joining is for all of them at once.
 *
 * These subscriptions are ours, not the service framework's: the framework
 * treats an endpoint whose subscription closes as a dead service and stops
 * it, so an endpoint cannot be paused. `$SRV` discovery lists the subject in
 * the service metadata (`request_subject`).
 */
export class RequestIntake {
  readonly #connection: NatsConnection;
  readonly #subjects: readonly string[];
  readonly #queue: string;
  readonly #onMessage: (message: Msg) => void;
  readonly #maxInFlight: number;
  readonly #lowWater: number;
  readonly #logger: Logger;
  #subscriptions: Subscription[] = [];
  #draining: Array<Promise<void>> = [];
  #paused = false;
  #closed = false;
  pauses = 0;

  constructor(options: {
    connection: NatsConnection;
    subjects: readonly string[];
    queue: string;
    maxInFlight: number;
    logger: Logger;
    onMessage: (message: Msg) => void;
  }) {
    this.#connection = options.connection;
    this.#subjects = options.subjects;
    this.#queue = options.queue;
    this.#onMessage = options.onMessage;
    this.#maxInFlight = options.maxInFlight;
    this.#lowWater = Math.max(0, Math.min(options.maxInFlight - 1, Math.floor(options.maxInFlight * 0.75)));
    this.#logger = options.logger;
  }

  get paused(): boolean {
    return this.#paused || this.#closed;
  }

  open(): void {
    this.#subscriptions = this.#subjects.map((subject) =>
      this.#connection.subscribe(subject, {
        queue: this.#queue,
        callback: (error, message) => {
          if (error !== null) {
            this.#logger.error({ err: error, subject }, 'request subscription error');
            return;
          }
          this.#onMessage(message);
        },
      }),
    );
  }

  /** Called after a request started: leave the queue group when full. */
  started(inFlight: number): void {
    if (this.#closed || this.#paused || inFlight < this.#maxInFlight) return;
    this.#paused = true;
    this.pauses++;
    this.#logger.warn(
      { in_flight: inFlight, max_in_flight: this.#maxInFlight },
      'at max_in_flight: not taking requests until some finish',
    );
    this.#leave();
  }

  /** Called after a request finished: join again at the low-water mark. */
  finished(inFlight: number): void {
    if (this.#closed || !this.#paused || inFlight > this.#lowWater) return;
    this.#paused = false;
    this.#logger.info({ in_flight: inFlight }, 'taking requests again');
    this.open();
  }

  #leave(): void {
    const subscriptions = this.#subscriptions;
    this.#subscriptions = [];
    for (const subscription of subscriptions) {
      if (subscription.isClosed()) continue;
      const drained = subscription.drain().catch((error: unknown) => {
        this.#logger.warn({ err: error }, 'request subscription drain failed');
      });
      this.#draining.push(drained);
    }
  }

  /** Stop taking requests for good; resolves when every message already sent to us was delivered. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#leave();
    await Promise.all(this.#draining);
  }
}
