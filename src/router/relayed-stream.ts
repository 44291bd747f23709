import { asProxyError, ProxyError } from '../contract/errors.js';
import type { AttemptRecord } from '../contract/reply.js';
import type { ProviderStreamEvent } from '../providers/types.js';
import { recordUsage } from './attempt-usage.js';
import type { AttemptSignal } from './attempt-signal.js';
import type { DeploymentState } from './deployment-state.js';

/** A provider stream opened by the router, read up to its first content event. */
export interface OpenedStream {
  iterator: AsyncIterator<ProviderStreamEvent>;
  /** Events read before the router handed the stream over, in order. */
  buffered: ProviderStreamEvent[];
  /** The provider's stream ended within `buffered`. */
  ended: boolean;
  modelResolved: string | undefined;
}

export interface RelayContext {
  signal: AttemptSignal;
  state: DeploymentState;
  /** The successful attempt's record: tokens are filled in from the usage event. */
  record: AttemptRecord;
  attempts: AttemptRecord[];
  now: () => number;
}

/**
 * The events of the deployment that answered: the buffered ones, then the
 * rest from the provider. A failure after the hand-over is thrown from here
 * as a ProxyError carrying the attempts; there is no switch to another
 * deployment, because the agent may already have part of the answer. The
 * attempt's signal, timer and in-flight count are released whichever way
 * the stream ends (done, error, or `return()` by a consumer that stops early,
 * which works even before the first `next()`). A consumer must read it to the
 * end or call `return()`: until then the deployment counts the call in flight.
 */
export class RelayedStream implements AsyncIterableIterator<ProviderStreamEvent> {
  private index = 0;
  private finished = false;

  constructor(
    private readonly opened: OpenedStream,
    private readonly context: RelayContext,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  /**
   * Not an async method: an event already read is handed over with one resolved promise, and the
   * provider's next event with one `then` on its promise (handlers made once, in the fields below),
   * per streamed chunk.
   */
  next(): Promise<IteratorResult<ProviderStreamEvent>> {
    if (this.finished) return Promise.resolve({ done: true, value: undefined });
    const buffered = this.opened.buffered;
    if (this.index < buffered.length) return Promise.resolve(this.relay(buffered[this.index++] as ProviderStreamEvent));
    if (this.opened.ended) {
      this.finish();
      return Promise.resolve({ done: true, value: undefined });
    }
    let pending: Promise<IteratorResult<ProviderStreamEvent>>;
    try {
      pending = this.opened.iterator.next();
    } catch (thrown) {
      return Promise.reject(this.fail(thrown));
    }
    return pending.then(this.onNext, this.onError);
  }

  private readonly onNext = (next: IteratorResult<ProviderStreamEvent>): IteratorResult<ProviderStreamEvent> => {
    if (next.done === true) {
      this.finish();
      return next;
    }
    return this.relay(next.value);
  };

  private readonly onError = (thrown: unknown): never => {
    throw this.fail(thrown);
  };

  /** The consumer stops early (the agent went away): abort the upstream call. */
  async return(): Promise<IteratorResult<ProviderStreamEvent>> {
    if (!this.finished) {
      this.finish();
      this.context.signal.abort(new ProxyError('cancelled', 'the stream was closed before its end'));
      await this.opened.iterator.return?.().catch(() => undefined);
    }
    return { done: true, value: undefined };
  }

  private relay(event: ProviderStreamEvent): IteratorResult<ProviderStreamEvent> {
    if (event.type === 'usage') recordUsage(this.context.record, event.usage);
    return { done: false, value: event };
  }

  private fail(thrown: unknown): ProxyError {
    const error = asProxyError(thrown);
    this.finish();
    this.context.record.error_code = error.code;
    if (error.retryable && error.code !== 'cancelled' && this.context.signal.blamesDeployment) {
      this.context.state.recordFailure(this.context.now(), error);
    }
    error.attempts = this.context.attempts;
    return error;
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.context.signal.release();
    this.context.state.inFlight--;
  }
}
