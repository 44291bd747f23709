/**
 * The fake providers' own contract (other tests rely on it): queueing,
 * recording, wire shapes, stream quirks, counting of client-closed requests.
 * Read with plain node:http so that what is checked is the bytes on the wire.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { fakeBehaviours, startFakeOllama, startFakeOpenAI, type FakeProvider } from './fakes/index.js';

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** How many separate reads the body arrived in. */
  reads: number;
}

function send(
  url: string,
  options: { method?: string; body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    const outgoing = httpRequest(
      url,
      {
        method: options.method ?? (body === undefined ? 'GET' : 'POST'),
        headers: { 'content-type': 'application/json', ...(options.headers ?? {}) },
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
        agent: false,
      },
      (incoming) => {
        const pieces: Buffer[] = [];
        incoming.on('data', (piece: Buffer) => pieces.push(piece));
        incoming.on('error', reject);
        incoming.on('end', () =>
          resolve({
            status: incoming.statusCode ?? 0,
            headers: incoming.headers,
            text: Buffer.concat(pieces).toString('utf8'),
            reads: pieces.length,
          }),
        );
      },
    );
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: 'm',
  messages: [{ role: 'user', content: 'ping pong' }],
  ...extra,
});

function sseData(text: string): string[] {
  return text
    .split(/\r?\n/)
    .filter((line) => line.startsWith('data: '))
    .map((line) => line.slice('data: '.length));
}

async function withFake<T>(start: () => Promise<FakeProvider>, body: (fake: FakeProvider) => Promise<T>): Promise<T> {
  const fake = await start();
  try {
    return await body(fake);
  } finally {
    await fake.close();
  }
}

