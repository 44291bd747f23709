import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import { parseChatRequest } from '../../contract/request.js';
import { convertOllamaChat, convertOllamaChunk, convertOllamaUsage, createOllamaStreamState } from './response.js';
import { convertToOllamaMessages, convertToOllamaRequest, imageFromDataUrl } from './request.js';
import { ollamaChatSchema } from './schema.js';
import type { ProviderStreamEvent } from '../types.js';

const PNG_BASE64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

test('request: options, num_predict, stop as a list, tools, format, provider_options merged', () => {
  const request = parseChatRequest({
    model: 'llama3.2',
    messages: [{ role: 'user', content: 'hi' }],
    max_tokens: 50,
    max_completion_tokens: 60,
    temperature: 0.2,
    top_p: 0.8,
    seed: 1,
    stop: 'END',
    presence_penalty: 0.5,
    frequency_penalty: 0.25,
    logit_bias: { '42': 1 },
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'string' } } } },
    },
    metadata: { agent_id: 'a' },
    provider_options: { keep_alive: '5m', think: true, options: { num_ctx: 8192, temperature: 0.3 } },
  });
  const body = convertToOllamaRequest('llama3.2:3b', request, false);
  assert.deepEqual(body, {
    model: 'llama3.2:3b',
    messages: [{ role: 'user', content: 'hi' }],
    stream: false,
    options: {
      temperature: 0.3,
      top_p: 0.8,
      seed: 1,
      num_predict: 60,
      stop: ['END'],
      presence_penalty: 0.5,
      frequency_penalty: 0.25,
      num_ctx: 8192,
    },
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    format: { type: 'object', properties: { a: { type: 'string' } } },
    keep_alive: '5m',
    think: true,
  });
});

test('request: json_object becomes "json"; no options at all leaves `options` out', () => {
  const body = convertToOllamaRequest(
    'm',
    parseChatRequest({
      model: 'x',
      messages: [{ role: 'user', content: 'hi' }],
      response_format: { type: 'json_object' },
    }),
    true,
  );
  assert.equal(body.format, 'json');
  assert.equal(body.stream, true);
  assert.ok(!('options' in body));
});

