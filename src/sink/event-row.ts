import { usageEventKey, usageEventSchema } from '../contract/usage-event.js';
import type { UsageMessage } from '../usage/consumer.js';
import { usageEventTime } from '../usage/event-time.js';
import { msToMicros, usdToNano } from '../usage/units.js';

/**
 * A usage message as a row of `usage_events`, or the reason it cannot be one (it then goes to
 * `usage_dead_letters`). Numbers that are summed are converted here exactly as the aggregator
 * converts them (cost to nano-dollars, latency to microseconds), so both give the same totals.
 */

/** The columns of `usage_events` the sink writes, in order, with the array type each is sent as. */
export const EVENT_COLUMNS = [
  ['event_key', 'text'],
  ['ts', 'timestamptz'],
  ['request_id', 'text'],
  ['event_id', 'text'],
  ['agent_id', 'text'],
  ['microdao_id', 'text'],
  ['channel_id', 'text'],
  ['model', 'text'],
  ['provider', 'text'],
  ['model_resolved', 'text'],
  ['status', 'text'],
  ['error_code', 'text'],
  ['prompt_tokens', 'int8'],
  ['completion_tokens', 'int8'],
  ['total_tokens', 'int8'],
  ['cached_prompt_tokens', 'int8'],
  ['tokens_estimated', 'bool'],
  ['cost_usd', 'numeric'],
  ['saved_usd', 'numeric'],
  ['latency_ms', 'float8'],
  ['latency_us', 'int8'],
  ['ttft_ms', 'float8'],
  ['stream', 'bool'],
  ['cached', 'bool'],
  ['attempts', 'int4'],
  ['worker_id', 'text'],
  ['node', 'text'],
  ['key_id', 'text'],
  ['claimed_agent_id', 'text'],
  ['attempt_details', 'jsonb'],
  ['tags', 'jsonb'],
  ['extra', 'jsonb'],
  ['stream_name', 'text'],
  ['stream_seq', 'int8'],
  ['stored_at', 'timestamptz'],
] as const;

export type EventColumn = (typeof EVENT_COLUMNS)[number][0];
export type EventRow = Record<EventColumn, string | number | boolean | null>;

/** Fields of the event that have a column (or are folded into one); the rest go to `extra`. */
const KNOWN_FIELDS = new Set<string>([
  'v',
  'request_id',
  'ts',
  'event_id',
  'agent_id',
  'microdao_id',
  'channel_id',
  'model',
  'provider',
  'model_resolved',
  'status',
  'error_code',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'cached_prompt_tokens',
  'tokens_estimated',
  'cost_usd',
  'saved_usd',
  'latency_ms',
  'ttft_ms',
  'stream',
  'cached',
  'attempts',
  'worker_id',
  'node',
  'key_id',
  'claimed_agent_id',
  'attempt_details',
  'tags',
]);

export type DecodedMessage =
  | { kind: 'row'; row: EventRow; month: number }
  | { kind: 'dead'; message: UsageMessage; reason: string };

const decoder = new TextDecoder();

/** Nano-dollars as an exact decimal string with nine places (`numeric(20, 9)`). */
export function nanoToDecimal(nano: number): string {
  const text = BigInt(nano).toString().padStart(10, '0');
  return `${text.slice(0, -9)}.${text.slice(-9)}`;
}

/** Month number (years * 12 + month index, UTC) of an instant: what a partition holds. */
export function monthOf(epochMs: number): number {
  const date = new Date(epochMs);
  return date.getUTCFullYear() * 12 + date.getUTCMonth();
}

export function decodeUsageMessage(message: UsageMessage, streamName: string): DecodedMessage {
  let body: unknown;
  try {
    body = JSON.parse(decoder.decode(message.data));
  } catch {
    return { kind: 'dead', message, reason: 'not JSON' };
  }
  const parsed = usageEventSchema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return {
      kind: 'dead',
      message,
      reason: issue === undefined ? 'not a usage event' : `${issue.path.join('.') || 'event'}: ${issue.message}`,
    };
  }
  const event = parsed.data;
  const time = usageEventTime(event.ts, message.storedAtMs);
  const extra: Record<string, unknown> = {};
  for (const [field, value] of Object.entries(event)) if (!KNOWN_FIELDS.has(field)) extra[field] = value;
  if (time !== Date.parse(event.ts)) extra.ts = event.ts;
  const row: EventRow = {
    event_key: usageEventKey(event),
    ts: new Date(time).toISOString(),
    request_id: event.request_id,
    event_id: event.event_id ?? null,
    agent_id: event.agent_id,
    microdao_id: event.microdao_id,
    channel_id: event.channel_id,
    model: event.model,
    provider: event.provider,
    model_resolved: event.model_resolved,
    status: event.status,
    error_code: event.error_code,
    prompt_tokens: event.prompt_tokens,
    completion_tokens: event.completion_tokens,
    total_tokens: event.total_tokens,
    cached_prompt_tokens: event.cached_prompt_tokens ?? 0,
    tokens_estimated: event.tokens_estimated,
    // The aggregator's units: the same sums to the digit.
    cost_usd: nanoToDecimal(usdToNano(event.cost_usd)),
    saved_usd: nanoToDecimal(usdToNano(event.saved_usd ?? 0)),
    latency_ms: event.latency_ms,
    latency_us: msToMicros(event.latency_ms),
    ttft_ms: event.ttft_ms,
    stream: event.stream,
    cached: event.cached,
    attempts: event.attempts,
    worker_id: event.worker_id,
    node: event.node ?? null,
    key_id: event.key_id ?? null,
    claimed_agent_id: event.claimed_agent_id ?? null,
    attempt_details: event.attempt_details === undefined ? null : JSON.stringify(event.attempt_details),
    tags: event.tags === undefined ? null : JSON.stringify(event.tags),
    extra: Object.keys(extra).length === 0 ? null : JSON.stringify(extra),
    stream_name: streamName,
    stream_seq: message.seq,
    stored_at: new Date(message.storedAtMs).toISOString(),
  };
  return { kind: 'row', row, month: monthOf(time) };
}
