import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import { convertGeminiResponse, convertGeminiUsage, mapGeminiFinishReason } from './response.js';
import { geminiResponseSchema } from './schema.js';

const parse = (json: unknown) => geminiResponseSchema.parse(json);

test('response: text, thought summaries, usage with thoughts and cached tokens, modelVersion', () => {
  const response = parse({
    candidates: [
      {
        content: {
          parts: [
            { text: 'Weighing it up.', thought: true },
            { text: 'Hello' },
            { text: ', world!', thoughtSignature: 'c2ln' },
          ],
          role: 'model',
        },
        finishReason: 'STOP',
        index: 0,
      },
    ],
    usageMetadata: {
      promptTokenCount: 100,
      candidatesTokenCount: 5,
      thoughtsTokenCount: 20,
      cachedContentTokenCount: 64,
      totalTokenCount: 125,
    },
    modelVersion: 'gemini-2.5-flash-001',
    responseId: 'abc',
  });
  assert.deepEqual(convertGeminiResponse(response, 'gemini-2.5-flash', 'gemini'), {
    content: 'Hello, world!',
    reasoningContent: 'Weighing it up.',
    finishReason: 'stop',
    modelResolved: 'gemini-2.5-flash-001',
    usage: { promptTokens: 100, completionTokens: 25, cachedPromptTokens: 64 },
  });
});

