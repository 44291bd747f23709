import { jsOptions } from '../bus/jetstream-domain.js';
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type ConsumerMessages,
  type JetStreamManager,
  type JsMsg,
  type StreamInfo,
} from '@nats-io/jetstream';
import { nanos, type NatsConnection } from '@nats-io/nats-core';
import type { UsageStreamConfig } from '../config/schema.js';
import { subjectsFor } from '../contract/subjects.js';
import type { Logger } from '../telemetry/logger.js';
import { ensureUsageStream } from './stream.js';

/** One message of the usage stream, as the appliers see it. */
export interface UsageMessage {
  /** Stream sequence. */
  seq: number;
  subject: string;
  data: Uint8Array;
  /** When the server stored it (stream time, not the event's own clock). */
  storedAtMs: number;
}

/**
 * What a consumer does with messages: apply them (all or none), then they are acknowledged. A
 * throw leaves them unacknowledged: they come back after a pause. Applying must be idempotent per
 * message (a crash between apply and ack, or a lost ack, delivers a message again).
 */
export type ApplyBatch = (batch: UsageMessage[]) => void | Promise<void>;

export type UsageConsumerLogger = Pick<Logger, 'info' | 'warn' | 'error'>;

/** Beyond this many missing sequences, ask the stream where it starts before reading them one by one. */
const GAP_READ_LIMIT = 1_000;
/** How long a batch that failed to apply waits before it is delivered again. */
const RETRY_DELAY_MS = 1_000;

export interface UsageConsumerOptions {
  connection: NatsConnection;
  subjectPrefix: string;
  usageStream: UsageStreamConfig;
  durableName: string;
  description: string;
  logger: UsageConsumerLogger;
  /**
   * `ordered`: every sequence is applied once and in stream order; a message delivered ahead of a
   * missing one (lost in flight while the connection was down) first makes the missing ones be read
   * from the stream directly, and redeliveries of applied ones are acknowledged without applying
   * (the aggregator: its sums are only right in order). `unordered`: whatever the server delivers,
   * in batches (the sink: each row is idempotent on its own, and several sinks share one durable).
   */
  order: 'ordered' | 'unordered';
  /** Most messages per apply call. */
  maxBatch: number;
  /** A message not acknowledged this long is delivered again (apply must finish well within it). */
  ackWaitMs: number;
  maxAckPending: number;
  /** A durable unused this long is removed by the server; undefined: kept until deleted. */
  inactiveThresholdMs?: number | undefined;
}

/** Where consumption begins: right after `seq` (the durable is re-created there), or where the durable is. */
export type ConsumerStart = { afterSeq: number } | 'resume';

/**
 * A durable pull consumer on the usage stream: the part the aggregator and the PostgreSQL sink share
 * (creating or updating the stream, positioning the durable, batching, acknowledging after apply,
 * gap detection, lag). Each of them is then only its {@link ApplyBatch}.
 */
export class UsageStreamConsumer {
  /** The stream as it was when the consumer opened. */
  readonly stream: StreamInfo;
  /** Ordered mode: the highest sequence applied (everything before it is settled). */
  appliedSeq = 0;
  private messages: ConsumerMessages | undefined;
  private consuming: Promise<void> = Promise.resolve();
  /** Errors of the delivery are expected from here on (stopping, or the connection closed). */
  private quiet = false;
  private closed = false;

  private constructor(
    private readonly options: UsageConsumerOptions,
    private readonly manager: JetStreamManager,
    stream: StreamInfo,
  ) {
    this.stream = stream;
  }

  /** Creates or updates the usage stream (the one place that does), then returns a consumer not yet started. */
  static async open(options: UsageConsumerOptions): Promise<UsageStreamConsumer> {
    const manager = await jetstreamManager(options.connection, jsOptions(options.connection));
    const stream = await ensureUsageStream(manager, options.usageStream, options.subjectPrefix, options.logger);
    return new UsageStreamConsumer(options, manager, stream);
  }

  private consumerConfig(): Partial<ConsumerConfig> {
    const { options } = this;
    return {
      durable_name: options.durableName,
      description: options.description,
      ack_policy: AckPolicy.Explicit,
      filter_subject: subjectsFor(options.subjectPrefix).usageAll,
      ack_wait: nanos(options.ackWaitMs),
      max_ack_pending: options.maxAckPending,
      ...(options.inactiveThresholdMs === undefined ? {} : { inactive_threshold: nanos(options.inactiveThresholdMs) }),
    };
  }

