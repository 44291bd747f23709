/**
 * The client against a real nats-server and a small protocol responder: a
 * real NATS subscription speaking the worker's side of DESIGN.md (not a mock
 * of the bus), so that faults a real worker rarely makes (gaps, repeats,
 * silence, death) can be produced on demand.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  connect,
  headers as natsHeaders,
  errors as natsErrors,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import {
  createClient,
  LlmProxyError,
  type ChatReply,
  type ChatRequest,
  type LlmProxyClient,
  type StreamChunk,
} from '../src/client/index.js';
import { HEADERS, STREAM_MARKS, subjectsFor } from '../src/contract/index.js';

const SECRET = 'test-secret-value';

let server: NatsServerHandle;
let workerConnection: NatsConnection;
let prefixCounter = 0;

before(async () => {
  server = await startNatsServer({ jetstream: false });
  workerConnection = await connect({ servers: server.url, name: 'protocol-responder' });
});

after(async () => {
  await workerConnection.close();
  await server.dispose();
});

/** A fresh subject prefix per test, so responders of one test never see another's requests. */
function freshPrefix(): string {
  prefixCounter += 1;
  return `t${prefixCounter}`;
}

function request(content = 'hello', extra: Partial<ChatRequest> = {}): ChatRequest {
  return { model: 'fake-model', messages: [{ role: 'user', content }], ...extra };
}

function replyFor(
  body: ChatRequest & { request_id: string },
  content: string,
  extra: Partial<ChatReply> = {},
): ChatReply {
  return {
    content,
    usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 },
    provider: 'fake',
    model_resolved: 'fake-physical',
    latency_ms: 12.5,
    model: body.model,
    request_id: body.request_id,
    finish_reason: 'stop',
    cost_usd: 0.0001,
    cached: false,
    ...extra,
  };
}

interface StreamWriter {
  chunk(seq: number, delta: string): void;
  heartbeat(): Promise<'no-responders' | 'timeout' | 'answered'>;
  end(reply: ChatReply): void;
  error(code: string, status: number, message: string, extra?: Record<string, unknown>): void;
}

function streamWriter(message: Msg): StreamWriter {
  const publish = (mark: string, body: unknown, extraHeaders: Record<string, string> = {}) => {
    const headers = natsHeaders();
    headers.set(HEADERS.stream, mark);
    for (const [name, value] of Object.entries(extraHeaders)) headers.set(name, value);
    workerConnection.publish(message.reply ?? '', JSON.stringify(body), { headers });
  };
  return {
    chunk: (seq, delta) => publish(STREAM_MARKS.chunk, { seq, delta }),
    async heartbeat() {
      const headers = natsHeaders();
      headers.set(HEADERS.stream, STREAM_MARKS.heartbeat);
      try {
        await workerConnection.request(message.reply ?? '', JSON.stringify({ heartbeat: true }), {
          timeout: 200,
          headers,
        });
        return 'answered';
      } catch (error) {
        if (error instanceof natsErrors.RequestError && error.isNoResponders()) return 'no-responders';
        return 'timeout';
      }
    },
    end: (reply) => publish(STREAM_MARKS.end, { ...reply, done: true, ttft_ms: 5 }),
    error: (code, status, text, extra = {}) =>
      publish(
        STREAM_MARKS.error,
        { error: { code, status, message: text, retryable: status >= 500, ...extra } },
        { [HEADERS.serviceError]: text, [HEADERS.serviceErrorCode]: String(status) },
      ),
  };
}

interface Received {
  body: ChatRequest & { request_id: string };
  headers: Record<string, string>;
  message: Msg;
}

/** Subscribes a responder on `<prefix>.proxy.request`; the handler speaks the worker's side. */
async function respond(
  prefix: string,
  handler: (received: Received) => void | Promise<void>,
): Promise<{ requests: Received[]; stop(): void }> {
  const requests: Received[] = [];
  const subscription = workerConnection.subscribe(subjectsFor(prefix).request, {
    queue: 'llm-proxy',
    callback: (_error, message) => {
      const headers: Record<string, string> = {};
      for (const [name, values] of message.headers ?? []) headers[name] = values[0] ?? '';
      const received: Received = { body: message.json(), headers, message };
      requests.push(received);
      void handler(received);
    },
  });
  await workerConnection.flush();
  return { requests, stop: () => subscription.unsubscribe() };
}

