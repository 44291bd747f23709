import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mapOllamaFinishReason } from './finish-reason.js';

test('Ollama done reasons', () => {
  const table: Array<[string | null | undefined, boolean, string]> = [
    ['stop', false, 'stop'],
    ['stop', true, 'tool_calls'],
    ['length', false, 'length'],
    ['load', false, 'stop'],
    ['unload', false, 'stop'],
    [undefined, false, 'stop'],
    ['something_new', true, 'tool_calls'],
  ];
  for (const [reason, hasToolCalls, expected] of table) {
    assert.equal(
      mapOllamaFinishReason(reason, hasToolCalls),
      expected,
      `${String(reason)} (tool calls: ${hasToolCalls})`,
    );
  }
});
