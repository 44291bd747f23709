/**
 * The `cache` section of `npm run bench` (issue 18): what a response-cache miss and hit cost, in the
 * bench process, one operation at a time. (a) The worker's memory LRU alone (MemoryLruCache get/set);
 * (b) the tiered cache the worker runs (memory in front of the JetStream KV bucket) against the bench's
 * nats-server: a set (memory and KV), a hit served from memory, a hit served from the KV (a second
 * tiered cache whose memory tier is emptied, untimed, before each get: another worker, or a restarted
 * one), and a miss (both tiers asked). For a realistic answer (~2 KB of JSON) and a large one (~1 MB);
 * the large one also chunked as on a server with the default max_payload (1 MiB: two parts and a
 * manifest, checked by sha256 on read).
 *
 * Rounds are interleaved (every case once per round) so that a burst of outside load hurts one round
 * rather than one case; each figure is the median of its rounds, with the rounds' low and high (with 6
 * rounds that range is the sign-test 95 % interval of the median, stats.ts `medianInterval`).
 */
import { createHash, randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  encodeAnswer,
  MemoryLruCache,
  NatsKvCache,
  TieredCache,
  type CachedAnswer,
  type CacheKey,
  type CacheStore,
} from '../src/cache/index.js';
import {
  DEFAULT_CACHE_MAX_ENTRY_BYTES,
  DEFAULT_CACHE_MEMORY_MAX_BYTES,
  cacheSchema,
} from '../src/config/cache-schema.js';
import type { ChatReply } from '../src/contract/reply.js';
import { medianInterval, summarize } from './stats.js';

/** A figure over the rounds: their median, low and high. */
export interface RoundFigure {
  median: number;
  low: number;
  high: number;
}

export interface CacheCase {
  /** `realistic` (~2 KB) or `large` (~1 MB). */
  size: string;
  answerBytes: number;
  store: string;
  operation: string;
  /** One operation at a time: 1 / the mean time of an operation. */
  opsPerSecond: RoundFigure;
  p50Us: RoundFigure;
  p99Us: RoundFigure;
  /** Operations timed over every round. */
  ops: number;
}

export type CacheSection = {
  rounds: number;
  roundMs: Record<string, number>;
  natsServer: string;
  maxPayload: number;
  cases: CacheCase[];
  /** Store errors counted while measuring (timeouts, unreachable): 0 when the figures are clean. */
  storeErrors: number;
  /** How long the section took, filling the stores included. */
  seconds: number;
  skipped: string[];
};

export interface CacheSectionContext {
  natsUrl: string;
  natsVersion: string;
  quick: boolean;
  log(line: string): void;
}

/** The default nats-server max_payload (1 MiB) less the store's header margin: where a ~1 MB answer is chunked. */
const DEFAULT_SERVER_MAX_VALUE = 1024 * 1024 - 1024;
const MODEL = 'bench-model';

const WORDS =
  'the lighthouse keeper counted ships passing in the fog and wrote each name into a ledger by lamplight while gulls circled the rocks below'.split(
    ' ',
  );

/** Text of `length` characters, words and punctuation as an answer has (no long runs of one character). */
function prose(length: number): string {
  const parts: string[] = [];
  let size = 0;
  for (let index = 0; size < length; index += 1) {
    const word = WORDS[(index * 7 + (index >> 3)) % WORDS.length] as string;
    const piece = index % 17 === 16 ? `${word}.\n` : `${word} `;
    parts.push(piece);
    size += piece.length;
  }
  return parts.join('').slice(0, length);
}

function reply(content: string): ChatReply {
  return {
    content,
    usage: { prompt_tokens: 412, completion_tokens: Math.ceil(content.length / 4), total_tokens: 0 },
    provider: 'openai',
    model_resolved: 'gpt-4.1-mini-2025-04-14',
    latency_ms: 1_840,
    model: MODEL,
    request_id: 'bench-cache-0000',
    finish_reason: 'stop',
    cost_usd: 0.00123,
    cached: false,
  };
}

/** A fresh answer object around `content` (the worker builds one per set, so each set encodes its JSON). */
function answerOf(content: ChatReply): CachedAnswer {
  return { stored_at: Date.now(), model: MODEL, reply: content };
}

