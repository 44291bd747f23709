/**
 * Issue 21: slices of shared scopes. A microDAO or model limit is shared by every agent, so with one
 * record per scope every request would compare-and-swap the same NATS KV key. Instead each worker
 * holds a slice of such a scope (requests, tokens, micro-dollars, concurrency slots), taken from the
 * record with one compare-and-swap (policy.ts `exchangeSlice`), and admits locally against it.
 *
 * - A request the slice cannot cover waits for the scope's next exchange (one in flight per scope per
 *   worker); that exchange asks for the whole demand of the requests waiting, exactly, plus a
 *   prefetch: what the slice used in its last period (`ttl_ms`), at most 1/`slice_divisor` of the limit.
 *   A scope seeing no sustained demand (or a small limit: 1/64 of it below one unit) gets no prefetch
 *   and stays exact; one under load costs a write per period instead of one per request.
 * - The record counts whole slices, so over-admission is impossible (a slice is room the record
 *   granted); the slack is room a worker holds unused while another is refused: at most
 *   workers × (limit / slice_divisor) per dimension, and a slice's units are used up to `ttl_ms` after
 *   the record counted them.
 * - Unused room goes back when the period ends (a timer), when the budget window changes, and on close;
 *   settles (tokens or cost below the reservation, a freed slot) go back into the slice, locally: a
 *   settle never needs the store here. A slot in the record expires at the deadline of the latest
 *   request it was taken for plus `ttl_ms`, so the slots of a worker that died or lost the store free
 *   themselves.
 */
import {
  evaluateScope,
  isBudgetNear,
  type BudgetDimension,
  type BudgetWindows,
  type Charge,
  type Refusal,
  type ScopePlan,
  type ScopeState,
  type SliceExchange,
} from './policy.js';
import { LimitContentionError, type LimitStore } from './types.js';

export interface SliceOptions {
  /** The limiter's clock. */
  now: () => number;
  /** Length of a slice's period: unused room is given back after it. */
  ttlMs: number;
  /** The most prefetched beyond the waiting demand, as a share of the limit: 1 / divisor. */
  divisor: number;
  /** An exchange that failed in the background (a period's give-back): counted by the limiter. */
  onBackgroundError: (error: unknown) => void;
}

/** What one admission takes from a slice. */
export interface SliceHold {
  holder: SliceHolder;
  tokens: number;
  microUsd: number;
  day: string;
  month: string;
  slotId: string | undefined;
  /** Budgets of the scope at or above 90% used, as of the slice's last exchange. */
  nearlySpent: BudgetDimension[];
}

interface Needs {
  requests: number;
  tokens: number;
  microUsd: number;
  slot: boolean;
}

interface Waiter {
  charge: Charge;
  needs: Needs;
  scopeIndex: number;
  rounds: number;
  resolve: (outcome: SliceHold | Refusal[]) => void;
  reject: (error: unknown) => void;
}

/** Exchanges a waiter may sit through without being served before it is refused as contended. */
const MAX_ROUNDS = 3;

let holderSequence = 0;

/** This worker's slice of one shared scope. */
export class SliceHolder {
  private requests = 0;
  private tokens = 0;
  private microUsd = 0;
  private day = '';
  private month = '';
  private readonly slots = new Map<string, { until: number; busy: boolean }>();
  private slotSequence = 0;
  private readonly slotPrefix: string;
  private periodEndsAt = 0;
  private used: Needs & { slots: number } = { requests: 0, tokens: 0, microUsd: 0, slot: false, slots: 0 };
  private lastUsed: Needs & { slots: number } = { requests: 0, tokens: 0, microUsd: 0, slot: false, slots: 0 };
  private busySlots = 0;
  private near: BudgetDimension[] = [];
  private waiters: Waiter[] = [];
  private exchanging = false;

  constructor(
    readonly plan: ScopePlan,
    private readonly store: LimitStore & Required<Pick<LimitStore, 'exchange'>>,
    private readonly options: SliceOptions,
    owner: string,
  ) {
    holderSequence += 1;
    this.slotPrefix = `slice:${owner}:${holderSequence}:`;
  }

  private needsOf(charge: Charge): Needs {
    const limits = this.plan.limits;
    return {
      requests: limits.rpm === undefined ? 0 : 1,
      tokens: limits.tpm === undefined ? 0 : charge.tokens,
      microUsd: limits.dailyMicroUsd === undefined && limits.monthlyMicroUsd === undefined ? 0 : charge.microUsd,
      slot: limits.concurrent !== undefined,
    };
  }

  /** Take the charge from the slice, waiting for an exchange when it does not cover it; refusals when the scope has no room. */
  acquire(charge: Charge, scopeIndex: number): Promise<SliceHold | Refusal[]> {
    const needs = this.needsOf(charge);
    // Served from the slice only while no exchange is in flight and nobody waits: first come, first served.
    const local = this.exchanging || this.waiters.length > 0 ? undefined : this.tryLocal(charge, needs);
    if (local !== undefined) return Promise.resolve(local);
    return new Promise((resolve, reject) => {
      this.waiters.push({ charge, needs, scopeIndex, rounds: 0, resolve, reject });
      if (!this.exchanging) void this.run();
    });
  }

