/**
 * The bench's results (what results.json holds), the figures derived from
 * them (gateway minus floors, throughput ratio, goals) and the Markdown
 * report. Pure: no I/O.
 */
import type { ProfileSummary } from './cpu-profile.js';
import { type HttpSection, renderHttpSection } from './http-report.js';
import { renderSinkSection, type SinkSection } from './sink-section.js';
import { renderScaleSection, type ScaleSection } from './scale-section.js';
import { renderAdmissionsSection, type AdmissionsSection } from './admissions-section.js';
import { renderCacheSection, type CacheSection } from './cache-section.js';
import type { LoadResult, Target } from './load-protocol.js';
import { medianInterval, type LatencySummary, type MedianInterval } from './stats.js';
import type { ProcessUsage } from './proc-stats.js';

export interface RunRecord {
  target: Target;
  model: string;
  concurrency?: number;
  rate?: number;
  result: LoadResult;
  /** CPU and RSS of every process during the run, by role (worker, nats-server, upstream, load, echo, bare). */
  processes: Record<string, ProcessUsage>;
  /** With --repeat: every round's headline figures (the record's figures are medians over them). */
  repeats?: Array<{ throughput: number; p50: number; p99: number }>;
}

export interface MemoryRecord {
  target: Target;
  inFlight: number;
  rssIdleBytes: number;
  rssPeakBytes: number;
  rssAfterBytes: number;
  result: LoadResult;
}

export interface SoakRecord {
  seconds: number;
  rate: number;
  errorRate: number;
  result: LoadResult;
  rssStartBytes: number;
  rssEndBytes: number;
  rssMaxBytes: number;
  /** Least-squares RSS slope over the second half of the soak. */
  rssSlopeMiBPerMinute: number;
  /** RSS every second: [seconds since start, bytes]. */
  rssSeries: Array<[number, number]>;
}

export interface BenchResults {
  startedAt: string;
  finishedAt: string;
  machine: { cpus: number; cpuModel: string; node: string; natsServer: string; memoryGiB: number };
  layout: { name: string; pinned: boolean; cpus: Record<string, string> };
  options: Record<string, unknown>;
  gatewayClient: string;
  closed: RunRecord[];
  open: RunRecord[];
  stream: RunRecord[];
  memory: MemoryRecord[];
  soak?: SoakRecord;
  /** The HTTP path: direct vs front door vs Portkey (http-section.ts). */
  http?: HttpSection;
  /** The PostgreSQL usage log: events/s of the sink, query times (sink-section.ts). */
  sink?: SinkSection;
  /** The usage aggregator at sizes (scale-section.ts). */
  scale?: ScaleSection;
  /** The shared limiter alone (admissions-section.ts). */
  admissions?: AdmissionsSection;
  /** The response cache's stores in process: miss and hit costs (cache-section.ts). */
  cache?: CacheSection;
  /** `files`: the `.cpuprofile` files the summary was made from (one per worker process, summed). */
  profile?: ProfileSummary & { files: string[] };
  /** The bare forwarder's profile over the same run, for comparison. */
  bareProfile?: ProfileSummary & { files: string[] };
}

