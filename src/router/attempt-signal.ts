import { ProxyError } from '../contract/errors.js';
import { Cancellation, type CancelSignal } from '../providers/transport/cancellation.js';

/** The reason to abort with when the caller's signal fires: its own reason when a ProxyError, else `cancelled`. */
export function callerAbortReason(signal: CancelSignal): ProxyError {
  const reason: unknown = signal.reason;
  return reason instanceof ProxyError
    ? reason
    : new ProxyError('cancelled', 'the request was cancelled', { cause: reason });
}

/**
 * The cancel signal of one attempt: fires with the caller's reason when the
 * caller aborts, and with an `upstream_timeout` ProxyError at the attempt's
 * deadline (the deployment's own timeout, or the request's deadline when that
 * comes first). `release()` must be called when the attempt is over, so that
 * no timer or listener outlives it.
 */
export class AttemptSignal {
  private readonly controller = new Cancellation();
  private timer: NodeJS.Timeout | undefined;
  private listening = false;
  /** Why the attempt was aborted, if it was. */
  abortedBy: 'caller' | 'timeout' | 'router' | undefined;

  /**
   * @param deploymentLabel `openai/gpt-4o`, for the timeout message.
   * @param requestBudgetMs the request's whole deadline when it, not the deployment's timeout, bounds this attempt; else -1.
   * @param timeoutBlamesDeployment whether running out of time counts as the deployment's failure.
   */
  constructor(
    private readonly callerSignal: CancelSignal,
    private readonly timeoutMs: number,
    private readonly deploymentLabel: string,
    private readonly requestBudgetMs: number,
    private readonly timeoutBlamesDeployment: boolean,
  ) {
    if (callerSignal.aborted) {
      this.abortedBy = 'caller';
      this.controller.abort(callerAbortReason(callerSignal));
      return;
    }
    // The object itself is the listener, and the timer gets it as an argument: no closure per attempt.
    callerSignal.addEventListener('abort', this, { once: true });
    this.listening = true;
    this.timer = setTimeout(fireTimeout, Math.max(0, timeoutMs), this);
  }

  get signal(): CancelSignal {
    return this.controller.signal;
  }

  /** Whether a failure of this attempt says something about the deployment: not when the caller went away or the router cut it. */
  get blamesDeployment(): boolean {
    if (this.abortedBy === undefined) return true;
    return this.abortedBy === 'timeout' && this.timeoutBlamesDeployment;
  }

  /** Abort the attempt now (e.g. a stream whose consumer left). */
  abort(reason: ProxyError): void {
    this.release();
    if (!this.controller.signal.aborted) {
      this.abortedBy = 'router';
      this.controller.abort(reason);
    }
  }

  release(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.listening) {
      this.callerSignal.removeEventListener('abort', this);
      this.listening = false;
    }
  }

  /** The caller's signal aborted. */
  handleEvent(): void {
    this.release();
    this.abortedBy = 'caller';
    this.controller.abort(callerAbortReason(this.callerSignal));
  }

  /** @internal The attempt's deadline passed. */
  timeout(): void {
    this.timer = undefined;
    this.release();
    this.abortedBy = 'timeout';
    const message =
      this.requestBudgetMs >= 0
        ? `${this.deploymentLabel}: no answer within the request's deadline (${Math.round(this.requestBudgetMs)} ms)`
        : `${this.deploymentLabel}: no answer within its timeout (${this.timeoutMs} ms)`;
    this.controller.abort(new ProxyError('upstream_timeout', message));
  }
}

function fireTimeout(signal: AttemptSignal): void {
  signal.timeout();
}

/** Wait `ms`, or reject with the caller's reason as soon as `signal` aborts. */
export function sleep(ms: number, signal: CancelSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(callerAbortReason(signal));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(callerAbortReason(signal));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
