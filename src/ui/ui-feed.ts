/**
 * The operations page's feed: one per process, shared by every open page. It subscribes to
 * `llm.usage.>` (the live events, into a bounded window), polls the bus every few seconds (`$SRV.STATS`
 * of workers and aggregators, deployments, spending, limits) and pushes to each page over SSE a JSON
 * snapshot after every poll and the new events (filtered per page) every half second. With
 * `idleStopMs`, it subscribes and polls only while a page is open (and that long after).
 */
import type { ServerResponse } from 'node:http';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { createClient, type LlmProxyClient } from '../client/index.js';
import { subjectsFor, USAGE_STREAM_NAME } from '../contract/subjects.js';
import { USAGE_STATUSES, usageEventKey, usageEventSchema } from '../contract/usage-event.js';
import type { Logger } from '../telemetry/logger.js';
import { readLastHour } from './ui-backfill.js';
import { DeploymentBoard } from './ui-deployments.js';
import {
  type AggregatorRow,
  type LimitRow,
  pollAggregators,
  pollLimits,
  pollSpend,
  pollWorkers,
  type SpendPeriod,
  type StandingReader,
  type WorkerRow,
} from './ui-polls.js';
import { PageStream } from './ui-sse.js';
import { type TailEvent, TrafficWindow } from './ui-window.js';

export interface UiFeedOptions {
  connecting: Promise<NatsConnection>;
  subjectPrefix: string;
  /** Sent with models and usage queries (`X-Internal-Secret`). */
  secret: string | undefined;
  logger: Logger;
  /** Reads an agent's standing against its limits; without it the page says why (`limitsNote`). */
  standing?: StandingReader | undefined;
  limitsNote?: string | undefined;
  /** The usage stream, for the last hour at start (default LLM_USAGE). */
  usageStream?: string | undefined;
  intervals?: { servicesMs?: number; spendMs?: number; limitsMs?: number; flushMs?: number };
  /** Stop subscribing and polling this long after the last page closed; undefined: run until close(). */
  idleStopMs?: number | undefined;
}

export interface TailFilter {
  agent?: string | undefined;
  model?: string | undefined;
  status?: string | undefined;
}

/** Pages open at once on one process; more are answered 503. */
export const MAX_VIEWERS = 32;
/** Events sent to one page per flush; the rest are counted as skipped. */
const MAX_EVENTS_PER_FLUSH = 100;
/** A page that does not read (this many bytes waiting) is cut off rather than buffered for. */
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;
const HEARTBEAT_MS = 15_000;
/** Live events remembered while the last hour is read back (the read lasts 10 s at most). */
const MAX_BACKFILL_OVERLAP = 100_000;

interface Viewer {
  sse: PageStream;
  filter: TailFilter;
  pending: TailEvent[];
  skipped: number;
}

export function matchesFilter(event: TailEvent, filter: TailFilter): boolean {
  return (
    (filter.agent === undefined || event.agent_id === filter.agent) &&
    (filter.model === undefined || event.model === filter.model) &&
    (filter.status === undefined || event.status === filter.status)
  );
}

export const TAIL_STATUSES: readonly string[] = USAGE_STATUSES;

export class UiFeed {
  readonly window = new TrafficWindow();
  readonly #viewers = new Set<Viewer>();
  readonly #board = new DeploymentBoard();
  readonly #problems = new Map<string, string>();
  readonly #timers: NodeJS.Timeout[] = [];
  #connection: NatsConnection | undefined;
  #client: LlmProxyClient | undefined;
  #subscription: Subscription | undefined;
  #running = false;
  #closed = false;
  #idleTimer: NodeJS.Timeout | undefined;
  #busy = new Set<string>();
  #workers: WorkerRow[] = [];
  #aggregators: AggregatorRow[] = [];
  #spend: { today: SpendPeriod; month: SpendPeriod; at: string } | undefined;
  #limits: LimitRow[] = [];
  /** Live events seen while the last hour is read back: not counted twice. */
  #liveDuringBackfill: Set<string> | undefined;
  /** The last hour is read back once: after an idle stop, the gap stays a gap (never counted twice). */
  #backfilled = false;

