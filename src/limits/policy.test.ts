import { test } from 'node:test';
import assert from 'node:assert/strict';
import { limitsSchema } from '../config/limits-schema.js';
import {
  adjustScope,
  budgetWindows,
  decisiveRefusal,
  describeScope,
  encodeKeyToken,
  evaluateScope,
  isIdle,
  plansFor,
  toMicroUsd,
  type Charge,
  type ScopeState,
} from './policy.js';

const NOW = Date.UTC(2026, 10, 27, 21, 0, 0);

function charge(overrides: Partial<Charge> = {}): Charge {
  return {
    requestId: 'r-1',
    tokens: 100,
    microUsd: 1_000,
    leaseUntil: NOW + 60_000,
    windows: budgetWindows(NOW),
    ...overrides,
  };
}

test('scope keys are valid NATS KV tokens and keep ids apart', () => {
  assert.equal(encodeKeyToken('agent:sofia'), 'agent=3Asofia');
  assert.equal(encodeKeyToken('a.b'), 'a=2Eb');
  assert.equal(encodeKeyToken('a=3Ab'), 'a=3D3Ab');
  assert.equal(encodeKeyToken('ü'), '=C3=BC');
  for (const id of ['agent:sofia', 'x y', '*', '>', 'gpt-4.1-mini', ''])
    assert.match(encodeKeyToken(id), /^[-_=A-Za-z0-9]+$/);
});

test('budget windows are UTC days and months, ending at the next midnight / first of the month', () => {
  const windows = budgetWindows(Date.UTC(2026, 11, 31, 23, 59, 59));
  assert.equal(windows.day, '2026-12-31');
  assert.equal(windows.month, '2026-12');
  assert.equal(windows.dayEndsAt, Date.UTC(2027, 0, 1));
  assert.equal(windows.monthEndsAt, Date.UTC(2027, 0, 1));
});

test('micro-dollars: reservations round up, real costs to nearest, float noise ignored', () => {
  assert.equal(toMicroUsd(0.0001 * 3, 'up'), 300);
  assert.equal(toMicroUsd(0.0000011, 'up'), 2);
  assert.equal(toMicroUsd(0.0000011, 'nearest'), 1);
  assert.equal(toMicroUsd(-1, 'up'), 0);
  assert.equal(toMicroUsd(Number.NaN, 'nearest'), 0);
});

test('plans: default applies per agent, agents override it (null removes a limit), microDAO and model only when configured', () => {
  const config = limitsSchema.parse({
    default: { tpm: 1_000 },
    agents: { 'agent:batch': { rpm: null, daily_usd: 2 } },
    microdaos: { 'microdao:7': { rpm: 100 } },
    models: { big: { concurrent: 2 } },
  });
  const seed = plansFor(config, { agentId: 'agent:sofia', microdaoId: 'microdao:1', model: 'small' });
  assert.deepEqual(
    seed.map((plan) => [plan.scope.key, plan.limits]),
    [['agent.agent=3Asofia', { rpm: 10, tpm: 1_000 }]],
  );
  const batch = plansFor(config, { agentId: 'agent:batch', microdaoId: 'microdao:7', model: 'big' });
  assert.deepEqual(
    batch.map((plan) => [plan.scope.kind, plan.limits]),
    [
      ['agent', { tpm: 1_000, dailyMicroUsd: 2_000_000 }],
      ['microdao', { rpm: 100 }],
      ['model', { concurrent: 2 }],
    ],
  );
  assert.equal(
    plansFor(config, { agentId: undefined, microdaoId: undefined, model: undefined })[0]?.scope.id,
    'anonymous',
  );
  assert.deepEqual(
    plansFor(limitsSchema.parse({ default: { rpm: null } }), { agentId: 'a', microdaoId: undefined, model: undefined }),
    [],
  );
});

test('GCRA requests/minute: a burst of the limit, then one every 60/limit seconds, with an exact retry_after', () => {
  let state: ScopeState = {};
  for (let index = 0; index < 10; index += 1) {
    const evaluation = evaluateScope(state, { rpm: 10 }, charge(), NOW, 0);
    assert.deepEqual(evaluation.refusals, []);
    state = evaluation.next;
  }
  const refused = evaluateScope(state, { rpm: 10 }, charge(), NOW, 0);
  assert.equal(refused.refusals[0]?.dimension, 'rpm');
  assert.equal(refused.refusals[0]?.retryAfterMs, 6_000);
  assert.deepEqual(evaluateScope(state, { rpm: 10 }, charge(), NOW + 5_999, 0).refusals.length, 1);
  assert.deepEqual(evaluateScope(state, { rpm: 10 }, charge(), NOW + 6_000, 0).refusals, []);
  assert.deepEqual(
    describeScope(state, { rpm: 10 }, NOW).map((row) => [row.used, row.remaining, row.resetsInMs]),
    [[10, 0, 60_000]],
  );
});

