import { test } from 'node:test';
import assert from 'node:assert/strict';
import { limitsSchema } from '../config/limits-schema.js';
import {
  adjustScope,
  BUDGET_NEAR_PERCENT,
  budgetWindows,
  configFingerprint,
  configuredLimits,
  decisiveRefusal,
  describeScope,
  encodeKeyToken,
  evaluateScope,
  isBudgetNear,
  isIdle,
  limitStamp,
  parseRecordedLimits,
  plansFor,
  recordedScopeLimits,
  restamped,
  sameStamp,
  toMicroUsd,
  withStamp,
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

test('the limits a record is counted against: stamped on admission, kept by settles, compared without host and time', () => {
  const limits = { rpm: 5, dailyMicroUsd: 2_000_000 };
  const stamp = limitStamp(limits, { config: 'c0ffee000001', host: 'worker-a' });
  assert.deepEqual(stamp.fields, { rpm: 5, daily: 2_000_000, config: 'c0ffee000001', host: 'worker-a' });
  // The Redis script stores and compares this string: the limits and the config, not the host.
  assert.equal(stamp.json, '{"rpm":5,"daily":2000000,"config":"c0ffee000001"}');
  const admitted = withStamp(evaluateScope({}, limits, charge(), NOW, 0).next, stamp, NOW);
  assert.deepEqual(parseRecordedLimits(admitted.limits), { ...stamp.fields, at: NOW });
  const settled = adjustScope(
    admitted,
    limits,
    {
      requestsDelta: 0,
      tokensDelta: 0,
      microUsdDelta: -500,
      day: budgetWindows(NOW).day,
      month: '',
      releaseRequestId: undefined,
    },
    NOW + 1_000,
  );
  assert.deepEqual(settled.limits, admitted.limits);
  assert.deepEqual(recordedScopeLimits(parseRecordedLimits(settled.limits)!), limits);

  // Another worker with the same config: nothing to rewrite on a refusal. Another config: rewritten.
  const sameElsewhere = limitStamp(limits, { config: 'c0ffee000001', host: 'worker-b' });
  assert.equal(sameStamp(admitted.limits, sameElsewhere), true);
  assert.equal(restamped(admitted, sameElsewhere, NOW + 2_000), undefined);
  const stricter = limitStamp({ rpm: 3, dailyMicroUsd: 2_000_000 }, { config: 'c0ffee000002' });
  const rewritten = restamped(admitted, stricter, NOW + 2_000);
  assert.deepEqual(rewritten?.limits, { rpm: 3, daily: 2_000_000, config: 'c0ffee000002', at: NOW + 2_000 });
  assert.equal(rewritten?.rpm_tat, admitted.rpm_tat, 'a refusal counts nothing');
  // A record from before limits were stored, and malformed ones, load as "no limits recorded".
  assert.notEqual(restamped({ rpm_tat: NOW }, stamp, NOW), undefined);
  assert.equal(parseRecordedLimits(undefined), undefined);
  assert.equal(parseRecordedLimits({ rpm: 5, at: NOW }), undefined);
  assert.equal(parseRecordedLimits({ rpm: '5', config: 'x', at: NOW }), undefined);
  assert.equal(parseRecordedLimits([1]), undefined);
});

test('config fingerprints: the same limits in any key order agree; any changed value differs', () => {
  const base = limitsSchema.parse({
    default: { rpm: 5 },
    agents: { 'agent:a': { tpm: 10 }, 'agent:b': { rpm: null } },
  });
  const reordered = limitsSchema.parse({
    agents: { 'agent:b': { rpm: null }, 'agent:a': { tpm: 10 } },
    default: { rpm: 5 },
  });
  assert.match(configFingerprint(base), /^[0-9a-f]{12}$/);
  assert.equal(configFingerprint(base), configFingerprint(reordered));
  // Settings that are not limits (the backend, timeouts) do not change it.
  const withOtherSettings = { ...base, backend: 'redis' as const, store_timeout_ms: 5 };
  assert.equal(configFingerprint(base), configFingerprint(withOtherSettings));
  assert.notEqual(configFingerprint(base), configFingerprint(limitsSchema.parse({ ...base, default: { rpm: 6 } })));
  assert.notEqual(
    configFingerprint(base),
    configFingerprint(limitsSchema.parse({ ...base, models: { m: { daily_usd: 1 } } })),
  );
});

test('a scope configured with no limit still has its (empty) limits for standing; a key has none in the config', () => {
  const config = limitsSchema.parse({ default: { rpm: null }, microdaos: { 'microdao:7': { rpm: 100 } } });
  assert.deepEqual(configuredLimits(config, { kind: 'agent', id: 'agent:x' }), {});
  assert.deepEqual(configuredLimits(config, { kind: 'microdao', id: 'microdao:7' }), { rpm: 100 });
  assert.deepEqual(configuredLimits(config, { kind: 'model', id: 'm' }), {});
  assert.deepEqual(configuredLimits(config, { kind: 'key', id: 'k1' }), {});
});

test('budgets nearly spent: an admission that leaves a budget at or above 90% says which', () => {
  assert.equal(BUDGET_NEAR_PERCENT, 90);
  assert.equal(isBudgetNear(899_999, 1_000_000), false);
  assert.equal(isBudgetNear(900_000, 1_000_000), true);
  assert.equal(isBudgetNear(0, 0), false, 'a budget of 0 is not "nearly spent" by free requests');
  const limits = { dailyMicroUsd: 10_000, monthlyMicroUsd: 100_000 };
  let state: ScopeState = {};
  const seen: string[][] = [];
  for (let index = 0; index < 10; index += 1) {
    const evaluation = evaluateScope(state, limits, charge({ microUsd: 1_000 }), NOW, 0);
    assert.deepEqual(evaluation.refusals, []);
    seen.push(evaluation.nearlySpent);
    state = evaluation.next;
  }
  // 9 000 of 10 000 is the first at 90%; the month (10 000 of 100 000) is far from it.
  assert.deepEqual(seen.slice(7), [[], ['daily_usd'], ['daily_usd']]);
  assert.deepEqual(evaluateScope({}, limits, charge({ microUsd: 95_000 }), NOW, 0).refusals[0]?.dimension, 'daily_usd');
  assert.deepEqual(evaluateScope({}, { monthlyMicroUsd: 100_000 }, charge({ microUsd: 95_000 }), NOW, 0).nearlySpent, [
    'monthly_usd',
  ]);
  assert.equal(evaluateScope(state, limits, charge({ microUsd: 1_000 }), NOW, 0).refusals[0]?.dimension, 'daily_usd');
});
