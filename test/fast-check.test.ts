/**
 * The fast checks (contract/fast-check.ts: ajv over the JSON Schema zod derives from each schema)
 * must accept exactly what zod accepts: a request it let through that zod refuses would reach a
 * provider unchecked, a provider answer would reach the converters unchecked. Thousands of values
 * made by mutating valid ones (a seeded generator, so a failure repeats) go through both. Where
 * both accept, the fast path's result (the value itself) must serve as well as zod's copy: equal
 * to it for the request, converted to the same events and replies for provider payloads.
 */
import { describe, it } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import type { z } from 'zod';
import { chatRequestSchema, parseChatRequest, passesFastCheck } from '../src/contract/request.js';
import { ProxyError } from '../src/contract/errors.js';
import { fastCheck } from '../src/contract/fast-check.js';
import { convertOllamaChat, convertOllamaChunk, createOllamaStreamState } from '../src/providers/ollama/response.js';
import {
  convertOpenAIChunk,
  convertOpenAICompletion,
  createOpenAIStreamState,
} from '../src/providers/openai/response.js';
import { ollamaChatSchema } from '../src/providers/ollama/schema.js';
import { openAIChunkSchema, openAICompletionSchema } from '../src/providers/openai/schema.js';
import { seededRandom } from './helpers/seeded-random.js';

const SEEDS: Array<Record<string, unknown>> = [
  { model: 'm', messages: [{ role: 'user', content: 'Hello!' }] },
  {
    model: 'gpt-4o',
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'developer', content: 'Use tools.', name: 'dev' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url: 'https://x/y.png', detail: 'low' } },
          { type: 'input_audio', input_audio: { data: 'AA' } },
        ],
      },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'look', arguments: '{}' } }],
        reasoning_content: 'hmm',
      },
      { role: 'tool', tool_call_id: 'call_1', content: 'a cat' },
    ],
    max_tokens: 100,
    max_completion_tokens: 200,
    temperature: 0.7,
    top_p: 1,
    stop: ['\n', 'END'],
    seed: 42,
    n: 1,
    presence_penalty: -1.5,
    frequency_penalty: 2,
    logit_bias: { '50256': -100 },
    logprobs: true,
    top_logprobs: 5,
    user: 'u-1',
    tools: [
      {
        type: 'function',
        function: { name: 'look', description: 'Look', parameters: { type: 'object', properties: {} } },
      },
    ],
    tool_choice: { type: 'function', function: { name: 'look' } },
    parallel_tool_calls: false,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {} } },
    stream: true,
    stream_options: { include_usage: true },
    reasoning_effort: 'high',
    metadata: { agent_id: 'agent:1', microdao_id: 'dao:1', channel_id: 'c', extra: 'kept' },
    request_id: 'req-1',
    timeout_ms: 30_000,
    cache: 'bypass',
    provider_options: { num_ctx: 8192 },
  },
  {
    model: 'm',
    messages: [{ role: 'user', content: 'x' }],
    stop: 'STOP',
    tool_choice: 'auto',
    response_format: { type: 'text' },
    metadata: {},
  },
];

const VALUES: unknown[] = [
  '',
  'x',
  'user',
  'assistant',
  'tool',
  'system',
  'developer',
  'function',
  'text',
  'image_url',
  'auto',
  'none',
  'required',
  'low',
  'high',
  'minimal',
  'medium',
  'bypass',
  'json_object',
  'json_schema',
  'a'.repeat(128),
  'a'.repeat(129),
  'a'.repeat(256),
  'a'.repeat(257),
  'a'.repeat(1024),
  'a'.repeat(1025),
  // 128 and 129 astral characters: 256 and 258 UTF-16 units, 128 and 129 code points (zod counts code points).
  '😀'.repeat(128),
  '😀'.repeat(129),
  '😀'.repeat(256),
  '😀'.repeat(257),
  '😀',
  0,
  1,
  -1,
  1.5,
  2,
  2.5,
  -2,
  -2.5,
  4,
  20,
  21,
  0.5,
  3_600_000,
  3_600_001,
  9007199254740991,
  9007199254740992,
  -9007199254740992,
  1e300,
  true,
  false,
  null,
  [],
  [''],
  ['a', 'b', 'c', 'd'],
  ['a', 'b', 'c', 'd', 'e'],
  [1],
  [{ role: 'user', content: 'x' }],
  [{ role: 'tool', content: 'x' }],
  [{ role: 'assistant', tool_calls: [] }],
  [{ type: 'text', text: 'hi' }],
  [{ type: 'text' }],
  [{ type: '' }],
  [{}],
  {},
  { type: 'text', text: 'hi' },
  { type: 'function', function: { name: 'f' } },
  { type: 'function' },
  { url: '' },
  { url: 'u', detail: 'auto' },
  { include_usage: 'yes' },
  { name: 'f', arguments: '{}' },
  { agent_id: '' },
  { extra: 1 },
];

type Json = unknown;

