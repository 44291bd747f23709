import { jsOptions } from '../bus/jetstream-domain.js';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { isKvConflict } from '../bus/kv-conflict.js';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import {
  adjustScope,
  evaluateScope,
  exchangeSlice,
  restamped,
  withStamp,
  type Adjustment,
  type BudgetDimension,
  type Charge,
  type Refusal,
  type ScopeLimits,
  type ScopePlan,
  type ScopeState,
  type SliceExchange,
  type SliceGrant,
} from './policy.js';
import {
  LimitContentionError,
  LimitStoreError,
  type AdmitOutcome,
  type LimitStore,
  type NearlySpent,
} from './types.js';

/**
 * Limits shared by every worker through a JetStream KV bucket (no second
 * system to run). One key per scope holds the whole record (policy.ts) as
 * JSON, changed only by compare-and-swap: read the key and its revision,
 * apply the rules, `update(key, value, revision)` (or `create` for a new
 * key); a conflict means another worker wrote first, so read again and
 * re-decide. Each scope's own limits are therefore exact.
 *
 * A request touching several scopes (agent, microDAO, model) charges them
 * one after another and, when a later one refuses, rolls back what was
 * charged. That never admits too much: every scope checked its own limit
 * atomically. The price is that, for the few milliseconds between a charge
 * and its rollback, another request on the same scope can be refused for
 * room that is then given back (a false refusal, never a false admission).
 *
 * Server 2.9 has no per-key TTL: budgets live in windows named inside the
 * record (a new day starts from zero), and the bucket's max age (35 days,
 * longer than any window) removes the records of scopes gone quiet.
 *
 * The record also carries the limits it was counted against (`limits`,
 * policy.ts `RecordedLimits`), written by the same compare-and-swap when
 * they change: what `llm-proxy limits` measures against. A refusal writes
 * them once, best effort (a lost race leaves them to the next request).
 */
export const NATS_BUCKET_MAX_AGE_MS = 35 * 24 * 3_600_000;
/** Conflicts tolerated on one key before giving up (each worker has one write in flight per key: few writers). */
const MAX_CAS_ATTEMPTS = 500;
/** Operations on one key folded into one write at most (a bound on the record work done per round trip). */
const MAX_BATCH = 256;
/** Keys whose last revision is remembered (see `known`). */
const KNOWN_KEYS = 10_000;

export interface NatsStoreOptions {
  connection: NatsConnection;
  bucket: string;
  timeoutMs: number;
  /**
   * How long an operation may wait for its key (queued behind this worker's write in flight, then
   * retried on conflicts with other workers) before it gives up with a LimitContentionError;
   * default: timeoutMs.
   */
  contentionBoundMs?: number;
  onConflict?: () => void;
  /** A rollback that could not be written (counted by the limiter; the charge stays, which only admits less). */
  onRollbackFailure?: (error: unknown) => void;
}

const isConflict = isKvConflict;

/** What one read-decide-write settles on: a state to write, refusals, or both. */
interface Decision {
  write: ScopeState | undefined;
  refusals: Refusal[];
}

interface AdmitDecision extends Decision {
  nearlySpent: BudgetDimension[];
}

interface ExchangeDecision extends Decision {
  granted: SliceGrant;
  state: ScopeState;
}

/** An operation waiting for its key's next write. */
interface PendingOp {
  decide: (state: ScopeState) => Decision;
  resolve: (decision: Decision) => void;
  reject: (error: unknown) => void;
  /** Date.now() after which it is answered as contended. */
  giveUpAt: number;
}

interface KeyQueue {
  pending: PendingOp[];
  /** A write (or its retries) is in flight for this key. */
  running: boolean;
}

function decode(entry: KvEntry | null): ScopeState {
  if (entry === null || entry.operation !== 'PUT' || entry.length === 0) return {};
  return entry.json<ScopeState>();
}

/** Random, growing pause after a conflict so that writers on one key spread out. */
function backoff(attempt: number): Promise<void> {
  const ceiling = Math.min(20, 1 + attempt);
  return new Promise((resolve) => setTimeout(resolve, Math.random() * ceiling));
}

/**
 * Open the bucket, creating it if it is missing. Workers started together
 * race here: the client asks for the stream's info, then adds it, and the
 * loser of two adds, or a JetStream still electing its leader after a
 * restart, fails where a second try a moment later finds the bucket. So a
 * failure is tried again, up to OPEN_ATTEMPTS times, before the worker is
 * told; the last error is named in the message, the whole one is the cause.
 */
const OPEN_ATTEMPTS = 3;
const OPEN_RETRY_PAUSE_MS = 200;

