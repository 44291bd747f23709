/**
 * How the load generator talks to llm-proxy: through the project's client
 * (`createClient`, what an agent would use), or, with `--gateway-via raw`,
 * raw NATS request/reply with a pre-encoded body, which tells the client's
 * own cost apart from the worker's.
 */
import { createInbox, type NatsConnection } from '@nats-io/transport-node';
import { createClient } from '../src/client/index.js';
import type { ChatRequest } from '../src/contract/index.js';
import { DEFAULT_SUBJECT_PREFIX, HEADERS, STREAM_MARKS, subjectsFor } from '../src/contract/subjects.js';
import { benchRequestBody } from './bench-config.js';
import type { StreamTiming } from './load-protocol.js';
import { FAKE_CONTENT } from './upstream.js';

export interface GatewayCaller {
  kind: 'llm-proxy client' | 'raw nc.request';
  chat(model: string): Promise<void>;
  stream(model: string): Promise<StreamTiming>;
  close(): Promise<void>;
}

export type GatewayVia = 'client' | 'raw';

export interface GatewayCallerOptions {
  connection: NatsConnection;
  timeoutMs: number;
  via: GatewayVia;
  /** Requests are spread over this many agent ids (agent:bench-0 …); 1 = the seed body's agent. */
  agents?: number;
}

class GatewayCallError extends Error {
  constructor(readonly code: string) {
    super(code);
    this.name = 'CallError';
  }
}

export async function createGatewayCaller(options: GatewayCallerOptions): Promise<GatewayCaller> {
  return options.via === 'raw' ? createRawCaller(options) : createClientCaller(options);
}

let nextAgent = 0;
/** With several agents, each call names the next one (a copy of the body; the generator's cost, not the worker's). */
function withAgent(request: ChatRequest, agents: number): ChatRequest {
  if (agents <= 1) return request;
  return { ...request, metadata: { ...request.metadata, agent_id: `agent:bench-${nextAgent++ % agents}` } };
}

async function createClientCaller({ connection, timeoutMs, agents = 1 }: GatewayCallerOptions): Promise<GatewayCaller> {
  const client = await createClient({
    connection,
    timeoutMs,
    firstMessageTimeoutMs: timeoutMs,
    idleTimeoutMs: timeoutMs,
  });
  const requests = new Map<string, { chat: ChatRequest; stream: ChatRequest }>();
  const requestsFor = (model: string): { chat: ChatRequest; stream: ChatRequest } => {
    let entry = requests.get(model);
    if (entry === undefined) {
      // The client adds request_id and timeout_ms to a copy, so one object serves every call.
      entry = {
        chat: benchRequestBody(model) as unknown as ChatRequest,
        stream: benchRequestBody(model, true) as unknown as ChatRequest,
      };
      requests.set(model, entry);
    }
    return entry;
  };
  return {
    kind: 'llm-proxy client',
    async chat(model) {
      let reply: Awaited<ReturnType<typeof client.chat>>;
      try {
        reply = await client.chat(withAgent(requestsFor(model).chat, agents));
      } catch (error) {
        throw new GatewayCallError((error as { code?: string }).code ?? 'error');
      }
      if (reply.content !== FAKE_CONTENT) throw new GatewayCallError('bad_content');
    },
    async stream(model) {
      const start = performance.now();
      let ttftMs = Number.NaN;
      let last = 0;
      let chunks = 0;
      const gapsMs: number[] = [];
      const stream = client.stream(requestsFor(model).stream);
      try {
        for await (const chunk of stream) {
          if (chunk.delta === '') continue;
          const now = performance.now();
          if (chunks === 0) ttftMs = now - start;
          else gapsMs.push(now - last);
          last = now;
          chunks++;
        }
        await stream.final;
      } catch (error) {
        throw new GatewayCallError((error as { code?: string }).code ?? 'error');
      }
      if (chunks === 0) throw new GatewayCallError('no_chunks');
      return { ttftMs, gapsMs, chunks };
    },
    close: () => client.close(),
  };
}

function createRawCaller({ connection, timeoutMs }: GatewayCallerOptions): GatewayCaller {
  const subject = subjectsFor(DEFAULT_SUBJECT_PREFIX).request;
  const encoder = new TextEncoder();
  const bodies = new Map<string, Uint8Array>();
  const streamBodies = new Map<string, Uint8Array>();
  const bodyFor = (cache: Map<string, Uint8Array>, model: string, stream: boolean): Uint8Array => {
    let body = cache.get(model);
    if (body === undefined) {
      body = encoder.encode(JSON.stringify(benchRequestBody(model, stream)));
      cache.set(model, body);
    }
    return body;
  };
  return {
    kind: 'raw nc.request',
    async chat(model) {
      const reply = await connection.request(subject, bodyFor(bodies, model, false), { timeout: timeoutMs });
      const parsed = reply.json<{ content?: string; error?: { code?: string } }>();
      if (parsed.error !== undefined) throw new GatewayCallError(parsed.error.code ?? 'error');
      if (parsed.content !== FAKE_CONTENT) throw new GatewayCallError('bad_content');
    },
    stream(model) {
      const inbox = createInbox();
      const start = performance.now();
      return new Promise<StreamTiming>((resolve, reject) => {
        let ttftMs = Number.NaN;
        let last = 0;
        let chunks = 0;
        const gapsMs: number[] = [];
        const finish = (error?: Error): void => {
          clearTimeout(timer);
          subscription.unsubscribe();
          if (error !== undefined) reject(error);
          else resolve({ ttftMs, gapsMs, chunks });
        };
        const timer = setTimeout(() => finish(new GatewayCallError('timeout')), timeoutMs);
        const subscription = connection.subscribe(inbox, {
          callback: (error, message) => {
            if (error !== null) return finish(error);
            const mark = message.headers?.get(HEADERS.stream);
            if (mark === STREAM_MARKS.chunk) {
              const chunk = message.json<{ delta?: string }>();
              if (chunk.delta === undefined || chunk.delta === '') return;
              const now = performance.now();
              if (chunks === 0) ttftMs = now - start;
              else gapsMs.push(now - last);
              last = now;
              chunks++;
            } else if (mark === STREAM_MARKS.end) {
              finish(chunks === 0 ? new GatewayCallError('no_chunks') : undefined);
            } else if (mark === STREAM_MARKS.error) {
              const parsed = message.json<{ error?: { code?: string } }>();
              finish(new GatewayCallError(parsed.error?.code ?? 'error'));
            }
            // Heartbeats need no answer: our subscription existing is what tells the worker we are here.
          },
        });
        connection.publish(subject, bodyFor(streamBodies, model, true), { reply: inbox });
      });
    },
    async close() {},
  };
}
