/**
 * The limiter over its in-process store: the `budgetNear` counter (an alert's source:
 * `llm_proxy.limit.budget_near`) and the standing's account of whose limits it measures against.
 * The shared stores (NATS KV, Redis) are tested in test/limits-recorded.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { limitsSchema } from '../config/limits-schema.js';
import { createLimiter } from './limiter.js';
import { configFingerprint } from './policy.js';
import type { AdmissionRequest } from './types.js';

const NOW = Date.UTC(2026, 10, 27, 12, 0, 0);

function admission(overrides: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    requestId: randomUUID(),
    agentId: 'agent:sofia',
    microdaoId: undefined,
    model: 'gpt-4.1-mini',
    estimatedPromptTokens: 10,
    maxCompletionTokens: 10,
    estimatedMaxCostUsd: 0.001,
    ...overrides,
  };
}

test('budgetNear counts admissions that leave a daily or monthly budget at or above 90%, by scope kind and dimension', async () => {
  const config = limitsSchema.parse({
    backend: 'memory',
    default: { rpm: null, daily_usd: 0.01 },
    microdaos: { 'microdao:7': { monthly_usd: 0.028 } },
  });
  const limiter = await createLimiter(config, { now: () => NOW });
  try {
    // $0.001 each against $0.01 a day: the 9th and 10th leave it at 90% and 100%; the 11th is refused.
    for (let index = 0; index < 8; index += 1) await limiter.admit(admission({ microdaoId: 'microdao:7' }));
    assert.deepEqual(limiter.counters().budgetNear, {});
    await limiter.admit(admission({ microdaoId: 'microdao:7' }));
    await limiter.admit(admission({ microdaoId: 'microdao:7' }));
    await assert.rejects(limiter.admit(admission({ microdaoId: 'microdao:7' })), { code: 'budget_exceeded' });
    assert.deepEqual(limiter.counters().budgetNear, { 'agent:daily_usd': 2 });
    // Other agents of the microDAO: $0.017 of its $0.028 a month (61%).
    for (let index = 0; index < 7; index += 1)
      await limiter.admit(admission({ agentId: `agent:${index}`, microdaoId: 'microdao:7' }));
    assert.deepEqual(limiter.counters().budgetNear, { 'agent:daily_usd': 2 });
    // One request that leaves both its agent's day (90%) and the microDAO's month (93%) nearly spent counts for each.
    await limiter.admit(admission({ agentId: 'agent:big', microdaoId: 'microdao:7', estimatedMaxCostUsd: 0.009 }));
    assert.deepEqual(limiter.counters().budgetNear, { 'agent:daily_usd': 3, 'microdao:monthly_usd': 1 });
    const counters = limiter.counters();
    assert.deepEqual([counters.admitted, counters.refused, counters.refusedBy], [18, 1, { 'agent:daily_usd': 1 }]);
    // A snapshot: changing it does not change the limiter's.
    counters.budgetNear['agent:daily_usd'] = 99;
    assert.equal(limiter.counters().budgetNear['agent:daily_usd'], 3);
  } finally {
    await limiter.close();
  }
});

test('a key scope and a settle lower than the reservation: nearly spent is judged on the admission, by what it reserved', async () => {
  const limiter = await createLimiter(limitsSchema.parse({ backend: 'memory', default: { rpm: null } }), {
    now: () => NOW,
  });
  try {
    const key = { id: 'k1', limits: { daily_usd: 0.01 } };
    const reservation = await limiter.admit(admission({ key, estimatedMaxCostUsd: 0.0095 }));
    assert.deepEqual(limiter.counters().budgetNear, { 'key:daily_usd': 1 });
    await reservation.settle({ promptTokens: 1, completionTokens: 1, costUsd: 0.001 });
    await limiter.admit(admission({ key, estimatedMaxCostUsd: 0.001 }));
    assert.deepEqual(limiter.counters().budgetNear, { 'key:daily_usd': 1 });
    // The key's record holds its limits: its standing needs no config (and the agent, unlimited, is left out).
    const [keyScope] = await limiter.standing('agent:sofia', { keyId: 'k1' });
    assert.equal(keyScope?.limitsFrom, 'workers');
    assert.deepEqual(
      keyScope?.dimensions.map((row) => [row.dimension, row.used, row.limit]),
      [['daily_usd', 0.002, 0.01]],
    );
    assert.deepEqual(keyScope?.local, { config: keyScope?.local.config, limits: {}, differs: true });
  } finally {
    await limiter.close();
  }
});

test('standing: measured against the limits stored with the record, with the config and host that wrote them', async () => {
  const config = limitsSchema.parse({ backend: 'memory', default: { rpm: 5 }, models: { m: { concurrent: 2 } } });
  const limiter = await createLimiter(config, { now: () => NOW, host: 'worker-7' });
  try {
    // Nothing counted yet: the local config, and the standing says why.
    const [before] = await limiter.standing('agent:sofia');
    assert.equal(before?.limitsFrom, 'local');
    assert.equal(before?.fallback, 'no_record');
    assert.equal(before?.enforcedBy, undefined);
    await limiter.admit(admission({ model: 'm' }));
    const [agent, model] = await limiter.standing('agent:sofia', { model: 'm', microdaoId: 'microdao:none' });
    assert.deepEqual(agent, {
      kind: 'agent',
      id: 'agent:sofia',
      dimensions: [{ dimension: 'rpm', window: 'minute', limit: 5, used: 1, remaining: 4, resetsInMs: 12_000 }],
      limitsFrom: 'workers',
      enforcedBy: { config: configFingerprint(config), host: 'worker-7', since: NOW },
      local: { config: configFingerprint(config), limits: { rpm: 5 }, differs: false },
    });
    // A microDAO limited neither by its record nor by the config is left out.
    assert.deepEqual(
      [model?.kind, model?.limitsFrom, model?.dimensions.map((row) => [row.dimension, row.used, row.limit])],
      ['model', 'workers', [['concurrent', 1, 2]]],
    );
    // An agent limited by neither: nothing to show.
    const unlimited = await createLimiter(limitsSchema.parse({ backend: 'memory', default: { rpm: null } }));
    assert.deepEqual(await unlimited.standing('agent:free'), []);
    await unlimited.close();
  } finally {
    await limiter.close();
  }
});
