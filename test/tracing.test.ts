/**
 * Traces (issue 20): the SDK in this process with an in-memory exporter, a real nats-server, an
 * in-process worker (limits on, two tries per model) and the fake OpenAI. A request sent with a
 * known `traceparent` gives one request span in that trace, its parent the given span; one child
 * span per provider call (the first failed: `error.type`; the second: tokens and finish reason);
 * the limits' admit and settle spans. A stream likewise; a refusal by a limit says its scope and
 * dimension; a `traceparent` on the HTTP front door continues into the worker's spans. No span
 * holds the prompt, the answer, the provider key or the secret.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { createClient, LlmProxyError, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import { httpSchema } from '../src/config/http-schema.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { refusalOf } from '../src/limits/hooks.js';
import { refusalError } from '../src/limits/limiter.js';
import { budgetWindows, DIMENSIONS, SCOPE_KINDS, scopeFor } from '../src/limits/policy.js';
import { createLogger } from '../src/telemetry/logger.js';
import { otlpTracesWanted, startTracing, type ProcessTracing } from '../src/telemetry/trace-sdk.js';
import { fakeBehaviours, startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startInProcessWorker, testConfig, TEST_API_KEY, type InProcessWorker } from './helpers/worker.js';

const SECRET = 'tracing-s3cret-71c4e0';
const PROMPT = 'PROMPT-TEXT-never-in-a-span';
const ANSWER = 'ANSWER-TEXT-never-in-a-span';

const exporter = new InMemorySpanExporter();
let tracing: ProcessTracing | undefined;
let nats: NatsServerHandle;
let openai: FakeOpenAI;
let worker: InProcessWorker;
let connection: NatsConnection;
let client: LlmProxyClient;
let frontDoor: FrontDoor;

/** A fresh W3C parent: its trace id, span id and the `traceparent` header (sampled). */
function parent(): { traceId: string; spanId: string; traceparent: string } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

/** The spans of one trace, once its request span has ended (it ends last, after the settle). */
async function traceOf(traceId: string): Promise<ReadableSpan[]> {
  for (let tries = 0; tries < 200; tries++) {
    const spans = exporter.getFinishedSpans().filter((span) => span.spanContext().traceId === traceId);
    if (spans.some((span) => span.kind === SpanKind.CONSUMER)) return spans;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`no request span in trace ${traceId}`);
}

interface Tree {
  request: ReadableSpan;
  attempts: ReadableSpan[];
  admit: ReadableSpan | undefined;
  settle: ReadableSpan | undefined;
}

/** The request span (the only root of the trace here, its parent the caller's) and its children by kind. */
function treeOf(spans: ReadableSpan[], callerSpanId: string): Tree {
  const requests = spans.filter((span) => span.kind === SpanKind.CONSUMER);
  assert.equal(requests.length, 1, 'one request span');
  const request = requests[0]!;
  // The typed client sends to the model's subject (issue 19), named by its template.
  assert.equal(request.name, 'llm.proxy.model.{model} process');
  assert.equal(request.attributes['messaging.destination.template'], 'llm.proxy.model.{model}');
  assert.equal(request.parentSpanContext?.spanId, callerSpanId, "the request span's parent is the caller's span");
  const requestSpanId = request.spanContext().spanId;
  for (const span of spans) {
    if (span !== request) assert.equal(span.parentSpanContext?.spanId, requestSpanId, `${span.name}: a child`);
  }
  const byStart = (a: ReadableSpan, b: ReadableSpan) =>
    a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1];
  return {
    request,
    attempts: spans.filter((span) => span.kind === SpanKind.CLIENT).sort(byStart),
    admit: spans.find((span) => span.name === 'llm_proxy.limits admit'),
    settle: spans.find((span) => span.name === 'llm_proxy.limits settle'),
  };
}

/** Nothing secret or private in any span: names, attributes, events, status messages. */
function assertNothingPrivate(spans: ReadableSpan[]): void {
  const text = JSON.stringify(
    spans.map((span) => ({
      name: span.name,
      attributes: span.attributes,
      events: span.events,
      status: span.status,
      links: span.links,
    })),
  );
  for (const secret of [PROMPT, ANSWER, TEST_API_KEY, SECRET, 'Bearer'])
    assert.ok(!text.includes(secret), `${secret} in a span: ${text}`);
  for (const span of spans) {
    for (const [name, value] of Object.entries(span.attributes)) {
      const values = Array.isArray(value) ? value : [value];
      for (const item of values)
        assert.ok(typeof item !== 'string' || item.length <= 256, `${span.name} ${name} is unbounded`);
    }
  }
}