describe('fake OpenAI', () => {
  test('queue first, in order, then the default; requests are recorded', () =>
    withFake(startFakeOpenAI, async (fake) => {
      const url = `${fake.baseUrl}/chat/completions`;
      fake.setDefault({ kind: 'ok', content: 'default' });
      fake.enqueue({ kind: 'ok', content: 'first' }, { kind: 'status', status: 503, message: 'busy' });
      assert.equal(fake.queued, 2);
      const first = await send(url, { body: chatBody(), headers: { authorization: 'Bearer sk-abc' } });
      const second = await send(url, { body: chatBody() });
      const third = await send(url, { body: chatBody() });
      assert.equal(JSON.parse(first.text).choices[0].message.content, 'first');
      assert.equal(second.status, 503);
      assert.deepEqual(JSON.parse(second.text), {
        error: { message: 'busy', type: 'server_error', param: null, code: null },
      });
      assert.equal(JSON.parse(third.text).choices[0].message.content, 'default');
      assert.equal(fake.requests.length, 3);
      const recorded = fake.requests[0];
      assert.equal(recorded?.method, 'POST');
      assert.equal(recorded?.path, '/v1/chat/completions');
      assert.equal(recorded?.authorization, 'Bearer sk-abc');
      assert.equal(recorded?.body.model, 'm');
      assert.equal(recorded?.behaviour, 'ok');
      assert.equal(fake.requests[1]?.behaviour, 'status');
      assert.ok(typeof recorded?.time === 'number' && recorded.time > 0);
      await send(`${fake.baseUrl}/models`);
      assert.equal(fake.chatRequests.length, 3);
      assert.equal((await fake.waitForRequests(4)).length, 4);
    }));

  test('default reply has OpenAI’s exact shape with an echo and usage', () =>
    withFake(startFakeOpenAI, async (fake) => {
      const response = await send(`${fake.baseUrl}/chat/completions`, { body: chatBody() });
      const json = JSON.parse(response.text);
      assert.equal(json.object, 'chat.completion');
      assert.match(json.id, /^chatcmpl-/);
      assert.equal(json.model, 'm');
      assert.deepEqual(Object.keys(json.choices[0]).sort(), ['finish_reason', 'index', 'logprobs', 'message']);
      assert.equal(json.choices[0].message.content, 'echo: ping pong');
      assert.equal(json.usage.total_tokens, json.usage.prompt_tokens + json.usage.completion_tokens);
    }));

  test('streams: usage chunk only with include_usage, [DONE] last', () =>
    withFake(startFakeOpenAI, async (fake) => {
      const url = `${fake.baseUrl}/chat/completions`;
      const plain = sseData((await send(url, { body: chatBody({ stream: true }) })).text);
      assert.equal(plain.at(-1), '[DONE]');
      const plainChunks = plain.slice(0, -1).map((data) => JSON.parse(data));
      assert.ok(plainChunks.every((chunk) => !('usage' in chunk) && chunk.choices.length === 1));
      assert.equal(plainChunks.at(-1).choices[0].finish_reason, 'stop');

      const withUsage = sseData(
        (await send(url, { body: chatBody({ stream: true, stream_options: { include_usage: true } }) })).text,
      );
      const usageChunk = JSON.parse(withUsage.at(-2) ?? '{}');
      assert.deepEqual(usageChunk.choices, []);
      assert.ok(usageChunk.usage.prompt_tokens > 0);

      fake.enqueue({ kind: 'ok', usage: null });
      const noUsage = sseData(
        (await send(url, { body: chatBody({ stream: true, stream_options: { include_usage: true } }) })).text,
      );
      assert.ok(noUsage.slice(0, -1).every((data) => JSON.parse(data).usage === null));
    }));

  test('stream quirks are on the wire', () =>
    withFake(startFakeOpenAI, async (fake) => {
      const url = `${fake.baseUrl}/chat/completions`;
      fake.enqueue({ kind: 'ok', quirks: ['crlf', 'comments', 'empty-data'] });
      const quirky = await send(url, { body: chatBody({ stream: true }) });
      assert.ok(quirky.text.includes(': keep-alive\r\n\r\n'));
      assert.ok(quirky.text.includes('data:\r\n\r\n'));
      assert.ok(!/[^\r]\n/.test(quirky.text), 'every line end is CRLF');

      fake.enqueue({ kind: 'ok', quirks: ['split-writes'] });
      const split = await send(url, { body: chatBody({ stream: true }) });
      const events = sseData(split.text).length;
      assert.ok(split.reads > events, `${split.reads} reads for ${events} events`);

      fake.enqueue({ kind: 'ok', quirks: ['coalesce'] });
      const coalesced = await send(url, { body: chatBody({ stream: true }) });
      assert.ok(sseData(coalesced.text).length > 2);
    }));

  test('stream failures: cut resets the connection, error event, early end without [DONE]', () =>
    withFake(startFakeOpenAI, async (fake) => {
      const url = `${fake.baseUrl}/chat/completions`;
      fake.enqueue({ kind: 'stream-cut', afterChunks: 1 });
      await assert.rejects(send(url, { body: chatBody({ stream: true }) }));

      fake.enqueue({ kind: 'stream-error', afterChunks: 1, message: 'overloaded' });
      const errored = sseData((await send(url, { body: chatBody({ stream: true }) })).text);
      assert.equal(errored.length, 2);
      assert.equal(JSON.parse(errored[1] ?? '{}').error.message, 'overloaded');

      fake.enqueue({ kind: 'stream-end-early', afterChunks: 2 });
      const early = sseData((await send(url, { body: chatBody({ stream: true }) })).text);
      assert.equal(early.length, 2);
      assert.ok(!early.includes('[DONE]'));
      assert.equal(fake.closedByClient, 0, 'ends caused by the fake are not counted as client closes');
    }));

  test('requireApiKey: 401 in OpenAI shape without the right Bearer key', () =>
    withFake(
      () => startFakeOpenAI({ requireApiKey: 'sk-right' }),
      async (fake) => {
        const url = `${fake.baseUrl}/chat/completions`;
        const refused = await send(url, { body: chatBody(), headers: { authorization: 'Bearer sk-wrong' } });
        assert.equal(refused.status, 401);
        assert.equal(JSON.parse(refused.text).error.code, 'invalid_api_key');
        assert.equal(
          (await send(url, { body: chatBody(), headers: { authorization: 'Bearer sk-right' } })).status,
          200,
        );
      },
    ));

  test('delay, Retry-After header, models listing, unknown route', () =>
    withFake(
      () => startFakeOpenAI({ models: ['a', 'b'] }),
      async (fake) => {
        const url = `${fake.baseUrl}/chat/completions`;
        fake.enqueue(fakeBehaviours.slowHeaders(300));
        const started = Date.now();
        await send(url, { body: chatBody() });
        assert.ok(Date.now() - started >= 290, 'no answer before the delay');
        fake.enqueue(fakeBehaviours.rateLimited(new Date('2030-01-01T00:00:00Z')));
        const limited = await send(url, { body: chatBody() });
        assert.equal(limited.status, 429);
        assert.equal(limited.headers['retry-after'], 'Tue, 01 Jan 2030 00:00:00 GMT');
        assert.deepEqual(
          JSON.parse((await send(`${fake.baseUrl}/models`)).text).data.map((model: { id: string }) => model.id),
          ['a', 'b'],
        );
        assert.equal((await send(`${fake.origin}/nowhere`, { body: {} })).status, 404);
      },
    ));

  test('hang: in flight until the client leaves, which is counted; close() ends what still hangs', async () => {
    const fake = await startFakeOpenAI();
    const url = `${fake.baseUrl}/chat/completions`;
    fake.setDefault(fakeBehaviours.hang());
    const controller = new AbortController();
    const leaving = send(url, { body: chatBody(), signal: controller.signal }).catch(() => 'left');
    const staying = send(url, { body: chatBody() }).catch(() => 'closed by the fake');
    await fake.waitForRequests(2);
    assert.equal(fake.inFlight, 2);
    controller.abort();
    assert.equal(await leaving, 'left');
    await fake.waitForClosedByClient(1);
    assert.equal(fake.requests.filter((record) => record.closedByClient).length, 1);
    await fake.close();
    assert.equal(await staying, 'closed by the fake');
    assert.equal(fake.closedByClient, 1);
  });
});

