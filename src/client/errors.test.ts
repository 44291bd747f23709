import { test } from 'node:test';
import assert from 'node:assert/strict';
import { errors as natsErrors } from '@nats-io/transport-node';
import { ERROR_STATUS, ProxyError, type ErrorCode } from '../contract/index.js';
import { LlmProxyError, errorFromBody, errorFromNats, errorFromServiceHeaders } from './errors.js';

const context = { subject: 'llm.proxy.request', timeoutMs: 1_500, requestId: 'r-1' };

test('every wire code round-trips through errorFromBody with its status and the retryable the worker chose', () => {
  for (const [code, status] of Object.entries(ERROR_STATUS) as Array<[ErrorCode, number]>) {
    const error = errorFromBody({
      code,
      status,
      message: `m-${code}`,
      retryable: code === 'internal',
      request_id: 'r-9',
    });
    assert.ok(error instanceof LlmProxyError && error instanceof ProxyError);
    assert.equal(error.code, code);
    assert.equal(error.status, status);
    assert.equal(error.retryable, code === 'internal');
    assert.equal(error.requestId, 'r-9');
    assert.equal(error.message, `m-${code}`);
  }
});

test('retry_after_ms and attempts are kept; toJSON gives the wire body back', () => {
  const attempts = [
    { model: 'm', provider: 'a', model_resolved: 'x', error_code: 'upstream_error', latency_ms: 10 },
    { model: 'm', provider: 'b', model_resolved: 'y', error_code: 'upstream_timeout', latency_ms: 20 },
  ];
  const body = {
    code: 'no_provider_available' as const,
    status: 503,
    message: 'all deployments failed',
    retryable: true,
    retry_after_ms: 1200,
    attempts,
  };
  const error = errorFromBody(body, 'r-2');
  assert.equal(error.retryAfterMs, 1200);
  assert.deepEqual(error.attempts, attempts);
  assert.deepEqual(error.toJSON(), { ...body, request_id: 'r-2' });
});

test('an unknown code from a newer worker is read through its status; a missing message gets one', () => {
  const unknown = errorFromBody({
    code: 'quota_frozen' as ErrorCode,
    status: 429,
    message: 'frozen',
    retryable: false,
  });
  assert.equal(unknown.code, 'rate_limited');
  assert.equal(unknown.retryable, false);
  assert.equal(errorFromBody({ code: 'brand_new' as ErrorCode, status: 599 } as never).code, 'upstream_error');
  const bare = errorFromBody(undefined, 'r-3');
  assert.equal(bare.code, 'internal');
  assert.equal(bare.message, 'worker answered internal');
  assert.equal(bare.requestId, 'r-3');
});

test('service headers alone map through their status', () => {
  assert.equal(errorFromServiceHeaders('401', 'bad secret').code, 'unauthorized');
  assert.equal(errorFromServiceHeaders('504', '').message, 'worker answered upstream_timeout');
  assert.equal(errorFromServiceHeaders('garbage', 'x').code, 'internal');
});

test('nats.js failures map to the contract codes', () => {
  const noResponders = new natsErrors.RequestError('no responders', {
    cause: new natsErrors.NoRespondersError('llm.proxy.request'),
  });
  const cases: Array<[unknown, ErrorCode]> = [
    [noResponders, 'no_provider_available'],
    [new natsErrors.TimeoutError(), 'upstream_timeout'],
    [new natsErrors.RequestError('timeout', { cause: new natsErrors.TimeoutError() }), 'upstream_timeout'],
    [natsErrors.InvalidArgumentError.format('payload', 'max_payload size exceeded'), 'payload_too_large'],
    [new natsErrors.ClosedConnectionError(), 'internal'],
    [new ProxyError('rate_limited', 'slow down', { retryAfterMs: 5 }), 'rate_limited'],
    [new Error('boom'), 'internal'],
  ];
  for (const [thrown, code] of cases) {
    const error = errorFromNats(thrown, context);
    assert.equal(error.code, code, String(thrown));
    assert.equal(error.requestId, 'r-1');
  }
  assert.match(errorFromNats(noResponders, context).message, /no worker is listening on llm\.proxy\.request/);
  assert.match(errorFromNats(new natsErrors.TimeoutError(), context).message, /1500 ms/);
  assert.equal(
    errorFromNats(new ProxyError('rate_limited', 'slow down', { retryAfterMs: 5 }), context).retryAfterMs,
    5,
  );
});
