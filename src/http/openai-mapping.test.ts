import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ERROR_STATUS, ProxyError, type ErrorCode } from '../contract/errors.js';
import type { ModelInfo } from '../contract/models.js';
import type { ChatReply } from '../contract/reply.js';
import {
  CompletionChunks,
  completionFromReply,
  modelList,
  modelObject,
  openAIError,
  requestFromOpenAI,
  sseData,
} from './openai-mapping.js';

const REPLY: ChatReply = {
  content: 'Hello there',
  usage: { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9 },
  provider: 'openai',
  model_resolved: 'gpt-4o-mini',
  latency_ms: 12,
  model: 'gpt-test',
  request_id: 'r-1',
  finish_reason: 'stop',
  cost_usd: 0.000_01,
  cached: false,
};

describe('requestFromOpenAI', () => {
  const body = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };

  test('metadata in the body wins over the headers and over user', () => {
    const request = requestFromOpenAI(
      { ...body, user: 'u-1', metadata: { agent_id: 'agent:a', microdao_id: 'microdao:1' } },
      { agentId: 'agent:h', microdaoId: 'microdao:h' },
    );
    assert.deepEqual(request.metadata, { agent_id: 'agent:a', microdao_id: 'microdao:1' });
    assert.equal(request.user, 'u-1');
  });

  test('the headers name the agent when the metadata does not, then user', () => {
    assert.deepEqual(requestFromOpenAI({ ...body, user: 'u-1' }, { agentId: 'agent:h', microdaoId: 'm:h' }).metadata, {
      agent_id: 'agent:h',
      microdao_id: 'm:h',
    });
    assert.deepEqual(requestFromOpenAI({ ...body, user: 'u-1' }, {}).metadata, { agent_id: 'u-1' });
    assert.deepEqual(requestFromOpenAI({ ...body, metadata: { channel_id: 'c' } }, { microdaoId: 'm:2' }).metadata, {
      channel_id: 'c',
      microdao_id: 'm:2',
    });
  });

  test('no agent anywhere: no metadata is invented; an empty user names nobody', () => {
    assert.equal('metadata' in requestFromOpenAI(body, {}), false);
    assert.equal('metadata' in requestFromOpenAI({ ...body, user: '' }, {}), false);
  });

  test('the caller object is not changed', () => {
    const given = { ...body, metadata: { channel_id: 'c' } };
    requestFromOpenAI(given, { agentId: 'agent:h' });
    assert.deepEqual(given.metadata, { channel_id: 'c' });
  });

  test('metadata that is not an object is left for the worker to refuse by name', () => {
    for (const metadata of ['x', 3, null, ['a']]) {
      const request = requestFromOpenAI({ ...body, metadata }, { agentId: 'agent:h' });
      assert.deepEqual(request.metadata, metadata);
    }
  });

  test('a body that is not a JSON object is invalid_request', () => {
    for (const value of [null, 'text', 1, [body]]) {
      assert.throws(
        () => requestFromOpenAI(value, {}),
        (error: unknown) => error instanceof ProxyError && error.code === 'invalid_request',
      );
    }
  });
});

describe('completionFromReply', () => {
  test("OpenAI's chat.completion, with our fields under llm_proxy", () => {
    const completion = completionFromReply(REPLY, 1_700_000_000);
    assert.deepEqual(completion, {
      id: 'chatcmpl-r-1',
      object: 'chat.completion',
      created: 1_700_000_000,
      model: 'gpt-test',
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: 'Hello there', refusal: null },
          logprobs: null,
          finish_reason: 'stop',
        },
      ],
      usage: { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9 },
      system_fingerprint: null,
      llm_proxy: {
        request_id: 'r-1',
        provider: 'openai',
        model_resolved: 'gpt-4o-mini',
        cost_usd: 0.000_01,
        cached: false,
        latency_ms: 12,
      },
    });
  });

  test('tool calls, reasoning_content, estimated tokens and attempts are kept; error finishes as stop', () => {
    const toolCalls = [{ id: 'call_1', type: 'function' as const, function: { name: 'f', arguments: '{"a":1}' } }];
    const attempts = [
      { model: 'gpt-test', provider: 'a', model_resolved: 'x', error_code: 'upstream_error', latency_ms: 3 },
      { model: 'gpt-test', provider: 'openai', model_resolved: 'gpt-4o-mini', error_code: null, latency_ms: 9 },
    ];
    const completion = completionFromReply(
      {
        ...REPLY,
        content: null,
        tool_calls: toolCalls,
        reasoning_content: 'thinking',
        finish_reason: 'error',
        tokens_estimated: true,
        attempts,
      },
      1,
    ) as { choices: Array<{ message: Record<string, unknown>; finish_reason: string }>; llm_proxy: object };
    const [choice] = completion.choices;
    assert.deepEqual(choice!.message.tool_calls, toolCalls);
    assert.equal(choice!.message.content, null);
    assert.equal(choice!.message.reasoning_content, 'thinking');
    assert.equal(choice!.finish_reason, 'stop');
    assert.deepEqual(completion.llm_proxy, {
      request_id: 'r-1',
      provider: 'openai',
      model_resolved: 'gpt-4o-mini',
      cost_usd: 0.000_01,
      cached: false,
      latency_ms: 12,
      tokens_estimated: true,
      attempts,
    });
  });

  test('an empty tool_calls list is not sent', () => {
    const completion = completionFromReply({ ...REPLY, tool_calls: [] }, 1) as {
      choices: Array<{ message: Record<string, unknown> }>;
    };
    assert.equal('tool_calls' in completion.choices[0]!.message, false);
  });
});

