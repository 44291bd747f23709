import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core';
import { readHeaders, type CallerCheck } from '../auth/index.js';
import type { TieredCache } from '../cache/index.js';
import { ProxyError, toErrorReply } from '../contract/errors.js';
import type { Logger } from '../telemetry/logger.js';

/**
 * `llm.proxy.cache.purge` reaches every worker (no queue group): each empties its memory tier of the
 * response cache (all answers, or `{"model": "…"}`'s) and answers `{"worker_id", "purged"}`, so that a
 * purge of the shared store (`llm-proxy cache purge`) is not undone by what workers hold in memory.
 * An operator's action: the secret when one is set, never a per-agent key (an agent could otherwise
 * throw away everyone's savings); refusals are answered `unauthorized`.
 */
export function subscribeCachePurge(
  connection: NatsConnection,
  subject: string,
  parts: { cache: TieredCache; auth: CallerCheck; workerId: string; logger: Logger },
): Subscription {
  const handle = async (message: Msg): Promise<void> => {
    const respond = (body: unknown) => {
      if (message.reply === undefined || message.reply === '') return;
      try {
        message.respond(JSON.stringify(body));
      } catch {
        // The requester left.
      }
    };
    const { headers, malformed } = readHeaders(message);
    const caller = malformed ? undefined : await parts.auth.identify(headers, true);
    if (caller === undefined || caller.refusal !== undefined || caller.key !== undefined) {
      respond(toErrorReply(new ProxyError('unauthorized', 'purging the cache needs the secret, not a key'), ''));
      return;
    }
    let model: string | undefined;
    try {
      const body = message.data.length === 0 ? {} : (message.json() as { model?: unknown });
      if (body !== null && typeof body === 'object' && typeof body.model === 'string' && body.model !== '')
        model = body.model.slice(0, 256);
    } catch {
      respond(toErrorReply(new ProxyError('invalid_request', 'the body is not JSON'), ''));
      return;
    }
    const purged = await parts.cache.memory.purge(model === undefined ? {} : { model });
    parts.logger.info({ purged, model }, 'response cache memory tier purged');
    respond({ worker_id: parts.workerId, purged });
  };
  return connection.subscribe(subject, {
    callback: (error, message) => {
      if (error !== null) return;
      handle(message).catch((failure: unknown) => parts.logger.error({ err: failure }, 'cache purge failed'));
    },
  });
}