test('tokens/minute: reserve, then settle lower gives the unused tokens back; a request above the limit never fits', () => {
  const limits = { tpm: 1_000 };
  let state: ScopeState = {};
  for (let index = 0; index < 3; index += 1) state = evaluateScope(state, limits, charge({ tokens: 300 }), NOW, 0).next;
  const fourth = evaluateScope(state, limits, charge({ tokens: 300 }), NOW, 0);
  assert.equal(fourth.refusals[0]?.dimension, 'tpm');
  assert.ok(Math.abs((fourth.refusals[0]?.retryAfterMs ?? 0) - 12_000) < 1e-6);
  for (let index = 0; index < 3; index += 1) {
    state = adjustScope(
      state,
      limits,
      { requestsDelta: 0, tokensDelta: -250, microUsdDelta: 0, day: '', month: '', releaseRequestId: undefined },
      NOW,
    );
  }
  assert.equal(describeScope(state, limits, NOW)[0]?.used, 150);
  assert.deepEqual(evaluateScope(state, limits, charge({ tokens: 300 }), NOW, 0).refusals, []);
  const tooBig = evaluateScope({}, limits, charge({ tokens: 1_001 }), NOW, 0).refusals[0];
  assert.equal(tooBig?.fits, false);
});

test('concurrency: leases, released on settle, expired leases free their slot', () => {
  const limits = { concurrent: 1 };
  const held = evaluateScope({}, limits, charge({ requestId: 'a', leaseUntil: NOW + 10_000 }), NOW, 0).next;
  const refused = evaluateScope(held, limits, charge({ requestId: 'b' }), NOW, 0).refusals[0];
  assert.equal(refused?.dimension, 'concurrent');
  assert.ok((refused?.retryAfterMs ?? 0) > 0);
  const released = adjustScope(
    held,
    limits,
    { requestsDelta: 0, tokensDelta: 0, microUsdDelta: 0, day: '', month: '', releaseRequestId: 'a' },
    NOW,
  );
  assert.deepEqual(evaluateScope(released, limits, charge({ requestId: 'b' }), NOW, 0).refusals, []);
  assert.deepEqual(evaluateScope(held, limits, charge({ requestId: 'b' }), NOW + 10_000, 0).refusals, []);
});

test('budgets: refused when the reservation would cross, retry_after at the window end, a new day starts from zero', () => {
  const limits = { dailyMicroUsd: 2_500 };
  let state: ScopeState = {};
  state = evaluateScope(state, limits, charge(), NOW, 0).next;
  state = evaluateScope(state, limits, charge(), NOW, 0).next;
  const refused = evaluateScope(state, limits, charge(), NOW, 0).refusals[0];
  assert.equal(refused?.dimension, 'daily_usd');
  assert.equal(refused?.retryAfterMs, budgetWindows(NOW).dayEndsAt - NOW);
  assert.equal(refused?.used, 2_000);
  const tomorrow = NOW + 86_400_000;
  assert.deepEqual(
    evaluateScope(state, limits, charge({ windows: budgetWindows(tomorrow) }), tomorrow, 0).refusals,
    [],
  );
  // Settling in the next day leaves the new day's figure alone.
  const settledLate = adjustScope(
    state,
    limits,
    {
      requestsDelta: 0,
      tokensDelta: 0,
      microUsdDelta: -1_000,
      day: '2026-11-26',
      month: '',
      releaseRequestId: undefined,
    },
    NOW,
  );
  assert.equal(settledLate.day_used, 2_000);
});

test('the decisive refusal: a budget before a rate, a never-fitting one before a wait, else the longest wait', () => {
  const rate = { scopeIndex: 0, dimension: 'rpm' as const, retryAfterMs: 500, fits: true, used: 0 };
  const longer = { ...rate, dimension: 'tpm' as const, retryAfterMs: 900 };
  const budget = { ...rate, dimension: 'monthly_usd' as const, retryAfterMs: 100 };
  assert.equal(decisiveRefusal([rate, longer]), longer);
  assert.equal(decisiveRefusal([rate, budget, longer]), budget);
  assert.equal(decisiveRefusal([]), undefined);
});

test('a record is idle once its rates have caught up, its leases expired and its budget windows passed', () => {
  const busy = evaluateScope(
    {},
    { rpm: 10, concurrent: 1, dailyMicroUsd: 5_000 },
    charge({ leaseUntil: NOW + 120_000 }),
    NOW,
    0,
  ).next;
  assert.equal(isIdle(busy, NOW), false);
  assert.equal(isIdle(busy, NOW + 130_000), false); // today's spending still counts
  assert.equal(isIdle(busy, NOW + 86_400_000 * 40), true);
  assert.equal(isIdle({}, NOW), true);
});
