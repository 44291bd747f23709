/**
 * Streams whose answer is larger than the server's `max_payload` (issue 12,
 * item 7), over a real nats-server started with a small one (64 KiB): the
 * terminal message leaves out what the chunks already carried and says so in
 * `omitted`, a single delta larger than the limit is cut into several chunks,
 * and the typed client still assembles the whole reply.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startInProcessWorker, testConfig, usageEventFor, type InProcessWorker } from './helpers/worker.js';
import {
  createClient,
  LlmProxyError,
  type ChatReply,
  type ChatRequest,
  type LlmProxyClient,
  type StreamChunk,
} from '../src/client/index.js';
import { ProxyError, toErrorReply, type ErrorCode } from '../src/contract/errors.js';
import { createLogger } from '../src/telemetry/logger.js';
import { splitJsonText, StreamWriter } from '../src/worker/stream-writer.js';

const MAX_PAYLOAD = 64 * 1024;

interface RawStream {
  chunks: Array<StreamChunk & { bytes: number }>;
  terminal: any;
  terminalBytes: number;
  terminalHeaders: MsgHdrs | undefined;
  mark: string | undefined;
  /** Milliseconds from the last chunk to the terminal message. */
  lastChunkToTerminalMs: number;
}

/** Reads one streamed reply the raw way (own inbox), recording each message's size on the wire. */
async function readRawStream(connection: NatsConnection, body: object, timeoutMs = 15_000): Promise<RawStream> {
  const inbox = createInbox();
  const subscription = connection.subscribe(inbox);
  const result: RawStream = {
    chunks: [],
    terminal: undefined,
    terminalBytes: 0,
    terminalHeaders: undefined,
    mark: undefined,
    lastChunkToTerminalMs: Number.NaN,
  };
  const timer = setTimeout(() => subscription.unsubscribe(), timeoutMs);
  let lastChunkAt = performance.now();
  connection.publish('llm.proxy.request', JSON.stringify({ stream: true, ...body }), { reply: inbox });
  for await (const message of subscription as AsyncIterable<Msg>) {
    const mark = message.headers?.get('LLM-Stream') || undefined;
    if (mark === 'heartbeat') continue;
    if (mark === 'chunk') {
      result.chunks.push({ ...(message.json() as StreamChunk), bytes: message.data.length });
      lastChunkAt = performance.now();
      continue;
    }
    result.lastChunkToTerminalMs = performance.now() - lastChunkAt;
    result.terminal = message.json();
    result.terminalBytes = message.data.length;
    result.terminalHeaders = message.headers;
    result.mark = mark;
    break;
  }
  clearTimeout(timer);
  if (!subscription.isClosed()) subscription.unsubscribe();
  return result;
}

/** Text mixing 1-, 2-, 3- and 4-byte UTF-8 (emoji are UTF-16 surrogate pairs) and characters JSON escapes. */
function mixedText(targetLength: number, seed = 0): string {
  const alphabet = ['a', 'b', 'é', 'ß', '€', '中', '😀', '🚀', '"', '\\', '\n', ' ', 'z', 'q'];
  let text = '';
  for (let index = seed; text.length < targetLength; index++) text += alphabet[(index * 7) % alphabet.length];
  return text;
}

/** Cuts `text` into pieces of about `size` UTF-16 units, never inside a surrogate pair. */
function pieces(text: string, size: number): string[] {
  const result: string[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + size);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end += 1;
    result.push(text.slice(start, end));
    start = end;
  }
  return result;
}

function isLoneSurrogateAtEdge(text: string): boolean {
  if (text === '') return false;
  const first = text.charCodeAt(0);
  const last = text.charCodeAt(text.length - 1);
  return (first >= 0xdc00 && first <= 0xdfff) || (last >= 0xd800 && last <= 0xdbff);
}