  private tryLocal(charge: Charge, needs: Needs): SliceHold | undefined {
    if (needs.microUsd > 0 && (this.day !== charge.windows.day || this.month !== charge.windows.month))
      return undefined;
    if (this.requests < needs.requests || this.tokens < needs.tokens || this.microUsd < needs.microUsd)
      return undefined;
    let slotId: string | undefined;
    if (needs.slot) {
      for (const [id, slot] of this.slots) {
        if (!slot.busy && slot.until >= charge.leaseUntil) {
          slotId = id;
          break;
        }
      }
      if (slotId === undefined) return undefined;
      (this.slots.get(slotId) as { busy: boolean }).busy = true;
      this.busySlots += 1;
      this.used.slots = Math.max(this.used.slots, this.busySlots);
    }
    this.requests -= needs.requests;
    this.tokens -= needs.tokens;
    this.microUsd -= needs.microUsd;
    this.used.requests += needs.requests;
    this.used.tokens += needs.tokens;
    this.used.microUsd += needs.microUsd;
    return {
      holder: this,
      tokens: needs.tokens,
      microUsd: needs.microUsd,
      day: charge.windows.day,
      month: charge.windows.month,
      slotId,
      nearlySpent: this.near,
    };
  }

  /**
   * Give a hold back into the slice: `requests` 1 for a rollback (another scope refused), `tokens` and
   * `microUsd` what went unused (negative: used beyond the reservation); the slot is freed. Local, never fails.
   */
  giveBack(hold: SliceHold, back: { requests: number; tokens: number; microUsd: number }): void {
    const limits = this.plan.limits;
    if (limits.rpm !== undefined) this.requests += back.requests;
    if (limits.tpm !== undefined) this.tokens += back.tokens;
    // Cost of a window this slice has since left stays charged to that window (only stricter).
    const budgeted = limits.dailyMicroUsd !== undefined || limits.monthlyMicroUsd !== undefined;
    if (budgeted && hold.day === this.day && hold.month === this.month) this.microUsd += back.microUsd;
    if (hold.slotId !== undefined) {
      const slot = this.slots.get(hold.slotId);
      if (slot?.busy === true) {
        slot.busy = false;
        this.busySlots -= 1;
      }
    }
  }

  /** Anything held that the record could have back (unused room, free slots). */
  private holdsSpare(): boolean {
    if (this.requests !== 0 || this.tokens !== 0 || this.microUsd !== 0) return true;
    for (const slot of this.slots.values()) if (!slot.busy) return true;
    return false;
  }

  /** The period is over: give everything unused back (the timer; close). */
  async flush(force = false): Promise<void> {
    if (this.exchanging || this.waiters.length > 0) return;
    if (!force && this.options.now() < this.periodEndsAt) return;
    if (!this.holdsSpare()) return;
    this.exchanging = true;
    try {
      await this.exchange([], true);
    } catch (error) {
      this.options.onBackgroundError(error);
    } finally {
      this.exchanging = false;
      if (this.waiters.length > 0) void this.run();
    }
  }

  private async run(): Promise<void> {
    this.exchanging = true;
    try {
      while (this.waiters.length > 0) {
        const batch = this.waiters.splice(0);
        let state: ScopeState;
        try {
          state = await this.exchange(batch, false);
        } catch (error) {
          for (const waiter of batch) waiter.reject(error);
          continue;
        }
        const retry: Waiter[] = [];
        for (const waiter of batch) {
          const hold = this.tryLocal(waiter.charge, waiter.needs);
          if (hold !== undefined) {
            waiter.resolve(hold);
            continue;
          }
          // Not covered: the record had no room for it (its refusal), or the room went to a waiter before it.
          const refusals = evaluateScope(
            state,
            this.plan.limits,
            waiter.charge,
            this.options.now(),
            waiter.scopeIndex,
          ).refusals;
          if (refusals.length > 0) waiter.resolve(refusals);
          else if (waiter.rounds + 1 >= MAX_ROUNDS)
            waiter.reject(new LimitContentionError(`the slice of ${this.plan.scope.key} could not be topped up`));
          else retry.push({ ...waiter, rounds: waiter.rounds + 1 });
        }
        this.waiters.unshift(...retry);
      }
    } finally {
      this.exchanging = false;
    }
  }