describe('CompletionChunks', () => {
  const stream = (includeUsage: boolean) =>
    new CompletionChunks({ requestId: 'r-1', model: 'gpt-test', created: 5, includeUsage });

  test('a role chunk first, then deltas in the same id, created and model', () => {
    const chunks = stream(false);
    assert.deepEqual(chunks.first(), {
      id: 'chatcmpl-r-1',
      object: 'chat.completion.chunk',
      created: 5,
      model: 'gpt-test',
      system_fingerprint: null,
      choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }],
    });
    const delta = chunks.chunk({ seq: 0, delta: 'Hel' }) as { id: string; choices: Array<{ delta: object }> };
    assert.equal(delta.id, 'chatcmpl-r-1');
    assert.deepEqual(delta.choices[0]!.delta, { content: 'Hel' });
  });

  test('reasoning and tool-call deltas; empty text is not sent as content', () => {
    const toolCalls = [{ index: 0, id: 'call_1', type: 'function' as const, function: { name: 'f', arguments: '' } }];
    const chunk = stream(false).chunk({ seq: 3, delta: '', reasoning_delta: 'hm', tool_calls: toolCalls }) as {
      choices: Array<{ delta: object }>;
    };
    assert.deepEqual(chunk.choices[0]!.delta, { reasoning_content: 'hm', tool_calls: toolCalls });
    const empty = stream(false).chunk({ seq: 4, delta: '', reasoning_delta: '', tool_calls: [] }) as {
      choices: Array<{ delta: object }>;
    };
    assert.deepEqual(empty.choices[0]!.delta, {});
  });

  test('the end is a finish chunk, and a usage chunk with no choices only when asked for', () => {
    const [finish, ...rest] = stream(false).end({ ...REPLY, finish_reason: 'length' });
    assert.deepEqual(rest, []);
    assert.deepEqual((finish as { choices: unknown[] }).choices, [
      { index: 0, delta: {}, logprobs: null, finish_reason: 'length' },
    ]);
    assert.equal((finish as { llm_proxy: { request_id: string } }).llm_proxy.request_id, 'r-1');
    const withUsage = stream(true).end(REPLY);
    assert.equal(withUsage.length, 2);
    assert.deepEqual(withUsage[1]!.choices, []);
    assert.deepEqual(withUsage[1]!.usage, { prompt_tokens: 7, completion_tokens: 2, total_tokens: 9 });
  });
});

test('sseData frames one data event; [DONE] verbatim', () => {
  assert.equal(sseData({ a: 'x\ny' }), 'data: {"a":"x\\ny"}\n\n');
  assert.equal(sseData('[DONE]'), 'data: [DONE]\n\n');
});

describe('openAIError', () => {
  test("every code keeps DESIGN.md's status, in OpenAI's envelope", () => {
    for (const [code, status] of Object.entries(ERROR_STATUS) as Array<[ErrorCode, number]>) {
      const answer = openAIError(new ProxyError(code, `m-${code}`));
      assert.equal(answer.status, status);
      assert.deepEqual(Object.keys(answer.body.error), ['message', 'type', 'code', 'param']);
      assert.equal(answer.body.error.message, `m-${code}`);
      assert.equal(typeof answer.body.error.type, 'string');
      assert.deepEqual(answer.headers, {});
    }
  });

  test("OpenAI's own type and code where it has them", () => {
    const body = (code: ErrorCode) => openAIError(new ProxyError(code, 'm')).body.error;
    assert.deepEqual(
      [body('unauthorized').type, body('unauthorized').code],
      ['authentication_error', 'invalid_api_key'],
    );
    assert.deepEqual(
      [body('rate_limited').type, body('rate_limited').code],
      ['rate_limit_error', 'rate_limit_exceeded'],
    );
    assert.equal(body('model_not_found').code, 'model_not_found');
    assert.equal(body('upstream_timeout').code, 'upstream_timeout');
    assert.equal(openAIError(new ProxyError('invalid_request', 'm'), 'messages').body.error.param, 'messages');
  });

  test('retry-after in whole seconds (at least 1) and retry-after-ms', () => {
    assert.deepEqual(openAIError(new ProxyError('rate_limited', 'm', { retryAfterMs: 1_200 })).headers, {
      'retry-after': '2',
      'retry-after-ms': '1200',
    });
    assert.deepEqual(openAIError(new ProxyError('no_provider_available', 'm', { retryAfterMs: 0 })).headers, {
      'retry-after': '1',
      'retry-after-ms': '0',
    });
  });
});

test('models as OpenAI model objects and a list', () => {
  const model: ModelInfo = {
    name: 'gpt-test',
    provider: 'openai',
    physical_name: 'gpt-4o-mini',
    max_tokens: 8_192,
    cost_per_1k_prompt: 0,
    cost_per_1k_completion: 0,
    deployments: [],
    fallbacks: [],
  };
  assert.deepEqual(modelObject(model), { id: 'gpt-test', object: 'model', created: 0, owned_by: 'openai' });
  assert.deepEqual(modelList([model]), {
    object: 'list',
    data: [{ id: 'gpt-test', object: 'model', created: 0, owned_by: 'openai' }],
  });
});