describe('streams larger than max_payload', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let worker: InProcessWorker;
  let connection: NatsConnection;
  let client: LlmProxyClient;

  before(async () => {
    nats = await startNatsServer({ maxPayload: MAX_PAYLOAD });
    openai = await startFakeOpenAI();
    worker = await startInProcessWorker({ natsUrl: nats.url, config: testConfig({ openai: openai.baseUrl }) });
    connection = await connect({ servers: nats.url });
    assert.equal(connection.info?.max_payload, MAX_PAYLOAD);
    client = createClient({ connection });
  });

  after(async () => {
    await client?.close();
    await connection?.close();
    await worker?.stop();
    await openai?.close();
    await nats?.dispose();
  });

  const eventFor = (requestId: string) => usageEventFor(connection, requestId);

  const request = (requestId: string): ChatRequest & { request_id: string } => ({
    model: 'gpt-test',
    messages: [{ role: 'user', content: 'Write me a very long answer' }],
    request_id: requestId,
    metadata: { agent_id: 'agent:big' },
  });

  test('a 200 KB answer in small chunks: every chunk, then one small end with omitted: ["content"], quickly; the event says ok', async () => {
    const content = mixedText(200_000);
    const contentPieces = pieces(content, 100);
    openai.enqueue({
      kind: 'ok',
      content,
      chunks: contentPieces,
      usage: { promptTokens: 12, completionTokens: 51_234 },
    });
    const started = performance.now();
    const result = await readRawStream(connection, request('big-raw-1'));
    assert.equal(result.mark, 'end', `terminal: ${JSON.stringify(result.terminal)?.slice(0, 300)}`);
    assert.ok(performance.now() - started < 4_000, 'the stream ended well before the client idle timeout');
    assert.ok(result.lastChunkToTerminalMs < 1_000, `end came ${result.lastChunkToTerminalMs} ms after the last chunk`);
    assert.equal(result.chunks.length, contentPieces.length);
    for (const [index, chunk] of result.chunks.entries()) assert.equal(chunk.seq, index);
    assert.equal(result.chunks.map((chunk) => chunk.delta).join(''), content);

    assert.deepEqual(result.terminal.omitted, ['content']);
    assert.equal(result.terminal.content, null);
    assert.ok(result.terminalBytes < 2_000, `the end message is small (${result.terminalBytes} bytes)`);
    assert.equal(result.terminal.done, true);
    assert.equal(result.terminal.finish_reason, 'stop');
    assert.equal(result.terminal.request_id, 'big-raw-1');
    assert.equal(result.terminal.usage.completion_tokens, 51_234);

    const event = await eventFor('big-raw-1');
    assert.equal(event.status, 'ok');
    assert.equal(event.error_code, null);
    assert.equal(event.completion_tokens, 51_234);
    assert.equal(event.prompt_tokens, 12);
  });

  test('the typed client assembles the omitted content: final has the full answer and keeps omitted', async () => {
    const content = mixedText(200_000, 3);
    openai.enqueue({
      kind: 'ok',
      content,
      chunks: pieces(content, 100),
      usage: { promptTokens: 12, completionTokens: 50_000 },
    });
    const stream = client.stream(request('big-client-1'));
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.delta;
    const reply = await stream.final;
    assert.equal(streamed, content);
    assert.equal(reply.content, content);
    assert.deepEqual(reply.omitted, ['content']);
    assert.equal(reply.done, true);
    assert.equal(reply.usage.completion_tokens, 50_000);
    const event = await eventFor('big-client-1');
    assert.equal(event.status, 'ok');
    assert.equal(event.completion_tokens, 50_000);
  });

  test('one 150 KB delta is cut into chunks that fit, with consecutive seq and no surrogate pair cut', async () => {
    const content = mixedText(150_000, 5);
    openai.enqueue({ kind: 'ok', content, chunks: [content], usage: { promptTokens: 12, completionTokens: 40_000 } });
    const result = await readRawStream(connection, request('one-delta-1'));
    assert.equal(result.mark, 'end', `terminal: ${JSON.stringify(result.terminal)?.slice(0, 300)}`);
    assert.ok(result.chunks.length >= 3, `${result.chunks.length} chunks`);
    result.chunks.forEach((chunk, index) => {
      assert.equal(chunk.seq, index);
      assert.ok(chunk.bytes <= MAX_PAYLOAD, `chunk ${index} is ${chunk.bytes} bytes`);
      assert.equal(isLoneSurrogateAtEdge(chunk.delta), false, `chunk ${index} starts or ends inside a surrogate pair`);
    });
    // Cut to fill the limit, not into crumbs.
    assert.ok(
      result.chunks.length <= Math.ceil((Buffer.byteLength(JSON.stringify(content)) * 1.05) / MAX_PAYLOAD) + 1,
      `${result.chunks.length} chunks`,
    );
    assert.equal(result.chunks.map((chunk) => chunk.delta).join(''), content);
    assert.deepEqual(result.terminal.omitted, ['content']);
    assert.equal((await eventFor('one-delta-1')).status, 'ok');

    openai.enqueue({ kind: 'ok', content, chunks: [content] });
    const stream = client.stream(request('one-delta-client-1'));
    const seqs: number[] = [];
    for await (const chunk of stream) seqs.push(chunk.seq);
    const reply = await stream.final;
    assert.equal(reply.content, content);
    assert.deepEqual(
      seqs,
      seqs.map((_, index) => index),
    );
    assert.ok(seqs.length >= 3);
  });

  test('one huge reasoning delta is cut too, and the typed client rebuilds reasoning_content and content', async () => {
    // The fake sends reasoning one word at a time: a word of 100 KB is one delta.
    const reasoning = mixedText(100_000, 1).replace(/\s/g, '_');
    const content = 'The answer is 42.';
    openai.enqueue({ kind: 'ok', content, reasoningContent: reasoning });
    const result = await readRawStream(connection, request('reasoning-1'));
    assert.equal(result.mark, 'end');
    const reasoningChunks = result.chunks.filter((chunk) => chunk.reasoning_delta !== undefined);
    assert.ok(reasoningChunks.length >= 2, `${reasoningChunks.length} reasoning chunks`);
    assert.equal(result.chunks.map((chunk) => chunk.reasoning_delta ?? '').join(''), reasoning);
    assert.equal(result.chunks.map((chunk) => chunk.delta).join(''), content);
    for (const [index, chunk] of result.chunks.entries()) assert.equal(chunk.seq, index);
    // Leaving out reasoning_content is enough: content stays in the end message.
    assert.deepEqual(result.terminal.omitted, ['reasoning_content']);
    assert.equal(result.terminal.content, content);
    assert.equal(result.terminal.reasoning_content, undefined);

    openai.enqueue({ kind: 'ok', content, reasoningContent: reasoning });
    const stream = client.stream(request('reasoning-client-1'));
    const reply = await stream.final;
    assert.equal(reply.content, content);
    assert.equal(reply.reasoning_content, reasoning);
    assert.deepEqual(reply.omitted, ['reasoning_content']);
  });

  test('large tool-call arguments in deltas that fit: the end leaves out tool_calls, the typed client rebuilds them', async () => {
    // The fake sends a call's arguments in two deltas: 2 × 45 KB fit, 90 KB in the end message does not.
    const argumentsText = JSON.stringify({ text: 'x'.repeat(90_000) });
    openai.enqueue({
      kind: 'ok',
      content: null,
      toolCalls: [{ id: 'call_big', name: 'save_document', arguments: argumentsText }],
    });
    const result = await readRawStream(connection, request('tools-1'));
    assert.equal(result.mark, 'end', `terminal: ${JSON.stringify(result.terminal)?.slice(0, 300)}`);
    assert.deepEqual(result.terminal.omitted, ['tool_calls']);
    assert.equal(result.terminal.content, null);
    assert.equal(result.terminal.finish_reason, 'tool_calls');

    openai.enqueue({
      kind: 'ok',
      content: null,
      toolCalls: [{ id: 'call_big', name: 'save_document', arguments: argumentsText }],
    });
    const reply = await client.stream(request('tools-client-1')).final;
    assert.equal(reply.content, null);
    assert.deepEqual(reply.tool_calls, [
      { id: 'call_big', type: 'function', function: { name: 'save_document', arguments: argumentsText } },
    ]);
    assert.deepEqual(reply.omitted, ['tool_calls']);
  });

  test('a tool-call delta that cannot fit ends the stream with one payload_too_large error, and the event says so', async () => {
    // Two deltas of 75 KB each: a tool-call delta is not cut.
    const argumentsText = JSON.stringify({ text: 'y'.repeat(150_000) });
    openai.enqueue({ kind: 'ok', content: null, toolCalls: [{ name: 'save_document', arguments: argumentsText }] });
    const result = await readRawStream(connection, request('tools-too-big-1'));
    assert.equal(result.mark, 'error');
    assert.equal(result.terminal.error.code, 'payload_too_large');
    assert.equal(result.terminal.error.request_id, 'tools-too-big-1');
    assert.ok(result.lastChunkToTerminalMs < 1_000);
    const event = await eventFor('tools-too-big-1');
    assert.equal(event.status, 'error');
    assert.equal(event.error_code, 'payload_too_large');

    openai.enqueue({ kind: 'ok', content: null, toolCalls: [{ name: 'save_document', arguments: argumentsText }] });
    await assert.rejects(
      client.stream(request('tools-too-big-client-1')).final,
      (error: unknown) => error instanceof LlmProxyError && error.code === 'payload_too_large',
    );
  });

  test('a small stream is unchanged: content in the end message, no omitted field', async () => {
    openai.enqueue({ kind: 'ok', content: 'a small answer, in a few words' });
    const result = await readRawStream(connection, request('small-1'));
    assert.equal(result.mark, 'end');
    assert.equal(result.terminal.content, 'a small answer, in a few words');
    assert.equal('omitted' in result.terminal, false);
    assert.equal(result.chunks.map((chunk) => chunk.delta).join(''), 'a small answer, in a few words');

    openai.enqueue({ kind: 'ok', content: 'a small answer, in a few words' });
    const reply = await client.stream(request('small-client-1')).final;
    assert.equal(reply.content, 'a small answer, in a few words');
    assert.equal('omitted' in reply, false);
  });
});

