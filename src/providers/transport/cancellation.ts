/**
 * Cancelling a request in progress, without Node's AbortController.
 *
 * A request passes two cancellation points: the worker's (client cancel,
 * client gone, shutdown) and each router attempt's (its timeout). With
 * AbortControllers that is two EventTargets per request, and creating them and
 * adding and removing their listeners is a visible share of a worker's CPU
 * (docs/bench/results.md). `Cancellation` does the same job with a plain
 * listener array: `aborted`, `reason`, `abort(reason)`, and the
 * `addEventListener('abort', …)` / `removeEventListener` pair, which is all
 * the request path uses, and all undici needs of a `signal` (it accepts any
 * object with `addEventListener`, and reads `aborted` and `reason`).
 *
 * `CancelSignal` is that shape: a real AbortSignal has it too, so callers
 * (and tests) may pass either.
 */

export type AbortListener = ((event: AbortEvent) => void) | { handleEvent(event: AbortEvent): void };

export interface AbortEvent {
  readonly type: string;
}

export interface CancelSignal {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: AbortListener, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: AbortListener): void;
}

const ABORT_EVENT: AbortEvent = Object.freeze({ type: 'abort' });

/** Both ends in one object: `abort()` for the owner, and itself as the signal handed out. */
export class Cancellation implements CancelSignal {
  #aborted = false;
  #reason: unknown = undefined;
  /** Usually one or two: the attempt, and undici while a call is under way. */
  #listeners: AbortListener[] | undefined;

  get aborted(): boolean {
    return this.#aborted;
  }

  get reason(): unknown {
    return this.#reason;
  }

  /** The signal side, as with an AbortController. */
  get signal(): CancelSignal {
    return this;
  }

  /** Aborts once (later calls do nothing) and calls every listener, each once, in the order added. */
  abort(reason?: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason ?? new DOMException('This operation was aborted', 'AbortError');
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners === undefined) return;
    for (const listener of listeners) {
      try {
        if (typeof listener === 'function') listener.call(this, ABORT_EVENT);
        else listener.handleEvent(ABORT_EVENT);
      } catch (error) {
        // As an EventTarget does: a throwing listener neither stops the others nor the caller.
        process.nextTick(() => {
          throw error;
        });
      }
    }
  }

  /** Listeners of an already aborted signal are never called (as with an AbortSignal). */
  addEventListener(type: 'abort', listener: AbortListener): void {
    if (type !== 'abort' || this.#aborted) return;
    const listeners = (this.#listeners ??= []);
    // The same listener twice is one listener, as with an EventTarget.
    if (!listeners.includes(listener)) listeners.push(listener);
  }

  removeEventListener(type: 'abort', listener: AbortListener): void {
    const listeners = this.#listeners;
    if (type !== 'abort' || listeners === undefined) return;
    const index = listeners.indexOf(listener);
    if (index !== -1) listeners.splice(index, 1);
  }
}
