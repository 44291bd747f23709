import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mapOpenAIFinishReason } from './finish-reason.js';

test('OpenAI finish reasons, with those of DeepSeek and compatible servers', () => {
  const table: Array<[string | null | undefined, boolean, string]> = [
    ['stop', false, 'stop'],
    ['length', false, 'length'],
    ['tool_calls', true, 'tool_calls'],
    ['function_call', true, 'tool_calls'],
    ['content_filter', false, 'content_filter'],
    ['insufficient_system_resource', false, 'error'],
    ['stop', true, 'tool_calls'],
    ['length', true, 'length'],
    [null, false, 'stop'],
    [undefined, false, 'stop'],
    ['something_new', false, 'stop'],
  ];
  for (const [reason, hasToolCalls, expected] of table) {
    assert.equal(
      mapOpenAIFinishReason(reason, hasToolCalls),
      expected,
      `${String(reason)} (tool calls: ${hasToolCalls})`,
    );
  }
});
