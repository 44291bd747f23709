import { test } from 'node:test';
import assert from 'node:assert/strict';
import { countTextTokens, estimateCompletionTokens, estimatePromptTokens } from './tokens.js';
import { costUsd, roundUsd } from './cost.js';
import { buildUsageEvent, type UsageEventInput } from './event.js';
import { usageEventSchema } from '../contract/usage-event.js';

test('prompt estimate: text tokens plus 3 per message, 1 per name, 3 to prime the reply', () => {
  const hello = countTextTokens('Hello!');
  const user = countTextTokens('user');
  assert.equal(estimatePromptTokens({ messages: [{ role: 'user', content: 'Hello!' }] }), 3 + 3 + user + hello);
  const named = estimatePromptTokens({ messages: [{ role: 'user', content: 'Hello!', name: 'bob' }] });
  assert.equal(named, 3 + 3 + user + hello + 1 + countTextTokens('bob'));
  const parts = estimatePromptTokens({ messages: [{ role: 'user', content: [{ type: 'text', text: 'Hello!' }] }] });
  assert.equal(parts, 3 + 3 + user + hello);
  const withImage = estimatePromptTokens({
    messages: [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'Hello!' },
          { type: 'image_url', image_url: { url: 'data:x' } },
        ],
      },
    ],
  });
  assert.equal(withImage, parts + 85);
});

test('completion estimate counts content, reasoning and tool calls', () => {
  assert.equal(estimateCompletionTokens({ content: '' }), 0);
  assert.equal(estimateCompletionTokens({ content: null }), 0);
  const text = estimateCompletionTokens({ content: 'The quick brown fox jumps over the lazy dog.' });
  assert.ok(text >= 9 && text <= 12, String(text));
  const tools = estimateCompletionTokens({
    content: null,
    toolCalls: [{ id: 'x', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
  });
  assert.ok(tools > 3);
  assert.equal(
    estimateCompletionTokens({ content: 'a', reasoningContent: 'b' }),
    countTextTokens('a') + countTextTokens('b'),
  );
});

test('cost from prices per 1k tokens, rounded to 1e-8', () => {
  assert.equal(costUsd({ cost_per_1k_prompt: 0.01, cost_per_1k_completion: 0.03 }, 25, 10), 0.00055);
  assert.equal(costUsd({ cost_per_1k_prompt: 0.1, cost_per_1k_completion: 0.2 }, 1, 2), 0.0005);
  assert.equal(costUsd(undefined, 1000, 1000), 0);
  assert.equal(roundUsd(0.1 + 0.2), 0.3);
  assert.equal(costUsd({ cost_per_1k_prompt: 0.00015, cost_per_1k_completion: 0 }, 1, 0), 0.00000015);
});

const base: UsageEventInput = {
  eventId: 'e-1',
  requestId: 'r-1',
  timestamp: new Date('2026-11-27T21:00:00.000Z'),
  metadata: { agent_id: 'agent:sofia', microdao_id: 'microdao:7', channel_id: 'c-1', task: 'x' },
  model: 'gpt-4.1-mini',
  provider: 'openai',
  modelResolved: 'gpt-4-1106-preview',
  status: 'ok',
  errorCode: null,
  promptTokens: 25,
  completionTokens: 10,
  tokensEstimated: false,
  costUsd: 0.00055,
  latencyMs: 1234.54,
  ttftMs: null,
  stream: false,
  cached: false,
  attempts: [
    {
      model: 'gpt-4.1-mini',
      provider: 'openai',
      model_resolved: 'gpt-4-1106-preview',
      error_code: null,
      latency_ms: 1200,
    },
  ],
  workerId: 'w-1',
};

test("the usage event has DESIGN.md's fields in DESIGN.md's order, tags after", () => {
  const { token, event } = buildUsageEvent(base);
  assert.equal(token, 'agent:sofia');
  assert.equal(
    JSON.stringify(event),
    JSON.stringify({
      v: 1,
      request_id: 'r-1',
      ts: '2026-11-27T21:00:00.000Z',
      agent_id: 'agent:sofia',
      microdao_id: 'microdao:7',
      channel_id: 'c-1',
      model: 'gpt-4.1-mini',
      provider: 'openai',
      model_resolved: 'gpt-4-1106-preview',
      status: 'ok',
      error_code: null,
      prompt_tokens: 25,
      completion_tokens: 10,
      total_tokens: 35,
      tokens_estimated: false,
      cost_usd: 0.00055,
      latency_ms: 1234.5,
      ttft_ms: null,
      stream: false,
      cached: false,
      attempts: 1,
      worker_id: 'w-1',
      event_id: 'e-1',
      cached_prompt_tokens: 0,
      tags: { task: 'x' },
    }),
  );
  usageEventSchema.parse(event);
});

test('the node of the worker follows worker_id; without one the field is left out', () => {
  const { event } = buildUsageEvent({ ...base, node: 'gpu-box-1' });
  const fields = Object.keys(event);
  assert.equal(fields[fields.indexOf('worker_id') + 1], 'node');
  assert.equal(usageEventSchema.parse(event).node, 'gpu-box-1');
  assert.ok(!('node' in buildUsageEvent(base).event));
});

test('an unauthorized request is not attributed to the agent it claims', () => {
  const { token, event } = buildUsageEvent({
    ...base,
    unauthenticated: true,
    status: 'rejected',
    errorCode: 'unauthorized',
    attempts: [],
  });
  assert.equal(token, 'unauthenticated');
  assert.equal(event.agent_id, null);
  assert.equal(event.microdao_id, null);
  assert.equal(event.claimed_agent_id, 'agent:sofia');
  assert.equal(event.tags, undefined);
  assert.equal(event.attempts, 0);
});

test('several attempts are counted and detailed; no agent id is anonymous', () => {
  const failed = {
    model: 'gpt-4.1-mini',
    provider: 'a',
    model_resolved: 'm',
    error_code: 'upstream_error',
    latency_ms: 5,
  };
  const { token, event } = buildUsageEvent({ ...base, metadata: undefined, attempts: [failed, base.attempts[0]!] });
  assert.equal(token, 'anonymous');
  assert.equal(event.attempts, 2);
  assert.equal(event.attempt_details?.length, 2);
});

test('token estimates of long text: pieces cut at white space count as the whole; a 1 MiB run without a break does not stall', () => {
  const prose = 'The quick brown fox jumps over the lazy dog, again and again. '.repeat(400);
  const words = prose.split(' ');
  // The same text counted word by word group (short enough for one piece each) and as a whole.
  let byParts = 0;
  for (let index = 0; index < words.length; index += 100)
    byParts += countTextTokens((index === 0 ? '' : ' ') + words.slice(index, index + 100).join(' '));
  assert.equal(countTextTokens(prose), byParts);
  // The encoder is quadratic on one long word (150,000 characters took 13 s): this finishes at once.
  assert.equal(countTextTokens('x'.repeat(1 << 20)) > 100_000, true);
  assert.ok(countTextTokens(`${'😀'.repeat(3_000)}`) > 0, 'a cut never splits a surrogate pair');
});