let keyCounter = 0;
function freshKey(): CacheKey {
  keyCounter += 1;
  return { model: MODEL, hash: createHash('sha256').update(`bench-cache-${keyCounter}`).digest('base64url') };
}

function keys(count: number): CacheKey[] {
  return Array.from({ length: count }, freshKey);
}

interface CaseRunner {
  store: string;
  operation: string;
  /** Runs one operation; `prepare`, untimed, before it. Throws when the answer is wrong. */
  op(index: number): Promise<void>;
  prepare?(index: number): Promise<void>;
}

interface Samples {
  latenciesMs: number[];
}

async function runFor(runner: CaseRunner, ms: number, maxOps: number, into?: Samples): Promise<number> {
  const until = performance.now() + ms;
  let ops = 0;
  while (ops < maxOps && performance.now() < until) {
    await runner.prepare?.(ops);
    const started = performance.now();
    await runner.op(ops);
    const took = performance.now() - started;
    into?.latenciesMs.push(took);
    ops += 1;
  }
  return ops;
}

function figure(values: number[]): RoundFigure {
  const interval = medianInterval(values);
  const sorted = [...values].sort((a, b) => a - b);
  return {
    median: interval?.median ?? (sorted[Math.floor(sorted.length / 2)] as number),
    low: sorted[0] as number,
    high: sorted[sorted.length - 1] as number,
  };
}

function expectHit(found: CachedAnswer | undefined, what: string): void {
  if (found === undefined) throw new Error(`cache bench: ${what} missed where it should hit`);
}

function expectMiss(found: CachedAnswer | undefined, what: string): void {
  if (found !== undefined) throw new Error(`cache bench: ${what} hit where it should miss`);
}

function memoryStore(): MemoryLruCache {
  const defaults = cacheSchema.parse({});
  return new MemoryLruCache({
    maxBytes: DEFAULT_CACHE_MEMORY_MAX_BYTES,
    maxEntryBytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
    maxEntries: defaults.max_entries,
    ttlMs: defaults.ttl_ms,
  });
}

/** The cases of one answer size, their stores filled (returned, for the caller to close). */
async function casesFor(
  content: ChatReply,
  connection: NatsConnection,
  bucket: string,
  chunked: boolean,
): Promise<{ runners: CaseRunner[]; answerBytes: number; stores: CacheStore[] }> {
  const defaults = cacheSchema.parse({});
  const sample = answerOf(content);
  const answerBytes = encodeAnswer(sample).bytes;
  const kv = (maxValueBytes?: number) =>
    new NatsKvCache({
      connection,
      bucket,
      ttlMs: defaults.ttl_ms,
      maxEntryBytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
      timeoutMs: defaults.store_timeout_ms,
      ...(maxValueBytes === undefined ? {} : { maxValueBytes }),
    });
  // Enough distinct keys that a hit is not always the same entry, few enough for 64 MiB of memory.
  const pool = answerBytes > 100_000 ? 16 : 256;

  const memory = memoryStore();
  const memoryHits = keys(pool);
  for (const key of memoryHits) await memory.set(key, answerOf(content));
  const memorySets = keys(pool);
  const misses = keys(1_024);

  // The worker that stored the answers (its memory has them) and another one (its memory emptied before each get).
  const writer = new TieredCache(memoryStore(), kv());
  const reader = new TieredCache(memoryStore(), kv());
  const tieredHits = keys(pool);
  for (const key of tieredHits) await writer.set(key, answerOf(content));
  const tieredSets = keys(pool);

  const runners: CaseRunner[] = [
    {
      store: 'memory LRU',
      operation: 'set',
      op: (index) => memory.set(memorySets[index % pool] as CacheKey, answerOf(content)),
    },
    {
      store: 'memory LRU',
      operation: 'get, hit',
      op: async (index) => expectHit(await memory.get(memoryHits[index % pool] as CacheKey), 'memory get'),
    },
    {
      store: 'memory LRU',
      operation: 'get, miss',
      op: async (index) => expectMiss(await memory.get(misses[index % misses.length] as CacheKey), 'memory get'),
    },
    {
      store: 'tiered, NATS KV',
      operation: 'set (memory + KV)',
      op: (index) => writer.set(tieredSets[index % pool] as CacheKey, answerOf(content)),
    },
    {
      store: 'tiered, NATS KV',
      operation: 'get, hit from memory',
      op: async (index) => expectHit(await writer.get(tieredHits[index % pool] as CacheKey), 'tiered get (memory)'),
    },
    {
      store: 'tiered, NATS KV',
      operation: 'get, hit from KV (fills memory)',
      prepare: async () => {
        await reader.memory.purge();
      },
      op: async (index) => expectHit(await reader.get(tieredHits[index % pool] as CacheKey), 'tiered get (KV)'),
    },
    {
      store: 'tiered, NATS KV',
      operation: 'get, miss (memory and KV)',
      op: async (index) => expectMiss(await reader.get(misses[index % misses.length] as CacheKey), 'tiered get (miss)'),
    },
  ];
  const stores: CacheStore[] = [memory, writer, reader];
  if (chunked) {
    // As on a nats-server with the default max_payload: the answer goes in parts, then its manifest.
    const chunkedWriter = new TieredCache(memoryStore(), kv(DEFAULT_SERVER_MAX_VALUE));
    const chunkedReader = new TieredCache(memoryStore(), kv(DEFAULT_SERVER_MAX_VALUE));
    const chunkedHits = keys(pool);
    for (const key of chunkedHits) await chunkedWriter.set(key, answerOf(content));
    const chunkedSets = keys(pool);
    const parts = Math.ceil(answerBytes / DEFAULT_SERVER_MAX_VALUE);
    runners.push(
      {
        store: `tiered, NATS KV, ${parts} chunks`,
        operation: 'set (memory + KV)',
        op: (index) => chunkedWriter.set(chunkedSets[index % pool] as CacheKey, answerOf(content)),
      },
      {
        store: `tiered, NATS KV, ${parts} chunks`,
        operation: 'get, hit from KV (fills memory)',
        prepare: async () => {
          await chunkedReader.memory.purge();
        },
        op: async (index) =>
          expectHit(await chunkedReader.get(chunkedHits[index % pool] as CacheKey), 'tiered get (KV, chunked)'),
      },
    );
    stores.push(chunkedWriter, chunkedReader);
  }
  return { runners, answerBytes, stores };
}

