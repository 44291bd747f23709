/** Anthropic's stream to our events: the SSE decoder (adapter.ts), the state machine (response.ts), error events (errors.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Dispatcher } from 'undici';
import { ProxyError } from '../../contract/errors.js';
import type { ProviderSettings, ProviderStreamEvent } from '../types.js';
import { AnthropicSseDecoder } from './adapter.js';
import { errorFromAnthropicPayload } from './errors.js';
import { convertAnthropicEvent, createAnthropicStreamState } from './response.js';

const API_KEY = 'sk-ant-api03-SECRET-0123456789';
const SETTINGS: ProviderSettings = {
  name: 'anthropic',
  type: 'anthropic',
  baseUrl: 'https://api.anthropic.com/v1',
  apiKey: API_KEY,
  dispatcher: {} as Dispatcher,
};

/** Anthropic's SSE framing: the event's type on `event:` and in the data. */
function sse(events: object[]): string {
  return events
    .map((event) => `event: ${(event as { type: string }).type}\ndata: ${JSON.stringify(event)}\n\n`)
    .join('');
}

/** Feeds `text` to a decoder in pieces of `pieceSize` characters (whole when undefined). */
function decode(text: string, pieceSize?: number): { events: ProviderStreamEvent[]; error: ProxyError | undefined } {
  const decoder = new AnthropicSseDecoder(SETTINGS);
  const events: ProviderStreamEvent[] = [];
  try {
    const size = pieceSize ?? text.length;
    for (let at = 0; at < text.length; at += size) decoder.push(text.slice(at, at + size), events);
    decoder.end(events);
  } catch (error) {
    assert.ok(error instanceof ProxyError, String(error));
    return { events, error };
  }
  return { events, error: undefined };
}

/** What a consumer makes of the events: text, reasoning, tool calls by index, finish, last usage. */
function assemble(events: ProviderStreamEvent[]) {
  let content = '';
  let reasoning = '';
  const calls: Array<{ id?: string; name?: string; arguments: string }> = [];
  let finish: string | undefined;
  let usage: unknown;
  for (const event of events) {
    if (event.type === 'delta') {
      content += event.content ?? '';
      reasoning += event.reasoningContent ?? '';
      for (const delta of event.toolCalls ?? []) {
        const call = (calls[delta.index] ??= { arguments: '' });
        if (delta.id !== undefined) call.id = delta.id;
        if (delta.function?.name !== undefined) call.name = delta.function.name;
        call.arguments += delta.function?.arguments ?? '';
      }
    } else if (event.type === 'finish') finish = event.finishReason;
    else if (event.type === 'usage') usage = event.usage;
  }
  return { content, reasoning, calls, finish, usage };
}

const start = (usage: object = { input_tokens: 25, output_tokens: 1 }) => ({
  type: 'message_start',
  message: {
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    content: [],
    model: 'claude-opus-4-1',
    stop_reason: null,
    usage,
  },
});
const blockStart = (index: number, block: object) => ({ type: 'content_block_start', index, content_block: block });
const delta = (index: number, value: object) => ({ type: 'content_block_delta', index, delta: value });
const blockStop = (index: number) => ({ type: 'content_block_stop', index });
const messageDelta = (stopReason: string | null, usage: object = { output_tokens: 42 }) => ({
  type: 'message_delta',
  delta: { stop_reason: stopReason, stop_sequence: null },
  usage,
});
const STOP = { type: 'message_stop' };

const PARALLEL_TOOLS = sse([
  start({ input_tokens: 25, cache_creation_input_tokens: 50, cache_read_input_tokens: 1000, output_tokens: 1 }),
  blockStart(0, { type: 'thinking', thinking: '', signature: '' }),
  { type: 'ping' },
  delta(0, { type: 'thinking_delta', thinking: 'Two cities, ' }),
  delta(0, { type: 'thinking_delta', thinking: 'two calls.' }),
  delta(0, { type: 'signature_delta', signature: 'EqQBCgIYAhIM-signature' }),
  blockStop(0),
  blockStart(1, { type: 'text', text: '' }),
  delta(1, { type: 'text_delta', text: 'Checking ' }),
  delta(1, { type: 'text_delta', text: 'Kyiv and Zürich 🌍' }),
  blockStop(1),
  blockStart(2, { type: 'tool_use', id: 'toolu_a', name: 'get_weather', input: {} }),
  delta(2, { type: 'input_json_delta', partial_json: '' }),
  delta(2, { type: 'input_json_delta', partial_json: '{"ci' }),
  delta(2, { type: 'input_json_delta', partial_json: 'ty": "Ky' }),
  delta(2, { type: 'input_json_delta', partial_json: 'iv"}' }),
  blockStop(2),
  blockStart(3, { type: 'tool_use', id: 'toolu_b', name: 'get_weather', input: {} }),
  delta(3, { type: 'input_json_delta', partial_json: '{"city": "Z' }),
  delta(3, { type: 'input_json_delta', partial_json: 'ürich", "unit"' }),
  delta(3, { type: 'input_json_delta', partial_json: ': "c"}' }),
  blockStop(3),
  messageDelta('tool_use', { output_tokens: 90 }),
  STOP,
]);

