/** A whole Anthropic message to ours (response.ts), and Anthropic's HTTP error bodies; streams are in stream.test.ts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ProxyError } from '../../contract/errors.js';
import { errorFromStatus } from '../transport/provider-error.js';
import {
  convertAnthropicMessage,
  convertAnthropicUsage,
  IncompleteToolUseError,
  mapAnthropicStopReason,
} from './response.js';
import { anthropicMessageSchema } from './schema.js';

const API_KEY = 'sk-ant-api03-SECRET-0123456789';

const MESSAGE = {
  id: 'msg_1',
  type: 'message',
  role: 'assistant',
  model: 'claude-sonnet-4-5-20250929',
  content: [
    { type: 'thinking', thinking: 'Two cities. ', signature: 'sig' },
    { type: 'redacted_thinking', data: 'opaque' },
    { type: 'thinking', thinking: 'Two calls.', signature: 'sig' },
    { type: 'text', text: 'Let me check ', citations: null },
    { type: 'text', text: 'both.' },
    { type: 'tool_use', id: 'toolu_a', name: 'get_weather', input: { city: 'Paris' } },
    { type: 'tool_use', id: 'toolu_b', name: 'get_weather', input: { city: 'Kyiv' } },
  ],
  stop_reason: 'tool_use',
  stop_sequence: null,
  usage: {
    input_tokens: 20,
    cache_creation_input_tokens: 100,
    cache_read_input_tokens: 1000,
    output_tokens: 70,
    service_tier: 'standard',
  },
};

test('response: text joined, thinking as reasoning, tool_use as tool calls, usage with the cache counts', () => {
  const parsed = anthropicMessageSchema.parse(MESSAGE);
  assert.deepEqual(convertAnthropicMessage(parsed, 'requested'), {
    content: 'Let me check both.',
    reasoningContent: 'Two cities. Two calls.',
    toolCalls: [
      { id: 'toolu_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
      { id: 'toolu_b', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Kyiv"}' } },
    ],
    finishReason: 'tool_calls',
    modelResolved: 'claude-sonnet-4-5-20250929',
    usage: { promptTokens: 1120, completionTokens: 70, cachedPromptTokens: 1000 },
  });
});

test('response: no text block is content null; no usage, no model: undefined usage, the requested model', () => {
  const converted = convertAnthropicMessage(
    anthropicMessageSchema.parse({
      content: [{ type: 'tool_use', id: 't', name: 'now', input: {} }],
      stop_reason: 'tool_use',
    }),
    'requested',
  );
  assert.equal(converted.content, null);
  assert.equal(converted.usage, undefined);
  assert.equal(converted.modelResolved, 'requested');
  assert.equal(converted.toolCalls?.[0]?.function.arguments, '{}');
  assert.throws(
    () => convertAnthropicMessage(anthropicMessageSchema.parse({ content: [{ type: 'tool_use', name: 'now' }] }), 'm'),
    IncompleteToolUseError,
  );
});

test('response: usage without cache counts (null or absent) has no cachedPromptTokens', () => {
  assert.deepEqual(
    convertAnthropicUsage({
      input_tokens: 5,
      output_tokens: 7,
      cache_read_input_tokens: null,
      cache_creation_input_tokens: 0,
    }),
    { promptTokens: 5, completionTokens: 7 },
  );
});

test('response: stop reasons', () => {
  const table: Array<[string | null | undefined, string]> = [
    ['end_turn', 'stop'],
    ['stop_sequence', 'stop'],
    ['max_tokens', 'length'],
    ['model_context_window_exceeded', 'length'],
    ['tool_use', 'tool_calls'],
    ['refusal', 'content_filter'],
    ['pause_turn', 'stop'],
    ['something_new', 'stop'],
    [null, 'stop'],
  ];
  for (const [reason, expected] of table) assert.equal(mapAnthropicStopReason(reason), expected, String(reason));
});

test('HTTP errors with Anthropic bodies: message read, 529 retryable with its Retry-After, 429 rate_limited', () => {
  const error = (status: number, type: string, message: string, headers = {}): ProxyError =>
    errorFromStatus({
      provider: 'anthropic',
      status,
      headers,
      bodyText: JSON.stringify({ type: 'error', error: { type, message }, request_id: 'req_1' }),
      secrets: [API_KEY],
    });
  const overloaded = error(529, 'overloaded_error', 'Overloaded', { 'retry-after': '2' });
  assert.equal(overloaded.code, 'upstream_error');
  assert.equal(overloaded.retryable, true);
  assert.equal(overloaded.retryAfterMs, 2000);
  assert.equal(overloaded.message, 'anthropic: Overloaded');
  const limited = error(429, 'rate_limit_error', 'Slow down', { 'retry-after': '7' });
  assert.equal(limited.code, 'rate_limited');
  assert.equal(limited.retryAfterMs, 7000);
  const tooLong = error(400, 'invalid_request_error', 'prompt is too long: 210000 tokens > 200000 maximum');
  assert.equal(tooLong.code, 'invalid_request');
  assert.equal(tooLong.contextLengthExceeded, true);
  const unauthorized = error(401, 'authentication_error', 'invalid x-api-key');
  assert.equal(unauthorized.code, 'upstream_error');
  assert.equal(unauthorized.retryable, false);
});
