import { hostname } from 'node:os';
import type { StreamInfo } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { Svcm, type Service, type ServiceMsg } from '@nats-io/services';
import type { Logger } from 'pino';
import type { AggregatorConfig } from '../config/aggregator-schema.js';
import type { UsageStreamConfig } from '../config/schema.js';
import { ProxyError, toErrorReply } from '../contract/errors.js';
import { HEADERS, QUEUE_GROUPS, subjectsFor } from '../contract/subjects.js';
import { readHeaders, SecretCheck } from '../auth/index.js';
import { UsageStreamConsumer, type UsageMessage } from '../usage/consumer.js';
import type pg from 'pg';
import { runUsageQueryPostgres } from '../sink/usage-query.js';
import {
  parseUsageQuery,
  runUsageQuery,
  runUsageQueryAsync,
  ScanCache,
  UsageOutOfRange,
  type AggregatedReply,
} from './query.js';
import { UsageRollups, type Compaction } from './rollups.js';
import { SnapshotStore, type LoadedRollups, type SnapshotManifest } from './snapshot-store.js';

/** Name under which aggregators register with the NATS micro-service framework (`nats micro ls`). */
export const AGGREGATOR_SERVICE_NAME = 'llm-usage';
export const AGGREGATOR_VERSION = '0.1.0';

type AggregatorLogger = Pick<Logger, 'info' | 'warn' | 'error'>;

const silentLogger: AggregatorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

export interface AggregatorOptions {
  connection: NatsConnection;
  subjectPrefix: string;
  usageStream: UsageStreamConfig;
  aggregator: AggregatorConfig;
  logger?: AggregatorLogger;
  /** Clock for relative `since`/`until` in queries. */
  now?: () => number;
  /** Upper bound of a snapshot chunk (tests use it to force several chunks). */
  snapshotChunkBytes?: number;
  /** `X-Internal-Secret` value required on queries (every agent's usage and cost); none when undefined. */
  secret?: string | undefined;
  /**
   * The PostgreSQL usage log (`usage_sink.postgres`), when there is one: queries reaching before
   * `aggregator.retention` are answered from it instead of being refused as out of range.
   */
  usageLog?: Pick<pg.Pool, 'query'> | undefined;
}

/** Where this run started from: the snapshot used (if any) and the first stream sequence consumed. */
export interface StartPoint {
  snapshot: 'own' | 'adopted' | 'none';
  snapshotInstance: string | null;
  snapshotSeq: number;
  /** First stream sequence this run asked the server for. */
  startSeq: number;
}

/** A host name made into a durable-name/KV-key token. */
export function defaultInstanceId(host: string = hostname()): string {
  return host.replace(/[^A-Za-z0-9_-]/g, '-') || 'aggregator';
}

export function durableNameFor(config: AggregatorConfig, instanceId: string): string {
  return config.durable_name ?? `llm-usage-${instanceId}`;
}

/**
 * One aggregator: a durable pull consumer on LLM_USAGE that applies every
 * event to in-memory rollups (acknowledged after it is applied), snapshots
 * them to KV, and answers `llm.proxy.usage` in the `llm-usage` queue group.
 *
 * Why the durable is re-created at every start: acks say what was applied in
 * memory, and memory since the last snapshot is gone after a crash, so the
 * server's ack floor can be ahead of what the snapshot holds. The snapshot's
 * sequence is the truth; the durable is positioned just after it. While the
 * process runs, the durable gives flow control, redelivery of a lost ack and
 * a visible lag (`nats consumer info LLM_USAGE llm-usage-<instance>`).
 */
export class UsageAggregator {
  readonly instanceId: string;
  readonly durableName: string;
  startPoint: StartPoint = { snapshot: 'none', snapshotInstance: null, snapshotSeq: 0, startSeq: 1 };
  lastSnapshot: SnapshotManifest | undefined;

  private rollups: UsageRollups;
  private consumer: UsageStreamConsumer | undefined;
  private stream: StreamInfo | undefined;
  private store: SnapshotStore | undefined;
  private service: Service | undefined;
  private snapshotTimer: NodeJS.Timeout | undefined;
  private saving: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private readonly scanCache = new ScanCache();
  private readonly logger: AggregatorLogger;
  private readonly now: () => number;
  private readonly secret: SecretCheck;