test('stream: thinking, text and parallel tool calls over many input_json_delta events; cache counts in usage', () => {
  const { events, error } = decode(PARALLEL_TOOLS);
  assert.equal(error, undefined);
  assert.deepEqual(events[0], { type: 'model', modelResolved: 'claude-opus-4-1' });
  const result = assemble(events);
  assert.equal(result.content, 'Checking Kyiv and Zürich 🌍');
  assert.equal(result.reasoning, 'Two cities, two calls.');
  // Indexes are the tool calls' ordinals (0, 1), not the content blocks' (2, 3).
  assert.deepEqual(
    result.calls.map((call) => ({ ...call, arguments: JSON.parse(call.arguments) })),
    [
      { id: 'toolu_a', name: 'get_weather', arguments: { city: 'Kyiv' } },
      { id: 'toolu_b', name: 'get_weather', arguments: { city: 'Zürich', unit: 'c' } },
    ],
  );
  const firstOfEach = events.filter((event) => event.type === 'delta' && event.toolCalls?.[0]?.id !== undefined);
  assert.deepEqual(
    firstOfEach.map((event) => (event as { toolCalls: unknown[] }).toolCalls),
    [
      [{ index: 0, id: 'toolu_a', type: 'function', function: { name: 'get_weather', arguments: '' } }],
      [{ index: 1, id: 'toolu_b', type: 'function', function: { name: 'get_weather', arguments: '' } }],
    ],
  );
  assert.equal(result.finish, 'tool_calls');
  assert.deepEqual(result.usage, { promptTokens: 1075, completionTokens: 90, cachedPromptTokens: 1000 });
  assert.ok(!JSON.stringify(events).includes('signature'), 'signatures are dropped');
  // However the text is cut, the same events come out.
  for (const size of [1, 2, 7, 64]) assert.deepEqual(decode(PARALLEL_TOOLS, size).events, events, `pieces of ${size}`);
  assert.deepEqual(decode(PARALLEL_TOOLS.replace(/\n/g, '\r\n'), 3).events, events, 'CRLF');
});

test('stream: a tool call without argument pieces gets "{}"; server tool blocks and unknown events are ignored', () => {
  const { events, error } = decode(
    sse([
      start(),
      blockStart(0, { type: 'server_tool_use', id: 'srvtoolu_1', name: 'web_search', input: {} }),
      delta(0, { type: 'input_json_delta', partial_json: '{"query": "x"}' }),
      blockStop(0),
      blockStart(1, { type: 'web_search_tool_result', tool_use_id: 'srvtoolu_1', content: [] }),
      blockStop(1),
      { type: 'some_future_event', payload: 1 },
      blockStart(2, { type: 'tool_use', id: 'toolu_now', name: 'now', input: {} }),
      blockStop(2),
      blockStart(3, { type: 'text', text: '' }),
      delta(3, { type: 'citations_delta', citation: {} }),
      blockStop(3),
      messageDelta('tool_use'),
      STOP,
    ]),
  );
  assert.equal(error, undefined);
  assert.deepEqual(assemble(events).calls, [{ id: 'toolu_now', name: 'now', arguments: '{}' }]);
});

test('stream: message_delta counts are cumulative and revise message_start; finish once; stop reasons mapped', () => {
  const { events } = decode(
    sse([
      start({ input_tokens: 10, output_tokens: 1 }),
      blockStart(0, { type: 'text', text: '' }),
      delta(0, { type: 'text_delta', text: 'cut' }),
      blockStop(0),
      messageDelta('max_tokens', { output_tokens: 5 }),
      messageDelta('end_turn', { input_tokens: 12, output_tokens: 7, cache_read_input_tokens: null }),
      STOP,
    ]),
  );
  assert.deepEqual(
    events.filter((event) => event.type === 'finish'),
    [{ type: 'finish', finishReason: 'length' }],
  );
  assert.deepEqual(assemble(events).usage, { promptTokens: 12, completionTokens: 7 });
  for (const [reason, expected] of [
    ['refusal', 'content_filter'],
    ['stop_sequence', 'stop'],
    ['pause_turn', 'stop'],
  ]) {
    assert.equal(assemble(decode(sse([start(), messageDelta(reason!), STOP])).events).finish, expected);
  }
});