/** Collects what arrives on `<prefix>.proxy.cancel`. */
async function listenForCancels(
  prefix: string,
): Promise<{ cancels: Array<{ requestId: string; secret: string }>; next(): Promise<void> }> {
  const cancels: Array<{ requestId: string; secret: string }> = [];
  const waiters: Array<() => void> = [];
  workerConnection.subscribe(subjectsFor(prefix).cancel, {
    callback: (_error, message) => {
      cancels.push({
        requestId: (message.json() as { request_id: string }).request_id,
        secret: message.headers?.get(HEADERS.secret) ?? '',
      });
      waiters.shift()?.();
    },
  });
  await workerConnection.flush();
  return {
    cancels,
    next: () =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no cancel message within 10 s')), 10_000);
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

async function withClient(
  prefix: string,
  options: Partial<Parameters<typeof createClient>[0]>,
  body: (client: LlmProxyClient) => Promise<void>,
): Promise<void> {
  const client = await createClient({ servers: server.url, subjectPrefix: prefix, secret: SECRET, ...options });
  try {
    await body(client);
  } finally {
    await client.close();
  }
}

async function collect(stream: AsyncIterable<StreamChunk>): Promise<{ chunks: StreamChunk[]; error: unknown }> {
  const chunks: StreamChunk[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks, error: undefined };
  } catch (error) {
    return { chunks, error };
  }
}

function assertProxyError(error: unknown, code: string, pattern?: RegExp): asserts error is LlmProxyError {
  assert.ok(error instanceof LlmProxyError, `expected an LlmProxyError, got ${String(error)}`);
  assert.equal(error.code, code, `code of "${error.message}"`);
  if (pattern !== undefined) assert.match(error.message, pattern);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('chat()', () => {
  test('sends the request with the secret, a generated request_id and the deadline; returns the reply', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      message.respond(JSON.stringify(replyFor(body, 'hi there')));
    });
    await withClient(prefix, { timeoutMs: 20_000 }, async (client) => {
      const reply = await client.chat(request('hello', { metadata: { agent_id: 'agent:test' } }));
      assert.equal(reply.content, 'hi there');
      assert.equal(reply.usage.total_tokens, 8);
      const [received] = responder.requests;
      assert.ok(received !== undefined);
      assert.equal(received.headers[HEADERS.secret], SECRET);
      assert.match(received.body.request_id, /^[0-9a-f-]{36}$/);
      assert.equal(reply.request_id, received.body.request_id);
      // The client's deadline, minus a grace for the worker's own timeout reply to arrive.
      assert.equal(received.body.timeout_ms, 19_000);
      assert.equal(received.body.stream, undefined);
      assert.equal(received.body.metadata?.agent_id, 'agent:test');
      // No OpenTelemetry SDK is registered: propagation is a no-op.
      assert.equal(received.headers.traceparent, undefined);
    });
    responder.stop();
  });

  test('keeps a request_id and timeout_ms that the caller set', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      message.respond(JSON.stringify(replyFor(body, 'ok')));
    });
    await withClient(prefix, {}, async (client) => {
      const reply = await client.chat(request('x', { request_id: 'my-id-1', timeout_ms: 3_000 }), {
        headers: { tracestate: 'vendor=1' },
      });
      assert.equal(reply.request_id, 'my-id-1');
      assert.equal(responder.requests[0]?.body.timeout_ms, 3_000);
      assert.equal(responder.requests[0]?.headers.tracestate, 'vendor=1');
    });
    responder.stop();
  });

  test('an error reply becomes an LlmProxyError with code, status, retryable, retryAfterMs and requestId', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const headers = natsHeaders();
      headers.set(HEADERS.serviceError, 'agent:test is over 10 requests/minute');
      headers.set(HEADERS.serviceErrorCode, '429');
      const error = {
        code: 'rate_limited',
        status: 429,
        message: 'agent:test is over 10 requests/minute',
        retryable: true,
        retry_after_ms: 4200,
        request_id: body.request_id,
      };
      message.respond(JSON.stringify({ error }), { headers });
    });
    await withClient(prefix, {}, async (client) => {
      const error = await client.chat(request(), {}).catch((caught: unknown) => caught);
      assertProxyError(error, 'rate_limited', /10 requests\/minute/);
      assert.equal(error.status, 429);
      assert.equal(error.retryable, true);
      assert.equal(error.retryAfterMs, 4200);
      assert.equal(error.requestId, responder.requests[0]?.body.request_id);
      assert.equal(error.name, 'LlmProxyError');
      assert.deepEqual(error.toJSON(), {
        code: 'rate_limited',
        status: 429,
        message: 'agent:test is over 10 requests/minute',
        retryable: true,
        retry_after_ms: 4200,
        request_id: responder.requests[0]?.body.request_id,
      });
    });
    responder.stop();
  });

  test('no worker on the subject: no_provider_available at once, not after the timeout', async () => {
    const prefix = freshPrefix();
    await withClient(prefix, { timeoutMs: 60_000 }, async (client) => {
      const started = Date.now();
      const error = await client.chat(request()).catch((caught: unknown) => caught);
      assertProxyError(error, 'no_provider_available', new RegExp(`${prefix}\\.proxy\\.request`));
      assert.equal(error.status, 503);
      assert.equal(error.retryable, true);
      assert.ok(Date.now() - started < 30_000, 'answered long before the 60 s timeout');
    });
  });

  test('a worker that never answers: upstream_timeout, and the worker is told to cancel', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, () => undefined);
    const cancels = await listenForCancels(prefix);
    await withClient(prefix, {}, async (client) => {
      const cancelled = cancels.next();
      const error = await client.chat(request(), { timeoutMs: 300 }).catch((caught: unknown) => caught);
      assertProxyError(error, 'upstream_timeout', /300 ms/);
      await cancelled;
      assert.deepEqual(cancels.cancels, [{ requestId: responder.requests[0]?.body.request_id, secret: SECRET }]);
      assert.equal(responder.requests[0]?.body.timeout_ms, 270);
    });
    responder.stop();
  });

  test('an abort signal: cancelled at once, and a cancel message names the request', async () => {
    const prefix = freshPrefix();
    const controller = new AbortController();
    const responder = await respond(prefix, () => controller.abort());
    const cancels = await listenForCancels(prefix);
    await withClient(prefix, {}, async (client) => {
      const cancelled = cancels.next();
      const error = await client.chat(request(), { signal: controller.signal }).catch((caught: unknown) => caught);
      assertProxyError(error, 'cancelled');
      assert.equal(error.status, 499);
      await cancelled;
      assert.equal(cancels.cancels[0]?.requestId, responder.requests[0]?.body.request_id);
      const already = await client.chat(request(), { signal: controller.signal }).catch((caught: unknown) => caught);
      assertProxyError(already, 'cancelled', /before sending/);
      assert.equal(responder.requests.length, 1, 'an already-aborted call sends nothing');
    });
    responder.stop();
  });

  test('stream: true is refused: it needs stream()', async () => {
    const prefix = freshPrefix();
    await withClient(prefix, {}, async (client) => {
      const error = await client.chat(request('x', { stream: true })).catch((caught: unknown) => caught);
      assertProxyError(error, 'invalid_request', /client\.stream\(\)/);
    });
  });

  test('a reply that is not JSON is an upstream_error', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ message }) => {
      message.respond('<html>');
    });
    await withClient(prefix, {}, async (client) => {
      assertProxyError(await client.chat(request()).catch((caught: unknown) => caught), 'upstream_error', /not JSON/);
    });
    responder.stop();
  });

  test('close() leaves a borrowed connection open', async () => {
    const prefix = freshPrefix();
    const connection = await connect({ servers: server.url });
    const client = await createClient({ connection, subjectPrefix: prefix });
    await client.close();
    assert.equal(connection.isClosed(), false);
    await connection.close();
  });
});

