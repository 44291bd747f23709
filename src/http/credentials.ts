import type { FastifyRequest } from 'fastify';
import { KEY_PREFIX } from '../auth/key-format.js';
import { HEADERS } from '../contract/subjects.js';

const BEARER = /^bearer\s+/i;

function bearerOf(request: FastifyRequest): string | undefined {
  const authorization = request.headers.authorization;
  return typeof authorization === 'string' && BEARER.test(authorization)
    ? authorization.replace(BEARER, '')
    : undefined;
}

/**
 * The caller's per-agent key: `Authorization: Bearer llmp_…` (OpenAI's SDKs send their API key so).
 * The front door does not check it (it has no key store): it passes it on, and the worker decides.
 */
export function presentedKey(request: FastifyRequest): string | undefined {
  const bearer = bearerOf(request);
  return bearer?.startsWith(KEY_PREFIX) === true ? bearer : undefined;
}

/** The caller's secret: `X-Internal-Secret` (the seed's header), else `Authorization: Bearer <secret>`. */
export function presentedSecret(request: FastifyRequest): string | undefined {
  const header = request.headers['x-internal-secret'];
  if (typeof header === 'string') return header;
  return bearerOf(request);
}

/** The NATS headers that carry the caller's key to the workers, or undefined without one. */
export function keyHeaders(request: FastifyRequest): Record<string, string> | undefined {
  const key = presentedKey(request);
  return key === undefined ? undefined : { [HEADERS.authorization]: `Bearer ${key}` };
}