before(async () => {
  tracing = startTracing({ serviceName: 'llm-proxy-test', exporter });
  assert.ok(tracing !== undefined);
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    config: testConfig(
      { openai: openai.baseUrl },
      {
        routing: { retry: { attempts: 2, base_backoff_ms: 10, max_backoff_ms: 20, jitter: 0 } },
        limits: {
          enabled: true,
          backend: 'memory',
          default: { rpm: 100 },
          agents: { 'agent:tight': { rpm: 1 } },
        },
      },
    ),
    env: { FAKE_OPENAI_KEY: TEST_API_KEY, LLM_PROXY_SECRET: SECRET },
  });
  connection = await connect({ servers: nats.url });
  client = await createClient({ connection, secret: SECRET, timeoutMs: 20_000 });
  frontDoor = await startFrontDoor({
    http: httpSchema.parse({ heartbeat_ms: 200, body_limit: 64 * 1024 }),
    connecting: connect({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: SECRET,
    logger: createLogger({ level: 'silent' }),
    port: 0,
  });
  for (let tries = 0; tries < 100 && !frontDoor.bus.connected; tries++)
    await new Promise((resolve) => setTimeout(resolve, 50));
});

after(async () => {
  await frontDoor?.close();
  await client?.close();
  await connection?.close();
  await worker?.stop();
  await openai?.close();
  await nats?.dispose();
  await tracing?.shutdown();
});

