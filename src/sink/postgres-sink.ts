import type { NatsConnection } from '@nats-io/nats-core';
import type pg from 'pg';
import type { UsageStreamConfig } from '../config/schema.js';
import type { PostgresSinkConfig } from '../config/usage-sink-schema.js';
import { redactUrl } from '../config/redact-url.js';
import { UsageStreamConsumer, type UsageConsumerLogger, type UsageMessage } from '../usage/consumer.js';
import { monthOf } from './event-row.js';
import { migrate, type MigrationResult } from './migrations.js';
import { MonthlyPartitions } from './partitions.js';
import { describePgError, openUsageLogPool } from './pg-pool.js';
import { writeUsageBatch, type WriteResult } from './usage-writer.js';

export interface PostgresSinkOptions {
  connection: NatsConnection;
  subjectPrefix: string;
  usageStream: UsageStreamConfig;
  /** `usage_sink.postgres`, with the URL resolved (flag, `LLM_PROXY_POSTGRES_URL`, config). */
  sink: PostgresSinkConfig & { url: string };
  logger: UsageConsumerLogger;
  now?: () => number;
  /** How long the start waits for the database (undefined: until it answers, as a service should). */
  startWindowMs?: number;
}

export interface SinkStats {
  inserted: number;
  duplicates: number;
  dead_letters: number;
  batches: number;
  /** Batches that failed to commit (database unreachable…) and were tried again. */
  retries: number;
}

/** A batch is tried again for this long before its messages are handed back to the server. */
const WRITE_RETRY_WINDOW_MS = 30_000;
/** The consumer's ack wait: well beyond a batch's retry window. */
const ACK_WAIT_MS = 120_000;
/** How often the retention is applied while running. */
const RETENTION_INTERVAL_MS = 3_600_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * `llm-proxy sink postgres`: every usage event into PostgreSQL, once. The sinks of one database share
 * a durable consumer (`usage_sink.postgres.durable_name`) and split the work; each batch is one
 * transaction, acknowledged only after it commits; the event key is the table's key and inserts skip
 * what is there, so a crash, a redelivery or a second sink never counts an event twice. While the
 * database is unreachable a batch is retried (with backoff) and nothing is acknowledged, so nothing
 * is lost: the stream holds the events until the sink is back.
 */
export class PostgresUsageSink {
  readonly stats: SinkStats = { inserted: 0, duplicates: 0, dead_letters: 0, batches: 0, retries: 0 };
  migration: MigrationResult | undefined;
  private consumer: UsageStreamConsumer | undefined;
  private retentionTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly now: () => number;

  private constructor(
    private readonly options: PostgresSinkOptions,
    readonly pool: pg.Pool,
    private readonly partitions: MonthlyPartitions,
  ) {
    this.now = options.now ?? Date.now;
  }

  static async start(options: PostgresSinkOptions): Promise<PostgresUsageSink> {
    const pool = openUsageLogPool(
      {
        url: options.sink.url,
        schema: options.sink.schema,
        poolSize: options.sink.pool_size,
        applicationName: 'llm-proxy-sink',
      },
      options.logger,
    );
    const sink = new PostgresUsageSink(options, pool, new MonthlyPartitions(pool));
    try {
      await sink.begin();
    } catch (error) {
      await sink.stop().catch(() => undefined);
      throw error;
    }
    return sink;
  }

