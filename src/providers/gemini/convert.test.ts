import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import { parseChatRequest, type ChatRequest } from '../../contract/request.js';
import {
  GEMINI_MAX_CANDIDATES,
  SKIP_THOUGHT_SIGNATURE,
  convertToGeminiContents,
  convertToGeminiRequest,
} from './request.js';

const PNG_BASE64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

const ask = (extra: Record<string, unknown>): ChatRequest =>
  parseChatRequest({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });

function refusedAt(path: string): (error: unknown) => boolean {
  return (error) =>
    error instanceof ProxyError &&
    error.code === 'invalid_request' &&
    !error.retryable &&
    error.message.startsWith(`${path}:`);
}

test('request: system and developer messages become systemInstruction; roles map and merge', () => {
  const request = parseChatRequest({
    model: 'm',
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello' },
      { role: 'user', content: [{ type: 'text', text: 'again' }] },
      { role: 'assistant', content: 'Hi!' },
      { role: 'developer', content: [{ type: 'text', text: 'Answer in French.' }] },
      { role: 'assistant', content: '' },
      { role: 'user', content: 'Bye' },
    ],
  });
  assert.deepEqual(convertToGeminiContents(request.messages), {
    systemInstruction: { parts: [{ text: 'Be brief.' }, { text: 'Answer in French.' }] },
    contents: [
      { role: 'user', parts: [{ text: 'Hello' }, { text: 'again' }] },
      { role: 'model', parts: [{ text: 'Hi!' }] },
      { role: 'user', parts: [{ text: 'Bye' }] },
    ],
  });
  assert.throws(
    () =>
      convertToGeminiContents(parseChatRequest({ model: 'm', messages: [{ role: 'system', content: 'x' }] }).messages),
    refusedAt('messages'),
  );
});

test('request: generationConfig, our own fields never sent, provider_options merged', () => {
  const body = convertToGeminiRequest(
    ask({
      temperature: 0.2,
      top_p: 0.8,
      max_tokens: 50,
      max_completion_tokens: 60,
      stop: 'END',
      seed: 7,
      presence_penalty: 0.5,
      frequency_penalty: 0.25,
      logit_bias: { '1': 1 },
      user: 'u',
      metadata: { agent_id: 'a' },
      request_id: 'r-1',
      provider_options: {
        generationConfig: { topK: 40 },
        safetySettings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }],
      },
    }),
  );
  assert.deepEqual(body, {
    contents: [{ role: 'user', parts: [{ text: 'hi' }] }],
    generationConfig: {
      temperature: 0.2,
      topP: 0.8,
      maxOutputTokens: 50,
      stopSequences: ['END'],
      seed: 7,
      presencePenalty: 0.5,
      frequencyPenalty: 0.25,
      topK: 40,
    },
    safetySettings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }],
  });
  assert.equal(
    (convertToGeminiRequest(ask({ max_completion_tokens: 60 })).generationConfig as any).maxOutputTokens,
    60,
  );
  assert.ok(!('generationConfig' in convertToGeminiRequest(ask({}))));
});

test("request: n > 1 is candidateCount, up to Gemini's maximum of 8; above it refused before sending", () => {
  const config = (extra: Record<string, unknown>) => convertToGeminiRequest(ask(extra)).generationConfig;
  assert.equal(GEMINI_MAX_CANDIDATES, 8);
  assert.equal(config({ n: 1 }), undefined, 'n = 1 sends no candidateCount');
  assert.deepEqual(config({ n: 3, temperature: 1 }), { candidateCount: 3, temperature: 1 });
  assert.deepEqual(config({ n: 8 }), { candidateCount: 8 });
  for (const n of [9, 128]) {
    assert.throws(
      () => convertToGeminiRequest(ask({ n })),
      (error: unknown) =>
        refusedAt('n')(error) &&
        (error as ProxyError).message === `n: Gemini generates at most 8 candidates per request (got ${n})`,
    );
  }
});

test('request: response_format and reasoning_effort', () => {
  const config = (extra: Record<string, unknown>) => convertToGeminiRequest(ask(extra)).generationConfig;
  assert.deepEqual(config({ response_format: { type: 'json_object' } }), { responseMimeType: 'application/json' });
  const schema = { type: 'object', properties: { a: { type: 'string' } }, additionalProperties: false };
  assert.deepEqual(
    config({
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'x', schema: { $schema: 'http://json-schema.org/draft-07/schema#', ...schema } },
      },
    }),
    { responseMimeType: 'application/json', responseJsonSchema: schema },
  );
  assert.equal(config({ response_format: { type: 'text' } }), undefined);
  for (const [effort, budget] of [
    ['minimal', 512],
    ['low', 1024],
    ['medium', 8192],
    ['high', 24576],
  ] as const) {
    assert.deepEqual(config({ reasoning_effort: effort }), {
      thinkingConfig: { thinkingBudget: budget, includeThoughts: true },
    });
  }
});

