import { agentToken, UNAUTHENTICATED_TOKEN } from '../contract/subjects.js';
import type { AttemptRecord } from '../contract/reply.js';
import { roundMs } from '../contract/rounding.js';
import type { RequestMetadata } from '../contract/request.js';
import type { UsageEvent, UsageStatus } from '../contract/usage-event.js';

/** Metadata keys that are event fields of their own; every other key is a tag. */
const METADATA_FIELDS = new Set(['agent_id', 'microdao_id', 'channel_id']);

export interface UsageEventInput {
  /** The worker's own id for this request: the event's key (`Nats-Msg-Id`, deduplication). */
  eventId: string;
  /** The client's correlation id (or the event id when the client gave none). */
  requestId: string;
  timestamp?: Date;
  metadata?: RequestMetadata | undefined;
  /** The agent id claimed by a request refused as unauthorized: never attributed to it. */
  unauthenticated?: boolean;
  /** The id of the verified key the request came with (never the key). */
  keyId?: string | undefined;
  /** The logical model asked for (null when the body was unreadable). */
  model: string | null;
  provider: string | null;
  modelResolved: string | null;
  status: UsageStatus;
  errorCode: string | null;
  promptTokens: number;
  completionTokens: number;
  tokensEstimated: boolean;
  /** Of the prompt tokens, those the provider served from its cache. */
  cachedPromptTokens?: number | undefined;
  costUsd: number;
  /** A cache hit: what the answer would have cost (recorded as `saved_usd` when above 0). */
  savedUsd?: number | undefined;
  latencyMs: number;
  ttftMs: number | null;
  stream: boolean;
  cached: boolean;
  attempts: AttemptRecord[];
  workerId: string;
  /** The worker's node (`worker.node`), recorded as `node`; undefined leaves the field out. */
  node?: string | undefined;
}

export interface BuiltUsageEvent {
  /** The subject token: the agent's, `anonymous`, or `unauthenticated`. */
  token: string;
  event: UsageEvent;
}

/** The DESIGN.md usage event, fields in the documented order, additions after. */
export function buildUsageEvent(input: UsageEventInput): BuiltUsageEvent {
  const metadata = input.metadata ?? {};
  const unauthenticated = input.unauthenticated === true;
  const promptTokens = Math.max(0, Math.round(input.promptTokens));
  const completionTokens = Math.max(0, Math.round(input.completionTokens));
  const event: UsageEvent = {
    v: 1,
    request_id: input.requestId,
    ts: (input.timestamp ?? new Date()).toISOString(),
    agent_id: unauthenticated ? null : (metadata.agent_id ?? null),
    microdao_id: unauthenticated ? null : (metadata.microdao_id ?? null),
    channel_id: unauthenticated ? null : (metadata.channel_id ?? null),
    model: input.model,
    provider: input.provider,
    model_resolved: input.modelResolved,
    status: input.status,
    error_code: input.errorCode,
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    tokens_estimated: input.tokensEstimated,
    cost_usd: Math.max(0, input.costUsd),
    latency_ms: Math.max(0, roundMs(input.latencyMs)),
    ttft_ms: input.ttftMs === null ? null : Math.max(0, roundMs(input.ttftMs)),
    stream: input.stream,
    cached: input.cached,
    attempts: input.attempts.length,
    worker_id: input.workerId,
    ...(input.node === undefined ? {} : { node: input.node }),
    event_id: input.eventId,
    cached_prompt_tokens: Math.max(0, Math.round(input.cachedPromptTokens ?? 0)),
  };
  if (unauthenticated && metadata.agent_id !== undefined) event.claimed_agent_id = metadata.agent_id;
  if (input.keyId !== undefined) event.key_id = input.keyId;
  if (input.savedUsd !== undefined && input.savedUsd > 0) event.saved_usd = input.savedUsd;
  if (input.attempts.length > 1) event.attempt_details = input.attempts;
  if (!unauthenticated) {
    let tags: Record<string, string> | undefined;
    for (const key in metadata) {
      const value: unknown = metadata[key];
      // No prototype: a tag named `__proto__` is kept like any other.
      if (Object.hasOwn(metadata, key) && !METADATA_FIELDS.has(key) && typeof value === 'string')
        (tags ??= Object.create(null) as Record<string, string>)[key] = value;
    }
    if (tags !== undefined) event.tags = tags;
  }
  return { token: unauthenticated ? UNAUTHENTICATED_TOKEN : agentToken(metadata.agent_id), event };
}
