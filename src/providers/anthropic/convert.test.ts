/** Our request to Anthropic's Messages API body (request.ts); the answers are in response.test.ts. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import { parseChatRequest, type ChatRequest } from '../../contract/request.js';
import {
  convertToAnthropicRequest,
  convertToolChoice,
  DEFAULT_ANTHROPIC_MAX_TOKENS,
  imageBlock,
  THINKING_BUDGET_TOKENS,
} from './request.js';

const PNG_BASE64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

function body(extra: Record<string, unknown>, stream = false): Record<string, any> {
  const request = parseChatRequest({ model: 'logical', messages: [{ role: 'user', content: 'hi' }], ...extra });
  return convertToAnthropicRequest('claude-physical', request, stream);
}

function refusal(run: () => unknown, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof ProxyError);
    assert.equal(error.code, 'invalid_request');
    assert.equal(error.retryable, false);
    assert.match(error.message, pattern);
    return true;
  });
}

test('request: the physical model, max_tokens always, none of our own fields, stream only when asked', () => {
  const json = body({ metadata: { agent_id: 'agent:x' }, request_id: 'r-1', timeout_ms: 1000, cache: 'bypass' });
  assert.deepEqual(json, {
    model: 'claude-physical',
    max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }],
  });
  assert.equal(body({}, true).stream, true);
  assert.equal(body({ max_tokens: 50, max_completion_tokens: 60 }).max_tokens, 50);
  assert.equal(body({ max_completion_tokens: 60 }).max_tokens, 60);
});

test('request: parameters in Anthropic shape; those without an equivalent are not sent; provider_options last', () => {
  const json = body({
    stop: 'END',
    temperature: 0.3,
    top_p: 0.9,
    user: 'end-user-7',
    seed: 1,
    presence_penalty: 0.5,
    frequency_penalty: 0.5,
    logit_bias: { '1': 1 },
    logprobs: true,
    top_logprobs: 2,
    provider_options: { top_k: 40, temperature: 0.1 },
  });
  assert.deepEqual(json.stop_sequences, ['END']);
  assert.equal(json.temperature, 0.1);
  assert.equal(json.top_p, 0.9);
  assert.equal(json.top_k, 40);
  assert.deepEqual(json.metadata, { user_id: 'end-user-7' });
  for (const name of [
    'stop',
    'seed',
    'presence_penalty',
    'frequency_penalty',
    'logit_bias',
    'logprobs',
    'top_logprobs',
    'user',
  ])
    assert.ok(!(name in json), name);
  assert.deepEqual(body({ stop: ['a', 'b'] }).stop_sequences, ['a', 'b']);
});

test('request: system and developer messages lifted into system, in order, joined', () => {
  const json = body({
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hi' },
      { role: 'developer', content: [{ type: 'text', text: 'Answer in French.' }] },
      { role: 'user', content: 'again' },
    ],
  });
  assert.equal(json.system, 'Be brief.\n\nAnswer in French.');
  // The two user turns, now adjacent, are one.
  assert.deepEqual(json.messages, [
    {
      role: 'user',
      content: [
        { type: 'text', text: 'hi' },
        { type: 'text', text: 'again' },
      ],
    },
  ]);
});

test('request: a cache_control on a part is kept (system as blocks then), for prompt caching', () => {
  const json = body({
    messages: [
      { role: 'system', content: [{ type: 'text', text: 'Long rules.', cache_control: { type: 'ephemeral' } }] },
      { role: 'system', content: 'Short.' },
      { role: 'user', content: [{ type: 'text', text: 'Big document', cache_control: { type: 'ephemeral' } }] },
    ],
  });
  assert.deepEqual(json.system, [
    { type: 'text', text: 'Long rules.', cache_control: { type: 'ephemeral' } },
    { type: 'text', text: 'Short.' },
  ]);
  assert.deepEqual(json.messages[0].content, [
    { type: 'text', text: 'Big document', cache_control: { type: 'ephemeral' } },
  ]);
  refusal(
    () =>
      body({ messages: [{ role: 'system', content: [{ type: 'image_url', image_url: { url: 'https://x/a.png' } }] }] }),
    /^messages\.0\.content: a system message takes text only/,
  );
});

test('request: consecutive turns of one role are merged; empty text is left out', () => {
  const json = body({
    messages: [
      { role: 'user', content: 'one' },
      { role: 'user', content: '' },
      { role: 'user', content: 'two' },
      { role: 'assistant', content: 'a' },
      { role: 'assistant', content: 'b' },
      { role: 'user', content: 'three' },
    ],
  });
  assert.deepEqual(
    json.messages.map((message: any) => [message.role, message.content.map((block: any) => block.text)]),
    [
      ['user', ['one', 'two']],
      ['assistant', ['a', 'b']],
      ['user', ['three']],
    ],
  );
});

test('request: images from data: URLs (base64 or not) and http(s) URLs; other sources and types refused', () => {
  assert.deepEqual(imageBlock(`data:image/png;base64,${PNG_BASE64}`, 'p'), {
    type: 'image',
    source: { type: 'base64', media_type: 'image/png', data: PNG_BASE64 },
  });
  assert.deepEqual(imageBlock('data:image/gif,GIF89a', 'p'), {
    type: 'image',
    source: { type: 'base64', media_type: 'image/gif', data: Buffer.from('GIF89a').toString('base64') },
  });
  assert.deepEqual(imageBlock('https://example.com/cat.jpg', 'p'), {
    type: 'image',
    source: { type: 'url', url: 'https://example.com/cat.jpg' },
  });
  const json = body({
    messages: [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url: `data:image/webp;base64,${PNG_BASE64}`, detail: 'low' } },
        ],
      },
    ],
  });
  assert.deepEqual(json.messages[0].content[1].source.media_type, 'image/webp');
  refusal(() => imageBlock('data:image/bmp;base64,AAAA', 'messages.0.content.1.image_url.url'), /image\/bmp/);
  refusal(() => imageBlock('ftp://example.com/a.png', 'p'), /data: URL or an http\(s\) URL/);
  refusal(
    () => body({ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'x' } }] }] }),
    /^messages\.0\.content\.0: .*"input_audio"/,
  );
});

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Weather of a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      strict: true,
    },
  },
  { type: 'function', function: { name: 'now' } },
];

test('request: tools as name, description, input_schema (an empty object schema when none)', () => {
  assert.deepEqual(body({ tools: TOOLS }).tools, [
    {
      name: 'get_weather',
      description: 'Weather of a city',
      input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      strict: true,
    },
    { name: 'now', input_schema: { type: 'object', properties: {} } },
  ]);
});

test('request: tool_choice and parallel_tool_calls', () => {
  const choice = (extra: Record<string, unknown>) =>
    convertToolChoice(
      parseChatRequest({ model: 'm', messages: [{ role: 'user', content: 'x' }], tools: TOOLS, ...extra }),
    );
  assert.equal(choice({}), undefined);
  assert.deepEqual(choice({ tool_choice: 'auto' }), { type: 'auto' });
  assert.deepEqual(choice({ tool_choice: 'required' }), { type: 'any' });
  assert.deepEqual(choice({ tool_choice: 'none' }), { type: 'none' });
  assert.deepEqual(choice({ tool_choice: { type: 'function', function: { name: 'now' } } }), {
    type: 'tool',
    name: 'now',
  });
  assert.deepEqual(choice({ parallel_tool_calls: false }), { type: 'auto', disable_parallel_tool_use: true });
  assert.deepEqual(choice({ tool_choice: 'required', parallel_tool_calls: false }), {
    type: 'any',
    disable_parallel_tool_use: true,
  });
  assert.deepEqual(choice({ tool_choice: 'none', parallel_tool_calls: false }), { type: 'none' });
  assert.equal(choice({ parallel_tool_calls: true }), undefined);
});

test('request: a tool round trip: tool_calls as tool_use blocks, tool messages as one user turn of tool_results', () => {
  const json = body({
    tools: TOOLS,
    messages: [
      { role: 'user', content: 'Weather in Paris and Kyiv?' },
      {
        role: 'assistant',
        content: 'Checking.',
        tool_calls: [
          { id: 'toolu_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
          { id: 'toolu_2', type: 'function', function: { name: 'now', arguments: '' } },
        ],
      },
      { role: 'tool', tool_call_id: 'toolu_1', content: '18°C' },
      { role: 'tool', tool_call_id: 'toolu_2', content: [{ type: 'text', text: '12:00' }] },
      { role: 'user', content: 'Thanks' },
    ],
  });
  assert.deepEqual(json.messages, [
    { role: 'user', content: [{ type: 'text', text: 'Weather in Paris and Kyiv?' }] },
    {
      role: 'assistant',
      content: [
        { type: 'text', text: 'Checking.' },
        { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } },
        { type: 'tool_use', id: 'toolu_2', name: 'now', input: {} },
      ],
    },
    {
      role: 'user',
      content: [
        { type: 'tool_result', tool_use_id: 'toolu_1', content: '18°C' },
        { type: 'tool_result', tool_use_id: 'toolu_2', content: [{ type: 'text', text: '12:00' }] },
        { type: 'text', text: 'Thanks' },
      ],
    },
  ]);
  // An assistant turn of tool calls only, with content null.
  const only = body({
    messages: [
      { role: 'user', content: 'x' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 't', type: 'function', function: { name: 'now', arguments: '{}' } }],
      },
    ],
  });
  assert.deepEqual(only.messages[1].content, [{ type: 'tool_use', id: 't', name: 'now', input: {} }]);
});

test('request: tool results are put first in a user turn, as Anthropic requires', () => {
  const json = body({
    messages: [
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 't', type: 'function', function: { name: 'now', arguments: '{}' } }],
      },
      { role: 'user', content: 'note first' },
      { role: 'tool', tool_call_id: 't', content: 'done' },
    ],
  });
  assert.deepEqual(
    json.messages[1].content.map((block: any) => block.type),
    ['tool_result', 'text'],
  );
});

test('request: tool call arguments that are not a JSON object are refused, naming the field', () => {
  const withArguments = (text: string) =>
    body({
      messages: [
        { role: 'user', content: 'x' },
        { role: 'assistant', tool_calls: [{ id: 't', type: 'function', function: { name: 'f', arguments: text } }] },
      ],
    });
  refusal(() => withArguments('{"city": '), /^messages\.1\.tool_calls\.0\.function\.arguments: not valid JSON/);
  refusal(() => withArguments('[1, 2]'), /^messages\.1\.tool_calls\.0\.function\.arguments: must be a JSON object/);
});

test('request: reasoning_effort as an extended-thinking budget, below max_tokens', () => {
  assert.deepEqual(body({ reasoning_effort: 'low' }).thinking, { type: 'enabled', budget_tokens: 1024 });
  assert.deepEqual(body({ reasoning_effort: 'medium', max_tokens: 20_000 }).thinking, {
    type: 'enabled',
    budget_tokens: THINKING_BUDGET_TOKENS.medium,
  });
  assert.deepEqual(body({ reasoning_effort: 'high', max_tokens: 32_000 }).thinking, {
    type: 'enabled',
    budget_tokens: 16_384,
  });
  // Capped below max_tokens (the default 4096 here).
  assert.deepEqual(body({ reasoning_effort: 'high' }).thinking, { type: 'enabled', budget_tokens: 4095 });
  assert.equal(body({}).thinking, undefined);
  refusal(() => body({ reasoning_effort: 'minimal', max_tokens: 1024 }), /^reasoning_effort: .*max_tokens above 1024/);
});

test('request: response_format json_schema as output_config.format; json_object refused; text ignored', () => {
  const schema = { type: 'object', properties: { a: { type: 'string' } }, additionalProperties: false };
  assert.deepEqual(
    body({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } }).output_config,
    {
      format: { type: 'json_schema', schema },
    },
  );
  assert.equal(body({ response_format: { type: 'text' } }).output_config, undefined);
  refusal(
    () => body({ response_format: { type: 'json_object' } }),
    /^response_format: Anthropic has no json_object mode/,
  );
  refusal(() => body({ response_format: { type: 'json_schema' } }), /json_schema\.schema is required/);
});

test('request: n > 1 is refused', () => {
  const request = { model: 'm', messages: [{ role: 'user', content: 'x' }], n: 2 } as unknown as ChatRequest;
  refusal(() => convertToAnthropicRequest('m', request, false), /^anthropic: n > 1 is not supported/);
});
