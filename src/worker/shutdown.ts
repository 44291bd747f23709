import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Service } from '@nats-io/services';
import { ProxyError } from '../contract/errors.js';
import type { Logger } from '../telemetry/logger.js';
import type { UsagePublisher } from '../usage/publisher.js';
import type { WorkerCounters } from './counters.js';
import type { RequestIntake } from './intake.js';
import type { RequestPipeline } from './pipeline.js';

export interface ShutdownReport {
  /** Requests in flight when stop began. */
  inFlightAtStop: number;
  /** Requests still running at the drain timeout, then aborted (each still answered). */
  aborted: number;
  /** Usage events not acked by the end (logged in full). */
  unpublishedEvents: number;
}

/** Resolves the waiters of `waitForIdle` when the last request in flight is done. */
export class IdleWatch {
  #waiters: Array<() => void> = [];

  constructor(private readonly counters: Pick<WorkerCounters, 'inFlight'>) {}

  /** Call after each request is done. */
  requestDone(): void {
    if (this.counters.inFlight !== 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const resolve of waiters) resolve();
  }

  /** True once nothing is in flight, false when `timeoutMs` passed first. */
  waitForIdle(timeoutMs: number): Promise<boolean> {
    if (this.counters.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}

export interface ShutdownParts {
  connection: NatsConnection;
  ownsConnection: boolean;
  intake: RequestIntake;
  service: Service;
  cancelSubscription: Subscription;
  /** `llm.proxy.nodes`: closed with the service, so that a stopping worker's models leave `llm-proxy models` at once. */
  nodesSubscription?: Subscription;
  pipeline: Pick<RequestPipeline, 'abortAll'>;
  counters: WorkerCounters;
  idle: IdleWatch;
  publisher: UsagePublisher;
  /** What else the worker made and must close (the limiter, the provider pools), in order; failures are logged. */
  closers: Array<{ name: string; close: () => Promise<void> }>;
  drainTimeoutMs: number;
  logger: Logger;
}

export interface Shutdown {
  /** Graceful stop; idempotent. */
  stop(options?: { drainTimeoutMs?: number }): Promise<ShutdownReport>;
  /** Resolves when the worker stopped (through `stop()` or because its connection closed). */
  readonly stopped: Promise<ShutdownReport>;
}

/**
 * The worker's stop. Order matters (NATS-NOTES, "Shutdown"): `drain()` would finish dispatched
 * callbacks but not the async work they started. So: leave the queue group (drain the request
 * subscription), stop the service, finish the requests in flight (abort them at the drain timeout:
 * each is still answered), publish their usage events, close what the worker made, and only then
 * drain the connection. A connection that closes for good stops the worker too.
 */
export function createShutdown(parts: ShutdownParts): Shutdown {
  const { connection, counters, idle, logger } = parts;
  let stopping: Promise<ShutdownReport> | undefined;
  let resolveStopped!: (report: ShutdownReport) => void;
  const stopped = new Promise<ShutdownReport>((resolve) => (resolveStopped = resolve));

  const stop = (options: { drainTimeoutMs?: number } = {}): Promise<ShutdownReport> => {
    stopping ??= (async () => {
      const drainTimeoutMs = options.drainTimeoutMs ?? parts.drainTimeoutMs;
      const inFlightAtStop = counters.inFlight;
      logger.info(
        { in_flight: inFlightAtStop, drain_timeout_ms: drainTimeoutMs },
        'stopping: no new requests; finishing those in flight',
      );
      if (!connection.isClosed()) {
        await parts.intake.close();
        await parts.service.stop().catch(() => undefined);
      }
      if (parts.nodesSubscription !== undefined && !parts.nodesSubscription.isClosed())
        parts.nodesSubscription.unsubscribe();
      let aborted = 0;
      if (!(await idle.waitForIdle(drainTimeoutMs))) {
        aborted = counters.inFlight;
        logger.warn({ in_flight: aborted }, 'drain timeout: aborting the requests still running');
        parts.pipeline.abortAll(
          new ProxyError('no_provider_available', 'the worker is shutting down', { retryable: true }),
        );
        await idle.waitForIdle(5_000);
      }
      if (!parts.cancelSubscription.isClosed()) parts.cancelSubscription.unsubscribe();
      const unpublishedEvents = connection.isClosed() ? parts.publisher.pending : await parts.publisher.flush(10_000);
      parts.publisher.close();
      for (const closer of parts.closers) {
        await closer.close().catch((error: unknown) => logger.warn({ err: error }, `closing ${closer.name} failed`));
      }
      if (parts.ownsConnection && !connection.isClosed()) await connection.drain().catch(() => undefined);
      const report: ShutdownReport = { inFlightAtStop, aborted, unpublishedEvents };
      logger.info(report, 'worker stopped');
      resolveStopped(report);
      return report;
    })();
    return stopping;
  };

  void connection.closed().then((error) => {
    if (stopping !== undefined) return;
    logger.error({ err: error }, 'NATS connection closed; the worker stops');
    void stop({ drainTimeoutMs: 0 });
  });

  return { stop, stopped };
}
