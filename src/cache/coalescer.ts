import type { CacheKey } from './types.js';

/**
 * Request coalescing (issue 18): identical requests (same cache key) arriving together pay the
 * provider once.
 *
 * In one worker: the first caller (the leader) computes; the others await its promise, at most until
 * `maxWaitMs` after they arrived, then each computes on its own (a slow leader never holds them past
 * the bound). A leader that fails hands over: the waiting callers elect a new leader among them, within
 * what is left of their wait.
 *
 * Across workers (optional `claims` and a `lookup`): before computing, a leader claims the key in the
 * shared store (NatsKvCache.claim: KV `create` of `<key>.lock`, a claim older than `maxWaitMs` is
 * taken over). A leader that gets the claim computes (its `compute` stores the answer, as the normal
 * cache path does) then releases it; one that does not polls `lookup` (the shared cache) every
 * `pollMs` until the answer is there or `maxWaitMs` has passed, then computes on its own. A store
 * failure is a granted claim: the cache never stands between a request and its answer.
 */
export interface ClaimStore {
  claim(key: CacheKey, staleMs: number): Promise<boolean>;
  release(key: CacheKey): Promise<void>;
}

export interface CoalescerOptions {
  /** How long a caller waits for another's answer before computing its own; 0: never waits. */
  maxWaitMs: number;
  claims?: ClaimStore;
  /** How often a worker that lost the claim looks for the answer (default 100 ms). */
  pollMs?: number;
}

/** How a caller got its value. */
export type CoalesceRole =
  /** It computed (it was first, or coalescing is off). */
  | 'leader'
  /** It awaited another caller of this worker. */
  | 'joined'
  /** It found the answer another worker computed (cross-worker claim). */
  | 'shared'
  /** It waited past maxWaitMs (or every leader failed) and computed on its own. */
  | 'alone';

export interface Coalesced<T> {
  value: T;
  role: CoalesceRole;
}

interface Flight {
  promise: Promise<unknown>;
}

function keyId(key: CacheKey): string {
  return `${key.model}\u0000${key.hash}`;
}

const TIMED_OUT = Symbol('timed out');
const ABORTED = Symbol('aborted');

/** A waiting caller's cancellation (the worker's `CancelSignal`, or an AbortSignal). */
export interface WaitSignal {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: () => void): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** The promise's value, or TIMED_OUT after `ms`, or ABORTED as soon as `signal` is (a rejection passes through). */
function waitFor<T>(
  promise: Promise<T>,
  ms: number,
  signal: WaitSignal | undefined,
): Promise<T | typeof TIMED_OUT | typeof ABORTED> {
  if (signal?.aborted === true) return Promise.resolve(ABORTED);
  if (ms <= 0) return Promise.resolve(TIMED_OUT);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<typeof TIMED_OUT | typeof ABORTED>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), ms);
    if (signal !== undefined) {
      onAbort = () => resolve(ABORTED);
      signal.addEventListener('abort', onAbort);
    }
  });
  return Promise.race([promise, stop]).finally(() => {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class Coalescer {
  readonly #options: CoalescerOptions;
  readonly #flights = new Map<string, Flight>();

  constructor(options: CoalescerOptions) {
    this.#options = options;
  }

  /** Callers currently computing (one per key). */
  get inFlight(): number {
    return this.#flights.size;
  }

  /**
   * The value for `key`: computed by this caller, or by another one it waited for. `lookup` (the
   * shared cache's get) is used only with `claims`, to find another worker's answer.
   */
  run<T>(
    key: CacheKey,
    compute: () => Promise<T>,
    lookup?: () => Promise<T | undefined>,
    /** The caller's cancellation: a caller waiting for another's answer stops waiting at once (throws its reason). */
    signal?: WaitSignal,
  ): Promise<Coalesced<T>> {
    if (this.#options.maxWaitMs <= 0) return compute().then((value) => ({ value, role: 'leader' as const }));
    return this.#run(key, compute, lookup, Date.now() + this.#options.maxWaitMs, signal);
  }

  async #run<T>(
    key: CacheKey,
    compute: () => Promise<T>,
    lookup: (() => Promise<T | undefined>) | undefined,
    deadline: number,
    signal: WaitSignal | undefined,
  ): Promise<Coalesced<T>> {
    const id = keyId(key);
    const flight = this.#flights.get(id);
    if (flight !== undefined) {
      let outcome: T | typeof TIMED_OUT | typeof ABORTED;
      try {
        outcome = (await waitFor(flight.promise, deadline - Date.now(), signal)) as
          | T
          | typeof TIMED_OUT
          | typeof ABORTED;
      } catch {
        // The leader failed: the waiting callers elect another within what is left of their wait.
        if (signal?.aborted === true) throw signal.reason;
        if (Date.now() >= deadline) return { value: await compute(), role: 'alone' };
        return this.#run(key, compute, lookup, deadline, signal);
      }
      if (outcome === ABORTED) throw signal!.reason;
      if (outcome === TIMED_OUT) return { value: await compute(), role: 'alone' };
      return { value: outcome, role: 'joined' };
    }
    let role: CoalesceRole = 'leader';
    const lead = async (): Promise<T> => {
      const claims = this.#options.claims;
      if (claims === undefined || lookup === undefined) return compute();
      if (!(await claims.claim(key, this.#options.maxWaitMs))) {
        const pollMs = this.#options.pollMs ?? 100;
        while (Date.now() < deadline) {
          if (signal?.aborted === true) throw signal.reason;
          const found = await lookup();
          if (found !== undefined) {
            role = 'shared';
            return found;
          }
          await waitFor(sleep(Math.min(pollMs, Math.max(0, deadline - Date.now()))), pollMs + 1, signal);
        }
        if (signal?.aborted === true) throw signal.reason;
        role = 'alone';
        return compute();
      }
      try {
        return await compute();
      } finally {
        await claims.release(key).catch(() => undefined);
      }
    };
    const promise = lead();
    this.#flights.set(id, { promise });
    try {
      const value = await promise;
      return { value, role };
    } finally {
      if (this.#flights.get(id)?.promise === promise) this.#flights.delete(id);
    }
  }
}