  private constructor(private readonly options: AggregatorOptions) {
    this.instanceId = options.aggregator.instance_id ?? defaultInstanceId();
    this.durableName = durableNameFor(options.aggregator, this.instanceId);
    this.logger = options.logger ?? silentLogger;
    this.now = options.now ?? Date.now;
    this.secret = new SecretCheck(options.secret);
    this.rollups = new UsageRollups(options.aggregator.dedup_horizon, this.compaction());
  }

  private compaction(): Compaction {
    return { hourWindowMs: this.options.aggregator.hour_window, retentionMs: this.options.aggregator.retention };
  }

  static async start(options: AggregatorOptions): Promise<UsageAggregator> {
    const aggregator = new UsageAggregator(options);
    await aggregator.begin();
    return aggregator;
  }

  private async begin(): Promise<void> {
    const { connection, usageStream, aggregator } = this.options;
    const consumer = await UsageStreamConsumer.open({
      connection,
      subjectPrefix: this.options.subjectPrefix,
      usageStream,
      durableName: this.durableName,
      description: `llm-proxy usage aggregator ${this.instanceId}`,
      logger: this.logger,
      order: 'ordered',
      maxBatch: 512,
      ackWaitMs: 60_000,
      maxAckPending: 4_096,
      inactiveThresholdMs: aggregator.consumer_inactive_threshold,
    });
    this.consumer = consumer;
    this.stream = consumer.stream;
    this.store = await SnapshotStore.open(connection, aggregator.snapshot_bucket, {
      replicas: usageStream.replicas,
      ...(this.options.snapshotChunkBytes === undefined ? {} : { chunkBytes: this.options.snapshotChunkBytes }),
      // Snapshots of instances gone this long are removed (their durables are, by the server, by the same rule).
      departedAfterMs: aggregator.consumer_inactive_threshold,
      logger: this.logger,
    });

    const loaded = await this.loadSnapshot(this.store, this.stream.created);
    const startSeq = this.restore(loaded, this.stream);
    // What lies before the start (expired, or in the snapshot) is settled: the next message expected is startSeq.
    this.rollups.appliedSeq = Math.max(this.rollups.appliedSeq, startSeq - 1);
    // The snapshot's sequence is the truth (the server's ack floor may be ahead of it after a crash).
    await consumer.start({ afterSeq: startSeq - 1 }, (batch) => {
      for (const message of batch) this.applyLogged(message);
    });

    this.snapshotTimer = setInterval(
      () => void this.snapshot().catch((error: unknown) => this.logger.warn({ err: error }, 'snapshot failed')),
      aggregator.snapshot_interval_ms,
    );
    this.snapshotTimer.unref();
    // A connection closed under us (crash simulation, fatal error) ends the timers too.
    void connection.closed().then(() => this.halt());

    this.service = await this.startService(connection);
    this.logger.info(
      {
        instance: this.instanceId,
        durable: this.durableName,
        ...this.startPoint,
        stream_last_seq: this.stream.state.last_seq,
      },
      'aggregator started',
    );
  }

  /** Own snapshot first; else the most advanced snapshot of another aggregator (same result, less replay); else none. */
  private async loadSnapshot(
    store: SnapshotStore,
    streamCreated: string,
  ): Promise<{ loaded: LoadedRollups; adopted: boolean } | undefined> {
    const dedupHorizonMs = this.options.aggregator.dedup_horizon;
    // Read as a stream, a chunk at a time, straight into rollups (never the whole snapshot as one string).
    const own = await store.loadRollups(this.instanceId, dedupHorizonMs, this.compaction()).catch((error: unknown) => {
      this.logger.warn({ err: error }, 'own snapshot unreadable; looking for another');
      return undefined;
    });
    if (own !== undefined) {
      // With a snapshot of our own, snapshots of long-departed instances can go (in the background).
      void store.removeDepartedIfDue(this.instanceId);
      return { loaded: own, adopted: false };
    }
    // Snapshots of the stream as it is now come first (one of a deleted and recreated stream would mean a full replay).
    const manifests = (await store.manifests()).sort(
      (left, right) => Number(left.stream_created !== streamCreated) - Number(right.stream_created !== streamCreated),
    );
    for (const manifest of manifests) {
      const other = await store.loadRollups(manifest, dedupHorizonMs, this.compaction()).catch((error: unknown) => {
        this.logger.warn({ err: error, instance: manifest.instance }, 'snapshot unreadable; trying the next');
        return undefined;
      });
      if (other !== undefined) return { loaded: other, adopted: true };
    }
    return undefined;
  }