test('response: function calls with Gemini ids or call_<n>, arguments as JSON, finish tool_calls', () => {
  const response = parse({
    candidates: [
      {
        content: {
          parts: [
            { functionCall: { name: 'get_weather', args: { city: 'Paris', days: [1, 2] } } },
            { functionCall: { id: 'g-1', name: 'get_time' } },
          ],
        },
        finishReason: 'STOP',
      },
    ],
  });
  const converted = convertGeminiResponse(response, 'asked', 'gemini');
  assert.equal(converted.content, null);
  assert.equal(converted.finishReason, 'tool_calls');
  assert.equal(converted.modelResolved, 'asked');
  assert.equal(converted.usage, undefined);
  assert.deepEqual(converted.toolCalls, [
    { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","days":[1,2]}' } },
    { id: 'g-1', type: 'function', function: { name: 'get_time', arguments: '{}' } },
  ]);
});

test('response: a candidate stopped for safety is content_filter, the blocking categories in refusal', () => {
  const converted = convertGeminiResponse(
    parse({
      candidates: [
        {
          finishReason: 'SAFETY',
          safetyRatings: [
            { category: 'HARM_CATEGORY_HATE_SPEECH', probability: 'NEGLIGIBLE' },
            { category: 'HARM_CATEGORY_DANGEROUS_CONTENT', probability: 'HIGH', blocked: true },
          ],
        },
      ],
      usageMetadata: { promptTokenCount: 9, totalTokenCount: 9 },
    }),
    'asked',
    'gemini',
  );
  assert.deepEqual(converted, {
    content: null,
    finishReason: 'content_filter',
    refusal: 'blocked by Gemini: SAFETY (HARM_CATEGORY_DANGEROUS_CONTENT)',
    modelResolved: 'asked',
    usage: { promptTokens: 9, completionTokens: 0 },
  });
  const recitation = convertGeminiResponse(
    parse({ candidates: [{ content: { parts: [{ text: 'Once upon' }] }, finishReason: 'RECITATION' }] }),
    'asked',
    'gemini',
  );
  assert.equal(recitation.content, 'Once upon', 'what came before the stop is kept');
  assert.equal(recitation.refusal, 'blocked by Gemini: RECITATION');
});

test('response: a blocked prompt (no candidates) is content_filter with content null and the reason kept', () => {
  const converted = convertGeminiResponse(
    parse({
      promptFeedback: {
        blockReason: 'PROHIBITED_CONTENT',
        safetyRatings: [{ category: 'HARM_CATEGORY_SEXUALLY_EXPLICIT', probability: 'MEDIUM' }],
      },
      usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
      modelVersion: 'gemini-2.5-pro',
    }),
    'asked',
    'gemini',
  );
  assert.deepEqual(converted, {
    content: null,
    finishReason: 'content_filter',
    refusal: 'blocked by Gemini: PROHIBITED_CONTENT (HARM_CATEGORY_SEXUALLY_EXPLICIT)',
    modelResolved: 'gemini-2.5-pro',
    usage: { promptTokens: 12, completionTokens: 0 },
  });
  assert.throws(
    () => convertGeminiResponse(parse({ candidates: [] }), 'asked', 'gemini'),
    (error: unknown) =>
      error instanceof ProxyError && error.code === 'upstream_error' && /no candidates/.test(error.message),
  );
});

test('response: several candidates are choices by index, each with its own finish, refusal and tool calls', () => {
  const converted = convertGeminiResponse(
    parse({
      candidates: [
        {
          content: { parts: [{ functionCall: { name: 'lookup', args: { q: 'c' } } }] },
          finishReason: 'STOP',
          index: 2,
        },
        // proto3 JSON leaves out index 0.
        { content: { parts: [{ text: 'First.' }, { functionCall: { name: 'lookup', args: { q: 'a' } } }] } },
        {
          content: { parts: [{ text: 'Well' }] },
          finishReason: 'SAFETY',
          safetyRatings: [{ category: 'HARM_CATEGORY_HARASSMENT', blocked: true }],
          index: 1,
        },
      ],
      usageMetadata: { promptTokenCount: 10, candidatesTokenCount: 30 },
      modelVersion: 'gemini-2.5-flash-001',
    }),
    'asked',
    'gemini',
    3,
  );
  const first = {
    content: 'First.',
    toolCalls: [{ id: 'call_0', type: 'function' as const, function: { name: 'lookup', arguments: '{"q":"a"}' } }],
    finishReason: 'tool_calls' as const,
  };
  assert.deepEqual(converted, {
    ...first,
    modelResolved: 'gemini-2.5-flash-001',
    usage: { promptTokens: 10, completionTokens: 30 },
    choices: [
      first,
      {
        content: 'Well',
        refusal: 'blocked by Gemini: SAFETY (HARM_CATEGORY_HARASSMENT)',
        finishReason: 'content_filter',
      },
      {
        content: null,
        // Ids unique across the answer: candidate 2's own first call is not call_0 again.
        toolCalls: [{ id: 'call_1', type: 'function', function: { name: 'lookup', arguments: '{"q":"c"}' } }],
        finishReason: 'tool_calls',
      },
    ],
  });
});

test('response: candidates without any index keep their order; a repeated index loses no candidate', () => {
  const contents = (response: ReturnType<typeof convertGeminiResponse>) =>
    response.choices?.map((choice) => choice.content);
  const text = (piece: string, index?: number) => ({
    content: { parts: [{ text: piece }] },
    finishReason: 'STOP',
    ...(index === undefined ? {} : { index }),
  });
  const unnumbered = convertGeminiResponse(parse({ candidates: [text('a'), text('b'), text('c')] }), 'm', 'gemini', 3);
  assert.deepEqual(contents(unnumbered), ['a', 'b', 'c']);
  assert.equal(unnumbered.content, 'a');
  const repeated = convertGeminiResponse(parse({ candidates: [text('b', 1), text('c', 1), text('a')] }), 'm', 'g', 3);
  assert.deepEqual(contents(repeated), ['a', 'b', 'c']);
  const one = convertGeminiResponse(parse({ candidates: [text('only', 0)] }), 'm', 'gemini', 3);
  assert.equal(one.content, 'only');
  assert.ok(!('choices' in one), 'one candidate: no choices list, whatever n was');
});

test('response: a blocked prompt refuses every choice asked for', () => {
  const converted = convertGeminiResponse(
    parse({ promptFeedback: { blockReason: 'SAFETY' }, usageMetadata: { promptTokenCount: 3 } }),
    'asked',
    'gemini',
    2,
  );
  const refused = { content: null, finishReason: 'content_filter', refusal: 'blocked by Gemini: SAFETY' };
  assert.deepEqual(converted, {
    ...refused,
    choices: [refused, refused],
    modelResolved: 'asked',
    usage: { promptTokens: 3, completionTokens: 0 },
  });
});

test('finish reasons', () => {
  const table: Array<[string, boolean, string]> = [
    ['STOP', false, 'stop'],
    ['STOP', true, 'tool_calls'],
    ['MAX_TOKENS', true, 'length'],
    ['SAFETY', false, 'content_filter'],
    ['RECITATION', false, 'content_filter'],
    ['BLOCKLIST', false, 'content_filter'],
    ['PROHIBITED_CONTENT', false, 'content_filter'],
    ['SPII', false, 'content_filter'],
    ['IMAGE_SAFETY', false, 'content_filter'],
    ['MALFORMED_FUNCTION_CALL', false, 'error'],
    ['UNEXPECTED_TOOL_CALL', false, 'error'],
    ['LANGUAGE', false, 'error'],
    ['OTHER', false, 'stop'],
    ['SOMETHING_NEW', false, 'stop'],
  ];
  for (const [reason, hasToolCalls, expected] of table)
    assert.equal(mapGeminiFinishReason(reason, hasToolCalls), expected, `${reason} ${hasToolCalls}`);
});

test('usage: tool-use prompt tokens count as prompt; no prompt count marks the prompt missing; none is undefined', () => {
  assert.deepEqual(convertGeminiUsage({ promptTokenCount: 10, toolUsePromptTokenCount: 5, candidatesTokenCount: 3 }), {
    promptTokens: 15,
    completionTokens: 3,
  });
  assert.deepEqual(convertGeminiUsage({ candidatesTokenCount: 3 }), {
    promptTokens: 0,
    completionTokens: 3,
    missing: 'prompt',
  });
  assert.equal(convertGeminiUsage({}), undefined);
  assert.equal(convertGeminiUsage(undefined), undefined);
});
