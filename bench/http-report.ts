/**
 * The http section's figures, its goals and its Markdown (pure: no processes, no load generator, so
 * that the report and the tests can use it alone). See http-section.ts for how they are measured.
 */
import type { LatencySummary } from './stats.js';

export const HTTP_TARGETS = ['direct', 'llm-proxy', 'portkey'] as const;
export type HttpTarget = (typeof HTTP_TARGETS)[number];

export interface HttpPoint {
  target: HttpTarget;
  connections: number;
  /** 2xx answers per second. */
  throughput: number;
  errors: number;
  latency: LatencySummary;
  /** Cores used by the processes under test (front door + worker(s) + nats-server; Portkey); null for direct. */
  cores: number | null;
}

export interface HttpSection {
  points: HttpPoint[];
  /** Why Portkey was not measured, when it was not. */
  portkeySkipped?: string;
}

export interface HttpGoal {
  name: string;
  met: boolean | undefined;
  detail: string;
}

/** Answers per second per core used; undefined without a CPU figure. */
export function perCore(point: Pick<HttpPoint, 'throughput' | 'cores'>): number | undefined {
  if (point.cores === null || !(point.cores > 0)) return undefined;
  return point.throughput / point.cores;
}

const find = (section: HttpSection, target: HttpTarget, connections: number) =>
  section.points.find((point) => point.target === target && point.connections === connections);

/**
 * The issue's goals: llm-proxy's throughput per core ≥ 5× Portkey's (at the highest connection count
 * both ran, where per-core figures mean most), and at most +0.5 ms p50 over direct at one connection.
 */
export function judgeHttpGoals(section: HttpSection): HttpGoal[] {
  const goals: HttpGoal[] = [];
  const connections = [...new Set(section.points.map((point) => point.connections))].sort((a, b) => b - a);
  const shared = connections.find(
    (count) => find(section, 'llm-proxy', count) !== undefined && find(section, 'portkey', count) !== undefined,
  );
  if (shared === undefined) {
    goals.push({
      name: '≥ 5× Portkey per core',
      met: undefined,
      detail: section.portkeySkipped ?? 'Portkey not measured',
    });
  } else {
    const ours = perCore(find(section, 'llm-proxy', shared)!);
    const theirs = perCore(find(section, 'portkey', shared)!);
    const ratio = ours !== undefined && theirs !== undefined && theirs > 0 ? ours / theirs : undefined;
    goals.push({
      name: '≥ 5× Portkey per core',
      met: ratio === undefined ? undefined : ratio >= 5,
      detail:
        ratio === undefined
          ? 'no CPU figures'
          : `${Math.round(ours!)} vs ${Math.round(theirs!)} req/s per core at ${shared} connections: ${ratio.toFixed(1)}×`,
    });
  }
  const direct = find(section, 'direct', 1);
  const proxy = find(section, 'llm-proxy', 1);
  if (direct === undefined || proxy === undefined) {
    goals.push({ name: '≤ +0.5 ms p50 at 1 connection', met: undefined, detail: 'not measured' });
  } else {
    const added = proxy.latency.p50 - direct.latency.p50;
    goals.push({
      name: '≤ +0.5 ms p50 at 1 connection',
      met: added <= 0.5,
      detail: `p50 ${proxy.latency.p50.toFixed(3)} ms vs direct ${direct.latency.p50.toFixed(3)} ms: +${added.toFixed(3)} ms`,
    });
  }
  return goals;
}

export const ms = (value: number | undefined) => (value === undefined || Number.isNaN(value) ? '–' : value.toFixed(2));

/** The section as Markdown: one row per target and connection count, then the goals. */
export function renderHttpSection(section: HttpSection): string {
  const lines = [
    '### HTTP path (autocannon, OpenAI chat, zero-delay upstream)',
    '',
    '| target | conn. | req/s | cores | req/s per core | p50 | p99 | added p50 | errors |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const point of section.points) {
    const direct = find(section, 'direct', point.connections);
    const rate = perCore(point);
    lines.push(
      `| ${point.target} | ${point.connections} | ${Math.round(point.throughput)} | ${point.cores === null ? '–' : point.cores.toFixed(2)} | ${rate === undefined ? '–' : Math.round(rate)} | ${ms(point.latency.p50)} | ${ms(point.latency.p99)} | ${point.target === 'direct' || direct === undefined ? '–' : `+${ms(point.latency.p50 - direct.latency.p50)}`} | ${point.errors} |`,
    );
  }
  if (section.portkeySkipped !== undefined) lines.push('', `Portkey: skipped (${section.portkeySkipped}).`);
  lines.push('');
  for (const goal of judgeHttpGoals(section))
    lines.push(
      `- ${goal.name}: ${goal.met === undefined ? 'not judged' : goal.met ? 'met' : 'not met'} (${goal.detail})`,
    );
  return lines.join('\n');
}