/** Every (container, key) pair in the body, arrays and objects at any depth. */
function slots(
  value: Json,
  into: Array<{ parent: Record<string, Json> | Json[]; key: string | number }> = [],
): typeof into {
  if (Array.isArray(value)) {
    value.forEach((item, index) => {
      into.push({ parent: value, key: index });
      slots(item, into);
    });
  } else if (typeof value === 'object' && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      into.push({ parent: value as Record<string, Json>, key });
      slots(item, into);
    }
  }
  return into;
}

const REQUEST_KEYS = {
  top: [...Object.keys(chatRequestSchema.shape), 'max_token', 'functions'],
  nested: [
    'role',
    'content',
    'name',
    'tool_calls',
    'tool_call_id',
    'reasoning_content',
    'type',
    'text',
    'image_url',
    'url',
    'detail',
    'id',
    'function',
    'arguments',
    'description',
    'parameters',
    'include_usage',
    'agent_id',
    'microdao_id',
    'channel_id',
    'unknown_field',
  ],
};

/** Changes a value in place: a top-level key set, any slot replaced or removed, a nested key added. */
function mutate(body: Record<string, Json>, next: () => number, keys: { top: string[]; nested: string[] }): void {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const value = (): Json => structuredClone(pick(VALUES));
  const choice = next();
  if (choice < 0.25) {
    // A top-level field (known or not) set to some value.
    body[pick(keys.top)] = value();
    return;
  }
  const all = slots(body);
  if (all.length === 0) return;
  const slot = pick(all);
  if (choice < 0.65) {
    (slot.parent as Record<string | number, Json>)[slot.key] = value();
  } else if (choice < 0.8) {
    if (Array.isArray(slot.parent)) slot.parent.splice(slot.key as number, 1);
    else delete slot.parent[slot.key as string];
  } else {
    // A nested key added to an object somewhere.
    const objects = all
      .map((entry) => (entry.parent as Record<string | number, Json>)[entry.key])
      .filter((item) => typeof item === 'object' && item !== null && !Array.isArray(item));
    if (objects.length > 0) (pick(objects) as Record<string, Json>)[pick(keys.nested)] = value();
  }
}