  private async begin(): Promise<void> {
    const { options } = this;
    this.migration = await this.untilDatabaseAnswers(
      'migrate',
      async () => {
        const client = await this.pool.connect();
        try {
          return await migrate(client, options.sink.schema);
        } finally {
          client.release();
        }
      },
      options.startWindowMs,
    );
    if (this.migration.applied.length > 0)
      options.logger.info(
        { applied: this.migration.applied, version: this.migration.version, schema: options.sink.schema },
        'usage log schema migrated',
      );
    const thisMonth = monthOf(this.now());
    await this.partitions.ensure([thisMonth, thisMonth + 1]);
    await this.applyRetention();
    this.retentionTimer = setInterval(() => void this.applyRetention(), RETENTION_INTERVAL_MS);
    this.retentionTimer.unref();

    const consumer = await UsageStreamConsumer.open({
      connection: options.connection,
      subjectPrefix: options.subjectPrefix,
      usageStream: options.usageStream,
      durableName: options.sink.durable_name,
      description: 'llm-proxy usage log (PostgreSQL sinks)',
      logger: options.logger,
      order: 'unordered',
      maxBatch: options.sink.batch_size,
      ackWaitMs: ACK_WAIT_MS,
      maxAckPending: Math.max(4_096, options.sink.batch_size * 4),
    });
    this.consumer = consumer;
    await consumer.start('resume', (batch) => this.write(batch));
    options.logger.info(
      {
        url: redactUrl(options.sink.url),
        schema: options.sink.schema,
        durable: options.sink.durable_name,
        stream_last_seq: consumer.stream.state.last_seq,
      },
      'usage sink started',
    );
  }

  /** One batch, committed before it is acknowledged; retried while the database does not answer. */
  private async write(batch: UsageMessage[]): Promise<void> {
    const streamName = this.options.usageStream.name;
    const result: WriteResult = await this.untilDatabaseAnswers(
      'write',
      () => writeUsageBatch(this.pool, this.partitions, streamName, batch),
      WRITE_RETRY_WINDOW_MS,
    );
    this.stats.batches += 1;
    this.stats.inserted += result.inserted;
    this.stats.duplicates += result.duplicates;
    this.stats.dead_letters += result.deadLetters;
    if (result.deadLetters > 0)
      this.options.logger.warn(
        { dead_letters: result.deadLetters, first_seq: batch[0]?.seq },
        'usage messages that are not storable events were filed in usage_dead_letters',
      );
  }

  /**
   * Runs `step` until it succeeds, waiting 250 ms doubling to 5 s between tries, for at most
   * `windowMs` (undefined: until the sink stops). Row errors never get here (the writer files them);
   * what does is the database being away, restarting or refusing connections.
   */
  private async untilDatabaseAnswers<T>(what: string, step: () => Promise<T>, windowMs?: number): Promise<T> {
    const started = Date.now();
    let delay = 250;
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await step();
      } catch (error) {
        const out = windowMs !== undefined && Date.now() - started + delay > windowMs;
        if (this.stopping || out) throw error;
        this.stats.retries += 1;
        if (attempt === 1 || attempt % 10 === 0)
          this.options.logger.warn(
            { err: describePgError(error), attempt, step: what, url: redactUrl(this.options.sink.url) },
            'the usage log does not answer; trying again',
          );
        await sleep(delay);
        delay = Math.min(delay * 2, 5_000);
      }
    }
  }

  private async applyRetention(): Promise<void> {
    const retention = this.options.sink.retention;
    if (retention <= 0) return;
    try {
      const dropped = await this.partitions.dropEndedBefore(this.now() - retention);
      if (dropped.length > 0)
        this.options.logger.info({ dropped, retention_ms: retention }, 'usage log months past the retention dropped');
    } catch (error) {
      this.options.logger.warn({ err: describePgError(error) }, 'could not apply the usage log retention');
    }
  }

  /** Events of the stream not yet committed by the sinks of this durable. */
  async lag(): Promise<number> {
    if (this.consumer === undefined) throw new Error('sink not started');
    return this.consumer.lag();
  }

  /** Stop taking messages, finish (commit and acknowledge) the batch in hand, close the pool. */
  async stop(): Promise<void> {
    if (this.retentionTimer !== undefined) clearInterval(this.retentionTimer);
    // A batch in hand is still committed when the database answers; it is not waited for when it does not.
    this.stopping = true;
    await this.consumer?.stop();
    await this.pool.end().catch(() => undefined);
  }
}
