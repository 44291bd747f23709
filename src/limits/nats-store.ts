import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { isKvConflict } from '../bus/kv-conflict.js';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import {
  adjustScope,
  evaluateScope,
  restamped,
  withStamp,
  type Adjustment,
  type BudgetDimension,
  type Charge,
  type Refusal,
  type ScopeLimits,
  type ScopePlan,
  type ScopeState,
} from './policy.js';
import { LimitStoreError, type AdmitOutcome, type LimitStore, type NearlySpent } from './types.js';

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
/** Conflicts tolerated on one key before giving up; contention of hundreds of writers on one key still fits. */
const MAX_CAS_ATTEMPTS = 500;
/** Keys whose last revision is remembered (see `known`). */
const KNOWN_KEYS = 10_000;

export interface NatsStoreOptions {
  connection: NatsConnection;
  bucket: string;
  timeoutMs: number;
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
  const kvm = new Kvm(jetstream(options.connection, { timeout: options.timeoutMs }));
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
   * Read-decide-write one key until the write lands. `decide` returns the
   * state to write, the refusals (stop), or both (a refusal that still writes
   * the record's limits); the decision that landed is returned.
   */
  async function swap<D extends Decision>(key: string, decide: (state: ScopeState) => D): Promise<D> {
    let cached = known.get(key);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt += 1) {
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
          throw new LimitStoreError('NATS KV read failed', { cause: error });
        }
        revision = entry?.revision;
        state = decode(entry);
        if (entry !== null) remember(key, entry.revision, state);
      }
      const decision = decide(state);
      // A refusal is never based on the remembered state: it may hold usage refunded since.
      if (decision.refusals.length > 0 && fromCache) continue;
      if (decision.write === undefined) return decision;
      const value = JSON.stringify(decision.write);
      try {
        const written = revision === undefined ? await kv.create(key, value) : await kv.update(key, value, revision);
        remember(key, written, decision.write);
        return decision;
      } catch (error) {
        known.delete(key);
        // A refusal (from a fresh read) stands when writing its record's limits failed or lost a race:
        // that write is best effort, never retried; the next refusal or admission makes it.
        if (decision.refusals.length > 0) return { ...decision, write: undefined };
        // `create` on a key another worker just created fails with the same wrong-last-sequence code.
        if (!isConflict(error)) throw new LimitStoreError('NATS KV write failed', { cause: error });
        if (!fromCache) {
          options.onConflict?.();
          await backoff(attempt);
        }
      }
    }
    throw new LimitStoreError(`NATS KV key ${key} stayed contended for ${MAX_CAS_ATTEMPTS} attempts`);
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
