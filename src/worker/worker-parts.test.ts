import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseChatRequest } from '../contract/request.js';
import { resolveConfig } from '../config/load.js';
import { ToolCallAssembler } from '../contract/tool-call-assembler.js';
import { requestCost } from './accounting.js';
import { cacheKey, cacheKeyFor, isCacheable } from './response-cache.js';

const request = (extra: object) =>
  parseChatRequest({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });

test('cacheable: deterministic (temperature 0 or a seed), streamed or not, no tools, not bypassed', () => {
  assert.equal(isCacheable(request({ temperature: 0 })), true);
  assert.equal(isCacheable(request({ seed: 7, temperature: 0.9 })), true);
  assert.equal(isCacheable(request({})), false);
  assert.equal(isCacheable(request({ temperature: 0, stream: true })), true);
  assert.equal(isCacheable(request({ temperature: 0, stream: true, cache: 'bypass' })), false);
  assert.equal(isCacheable(request({ temperature: 0, cache: 'bypass' })), false);
  assert.equal(isCacheable(request({ temperature: 0, tools: [{ type: 'function', function: { name: 'f' } }] })), false);
  assert.equal(
    isCacheable(request({ temperature: 0, cache: 'force', tools: [{ type: 'function', function: { name: 'f' } }] })),
    true,
  );
  assert.equal(isCacheable(request({ temperature: 0, cache: 'refresh' })), true);
});

test('the cache key covers the model deployments: a config change never serves another model answer', () => {
  const asked = request({ temperature: 0 });
  const one = { deployments: [{ provider: 'openai', physical_name: 'gpt-4o-mini', weight: 1 }] };
  const moved = { deployments: [{ provider: 'openai', physical_name: 'gpt-4.1-mini', weight: 1 }] };
  assert.deepEqual(cacheKeyFor(asked, one), cacheKeyFor(request({ temperature: 0, request_id: 'x' }), one));
  assert.notEqual(cacheKeyFor(asked, one).hash, cacheKeyFor(asked, moved).hash);
  assert.equal(cacheKeyFor(asked, one).model, 'm');
});

test('cache key ignores our own fields and key order, not what the provider sees', () => {
  const key = cacheKey(request({ temperature: 0, request_id: 'a', metadata: { agent_id: 'x' }, timeout_ms: 5 }));
  assert.equal(key, cacheKey(request({ request_id: 'b', temperature: 0 })));
  assert.notEqual(key, cacheKey(request({ temperature: 0, max_tokens: 5 })));
  assert.notEqual(
    key,
    cacheKey(parseChatRequest({ model: 'm', messages: [{ role: 'user', content: 'hi!' }], temperature: 0 })),
  );
});

test('tool-call deltas assemble by index', () => {
  const assembler = new ToolCallAssembler();
  assembler.add([{ index: 1, id: 'call_b', type: 'function', function: { name: 'second', arguments: '' } }]);
  assembler.add([{ index: 0, id: 'call_a', type: 'function', function: { name: 'first', arguments: '{"x"' } }]);
  assembler.add([{ index: 0, function: { arguments: ':1}' } }]);
  assembler.add([{ index: 1, function: { arguments: '{}' } }]);
  assert.deepEqual(assembler.calls(), [
    { id: 'call_a', type: 'function', function: { name: 'first', arguments: '{"x":1}' } },
    { id: 'call_b', type: 'function', function: { name: 'second', arguments: '{}' } },
  ]);
});

test("request cost: the serving model's prices plus what failed attempts consumed, priced by their model", () => {
  const config = resolveConfig(
    {
      providers: { a: { base_url: 'http://a.example/v1' }, b: { base_url: 'http://b.example/v1' } },
      models: {
        main: {
          provider: 'a',
          physical_name: 'big',
          cost_per_1k_prompt: 1,
          cost_per_1k_completion: 2,
          fallbacks: ['spare'],
        },
        spare: { provider: 'b', physical_name: 'small', cost_per_1k_prompt: 0.1, cost_per_1k_completion: 0.2 },
      },
    },
    'test',
    {},
  );
  const attempts = [
    {
      model: 'main',
      provider: 'a',
      model_resolved: 'big',
      error_code: 'upstream_error',
      latency_ms: 1,
      prompt_tokens: 100,
      completion_tokens: 50,
    },
    { model: 'spare', provider: 'b', model_resolved: 'small', error_code: null, latency_ms: 1 },
  ];
  // spare: 1000 prompt × 0.1/1k + 500 × 0.2/1k = 0.2; the failed attempt, on main (its record says so): 100 × 1/1k + 50 × 2/1k = 0.2
  assert.equal(requestCost(config, 'spare', { promptTokens: 1000, completionTokens: 500 }, attempts), 0.4);
  assert.equal(requestCost(config, undefined, undefined, attempts), 0.2);
});