describe('max_payload', () => {
  test('a request over the server max_payload is refused before sending, by chat() and stream()', async () => {
    const small = await startNatsServer({ jetstream: false, maxPayload: 4096 });
    const peer = await connect({ servers: small.url });
    let received = 0;
    peer.subscribe('llm.proxy.request', {
      callback: () => {
        received += 1;
      },
    });
    await peer.flush();
    const client = await createClient({ servers: small.url, secret: SECRET });
    try {
      const big = request('x'.repeat(5_000));
      const error = await client.chat(big).catch((caught: unknown) => caught);
      assertProxyError(error, 'payload_too_large', /max_payload of 4096 bytes/);
      assert.equal(error.status, 413);
      assert.equal(error.retryable, false);
      const stream = client.stream(big);
      const { chunks, error: streamError } = await collect(stream);
      assert.equal(chunks.length, 0);
      assertProxyError(streamError, 'payload_too_large');
      await assert.rejects(
        stream.final,
        (caught: unknown) => caught instanceof LlmProxyError && caught.code === 'payload_too_large',
      );
      await client.connection.flush();
      await peer.flush();
      assert.equal(received, 0, 'nothing reached the bus');
    } finally {
      await client.close();
      await peer.close();
      await small.dispose();
    }
  });
});

describe('stream()', () => {
  test('chunks arrive in order, heartbeats are skipped and never answered, final gives the reply', async () => {
    const prefix = freshPrefix();
    const heartbeatOutcomes: string[] = [];
    const responder = await respond(prefix, async ({ body, message }) => {
      const writer = streamWriter(message);
      heartbeatOutcomes.push(await writer.heartbeat());
      const words = ['one ', 'two ', 'three'];
      for (const [seq, word] of words.entries()) {
        writer.chunk(seq, word);
        if (seq === 1) heartbeatOutcomes.push(await writer.heartbeat());
      }
      writer.end(replyFor(body, words.join('')));
    });
    await withClient(prefix, {}, async (client) => {
      const stream = client.stream(request('count'));
      assert.equal(stream.reply, undefined);
      const { chunks, error } = await collect(stream);
      assert.equal(error, undefined);
      assert.deepEqual(
        chunks.map((chunk) => [chunk.seq, chunk.delta]),
        [
          [0, 'one '],
          [1, 'two '],
          [2, 'three'],
        ],
      );
      const reply = await stream.final;
      assert.equal(reply.content, 'one two three');
      assert.equal(reply.done, true);
      assert.equal(reply.ttft_ms, 5);
      assert.equal(stream.reply, reply);
      assert.equal(stream.requestId, responder.requests[0]?.body.request_id);
      assert.equal(responder.requests[0]?.body.stream, true);
      assert.equal(responder.requests[0]?.headers[HEADERS.secret], SECRET);
      // The client's inbox is subscribed, so a heartbeat request meets a listener that stays silent.
      assert.deepEqual(heartbeatOutcomes, ['timeout', 'timeout']);
    });
    responder.stop();
  });

  test('final can be awaited without iterating', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'a');
      writer.chunk(1, 'b');
      writer.end(replyFor(body, 'ab'));
    });
    await withClient(prefix, {}, async (client) => {
      const reply = await client.stream(request()).final;
      assert.equal(reply.content, 'ab');
    });
    responder.stop();
  });

  test('a missing chunk is an upstream_error naming it, after the chunks before the gap; the worker is told to cancel', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'a');
      writer.chunk(2, 'c');
      writer.end(replyFor(body, 'ac'));
    });
    const cancels = await listenForCancels(prefix);
    await withClient(prefix, {}, async (client) => {
      const cancelled = cancels.next();
      const stream = client.stream(request());
      const { chunks, error } = await collect(stream);
      assert.deepEqual(
        chunks.map((chunk) => chunk.delta),
        ['a'],
      );
      assertProxyError(error, 'upstream_error', /chunk 1 missing/);
      await assert.rejects(stream.final, /chunk 1 missing/);
      await cancelled;
      assert.equal(cancels.cancels[0]?.requestId, stream.requestId);
    });
    responder.stop();
  });

  test('a stream whose last chunk was lost is an upstream_error, not a clean end', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'ab');
      // chunk 1 ("cd") never arrives; the end message does.
      writer.end(replyFor(body, 'abcd'));
    });
    await withClient(prefix, {}, async (client) => {
      const stream = client.stream(request());
      const { chunks, error } = await collect(stream);
      assert.deepEqual(
        chunks.map((chunk) => chunk.delta),
        ['ab'],
      );
      assertProxyError(error, 'upstream_error', /2 of 4 characters/);
    });
    responder.stop();
  });

  test('a repeated (out-of-order) chunk is an upstream_error', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'a');
      writer.chunk(1, 'b');
      writer.chunk(0, 'a');
      writer.end(replyFor(body, 'ab'));
    });
    await withClient(prefix, {}, async (client) => {
      const { chunks, error } = await collect(client.stream(request()));
      assert.deepEqual(
        chunks.map((chunk) => chunk.delta),
        ['a', 'b'],
      );
      assertProxyError(error, 'upstream_error', /chunk 0 out of order/);
    });
    responder.stop();
  });

  test('an error terminal message throws its LlmProxyError after the chunks already sent', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'partial ');
      writer.error('upstream_error', 502, 'fake: connection reset by the provider', { request_id: body.request_id });
    });
    await withClient(prefix, {}, async (client) => {
      const stream = client.stream(request());
      const { chunks, error } = await collect(stream);
      assert.deepEqual(
        chunks.map((chunk) => chunk.delta),
        ['partial '],
      );
      assertProxyError(error, 'upstream_error', /connection reset/);
      assert.equal(error.status, 502);
      assert.equal(error.retryable, true);
      assert.equal(error.requestId, stream.requestId);
      assert.equal(stream.reply, undefined);
    });
    responder.stop();
  });

  test('an error before any chunk (e.g. unauthorized) ends the stream with it', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ message }) => {
      // A refusal answered like a plain request: error body, service headers, no LLM-Stream mark.
      const headers = natsHeaders();
      headers.set(HEADERS.serviceError, 'missing or wrong X-Internal-Secret');
      headers.set(HEADERS.serviceErrorCode, '401');
      message.respond(
        JSON.stringify({
          error: { code: 'unauthorized', status: 401, message: 'missing or wrong X-Internal-Secret', retryable: false },
        }),
        {
          headers,
        },
      );
    });
    await withClient(prefix, {}, async (client) => {
      const { error } = await collect(client.stream(request()));
      assertProxyError(error, 'unauthorized');
      assert.equal(error.retryable, false);
    });
    responder.stop();
  });

  test('no worker: no_provider_available at once', async () => {
    const prefix = freshPrefix();
    await withClient(prefix, { firstMessageTimeoutMs: 60_000 }, async (client) => {
      const started = Date.now();
      const { chunks, error } = await collect(client.stream(request()));
      assert.equal(chunks.length, 0);
      assertProxyError(error, 'no_provider_available', /proxy\.request/);
      assert.ok(Date.now() - started < 30_000, 'long before the first-message timeout');
    });
  });

  test('a worker that takes the request and never answers: the first-message timeout', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, () => undefined);
    const cancels = await listenForCancels(prefix);
    await withClient(prefix, { firstMessageTimeoutMs: 300 }, async (client) => {
      const cancelled = cancels.next();
      const stream = client.stream(request());
      const { error } = await collect(stream);
      assertProxyError(error, 'upstream_timeout', /no reply from a worker within 300 ms/);
      await cancelled;
      assert.equal(cancels.cancels[0]?.requestId, stream.requestId);
    });
    responder.stop();
  });

  test('a worker that dies mid-stream is detected by the idle timeout', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'a');
      writer.chunk(1, 'b');
      // …and nothing more: no chunk, no heartbeat, no end.
    });
    await withClient(prefix, { idleTimeoutMs: 400 }, async (client) => {
      const started = Date.now();
      const { chunks, error } = await collect(client.stream(request()));
      assert.equal(chunks.length, 2);
      assertProxyError(error, 'upstream_timeout', /silent for 400 ms after 2 chunk/);
      assert.ok(Date.now() - started < 20_000);
    });
    responder.stop();
  });

  test('heartbeats keep a slow stream alive past the idle timeout', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, async ({ body, message }) => {
      const writer = streamWriter(message);
      writer.chunk(0, 'thinking… ');
      // 1.2 s of silence from the model, covered by heartbeats every 100 ms (idle timeout 600 ms).
      for (let beat = 0; beat < 12; beat += 1) {
        void writer.heartbeat();
        await sleep(100);
      }
      writer.chunk(1, 'done');
      writer.end(replyFor(body, 'thinking… done'));
    });
    await withClient(prefix, { idleTimeoutMs: 600 }, async (client) => {
      const stream = client.stream(request());
      const { chunks, error } = await collect(stream);
      assert.equal(error, undefined);
      assert.equal(chunks.map((chunk) => chunk.delta).join(''), 'thinking… done');
      assert.equal((await stream.final).content, 'thinking… done');
    });
    responder.stop();
  });

  test('breaking out of for-await cancels: a cancel message with the secret, and the inbox is gone', async () => {
    const prefix = freshPrefix();
    let heartbeatAfterCancel: Promise<string> | undefined;
    const cancels = await listenForCancels(prefix);
    let writerForTest: StreamWriter | undefined;
    const responder = await respond(prefix, ({ message }) => {
      writerForTest = streamWriter(message);
      for (let seq = 0; seq < 3; seq += 1) writerForTest.chunk(seq, `w${seq} `);
    });
    await withClient(prefix, {}, async (client) => {
      const cancelled = cancels.next();
      const stream = client.stream(request());
      const seen: string[] = [];
      for await (const chunk of stream) {
        seen.push(chunk.delta);
        if (seen.length === 2) break;
      }
      assert.deepEqual(seen, ['w0 ', 'w1 ']);
      await cancelled;
      assert.deepEqual(cancels.cancels, [{ requestId: stream.requestId, secret: SECRET }]);
      await assert.rejects(
        stream.final,
        (caught: unknown) => caught instanceof LlmProxyError && caught.code === 'cancelled',
      );
      await client.connection.flush();
      // What a worker's next heartbeat learns: nobody listens on the inbox any more.
      heartbeatAfterCancel = writerForTest?.heartbeat();
      assert.equal(await heartbeatAfterCancel, 'no-responders');
    });
    responder.stop();
  });

  test('an abort signal cancels the stream, and stream.cancel() too', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ message }) => streamWriter(message).chunk(0, 'a'));
    const cancels = await listenForCancels(prefix);
    await withClient(prefix, {}, async (client) => {
      const controller = new AbortController();
      const first = cancels.next();
      const stream = client.stream(request(), { signal: controller.signal });
      const iterator = stream[Symbol.asyncIterator]();
      assert.equal((await iterator.next()).value?.delta, 'a');
      const pending = iterator.next();
      controller.abort();
      await assert.rejects(
        pending,
        (caught: unknown) => caught instanceof LlmProxyError && caught.code === 'cancelled',
      );
      await first;
      assert.equal(cancels.cancels[0]?.requestId, stream.requestId);

      const second = cancels.next();
      const other = client.stream(request());
      other.cancel();
      await assert.rejects(other.final, /cancelled by the client/);
      await second;
      assert.equal(cancels.cancels[1]?.requestId, other.requestId);
      // Cancelling an ended stream does nothing.
      other.cancel();
      assert.throws(() => other[Symbol.asyncIterator]() && other[Symbol.asyncIterator](), /only once/);
    });
    responder.stop();
  });

  test('the NATS connection closing mid-stream ends the stream with an error', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ message }) => streamWriter(message).chunk(0, 'a'));
    const client = await createClient({ servers: server.url, subjectPrefix: prefix, idleTimeoutMs: 60_000 });
    const stream = client.stream(request());
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).value?.delta, 'a');
    const pending = iterator.next();
    await client.close();
    await assert.rejects(
      pending,
      (caught: unknown) => caught instanceof LlmProxyError && /connection closed/.test(caught.message),
    );
    responder.stop();
  });

  test('many concurrent streams through one responder each arrive whole', async () => {
    const prefix = freshPrefix();
    const responder = await respond(prefix, ({ body, message }) => {
      const writer = streamWriter(message);
      const text = String(body.messages[0]?.content);
      const pieces = text.split(' ');
      for (const [seq, piece] of pieces.entries()) writer.chunk(seq, seq === 0 ? piece : ` ${piece}`);
      writer.end(replyFor(body, text));
    });
    await withClient(prefix, {}, async (client) => {
      const texts = Array.from({ length: 100 }, (_, index) =>
        Array.from({ length: 20 }, (_, word) => `s${index}w${word}`).join(' '),
      );
      const results = await Promise.all(
        texts.map(async (text) => {
          const stream = client.stream(request(text));
          const { chunks, error } = await collect(stream);
          assert.equal(error, undefined);
          return { text, streamed: chunks.map((chunk) => chunk.delta).join(''), final: (await stream.final).content };
        }),
      );
      for (const result of results) {
        assert.equal(result.streamed, result.text);
        assert.equal(result.final, result.text);
      }
    });
    responder.stop();
  });
});
