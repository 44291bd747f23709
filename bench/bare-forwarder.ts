/**
 * Floor 3: the fastest a Node worker can be here. Takes the request off NATS,
 * posts it to the upstream through one undici Pool (dispatch, as the worker does for whole
 * answers), answers with the content.
 * No validation, routing, limits, accounting or logging: the gap between this
 * and llm-proxy is the price of those features.
 * `node .bench-build/bench/bare-forwarder.js --nats-url URL --upstream ORIGIN --route MODEL=PHYSICAL@PATH …`
 */
import { connect, type Msg } from '@nats-io/transport-node';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { BENCH_SUBJECTS, UPSTREAM_CONNECTIONS } from './bench-config.js';

const { values } = parseArgs({
  options: {
    'nats-url': { type: 'string' },
    upstream: { type: 'string' },
    route: { type: 'string', multiple: true, default: [] },
    subject: { type: 'string', default: BENCH_SUBJECTS.bare },
  },
});
const routes = new Map<string, { physical: string; path: string }>();
for (const route of values.route ?? []) {
  // MODEL=PHYSICAL@PATH; the path itself may hold "=" (behaviour specs), so split at the first one.
  const equals = route.indexOf('=');
  const at = route.indexOf('@', equals);
  routes.set(route.slice(0, equals), {
    physical: route.slice(equals + 1, at),
    path: `${route.slice(at + 1)}/chat/completions`,
  });
}
const pool = new Pool(values.upstream!, { connections: UPSTREAM_CONNECTIONS, keepAliveTimeout: 60_000 });
const headers = { 'content-type': 'application/json' };

interface IncomingRequest {
  model: string;
  messages: unknown;
  max_tokens?: number;
  temperature?: number;
}
interface UpstreamReply {
  choices: Array<{ message: { content: string | null }; finish_reason: string }>;
  usage?: unknown;
}

/**
 * POST and collect the whole answer with undici's dispatch handler (no body stream per
 * response): the technique llm-proxy's providers use for whole answers, so that the floor
 * is not slower than the worker for a reason that has nothing to do with features.
 */
function post(path: string, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const chunks: Buffer[] = [];
    pool.dispatch(
      { method: 'POST', path, headers, body },
      {
        // Its presence tells undici this handler speaks the current (non-deprecated) handler API.
        onRequestStart: () => {},
        onResponseStart: (_controller, statusCode) => {
          status = statusCode;
        },
        onResponseData: (_controller, chunk) => {
          chunks.push(chunk);
        },
        onResponseEnd: () => resolve({ status, text: Buffer.concat(chunks).toString('utf8') }),
        onResponseError: (_controller, error) => reject(error),
      },
    );
  });
}

async function forward(message: Msg): Promise<void> {
  try {
    const request = message.json<IncomingRequest>();
    const route = routes.get(request.model);
    if (route === undefined) throw new Error(`unknown model ${request.model}`);
    const response = await post(
      route.path,
      JSON.stringify({
        model: route.physical,
        messages: request.messages,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
      }),
    );
    if (response.status !== 200) {
      message.respond(
        JSON.stringify({
          error: { code: 'upstream_error', status: 502, message: `upstream answered ${response.status}` },
        }),
      );
      return;
    }
    const reply = JSON.parse(response.text) as UpstreamReply;
    const choice = reply.choices[0];
    message.respond(
      JSON.stringify({
        content: choice?.message.content ?? null,
        usage: reply.usage,
        model: request.model,
        finish_reason: choice?.finish_reason,
      }),
    );
  } catch (error) {
    message.respond(JSON.stringify({ error: { code: 'internal', status: 500, message: String(error) } }));
  }
}

const connection = await connect({ servers: values['nats-url'] ?? 'nats://127.0.0.1:4222', noAsyncTraces: true });
connection.subscribe(values.subject!, {
  queue: 'bench-bare',
  callback: (error, message) => {
    if (error === null) void forward(message);
  },
});
await connection.flush();
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
const stop = (): void => {
  void connection.drain().finally(() => pool.close().finally(() => process.exit(0)));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