  /**
   * Positions the durable and starts consuming. `{afterSeq}` re-creates it to deliver from `afterSeq + 1`
   * (state restored from a snapshot knows where it stands better than the server's ack floor);
   * `'resume'` keeps an existing durable where its acknowledgements left it, or creates one at the
   * stream's first message.
   */
  async start(from: ConsumerStart, apply: ApplyBatch): Promise<void> {
    const { options, manager } = this;
    const name = options.usageStream.name;
    if (from === 'resume') {
      const existing = await manager.consumers.info(name, options.durableName).catch((error: unknown) => {
        if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound) return undefined;
        throw error;
      });
      if (existing === undefined) {
        try {
          await manager.consumers.add(name, { ...this.consumerConfig(), deliver_policy: DeliverPolicy.All });
          options.logger.info({ durable: options.durableName }, 'durable consumer created at the stream start');
        } catch (error) {
          // Another process sharing the durable created it first: use theirs.
          if (!(error instanceof JetStreamApiError)) throw error;
          await manager.consumers.info(name, options.durableName);
        }
      } else {
        await this.warnIfExpiredUnread(existing.ack_floor.stream_seq);
        await this.updateLimits(existing.config);
      }
    } else {
      await manager.consumers.delete(name, options.durableName).catch((error: unknown) => {
        if (!(error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound)) throw error;
      });
      await manager.consumers.add(name, {
        ...this.consumerConfig(),
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: from.afterSeq + 1,
      });
      this.appliedSeq = from.afterSeq;
    }
    const consumer = await jetstream(options.connection, jsOptions(options.connection)).consumers.get(
      name,
      options.durableName,
    );
    // Short pull expiry: a replaced or recreated durable is noticed within seconds.
    const messages = await consumer.consume({ max_messages: Math.max(512, options.maxBatch * 2), expires: 5_000 });
    this.messages = messages;
    this.consuming = this.consume(messages, apply);
    void this.watchStatus(messages);
  }

  /**
   * A durable made by an earlier configuration (another batch size, another version) gets this one's ack
   * wait and ack-pending bound; its position stays. A server that refuses the update keeps the old ones.
   */
  private async updateLimits(current: ConsumerConfig): Promise<void> {
    const { options } = this;
    const wanted = { ack_wait: nanos(options.ackWaitMs), max_ack_pending: options.maxAckPending };
    if (current.ack_wait === wanted.ack_wait && current.max_ack_pending === wanted.max_ack_pending) return;
    try {
      await this.manager.consumers.update(options.usageStream.name, options.durableName, wanted);
      options.logger.info({ durable: options.durableName, ...wanted }, 'durable consumer limits updated');
    } catch (error) {
      options.logger.warn({ err: error, durable: options.durableName }, 'could not update the durable consumer limits');
    }
  }

  /** A durable whose acknowledged floor is behind the stream's first message has lost events to retention. */
  private async warnIfExpiredUnread(ackFloor: number): Promise<void> {
    const info = await this.manager.streams.info(this.options.usageStream.name);
    if (info.state.first_seq > ackFloor + 1)
      this.options.logger.error(
        { durable: this.options.durableName, from_seq: ackFloor + 1, to_seq: info.state.first_seq - 1 },
        'events expired from the usage stream before this consumer read them (raise nats.usage_stream limits)',
      );
  }

  /**
   * Batches what the client already holds: a message starts a batch that is applied on the next turn
   * of the event loop (after the rest of its delivery chunk has been taken), or at once when full.
   * One batch is applied at a time; what arrives meanwhile makes the next. (The iterator's own
   * pending count is not used: it counts status callbacks as messages.)
   */
  private async consume(messages: ConsumerMessages, apply: ApplyBatch): Promise<void> {
    const max = this.options.maxBatch;
    let batch: JsMsg[] = [];
    let running: Promise<void> | undefined;
    let scheduled = false;
    const drain = async () => {
      while (batch.length > 0) {
        const taken = batch.length <= max ? batch : batch.slice(0, max);
        batch = batch.length <= max ? [] : batch.slice(max);
        await this.applyAndAck(taken, apply);
      }
    };
    const kick = (): Promise<void> => {
      running ??= drain().finally(() => {
        running = undefined;
      });
      return running;
    };
    try {
      for await (const message of messages) {
        batch.push(message);
        if (batch.length >= max) {
          await kick();
          continue;
        }
        if (!scheduled) {
          scheduled = true;
          setImmediate(() => {
            scheduled = false;
            void kick();
          });
        }
      }
    } catch (error) {
      if (!this.quiet) this.options.logger.error({ err: error }, 'consuming the usage stream stopped');
    } finally {
      await running;
      await kick();
    }
  }

  private async applyAndAck(messages: JsMsg[], apply: ApplyBatch): Promise<void> {
    let batch: UsageMessage[];
    try {
      batch = this.options.order === 'ordered' ? await this.inOrder(messages) : messages.map(toUsageMessage);
      if (batch.length > 0) await apply(batch);
    } catch (error) {
      // Not applied, not acknowledged: they come back, and a gap is tried again before them.
      this.options.logger.warn(
        { err: error, first_seq: messages[0]?.seq, count: messages.length },
        'could not apply usage messages; they will be delivered again',
      );
      for (const message of messages) message.nak(RETRY_DELAY_MS);
      return;
    }
    if (this.options.order === 'ordered') {
      const last = batch.at(-1);
      if (last !== undefined) this.appliedSeq = Math.max(this.appliedSeq, last.seq);
    }
    // Acknowledged only once applied (redeliveries of applied ones too); a crash before this point delivers them again.
    for (const message of messages) message.ack();
  }

  /**
   * The batch in stream order without holes: messages already applied are dropped (redeliveries),
   * and the sequences missing before a message are read from the stream (those deleted or expired
   * are skipped).
   */
  private async inOrder(messages: JsMsg[]): Promise<UsageMessage[]> {
    const batch: UsageMessage[] = [];
    let expected = this.appliedSeq + 1;
    for (const message of [...messages].sort((left, right) => left.seq - right.seq)) {
      if (message.seq < expected) continue;
      if (message.seq > expected) batch.push(...(await this.readGap(expected, message.seq)));
      batch.push(toUsageMessage(message));
      expected = message.seq + 1;
    }
    return batch;
  }

  private async readGap(fromSeq: number, beforeSeq: number): Promise<UsageMessage[]> {
    const name = this.options.usageStream.name;
    let seq = fromSeq;
    if (beforeSeq - seq > GAP_READ_LIMIT) {
      // A long gap is usually retention at work: start at the first message the stream still has.
      seq = Math.max(seq, (await this.manager.streams.info(name)).state.first_seq);
    }
    const usagePrefix = `${this.options.subjectPrefix}.usage.`;
    const recovered: UsageMessage[] = [];
    for (; seq < beforeSeq; seq += 1) {
      const stored = await this.manager.streams.getMessage(name, { seq });
      if (stored === null || !stored.subject.startsWith(usagePrefix)) continue;
      recovered.push({
        seq: stored.seq,
        subject: stored.subject,
        data: stored.data,
        storedAtMs: stored.time.getTime(),
      });
    }
    if (recovered.length > 0)
      this.options.logger.warn(
        { recovered: recovered.length, before_seq: beforeSeq },
        'read messages missing from the delivery directly from the stream',
      );
    return recovered;
  }

  private async watchStatus(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const status of messages.status()) {
        if (status.type === 'consumer_deleted' || status.type === 'consumer_not_found') {
          this.options.logger.error(
            { durable: this.options.durableName, status: status.type },
            'the durable consumer is gone (deleted, or taken over by another process with the same name)',
          );
        }
      }
    } catch {
      // The iterator ends with the consumer.
    }
  }

  /** Messages of the stream this durable has not had acknowledged: pending delivery plus delivered and unacknowledged. */
  async lag(): Promise<number> {
    const info = await this.manager.consumers.info(this.options.usageStream.name, this.options.durableName);
    return info.num_pending + info.num_ack_pending;
  }

  /** The stream's last sequence now (ordered consumers compare it with {@link appliedSeq}). */
  async streamLastSeq(): Promise<number> {
    return (await this.manager.streams.info(this.options.usageStream.name)).state.last_seq;
  }

  /** Stop pulling and wait for the batch being applied (its acks are sent). */
  async stop(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.quiet = true;
    await this.messages?.close().catch(() => undefined);
    await this.consuming;
  }

  /** Marks the consumer stopped without waiting (the connection closed under it). */
  halt(): void {
    this.quiet = true;
  }
}

function toUsageMessage(message: JsMsg): UsageMessage {
  return {
    seq: message.seq,
    subject: message.subject,
    data: message.data,
    storedAtMs: Number(message.timestampNanos / 1_000_000n),
  };
}
