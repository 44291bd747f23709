/**
 * The bench's fake OpenAI-compatible upstream, run as its own process:
 * `node .bench-build/bench/upstream.js [--port N] [--delay-ms N] [--chunks N] [--gap-ms N] [--error-rate F]`.
 *
 * Behaviour can also be chosen per request by a path prefix, so that one
 * process serves several "providers" of the generated worker config:
 * `/fake/delay=2000,chunks=20,gap=10,error=0.05/v1/chat/completions`.
 * It answers `POST …/chat/completions` with OpenAI JSON, or SSE when the body
 * has `"stream": true`. Prints `{"ready":true,"port":N}` on stdout once listening.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';
import { isMainModule } from './main-module.js';

export interface UpstreamBehaviour {
  delayMs: number;
  chunks: number;
  gapMs: number;
  errorRate: number;
}

export const FAKE_CONTENT = 'Hello! How can I help you today?';

/** Parses `delay=2000,chunks=20,gap=10,error=0.05` over the defaults; unknown keys are refused. */
export function parseBehaviour(spec: string, defaults: UpstreamBehaviour): UpstreamBehaviour {
  const behaviour = { ...defaults };
  for (const pair of spec.split(',')) {
    if (pair === '') continue;
    const [key, rawValue] = pair.split('=');
    const value = Number(rawValue);
    if (!Number.isFinite(value) || value < 0) throw new Error(`bad value in "${pair}"`);
    if (key === 'delay') behaviour.delayMs = value;
    else if (key === 'chunks') behaviour.chunks = Math.max(1, Math.floor(value));
    else if (key === 'gap') behaviour.gapMs = value;
    else if (key === 'error') behaviour.errorRate = Math.min(1, value);
    else throw new Error(`unknown behaviour key "${key}"`);
  }
  return behaviour;
}

/** Splits the fake content into `count` deltas that join back to it. */
export function splitContent(content: string, count: number): string[] {
  const words = content.split(/(?<= )/);
  if (count <= words.length) {
    const pieces: string[] = [];
    const perPiece = Math.ceil(words.length / count);
    for (let index = 0; index < words.length; index += perPiece)
      pieces.push(words.slice(index, index + perPiece).join(''));
    while (pieces.length < count) pieces.push('');
    return pieces;
  }
  const pieces = [...words];
  while (pieces.length < count) pieces.push(` t${pieces.length}`);
  return pieces;
}

/** Per behaviour spec, so that one path's error share is not skewed by the traffic on others. */
interface BehaviourState {
  behaviour: UpstreamBehaviour;
  requests: number;
  errors: number;
}

const behaviourStates = new Map<string, BehaviourState>();

function main(): void {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      'delay-ms': { type: 'string', default: '0' },
      chunks: { type: 'string', default: '8' },
      'gap-ms': { type: 'string', default: '0' },
      'error-rate': { type: 'string', default: '0' },
    },
  });
  const defaults: UpstreamBehaviour = {
    delayMs: Number(values['delay-ms']),
    chunks: Number(values.chunks),
    gapMs: Number(values['gap-ms']),
    errorRate: Number(values['error-rate']),
  };
  let requestCount = 0;
  let errorCount = 0;
  let servedCount = 0;

  const stateFor = (url: string): BehaviourState => {
    const spec = url.startsWith('/fake/') ? url.slice('/fake/'.length, url.indexOf('/', '/fake/'.length)) : '';
    let state = behaviourStates.get(spec);
    if (state === undefined) {
      state = { behaviour: parseBehaviour(spec, defaults), requests: 0, errors: 0 };
      behaviourStates.set(spec, state);
    }
    return state;
  };

  const answer = (request: IncomingMessage, response: ServerResponse, rawBody: string): void => {
    const url = request.url ?? '/';
    if (request.method === 'GET' && url.endsWith('/models')) {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end('{"object":"list","data":[]}');
      return;
    }
    if (request.method !== 'POST' || !url.endsWith('/chat/completions')) {
      response.writeHead(404, { 'content-type': 'application/json' });
      response.end('{"error":{"message":"not found","type":"invalid_request_error"}}');
      return;
    }
    let state: BehaviourState;
    let body: { model?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown } };
    try {
      state = stateFor(url);
      body = JSON.parse(rawBody) as typeof body;
    } catch (error) {
      response.writeHead(400, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: { message: String(error), type: 'invalid_request_error' } }));
      return;
    }
    requestCount++;
    state.requests++;
    const behaviour = state.behaviour;
    // Deterministic error share: fail whenever this path's failures fall behind the configured fraction.
    const fail = behaviour.errorRate > 0 && state.errors < Math.floor(state.requests * behaviour.errorRate);
    if (fail) state.errors++;
    const model = typeof body.model === 'string' ? body.model : 'fake';
    const id = `chatcmpl-bench-${requestCount}`;
    const respond = (): void => {
      if (fail) {
        errorCount++;
        response.writeHead(500, { 'content-type': 'application/json' });
        response.end('{"error":{"message":"injected upstream failure","type":"server_error"}}');
        return;
      }
      servedCount++;
      if (body.stream === true)
        streamAnswer(response, behaviour, id, model, body.stream_options?.include_usage === true);
      else {
        const payload = JSON.stringify({
          id,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model,
          choices: [{ index: 0, message: { role: 'assistant', content: FAKE_CONTENT }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 25, completion_tokens: 10, total_tokens: 35 },
        });
        response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) });
        response.end(payload);
      }
    };
    if (behaviour.delayMs > 0) setTimeout(respond, behaviour.delayMs);
    else respond();
  };

  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => answer(request, response, Buffer.concat(chunks).toString('utf8')));
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.requestTimeout = 0;
  server.maxHeadersCount = 100;
  server.listen(Number(values.port), '127.0.0.1', () => {
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    process.stdout.write(`${JSON.stringify({ ready: true, port })}\n`);
  });
  const stop = (): void => {
    process.stderr.write(`upstream: ${requestCount} requests, ${servedCount} served, ${errorCount} injected errors\n`);
    server.closeAllConnections();
    server.close(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function streamAnswer(
  response: ServerResponse,
  behaviour: UpstreamBehaviour,
  id: string,
  model: string,
  includeUsage: boolean,
): void {
  response.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  const created = Math.floor(Date.now() / 1000);
  const pieces = splitContent(FAKE_CONTENT, behaviour.chunks);
  const frame = (delta: Record<string, unknown>, finishReason: string | null): string =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finishReason }] })}\n\n`;
  let index = 0;
  let closed = false;
  response.on('close', () => {
    closed = true;
  });
  const next = (): void => {
    if (closed) return;
    if (index < pieces.length) {
      const delta = index === 0 ? { role: 'assistant', content: pieces[index] } : { content: pieces[index] };
      response.write(frame(delta, null));
      index++;
      if (behaviour.gapMs > 0) setTimeout(next, behaviour.gapMs);
      else setImmediate(next);
      return;
    }
    let tail = frame({}, 'stop');
    if (includeUsage) {
      tail += `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: { prompt_tokens: 25, completion_tokens: pieces.length, total_tokens: 25 + pieces.length } })}\n\n`;
    }
    response.end(`${tail}data: [DONE]\n\n`);
  };
  next();
}

if (isMainModule(import.meta.url)) main();
