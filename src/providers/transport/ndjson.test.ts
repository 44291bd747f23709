import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineTooLongError, NdjsonParser, NdjsonSyntaxError } from './ndjson.js';

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

const PIECE = 64 * 1024;

test('ndjson: a line over the bound throws LineTooLongError, after the lines before it; up to the bound passes', () => {
  const line = `"${'x'.repeat(98)}"`; // 100 characters
  const parser = new NdjsonParser(100);
  assert.deepEqual([...parser.push(`${line}\n`)], ['x'.repeat(98)]);
  const values: unknown[] = [];
  assert.throws(
    () => {
      for (const value of parser.push(`{"a":1}\n"${'x'.repeat(99)}"\n`)) values.push(value);
    },
    (error: unknown) => error instanceof LineTooLongError && error.what === 'line' && error.limit === 100,
  );
  assert.deepEqual(values, [{ a: 1 }]);
});

test('ndjson: a line that never ends throws once it passes the bound, without waiting for its newline', () => {
  const parser = new NdjsonParser(1_000);
  assert.throws(() => {
    for (let piece = 0; piece < 100; piece += 1) [...parser.push('x'.repeat(100))];
  }, LineTooLongError);
});

test('ndjson: a 50 MB line fed in 64 KiB pieces is decoded whole when the bound allows it', () => {
  const size = 50_000_000;
  const text = `{"a":1}\n{"content":"${'c'.repeat(size)}"}\n{"done":true}`;
  const parser = new NdjsonParser(size + 20);
  const values: unknown[] = [];
  for (let offset = 0; offset < text.length; offset += PIECE)
    values.push(...parser.push(text.slice(offset, offset + PIECE)));
  values.push(...parser.finish());
  assert.equal(values.length, 3);
  assert.equal((values[1] as { content: string }).content.length, size);
  assert.deepEqual(values[2], { done: true });
});

test('ndjson: feeding a long line costs time in proportion to its length, not to its square', {
  timeout: 60_000,
}, () => {
  // A 32 MB line in 8 KiB pieces (4,096 of them): linear code reads it in well under a second even on a
  // loaded 2-core machine; code that rescans or re-copies the line on each piece moves about 64 GB and
  // takes tens of seconds. The bound sits far from both, so the test is not a timing test in disguise.
  const result = feedLongLine(32_000_000, 5_000, 8 * 1024);
  assert.ok(
    result.finished,
    `a 32 MB line in 8 KiB pieces took more than 5 s (${result.elapsedMs.toFixed(0)} ms): not linear`,
  );
});

/** Feeds one line of `size` characters (not JSON: only the splitting is timed) in pieces of `piece`, without its newline; gives up past `budgetMs`. */
function feedLongLine(size: number, budgetMs: number, piece: number): { elapsedMs: number; finished: boolean } {
  const text = 'n'.repeat(size);
  const parser = new NdjsonParser(size);
  const started = performance.now();
  for (let offset = 0; offset < text.length; offset += piece) {
    for (const _value of parser.push(text.slice(offset, offset + piece))) assert.fail('no line ends in the input');
    if (performance.now() - started > budgetMs) return { elapsedMs: performance.now() - started, finished: false };
  }
  return { elapsedMs: performance.now() - started, finished: true };
}
