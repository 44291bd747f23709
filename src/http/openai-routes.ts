/**
 * OpenAI's API on the bus, so that any OpenAI client works by pointing its base URL at
 * `http://host:7007/v1`: `POST /v1/chat/completions` (JSON or SSE ending in `data: [DONE]`),
 * `GET /v1/models`, `GET /v1/models/{id}`, errors in OpenAI's envelope with DESIGN.md's statuses.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ProxyError } from '../contract/errors.js';
import type { ChatRequest } from '../contract/request.js';
import type { BusLink } from './bus-link.js';
import { type Dialect, relayChat, sendError } from './chat-relay.js';
import { keyHeaders, presentedKey } from './credentials.js';
import {
  CompletionChunks,
  completionFromReply,
  modelList,
  modelObject,
  openAIError,
  requestFromOpenAI,
  sseData,
} from './openai-mapping.js';

const epochSeconds = () => Math.floor(Date.now() / 1000);

export const OPENAI_DIALECT: Dialect = {
  reply: (reply) => completionFromReply(reply, epochSeconds()),
  error: (error) => openAIError(error),
  stream: (request) => {
    let chunks: CompletionChunks | undefined;
    const chunksFor = (requestId: string) =>
      (chunks ??= new CompletionChunks({
        requestId,
        model: request.model,
        created: epochSeconds(),
        includeUsage: request.stream_options?.include_usage === true,
        choices: typeof request.n === 'number' && request.n > 1 ? request.n : 1,
      }));
    return {
      begin: (sse) => sse.write(sseData(chunksFor(request.request_id ?? '').first())),
      chunk: (sse, chunk) => sse.write(sseData(chunksFor(request.request_id ?? '').chunk(chunk))),
      end: (sse, reply) => {
        for (const chunk of chunksFor(reply.request_id).end(reply)) sse.write(sseData(chunk));
        sse.write(sseData('[DONE]'));
      },
      // OpenAI's SDKs raise on a `data: {"error": …}` event; no `[DONE]` follows a failure.
      fail: (sse, error) => sse.write(sseData(openAIError(error).body)),
    };
  },
};

/** The agent, when the body's metadata does not name one: `X-Agent-Id` / `X-Microdao-Id` headers. */
function identityOf(request: FastifyRequest): { agentId?: string; microdaoId?: string } {
  const header = (name: string) => {
    const value = request.headers[name];
    return typeof value === 'string' && value !== '' ? value : undefined;
  };
  const agentId = header('x-agent-id');
  const microdaoId = header('x-microdao-id');
  return { ...(agentId !== undefined ? { agentId } : {}), ...(microdaoId !== undefined ? { microdaoId } : {}) };
}

export function registerOpenAIRoutes(app: FastifyInstance, bus: BusLink, heartbeatMs: number): void {
  app.post('/v1/chat/completions', async (request, reply) => {
    try {
      const client = bus.client();
      // With a key, the key says who the agent is: nothing is inferred from headers or `user`.
      const keyed = presentedKey(request) !== undefined;
      const body = requestFromOpenAI(
        request.body,
        keyed ? { fromKey: true } : identityOf(request),
      ) as unknown as ChatRequest;
      // The client generates one when absent; the chunks' ids need it before the first chunk.
      body.request_id ??= crypto.randomUUID();
      await relayChat(request, reply, client, body, OPENAI_DIALECT, heartbeatMs);
    } catch (error) {
      sendError(reply, OPENAI_DIALECT, error);
    }
  });

  app.get('/v1/models', async (request, reply) => {
    try {
      return modelList(await bus.client().allModels({ headers: keyHeaders(request) }));
    } catch (error) {
      sendError(reply, OPENAI_DIALECT, error);
    }
  });

  // A wildcard: model names may hold slashes (`meta-llama/Llama-3.3-70B-Instruct`). Fastify has
  // already percent-decoded it once: decoding again would turn `a%2Fb` into `a/b` and throw on a `%`.
  app.get<{ Params: { '*': string } }>('/v1/models/*', async (request, reply) => {
    try {
      const id = request.params['*'];
      const models = await bus.client().allModels({ headers: keyHeaders(request) });
      const model = models.find((candidate) => candidate.name === id);
      if (model === undefined) throw new ProxyError('model_not_found', `the model "${id}" does not exist`);
      return modelObject(model);
    } catch (error) {
      sendError(reply, OPENAI_DIALECT, error);
    }
  });
}
