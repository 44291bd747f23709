import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseChatRequest } from '../../contract/request.js';
import { convertOpenAIChunk, convertOpenAICompletion, createOpenAIStreamState } from './response.js';
import { convertToOpenAIRequest } from './request.js';
import { openAIChunkSchema, openAICompletionSchema } from './schema.js';
import type { ProviderStreamEvent } from '../types.js';

test('request: OpenAI parameters are sent, our own fields never, provider_options last', () => {
  const request = parseChatRequest({
    model: 'gpt-4.1-mini',
    messages: [{ role: 'user', content: 'Hello!' }],
    max_tokens: 100,
    temperature: 0.7,
    top_p: 0.9,
    stop: ['END'],
    seed: 7,
    n: 1,
    tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
    tool_choice: 'auto',
    response_format: { type: 'json_object' },
    reasoning_effort: 'low',
    stream: true,
    stream_options: { include_usage: false },
    metadata: { agent_id: 'agent:sofia' },
    request_id: 'r-1',
    timeout_ms: 5000,
    cache: 'bypass',
    provider_options: { temperature: 0.1, top_k: 40 },
  });
  const body = convertToOpenAIRequest('gpt-4-1106-preview', request, false);
  assert.equal(body.model, 'gpt-4-1106-preview');
  assert.deepEqual(body.messages, [{ role: 'user', content: 'Hello!' }]);
  assert.equal(body.max_tokens, 100);
  assert.equal(body.temperature, 0.1, 'provider_options override');
  assert.equal(body.top_k, 40);
  assert.deepEqual(body.stop, ['END']);
  assert.equal(body.reasoning_effort, 'low');
  assert.deepEqual(body.response_format, { type: 'json_object' });
  for (const ours of [
    'metadata',
    'request_id',
    'timeout_ms',
    'cache',
    'provider_options',
    'stream',
    'stream_options',
  ]) {
    assert.ok(!(ours in body), `${ours} must not be sent`);
  }
  const streamed = convertToOpenAIRequest('m', request, true);
  assert.equal(streamed.stream, true);
  assert.deepEqual(streamed.stream_options, { include_usage: true });
});

test('response: a plain completion', () => {
  const completion = openAICompletionSchema.parse({
    id: 'chatcmpl-abc',
    object: 'chat.completion',
    created: 1,
    model: 'gpt-4-1106-preview',
    system_fingerprint: 'fp',
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: 'Hello! How can I help?', refusal: null },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: { prompt_tokens: 25, completion_tokens: 10, total_tokens: 35, prompt_tokens_details: { cached_tokens: 0 } },
  });
  assert.deepEqual(convertOpenAICompletion(completion, 'asked'), {
    content: 'Hello! How can I help?',
    finishReason: 'stop',
    modelResolved: 'gpt-4-1106-preview',
    usage: { promptTokens: 25, completionTokens: 10 },
  });
});

test('response: tool calls, and DeepSeek-R1 reasoning_content, and no usage', () => {
  const completion = openAICompletionSchema.parse({
    model: 'deepseek-reasoner',
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: null,
          reasoning_content: 'The user wants the weather.',
          tool_calls: [
            { id: 'call_abc', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
          ],
        },
        finish_reason: 'tool_calls',
      },
    ],
  });
  const response = convertOpenAICompletion(completion, 'asked');
  assert.equal(response.content, null);
  assert.equal(response.reasoningContent, 'The user wants the weather.');
  assert.deepEqual(response.toolCalls, [
    { id: 'call_abc', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
  ]);
  assert.equal(response.finishReason, 'tool_calls');
  assert.equal(response.usage, undefined);
});

test('response: the model falls back to the requested one; no choices is refused by the schema', () => {
  const completion = openAICompletionSchema.parse({
    choices: [{ message: { content: 'x' }, finish_reason: null }],
    usage: null,
  });
  assert.equal(convertOpenAICompletion(completion, 'asked').modelResolved, 'asked');
  assert.equal(openAICompletionSchema.safeParse({ choices: [] }).success, false);
});

test('stream: chunks become model, deltas (content, reasoning, tool calls), finish, usage', () => {
  const chunks = [
    {
      model: 'deepseek-reasoner',
      choices: [
        { index: 0, delta: { role: 'assistant', content: null, reasoning_content: 'Think' }, finish_reason: null },
      ],
      usage: null,
    },
    { model: 'deepseek-reasoner', choices: [{ index: 0, delta: { content: 'Hi' }, finish_reason: null }], usage: null },
    {
      model: 'deepseek-reasoner',
      choices: [
        {
          index: 0,
          delta: { tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] },
          finish_reason: null,
        },
      ],
    },
    {
      model: 'deepseek-reasoner',
      choices: [
        { index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"a":1}' } }] }, finish_reason: null },
      ],
    },
    { model: 'deepseek-reasoner', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }], usage: null },
    { model: 'deepseek-reasoner', choices: [], usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 } },
  ];
  const state = createOpenAIStreamState();
  const events: ProviderStreamEvent[] = chunks.flatMap((chunk) =>
    convertOpenAIChunk(openAIChunkSchema.parse(chunk), state),
  );
  assert.deepEqual(events, [
    { type: 'model', modelResolved: 'deepseek-reasoner' },
    { type: 'delta', reasoningContent: 'Think' },
    { type: 'delta', content: 'Hi' },
    {
      type: 'delta',
      toolCalls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }],
    },
    { type: 'delta', toolCalls: [{ index: 0, function: { arguments: '{"a":1}' } }] },
    // `stop` after tool calls is reported as tool_calls.
    { type: 'finish', finishReason: 'tool_calls' },
    { type: 'usage', usage: { promptTokens: 5, completionTokens: 7 } },
  ]);
});