test('stream: the end of the body before message_stop and without a stop reason is a cut stream', () => {
  const cut = decode(
    sse([start(), blockStart(0, { type: 'text', text: '' }), delta(0, { type: 'text_delta', text: 'Hel' })]),
  );
  assert.equal(assemble(cut.events).content, 'Hel');
  assert.equal(cut.error?.code, 'upstream_error');
  assert.equal(cut.error?.retryable, true);
  assert.match(cut.error?.message ?? '', /stream ended early/);
  // Half an event at the end is a cut too, not malformed JSON.
  const half = sse([start(), messageDelta('end_turn')]);
  assert.match(decode(half.slice(0, -10)).error?.message ?? '', /stream ended early/);
  // A stop reason without message_stop is a complete answer.
  assert.equal(decode(half).error, undefined);
  // Events after message_stop are not read.
  assert.equal(
    decode(`${sse([start(), messageDelta('end_turn'), STOP])}event: x\ndata: {not json\n\n`).error,
    undefined,
  );
  const malformed = decode(
    `${sse([start()])}event: content_block_delta\ndata: {"type": "content_block_delta",\n\n${sse([STOP])}`,
  );
  assert.match(malformed.error?.message ?? '', /malformed JSON in stream/);
  assert.match(decode(sse([start(), { no: 'type' }])).error?.message ?? '', /stream event without a type/);
  assert.match(
    decode(sse([start(), blockStart(0, { type: 'tool_use', name: 'x', input: {} })])).error?.message ?? '',
    /tool_use block without id or name/,
  );
});

test('stream: an error event after some content throws as its type would as HTTP, after the content', () => {
  const table: Array<[string, string, boolean]> = [
    ['overloaded_error', 'upstream_error', true],
    ['api_error', 'upstream_error', true],
    ['rate_limit_error', 'rate_limited', true],
    ['invalid_request_error', 'invalid_request', false],
    ['authentication_error', 'upstream_error', false],
    ['request_too_large', 'payload_too_large', false],
    ['something_new', 'upstream_error', true],
    ['constructor', 'upstream_error', true],
  ];
  for (const [type, code, retryable] of table) {
    const { events, error } = decode(
      sse([
        start(),
        blockStart(0, { type: 'text', text: '' }),
        delta(0, { type: 'text_delta', text: 'Partial' }),
        { type: 'error', error: { type, message: `Bad luck (key ${API_KEY})` } },
      ]),
    );
    assert.equal(assemble(events).content, 'Partial', type);
    assert.equal(error?.code, code, type);
    assert.equal(error?.retryable, retryable, type);
    assert.equal(error?.upstreamStatus, 200, type);
    assert.match(error?.message ?? '', /^anthropic: Bad luck/);
    assert.ok(!error?.message.includes(API_KEY), 'the key is redacted');
  }
  const tooLong = errorFromAnthropicPayload(SETTINGS, {
    type: 'error',
    error: { type: 'invalid_request_error', message: 'prompt is too long: 210000 tokens > 200000 maximum' },
  });
  assert.equal(tooLong.contextLengthExceeded, true);
  // `event: error` whatever its data says.
  assert.equal(decode(`${sse([start()])}event: error\ndata: {"message": "boom"}\n\n`).error?.code, 'upstream_error');
});

test('stream state: events straight to the converter (no SSE)', () => {
  const state = createAnthropicStreamState();
  assert.deepEqual(convertAnthropicEvent(SETTINGS, { type: 'ping' }, state), []);
  assert.deepEqual(convertAnthropicEvent(SETTINGS, start(), state), [
    { type: 'model', modelResolved: 'claude-opus-4-1' },
  ]);
  assert.deepEqual(convertAnthropicEvent(SETTINGS, blockStart(0, { type: 'text', text: 'Hi' }), state), [
    { type: 'delta', content: 'Hi' },
  ]);
  // A delta for a block that never started is dropped.
  assert.deepEqual(convertAnthropicEvent(SETTINGS, delta(5, { type: 'text_delta', text: 'x' }), state), []);
  assert.throws(() => convertAnthropicEvent(SETTINGS, { type: 'content_block_delta', index: -1 }, state), /unexpected/);
  convertAnthropicEvent(SETTINGS, STOP, state);
  assert.equal(state.stopped, true);
});
