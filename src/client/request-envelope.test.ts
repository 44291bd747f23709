import { test } from 'node:test';
import assert from 'node:assert/strict';
import { propagation } from '@opentelemetry/api';
import { LlmProxyError } from './errors.js';
import { buildEnvelope, deadlineGraceMs, type EnvelopeInput } from './request-envelope.js';
import type { ChatRequest } from '../contract/index.js';

const base: ChatRequest = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };

function envelope(overrides: Partial<EnvelopeInput>) {
  const built = buildEnvelope({
    request: base,
    stream: false,
    callTimeoutMs: undefined,
    clientTimeoutMs: 120_000,
    secret: undefined,
    extraHeaders: undefined,
    ...overrides,
  });
  return { ...built, sent: JSON.parse(new TextDecoder().decode(built.body)) as ChatRequest };
}

test('the deadline travels as timeout_ms, a grace shorter than the client waits', () => {
  assert.equal(deadlineGraceMs(120_000), 1_000);
  assert.equal(deadlineGraceMs(300), 30);
  const fromClient = envelope({});
  assert.equal(fromClient.timeoutMs, 120_000);
  assert.equal(fromClient.sent.timeout_ms, 119_000);
  const fromCall = envelope({ callTimeoutMs: 5_000 });
  assert.equal(fromCall.timeoutMs, 5_000);
  assert.equal(fromCall.sent.timeout_ms, 4_500);
  // Never above what the request schema accepts (an hour), however long the client waits.
  assert.equal(envelope({ callTimeoutMs: 7_200_000 }).sent.timeout_ms, 3_600_000);
  assert.equal(envelope({ callTimeoutMs: 1.5 }).sent.timeout_ms, 1);
});

test("a request's own timeout_ms is kept and the client waits a second longer for the worker's answer", () => {
  const built = envelope({ request: { ...base, timeout_ms: 30_000 } });
  assert.equal(built.sent.timeout_ms, 30_000);
  assert.equal(built.timeoutMs, 31_000);
  const withCall = envelope({ request: { ...base, timeout_ms: 30_000 }, callTimeoutMs: 2_000 });
  assert.equal(withCall.sent.timeout_ms, 30_000);
  assert.equal(withCall.timeoutMs, 2_000);
});

test('request_id is generated when absent and kept when given; stream is set for streams only', () => {
  const generated = envelope({});
  assert.match(generated.requestId, /^[0-9a-f-]{36}$/);
  assert.equal(generated.sent.request_id, generated.requestId);
  assert.notEqual(envelope({}).requestId, generated.requestId);
  assert.equal(envelope({ request: { ...base, request_id: 'mine' } }).requestId, 'mine');
  assert.equal(envelope({ stream: true }).sent.stream, true);
  assert.equal(envelope({}).sent.stream, undefined);
  assert.throws(
    () => envelope({ request: { ...base, stream: true } }),
    (error: unknown) => error instanceof LlmProxyError && error.code === 'invalid_request',
  );
});

test('headers: the secret when given, extra headers kept, nothing else without an OTel SDK; none at all when empty', () => {
  const withSecret = envelope({ secret: 's3cret', extraHeaders: { tracestate: 'a=1' } });
  assert.equal(withSecret.headers?.get('X-Internal-Secret'), 's3cret');
  assert.equal(withSecret.headers?.get('tracestate'), 'a=1');
  assert.equal(withSecret.headers?.get('traceparent'), '');
  // No secret, no extra headers, no trace context: no header block on the wire (the worker decodes none).
  assert.equal(envelope({}).headers, undefined);
  assert.equal(envelope({ secret: '' }).headers, undefined);
  assert.ok(!JSON.stringify(withSecret.sent).includes('s3cret'), 'the secret is a header, never in the body');
});

test('a bad timeout or a non-object request is refused as invalid_request', () => {
  assert.throws(() => envelope({ callTimeoutMs: 0 }), /timeoutMs must be a positive number/);
  assert.throws(() => envelope({ request: null as unknown as ChatRequest }), /request must be an object/);
});

test('trace context is injected through the global OpenTelemetry propagator', () => {
  const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  propagation.setGlobalPropagator({
    inject: (_context, carrier, setter) => setter.set(carrier, 'traceparent', traceparent),
    extract: (context) => context,
    fields: () => ['traceparent'],
  });
  try {
    assert.equal(envelope({}).headers?.get('traceparent'), traceparent);
  } finally {
    propagation.disable();
  }
});
