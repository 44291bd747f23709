/**
 * The seed's HTTP API, as the service llm-proxy replaces served it (DESIGN.md, "HTTP front door"):
 * `POST /internal/llm/proxy`, `GET /internal/llm/models`, `GET /internal/llm/usage`, with DESIGN.md's
 * reply and error bodies.
 */
import type { FastifyInstance } from 'fastify';
import { ProxyError, toErrorReply } from '../contract/errors.js';
import type { ChatRequest } from '../contract/request.js';
import { type UsageQuery, usageQuerySchema } from '../contract/usage-query.js';
import { describeZodIssues } from '../contract/request.js';
import type { BusLink } from './bus-link.js';
import { type Dialect, type HttpError, relayChat, sendError } from './chat-relay.js';
import { keyHeaders } from './credentials.js';

/** `Retry-After` (whole seconds, rounded up) for an error that says when to come back. */
export function retryAfterHeaders(error: ProxyError): Record<string, string> {
  if (error.retryAfterMs === undefined || (error.status !== 429 && error.status !== 503)) return {};
  return { 'retry-after': String(Math.max(1, Math.ceil(error.retryAfterMs / 1000))) };
}

/** DESIGN.md's error body with its status. */
export function seedError(error: ProxyError): HttpError {
  return {
    status: error.status,
    headers: retryAfterHeaders(error),
    body: toErrorReply(error, (error as { requestId?: string }).requestId),
  };
}

/** The seed's answers: the reply as the bus gives it; a stream as SSE events named after `LLM-Stream`. */
export const SEED_DIALECT: Dialect = {
  reply: (reply) => reply,
  error: seedError,
  stream: () => ({
    begin: () => undefined,
    chunk: (sse, chunk) => sse.event(chunk, 'chunk'),
    end: (sse, reply) => sse.event(reply, 'end'),
    fail: (sse, error) => sse.event(seedError(error).body, 'error'),
  }),
};

/**
 * Query-string fields of `GET /internal/llm/usage` → the usage query (`group_by` may be comma-separated or
 * repeated; `limit`, `cursor` and `order_by` page it as on the bus).
 */
export function usageQueryFromSearch(search: Record<string, unknown>): UsageQuery {
  const query: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(search)) {
    if (key === 'group_by') {
      const keys = (Array.isArray(value) ? value : [value])
        .flatMap((item) => String(item).split(','))
        .map((item) => item.trim())
        .filter((item) => item !== '');
      query.group_by = keys;
    } else {
      query[key] = Array.isArray(value) ? value[value.length - 1] : value;
    }
  }
  // A query string is text: `limit=20` is the number 20 (anything else is left for the schema to refuse).
  if (typeof query.limit === 'string' && /^\d{1,9}$/.test(query.limit)) query.limit = Number(query.limit);
  const parsed = usageQuerySchema.safeParse(query);
  if (!parsed.success) throw new ProxyError('invalid_request', describeZodIssues(parsed.error));
  return parsed.data;
}

export function registerSeedRoutes(app: FastifyInstance, bus: BusLink, heartbeatMs: number): void {
  app.post('/internal/llm/proxy', async (request, reply) => {
    try {
      const client = bus.client();
      const body = request.body;
      if (typeof body !== 'object' || body === null || Array.isArray(body))
        throw new ProxyError('invalid_request', 'request body must be a JSON object');
      await relayChat(request, reply, client, body as ChatRequest, SEED_DIALECT, heartbeatMs);
    } catch (error) {
      sendError(reply, SEED_DIALECT, error);
    }
  });

  app.get('/internal/llm/models', async (request, reply) => {
    try {
      // Every worker's models (issue 19: workers on different nodes serve different models).
      return { models: await bus.client().allModels({ headers: keyHeaders(request) }) };
    } catch (error) {
      sendError(reply, SEED_DIALECT, error);
    }
  });

  app.get('/internal/llm/usage', async (request, reply) => {
    try {
      const query = usageQueryFromSearch(request.query as Record<string, unknown>);
      return await bus.client().usage(query);
    } catch (error) {
      sendError(reply, SEED_DIALECT, error);
    }
  });
}
