/** Messages between the bench (run.ts) and its load-generator process (load.ts), over the IPC channel. */
import type { BenchModelKey } from './bench-config.js';
import type { LatencySummary } from './stats.js';

/** direct: undici → upstream; echo: NATS echo replier; bare: bare forwarder; gateway: llm-proxy worker. */
export type Target = 'direct' | 'echo' | 'bare' | 'gateway';
export const TARGETS: readonly Target[] = ['direct', 'echo', 'bare', 'gateway'];

export interface ClosedJob {
  kind: 'closed';
  target: Target;
  model: BenchModelKey;
  concurrency: number;
  durationMs: number;
  warmupMs: number;
}

/** Sends at `rate` per second by the clock, whatever the replies do; latency counts from the intended send time. */
export interface OpenJob {
  kind: 'open';
  target: Target;
  model: BenchModelKey;
  rate: number;
  durationMs: number;
  warmupMs: number;
}

export interface StreamJob {
  kind: 'stream';
  target: 'direct' | 'gateway';
  model: BenchModelKey;
  count: number;
  concurrency: number;
}

/** `count` requests at once (memory with many in flight). */
export interface BurstJob {
  kind: 'burst';
  target: Target;
  model: BenchModelKey;
  count: number;
  timeoutMs: number;
}

export type LoadJob = ClosedJob | OpenJob | StreamJob | BurstJob;

export interface LoadResult {
  ok: number;
  errors: Record<string, number>;
  elapsedMs: number;
  /** Successful replies per second over the run. */
  throughput: number;
  /** Closed loop and burst: from the send. Open loop: from the intended send time (coordinated-omission safe). */
  latency: LatencySummary;
  /** Open loop only: from the actual send, i.e. without the generator's own lateness. */
  serviceLatency?: LatencySummary;
  /** Open loop only: how late each send went out compared with its schedule. */
  sendLag?: LatencySummary;
  /** Stream jobs: time to first content chunk, and the gaps between content chunks. */
  ttft?: LatencySummary;
  chunkGap?: LatencySummary;
  chunksPerStream?: number;
}

/** One stream's timings, as the load generator saw them. */
export interface StreamTiming {
  ttftMs: number;
  gapsMs: number[];
  chunks: number;
}

export type ToLoadGenerator = { type: 'job'; id: number; job: LoadJob } | { type: 'stop' };
export type FromLoadGenerator =
  | { type: 'ready'; client: 'llm-proxy client' | 'raw nc.request' }
  | { type: 'result'; id: number; result: LoadResult }
  | { type: 'failed'; id: number; message: string };