describe('request fast check', () => {
  it('accepts exactly what zod accepts, over 20,000 mutated requests, and returns the body itself', () => {
    const next = seededRandom(20261129);
    let accepted = 0;
    for (let round = 0; round < 20_000; round++) {
      const body = structuredClone(SEEDS[round % SEEDS.length]!);
      const mutations = 1 + Math.floor(next() * 3);
      for (let index = 0; index < mutations; index++) mutate(body, next, REQUEST_KEYS);
      const fast = passesFastCheck(body);
      const zod = chatRequestSchema.safeParse(body);
      assert.equal(
        fast,
        zod.success,
        `fast check ${fast ? 'accepts' : 'refuses'} what zod ${zod.success ? 'accepts' : 'refuses'}: ${JSON.stringify(body)}`,
      );
      if (zod.success) {
        accepted++;
        assert.deepEqual(zod.data, body, 'zod returns the same keys and values');
      }
    }
    // The generator must reach both sides of the boundary, or the test proves little.
    assert.ok(accepted > 2_000 && accepted < 18_000, `accepted ${accepted} of 20,000`);
  });

  it('the seeds pass, and parseChatRequest hands back the very object', () => {
    for (const seed of SEEDS) {
      assert.ok(passesFastCheck(seed), JSON.stringify(seed));
      assert.equal(parseChatRequest(seed), seed);
    }
  });

  it('a refused request still names every field at fault (zod gives the message)', () => {
    assert.throws(
      () => parseChatRequest({ model: '', messages: [{ role: 'tool', content: 'x' }], max_token: 5 }),
      (error: unknown) =>
        error instanceof ProxyError &&
        error.code === 'invalid_request' &&
        /model: /.test(error.message) &&
        /messages\.0\.tool_call_id: a tool message needs tool_call_id/.test(error.message) &&
        /unknown field "max_token"/.test(error.message),
    );
    // Lengths are code points: 256 emoji fit the 256 allowed for model, 257 do not.
    assert.equal(
      parseChatRequest({ model: '😀'.repeat(256), messages: [{ role: 'user', content: 'x' }] }).model.length,
      512,
    );
    assert.throws(
      () => parseChatRequest({ model: '😀'.repeat(257), messages: [{ role: 'user', content: 'x' }] }),
      /model: /,
    );
  });

  const PAYLOADS: Array<{
    name: string;
    schema: z.ZodType;
    seeds: Array<Record<string, Json>>;
    keys: { top: string[]; nested: string[] };
    convert: (value: never) => unknown;
  }> = [
    {
      name: 'OpenAI completion',
      schema: openAICompletionSchema,
      seeds: [
        {
          id: 'c1',
          object: 'chat.completion',
          created: 1,
          model: 'gpt-4o',
          choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop', logprobs: null }],
          usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
        },
        {
          model: null,
          choices: [
            {
              message: {
                content: null,
                reasoning_content: 'think',
                tool_calls: [{ id: 't1', type: 'function', function: { name: 'f', arguments: '{}' } }],
              },
              finish_reason: 'tool_calls',
            },
          ],
          usage: null,
        },
      ],
      keys: {
        top: ['id', 'object', 'model', 'choices', 'usage', 'system_fingerprint'],
        nested: [
          'message',
          'content',
          'reasoning_content',
          'tool_calls',
          'finish_reason',
          'prompt_tokens',
          'completion_tokens',
          'id',
          'function',
          'name',
          'arguments',
          'extra',
        ],
      },
      convert: (value: never) => convertOpenAICompletion(value, 'requested'),
    },
    {
      name: 'OpenAI stream chunk',
      schema: openAIChunkSchema,
      seeds: [
        {
          id: 'c1',
          object: 'chat.completion.chunk',
          model: 'gpt-4o',
          choices: [{ index: 0, delta: { role: 'assistant', content: 'Hel' }, finish_reason: null }],
        },
        {
          model: 'deepseek-reasoner',
          choices: [
            {
              index: 0,
              delta: {
                reasoning_content: 'r',
                tool_calls: [{ index: 0, id: 't', type: 'function', function: { name: 'f', arguments: '{' } }],
              },
              finish_reason: 'tool_calls',
            },
          ],
          usage: { prompt_tokens: 1, completion_tokens: 2 },
        },
        { choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } },
      ],
      keys: {
        top: ['id', 'model', 'choices', 'usage', 'object'],
        nested: [
          'delta',
          'content',
          'reasoning_content',
          'tool_calls',
          'finish_reason',
          'index',
          'id',
          'type',
          'function',
          'name',
          'arguments',
          'prompt_tokens',
          'completion_tokens',
          'extra',
        ],
      },
      convert: (value: never) => convertOpenAIChunk(value, createOpenAIStreamState()),
    },
    {
      name: 'Ollama chat and stream line',
      schema: ollamaChatSchema,
      seeds: [
        {
          model: 'llama3',
          created_at: 't',
          message: { role: 'assistant', content: 'Hi' },
          done: true,
          done_reason: 'stop',
          prompt_eval_count: 5,
          eval_count: 2,
          total_duration: 1,
        },
        {
          model: 'qwen',
          message: {
            role: 'assistant',
            content: '',
            thinking: 'hm',
            tool_calls: [{ function: { name: 'f', arguments: { city: 'Oslo' } } }],
          },
          done: false,
        },
        {
          model: 'x',
          message: { content: 'y', tool_calls: [{ function: { name: 'g', arguments: '{"a":1}' } }] },
          done: true,
          done_reason: 'length',
          prompt_eval_count: 0,
          eval_count: 0,
        },
      ],
      keys: {
        top: ['model', 'message', 'done', 'done_reason', 'prompt_eval_count', 'eval_count', 'created_at'],
        nested: ['content', 'thinking', 'tool_calls', 'function', 'name', 'arguments', 'role', 'extra'],
      },
      convert: (value: never) => [
        convertOllamaChat(value, 'requested'),
        convertOllamaChunk(value, createOllamaStreamState()),
      ],
    },
  ];

  for (const payload of PAYLOADS) {
    it(`${payload.name}: accepts what zod accepts, and converts the same as zod's copy`, () => {
      const next = seededRandom(7 + payload.name.length);
      const check = fastCheck(payload.schema);
      let accepted = 0;
      for (let round = 0; round < 10_000; round++) {
        const value = structuredClone(payload.seeds[round % payload.seeds.length]!);
        const mutations = 1 + Math.floor(next() * 3);
        for (let index = 0; index < mutations; index++) mutate(value, next, payload.keys);
        const fast = check(value);
        const zod = payload.schema.safeParse(value);
        assert.equal(
          fast,
          zod.success,
          `fast check ${fast ? 'accepts' : 'refuses'} what zod ${zod.success ? 'accepts' : 'refuses'}: ${JSON.stringify(value)}`,
        );
        if (!zod.success) continue;
        accepted++;
        let fromZod: unknown;
        let fromValue: unknown;
        try {
          fromZod = payload.convert(zod.data as never);
        } catch (error) {
          fromZod = { threw: String(error) };
        }
        try {
          fromValue = payload.convert(value as never);
        } catch (error) {
          fromValue = { threw: String(error) };
        }
        assert.deepEqual(fromValue, fromZod, JSON.stringify(value));
      }
      assert.ok(accepted > 1_000 && accepted < 9_000, `accepted ${accepted} of 10,000`);
    });
  }

  it('the client does not load ajv (it imports the contract, never checks a request); the worker side does', () => {
    const script = [
      "const Module = require('node:module');",
      "const loaded = () => Object.keys(Module._cache).some((path) => path.includes('/node_modules/ajv/'));",
      '(async () => {',
      "  await import('./src/client/index.ts');",
      '  const client = loaded();',
      "  (await import('./src/contract/request.ts')).prepareRequestCheck();",
      '  console.log(JSON.stringify({ client, worker: loaded() }));',
      '})();',
    ].join('\n');
    const result = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout.trim().split('\n').at(-1)!), { client: false, worker: true });
  });
});
