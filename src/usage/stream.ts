import {
  JetStreamApiCodes,
  JetStreamApiError,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import type { UsageStreamConfig } from '../config/schema.js';
import { subjectsFor } from '../contract/subjects.js';
import type { Logger } from '../telemetry/logger.js';

/** The usage stream's wanted settings: what `streams.add` takes. */
export type UsageStreamWanted = Partial<StreamConfig> & Pick<StreamConfig, 'name' | 'subjects' | 'storage'>;

/** Where the worker and the aggregator say what they did to the stream; both pass their own logger. */
export type UsageStreamLogger = Pick<Logger, 'info' | 'warn'>;

/** Settings compared with the stream's and updated in place when they differ (storage cannot be). */
const UPDATABLE_SETTINGS = ['max_age', 'max_bytes', 'max_msgs', 'num_replicas', 'duplicate_window'] as const;

/** The stream config `nats.usage_stream` asks for, capturing `subject` (`<prefix>.usage.>`). */
export function usageStreamConfig(settings: UsageStreamConfig, subject: string): UsageStreamWanted {
  return {
    name: settings.name,
    subjects: [subject],
    max_age: nanos(settings.max_age),
    max_bytes: settings.max_bytes,
    max_msgs: settings.max_msgs,
    num_replicas: settings.replicas,
    storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
    // The server refuses a duplicate window longer than max_age.
    duplicate_window: nanos(
      settings.max_age > 0 ? Math.min(settings.duplicate_window, settings.max_age) : settings.duplicate_window,
    ),
  };
}

/** Names of the settings (and `subjects`, when one wanted is missing) in which the stream differs from `wanted`. */
function differingSettings(current: StreamConfig, wanted: UsageStreamWanted): string[] {
  const differing: string[] = UPDATABLE_SETTINGS.filter(
    (key) => wanted[key] !== undefined && current[key] !== wanted[key],
  );
  const subjects = new Set(current.subjects ?? []);
  if (wanted.subjects.some((subject) => !subjects.has(subject))) differing.push('subjects');
  return differing;
}

/**
 * Creates the usage stream (DESIGN.md "Usage event": `LLM_USAGE`, subjects
 * `<prefix>.usage.>`) or brings an existing one to the configured limits. The
 * worker's `UsagePublisher.ensureStream()` and the aggregator both call it, so
 * either can start first (a JetStream publish that no stream captures fails,
 * and a consumer needs its stream) and they converge on the same settings
 * instead of undoing each other.
 *
 * The limits are `nats.usage_stream` in config.yaml: `max_age` (0 = forever),
 * `max_bytes`/`max_msgs` (-1 = unlimited; the oldest events are dropped first)
 * and `duplicate_window` (a re-publish with the same `Nats-Msg-Id` inside it is
 * stored once). Storage type cannot change on an existing stream: a difference
 * is warned about and kept. The rest is updated when it differs, so config.yaml
 * stays the one source of truth; subjects are added, never removed.
 */
export async function ensureUsageStreamCapturing(
  manager: JetStreamManager,
  settings: UsageStreamConfig,
  subject: string,
  logger?: UsageStreamLogger,
): Promise<StreamInfo> {
  const wanted = usageStreamConfig(settings, subject);
  let existing: StreamInfo | undefined;
  try {
    existing = await manager.streams.info(wanted.name);
  } catch (error) {
    if (!(error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound)) throw error;
  }
  if (existing === undefined) {
    try {
      const created = await manager.streams.add(wanted);
      logger?.info({ stream: wanted.name, subjects: wanted.subjects }, 'usage stream created');
      return created;
    } catch (error) {
      // Another process created it between our info and add: fall through to the update check.
      existing = await manager.streams.info(wanted.name).catch(() => {
        throw error;
      });
    }
  }
  const current = existing.config;
  if (current.storage !== wanted.storage) {
    logger?.warn(
      { stream: wanted.name, current: current.storage, wanted: wanted.storage },
      'usage stream storage differs from config; storage cannot be changed in place, keeping it',
    );
  }
  const differing = differingSettings(current, wanted);
  if (differing.length === 0) return existing;
  const { storage: _storage, ...updatable } = wanted;
  const updated = await manager.streams.update(wanted.name, {
    ...updatable,
    subjects: [...new Set([...(current.subjects ?? []), ...wanted.subjects])],
  });
  logger?.info({ stream: wanted.name, changed: differing }, 'usage stream settings updated');
  return updated;
}

/** {@link ensureUsageStreamCapturing} for the subjects of `subjectPrefix` (`<prefix>.usage.>`). */
export function ensureUsageStream(
  manager: JetStreamManager,
  settings: UsageStreamConfig,
  subjectPrefix: string,
  logger?: UsageStreamLogger,
): Promise<StreamInfo> {
  return ensureUsageStreamCapturing(manager, settings, subjectsFor(subjectPrefix).usageAll, logger);
}