function median(values: number[]): number {
  const sorted = values
    .filter((value) => typeof value === 'number' && !Number.isNaN(value))
    .sort((left, right) => left - right);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function medianSummary(summaries: LatencySummary[]): LatencySummary {
  const pick = (key: keyof LatencySummary): number => median(summaries.map((summary) => summary[key]));
  return {
    count: pick('count'),
    min: pick('min'),
    mean: pick('mean'),
    p50: pick('p50'),
    p90: pick('p90'),
    p99: pick('p99'),
    p999: pick('p999'),
    max: pick('max'),
  };
}

/**
 * Several rounds of one point as one record: every figure (throughput, each
 * percentile, CPU, RSS) is the median of that figure over the rounds, errors are
 * summed, and `repeats` keeps each round's headline figures.
 */
export function medianOfRounds(rounds: RunRecord[]): RunRecord {
  const first = rounds[0];
  if (first === undefined) throw new Error('medianOfRounds needs at least one round');
  if (rounds.length === 1) return first;
  const results = rounds.map((round) => round.result);
  const errors: Record<string, number> = {};
  for (const result of results)
    for (const [code, count] of Object.entries(result.errors)) errors[code] = (errors[code] ?? 0) + count;
  const optional = (key: 'serviceLatency' | 'sendLag' | 'ttft' | 'chunkGap'): LatencySummary | undefined => {
    const present = results
      .map((result) => result[key])
      .filter((summary): summary is LatencySummary => summary !== undefined);
    return present.length === 0 ? undefined : medianSummary(present);
  };
  const result: LoadResult = {
    ok: median(results.map((entry) => entry.ok)),
    errors,
    elapsedMs: median(results.map((entry) => entry.elapsedMs)),
    throughput: median(results.map((entry) => entry.throughput)),
    latency: medianSummary(results.map((entry) => entry.latency)),
  };
  for (const key of ['serviceLatency', 'sendLag', 'ttft', 'chunkGap'] as const) {
    const summary = optional(key);
    if (summary !== undefined) result[key] = summary;
  }
  const processes: Record<string, ProcessUsage> = {};
  for (const name of new Set(rounds.flatMap((round) => Object.keys(round.processes)))) {
    const usages = rounds
      .map((round) => round.processes[name])
      .filter((usage): usage is ProcessUsage => usage !== undefined);
    processes[name] = {
      cpuPercent: median(usages.map((usage) => usage.cpuPercent)),
      rssStartBytes: median(usages.map((usage) => usage.rssStartBytes)),
      rssEndBytes: median(usages.map((usage) => usage.rssEndBytes)),
      rssMaxBytes: median(usages.map((usage) => usage.rssMaxBytes)),
    };
  }
  return {
    ...first,
    result,
    processes,
    repeats: results.map((entry) => ({ throughput: entry.throughput, p50: entry.latency.p50, p99: entry.latency.p99 })),
  };
}

export const TARGET_LABELS: Record<Target, string> = {
  direct: 'direct HTTP (floor 1)',
  echo: 'NATS echo (floor 2)',
  bare: 'bare forwarder (floor 3)',
  gateway: 'llm-proxy',
};

/** The process that serves each target, whose CPU and RSS the tables show. */
export const SERVING_PROCESS: Record<Target, string> = {
  direct: 'upstream',
  echo: 'echo',
  bare: 'bare',
  gateway: 'worker',
};

export interface Goals {
  /** Peak gateway throughput / peak bare-forwarder throughput, zero-delay upstream, closed loop. */
  throughputRatio: number | undefined;
  gatewayPeak: number | undefined;
  barePeak: number | undefined;
  /** The closed-loop concurrency of the forwarder's peak, and llm-proxy's share of its throughput there, round by round (paired, as for latency). */
  peakConcurrency: number | undefined;
  ratioPerRound: number[];
  ratioInterval: MedianInterval | undefined;
  /** Open loop at the rate nearest 1,000 req/s: gateway minus bare forwarder. */
  rateForAdded: number | undefined;
  addedP50Ms: number | undefined;
  addedP99Ms: number | undefined;
  /**
   * The same differences round by round (with --repeat: round i of the gateway ran right after
   * round i of the forwarder, so each pair saw the same machine), to show how far they move.
   */
  addedP50PerRound: number[];
  addedP99PerRound: number[];
  /**
   * 95 % interval of the median of those round-by-round differences (`medianInterval`), when
   * there are enough rounds (6 or more): what the goals' verdicts go by, since one difference of
   * two medians moves by as much as the goal between runs on this machine.
   */
  addedP50Interval: MedianInterval | undefined;
  addedP99Interval: MedianInterval | undefined;
  /** Open loop at that rate: CPU µs per request of the worker and of the bare forwarder. */
  gatewayCpuMicros: number | undefined;
  bareCpuMicros: number | undefined;
}

/** The closed-loop record where a target peaked. */
function peakRecord(records: RunRecord[], target: Target): RunRecord | undefined {
  let peak: RunRecord | undefined;
  for (const record of records) {
    if (record.target === target && (peak === undefined || record.result.throughput > peak.result.throughput))
      peak = record;
  }
  return peak;
}

type Round = NonNullable<RunRecord['repeats']>[number];

/** The gateway's rounds set against the forwarder's, pair by pair (round i of each ran back to back); none without 2 or more pairs. */
function pairedRounds(
  gateway: RunRecord | undefined,
  bare: RunRecord | undefined,
  compare: (gateway: Round, bare: Round) => number,
): number[] {
  const gatewayRounds = gateway?.repeats ?? [];
  const bareRounds = bare?.repeats ?? [];
  if (gatewayRounds.length < 2 || gatewayRounds.length !== bareRounds.length) return [];
  return gatewayRounds.map((round, index) => compare(round, bareRounds[index]!));
}

export function computeGoals(results: Pick<BenchResults, 'closed' | 'open'>): Goals {
  const bareAtPeak = peakRecord(results.closed, 'bare');
  const gatewayPeak = peakRecord(results.closed, 'gateway')?.result.throughput;
  const barePeak = bareAtPeak?.result.throughput;
  const rates = [...new Set(results.open.map((record) => record.rate ?? 0))];
  const rateForAdded =
    rates.length === 0
      ? undefined
      : rates.reduce((best, rate) => (Math.abs(rate - 1000) < Math.abs(best - 1000) ? rate : best));
  const atRate = (target: Target): RunRecord | undefined =>
    results.open.find((record) => record.target === target && record.rate === rateForAdded);
  const gateway = atRate('gateway');
  const bare = atRate('bare');
  const gatewayAtPeak = results.closed.find(
    (record) => record.target === 'gateway' && record.concurrency === bareAtPeak?.concurrency,
  );
  const ratioPerRound = pairedRounds(gatewayAtPeak, bareAtPeak, (ours, floor) => ours.throughput / floor.throughput);
  const p50PerRound = pairedRounds(gateway, bare, (ours, floor) => ours.p50 - floor.p50);
  const p99PerRound = pairedRounds(gateway, bare, (ours, floor) => ours.p99 - floor.p99);
  return {
    throughputRatio:
      gatewayPeak !== undefined && barePeak !== undefined && barePeak > 0 ? gatewayPeak / barePeak : undefined,
    gatewayPeak,
    barePeak,
    peakConcurrency: bareAtPeak?.concurrency,
    ratioPerRound,
    ratioInterval: medianInterval(ratioPerRound),
    rateForAdded,
    addedP50Ms:
      gateway !== undefined && bare !== undefined ? gateway.result.latency.p50 - bare.result.latency.p50 : undefined,
    addedP99Ms:
      gateway !== undefined && bare !== undefined ? gateway.result.latency.p99 - bare.result.latency.p99 : undefined,
    addedP50PerRound: p50PerRound,
    addedP99PerRound: p99PerRound,
    addedP50Interval: medianInterval(p50PerRound),
    addedP99Interval: medianInterval(p99PerRound),
    gatewayCpuMicros: gateway === undefined ? undefined : cpuMicrosPerRequest(gateway),
    bareCpuMicros: bare === undefined ? undefined : cpuMicrosPerRequest(bare),
  };
}

export function formatMs(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '–';
  const absolute = Math.abs(value);
  if (absolute >= 100) return value.toFixed(0);
  if (absolute >= 10) return value.toFixed(1);
  if (absolute >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

function formatRate(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? '–' : Math.round(value).toLocaleString('en-US');
}

function formatMiB(bytes: number | undefined): string {
  return bytes === undefined || !Number.isFinite(bytes) ? '–' : (bytes / 1024 / 1024).toFixed(1);
}

function formatPercent(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? '–' : `${value.toFixed(0)}%`;
}

function formatErrors(result: LoadResult): string {
  const entries = Object.entries(result.errors);
  if (entries.length === 0) return '0';
  return entries.map(([code, count]) => `${count} ${code}`).join(', ');
}

function table(header: string[], rows: string[][]): string {
  const lines = [
    `| ${header.join(' | ')} |`,
    `|${header.map((_cell, index) => (index === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
  ];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

function serving(record: RunRecord): ProcessUsage | undefined {
  return record.processes[SERVING_PROCESS[record.target]];
}

/** CPU time the serving process spent per answered request, in microseconds. */
export function cpuMicrosPerRequest(record: RunRecord): number | undefined {
  const usage = serving(record);
  if (usage === undefined || !(record.result.throughput > 0)) return undefined;
  return ((usage.cpuPercent / 100) * 1_000_000) / record.result.throughput;
}

/** CPU time the serving process spent per streamed chunk (the upstream's for direct, the worker's through llm-proxy). */
export function cpuMicrosPerChunk(record: RunRecord): number | undefined {
  const perStream = cpuMicrosPerRequest(record);
  const chunks = record.result.chunksPerStream;
  if (perStream === undefined || chunks === undefined || !(chunks > 0)) return undefined;
  return perStream / chunks;
}

function formatMicros(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? '–' : value.toFixed(0);
}

/** Met, not met or undecided, by where the interval lies against the goal: `ceiling` for at most, else at least. */
function byInterval(interval: MedianInterval, goal: number, ceiling: boolean, range: string): string {
  const met = ceiling ? interval.high <= goal : interval.low >= goal;
  const missed = ceiling ? interval.low > goal : interval.high < goal;
  return `${met ? 'met' : missed ? 'not met' : "undecided at this machine's noise"}, 95% interval of the round-by-round median ${range}`;
}

/**
 * An added latency against its ceiling. With enough paired rounds the verdict goes by the 95 %
 * interval of their median difference (`byInterval`); with fewer only the point estimate is there,
 * and the verdict says so. A negative point estimate means the floor's run was the noisier one: it
 * proves nothing either way.
 */
export function verdict(added: number, limit: number, interval: MedianInterval | undefined): string {
  if (interval !== undefined)
    return byInterval(interval, limit, true, `${formatMs(interval.low)} to ${formatMs(interval.high)} ms`);
  if (added < 0) return 'inconclusive: negative, the floor was the noisier run';
  return `${added <= limit ? 'met' : 'not met'} by the point estimate; 6 or more rounds give an interval`;
}

/** The throughput share against its 85 % floor, the same way (by the paired rounds' ratios when there are 6 or more). */
function ratioVerdict(goals: Goals): string {
  const interval = goals.ratioInterval;
  if (interval !== undefined)
    return byInterval(
      interval,
      0.85,
      false,
      `${(interval.low * 100).toFixed(0)} to ${(interval.high * 100).toFixed(0)}%`,
    );
  return `${goals.throughputRatio! >= 0.85 ? 'met' : 'not met'}${goals.ratioPerRound.length > 0 ? ' by the point estimate' : ''}`;
}

export function renderMarkdown(results: BenchResults): string {
  const parts: string[] = [];
  const goals = computeGoals(results);
  parts.push(`## llm-proxy bench (${results.startedAt})`);
  parts.push(
    `Machine: ${results.machine.cpus} × ${results.machine.cpuModel}, ${results.machine.memoryGiB.toFixed(0)} GiB, Node ${results.machine.node}, ${results.machine.natsServer}. ` +
      `Layout: ${results.layout.name}${results.layout.pinned ? '' : ' (not pinned)'}: ${Object.entries(
        results.layout.cpus,
      )
        .map(([role, cpus]) => `${role} → cpu ${cpus}`)
        .join(', ')}. Gateway called through: ${results.gatewayClient}. ` +
      `Worker: logging.level ${String(results.options.logLevel ?? 'info')}, logging.requests ${String(results.options.logRequests ?? 'errors')}, limits ${String(results.options.limits ?? 'off')}` +
      `${Array.isArray(results.options.nodeFlags) && results.options.nodeFlags.length > 0 ? `, node flags ${results.options.nodeFlags.join(' ')}` : ''}.`,
  );
  parts.push(
    'Latencies in ms. Closed loop: each of N callers sends its next request when the previous answer arrives. ' +
      'Open loop: requests sent on a fixed clock; latency counts from the intended send time, so queueing shows. ' +
      (Number(results.options.repeat ?? 1) > 1
        ? `Closed/open points: ${String(results.options.repeat)} interleaved rounds, each figure the median of its rounds. `
        : '') +
      '"CPU" and "RSS" are those of the process serving the target (upstream, echo replier, bare forwarder, worker); CPU 100% = one core.',
  );

  if (results.closed.length > 0) {
    parts.push('### Closed loop (zero-delay upstream)');
    parts.push(
      table(
        ['target', 'conc.', 'req/s', 'p50', 'p90', 'p99', 'max', 'errors', 'CPU', 'CPU µs/req', 'RSS MiB', 'nats CPU'],
        results.closed.map((record) => [
          TARGET_LABELS[record.target],
          String(record.concurrency ?? ''),
          formatRate(record.result.throughput),
          formatMs(record.result.latency.p50),
          formatMs(record.result.latency.p90),
          formatMs(record.result.latency.p99),
          formatMs(record.result.latency.max),
          formatErrors(record.result),
          formatPercent(serving(record)?.cpuPercent),
          formatMicros(cpuMicrosPerRequest(record)),
          formatMiB(serving(record)?.rssMaxBytes),
          formatPercent(record.processes['nats-server']?.cpuPercent),
        ]),
      ),
    );
  }

  if (results.open.length > 0) {
    parts.push('### Open loop (zero-delay upstream)');
    parts.push(
      table(
        [
          'target',
          'offered/s',
          'done/s',
          'p50',
          'p90',
          'p99',
          'max',
          'errors',
          'CPU',
          'CPU µs/req',
          'RSS MiB',
          'send lag p99',
        ],
        results.open.map((record) => [
          TARGET_LABELS[record.target],
          formatRate(record.rate),
          formatRate(record.result.throughput),
          formatMs(record.result.latency.p50),
          formatMs(record.result.latency.p90),
          formatMs(record.result.latency.p99),
          formatMs(record.result.latency.max),
          formatErrors(record.result),
          formatPercent(serving(record)?.cpuPercent),
          formatMicros(cpuMicrosPerRequest(record)),
          formatMiB(serving(record)?.rssMaxBytes),
          formatMs(record.result.sendLag?.p99),
        ]),
      ),
    );
    const rates = [...new Set(results.open.map((record) => record.rate ?? 0))];
    const find = (target: Target, rate: number): RunRecord | undefined =>
      results.open.find((record) => record.target === target && record.rate === rate);
    const rows: string[][] = [];
    for (const rate of rates) {
      const gateway = find('gateway', rate);
      if (gateway === undefined) continue;
      for (const floor of ['bare', 'echo', 'direct'] as const) {
        const floorRecord = find(floor, rate);
        if (floorRecord === undefined) continue;
        rows.push([
          `${formatRate(rate)} req/s`,
          TARGET_LABELS[floor],
          formatMs(gateway.result.latency.p50 - floorRecord.result.latency.p50),
          formatMs(gateway.result.latency.p90 - floorRecord.result.latency.p90),
          formatMs(gateway.result.latency.p99 - floorRecord.result.latency.p99),
        ]);
      }
    }
    if (rows.length > 0) {
      parts.push('### Added latency: llm-proxy minus each floor (open loop)');
      parts.push(table(['rate', 'floor', 'Δp50', 'Δp90', 'Δp99'], rows));
    }
  }

  if (results.stream.length > 0) {
    parts.push('### Streaming (20 chunks, 10 ms apart, from the upstream)');
    parts.push(
      table(
        [
          'target',
          'concurrency',
          'streams',
          'TTFT p50',
          'TTFT p99',
          'gap p50',
          'gap p99',
          'gap max',
          'whole p50',
          'chunks/stream',
          'errors',
          'CPU µs/chunk',
        ],
        results.stream.map((record) => [
          TARGET_LABELS[record.target],
          String(record.concurrency ?? ''),
          String(record.result.ok),
          formatMs(record.result.ttft?.p50),
          formatMs(record.result.ttft?.p99),
          formatMs(record.result.chunkGap?.p50),
          formatMs(record.result.chunkGap?.p99),
          formatMs(record.result.chunkGap?.max),
          formatMs(record.result.latency.p50),
          (record.result.chunksPerStream ?? 0).toFixed(1),
          formatErrors(record.result),
          formatMicros(cpuMicrosPerChunk(record)),
        ]),
      ),
    );
  }

  if (results.memory.length > 0) {
    parts.push('### Memory with requests in flight (upstream answers after 2 s)');
    parts.push(
      table(
        ['target', 'in flight', 'RSS idle MiB', 'RSS peak MiB', 'RSS after MiB', 'ok', 'errors', 'p50'],
        results.memory.map((record) => [
          TARGET_LABELS[record.target],
          String(record.inFlight),
          formatMiB(record.rssIdleBytes),
          formatMiB(record.rssPeakBytes),
          formatMiB(record.rssAfterBytes),
          String(record.result.ok),
          formatErrors(record.result),
          formatMs(record.result.latency.p50),
        ]),
      ),
    );
  }

  if (results.soak !== undefined) {
    const soak = results.soak;
    parts.push(
      `### Soak: llm-proxy, ${soak.seconds} s at ${soak.rate} req/s, ${(soak.errorRate * 100).toFixed(0)}% upstream 500s`,
    );
    parts.push(
      table(
        ['ok', 'errors', 'p50', 'p99', 'RSS start MiB', 'RSS end MiB', 'RSS max MiB', 'RSS slope (2nd half)'],
        [
          [
            String(soak.result.ok),
            formatErrors(soak.result),
            formatMs(soak.result.latency.p50),
            formatMs(soak.result.latency.p99),
            formatMiB(soak.rssStartBytes),
            formatMiB(soak.rssEndBytes),
            formatMiB(soak.rssMaxBytes),
            Number.isFinite(soak.rssSlopeMiBPerMinute) ? `${soak.rssSlopeMiBPerMinute.toFixed(2)} MiB/min` : '–',
          ],
        ],
      ),
    );
  }

  if (results.http !== undefined) parts.push(renderHttpSection(results.http));
  if (results.sink !== undefined) parts.push(renderSinkSection(results.sink));
  if (results.scale !== undefined) parts.push(renderScaleSection(results.scale));
  if (results.admissions !== undefined) parts.push(renderAdmissionsSection(results.admissions));
  if (results.cache !== undefined) parts.push(renderCacheSection(results.cache));

  const goalLines: string[] = [];
  if (goals.throughputRatio !== undefined) {
    goalLines.push(
      `- Throughput, zero-delay upstream: llm-proxy peak ${formatRate(goals.gatewayPeak)} req/s vs bare forwarder ${formatRate(goals.barePeak)} req/s = ` +
        `**${(goals.throughputRatio * 100).toFixed(0)}%** (goal ≥ 85%: ${ratioVerdict(goals)}).` +
        (goals.ratioPerRound.length > 0
          ? ` Round by round at ${String(goals.peakConcurrency)} callers (the forwarder's peak): ${goals.ratioPerRound.map((ratio) => `${(ratio * 100).toFixed(0)}%`).join(', ')}.`
          : ''),
    );
  }
  if (goals.addedP50Ms !== undefined && goals.addedP99Ms !== undefined) {
    goalLines.push(
      `- Added latency at ${formatRate(goals.rateForAdded)} req/s (llm-proxy minus bare forwarder): p50 **${formatMs(goals.addedP50Ms)} ms** (goal ≤ 0.1: ${verdict(goals.addedP50Ms, 0.1, goals.addedP50Interval)}), ` +
        `p99 **${formatMs(goals.addedP99Ms)} ms** (goal ≤ 0.5: ${verdict(goals.addedP99Ms, 0.5, goals.addedP99Interval)}).` +
        (goals.addedP50PerRound.length > 0
          ? ` Round by round: p50 ${goals.addedP50PerRound.map((value) => formatMs(value)).join(', ')} ms; p99 ${goals.addedP99PerRound.map((value) => formatMs(value)).join(', ')} ms.`
          : ''),
    );
  }
  if (goals.gatewayCpuMicros !== undefined && goals.bareCpuMicros !== undefined) {
    goalLines.push(
      `- CPU per request at ${formatRate(goals.rateForAdded)} req/s: llm-proxy worker ${formatMicros(goals.gatewayCpuMicros)} µs, bare forwarder ${formatMicros(goals.bareCpuMicros)} µs ` +
        `(the throughput a core can give is about 10⁶ / these).`,
    );
  }
  if (goalLines.length > 0) {
    parts.push('### Goals (issue 7)');
    parts.push(goalLines.join('\n'));
  }

  const profileTable = (title: string, profile: ProfileSummary & { files: string[] }): void => {
    parts.push(
      `### ${title}: top self time (${formatMs(profile.busyMs)} ms busy of ${formatMs(profile.totalMs)} ms sampled)`,
    );
    parts.push(
      table(
        ['function', 'where', 'self ms', '% of busy'],
        profile.entries.map((entry) => [
          `\`${entry.functionName}\``,
          entry.url === '' ? '(native)' : `${entry.url}:${entry.lineNumber}`,
          formatMs(entry.selfMs),
          `${entry.percentOfBusy.toFixed(1)}%`,
        ]),
      ),
    );
    if (profile.files.length > 0) {
      parts.push(
        `Profile${profile.files.length > 1 ? 's (summed above)' : ''}: ${profile.files.map((file) => `\`${file}\``).join(', ')}; ` +
          'open in https://www.speedscope.app or Chrome DevTools (Performance panel, "Load profile") for the call tree and a flame graph.',
      );
    }
  };
  if (results.profile !== undefined) {
    profileTable('Worker CPU profile', results.profile);
    parts.push(
      '**Worker self time by package / project folder:** ' +
        results.profile.buckets
          .filter((bucket) => bucket.percentOfBusy >= 0.5)
          .map((bucket) => `${bucket.bucket} ${bucket.percentOfBusy.toFixed(1)}%`)
          .join(', '),
    );
  }
  if (results.bareProfile !== undefined) profileTable('Bare forwarder CPU profile (same run)', results.bareProfile);
  return `${parts.join('\n\n')}\n`;
}
