import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../../contract/errors.js';
import {
  abortError,
  errorFromStatus,
  errorFromStreamPayload,
  errorFromTransport,
  extractProviderMessage,
  isContextLengthMessage,
} from './provider-error.js';

const OPENAI_CONTEXT_ERROR = JSON.stringify({
  error: {
    message:
      "This model's maximum context length is 8192 tokens. However, your messages resulted in 9021 tokens. Please reduce the length of the messages.",
    type: 'invalid_request_error',
    param: 'messages',
    code: 'context_length_exceeded',
  },
});

function fromStatus(status: number, bodyText = '', headers: Record<string, string> = {}): ProxyError {
  return errorFromStatus({
    provider: 'openai',
    status,
    headers,
    bodyText,
    secrets: ['sk-test-secret'],
    now: Date.parse('2026-11-27T21:00:00Z'),
  });
}

test('status table: code, retryable and upstreamStatus for every status class', () => {
  const table: Array<[number, string, boolean]> = [
    [400, 'invalid_request', false],
    [422, 'invalid_request', false],
    [401, 'upstream_error', false],
    [403, 'upstream_error', false],
    [404, 'upstream_error', false],
    [402, 'upstream_error', false],
    [408, 'upstream_timeout', true],
    [409, 'upstream_error', true],
    [413, 'payload_too_large', false],
    [429, 'rate_limited', true],
    [500, 'upstream_error', true],
    [502, 'upstream_error', true],
    [503, 'upstream_error', true],
    [504, 'upstream_error', true],
    [529, 'upstream_error', true],
  ];
  for (const [status, code, retryable] of table) {
    const error = fromStatus(status);
    assert.equal(error.code, code, `status ${status}`);
    assert.equal(error.retryable, retryable, `status ${status}`);
    assert.equal(error.upstreamStatus, status);
    assert.equal(error.message, `openai: HTTP ${status}`, 'an empty body still gives a message naming the provider');
  }
});

test('429 carries retryAfterMs from Retry-After (seconds or date) or retry-after-ms', () => {
  assert.equal(fromStatus(429, '', { 'retry-after': '3' }).retryAfterMs, 3000);
  assert.equal(fromStatus(429, '', { 'retry-after': 'Fri, 27 Nov 2026 21:00:05 GMT' }).retryAfterMs, 5000);
  assert.equal(fromStatus(429, '', { 'retry-after-ms': '250' }).retryAfterMs, 250);
  assert.equal(fromStatus(429).retryAfterMs, undefined);
  assert.equal(fromStatus(503, '', { 'retry-after': '1' }).retryAfterMs, 1000);
});