describe('splitJsonText', () => {
  /** Bytes a piece takes inside a JSON string on the wire. */
  const jsonBytes = (text: string) => Buffer.byteLength(JSON.stringify(text)) - 2;

  test('pieces rejoin to the text, each within the budget and filled close to it, whatever the characters', () => {
    const texts = [
      mixedText(10_000),
      mixedText(10_000, 9),
      'x'.repeat(5_000),
      '😀'.repeat(3_000),
      '"\\\n\u0001'.repeat(2_000),
      'lone \ud800 and \udc00 halves '.repeat(300),
    ];
    for (const text of texts) {
      for (const budget of [6, 7, 64, 1_000, 4_096]) {
        const result = splitJsonText(text, budget);
        assert.equal(result.join(''), text);
        for (const [index, piece] of result.entries()) {
          assert.ok(jsonBytes(piece) <= budget, `piece ${index} is ${jsonBytes(piece)} bytes > ${budget}`);
          // Only the last piece may be much smaller than the budget (the largest unit is 6 bytes).
          if (index < result.length - 1)
            assert.ok(jsonBytes(piece) > budget - 6, `piece ${index} only ${jsonBytes(piece)} of ${budget} bytes`);
        }
      }
    }
  });

  test('never separates the halves of a surrogate pair', () => {
    const text = `a${'😀'.repeat(1_000)}`;
    for (const budget of [6, 7, 9, 10, 11, 101]) {
      for (const piece of splitJsonText(text, budget))
        assert.equal(isLoneSurrogateAtEdge(piece), false, `budget ${budget}: ${JSON.stringify(piece.slice(-2))}`);
    }
  });

  test('a text that fits is one piece; an empty text is none', () => {
    assert.deepEqual(splitJsonText('hello', 100), ['hello']);
    assert.deepEqual(splitJsonText('', 100), []);
  });
});