  /** Install the snapshot's state and decide the first sequence to consume. */
  private restore(found: { loaded: LoadedRollups; adopted: boolean } | undefined, stream: StreamInfo): number {
    const firstSeq = Math.max(1, stream.state.first_seq);
    if (found === undefined) {
      if (firstSeq > 1)
        this.logger.warn(
          { first_seq: firstSeq },
          'no snapshot and the stream has dropped its oldest events: rollups start at its first retained event',
        );
      this.startPoint = { snapshot: 'none', snapshotInstance: null, snapshotSeq: 0, startSeq: firstSeq };
      return firstSeq;
    }
    const { manifest, rollups } = found.loaded;
    const snapshotSeq = rollups.appliedSeq;
    this.rollups = rollups;
    let startSeq = snapshotSeq + 1;
    if (manifest.stream_created !== stream.created || snapshotSeq > stream.state.last_seq) {
      // The stream was deleted and recreated: sequences restarted. Keep the history, read the new stream
      // from its start; event ids still guard against counting an event twice.
      this.logger.warn(
        { snapshot_stream_created: manifest.stream_created, stream_created: stream.created },
        'usage stream was recreated since the snapshot',
      );
      this.rollups.appliedSeq = 0;
      startSeq = firstSeq;
    } else if (firstSeq > startSeq) {
      this.logger.warn(
        { lost: firstSeq - startSeq, from_seq: startSeq },
        'events expired from the stream before this snapshot covered them',
      );
      startSeq = firstSeq;
    }
    this.startPoint = {
      snapshot: found.adopted ? 'adopted' : 'own',
      snapshotInstance: manifest.instance,
      snapshotSeq,
      startSeq,
    };
    return startSeq;
  }

  private applyLogged(message: UsageMessage): void {
    const result = this.rollups.apply(message);
    if (result.outcome === 'invalid')
      this.logger.warn(
        { seq: message.seq, subject: message.subject, problem: result.problem },
        'skipped a message that is not a usage event',
      );
  }

  private async startService(connection: NatsConnection): Promise<Service> {
    const service = await new Svcm(connection).add({
      name: AGGREGATOR_SERVICE_NAME,
      version: AGGREGATOR_VERSION,
      description: 'llm-proxy usage rollups',
      queue: QUEUE_GROUPS.aggregators,
      metadata: { instance: this.instanceId, durable: this.durableName },
      statsHandler: () => Promise.resolve(this.status()),
    });
    service.addEndpoint('usage', {
      subject: subjectsFor(this.options.subjectPrefix).usageQuery,
      queue: QUEUE_GROUPS.aggregators,
      handler: (error, message) => {
        if (error !== null) {
          this.logger.error({ err: error }, 'usage endpoint failed');
          return;
        }
        this.answer(message);
      },
    });
    // Once the server has our subscription, a query sent right after start finds a responder.
    await connection.flush();
    return service;
  }

  private answer(message: ServiceMsg): void {
    try {
      const { headers, malformed } = readHeaders(message);
      if (malformed) throw new ProxyError('invalid_request', "the message's header block is malformed");
      if (!this.secret.allows(headers))
        throw new ProxyError('unauthorized', `missing or wrong ${HEADERS.secret} header`);
      const text = message.string().trim();
      let body: unknown = {};
      if (text !== '') {
        try {
          body = JSON.parse(text);
        } catch {
          throw new ProxyError('invalid_request', 'the query is not JSON', { retryable: false });
        }
      }
      const maxPayload = this.options.connection.info?.max_payload;
      void this.queryAsync(body, maxPayload)
        .then((reply) => {
          const encoded = new TextEncoder().encode(JSON.stringify(reply));
          if (maxPayload !== undefined && encoded.length > maxPayload)
            throw new ProxyError(
              'payload_too_large',
              `the reply (${encoded.length} bytes) exceeds max_payload: page it with limit (and cursor), or narrow the range`,
              { retryable: false },
            );
          message.respond(encoded);
        })
        .catch((error: unknown) => this.refuse(message, error));
    } catch (error) {
      this.refuse(message, error);
    }
  }