export async function runCacheSection(context: CacheSectionContext): Promise<CacheSection> {
  const rounds = context.quick ? 3 : 6;
  const roundMs: Record<string, number> = context.quick
    ? { realistic: 100, large: 150 }
    : { realistic: 250, large: 400 };
  const section: CacheSection = {
    rounds,
    roundMs,
    natsServer: context.natsVersion.replace(/^nats-server:\s*/, ''),
    maxPayload: 0,
    cases: [],
    storeErrors: 0,
    seconds: 0,
    skipped: [],
  };
  const started = performance.now();
  let connection: NatsConnection;
  try {
    connection = await connect({ servers: context.natsUrl, noAsyncTraces: true });
  } catch (error) {
    section.skipped.push(`no NATS at ${context.natsUrl}: ${error instanceof Error ? error.message : String(error)}`);
    return section;
  }
  section.maxPayload = connection.info?.max_payload ?? 0;
  const bucket = `bench_cache_${randomUUID().slice(0, 8)}`;
  const stores: CacheStore[] = [];
  try {
    for (const [size, length, chunked] of [
      ['realistic', 1_700, false],
      ['large', 1024 * 1024, true],
    ] as const) {
      const prepared = await casesFor(reply(prose(length)), connection, bucket, chunked);
      stores.push(...prepared.stores);
      const ms = roundMs[size] as number;
      // Each case once, unmeasured: the JIT and the bucket warmed up.
      for (const runner of prepared.runners) await runFor(runner, ms / 2, 1_000_000);
      const perRound = prepared.runners.map(() => [] as Array<{ opsPerSecond: number; p50: number; p99: number }>);
      const counts = prepared.runners.map(() => 0);
      for (let round = 0; round < rounds; round += 1) {
        for (const [index, runner] of prepared.runners.entries()) {
          const samples: Samples = { latenciesMs: [] };
          const ops = await runFor(runner, ms, 1_000_000, samples);
          const summary = summarize(samples.latenciesMs);
          const totalMs = samples.latenciesMs.reduce((sum, value) => sum + value, 0);
          perRound[index]?.push({
            opsPerSecond: ops / (totalMs / 1000),
            p50: summary.p50 * 1000,
            p99: summary.p99 * 1000,
          });
          counts[index] = (counts[index] as number) + ops;
        }
      }
      for (const [index, runner] of prepared.runners.entries()) {
        const list = perRound[index] ?? [];
        const result: CacheCase = {
          size,
          answerBytes: prepared.answerBytes,
          store: runner.store,
          operation: runner.operation,
          opsPerSecond: figure(list.map((entry) => entry.opsPerSecond)),
          p50Us: figure(list.map((entry) => entry.p50)),
          p99Us: figure(list.map((entry) => entry.p99)),
          ops: counts[index] as number,
        };
        section.cases.push(result);
        context.log(
          `cache: ${size} ${runner.store} ${runner.operation}: ${Math.round(result.opsPerSecond.median)} ops/s, p50 ${result.p50Us.median.toFixed(1)} µs, p99 ${result.p99Us.median.toFixed(1)} µs`,
        );
      }
    }
  } catch (error) {
    section.skipped.push(`stopped: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    for (const store of stores) {
      const counted = store instanceof TieredCache ? store.counters().shared?.errors : undefined;
      section.storeErrors += counted ?? 0;
      await store.close().catch(() => undefined);
    }
    await jetstreamManager(connection)
      .then((manager) => manager.streams.delete(`KV_${bucket}`))
      .catch(() => undefined);
    await connection.close();
  }
  section.seconds = (performance.now() - started) / 1000;
  context.log(`cache: ${section.seconds.toFixed(1)} s`);
  return section;
}

function formatRate(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

function formatUs(value: number): string {
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} ms`;
  if (value >= 1_000) return `${(value / 1000).toFixed(2)} ms`;
  return `${value.toFixed(value < 10 ? 2 : 1)} µs`;
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

export function renderCacheSection(section: CacheSection): string {
  const lines = ['## Response cache, store operations (in process)', ''];
  if (section.cases.length === 0) {
    lines.push(`Skipped: ${section.skipped.join('; ') || 'nothing measured'}.`, '');
    return `${lines.join('\n')}\n`;
  }
  const sizes = [...new Set(section.cases.map((entry) => entry.size))];
  lines.push(
    `One operation at a time in the bench process: the memory LRU alone, and the tiered cache a worker runs (memory in front of a JetStream KV bucket on the bench's nats-server ${section.natsServer}, max_payload ${formatBytes(section.maxPayload)}, file store). A hit from KV is another worker's (or a restarted one's): its memory tier is emptied, untimed, before each get. \`N chunks\`: stored as under a server with the default max_payload (1 MiB): parts, then a manifest; read back with a sha256 check. ops/s is 1 / the mean time of one operation. ${section.rounds} interleaved rounds of ${sizes.map((size) => `${section.roundMs[size]} ms (${size})`).join(', ')} per case; each figure is the median of its rounds, (low–high) over the rounds${section.rounds >= 6 ? ' (with 6 rounds, the 95 % interval of the median)' : ''}. The section took ${section.seconds.toFixed(0)} s.`,
    '',
  );
  for (const size of sizes) {
    const cases = section.cases.filter((entry) => entry.size === size);
    lines.push(
      `**${size} answer** (${formatBytes(cases[0]?.answerBytes ?? 0)} of JSON):`,
      '',
      '| store | operation | ops/s | p50 | p99 | ops timed |',
      '|---|---|---:|---:|---:|---:|',
      ...cases.map(
        (entry) =>
          `| ${entry.store} | ${entry.operation} | ${formatRate(entry.opsPerSecond.median)} (${formatRate(entry.opsPerSecond.low)}–${formatRate(entry.opsPerSecond.high)}) | ${formatUs(entry.p50Us.median)} (${formatUs(entry.p50Us.low)}–${formatUs(entry.p50Us.high)}) | ${formatUs(entry.p99Us.median)} (${formatUs(entry.p99Us.low)}–${formatUs(entry.p99Us.high)}) | ${entry.ops.toLocaleString('en-US')} |`,
      ),
      '',
    );
  }
  if (section.storeErrors > 0)
    lines.push(`Store errors while measuring: ${section.storeErrors} (timeouts or an unreachable server).`, '');
  for (const line of section.skipped) lines.push(`Skipped ${line}.`, '');
  return `${lines.join('\n')}\n`;
}
