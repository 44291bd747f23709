import { createHash } from 'node:crypto';

/** Subjects, queue groups and headers of DESIGN.md ("Subjects"). The prefix `llm` is configurable. */
export const DEFAULT_SUBJECT_PREFIX = 'llm';

export const QUEUE_GROUPS = {
  workers: 'llm-proxy',
  aggregators: 'llm-usage',
} as const;

export const HEADERS = {
  secret: 'X-Internal-Secret',
  /** `Bearer <key>`: a per-agent key (`auth.mode` keys or mixed). */
  authorization: 'Authorization',
  stream: 'LLM-Stream',
  traceparent: 'traceparent',
  tracestate: 'tracestate',
  serviceError: 'Nats-Service-Error',
  serviceErrorCode: 'Nats-Service-Error-Code',
  msgId: 'Nats-Msg-Id',
  /** Set by a worker that passed a request on to its model's subject (worker/forward.ts): never passed on twice. */
  forwarded: 'LLM-Forwarded',
} as const;

export const STREAM_MARKS = { chunk: 'chunk', end: 'end', error: 'error', heartbeat: 'heartbeat' } as const;
export type StreamMark = (typeof STREAM_MARKS)[keyof typeof STREAM_MARKS];

export const USAGE_STREAM_NAME = 'LLM_USAGE';
export const UNAUTHENTICATED_TOKEN = 'unauthenticated';
export const ANONYMOUS_TOKEN = 'anonymous';

export interface Subjects {
  readonly prefix: string;
  readonly request: string;
  readonly models: string;
  readonly usageQuery: string;
  /** Non-queue subject every worker listens on: `{"request_id": "…"}` cancels that request. */
  readonly cancel: string;
  /** `llm.usage.>`: what the LLM_USAGE stream captures. */
  readonly usageAll: string;
  /** Non-queue subject every worker answers with what it serves (scatter-gather: `llm-proxy models`). */
  readonly nodes: string;
  /** Non-queue: every worker empties its memory tier of the response cache (`llm-proxy cache purge`). */
  readonly cachePurge: string;
  /** Non-queue: a worker that starts says which models it serves; the others answer with theirs (worker/bus-models.ts). */
  readonly nodesHello: string;
  usageFor(agentToken: string): string;
  /**
   * `llm.proxy.model.<model-token>`: the workers that serve a model subscribe to it in queue group
   * `llm-proxy`, so a request sent there reaches only a worker that has the model (issue 19).
   */
  modelFor(model: string): string;
}

export function subjectsFor(prefix: string = DEFAULT_SUBJECT_PREFIX): Subjects {
  return {
    prefix,
    request: `${prefix}.proxy.request`,
    models: `${prefix}.proxy.models`,
    usageQuery: `${prefix}.proxy.usage`,
    cancel: `${prefix}.proxy.cancel`,
    usageAll: `${prefix}.usage.>`,
    nodes: `${prefix}.proxy.nodes`,
    nodesHello: `${prefix}.proxy.nodes.hello`,
    cachePurge: `${prefix}.proxy.cache.purge`,
    usageFor: (agentToken: string) => `${prefix}.usage.${agentToken}`,
    modelFor: (model: string) => `${prefix}.proxy.model.${modelToken(model)}`,
  };
}

const TOKEN_SAFE = /^[A-Za-z0-9_:-]+$/;
const SAFE_CHARACTER = /^[A-Za-z0-9_:-]$/;
/** Longest agent token: a longer encoding is cut and completed with a hash (subjects stay far below max_control_line). */
export const MAX_AGENT_TOKEN_LENGTH = 128;
/** Characters of the encoding kept in front of the hash of a long id (for people reading subjects). */
const HASHED_PREFIX_LENGTH = 64;

const hex2 = (byte: number) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;

/**
 * An agent id made into one subject token, one-to-one (DESIGN.md, "Subjects"):
 * - every character outside `[A-Za-z0-9_:-]` is written `%XX` (its UTF-8 bytes, upper-case hex):
 *   `agent:sofia` stays `agent:sofia`, `a.b` becomes `a%2Eb`; a lone UTF-16 surrogate (which has no
 *   UTF-8 form, and which the worker refuses in ids anyway) is written `%uD800`;
 * - no id gives `anonymous`; the ids `anonymous` and `unauthenticated` themselves, which would land
 *   on those reserved tokens, are written with their first letter encoded (`%61nonymous`);
 * - an encoding longer than 128 characters keeps its first 64 and ends in `~` and 32 hex digits of
 *   the id's SHA-256 (`~` cannot occur in an encoding otherwise, so hashed and plain tokens never
 *   meet), so no id can make a subject long enough for the server to drop the connection.
 */
export function agentToken(agentId: string | undefined | null): string {
  if (agentId === undefined || agentId === null || agentId === '') return ANONYMOUS_TOKEN;
  let token = TOKEN_SAFE.test(agentId) ? agentId : percentEncode(agentId);
  if (token === ANONYMOUS_TOKEN || token === UNAUTHENTICATED_TOKEN)
    token = `${hex2(token.charCodeAt(0))}${token.slice(1)}`;
  return bounded(token, agentId);
}

/**
 * A logical model's name as one subject token, by the agent token's rules (`%XX` outside
 * `[A-Za-z0-9_:-]`, long names cut and hashed): `llama3.2:3b` → `llama3%2E2:3b`.
 */
export function modelToken(model: string): string {
  return bounded(TOKEN_SAFE.test(model) ? model : percentEncode(model), model);
}

/** A token longer than 128 characters: its first 64 (no escape cut in two), `~`, 32 hex digits of the id's SHA-256. */
function bounded(token: string, agentId: string): string {
  if (token.length <= MAX_AGENT_TOKEN_LENGTH) return token;
  let prefix = token.slice(0, HASHED_PREFIX_LENGTH);
  // Do not cut an escape in two.
  const lastPercent = prefix.lastIndexOf('%', prefix.length - 1);
  if (lastPercent !== -1 && lastPercent > prefix.length - (prefix[lastPercent + 1] === 'u' ? 6 : 3))
    prefix = prefix.slice(0, lastPercent);
  return `${prefix}~${createHash('sha256').update(agentId, 'utf16le').digest('hex').slice(0, 32)}`;
}

function percentEncode(agentId: string): string {
  let out = '';
  for (const char of agentId) {
    if (SAFE_CHARACTER.test(char)) {
      out += char;
      continue;
    }
    const code = char.charCodeAt(0);
    if (char.length === 1 && code >= 0xd800 && code <= 0xdfff) {
      out += `%u${code.toString(16).toUpperCase()}`;
      continue;
    }
    for (const byte of Buffer.from(char, 'utf8')) out += hex2(byte);
  }
  return out;
}
