/** Subjects, queue groups and headers of DESIGN.md ("Subjects"). The prefix `llm` is configurable. */
export const DEFAULT_SUBJECT_PREFIX = 'llm';

export const QUEUE_GROUPS = {
  workers: 'llm-proxy',
  aggregators: 'llm-usage',
} as const;

export const HEADERS = {
  secret: 'X-Internal-Secret',
  stream: 'LLM-Stream',
  traceparent: 'traceparent',
  tracestate: 'tracestate',
  serviceError: 'Nats-Service-Error',
  serviceErrorCode: 'Nats-Service-Error-Code',
  msgId: 'Nats-Msg-Id',
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
  usageFor(agentToken: string): string;
}

export function subjectsFor(prefix: string = DEFAULT_SUBJECT_PREFIX): Subjects {
  return {
    prefix,
    request: `${prefix}.proxy.request`,
    models: `${prefix}.proxy.models`,
    usageQuery: `${prefix}.proxy.usage`,
    cancel: `${prefix}.proxy.cancel`,
    usageAll: `${prefix}.usage.>`,
    usageFor: (agentToken: string) => `${prefix}.usage.${agentToken}`,
  };
}

const TOKEN_SAFE = /^[A-Za-z0-9_:-]+$/;

/**
 * An agent id made into one subject token: every character outside
 * `[A-Za-z0-9_:-]` becomes `%XX` (UTF-8 bytes, upper-case hex); no id gives `anonymous`.
 */
export function agentToken(agentId: string | undefined | null): string {
  if (agentId === undefined || agentId === null || agentId === '') return ANONYMOUS_TOKEN;
  if (TOKEN_SAFE.test(agentId)) return agentId;
  let out = '';
  for (const char of agentId) {
    if (/^[A-Za-z0-9_:-]$/.test(char)) {
      out += char;
      continue;
    }
    for (const byte of Buffer.from(char, 'utf8')) out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