test('request: images inline from data: URLs, by reference from https and gs://; others refused by path', () => {
  const image = (url: string) =>
    convertToGeminiContents(
      parseChatRequest({
        model: 'm',
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'What?' },
              { type: 'image_url', image_url: { url } },
            ],
          },
        ],
      }).messages,
    ).contents[0]!.parts[1];
  assert.deepEqual(image(`data:image/png;base64,${PNG_BASE64}`), {
    inlineData: { mimeType: 'image/png', data: PNG_BASE64 },
  });
  assert.deepEqual(image('data:text/plain,h%C3%A9'), {
    inlineData: { mimeType: 'text/plain', data: Buffer.from('hé').toString('base64') },
  });
  assert.deepEqual(image('https://example.com/cat.JPG?size=2'), {
    fileData: { mimeType: 'image/jpeg', fileUri: 'https://example.com/cat.JPG?size=2' },
  });
  assert.deepEqual(image('https://example.com/render'), { fileData: { fileUri: 'https://example.com/render' } });
  assert.deepEqual(image('gs://bucket/cat.webp'), {
    fileData: { mimeType: 'image/webp', fileUri: 'gs://bucket/cat.webp' },
  });
  assert.throws(() => image('http://example.com/cat.png'), refusedAt('messages.0.content.1.image_url.url'));
  const audio = parseChatRequest({
    model: 'm',
    messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }] }],
  });
  assert.throws(() => convertToGeminiContents(audio.messages), refusedAt('messages.0.content.0'));
});

test('request: tools as functionDeclarations with parametersJsonSchema; tool_choice as functionCallingConfig', () => {
  const parameters = { type: 'object', properties: { city: { type: 'string' } }, additionalProperties: false };
  const tools = [
    {
      type: 'function',
      function: { name: 'get_weather', description: 'Weather', parameters: { $schema: 'x', ...parameters } },
    },
    { type: 'function', function: { name: 'now' } },
  ];
  const body = convertToGeminiRequest(ask({ tools, tool_choice: 'auto' }));
  assert.deepEqual(body.tools, [
    {
      functionDeclarations: [
        { name: 'get_weather', description: 'Weather', parametersJsonSchema: parameters },
        { name: 'now' },
      ],
    },
  ]);
  const choice = (tool_choice: unknown) => convertToGeminiRequest(ask({ tools, tool_choice })).toolConfig;
  assert.deepEqual(choice('auto'), { functionCallingConfig: { mode: 'AUTO' } });
  assert.deepEqual(choice('none'), { functionCallingConfig: { mode: 'NONE' } });
  assert.deepEqual(choice('required'), { functionCallingConfig: { mode: 'ANY' } });
  assert.deepEqual(choice({ type: 'function', function: { name: 'now' } }), {
    functionCallingConfig: { mode: 'ANY', allowedFunctionNames: ['now'] },
  });
  assert.equal(choice(undefined), undefined);
  assert.ok(!('toolConfig' in convertToGeminiRequest(ask({ tool_choice: 'none' }))), 'no tools, no toolConfig');
});

test('request: tool calls become functionCall parts (placeholder signature on the first), results functionResponse parts', () => {
  const request = parseChatRequest({
    model: 'm',
    messages: [
      { role: 'user', content: 'Weather in Paris and Rome?' },
      {
        role: 'assistant',
        content: 'Checking.',
        tool_calls: [
          { id: 'call_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
          { id: 'gemini-id-7', type: 'function', function: { name: 'get_time', arguments: '' } },
        ],
      },
      { role: 'tool', tool_call_id: 'call_0', content: '{"celsius":18}' },
      { role: 'tool', tool_call_id: 'gemini-id-7', content: [{ type: 'text', text: '12:00' }] },
      { role: 'user', content: 'Thanks' },
    ],
  });
  assert.deepEqual(convertToGeminiContents(request.messages).contents, [
    { role: 'user', parts: [{ text: 'Weather in Paris and Rome?' }] },
    {
      role: 'model',
      parts: [
        { text: 'Checking.' },
        { functionCall: { name: 'get_weather', args: { city: 'Paris' } }, thoughtSignature: SKIP_THOUGHT_SIGNATURE },
        { functionCall: { id: 'gemini-id-7', name: 'get_time', args: {} } },
      ],
    },
    {
      role: 'user',
      parts: [
        { functionResponse: { name: 'get_weather', response: { celsius: 18 } } },
        { functionResponse: { id: 'gemini-id-7', name: 'get_time', response: { output: '12:00' } } },
        { text: 'Thanks' },
      ],
    },
  ]);
});

test('request: bad tool-call arguments and unknown tool_call_ids are refused by path', () => {
  for (const args of ['{not json', '[1,2]']) {
    const request = parseChatRequest({
      model: 'm',
      messages: [
        { role: 'user', content: 'x' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: args } }],
        },
      ],
    });
    assert.throws(
      () => convertToGeminiContents(request.messages),
      refusedAt('messages.1.tool_calls.0.function.arguments'),
    );
  }
  const orphan = parseChatRequest({
    model: 'm',
    messages: [
      { role: 'user', content: 'x' },
      { role: 'tool', tool_call_id: 'nowhere', content: '1' },
    ],
  });
  assert.throws(() => convertToGeminiContents(orphan.messages), refusedAt('messages.1.tool_call_id'));
});