test('400 context-length error in OpenAI shape sets contextLengthExceeded and keeps the message', () => {
  const error = fromStatus(400, OPENAI_CONTEXT_ERROR);
  assert.equal(error.code, 'invalid_request');
  assert.equal(error.contextLengthExceeded, true);
  assert.match(error.message, /^openai: This model's maximum context length is 8192 tokens/);
  assert.equal(fromStatus(400, '{"error":{"message":"bad temperature","code":null}}').contextLengthExceeded, false);
});

test('context-length wordings of OpenAI, DeepSeek, vLLM, llama.cpp and Ollama are recognised', () => {
  for (const message of [
    "This model's maximum context length is 65536 tokens. However, you requested 70000 tokens",
    'the request exceeds the available context size, try increasing it',
    'the input length exceeds the context length',
    'input length exceeds maximum context length',
    'prompt is too long: 210000 tokens > 200000 maximum',
  ]) {
    assert.ok(isContextLengthMessage(message), message);
  }
  for (const message of ['invalid temperature', 'model not found', 'rate limited'])
    assert.ok(!isContextLengthMessage(message), message);
  assert.equal(fromStatus(400, '{"error":"the input length exceeds the context length"}').contextLengthExceeded, true);
});

test('error bodies are read tolerantly', () => {
  assert.equal(extractProviderMessage(''), undefined);
  assert.equal(extractProviderMessage('   '), undefined);
  assert.equal(extractProviderMessage('Bad Gateway'), 'Bad Gateway');
  assert.equal(extractProviderMessage('{"error":{"message":"quota"}}'), 'quota');
  assert.equal(
    extractProviderMessage('{"error":"model \\"x\\" not found, try pulling it first"}'),
    'model "x" not found, try pulling it first',
  );
  assert.equal(extractProviderMessage('{"detail":[{"msg":"field required"}]}'), 'field required');
  assert.equal(extractProviderMessage('{"message":"plain"}'), 'plain');
  assert.equal(extractProviderMessage('{"unexpected":true}'), '{"unexpected":true}');
  assert.equal(extractProviderMessage('[1,2]'), '[1,2]');
});

test('provider messages lose secrets and are cut to a sane length', () => {
  const echoed = fromStatus(
    401,
    '{"error":{"message":"Incorrect API key provided: sk-test-secret. Header was Bearer sk-test-secret"}}',
  );
  assert.ok(!echoed.message.includes('sk-test-secret'), echoed.message);
  assert.match(echoed.message, /^openai: Incorrect API key provided: \[redacted\]/);
  const long = fromStatus(500, 'x'.repeat(10_000));
  assert.ok(long.message.length < 600);
});

test('transport table: undici and socket codes', () => {
  const table: Array<[string, string, boolean]> = [
    ['UND_ERR_CONNECT_TIMEOUT', 'no_provider_available', true],
    ['ECONNREFUSED', 'no_provider_available', true],
    ['ENOTFOUND', 'no_provider_available', true],
    ['ECONNRESET', 'upstream_error', true],
    ['UND_ERR_SOCKET', 'upstream_error', true],
    ['UND_ERR_CLOSED', 'upstream_error', true],
    ['UND_ERR_HEADERS_TIMEOUT', 'upstream_timeout', true],
    ['UND_ERR_BODY_TIMEOUT', 'upstream_timeout', true],
    ['HPE_INVALID_CONSTANT', 'upstream_error', true],
    ['SOMETHING_ELSE', 'upstream_error', false],
  ];
  for (const [code, expected, retryable] of table) {
    const cause = Object.assign(new Error('boom'), { code });
    const error = errorFromTransport('local', cause);
    assert.equal(error.code, expected, code);
    assert.equal(error.retryable, retryable, code);
    assert.equal(error.cause, cause);
    assert.ok(error.message.startsWith('local: '), error.message);
    assert.equal(error.upstreamStatus, undefined);
  }
});

test('transport codes are found on causes and inside AggregateError', () => {
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
  assert.equal(errorFromTransport('p', new AggregateError([refused], 'all failed')).code, 'no_provider_available');
  assert.equal(
    errorFromTransport('p', new TypeError('fetch failed', { cause: refused })).code,
    'no_provider_available',
  );
  assert.equal(errorFromTransport('p', 'a string').code, 'upstream_error');
});

test('an aborted signal wins: its ProxyError reason, else cancelled', () => {
  const deadline = new ProxyError('upstream_timeout', 'deadline reached');
  const withReason = new AbortController();
  withReason.abort(deadline);
  assert.equal(errorFromTransport('p', new Error('aborted'), withReason.signal), deadline);
  assert.equal(abortError(withReason.signal), deadline);
  const plain = new AbortController();
  plain.abort();
  const cancelled = errorFromTransport('p', Object.assign(new Error('x'), { code: 'ECONNRESET' }), plain.signal);
  assert.equal(cancelled.code, 'cancelled');
  assert.equal(cancelled.retryable, false);
});

test('a ProxyError passes through the transport mapping unchanged', () => {
  const original = new ProxyError('invalid_request', 'x');
  assert.equal(errorFromTransport('p', original), original);
});

test('errors inside a stream: upstream_error, or invalid_request when the prompt was too long', () => {
  const plain = errorFromStreamPayload('openai', { error: { message: 'overloaded', type: 'server_error' } }, []);
  assert.equal(plain.code, 'upstream_error');
  assert.equal(plain.retryable, true);
  assert.equal(plain.message, 'openai: overloaded');
  const ollama = errorFromStreamPayload('local', { error: 'input length exceeds maximum context length' }, []);
  assert.equal(ollama.code, 'invalid_request');
  assert.equal(ollama.contextLengthExceeded, true);
});
