import { test } from 'node:test';
import assert from 'node:assert/strict';
import { countsTokens, maxCostUsd, type PricedModel } from './hooks.js';

function model(
  prompt: number,
  completion: number,
  fallbacks: string[] = [],
  contextFallbacks: string[] = [],
): PricedModel {
  return {
    cost_per_1k_prompt: prompt,
    cost_per_1k_completion: completion,
    fallbacks,
    context_fallbacks: contextFallbacks,
  };
}

test('the most a request can cost is at the dearest of its model and the models it may fall back to', () => {
  const models = new Map<string, PricedModel>([
    ['cheap', model(0.1, 0.2, ['dear'], ['long'])],
    ['dear', model(1, 2)],
    ['long', model(0.5, 4)],
    ['free', model(0, 0)],
  ]);
  assert.equal(maxCostUsd(models, 'dear', 1_000, 1_000), 3);
  // 1000 prompt + 1000 completion: cheap 0.3, dear 3, long 4.5.
  assert.equal(maxCostUsd(models, 'cheap', 1_000, 1_000), 4.5);
  assert.equal(maxCostUsd(models, 'free', 1_000, 1_000), 0);
  assert.equal(maxCostUsd(models, 'unknown', 1_000, 1_000), 0);
});

test('the prompt is tokenized only when some scope limits tokens or spending', () => {
  const base = { default_max_tokens: 1024, agents: {}, microdaos: {}, models: {} };
  assert.equal(countsTokens({ ...base, default: { rpm: 10 } }), false);
  assert.equal(
    countsTokens({ ...base, default: { rpm: 10, concurrent: 2 }, agents: { 'agent:a': { rpm: 60 } } }),
    false,
  );
  assert.equal(countsTokens({ ...base, default: { rpm: 10 }, agents: { 'agent:a': { tpm: 1000 } } }), true);
  assert.equal(
    countsTokens({ ...base, default: { rpm: 10 }, microdaos: { 'microdao:7': { monthly_usd: 100 } } }),
    true,
  );
  assert.equal(countsTokens({ ...base, default: { rpm: 10, daily_usd: 5 } }), true);
  assert.equal(countsTokens({ default_max_tokens: 1024 }), true, 'without the limit sets, assume tokens are counted');
});