test('stream: a finish chunk that also carries usage (some servers) gives both', () => {
  const state = createOpenAIStreamState();
  const events = convertOpenAIChunk(
    openAIChunkSchema.parse({
      choices: [{ delta: { content: '!' }, finish_reason: 'length' }],
      usage: { prompt_tokens: 1, completion_tokens: 2 },
    }),
    state,
  );
  assert.deepEqual(events, [
    { type: 'delta', content: '!' },
    { type: 'finish', finishReason: 'length' },
    { type: 'usage', usage: { promptTokens: 1, completionTokens: 2 } },
  ]);
  assert.equal(state.finished, true);
});

test("llama.cpp's timings count when usage is absent (prompt = evaluated + cached); usage wins when both come", () => {
  const completion = (extra: Record<string, unknown>) =>
    convertOpenAICompletion(
      openAICompletionSchema.parse({
        model: 'gemma',
        choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }],
        ...extra,
      }),
      'asked',
    ).usage;
  assert.deepEqual(completion({ timings: { cache_n: 0, prompt_n: 11, predicted_n: 14, prompt_ms: 4817.6 } }), {
    promptTokens: 11,
    completionTokens: 14,
  });
  assert.deepEqual(completion({ timings: { cache_n: 13, prompt_n: 1, predicted_n: 394 } }), {
    promptTokens: 14,
    completionTokens: 394,
  });
  assert.deepEqual(
    completion({
      usage: { prompt_tokens: 11, completion_tokens: 14, total_tokens: 25 },
      timings: { prompt_n: 99, predicted_n: 99 },
    }),
    { promptTokens: 11, completionTokens: 14 },
  );
  assert.equal(completion({ timings: { prompt_ms: 1 } }), undefined, 'no counts in it: none');
  // A stream's finish chunk with timings and no usage (llama.cpp without include_usage).
  const state = createOpenAIStreamState();
  const events = convertOpenAIChunk(
    openAIChunkSchema.parse({
      model: 'gpt-3.5-turbo',
      choices: [{ finish_reason: 'stop', index: 0, delta: {} }],
      timings: { cache_n: 13, prompt_n: 1, predicted_n: 394 },
    }),
    state,
  );
  assert.deepEqual(
    events.filter((event) => event.type === 'usage'),
    [{ type: 'usage', usage: { promptTokens: 14, completionTokens: 394 } }],
  );
});

test('a refusal is kept: message.refusal, and delta.refusal pieces in a stream', () => {
  const response = convertOpenAICompletion(
    openAICompletionSchema.parse({
      model: 'gpt-4o-2024-08-06',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: null, refusal: "I'm very sorry, but I can't assist with that." },
          logprobs: null,
          finish_reason: 'stop',
        },
      ],
    }),
    'asked',
  );
  assert.equal(response.content, null);
  assert.equal(response.refusal, "I'm very sorry, but I can't assist with that.");
  assert.equal(
    convertOpenAICompletion(
      openAICompletionSchema.parse({
        choices: [{ message: { role: 'assistant', content: 'Hi', refusal: null }, finish_reason: 'stop' }],
      }),
      'asked',
    ).refusal,
    undefined,
  );
  const state = createOpenAIStreamState();
  const events = [
    { delta: { role: 'assistant', content: null, refusal: '' } },
    { delta: { refusal: "I'm" } },
    { delta: { refusal: ' sorry' } },
  ].flatMap((choice) => convertOpenAIChunk(openAIChunkSchema.parse({ model: 'gpt-4o', choices: [choice] }), state));
  assert.deepEqual(
    events.filter((event) => event.type === 'delta'),
    [
      { type: 'delta', refusal: "I'm" },
      { type: 'delta', refusal: ' sorry' },
    ],
  );
});

test("cached prompt tokens: OpenAI's prompt_tokens_details.cached_tokens, else DeepSeek's prompt_cache_hit_tokens", () => {
  const usage = (extra: Record<string, unknown>) =>
    convertOpenAICompletion(
      openAICompletionSchema.parse({
        choices: [{ message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 400, completion_tokens: 10, total_tokens: 410, ...extra },
      }),
      'asked',
    ).usage;
  assert.deepEqual(usage({ prompt_tokens_details: { cached_tokens: 320 } }), {
    promptTokens: 400,
    completionTokens: 10,
    cachedPromptTokens: 320,
  });
  assert.deepEqual(usage({ prompt_cache_hit_tokens: 320, prompt_cache_miss_tokens: 80 }), {
    promptTokens: 400,
    completionTokens: 10,
    cachedPromptTokens: 320,
  });
  assert.deepEqual(usage({ prompt_tokens_details: { cached_tokens: 0 } }), { promptTokens: 400, completionTokens: 10 });
});