describe('traces', () => {
  test('a request retried once: the request span, two attempt spans, the limits spans, GenAI attributes', async () => {
    const caller = parent();
    openai.enqueue(fakeBehaviours.serverError(503), {
      kind: 'ok',
      content: ANSWER,
      usage: { promptTokens: 12, completionTokens: 5 },
    });
    const reply = await client.chat(
      {
        model: 'gpt-test',
        messages: [{ role: 'user', content: PROMPT }],
        request_id: 'trace-retry-1',
        metadata: { agent_id: 'agent:sofia' },
      },
      { headers: { traceparent: caller.traceparent } },
    );
    assert.equal(reply.content, ANSWER);
    assert.equal(reply.attempts?.length, 2);

    const spans = await traceOf(caller.traceId);
    const { request, attempts, admit, settle } = treeOf(spans, caller.spanId);
    assert.equal(spans.length, 5, spans.map((span) => span.name).join(', '));

    assert.equal(request.attributes['gen_ai.request.model'], 'gpt-test');
    assert.equal(request.attributes['gen_ai.provider.name'], 'openai');
    assert.equal(request.attributes['gen_ai.response.model'], 'gpt-4o-mini');
    assert.equal(request.attributes['gen_ai.usage.input_tokens'], 12);
    assert.equal(request.attributes['gen_ai.usage.output_tokens'], 5);
    assert.deepEqual(request.attributes['gen_ai.response.finish_reasons'], ['stop']);
    assert.equal(request.attributes['llm_proxy.request_id'], 'trace-retry-1');
    assert.equal(request.attributes['llm_proxy.attempts'], 2);
    assert.equal(request.attributes['llm_proxy.stream'], false);
    assert.equal(request.attributes['messaging.system'], 'nats');
    assert.equal(request.attributes['error.type'], undefined);
    assert.notEqual(request.status.code, SpanStatusCode.ERROR);

    assert.equal(attempts.length, 2);
    const [failed, served] = attempts as [ReadableSpan, ReadableSpan];
    for (const [index, attempt] of attempts.entries()) {
      assert.equal(attempt.name, 'chat gpt-4o-mini');
      assert.equal(attempt.attributes['gen_ai.operation.name'], 'chat');
      assert.equal(attempt.attributes['gen_ai.provider.name'], 'openai');
      assert.equal(attempt.attributes['gen_ai.request.model'], 'gpt-4o-mini');
      assert.equal(attempt.attributes['llm_proxy.model'], 'gpt-test');
      assert.equal(attempt.attributes['server.address'], '127.0.0.1');
      assert.equal(attempt.attributes['llm_proxy.attempt'], index + 1);
    }
    assert.equal(failed.attributes['error.type'], reply.attempts?.[0]?.error_code);
    assert.equal(failed.status.code, SpanStatusCode.ERROR);
    assert.equal(failed.attributes['gen_ai.usage.input_tokens'], undefined);
    assert.equal(served.attributes['error.type'], undefined);
    assert.equal(served.attributes['gen_ai.usage.input_tokens'], 12);
    assert.equal(served.attributes['gen_ai.usage.output_tokens'], 5);
    assert.deepEqual(served.attributes['gen_ai.response.finish_reasons'], ['stop']);
    assert.equal(served.attributes['gen_ai.response.model'], 'gpt-4o-mini');

    assert.ok(admit !== undefined, 'a limits admit span');
    assert.equal(admit.kind, SpanKind.INTERNAL);
    assert.equal(admit.attributes['llm_proxy.limit.outcome'], 'admitted');
    assert.equal(admit.attributes['llm_proxy.limit.backend'], 'memory');
    assert.ok(settle !== undefined, 'a limits settle span');
    assert.equal(settle.attributes['llm_proxy.limit.outcome'], 'settled');
    // In order: admitted before the first attempt, settled after the last. Each span anchors its clock to
    // Date.now() when it starts (sdk-trace-base), so times of different spans may disagree by up to 1 ms.
    const ms = (time: [number, number]) => time[0] * 1e3 + time[1] / 1e6;
    const before = (earlier: [number, number], later: [number, number]) => ms(earlier) <= ms(later) + 1;
    assert.ok(before(admit.endTime, failed.startTime));
    assert.ok(before(served.endTime, settle.startTime));
    assert.ok(before(settle.endTime, request.endTime));
    assertNothingPrivate(spans);
  });

  test('a streamed request: the attempt span ends with the stream, with its tokens and finish reason', async () => {
    const caller = parent();
    openai.enqueue({
      kind: 'ok',
      content: `${ANSWER} in a few words`,
      usage: { promptTokens: 9, completionTokens: 7 },
    });
    const stream = client.stream(
      { model: 'gpt-test', messages: [{ role: 'user', content: PROMPT }], request_id: 'trace-stream-1' },
      { headers: { traceparent: caller.traceparent } },
    );
    let text = '';
    for await (const chunk of stream) text += chunk.delta;
    const final = await stream.final;
    assert.equal(final.content, text);

    const spans = await traceOf(caller.traceId);
    const { request, attempts, admit, settle } = treeOf(spans, caller.spanId);
    assert.equal(request.attributes['llm_proxy.stream'], true);
    assert.deepEqual(request.attributes['gen_ai.response.finish_reasons'], ['stop']);
    assert.equal(request.attributes['gen_ai.usage.output_tokens'], 7);
    assert.equal(attempts.length, 1);
    const attempt = attempts[0]!;
    assert.equal(attempt.attributes['gen_ai.usage.input_tokens'], 9);
    assert.equal(attempt.attributes['gen_ai.usage.output_tokens'], 7);
    assert.deepEqual(attempt.attributes['gen_ai.response.finish_reasons'], ['stop']);
    assert.equal(attempt.attributes['error.type'], undefined);
    // The attempt lasts as long as the stream: it ends after the request span's last chunk went out.
    // (Each span anchors its clock when it starts: times of two spans may disagree by up to 1 ms.)
    const ms = (time: [number, number]) => time[0] * 1e3 + time[1] / 1e6;
    assert.ok(ms(attempt.endTime) <= ms(request.endTime) + 1);
    assert.ok(admit !== undefined && settle !== undefined);
    assertNothingPrivate(spans);
  });

  test("a limit's refusal: the admit span says the refusing scope and dimension; no attempt", async () => {
    const body: ChatRequest = {
      model: 'gpt-test',
      messages: [{ role: 'user', content: PROMPT }],
      metadata: { agent_id: 'agent:tight' },
    };
    await client.chat({ ...body, request_id: 'trace-tight-1' });
    const caller = parent();
    await assert.rejects(
      client.chat({ ...body, request_id: 'trace-tight-2' }, { headers: { traceparent: caller.traceparent } }),
      (error: unknown) => error instanceof LlmProxyError && error.code === 'rate_limited',
    );
    const spans = await traceOf(caller.traceId);
    const { request, attempts, admit, settle } = treeOf(spans, caller.spanId);
    assert.equal(attempts.length, 0);
    assert.equal(settle, undefined, 'nothing to settle');
    assert.ok(admit !== undefined);
    assert.equal(admit.attributes['llm_proxy.limit.outcome'], 'refused');
    assert.equal(admit.attributes['llm_proxy.limit.scope'], 'agent');
    assert.equal(admit.attributes['llm_proxy.limit.dimension'], 'rpm');
    assert.equal(admit.attributes['error.type'], 'rate_limited');
    assert.equal(request.attributes['error.type'], 'rate_limited');
    assert.equal(request.attributes['llm_proxy.attempts'], 0);
    assert.equal(request.status.code, SpanStatusCode.ERROR);
    assertNothingPrivate(spans);
  });

  test('through the HTTP front door: the traceparent of the HTTP request continues into the worker', async () => {
    for (const stream of [false, true]) {
      const caller = parent();
      const response = await fetch(`${frontDoor.url}/v1/chat/completions`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${SECRET}`,
          traceparent: caller.traceparent,
          tracestate: 'vendor=opaque',
        },
        body: JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content: PROMPT }], stream }),
      });
      assert.equal(response.status, 200, await response.clone().text());
      await response.text();
      const spans = await traceOf(caller.traceId);
      const { request, attempts } = treeOf(spans, caller.spanId);
      assert.equal(request.parentSpanContext?.traceState?.get('vendor'), 'opaque');
      assert.equal(request.attributes['llm_proxy.stream'], stream);
      assert.equal(attempts.length, 1);
      assertNothingPrivate(spans);
    }
  });

  test('a request without trace context starts a trace of its own; a malformed traceparent is ignored', async () => {
    const earlier = new Set(exporter.getFinishedSpans().map((span) => span.spanContext().traceId));
    await client.chat(
      { model: 'gpt-test', messages: [{ role: 'user', content: PROMPT }], request_id: 'trace-root-1' },
      { headers: { traceparent: 'not-a-traceparent' } },
    );
    let request: ReadableSpan | undefined;
    for (let tries = 0; tries < 200 && request === undefined; tries++) {
      request = exporter
        .getFinishedSpans()
        .find((span) => span.kind === SpanKind.CONSUMER && span.attributes['llm_proxy.request_id'] === 'trace-root-1');
      if (request === undefined) await new Promise((resolve) => setTimeout(resolve, 25));
    }
    assert.ok(request !== undefined);
    assert.equal(request.parentSpanContext, undefined);
    assert.ok(!earlier.has(request.spanContext().traceId));
    const children = exporter
      .getFinishedSpans()
      .filter((span) => span.parentSpanContext?.spanId === request.spanContext().spanId);
    assert.equal(children.filter((span) => span.kind === SpanKind.CLIENT).length, 1);
  });
});

test('OTLP export is wanted only with an endpoint, and not with OTEL_TRACES_EXPORTER=none', () => {
  assert.equal(otlpTracesWanted({}), false);
  assert.equal(otlpTracesWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), true);
  assert.equal(otlpTracesWanted({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }), true);
  assert.equal(
    otlpTracesWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }),
    false,
  );
  // Nothing to export: no provider (the W3C propagator is registered all the same).
  assert.equal(startTracing({ serviceName: 'x', env: {} }), undefined);
});

test("the limits span reads the refusing scope's kind and dimension off every refusal the limiter makes", () => {
  const limits = { rpm: 10, tpm: 1_000, concurrent: 2, dailyMicroUsd: 5_000_000, monthlyMicroUsd: 50_000_000 };
  const charge = { requestId: 'r', tokens: 2_000, microUsd: 1_500, leaseUntil: 0, windows: budgetWindows(0) };
  // The error carries them: no id, however it looks, changes what is read.
  const ids = ['agent:sofia', 'sofia', 'x is over 3 requests/minute', 'key x:y'];
  for (const kind of SCOPE_KINDS) {
    for (const id of ids) {
      for (const dimension of DIMENSIONS) {
        for (const fits of [true, false]) {
          const error = refusalError(
            { scope: scopeFor(kind, id), limits },
            { scopeIndex: 0, dimension, retryAfterMs: 1_000, fits, used: 3 },
            charge,
          );
          const read = refusalOf(error);
          assert.equal(read.errorType, error.code);
          assert.equal(read.dimension, dimension, error.message);
          assert.equal(read.scope, kind, error.message);
        }
      }
    }
  }
  assert.deepEqual(refusalOf(new Error('boom')), { errorType: 'internal' });
});