  /** One compare-and-swap: give back what the period no longer needs, take the batch's demand and the prefetch. */
  private async exchange(batch: Waiter[], giveAll: boolean): Promise<ScopeState> {
    const now = this.options.now();
    const limits = this.plan.limits;
    const periodOver = now >= this.periodEndsAt;
    const windows: BudgetWindows | undefined = batch[0]?.charge.windows;
    const windowChanged =
      windows !== undefined && (windows.day !== this.day || windows.month !== this.month) && this.day !== '';
    const giveRoom = giveAll || periodOver;
    const latest = Math.max(0, ...batch.map((waiter) => (waiter.needs.slot ? waiter.charge.leaseUntil : 0)));
    // Free slots that cannot serve the batch (expiring before its deadlines), or all free ones when giving back.
    const release: string[] = [];
    for (const [id, slot] of this.slots)
      if (!slot.busy && (giveRoom || (latest > 0 && slot.until < latest))) release.push(id);
    const give = {
      requests: giveRoom ? this.requests : 0,
      tokens: giveRoom ? this.tokens : 0,
      microUsd: giveRoom || windowChanged ? this.microUsd : 0,
      day: this.day,
      month: this.month,
      release,
    };
    const demand = { requests: 0, tokens: 0, microUsd: 0, slots: 0 };
    for (const waiter of batch) {
      demand.requests += waiter.needs.requests;
      demand.tokens += waiter.needs.tokens;
      demand.microUsd += waiter.needs.microUsd;
      if (waiter.needs.slot) demand.slots += 1;
    }
    const cap = (limit: number | undefined) => (limit === undefined ? 0 : Math.floor(limit / this.options.divisor));
    const budgetLimit = Math.min(
      limits.dailyMicroUsd ?? Number.POSITIVE_INFINITY,
      limits.monthlyMicroUsd ?? Number.POSITIVE_INFINITY,
    );
    // Prefetch only under sustained demand (the last period's use), never for a give-back alone.
    const prefetching = batch.length > 0;
    const keptRequests = giveRoom ? 0 : this.requests;
    const keptTokens = giveRoom ? 0 : this.tokens;
    const keptMicro = giveRoom || windowChanged ? 0 : this.microUsd;
    const top = (need: number, kept: number, last: number, limit: number | undefined) =>
      Math.max(0, need - Math.max(0, kept)) + (prefetching ? Math.min(cap(limit), last) : 0);
    // Slots: the waiting demand beyond the free slots kept, and under sustained demand up to the last
    // period's peak in flight held in all (busy or free), at most 1/divisor of the limit beyond demand.
    let freeKept = 0;
    for (const slot of this.slots.values()) if (!slot.busy) freeKept += 1;
    freeKept -= release.length;
    const slotsPrefetch = prefetching
      ? Math.min(cap(limits.concurrent), Math.max(0, this.lastUsed.slots - this.busySlots - freeKept - demand.slots))
      : 0;
    const slotsWanted = Math.max(0, demand.slots - freeKept) + slotsPrefetch;
    const slotIds: string[] = [];
    for (let index = 0; index < slotsWanted; index += 1) {
      this.slotSequence += 1;
      slotIds.push(`${this.slotPrefix}${this.slotSequence}`);
    }
    const exchange: SliceExchange = {
      give,
      want: {
        requests: top(demand.requests, keptRequests, this.lastUsed.requests, limits.rpm),
        tokens: top(demand.tokens, keptTokens, this.lastUsed.tokens, limits.tpm),
        microUsd: top(
          demand.microUsd,
          keptMicro,
          this.lastUsed.microUsd,
          Number.isFinite(budgetLimit) ? budgetLimit : undefined,
        ),
        slotIds,
        slotUntil: (latest > 0 ? latest : now) + this.options.ttlMs,
        windows: windows ?? { day: this.day, month: this.month, dayEndsAt: 0, monthEndsAt: 0 },
      },
    };
    if (batch.length === 0) {
      exchange.want.requests = 0;
      exchange.want.tokens = 0;
      exchange.want.microUsd = 0;
    }
    const { granted, state } = await this.store.exchange(this.plan, exchange, now);
    // Landed: what was given back is gone, what was granted is ours.
    this.requests = keptRequests + granted.requests;
    this.tokens = keptTokens + granted.tokens;
    this.microUsd = keptMicro + granted.microUsd;
    if (windows !== undefined) {
      this.day = windows.day;
      this.month = windows.month;
    }
    for (const id of release) this.slots.delete(id);
    for (const id of granted.slotIds) this.slots.set(id, { until: exchange.want.slotUntil, busy: false });
    if (periodOver || giveAll) {
      this.lastUsed = this.used;
      this.used = { requests: 0, tokens: 0, microUsd: 0, slot: false, slots: this.busySlots };
      this.periodEndsAt = now + this.options.ttlMs;
    }
    const near: BudgetDimension[] = [];
    if (windows !== undefined) {
      if (limits.dailyMicroUsd !== undefined && state.day === windows.day)
        if (isBudgetNear(state.day_used ?? 0, limits.dailyMicroUsd)) near.push('daily_usd');
      if (limits.monthlyMicroUsd !== undefined && state.month === windows.month)
        if (isBudgetNear(state.month_used ?? 0, limits.monthlyMicroUsd)) near.push('monthly_usd');
    }
    this.near = near;
    return state;
  }
}
