import type { ErrorCode } from '../contract/errors.js';
import type { Limiter } from '../limits/index.js';
import type { UsagePublisherCounters } from '../usage/publisher.js';

/**
 * The worker's own counters. The service framework times only the
 * synchronous part of a handler and counts only thrown errors, so it cannot
 * see an LLM call; these are what `$SRV.STATS` reports in each endpoint's
 * `data` and what `Worker.stats()` returns.
 */
export interface WorkerStats {
  worker_id: string;
  started: string;
  /** Requests received on the request subject (chat and streams, refused ones included). */
  requests: number;
  /** Requests answered with a reply (not an error). */
  ok: number;
  /** Requests answered with an error reply (any code). */
  errors: number;
  /** Error replies by code. */
  by_code: Partial<Record<ErrorCode, number>>;
  streams: number;
  cache_hits: number;
  in_flight: number;
  /** The highest in_flight seen since start. */
  in_flight_peak: number;
  max_in_flight: number;
  /** True while the worker has stopped taking requests (at max_in_flight, or shutting down). */
  paused: boolean;
  /** Times the worker stopped taking requests because it was full. */
  pauses: number;
  models_requests: number;
  cancels: number;
  /** Cancels refused for a missing or wrong secret. */
  cancels_refused: number;
  /** Requests for a model this worker does not serve, passed on to the workers that do (issue 19). */
  forwarded: number;
  usage_events: {
    published: number;
    duplicates: number;
    failed_attempts: number;
    pending: number;
    dropped: number;
    dead_lettered: number;
  };
  /** Present when limits are on: admissions, refusals and store errors (fail-open/closed decisions). */
  limits?: {
    backend: string;
    admitted: number;
    refused: number;
    storeErrors: number;
    failedOpen: number;
    failedClosed: number;
    conflicts: number;
    /** Admissions refused `rate_limited` because a scope's key stayed contended (also in `refused`). */
    contended: number;
    /** Refusals by the refusing scope's kind and dimension (`agent:rpm`, `microdao:daily_usd`…). */
    refusedBy: Record<string, number>;
    /** Admissions after which a USD budget was at least 90% used, keyed like refusedBy. */
    budgetNear: Record<string, number>;
  };
}

export class WorkerCounters {
  requests = 0;
  ok = 0;
  errors = 0;
  byCode: Partial<Record<ErrorCode, number>> = {};
  streams = 0;
  cacheHits = 0;
  inFlight = 0;
  inFlightPeak = 0;
  pauses = 0;
  modelsRequests = 0;
  cancels = 0;
  cancelsRefused = 0;
  forwarded = 0;
  /** Requests being passed on to another worker now (in `inFlight` too, but not in the intake's capacity). */
  relaying = 0;

  started(): void {
    this.requests++;
    this.inFlight++;
    if (this.inFlight > this.inFlightPeak) this.inFlightPeak = this.inFlight;
  }

  /** A request passed on to a worker that serves its model (counted in `requests` and `forwarded`). */
  handedOver(): void {
    this.inFlight--;
    this.forwarded++;
  }

  finished(errorCode: ErrorCode | undefined): void {
    this.inFlight--;
    if (errorCode === undefined) {
      this.ok++;
      return;
    }
    this.errors++;
    this.byCode[errorCode] = (this.byCode[errorCode] ?? 0) + 1;
  }
}

/** The worker's STATS `data` (`$SRV.STATS`): its own counters, the intake's, the publisher's and the limiter's. */
export function workerStats(parts: {
  workerId: string;
  startedAt: string;
  counters: WorkerCounters;
  maxInFlight: number;
  intake: { paused: boolean; pauses: number };
  publisher: { counters: UsagePublisherCounters };
  limiter: Pick<Limiter, 'backend' | 'counters'> | undefined;
}): WorkerStats {
  const { counters, publisher, limiter } = parts;
  return {
    worker_id: parts.workerId,
    started: parts.startedAt,
    requests: counters.requests,
    ok: counters.ok,
    errors: counters.errors,
    by_code: { ...counters.byCode },
    streams: counters.streams,
    cache_hits: counters.cacheHits,
    in_flight: counters.inFlight,
    in_flight_peak: counters.inFlightPeak,
    max_in_flight: parts.maxInFlight,
    paused: parts.intake.paused,
    pauses: parts.intake.pauses,
    models_requests: counters.modelsRequests,
    cancels: counters.cancels,
    cancels_refused: counters.cancelsRefused,
    forwarded: counters.forwarded,
    usage_events: {
      published: publisher.counters.published,
      duplicates: publisher.counters.duplicates,
      failed_attempts: publisher.counters.failedAttempts,
      pending: publisher.counters.pending,
      dropped: publisher.counters.dropped,
      dead_lettered: publisher.counters.deadLettered,
    },
    ...(limiter === undefined ? {} : { limits: { backend: limiter.backend, ...limiter.counters() } }),
  };
}