describe('StreamWriter against a small max_payload (driven directly)', () => {
  let nats: NatsServerHandle;
  let connection: NatsConnection;
  const logged: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (line: string) => void logged.push(line) } });

  before(async () => {
    nats = await startNatsServer({ maxPayload: MAX_PAYLOAD, jetstream: false });
    connection = await connect({ servers: nats.url });
  });

  after(async () => {
    await connection?.close();
    await nats?.dispose();
  });

  /** A writer on a fresh inbox, and everything that arrives on that inbox. */
  function writerAndInbox(): {
    writer: StreamWriter;
    received: Array<{ mark: string; body: any; bytes: number }>;
    settled: () => Promise<void>;
  } {
    const inbox = createInbox();
    const received: Array<{ mark: string; body: any; bytes: number }> = [];
    connection.subscribe(inbox, {
      callback: (_error, message) => {
        received.push({
          mark: message.headers?.get('LLM-Stream') ?? '',
          body: message.json(),
          bytes: message.data.length,
        });
      },
    });
    const writer = new StreamWriter({ connection, inbox, heartbeatMs: 60_000, logger, onClientGone: () => undefined });
    return {
      writer,
      received,
      settled: () => connection.flush().then(() => new Promise((resolve) => setTimeout(resolve, 50))),
    };
  }

  const reply = (extra: Partial<ChatReply> = {}): ChatReply => ({
    content: 'done',
    usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    provider: 'openai',
    model_resolved: 'gpt-4o-mini',
    latency_ms: 1,
    model: 'gpt-test',
    request_id: 'writer-1',
    finish_reason: 'stop',
    cost_usd: 0,
    cached: false,
    done: true,
    ttft_ms: 1,
    ...extra,
  });

  test('an end that does not fit even without the streamed fields becomes one payload_too_large error, and says so', async () => {
    const { writer, received, settled } = writerAndInbox();
    const outcomes: Array<ErrorCode | undefined> = [];
    const code = writer.end(reply({ content: 'x'.repeat(70_000), model: 'm'.repeat(70_000) }), (outcome) =>
      outcomes.push(outcome),
    );
    await settled();
    assert.equal(code, 'payload_too_large');
    assert.deepEqual(outcomes, ['payload_too_large']);
    assert.equal(received.length, 1);
    assert.equal(received[0]!.mark, 'error');
    assert.equal(received[0]!.body.error.code, 'payload_too_large');
    assert.equal(received[0]!.body.error.request_id, 'writer-1');
    // Nothing after the terminal message.
    writer.end(reply());
    writer.error(toErrorReply(new ProxyError('internal', 'late')));
    await settled();
    assert.equal(received.length, 1);
  });

  test('leaves out only what is needed, largest first, and lists it in a fixed order', async () => {
    const { writer, received, settled } = writerAndInbox();
    const outcomes: Array<ErrorCode | undefined> = [];
    const toolCalls = [{ id: 'c1', type: 'function' as const, function: { name: 'f', arguments: 'a'.repeat(40_000) } }];
    const code = writer.end(
      reply({ content: 'c'.repeat(40_000), reasoning_content: 'small', tool_calls: toolCalls }),
      (outcome) => outcomes.push(outcome),
    );
    await settled();
    assert.equal(code, undefined);
    assert.deepEqual(outcomes, [undefined]);
    assert.equal(received.length, 1);
    assert.equal(received[0]!.mark, 'end');
    // Either large field alone fits: the larger (tool_calls, by its JSON) goes first, and that is enough.
    assert.deepEqual(received[0]!.body.omitted, ['tool_calls']);
    assert.equal(received[0]!.body.content, 'c'.repeat(40_000));
    assert.equal(received[0]!.body.reasoning_content, 'small');
    assert.ok(received[0]!.bytes <= MAX_PAYLOAD);
  });

  test('an error terminal too large for max_payload is cut down rather than lost', async () => {
    const { writer, received, settled } = writerAndInbox();
    writer.error(toErrorReply(new ProxyError('upstream_error', 'e'.repeat(100_000)), 'writer-2'));
    await settled();
    assert.equal(received.length, 1);
    assert.equal(received[0]!.mark, 'error');
    assert.equal(received[0]!.body.error.code, 'upstream_error');
    assert.equal(received[0]!.body.error.request_id, 'writer-2');
    assert.ok(received[0]!.body.error.message.length <= 1024);
  });

  test('a tool-call delta too large is refused with payload_too_large before anything of it is sent; the seq is not used up', async () => {
    const { writer, received, settled } = writerAndInbox();
    writer.chunk({ delta: 'before' });
    assert.throws(
      () =>
        writer.chunk({ delta: 'some text', tool_calls: [{ index: 0, function: { arguments: 'z'.repeat(70_000) } }] }),
      (error: unknown) => error instanceof ProxyError && error.code === 'payload_too_large',
    );
    assert.equal(writer.chunks, 1);
    writer.error(toErrorReply(new ProxyError('payload_too_large', 'too large'), 'writer-3'));
    await settled();
    assert.deepEqual(
      received.map((message) => message.mark),
      ['chunk', 'error'],
    );
    assert.deepEqual(received[0]!.body, { seq: 0, delta: 'before' });
  });

  test('a delta with text and tool calls that fit apart goes as several chunks: reasoning, content, then the tool calls', async () => {
    const { writer, received, settled } = writerAndInbox();
    const toolCalls = [
      { index: 0, id: 'c1', type: 'function' as const, function: { name: 'f', arguments: 'a'.repeat(30_000) } },
    ];
    writer.chunk({ delta: 'd'.repeat(50_000), reasoning_delta: 'r'.repeat(20_000), tool_calls: toolCalls });
    writer.chunk({ delta: 'after' });
    await settled();
    assert.deepEqual(
      received.map((message) => message.body.seq),
      [0, 1, 2, 3],
    );
    assert.ok(received.every((message) => message.bytes <= MAX_PAYLOAD));
    assert.equal(received.map((message) => message.body.reasoning_delta ?? '').join(''), 'r'.repeat(20_000));
    assert.equal(received.map((message) => message.body.delta).join(''), `${'d'.repeat(50_000)}after`);
    assert.deepEqual(received[2]!.body, { seq: 2, delta: '', tool_calls: toolCalls });
    assert.equal(writer.chunks, 4);
    writer.stop();
  });
});
