import { headers as createHeaders, type MsgHdrs } from '@nats-io/nats-core';
import { secretFromEnv } from '../auth/index.js';
import { HEADERS } from '../contract/subjects.js';

/** `X-Internal-Secret` from `LLM_PROXY_SECRET` for the CLI's requests (models, usage), or undefined when none is set. */
export function secretHeaders(env: NodeJS.ProcessEnv = process.env): MsgHdrs | undefined {
  const secret = secretFromEnv(env);
  if (secret === undefined) return undefined;
  const headers = createHeaders();
  headers.set(HEADERS.secret, secret);
  return headers;
}
