import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import { errorFromStatus } from '../transport/provider-error.js';
import { GeminiSseDecoder, mapGeminiError } from './adapter.js';
import { convertGeminiChunk, createGeminiStreamState, endGeminiStream } from './response.js';
import { geminiResponseSchema } from './schema.js';
import type { ProviderSettings, ProviderStreamEvent } from '../types.js';

const KEY = 'AIza-test-SECRET-key';
const settings = { name: 'gemini', type: 'gemini', baseUrl: 'http://x', apiKey: KEY } as unknown as ProviderSettings;

const text = (piece: string) => ({ content: { parts: [{ text: piece }], role: 'model' }, index: 0 });
const event = (value: unknown) => `data: ${JSON.stringify(value)}\r\n\r\n`;

test('stream: thoughts, text, parallel calls in one event and more across events, finish, usage (last wins) at the end', () => {
  const chunks = [
    { candidates: [{ content: { parts: [{ text: 'Plan.', thought: true }] } }], modelVersion: 'gemini-2.5-flash-001' },
    {
      candidates: [text('Let me check.')],
      usageMetadata: { promptTokenCount: 30 },
      modelVersion: 'gemini-2.5-flash-001',
    },
    {
      candidates: [
        {
          content: {
            parts: [
              { functionCall: { name: 'get_weather', args: { city: 'Paris' } }, thoughtSignature: 'c2ln' },
              { functionCall: { name: 'get_weather', args: { city: 'Rome' } } },
            ],
          },
        },
      ],
    },
    {
      candidates: [
        { content: { parts: [{ functionCall: { id: 'g-9', name: 'get_time', args: {} } }] }, finishReason: 'STOP' },
      ],
      usageMetadata: {
        promptTokenCount: 30,
        candidatesTokenCount: 12,
        thoughtsTokenCount: 40,
        cachedContentTokenCount: 16,
      },
    },
  ];
  const state = createGeminiStreamState();
  const events: ProviderStreamEvent[] = chunks.flatMap((chunk) =>
    convertGeminiChunk(geminiResponseSchema.parse(chunk), state),
  );
  events.push(...endGeminiStream(state));
  assert.deepEqual(events, [
    { type: 'model', modelResolved: 'gemini-2.5-flash-001' },
    { type: 'delta', reasoningContent: 'Plan.' },
    { type: 'delta', content: 'Let me check.' },
    {
      type: 'delta',
      toolCalls: [
        { index: 0, id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
        { index: 1, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
      ],
    },
    {
      type: 'delta',
      toolCalls: [{ index: 2, id: 'g-9', type: 'function', function: { name: 'get_time', arguments: '{}' } }],
    },
    { type: 'finish', finishReason: 'tool_calls' },
    { type: 'usage', usage: { promptTokens: 30, completionTokens: 52, cachedPromptTokens: 16 } },
  ]);
});

test('stream: a safety stop and a blocked prompt give a refusal delta, then content_filter', () => {
  const state = createGeminiStreamState();
  const safety = [
    { candidates: [text('Here is how')] },
    {
      candidates: [
        { finishReason: 'SAFETY', safetyRatings: [{ category: 'HARM_CATEGORY_HARASSMENT', blocked: true }] },
      ],
    },
  ].flatMap((chunk) => convertGeminiChunk(geminiResponseSchema.parse(chunk), state));
  assert.deepEqual(safety, [
    { type: 'delta', content: 'Here is how' },
    { type: 'delta', refusal: 'blocked by Gemini: SAFETY (HARM_CATEGORY_HARASSMENT)' },
    { type: 'finish', finishReason: 'content_filter' },
  ]);
  const blocked = convertGeminiChunk(
    geminiResponseSchema.parse({ promptFeedback: { blockReason: 'OTHER' }, usageMetadata: { promptTokenCount: 4 } }),
    createGeminiStreamState(),
  );
  assert.deepEqual(blocked, [
    { type: 'delta', refusal: 'blocked by Gemini: OTHER' },
    { type: 'finish', finishReason: 'content_filter' },
  ]);
});

test('stream: candidates interleaved across events, each with its own deltas, tool-call ordinals and finish', () => {
  const call = (q: string, id?: string) => ({ functionCall: { ...(id ? { id } : {}), name: 'lookup', args: { q } } });
  const chunks = [
    {
      // Candidate 0 without its index (proto3 leaves out 0), beside one that has it.
      candidates: [text('A1 '), { content: { parts: [{ text: 'B1 ' }] }, index: 1 }],
      modelVersion: 'gemini-2.5-flash-001',
    },
    {
      candidates: [
        { content: { parts: [call('x')] }, index: 2 },
        { content: { parts: [{ text: 'B2' }] }, finishReason: 'MAX_TOKENS', index: 1 },
      ],
    },
    { candidates: [{ content: { parts: [{ text: 'A2' }, call('y', 'g-1')] }, finishReason: 'STOP' }] },
    {
      candidates: [
        { content: { parts: [call('z')] }, finishReason: 'STOP', index: 2 },
        { finishReason: 'STOP', index: 1 },
      ],
      usageMetadata: { promptTokenCount: 5, candidatesTokenCount: 20 },
    },
  ];
  const state = createGeminiStreamState(3);
  const events = chunks.flatMap((chunk) => convertGeminiChunk(geminiResponseSchema.parse(chunk), state));
  events.push(...endGeminiStream(state));
  const lookup = (index: number, id: string, q: string) => ({
    index,
    id,
    type: 'function',
    function: { name: 'lookup', arguments: JSON.stringify({ q }) },
  });
  assert.deepEqual(events, [
    { type: 'model', modelResolved: 'gemini-2.5-flash-001' },
    { type: 'delta', content: 'A1 ' },
    { type: 'delta', index: 1, content: 'B1 ' },
    { type: 'delta', index: 2, toolCalls: [lookup(0, 'call_0', 'x')] },
    { type: 'delta', index: 1, content: 'B2' },
    { type: 'finish', index: 1, finishReason: 'length' },
    // Candidate 0's first call: ordinal 0 of its own; a made-up id would have been call_1 (ids unique in the answer).
    { type: 'delta', content: 'A2', toolCalls: [lookup(0, 'g-1', 'y')] },
    { type: 'finish', finishReason: 'tool_calls' },
    { type: 'delta', index: 2, toolCalls: [lookup(1, 'call_2', 'z')] },
    { type: 'finish', index: 2, finishReason: 'tool_calls' },
    // Candidate 1's second finish reason is not a second finish.
    { type: 'usage', usage: { promptTokens: 5, completionTokens: 20 } },
  ]);
  const blocked = convertGeminiChunk(
    geminiResponseSchema.parse({ promptFeedback: { blockReason: 'SAFETY' } }),
    createGeminiStreamState(2),
  );
  assert.deepEqual(blocked, [
    { type: 'delta', refusal: 'blocked by Gemini: SAFETY' },
    { type: 'finish', finishReason: 'content_filter' },
    { type: 'delta', index: 1, refusal: 'blocked by Gemini: SAFETY' },
    { type: 'finish', index: 1, finishReason: 'content_filter' },
  ]);
});

/** Feeds the text in pieces of `size` characters; returns the events and the error thrown, if any. */
function decode(
  body: string,
  size = 7,
  choiceCount = 1,
): { events: ProviderStreamEvent[]; error: ProxyError | undefined } {
  const decoder = new GeminiSseDecoder(settings, choiceCount);
  const events: ProviderStreamEvent[] = [];
  try {
    for (let offset = 0; offset < body.length; offset += size) decoder.push(body.slice(offset, offset + size), events);
    decoder.end(events);
  } catch (error) {
    assert.ok(error instanceof ProxyError, String(error));
    return { events, error };
  }
  return { events, error: undefined };
}

test('decoder: CRLF events in any pieces; a stream that ends without a finish reason ended early', () => {
  const body =
    event({ candidates: [text('Bonjour ')] }) + event({ candidates: [{ ...text('🌍'), finishReason: 'MAX_TOKENS' }] });
  for (const size of [1, 3, 1000]) {
    const { events, error } = decode(body, size);
    assert.equal(error, undefined);
    assert.deepEqual(events, [
      { type: 'delta', content: 'Bonjour ' },
      { type: 'delta', content: '🌍' },
      { type: 'finish', finishReason: 'length' },
    ]);
  }
  const cut = decode(event({ candidates: [text('Bonjour ')] }));
  assert.equal(cut.events.length, 1);
  assert.match(cut.error!.message, /stream ended early/);
  assert.equal(
    decode(`${event({ candidates: [text('a')] })}data: {"candid`).error?.message,
    'gemini: stream ended early',
  );
  assert.match(decode('data: {oops}\r\n\r\ndata: {}\r\n\r\n').error!.message, /malformed JSON in stream/);
});

test('decoder: with several candidates the stream is whole once candidate 0 finished, not another', () => {
  const second = (piece: string, finishReason?: string) => ({
    content: { parts: [{ text: piece }] },
    index: 1,
    ...(finishReason ? { finishReason } : {}),
  });
  const cut = decode(event({ candidates: [text('a'), second('b', 'STOP')] }), 5, 2);
  assert.match(cut.error!.message, /stream ended early/);
  const whole = decode(
    event({ candidates: [{ ...text('a'), finishReason: 'STOP' }, second('b')] }) +
      event({ candidates: [second('c', 'STOP')] }),
    5,
    2,
  );
  assert.equal(whole.error, undefined);
  assert.deepEqual(whole.events, [
    { type: 'delta', content: 'a' },
    { type: 'finish', finishReason: 'stop' },
    { type: 'delta', index: 1, content: 'b' },
    { type: 'delta', index: 1, content: 'c' },
    { type: 'finish', index: 1, finishReason: 'stop' },
  ]);
});

test('decoder: an error object mid-stream maps as its HTTP code would, after the events before it', () => {
  const error = (code: number, status: string, details?: object[]) =>
    ({ error: { code, message: `trouble ${KEY}`, status, ...(details ? { details } : {}) } }) as const;
  const unavailable = decode(event({ candidates: [text('Hi')] }) + event(error(503, 'UNAVAILABLE')));
  assert.deepEqual(unavailable.events, [{ type: 'delta', content: 'Hi' }]);
  assert.equal(unavailable.error?.code, 'upstream_error');
  assert.equal(unavailable.error?.retryable, true);
  assert.equal(unavailable.error?.upstreamStatus, 503);
  assert.equal(unavailable.error?.message, 'gemini: trouble [redacted]');
  const limited = decode(
    event(
      error(429, 'RESOURCE_EXHAUSTED', [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '7s' }]),
    ),
  );
  assert.equal(limited.error?.code, 'rate_limited');
  assert.equal(limited.error?.retryAfterMs, 7000);
  // The SDKs also read an error written as plain (pretty-printed) JSON, without `data:`.
  const bare = decode(event({ candidates: [text('Hi')] }) + JSON.stringify(error(500, 'INTERNAL'), null, 2), 5);
  assert.deepEqual(bare.events, [{ type: 'delta', content: 'Hi' }]);
  assert.equal(bare.error?.code, 'upstream_error');
  assert.equal(bare.error?.upstreamStatus, 500);
  assert.equal(decode(JSON.stringify(error(400, 'INVALID_ARGUMENT'))).error?.code, 'invalid_request');
});

test("errorFromStatus: Google's RetryInfo gives retryAfterMs when there is no Retry-After header", () => {
  const body = (retryDelay: string) =>
    JSON.stringify({
      error: {
        code: 429,
        message: 'You exceeded your current quota.',
        status: 'RESOURCE_EXHAUSTED',
        details: [
          { '@type': 'type.googleapis.com/google.rpc.Help', links: [] },
          { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay },
        ],
      },
    });
  const error = (status: number, bodyText: string, headers: Record<string, string> = {}) =>
    errorFromStatus({ provider: 'gemini', status, headers, bodyText, secrets: [] });
  assert.equal(error(429, body('30s')).retryAfterMs, 30_000);
  assert.equal(error(503, body('1.5s')).retryAfterMs, 1_500);
  assert.equal(error(429, `[${body('2s')}]`).retryAfterMs, 2_000, 'an array of errors, as Vertex sends');
  assert.equal(error(429, body('30s'), { 'retry-after': '4' }).retryAfterMs, 4_000, 'the header wins');
  assert.equal(error(429, body('soon')).retryAfterMs, undefined);
  assert.equal(error(500, body('30s')).retryAfterMs, undefined);
  assert.equal(error(429, body('30s')).message, 'gemini: You exceeded your current quota.');
});

test("Gemini's 400s: a refused key is upstream_error, a prompt over the context is flagged, others stay", () => {
  const google400 = (message: string) =>
    errorFromStatus({
      provider: 'gemini',
      status: 400,
      headers: {},
      bodyText: JSON.stringify({ error: { code: 400, message, status: 'INVALID_ARGUMENT' } }),
      secrets: [],
    });
  const key = mapGeminiError(google400('API key not valid. Please pass a valid API key.')) as ProxyError;
  assert.equal(key.code, 'upstream_error');
  assert.equal(key.retryable, false);
  const long = mapGeminiError(
    google400('The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).'),
  ) as ProxyError;
  assert.equal(long.code, 'invalid_request');
  assert.equal(long.contextLengthExceeded, true);
  const other = google400('Invalid JSON payload received.');
  assert.equal(mapGeminiError(other), other);
});