describe('fake Ollama', () => {
  test('streams NDJSON by default, JSON with stream: false, tags listing', () =>
    withFake(startFakeOllama, async (fake) => {
      const url = `${fake.baseUrl}/api/chat`;
      const streamed = await send(url, { body: chatBody() });
      assert.equal(streamed.headers['content-type'], 'application/x-ndjson');
      const lines = streamed.text
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line));
      assert.equal(lines.map((line) => line.message.content).join(''), 'echo: ping pong');
      const last = lines.at(-1);
      assert.equal(last.done, true);
      assert.equal(last.done_reason, 'stop');
      assert.ok(last.prompt_eval_count > 0 && last.eval_count > 0);
      assert.ok(lines.slice(0, -1).every((line) => line.done === false));

      fake.enqueue({
        kind: 'ok',
        toolCalls: [{ name: 'f', arguments: '{"a":1}' }],
        reasoningContent: 'hm',
        usage: null,
      });
      const json = JSON.parse((await send(url, { body: chatBody({ stream: false }) })).text);
      assert.deepEqual(json.message.tool_calls, [{ function: { name: 'f', arguments: { a: 1 } } }]);
      assert.equal(json.message.thinking, 'hm');
      assert.ok(!('prompt_eval_count' in json) && !('eval_count' in json));

      const tags = JSON.parse((await send(`${fake.baseUrl}/api/tags`)).text);
      assert.equal(tags.models[0].name, 'llama3.2:3b');
    }));

  test('errors are {"error": "…"}, in a body and as a stream line', () =>
    withFake(startFakeOllama, async (fake) => {
      const url = `${fake.baseUrl}/api/chat`;
      fake.enqueue({ kind: 'status', status: 404, message: 'model "m" not found, try pulling it first' });
      const missing = await send(url, { body: chatBody() });
      assert.equal(missing.status, 404);
      assert.deepEqual(JSON.parse(missing.text), { error: 'model "m" not found, try pulling it first' });
      fake.enqueue({ kind: 'stream-error', afterChunks: 1, message: 'runner stopped' });
      const lines = (await send(url, { body: chatBody() })).text
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line));
      assert.deepEqual(lines.at(-1), { error: 'runner stopped' });
      assert.equal(lines.length, 2);
    }));
});