  private refuse(message: ServiceMsg, error: unknown): void {
    try {
      const reply = toErrorReply(error);
      if (!(error instanceof ProxyError)) this.logger.error({ err: error }, 'usage query failed');
      // A header value cannot hold a line break (a field name from the query could).
      message.respondError(reply.error.status, reply.error.message.replace(/[\r\n]+/g, ' '), JSON.stringify(reply));
    } catch (failure) {
      this.logger.error({ err: failure }, 'usage query reply could not be sent');
    }
  }

  /** Answer a query body in process, in one go (tests). Throws ProxyError on a bad query. */
  query(body: unknown): AggregatedReply {
    return runUsageQuery(this.rollups, parseUsageQuery(body, this.now()));
  }

  /**
   * What `llm.proxy.usage` replies: the query answered in slices that leave the event loop free, from
   * the PostgreSQL usage log when it reaches before the retention and a log is configured.
   */
  async queryAsync(body: unknown, maxBytes?: number): Promise<AggregatedReply> {
    const parsed = parseUsageQuery(body, this.now());
    try {
      return await runUsageQueryAsync(this.rollups, parsed, {
        cache: this.scanCache,
        ...(maxBytes === undefined ? {} : { maxBytes }),
      });
    } catch (error) {
      const usageLog = this.options.usageLog;
      if (!(error instanceof UsageOutOfRange) || usageLog === undefined) throw error;
      return runUsageQueryPostgres(usageLog, parsed);
    }
  }

  appliedSeq(): number {
    return this.rollups.appliedSeq;
  }

  /** Messages in the usage stream not applied yet: its last sequence now minus the applied one. */
  async lag(): Promise<number> {
    if (this.consumer === undefined) throw new Error('aggregator not started');
    return Math.max(0, (await this.consumer.streamLastSeq()) - this.rollups.appliedSeq);
  }

  /** Events counted, skipped as duplicates, refused as invalid, since this aggregator's state began. */
  eventStats(): { events: number; duplicates: number; invalid: number } {
    return this.rollups.stats;
  }

  status(): Record<string, unknown> {
    return {
      instance: this.instanceId,
      durable: this.durableName,
      applied_seq: this.rollups.appliedSeq,
      ...this.rollups.stats,
      remembered_ids: this.rollups.rememberedIds(),
      start_seq: this.startPoint.startSeq,
      start_snapshot: this.startPoint.snapshot,
      snapshot_seq: this.lastSnapshot?.seq ?? this.startPoint.snapshotSeq,
    };
  }

  /** Resolves once every stream sequence up to `seq` is applied (or rejects after `timeoutMs`). */
  async waitForSeq(seq: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.rollups.appliedSeq < seq) {
      if (Date.now() > deadline)
        throw new Error(`aggregator ${this.instanceId} at seq ${this.rollups.appliedSeq}, waited for ${seq}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Save the rollups now (serialised with the periodic save). */
  snapshot(): Promise<SnapshotManifest> {
    const next = this.saving
      .catch(() => undefined)
      .then(async () => {
        const store = this.store;
        const stream = this.stream;
        if (store === undefined || stream === undefined) throw new Error('aggregator not started');
        // A consistent cut between two applied events, read while consumption and queries go on.
        const manifest = await store.saveCut(this.instanceId, this.rollups.beginCut(), {
          name: stream.config.name,
          created: stream.created,
        });
        this.lastSnapshot = manifest;
        return manifest;
      });
    this.saving = next;
    return next;
  }

  private halt(): void {
    this.stopped = true;
    this.consumer?.halt();
    if (this.snapshotTimer !== undefined) clearInterval(this.snapshotTimer);
    this.snapshotTimer = undefined;
  }

  /** Graceful stop: leave the queue group, stop consuming, save a last snapshot. The connection stays open. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.halt();
    await this.service?.stop().catch(() => undefined);
    await this.consumer?.stop();
    await this.snapshot();
  }
}
