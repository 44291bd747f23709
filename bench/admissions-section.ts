/**
 * The `admissions` section of `npm run bench`: the shared limiter alone, as issue 21 asks it to hold
 * ("2,000 admissions a second with 64 in flight on the nats backend" for a limit every agent shares).
 * Four limiters on four connections stand for four workers; 64 callers (1,000 agents) admit and settle
 * one request after another for a few seconds; every limit is on and out of reach (per agent, and the
 * same on the one model every request names). Measured on nats with slices (the default), nats with
 * slices off (one compare-and-swap per request on the model's key: the hot key), and redis.
 */
import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { limitsSchema } from '../src/config/limits-schema.js';
import { createLimiter, type Limiter } from '../src/limits/index.js';

export interface AdmissionPoint {
  backend: string;
  admissionsPerSecond: number;
  p99Ms: number;
  refused: number;
  conflicts: number;
}

export type AdmissionsSection = { points: AdmissionPoint[]; skipped: string[] };

export interface AdmissionsSectionContext {
  natsUrl: string;
  durationMs: number;
  log(line: string): void;
}

const WORKERS = 4;
const IN_FLIGHT = 64;
const AGENTS = 1_000;
const OUT_OF_REACH = { rpm: 10_000_000, tpm: 10_000_000_000, concurrent: 100_000, daily_usd: 1e9, monthly_usd: 1e9 };

async function measure(
  backend: 'nats' | 'redis',
  slices: boolean,
  context: AdmissionsSectionContext,
): Promise<AdmissionPoint> {
  const config = limitsSchema.parse({
    backend,
    default: OUT_OF_REACH,
    models: { 'bench-shared': OUT_OF_REACH },
    nats_bucket: `bench-admissions-${randomUUID().slice(0, 8)}`,
    redis_key_prefix: `llm-limits-bench-admissions:${process.pid}:${randomUUID().slice(0, 8)}:`,
    shared_slices: { enabled: slices },
  });
  const connections: NatsConnection[] = [];
  const limiters: Limiter[] = [];
  try {
    for (let index = 0; index < WORKERS; index += 1) {
      const connection = await connect({ servers: context.natsUrl });
      connections.push(connection);
      limiters.push(await createLimiter(config, { nats: connection }));
    }
    const latencies: number[] = [];
    let admitted = 0;
    let refused = 0;
    const run = async (untilMs: number, record: boolean) => {
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async (_, caller) => {
          const limiter = limiters[caller % WORKERS] as Limiter;
          let request = 0;
          while (performance.now() < untilMs) {
            request += 1;
            const started = performance.now();
            try {
              const reservation = await limiter.admit({
                requestId: randomUUID(),
                agentId: `agent:bench-${(caller * 997 + request) % AGENTS}`,
                microdaoId: undefined,
                model: 'bench-shared',
                estimatedPromptTokens: 100,
                maxCompletionTokens: 100,
                estimatedMaxCostUsd: 0.0002,
              });
              await reservation.settle({ promptTokens: 100, completionTokens: 50, costUsd: 0.0001 });
              if (record) {
                admitted += 1;
                latencies.push(performance.now() - started);
              }
            } catch {
              if (record) refused += 1;
            }
          }
        }),
      );
    };
    await run(performance.now() + 1_000, false);
    const started = performance.now();
    await run(started + context.durationMs, true);
    const seconds = (performance.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    const conflicts = limiters.reduce((sum, limiter) => sum + limiter.counters().conflicts, 0);
    return {
      backend: `${backend}${backend === 'nats' ? (slices ? ' (slices)' : ' (slices off)') : ''}`,
      admissionsPerSecond: admitted / seconds,
      p99Ms: latencies[Math.floor(latencies.length * 0.99)] ?? 0,
      refused,
      conflicts,
    };
  } finally {
    await Promise.all(limiters.map((limiter) => limiter.close().catch(() => undefined)));
    await Promise.all(connections.map((connection) => connection.close()));
  }
}

export async function runAdmissionsSection(context: AdmissionsSectionContext): Promise<AdmissionsSection> {
  const points: AdmissionPoint[] = [];
  const skipped: string[] = [];
  for (const [backend, slices] of [
    ['nats', true],
    ['nats', false],
    ['redis', true],
  ] as const) {
    try {
      context.log(`admissions: ${backend}${backend === 'nats' ? ` slices ${slices ? 'on' : 'off'}` : ''}`);
      points.push(await measure(backend, slices, context));
    } catch (error) {
      skipped.push(`${backend}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return { points, skipped };
}

export function renderAdmissionsSection(section: AdmissionsSection): string {
  const lines = [
    '## Shared limits, the limiter alone',
    '',
    `${WORKERS} limiters (one per connection, as ${WORKERS} workers), ${IN_FLIGHT} requests in flight over ${AGENTS} agents, every limit on and out of reach per agent and on the one model they all use; admit then settle.`,
    '',
    '| backend | admissions/s | p99 ms (admit + settle) | refused | CAS conflicts |',
    '|---|---:|---:|---:|---:|',
    ...section.points.map(
      (point) =>
        `| ${point.backend} | ${Math.round(point.admissionsPerSecond).toLocaleString('en-US')} | ${point.p99Ms.toFixed(1)} | ${point.refused} | ${point.conflicts} |`,
    ),
    ...section.skipped.map((line) => `\nSkipped ${line}.`),
    '',
  ];
  return `${lines.join('\n')}\n`;
}