test('messages: content parts become text and base64 images; developer becomes system', () => {
  const request = parseChatRequest({
    model: 'x',
    messages: [
      { role: 'developer', content: 'be brief' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_BASE64}` } },
          { type: 'text', text: 'Answer in French.' },
        ],
      },
    ],
  });
  assert.deepEqual(convertToOllamaMessages(request.messages), [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'What is this?\nAnswer in French.', images: [PNG_BASE64] },
  ]);
});

test('messages: an image given as a link is refused by path', () => {
  const request = parseChatRequest({
    model: 'x',
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }],
  });
  assert.throws(
    () => convertToOllamaMessages(request.messages),
    (error: unknown) =>
      error instanceof ProxyError &&
      error.code === 'invalid_request' &&
      error.message.startsWith('messages.0.content.0.image_url.url:'),
  );
  assert.equal(imageFromDataUrl('data:text/plain,h%C3%A9', 'x'), Buffer.from('hé').toString('base64'));
});

test('messages: assistant tool calls go out with object arguments; tool results get tool_name', () => {
  const request = parseChatRequest({
    model: 'x',
    messages: [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
          { id: 'call_1', type: 'function', function: { name: 'get_time', arguments: '' } },
        ],
      },
      { role: 'tool', tool_call_id: 'call_0', content: '18°C' },
      { role: 'tool', tool_call_id: 'call_1', content: '12:00' },
      { role: 'tool', tool_call_id: 'unknown', content: '?' },
    ],
  });
  assert.deepEqual(convertToOllamaMessages(request.messages), [
    { role: 'user', content: 'Weather in Paris and Rome?' },
    {
      role: 'assistant',
      content: '',
      tool_calls: [
        { function: { name: 'get_weather', arguments: { city: 'Paris' } } },
        { function: { name: 'get_time', arguments: {} } },
      ],
    },
    { role: 'tool', content: '18°C', tool_name: 'get_weather' },
    { role: 'tool', content: '12:00', tool_name: 'get_time' },
    { role: 'tool', content: '?' },
  ]);
});

test('messages: tool-call arguments that are not a JSON object are refused by path', () => {
  for (const args of ['{not json', '[1,2]']) {
    const request = parseChatRequest({
      model: 'x',
      messages: [
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: args } }],
        },
      ],
    });
    assert.throws(
      () => convertToOllamaMessages(request.messages),
      (error: unknown) =>
        error instanceof ProxyError && error.message.startsWith('messages.0.tool_calls.0.function.arguments:'),
    );
  }
});

test('response: content, thinking, counts', () => {
  const chat = ollamaChatSchema.parse({
    model: 'qwen3:8b',
    created_at: '2026-11-27T21:00:00Z',
    message: { role: 'assistant', content: 'Hello!', thinking: 'Greet back.' },
    done: true,
    done_reason: 'stop',
    total_duration: 1,
    load_duration: 1,
    prompt_eval_count: 26,
    prompt_eval_duration: 1,
    eval_count: 298,
    eval_duration: 1,
  });
  assert.deepEqual(convertOllamaChat(chat, 'asked'), {
    content: 'Hello!',
    reasoningContent: 'Greet back.',
    finishReason: 'stop',
    modelResolved: 'qwen3:8b',
    usage: { promptTokens: 26, completionTokens: 298 },
  });
});

test('response: tool calls come back in OpenAI shape with generated ids; a missing prompt count is marked, the completion count kept', () => {
  const chat = ollamaChatSchema.parse({
    model: 'llama3.2',
    message: {
      role: 'assistant',
      content: '',
      tool_calls: [
        { function: { name: 'get_weather', arguments: { city: 'Paris' } } },
        { function: { name: 'get_time', arguments: {} } },
      ],
    },
    done: true,
    done_reason: 'stop',
    eval_count: 20,
  });
  const response = convertOllamaChat(chat, 'asked');
  assert.equal(response.content, null);
  assert.equal(response.finishReason, 'tool_calls');
  assert.deepEqual(response.toolCalls, [
    { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
    { id: 'call_1', type: 'function', function: { name: 'get_time', arguments: '{}' } },
  ]);
  assert.deepEqual(response.usage, { promptTokens: 0, completionTokens: 20, missing: 'prompt' });
});

test('usage: both counts, one of them (the other marked missing), or none', () => {
  const usage = (counts: Record<string, number>) =>
    convertOllamaUsage(
      ollamaChatSchema.parse({ model: 'm', message: { role: 'assistant', content: '' }, done: true, ...counts }),
    );
  assert.deepEqual(usage({ prompt_eval_count: 3, eval_count: 4 }), { promptTokens: 3, completionTokens: 4 });
  assert.deepEqual(usage({ eval_count: 4 }), { promptTokens: 0, completionTokens: 4, missing: 'prompt' });
  assert.deepEqual(usage({ prompt_eval_count: 3 }), { promptTokens: 3, completionTokens: 0, missing: 'completion' });
  assert.equal(usage({}), undefined);
});

test('tool calls survive the round trip OpenAI → Ollama → OpenAI', () => {
  const openAICalls = [
    { id: 'call_0', type: 'function' as const, function: { name: 'f', arguments: '{"a":[1,2],"b":{"c":"é"}}' } },
  ];
  const request = parseChatRequest({
    model: 'x',
    messages: [{ role: 'assistant', content: null, tool_calls: openAICalls }],
  });
  const ollamaCalls = convertToOllamaMessages(request.messages)[0]?.tool_calls ?? [];
  const back = convertOllamaChat(
    ollamaChatSchema.parse({ message: { content: '', tool_calls: ollamaCalls }, done: true }),
    'x',
  );
  assert.deepEqual(back.toolCalls, openAICalls);
});

test('stream: lines become model, deltas (thinking, content, whole tool calls), finish and usage on done', () => {
  const lines = [
    { model: 'qwen3:8b', message: { role: 'assistant', content: '', thinking: 'Hmm' }, done: false },
    { model: 'qwen3:8b', message: { role: 'assistant', content: 'Hi' }, done: false },
    {
      model: 'qwen3:8b',
      message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'f', arguments: { a: 1 } } }] },
      done: false,
    },
    {
      model: 'qwen3:8b',
      message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'g', arguments: {} } }] },
      done: false,
    },
    {
      model: 'qwen3:8b',
      message: { role: 'assistant', content: '' },
      done: true,
      done_reason: 'stop',
      prompt_eval_count: 3,
      eval_count: 4,
    },
  ];
  const state = createOllamaStreamState();
  const events: ProviderStreamEvent[] = lines.flatMap((line) =>
    convertOllamaChunk(ollamaChatSchema.parse(line), state),
  );
  assert.deepEqual(events, [
    { type: 'model', modelResolved: 'qwen3:8b' },
    { type: 'delta', reasoningContent: 'Hmm' },
    { type: 'delta', content: 'Hi' },
    {
      type: 'delta',
      toolCalls: [{ index: 0, id: 'call_0', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }],
    },
    {
      type: 'delta',
      toolCalls: [{ index: 1, id: 'call_1', type: 'function', function: { name: 'g', arguments: '{}' } }],
    },
    { type: 'finish', finishReason: 'tool_calls' },
    { type: 'usage', usage: { promptTokens: 3, completionTokens: 4 } },
  ]);
});

test('stream: done_reason length is kept', () => {
  const state = createOllamaStreamState();
  const events = convertOllamaChunk(
    ollamaChatSchema.parse({ message: { content: 'x' }, done: true, done_reason: 'length' }),
    state,
  );
  assert.deepEqual(events, [
    { type: 'delta', content: 'x' },
    { type: 'finish', finishReason: 'length' },
  ]);
});
