import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineTooLongError, SseParser, type SseEvent } from './sse.js';

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
      assert.deepEqual(
        parseAll(splitPseudoRandomly(text, seed)),
        whole,
        `line end ${JSON.stringify(lineEnd)}, seed ${seed}`,
      );
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
  const events = parseAll([
    'data:one\n\nevent: error\ndata: {"error":\ndata: "x"}\n\nid: 7\nretry: 100\ndata: two\n\n',
  ]);
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

test('sse: a line, or the data of one event, over the bound throws LineTooLongError; up to the bound passes', () => {
  const line = `data: ${'x'.repeat(94)}`; // 100 characters
  assert.deepEqual(parseAllBounded([`${line}\n\n`], 100), [{ event: undefined, data: 'x'.repeat(94) }]);
  assert.throws(
    () => parseAllBounded([`${line}x\n\n`], 100),
    (error: unknown) => error instanceof LineTooLongError && error.what === 'line' && error.limit === 100,
  );
  // Three lines of 40 characters each, whose data is 3 × 34 + 2 newlines = 104 together.
  const event = `data: ${'y'.repeat(34)}\n`.repeat(3);
  assert.throws(
    () => parseAllBounded([`${event}\n`], 100),
    (error: unknown) => error instanceof LineTooLongError && error.what === 'event',
  );
  assert.equal(parseAllBounded([`${event}\n`], 104).length, 1);
});

test('sse: a line that never ends throws once it passes the bound, without waiting for its end', () => {
  const parser = new SseParser(1_000);
  parser.push('data: ');
  assert.throws(() => {
    for (let piece = 0; piece < 100; piece += 1) parser.push('x'.repeat(100));
  }, LineTooLongError);
});

test('sse: the events completed before a line over the bound are handed over before the throw', () => {
  const parser = new SseParser(50);
  const out: SseEvent[] = [];
  assert.throws(() => parser.push(`data: one\n\ndata: two\n\ndata: ${'z'.repeat(60)}\n\n`, out), LineTooLongError);
  assert.deepEqual(
    out.map((event) => event.data),
    ['one', 'two'],
  );
});

test('sse: a 50 MB line fed in 64 KiB pieces is decoded whole when the bound allows it', () => {
  const size = 50_000_000;
  const text = `: hello\n\ndata: ${'a'.repeat(size)}\r\n\r\ndata: [DONE]\n\n`;
  const parser = new SseParser(size + 'data: '.length);
  const events: SseEvent[] = [];
  for (let offset = 0; offset < text.length; offset += PIECE) parser.push(text.slice(offset, offset + PIECE), events);
  parser.finish(events);
  assert.equal(events.length, 2);
  assert.equal(events[0]!.data.length, size);
  assert.equal(events[1]!.data, '[DONE]');
});

test('sse: feeding a long line costs time in proportion to its length, not to its square', { timeout: 60_000 }, () => {
  // A 32 MB line in 8 KiB pieces (4,096 of them): linear code reads it in well under a second even on a
  // loaded 2-core machine; code that rescans or re-copies the line on each piece moves about 64 GB and
  // takes tens of seconds. The bound sits far from both, so the test is not a timing test in disguise.
  const result = feedLongLine(32_000_000, 5_000, 8 * 1024);
  assert.ok(
    result.finished,
    `a 32 MB line in 8 KiB pieces took more than 5 s (${result.elapsedMs.toFixed(0)} ms): not linear`,
  );
});

const PIECE = 64 * 1024;

function parseAllBounded(pieces: string[], maxLineLength: number): SseEvent[] {
  const parser = new SseParser(maxLineLength);
  const events: SseEvent[] = [];
  for (const piece of pieces) parser.push(piece, events);
  return parser.finish(events);
}

/** Feeds one `data:` line of `size` characters in pieces of `piece`; gives up once `budgetMs` is spent. */
function feedLongLine(size: number, budgetMs: number, piece: number): { elapsedMs: number; finished: boolean } {
  const text = `data: ${'b'.repeat(size)}\n\n`;
  const parser = new SseParser(size + 6);
  const events: SseEvent[] = [];
  const started = performance.now();
  for (let offset = 0; offset < text.length; offset += piece) {
    events.push(...parser.push(text.slice(offset, offset + piece)));
    if (performance.now() - started > budgetMs) return { elapsedMs: performance.now() - started, finished: false };
  }
  assert.equal(events[0]?.data.length, size);
  return { elapsedMs: performance.now() - started, finished: true };
}