  constructor(private readonly options: UiFeedOptions) {
    options.connecting.then(
      (connection) => {
        this.#connection = connection;
        this.#client = createClient({ connection, secret: options.secret, subjectPrefix: options.subjectPrefix });
        if (this.#running) this.#begin();
      },
      () => this.#problems.set('nats', 'not connected to NATS'),
    );
  }

  get viewers(): number {
    return this.#viewers.size;
  }

  /** Subscribe and poll (at once, or as soon as NATS is connected). */
  start(): void {
    if (this.#running || this.#closed) return;
    this.#running = true;
    if (this.#connection !== undefined) this.#begin();
  }

  /** A page's SSE response: the last events and a snapshot at once, then updates. Returns false when full. */
  attach(raw: ServerResponse, filter: TailFilter, headers: Record<string, string> = {}): boolean {
    if (this.#viewers.size >= MAX_VIEWERS || this.#closed) return false;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    this.start();
    const viewer: Viewer = { sse: new PageStream(raw, HEARTBEAT_MS, headers), filter, pending: [], skipped: 0 };
    this.#viewers.add(viewer);
    raw.on('close', () => this.#detach(viewer));
    this.#sendTail(viewer);
    viewer.sse.event(this.snapshot(), 'snapshot');
    return true;
  }

  snapshot(): Record<string, unknown> {
    return {
      at: new Date().toISOString(),
      secret_required: this.options.secret !== undefined,
      workers: this.#workers,
      aggregators: this.#aggregators,
      traffic: this.window.traffic(),
      spend: this.#spend ?? null,
      deployments: this.#board.rows(),
      limits: {
        available: this.options.standing !== undefined,
        note: this.options.limitsNote ?? null,
        rows: this.#limits,
        refused: this.window.refused().slice(0, 20),
      },
      problems: [...this.#problems.values()],
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const viewer of this.#viewers) viewer.sse.end();
    this.#viewers.clear();
    this.#stop();
  }

  #detach(viewer: Viewer): void {
    if (!this.#viewers.delete(viewer)) return;
    viewer.sse.end();
    const idle = this.options.idleStopMs;
    if (this.#viewers.size === 0 && idle !== undefined) {
      this.#idleTimer = setTimeout(() => this.#stop(), idle);
      this.#idleTimer.unref();
    }
  }

  #stop(): void {
    this.#running = false;
    if (this.#idleTimer !== undefined) clearTimeout(this.#idleTimer);
    for (const timer of this.#timers.splice(0)) clearInterval(timer);
    this.#subscription?.unsubscribe();
    this.#subscription = undefined;
  }

  #begin(): void {
    const connection = this.#connection;
    if (connection === undefined || this.#subscription !== undefined) return;
    const subject = subjectsFor(this.options.subjectPrefix).usageAll;
    this.#subscription = connection.subscribe(subject, {
      callback: (error, message) => {
        if (error !== null) {
          this.#problems.set('events', `cannot subscribe to ${subject}: ${error.message}`);
          return;
        }
        try {
          const parsed = usageEventSchema.safeParse(message.json());
          if (!parsed.success) return;
          if (this.#liveDuringBackfill !== undefined && this.#liveDuringBackfill.size < MAX_BACKFILL_OVERLAP)
            this.#liveDuringBackfill.add(usageEventKey(parsed.data));
          this.#deliver(this.window.add(parsed.data));
        } catch {
          // Not JSON: not an event.
        }
      },
    });
    if (!this.#backfilled) {
      this.#backfilled = true;
      void this.#backfill(connection);
    }
    const intervals = this.options.intervals ?? {};
    const every = (name: string, ms: number, poll: () => Promise<void>) => {
      const run = () => {
        if (this.#busy.has(name)) return;
        this.#busy.add(name);
        poll()
          .then(() => this.#problems.delete(name))
          .catch((error: unknown) =>
            this.#problems.set(name, `${name}: ${error instanceof Error ? error.message : String(error)}`),
          )
          .finally(() => {
            this.#busy.delete(name);
            if (name === 'services') this.#broadcastSnapshot();
          });
      };
      run();
      const timer = setInterval(run, ms);
      timer.unref();
      this.#timers.push(timer);
    };
    const servicesMs = intervals.servicesMs ?? 2_000;
    const wait = Math.max(200, Math.min(1_500, servicesMs - 100));
    every('services', servicesMs, async () => {
      const [workers, aggregators] = await Promise.all([
        pollWorkers(connection, wait),
        pollAggregators(connection, wait),
        this.#pollDeployments(wait),
      ]);
      this.#workers = workers;
      this.#aggregators = aggregators;
      if (workers.length === 0) this.#problems.set('workers', 'no llm-proxy worker answers $SRV.STATS.llm-proxy');
      else this.#problems.delete('workers');
      if (aggregators.length === 0)
        this.#problems.set('aggregators', 'no aggregator answers $SRV.STATS.llm-usage: usage queries go unanswered');
      else this.#problems.delete('aggregators');
    });
    every('spend', intervals.spendMs ?? 5_000, async () => {
      if (this.#client === undefined) return;
      this.#spend = { ...(await pollSpend(this.#client, 3_000)), at: new Date().toISOString() };
    });
    const standing = this.options.standing;
    if (standing !== undefined) every('limits', intervals.limitsMs ?? 10_000, () => this.#pollLimits(standing));
    const flush = setInterval(() => this.#flush(), intervals.flushMs ?? 500);
    flush.unref();
    this.#timers.push(flush);
  }

  async #pollDeployments(timeoutMs: number): Promise<void> {
    if (this.#client === undefined) return;
    try {
      await this.#board.poll(this.#client, timeoutMs);
      this.window.setKnownModels(this.#board.models);
      this.#problems.delete('deployments');
    } catch (error) {
      this.#problems.set('deployments', `deployments: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  /** The agents worth a look: the latest in the tail, the top spenders today, those refused by a limit. */
  async #pollLimits(read: StandingReader): Promise<void> {
    const agents = new Set<string>();
    for (const event of this.window.tail().reverse()) if (event.agent_id !== null) agents.add(event.agent_id);
    for (const row of this.#spend?.today.agents ?? []) agents.add(row.key);
    for (const refused of this.window.refused()) agents.add(refused.agent_id);
    agents.delete('(none)');
    this.#limits = await pollLimits(
      read,
      [...agents].map((agentId) => ({ agentId, microdaoId: this.window.microdaoOf(agentId) })),
    );
  }

  async #backfill(connection: NatsConnection): Promise<void> {
    this.#liveDuringBackfill = new Set();
    try {
      const events = await readLastHour(connection, this.options.usageStream ?? USAGE_STREAM_NAME);
      const live = this.#liveDuringBackfill;
      this.window.addHistory(events.filter((event) => !live.has(usageEventKey(event))));
      this.#problems.delete('history');
      // Pages already open get the tail again, history first.
      if (events.length > 0) for (const viewer of this.#viewers) this.#sendTail(viewer);
    } catch (error) {
      this.options.logger.info(
        { err: error },
        'the operations page could not read the last hour from the usage stream: live events only',
      );
      this.#problems.set('history', 'the last hour could not be read from the usage stream: live events only');
    } finally {
      this.#liveDuringBackfill = undefined;
    }
  }

  /** The whole tail (matching the page's filter), replacing what the page holds. */
  #sendTail(viewer: Viewer): void {
    const tail = this.window.tail().filter((event) => matchesFilter(event, viewer.filter));
    viewer.sse.event({ events: tail.slice(-MAX_EVENTS_PER_FLUSH), skipped: 0, reset: true }, 'events');
    viewer.pending = [];
    viewer.skipped = 0;
  }

  #deliver(event: TailEvent): void {
    for (const viewer of this.#viewers) {
      if (!matchesFilter(event, viewer.filter)) continue;
      if (viewer.pending.length < MAX_EVENTS_PER_FLUSH) viewer.pending.push(event);
      else viewer.skipped += 1;
    }
  }

  #writable(viewer: Viewer): boolean {
    if (viewer.sse.buffered <= MAX_BUFFERED_BYTES) return true;
    this.#detach(viewer);
    return false;
  }

  #flush(): void {
    for (const viewer of this.#viewers) {
      if (viewer.pending.length === 0 && viewer.skipped === 0) continue;
      if (!this.#writable(viewer)) continue;
      viewer.sse.event({ events: viewer.pending, skipped: viewer.skipped }, 'events');
      viewer.pending = [];
      viewer.skipped = 0;
    }
  }

  #broadcastSnapshot(): void {
    if (this.#viewers.size === 0) return;
    const text = `event: snapshot\ndata: ${JSON.stringify(this.snapshot())}\n\n`;
    for (const viewer of this.#viewers) if (this.#writable(viewer)) viewer.sse.write(text);
  }
}
