/**
 * The last hour of usage events read back from the stream when the page's feed starts, so that its
 * charts are not empty for an hour. Bounded: at most BACKFILL_LIMIT events (the newest) and
 * BACKFILL_TIMEOUT_MS; an ordered consumer (ephemeral, nothing acknowledged, nothing left behind).
 * Best effort: a NATS user without the right to create consumers (the `ops` role of
 * deploy/nats/nats-server.conf) gets the live events only.
 */
import { jsOptions } from '../bus/jetstream-domain.js';
import {
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  type StreamState,
} from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { type UsageEvent, usageEventSchema } from '../contract/usage-event.js';

export const BACKFILL_LIMIT = 20_000;
export const BACKFILL_TIMEOUT_MS = 10_000;

/** The stream's events of the last hour (the newest BACKFILL_LIMIT at most), oldest first. */
export async function readLastHour(
  connection: NatsConnection,
  streamName: string,
  options: { now?: number; limit?: number; timeoutMs?: number } = {},
): Promise<UsageEvent[]> {
  const now = options.now ?? Date.now();
  const limit = options.limit ?? BACKFILL_LIMIT;
  const timeoutMs = options.timeoutMs ?? BACKFILL_TIMEOUT_MS;
  const manager = await jetstreamManager(connection, { ...jsOptions(connection), timeout: Math.min(timeoutMs, 5_000) });
  let state: StreamState;
  try {
    state = (await manager.streams.info(streamName)).state;
  } catch (error) {
    // No stream yet: no worker has started, so there is no history.
    if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound) return [];
    throw error;
  }
  if (state.messages === 0) return [];
  const lastSeq = state.last_seq;
  const startSeq = Math.max(state.first_seq, lastSeq - limit + 1);
  const since = now - 3_600_000;
  const consumer = await jetstream(connection, jsOptions(connection)).consumers.get(streamName, {
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: startSeq,
  });
  const events: UsageEvent[] = [];
  const messages = await consumer.consume({ max_messages: 1_000 });
  const timer = setTimeout(() => void messages.stop(), timeoutMs);
  try {
    for await (const message of messages) {
      try {
        const parsed = usageEventSchema.safeParse(message.json());
        if (parsed.success && Date.parse(parsed.data.ts) >= since) events.push(parsed.data);
      } catch {
        // Not JSON: not an event.
      }
      if (message.seq >= lastSeq) break;
    }
  } finally {
    clearTimeout(timer);
    await messages.close().catch(() => undefined);
  }
  return events;
}