async function openBucket(options: NatsStoreOptions): Promise<KV> {
  const kvm = new Kvm(jetstream(options.connection, { ...jsOptions(options.connection), timeout: options.timeoutMs }));
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await kvm.create(options.bucket, { history: 1, ttl: NATS_BUCKET_MAX_AGE_MS, timeout: options.timeoutMs });
    } catch (error) {
      if (attempt >= OPEN_ATTEMPTS || options.connection.isClosed()) {
        const reason = error instanceof Error ? error.message : String(error);
        throw new LimitStoreError(`cannot open the NATS KV bucket "${options.bucket}": ${reason}`, { cause: error });
      }
      await new Promise((resolve) => setTimeout(resolve, OPEN_RETRY_PAUSE_MS * attempt));
    }
  }
}

export async function createNatsStore(options: NatsStoreOptions): Promise<LimitStore> {
  const kv = await openBucket(options);
  const contentionBoundMs = options.contentionBoundMs ?? options.timeoutMs;

  /**
   * The last revision of a key this store read or wrote, with its state. A
   * write based on it skips the read (one round trip instead of two: a
   * settle after this worker's own admission, an agent that comes back to
   * the same worker). Being stale costs nothing but a conflict: the revision
   * check refuses the write and the key is read afresh. A refusal is never
   * based on it, since a stale record may hold usage refunded since.
   */
  const known = new Map<string, { revision: number; state: ScopeState }>();
  const remember = (key: string, revision: number, state: ScopeState) => {
    known.delete(key);
    known.set(key, { revision, state });
    if (known.size > KNOWN_KEYS) known.delete(known.keys().next().value as string);
  };

  /**
   * Issue 21: one compare-and-swap in flight per key in this worker. Operations on a key (admissions,
   * settles, rollbacks) that arrive while its write is in flight wait in the key's queue and go, all
   * of them, into the next write: one read-decide-write applies them in arrival order, each deciding
   * on the state the previous one left (so each is exact), and lands or fails as one. A hot key (a
   * model or microDAO limit shared by every agent) thus costs one write per round trip per worker,
   * whatever the number of requests in flight, and conflicts happen only between workers.
   */
  const queues = new Map<string, KeyQueue>();

  function swap<D extends Decision>(key: string, decide: (state: ScopeState) => D): Promise<D> {
    return new Promise<D>((resolve, reject) => {
      let queue = queues.get(key);
      if (queue === undefined) {
        queue = { pending: [], running: false };
        queues.set(key, queue);
      }
      queue.pending.push({
        decide,
        resolve: resolve as (decision: Decision) => void,
        reject,
        giveUpAt: Date.now() + contentionBoundMs,
      });
      if (!queue.running) void drain(key, queue);
    });
  }

  async function drain(key: string, queue: KeyQueue): Promise<void> {
    queue.running = true;
    try {
      while (queue.pending.length > 0) {
        const batch = queue.pending.splice(0, MAX_BATCH);
        try {
          await commit(key, batch);
        } catch (error) {
          // Not expected (commit answers every operation); a promise must never be left pending.
          for (const op of batch) op.reject(new LimitStoreError('NATS KV write failed', { cause: error }));
        }
      }
    } finally {
      queue.running = false;
      if (queue.pending.length === 0) queues.delete(key);
      else void drain(key, queue);
    }
  }

  /** Read-decide-write one key for a batch of operations until the write lands, or each gives up. */
  async function commit(key: string, batch: PendingOp[]): Promise<void> {
    let cached = known.get(key);
    let live = batch;
    for (let attempt = 0; ; attempt += 1) {
      // An operation past its bound is answered as contended, never left waiting (nor an `internal`).
      const now = Date.now();
      const expired = live.filter((op) => op.giveUpAt <= now || attempt >= MAX_CAS_ATTEMPTS);
      if (expired.length > 0) {
        const error = new LimitContentionError(
          `NATS KV key ${key} stayed contended for ${contentionBoundMs} ms (${attempt} attempts)`,
        );
        for (const op of expired) op.reject(error);
        live = live.filter((op) => !expired.includes(op));
        if (live.length === 0) return;
      }
      let revision: number | undefined;
      let state: ScopeState;
      const fromCache = cached !== undefined;
      if (cached !== undefined) {
        ({ revision, state } = cached);
        cached = undefined;
      } else {
        let entry: KvEntry | null;
        try {
          entry = await kv.get(key);
        } catch (error) {
          const failure = new LimitStoreError('NATS KV read failed', { cause: error });
          for (const op of live) op.reject(failure);
          return;
        }
        revision = entry?.revision;
        state = decode(entry);
        if (entry !== null) remember(key, entry.revision, state);
      }
      let next = state;
      let changed = false;
      let refusedOnCache = false;
      const decisions: Decision[] = [];
      for (const op of live) {
        let decision: Decision;
        try {
          decision = op.decide(next);
        } catch (error) {
          decision = { write: undefined, refusals: [] };
          op.reject(error);
        }
        // A refusal is never based on the remembered state: it may hold usage refunded since.
        if (decision.refusals.length > 0 && fromCache) {
          refusedOnCache = true;
          break;
        }
        decisions.push(decision);
        if (decision.write !== undefined) {
          next = decision.write;
          changed = true;
        }
      }
      if (refusedOnCache) continue;
      if (!changed) {
        for (const [index, op] of live.entries()) op.resolve(decisions[index] as Decision);
        return;
      }
      try {
        const value = JSON.stringify(next);
        const written = revision === undefined ? await kv.create(key, value) : await kv.update(key, value, revision);
        remember(key, written, next);
        for (const [index, op] of live.entries()) op.resolve(decisions[index] as Decision);
        return;
      } catch (error) {
        known.delete(key);
        // `create` on a key another worker just created fails with the same wrong-last-sequence code.
        if (!isConflict(error)) {
          const failure = new LimitStoreError('NATS KV write failed', { cause: error });
          for (const op of live) op.reject(failure);
          return;
        }
        if (!fromCache) {
          options.onConflict?.();
          await backoff(attempt);
        }
      }
    }
  }

  async function readStates(plans: ScopePlan[]): Promise<ScopeState[]> {
    try {
      return await Promise.all(plans.map(async (plan) => decode(await kv.get(plan.scope.key))));
    } catch (error) {
      throw new LimitStoreError('NATS KV read failed', { cause: error });
    }
  }

  async function adjustOne(key: string, limits: ScopeLimits, adjustment: Adjustment, now: () => number): Promise<void> {
    await swap(key, (state) => ({ write: adjustScope(state, limits, adjustment, now()), refusals: [] }));
  }

  return {
    async admit(plans: ScopePlan[], charge: Charge, now: number): Promise<AdmitOutcome> {
      const charged: ScopePlan[] = [];
      const nearlySpent: NearlySpent[] = [];
      let refusals: Refusal[] = [];
      try {
        for (const [index, plan] of plans.entries()) {
          const decision = await swap(plan.scope.key, (state): AdmitDecision => {
            const evaluation = evaluateScope(state, plan.limits, charge, now, index);
            if (evaluation.refusals.length === 0)
              return {
                write: withStamp(evaluation.next, plan.stamp, now),
                refusals: [],
                nearlySpent: evaluation.nearlySpent,
              };
            return { write: restamped(state, plan.stamp, now), refusals: evaluation.refusals, nearlySpent: [] };
          });
          refusals = decision.refusals;
          if (refusals.length > 0) break;
          charged.push(plan);
          for (const dimension of decision.nearlySpent) nearlySpent.push({ scopeIndex: index, dimension });
        }
      } catch (error) {
        await rollBack(charged, charge, now);
        throw error;
      }
      if (refusals.length === 0) return { admitted: true, nearlySpent };
      await rollBack(charged, charge, now);
      // The scopes after the refusing one were not looked at: their refusals too, so that the
      // decisive one (a budget before a rate) is the same as with the other stores.
      const unchecked = plans.slice(charged.length + 1);
      if (unchecked.length > 0) {
        const states = await readStates(unchecked).catch((): ScopeState[] => []);
        states.forEach((state, offset) => {
          const index = charged.length + 1 + offset;
          refusals.push(...evaluateScope(state, (plans[index] as ScopePlan).limits, charge, now, index).refusals);
        });
      }
      return { admitted: false, refusals };
    },

    async adjust(plans: ScopePlan[], adjustment: Adjustment, now: number): Promise<void> {
      for (const plan of plans) await adjustOne(plan.scope.key, plan.limits, adjustment, () => now);
    },

    read: readStates,

    async exchange(plan: ScopePlan, exchange: SliceExchange, now: number) {
      const decision = await swap(plan.scope.key, (state): ExchangeDecision => {
        const { next, granted } = exchangeSlice(state, plan.limits, exchange, now);
        const write = withStamp(next, plan.stamp, now);
        return { write, refusals: [], granted, state: write };
      });
      return { granted: decision.granted, state: decision.state };
    },

    async close(): Promise<void> {
      // The connection belongs to the caller.
    },
  };

  /** Undo the charges of an admission that a later scope refused (best effort when the store fails). */
  async function rollBack(charged: ScopePlan[], charge: Charge, now: number): Promise<void> {
    const undo: Adjustment = {
      requestsDelta: -1,
      tokensDelta: -charge.tokens,
      microUsdDelta: -charge.microUsd,
      day: charge.windows.day,
      month: charge.windows.month,
      releaseRequestId: charge.requestId,
    };
    for (const plan of charged.reverse()) {
      try {
        await adjustOne(plan.scope.key, plan.limits, undo, () => now);
      } catch (error) {
        options.onRollbackFailure?.(error);
      }
    }
  }
}
