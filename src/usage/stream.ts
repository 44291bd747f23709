import { JetStreamApiCodes, JetStreamApiError, StorageType, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import type { UsageStreamConfig } from '../config/schema.js';
import { subjectsFor } from '../contract/subjects.js';

/**
 * Creates the usage stream (DESIGN.md "Usage event": `LLM_USAGE`, subjects
 * `<prefix>.usage.>`) or brings an existing one to the configured limits.
 * The aggregator uses it so that it runs without any worker; the worker's
 * `UsagePublisher.ensureStream()` applies the same settings, so either can
 * start first (a JetStream publish that no stream captures fails, and a
 * consumer needs its stream).
 *
 * The limits are `nats.usage_stream` in config.yaml: `max_age` (0 = forever),
 * `max_bytes`/`max_msgs` (-1 = unlimited; the oldest events are dropped first)
 * and `duplicate_window` (a re-publish with the same `Nats-Msg-Id` inside it is
 * stored once). Storage type cannot change on an existing stream; the rest is
 * updated when it differs, so config.yaml stays the one source of truth.
 */
export async function ensureUsageStream(manager: JetStreamManager, settings: UsageStreamConfig, subjectPrefix: string): Promise<StreamInfo> {
  const subject = subjectsFor(subjectPrefix).usageAll;
  const limits = {
    max_age: nanos(settings.max_age),
    max_bytes: settings.max_bytes,
    max_msgs: settings.max_msgs,
    num_replicas: settings.replicas,
    // The server refuses a duplicate window longer than max_age (same rule as UsagePublisher.ensureStream,
    // so that a worker and an aggregator converge on the same settings instead of undoing each other).
    duplicate_window: nanos(settings.max_age > 0 ? Math.min(settings.duplicate_window, settings.max_age) : settings.duplicate_window),
  };
  let existing: StreamInfo | undefined;
  try {
    existing = await manager.streams.info(settings.name);
  } catch (error) {
    if (!(error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound)) throw error;
  }
  if (existing === undefined) {
    try {
      return await manager.streams.add({
        name: settings.name,
        subjects: [subject],
        storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
        ...limits,
      });
    } catch (error) {
      // Another process created it between our info and add: fall through to the update check.
      existing = await manager.streams.info(settings.name).catch(() => {
        throw error;
      });
    }
  }
  const config = existing.config;
  const subjects = config.subjects ?? [];
  const differs =
    !subjects.includes(subject) ||
    config.max_age !== limits.max_age ||
    config.max_bytes !== limits.max_bytes ||
    config.max_msgs !== limits.max_msgs ||
    config.num_replicas !== limits.num_replicas ||
    config.duplicate_window !== limits.duplicate_window;
  if (!differs) return existing;
  return manager.streams.update(settings.name, {
    ...limits,
    subjects: subjects.includes(subject) ? subjects : [...subjects, subject],
  });
}
