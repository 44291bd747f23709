import { ProxyError } from '../contract/errors.js';

/** The reason to abort with when the caller's signal fires: its own reason when a ProxyError, else `cancelled`. */
export function callerAbortReason(signal: AbortSignal): ProxyError {
  const reason: unknown = signal.reason;
  return reason instanceof ProxyError ? reason : new ProxyError('cancelled', 'the request was cancelled', { cause: reason });
}

/**
 * The AbortSignal of one attempt: fires with the caller's reason when the
 * caller aborts, and with an `upstream_timeout` ProxyError at the attempt's
 * deadline. `release()` must be called when the attempt is over, so that no
 * timer or listener outlives it.
 */
export class AttemptSignal {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private listening = false;

  constructor(
    private readonly callerSignal: AbortSignal,
    timeoutMs: number,
    /** What ran out, for the error message: `openai/gpt-4o (30000 ms)` or `the request's deadline`. */
    private readonly timeoutLabel: string,
  ) {
    if (callerSignal.aborted) {
      this.controller.abort(callerAbortReason(callerSignal));
      return;
    }
    callerSignal.addEventListener('abort', this.onCallerAbort, { once: true });
    this.listening = true;
    this.timer = setTimeout(this.onTimeout, Math.max(0, timeoutMs));
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Abort the attempt now (e.g. a stream its consumer left). */
  abort(reason: ProxyError): void {
    this.release();
    if (!this.controller.signal.aborted) this.controller.abort(reason);
  }

  release(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.listening) {
      this.callerSignal.removeEventListener('abort', this.onCallerAbort);
      this.listening = false;
    }
  }

  private readonly onCallerAbort = (): void => {
    this.release();
    this.controller.abort(callerAbortReason(this.callerSignal));
  };

  private readonly onTimeout = (): void => {
    this.timer = undefined;
    this.release();
    this.controller.abort(new ProxyError('upstream_timeout', `no answer within ${this.timeoutLabel}`));
  };
}

/** Wait `ms`, or reject with the caller's reason as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
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
