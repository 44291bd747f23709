import { headers as createHeaders, type MsgHdrs } from '@nats-io/nats-core';
import { secretFromEnv } from '../auth/index.js';
import { HEADERS } from '../contract/subjects.js';

/** The per-agent key a CLI user calls with (`llm-proxy keys create`), sent as `Authorization: Bearer`. */
export const KEY_ENV = 'LLM_PROXY_KEY';

/** A per-agent key from `LLM_PROXY_KEY`, or undefined when unset or empty. */
export function keyFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = env[KEY_ENV]?.trim();
  return value === undefined || value === '' ? undefined : value;
}

/**
 * The CLI's credentials for its requests (models, usage, chat): `X-Internal-Secret` from
 * `LLM_PROXY_SECRET` and `Authorization: Bearer` from `LLM_PROXY_KEY`, or undefined when neither is set.
 */
export function secretHeaders(env: NodeJS.ProcessEnv = process.env): MsgHdrs | undefined {
  const secret = secretFromEnv(env);
  const key = keyFromEnv(env);
  if (secret === undefined && key === undefined) return undefined;
  const headers = createHeaders();
  if (secret !== undefined) headers.set(HEADERS.secret, secret);
  if (key !== undefined) headers.set(HEADERS.authorization, `Bearer ${key}`);
  return headers;
}
