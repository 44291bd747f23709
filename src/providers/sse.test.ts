import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, type SseEvent } from './sse.js';

/** A real OpenAI stream (shortened), with the quirks seen in the wild mixed in. */
const OPENAI_STREAM = [
  ': OPENROUTER PROCESSING\n\n',
  'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}\n\n',
  'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{"content":"Héllo 🌍"},"finish_reason":null}],"usage":null}\n\n',
  'data:\n\n',
  'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n',
  'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n',
  'data: [DONE]\n\n',
].join('');

function parseAll(pieces: string[]): SseEvent[] {
  const parser = new SseParser();
  const events: SseEvent[] = [];
  for (const piece of pieces) events.push(...parser.push(piece));
  events.push(...parser.finish());
  return events;
}

/** Deterministic odd splits (a small linear congruential generator). */
function splitPseudoRandomly(text: string, seed: number): string[] {
  const pieces: string[] = [];
  let state = seed;
  let index = 0;
  while (index < text.length) {
    state = (state * 1103515245 + 12345) % 2147483648;
    const size = 1 + (state % 17);
    pieces.push(text.slice(index, index + size));
    index += size;
  }
  return pieces;
}

const whole = parseAll([OPENAI_STREAM]);

test('sse: a whole stream gives its data events, comments and empty data dropped', () => {
  assert.equal(whole.length, 5);
  assert.equal(whole.at(-1)?.data, '[DONE]');
  assert.match(whole[1]?.data ?? '', /Héllo 🌍/);
  assert.ok(whole.every((event) => event.event === undefined));
});

test('sse: fed one character at a time gives the same events', () => {
  assert.deepEqual(parseAll(Array.from(OPENAI_STREAM)), whole);
});

test('sse: odd splits, with LF, CRLF and CR line ends, give the same events', () => {
  for (const lineEnd of ['\n', '\r\n', '\r']) {
    const text = OPENAI_STREAM.replace(/\n/g, lineEnd);
    for (let seed = 1; seed <= 25; seed += 1) {
      assert.deepEqual(parseAll(splitPseudoRandomly(text, seed)), whole, `line end ${JSON.stringify(lineEnd)}, seed ${seed}`);
    }
  }
});

test('sse: a CRLF pair split across two pieces is one line end, not two', () => {
  assert.deepEqual(parseAll(['data: a\r', '\n\r', '\ndata: b\r\n\r\n']), [
    { event: undefined, data: 'a' },
    { event: undefined, data: 'b' },
  ]);
});

test('sse: several events in one piece, multi-line data, event names, no space after the colon', () => {
  const events = parseAll(['data:one\n\nevent: error\ndata: {"error":\ndata: "x"}\n\nid: 7\nretry: 100\ndata: two\n\n']);
  assert.deepEqual(events, [
    { event: undefined, data: 'one' },
    { event: 'error', data: '{"error":\n"x"}' },
    { event: undefined, data: 'two' },
  ]);
});

test('sse: a leading BOM is ignored', () => {
  assert.deepEqual(parseAll(['\uFEFFdata: x\n\n']), [{ event: undefined, data: 'x' }]);
});

test('sse: an event not closed by a blank line is still delivered at the end', () => {
  assert.deepEqual(parseAll(['data: [DONE]\n']), [{ event: undefined, data: '[DONE]' }]);
  assert.deepEqual(parseAll(['data: [DONE]']), [{ event: undefined, data: '[DONE]' }]);
  assert.deepEqual(parseAll(['data: [DONE]\r']), [{ event: undefined, data: '[DONE]' }]);
});

test('sse: nothing but comments and blank lines gives no event', () => {
  assert.deepEqual(parseAll([': ping\n\n: ping\r\n\r\n\n\n']), []);
});
