import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NdjsonParser, NdjsonSyntaxError } from './ndjson.js';

/** A real Ollama /api/chat stream (shortened). */
const OLLAMA_STREAM = [
  '{"model":"llama3.2:3b","created_at":"2026-11-27T21:00:00.1Z","message":{"role":"assistant","content":"Hé"},"done":false}',
  '{"model":"llama3.2:3b","created_at":"2026-11-27T21:00:00.2Z","message":{"role":"assistant","content":"llo 🌍"},"done":false}',
  '{"model":"llama3.2:3b","created_at":"2026-11-27T21:00:00.3Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":1,"load_duration":1,"prompt_eval_count":26,"prompt_eval_duration":1,"eval_count":3,"eval_duration":1}',
]
  .map((line) => `${line}\n`)
  .join('');

function parseAll(pieces: string[]): unknown[] {
  const parser = new NdjsonParser();
  const values: unknown[] = [];
  for (const piece of pieces) values.push(...parser.push(piece));
  values.push(...parser.finish());
  return values;
}

const whole = parseAll([OLLAMA_STREAM]);

test('ndjson: a whole stream gives one value per line', () => {
  assert.equal(whole.length, 3);
  assert.equal((whole[2] as { done: boolean }).done, true);
});

test('ndjson: fed one character at a time, and in every two-piece split, gives the same values', () => {
  assert.deepEqual(parseAll(Array.from(OLLAMA_STREAM)), whole);
  for (let cut = 0; cut <= OLLAMA_STREAM.length; cut += 7) {
    assert.deepEqual(parseAll([OLLAMA_STREAM.slice(0, cut), OLLAMA_STREAM.slice(cut)]), whole, `cut at ${cut}`);
  }
});

test('ndjson: CRLF line ends and blank lines are accepted', () => {
  assert.deepEqual(parseAll([OLLAMA_STREAM.replace(/\n/g, '\r\n\r\n  \n')]), whole);
});

test('ndjson: a last line without newline still counts', () => {
  assert.deepEqual(parseAll(['{"a":1}\n{"b":', '2}']), [{ a: 1 }, { b: 2 }]);
});

test('ndjson: a line that is not JSON throws NdjsonSyntaxError', () => {
  const parser = new NdjsonParser();
  const values: unknown[] = [];
  assert.throws(() => {
    for (const value of parser.push('{"a":1}\nnot json\n')) values.push(value);
  }, NdjsonSyntaxError);
  assert.deepEqual(values, [{ a: 1 }], 'the good line before the bad one is delivered first');
  assert.throws(() => parseAll(['{"a":']), NdjsonSyntaxError);
});
