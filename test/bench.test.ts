/**
 * The bench's pure parts on known inputs: percentiles and summaries, the
 * CPU-profile summary, /proc parsing, flags, the goals, the
 * ready-line handshake with a child process. The
 * benchmark itself is run with `npm run bench`, not here.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnManaged } from '../bench/processes.js';
import { bucketOf, summarizeProfile, mergeProfiles, shortenUrl, type CpuProfile } from '../bench/cpu-profile.js';
import { buildWorkerConfig, bareForwarderRoutes, BENCH_MODELS } from '../bench/bench-config.js';
import { parseBenchOptions } from '../bench/options.js';
import { judgeHttpGoals, perCore, renderHttpSection, type HttpPoint, type HttpTarget } from '../bench/http-report.js';
import { portkeyScript } from '../bench/http-section.js';
import { renderCacheSection, type CacheSection } from '../bench/cache-section.js';
import { parseStatCpuTicks, parseStatusRssBytes, usageFromSamples } from '../bench/proc-stats.js';
import {
  computeGoals,
  cpuMicrosPerChunk,
  cpuMicrosPerRequest,
  medianOfRounds,
  renderMarkdown,
  verdict,
  type BenchResults,
  type RunRecord,
} from '../bench/report.js';
import { linearSlope, medianInterval, percentile, summarize } from '../bench/stats.js';
import { FAKE_CONTENT, parseBehaviour, splitContent } from '../bench/upstream.js';
import { parseConfigText } from '../src/config/index.js';
import type { LoadResult } from '../bench/load-protocol.js';

describe('bench statistics', () => {
  it('takes nearest-rank percentiles of 1..100', () => {
    const sorted = Array.from({ length: 100 }, (_, index) => index + 1);
    assert.equal(percentile(sorted, 50), 50);
    assert.equal(percentile(sorted, 90), 90);
    assert.equal(percentile(sorted, 99), 99);
    assert.equal(percentile(sorted, 99.9), 100);
    assert.equal(percentile(sorted, 100), 100);
    assert.equal(percentile(sorted, 0), 1);
  });

  it('takes percentiles of small and empty sets, and refuses out-of-range ranks', () => {
    assert.equal(percentile([7], 99), 7);
    assert.equal(percentile([1, 2], 50), 1);
    assert.equal(percentile([1, 2], 51), 2);
    assert.ok(Number.isNaN(percentile([], 50)));
    assert.throws(() => percentile([1], 101), RangeError);
  });

  it('summarises unsorted samples numerically, not as strings', () => {
    const summary = summarize([10, 9, 100, 2, 1, 3, 8, 7, 6, 5, 4]);
    assert.equal(summary.count, 11);
    assert.equal(summary.min, 1);
    assert.equal(summary.max, 100);
    assert.equal(summary.p50, 6);
    assert.equal(summary.p90, 10);
    assert.equal(summary.p99, 100);
    assert.equal(summary.mean, 155 / 11);
  });

  it('summarises nothing as NaN', () => {
    const summary = summarize([]);
    assert.equal(summary.count, 0);
    assert.ok(Number.isNaN(summary.p50));
  });

  it('fits a slope by least squares', () => {
    assert.equal(
      linearSlope([
        { x: 0, y: 1 },
        { x: 1, y: 3 },
        { x: 2, y: 5 },
      ]),
      2,
    );
    assert.equal(
      linearSlope([
        { x: 0, y: 4 },
        { x: 1, y: 4 },
        { x: 2, y: 4 },
      ]),
      0,
    );
    assert.ok(Number.isNaN(linearSlope([{ x: 1, y: 1 }])));
    assert.ok(
      Number.isNaN(
        linearSlope([
          { x: 1, y: 1 },
          { x: 1, y: 2 },
        ]),
      ),
    );
  });

  it('gives the sign-test interval of a median: ranks from the binomial, none for too few values', () => {
    // Ten values: P(B ≤ 1) = 11/1024 ≤ 2.5 % < P(B ≤ 2) = 56/1024, so the 2nd smallest and the 2nd largest.
    const ten = medianInterval([0.9, -0.2, 0.1, 0.3, 0.05, 0.2, 0.15, 0.6, 0.12, 0.08])!;
    assert.equal(ten.low, 0.05);
    assert.equal(ten.high, 0.6);
    assert.ok(Math.abs(ten.median - 0.135) < 1e-12);
    assert.ok(Math.abs(ten.coverage - (1 - 22 / 1024)) < 1e-12);
    // Six values: P(B = 0) = 1/64 ≤ 2.5 %: smallest to largest, 96.9 %.
    const six = medianInterval([3, 1, 2, 6, 5, 4])!;
    assert.deepEqual([six.low, six.high, six.median], [1, 6, 3.5]);
    assert.ok(Math.abs(six.coverage - 62 / 64) < 1e-12);
    // Five values: even min..max covers only 1 − 2/32 = 93.75 %.
    assert.equal(medianInterval([1, 2, 3, 4, 5]), undefined);
    assert.equal(medianInterval([]), undefined);
    assert.ok(medianInterval([1, 2, 3, 4, 5], 0.9) !== undefined, 'a lower level needs fewer values');
  });
});

describe('bench CPU profile summary', () => {
  const profile: CpuProfile = {
    startTime: 0,
    endTime: 10_000,
    nodes: [
      { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1 }, children: [2, 3, 4, 5] },
      { id: 2, callFrame: { functionName: '(idle)', url: '', lineNumber: -1 } },
      { id: 3, callFrame: { functionName: 'parse', url: 'file:///app/node_modules/zod/lib/types.js', lineNumber: 9 } },
      {
        id: 4,
        callFrame: { functionName: 'handle', url: 'file:///app/dist/worker/request-handler.js', lineNumber: 41 },
      },
      // Same function reached by another path: summed with node 3.
      { id: 5, callFrame: { functionName: 'parse', url: 'file:///app/node_modules/zod/lib/types.js', lineNumber: 9 } },
    ],
    // Each delta is the time up to that sample; the interval after a sample is charged to it.
    samples: [2, 3, 4, 5, 2],
    timeDeltas: [0, 5_000, 3_000, 1_000, 1_000],
  };

  it('sums self time per function, leaves idle out of the ranking, and ranks by self time', () => {
    const summary = summarizeProfile(profile, 15);
    assert.equal(summary.totalMs, 10);
    assert.equal(summary.idleMs, 5);
    assert.equal(summary.busyMs, 5);
    assert.deepEqual(
      summary.entries.map((entry) => [entry.functionName, entry.url, entry.lineNumber, entry.selfMs]),
      [
        ['parse', 'zod/lib/types.js', 10, 4],
        ['handle', 'dist/worker/request-handler.js', 42, 1],
      ],
    );
    assert.equal(summary.entries[0]!.percentOfBusy, 80);
    assert.deepEqual(summary.buckets, [
      { bucket: 'zod', selfMs: 4, percentOfBusy: 80 },
      { bucket: 'llm-proxy/worker', selfMs: 1, percentOfBusy: 20 },
    ]);
    assert.equal(summarizeProfile(profile, 1).entries.length, 1);
  });

  it('merges profiles without mixing their node ids', () => {
    const merged = summarizeProfile(mergeProfiles([profile, profile]), 15);
    assert.equal(merged.busyMs, 10);
    assert.equal(merged.entries[0]!.selfMs, 8);
  });

  it('buckets functions by package, project folder, Node and native frames', () => {
    assert.equal(bucketOf('request', 'file:///w/node_modules/@nats-io/nats-core/lib/nats.js'), '@nats-io/nats-core');
    assert.equal(bucketOf('_parse', 'file:///w/node_modules/zod/v3/types.js'), 'zod');
    assert.equal(bucketOf('handle', 'file:///w/dist/worker/request-handler.js'), 'llm-proxy/worker');
    // The bench's own build: its scripts, and the src files it imports (the client in the load generator).
    assert.equal(bucketOf('forward', 'file:///w/.bench-build/bench/bare-forwarder.js'), 'llm-proxy/bench');
    assert.equal(bucketOf('chat', 'file:///w/.bench-build/src/client/client.js'), 'llm-proxy/client');
    assert.equal(bucketOf('emit', 'node:events'), 'node');
    assert.equal(bucketOf('(garbage collector)', ''), '(garbage collector)');
    assert.equal(bucketOf('writeBuffer', ''), 'native');
  });

  it('shortens script URLs', () => {
    assert.equal(
      shortenUrl('file:///work/main/node_modules/@nats-io/nats-core/lib/protocol.js'),
      '@nats-io/nats-core/lib/protocol.js',
    );
    assert.equal(shortenUrl('file:///work/main/dist/worker/request-handler.js'), 'dist/worker/request-handler.js');
    assert.equal(
      shortenUrl('file:///work/main/.bench-build/bench/bare-forwarder.js'),
      '.bench-build/bench/bare-forwarder.js',
    );
    assert.equal(shortenUrl('node:internal/streams/readable'), 'node:internal/streams/readable');
  });
});

describe('bench /proc parsing', () => {
  it('reads utime + stime after a command name holding spaces and parentheses', () => {
    const line =
      '4242 (node (bench) x) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 50 0 0 20 0 11 0 100 1000000 2500 18446744073709551615';
    assert.equal(parseStatCpuTicks(line), 300);
  });

  it('reads VmRSS in bytes', () => {
    assert.equal(
      parseStatusRssBytes('Name:\tnode\nVmHWM:\t  200 kB\nVmRSS:\t  123456 kB\nThreads:\t11\n'),
      123456 * 1024,
    );
    assert.throws(() => parseStatusRssBytes('Name:\tnode\n'));
  });

  it('turns samples into CPU share and RSS', () => {
    const usage = usageFromSamples([
      { atMs: 0, rssBytes: 100, cpuMs: 1000 },
      { atMs: 500, rssBytes: 300, cpuMs: 1200 },
      { atMs: 1000, rssBytes: 200, cpuMs: 1500 },
    ]);
    assert.deepEqual(usage, { cpuPercent: 50, rssStartBytes: 100, rssEndBytes: 200, rssMaxBytes: 300 });
    assert.equal(usageFromSamples([]), undefined);
  });
});

describe('bench flags and config', () => {
  it('has defaults, a quick mode and strict validation', () => {
    const defaults = parseBenchOptions([]);
    assert.deepEqual(defaults.concurrencies, [1, 16, 64, 256]);
    assert.deepEqual(defaults.rates, [500, 1000, 2000, 3000]);
    assert.equal(defaults.soakSeconds, 180);
    assert.equal(defaults.layout, 'worker-alone');
    assert.equal(defaults.outDir, 'bench-results');
    const quick = parseBenchOptions(['--quick', '--only', 'closed,soak', '--duration-ms', '2000', '--cpu-prof']);
    assert.deepEqual(quick.sections, ['closed', 'soak']);
    assert.equal(quick.durationMs, 2000);
    assert.equal(quick.soakSeconds, 10);
    assert.equal(quick.cpuProf, true);
    assert.throws(() => parseBenchOptions(['--only', 'closd']), /unknown "closd"/);
    assert.throws(() => parseBenchOptions(['--rates', '500,x']), /positive numbers/);
    assert.deepEqual(parseBenchOptions([]).nodeFlags, []);
    assert.deepEqual(parseBenchOptions(['--node-flags=--max-semi-space-size=32  --trace-gc']).nodeFlags, [
      '--max-semi-space-size=32',
      '--trace-gc',
    ]);
    assert.throws(() => parseBenchOptions(['--node-flags=trace-gc']), /start with "--"/);
    assert.equal(parseBenchOptions(['--log-requests', 'all']).logRequests, 'all');
    assert.throws(() => parseBenchOptions(['--log-requests', 'some']), /unknown "some"/);
    assert.throws(() => parseBenchOptions(['--layout', 'diagonal']), /layout/);
    assert.throws(() => parseBenchOptions(['--duration']), /duration/);
  });

  it('generates a worker config the project loader accepts, with limits and cache off', () => {
    const text = buildWorkerConfig({ upstreamOrigin: 'http://127.0.0.1:9999', maxInFlight: 2048 });
    const config = parseConfigText(text, 'bench.yaml');
    assert.equal(config.worker.max_in_flight, 2048);
    assert.equal(config.cache.enabled, false);
    assert.equal(config.limits.enabled, false);
    assert.equal(config.logging.level, 'info');
    assert.equal(config.models.get(BENCH_MODELS.slow.name)?.deployments[0]?.physical_name, 'fake-slow');
    assert.ok(text.includes('http://127.0.0.1:9999/fake/delay=2000/v1'));
    assert.ok(bareForwarderRoutes().includes('bench-slow=fake-slow@/fake/delay=2000/v1'));
    // --limits nats: every dimension on, on the shared backend, none within reach.
    const limited = parseConfigText(
      buildWorkerConfig({ upstreamOrigin: 'http://127.0.0.1:9999', maxInFlight: 2048, limits: 'nats' }),
      'bench.yaml',
    );
    assert.equal(limited.limits.enabled, true);
    assert.equal(limited.limits.backend, 'nats');
    assert.ok((limited.limits.default.tpm ?? 0) > 1e9 && (limited.limits.default.daily_usd ?? 0) > 1e6);
    assert.equal(parseBenchOptions(['--limits', 'redis', '--agents', '1000']).limits, 'redis');
    assert.throws(() => parseBenchOptions(['--limits', 'postgres']), /--limits/);
  });

  it('parses upstream behaviours and splits the answer into chunks that join back', () => {
    const defaults = { delayMs: 0, chunks: 8, gapMs: 0, errorRate: 0 };
    assert.deepEqual(parseBehaviour('delay=2000,chunks=20,gap=10,error=0.05', defaults), {
      delayMs: 2000,
      chunks: 20,
      gapMs: 10,
      errorRate: 0.05,
    });
    assert.deepEqual(parseBehaviour('', defaults), defaults);
    assert.throws(() => parseBehaviour('speed=3', defaults), /unknown/);
    assert.equal(splitContent(FAKE_CONTENT, 3).join(''), FAKE_CONTENT);
    assert.equal(splitContent(FAKE_CONTENT, 3).length, 3);
    assert.equal(splitContent(FAKE_CONTENT, 20).length, 20);
    assert.ok(splitContent(FAKE_CONTENT, 20).join('').startsWith(FAKE_CONTENT));
  });
});

describe('bench report', () => {
  const result = (throughput: number, p50: number, p99: number): LoadResult => ({
    ok: 100,
    errors: {},
    elapsedMs: 1000,
    throughput,
    latency: { count: 100, min: p50 / 2, mean: p50, p50, p90: p50 * 2, p99, p999: p99, max: p99 * 2 },
  });
  const record = (target: RunRecord['target'], fields: Partial<RunRecord>, loadResult: LoadResult): RunRecord => ({
    target,
    model: 'bench-fast',
    result: loadResult,
    processes: {
      worker: { cpuPercent: 95, rssStartBytes: 1, rssEndBytes: 1, rssMaxBytes: 100 * 2 ** 20 },
      bare: { cpuPercent: 40, rssStartBytes: 1, rssEndBytes: 1, rssMaxBytes: 50 * 2 ** 20 },
    },
    ...fields,
  });
  const results: BenchResults = {
    startedAt: '2026-11-27T22:00:00.000Z',
    finishedAt: '2026-11-27T22:05:00.000Z',
    machine: { cpus: 2, cpuModel: 'Test CPU', node: 'v20', natsServer: 'nats-server: v2.9.10', memoryGiB: 24 },
    layout: { name: 'split', pinned: true, cpus: { worker: '0', load: '1' } },
    options: {},
    gatewayClient: 'llm-proxy client',
    closed: [
      record('bare', { concurrency: 64 }, result(4000, 10, 20)),
      record('bare', { concurrency: 256 }, result(3800, 40, 90)),
      record('gateway', { concurrency: 64 }, result(3500, 12, 25)),
    ],
    open: [
      record('bare', { rate: 500 }, result(500, 0.5, 1)),
      record('gateway', { rate: 500 }, result(500, 0.6, 1.3)),
      record('bare', { rate: 1000 }, result(1000, 0.6, 1.5)),
      record('gateway', { rate: 1000 }, result(1000, 0.65, 1.9)),
    ],
    stream: [],
    memory: [],
  };

  it('compares peak throughputs and the added latency at the rate nearest 1,000/s', () => {
    const goals = computeGoals(results);
    assert.equal(goals.throughputRatio, 3500 / 4000);
    assert.equal(goals.rateForAdded, 1000);
    assert.ok(Math.abs(goals.addedP50Ms! - 0.05) < 1e-9);
    assert.ok(Math.abs(goals.addedP99Ms! - 0.4) < 1e-9);
    // 95% of a core over 1,000 answers a second is 950 µs each; the bare forwarder's 40% is 400 µs.
    assert.ok(Math.abs(goals.gatewayCpuMicros! - 950) < 1e-9);
    assert.ok(Math.abs(goals.bareCpuMicros! - 400) < 1e-9);
    assert.equal(cpuMicrosPerRequest({ ...results.closed[0]!, processes: {} }), undefined);
  });

  it('prices a streamed chunk: the serving process CPU per stream over the chunks in it', () => {
    // 100 streams a second of 20 chunks at 40% of a core: 4,000 µs a stream, 200 µs a chunk.
    const stream = record('gateway', { concurrency: 32 }, { ...result(100, 1, 2), chunksPerStream: 20 });
    stream.processes.worker!.cpuPercent = 40;
    assert.ok(Math.abs(cpuMicrosPerChunk(stream)! - 200) < 1e-9);
    assert.equal(
      cpuMicrosPerChunk(record('gateway', { concurrency: 32 }, result(100, 1, 2))),
      undefined,
      'no chunk count, no figure',
    );
    assert.match(renderMarkdown({ ...results, stream: [stream] }), /\| llm-proxy \| 32 \| .* \| 20\.0 \| 0 \| 200 \|/);
  });

  it('pairs the rounds of the gateway and the forwarder to show how far the added latency moves', () => {
    assert.deepEqual(computeGoals(results).addedP50PerRound, [], 'one round: nothing to pair');
    const withRounds = (record: RunRecord, rounds: Array<[number, number]>): RunRecord => ({
      ...record,
      repeats: rounds.map(([p50, p99]) => ({ throughput: 1000, p50, p99 })),
    });
    const open = [
      withRounds(record('bare', { rate: 1000 }, result(1000, 0.6, 1.5)), [
        [0.6, 1.5],
        [0.5, 3],
        [0.7, 1],
      ]),
      withRounds(record('gateway', { rate: 1000 }, result(1000, 0.65, 1.9)), [
        [0.65, 1.9],
        [0.9, 2],
        [0.7, 2],
      ]),
    ];
    const goals = computeGoals({ closed: results.closed, open });
    assert.deepEqual(
      goals.addedP50PerRound.map((value) => Math.round(value * 100) / 100),
      [0.05, 0.4, 0],
    );
    assert.deepEqual(
      goals.addedP99PerRound.map((value) => Math.round(value * 100) / 100),
      [0.4, -1, 1],
    );
    assert.match(
      renderMarkdown({ ...results, open }),
      /Round by round: p50 0\.050, 0\.400, 0\.000 ms; p99 0\.400, -1\.00, 1\.00 ms\./,
    );
  });

  it('judges the latency goals by the interval of the paired rounds when there are enough of them', () => {
    const interval = (low: number, high: number) => ({ median: (low + high) / 2, low, high, coverage: 0.98 });
    assert.match(
      verdict(0.08, 0.1, interval(0.02, 0.09)),
      /^met, 95% interval of the round-by-round median 0\.020 to 0\.090 ms$/,
    );
    assert.match(verdict(0.08, 0.1, interval(0.11, 0.3)), /^not met, /);
    assert.match(verdict(0.08, 0.1, interval(0.02, 0.3)), /^undecided at this machine's noise, /);
    assert.match(verdict(0.08, 0.1, undefined), /^met by the point estimate; 6 or more rounds give an interval$/);
    assert.match(verdict(-0.01, 0.1, undefined), /^inconclusive/);

    // Ten paired rounds: gateway p50 = bare p50 + 0 … 0.45 ms, p99 + 0 … 0.09 ms.
    const rounds = (offset: (index: number) => number): Array<{ throughput: number; p50: number; p99: number }> =>
      Array.from({ length: 10 }, (_, index) => ({
        throughput: 1000,
        p50: 1 + offset(index),
        p99: 3 + offset(index) / 5,
      }));
    const open = [
      { ...record('bare', { rate: 1000 }, result(1000, 1, 3)), repeats: rounds(() => 0) },
      { ...record('gateway', { rate: 1000 }, result(1000, 1.25, 3.05)), repeats: rounds((index) => 0.05 * index) },
    ];
    const goals = computeGoals({ closed: results.closed, open });
    assert.ok(
      Math.abs(goals.addedP50Interval!.low - 0.05) < 1e-9 && Math.abs(goals.addedP50Interval!.high - 0.4) < 1e-9,
    );
    const markdown = renderMarkdown({ ...results, open });
    assert.match(
      markdown,
      /p50 \*\*0\.250 ms\*\* \(goal ≤ 0\.1: undecided at this machine's noise, 95% interval of the round-by-round median 0\.050 to 0\.400 ms\)/,
    );
    assert.match(
      markdown,
      /p99 \*\*0\.050 ms\*\* \(goal ≤ 0\.5: met, 95% interval of the round-by-round median 0\.010 to 0\.080 ms\)/,
    );
  });

  it("pairs the closed-loop rounds at the forwarder's peak concurrency and judges the throughput share by their interval", () => {
    const withThroughputs = (base: RunRecord, throughputs: number[]): RunRecord => ({
      ...base,
      repeats: throughputs.map((throughput) => ({ throughput, p50: 1, p99: 2 })),
    });
    const closed = (bare: number[], gateway: number[]): RunRecord[] => [
      withThroughputs(
        record('bare', { concurrency: 16 }, result(3000, 5, 10)),
        bare.map((value) => value * 0.75),
      ),
      withThroughputs(record('bare', { concurrency: 64 }, result(10000, 10, 20)), bare),
      withThroughputs(
        record('gateway', { concurrency: 16 }, result(2900, 5, 10)),
        gateway.map((value) => value * 0.75),
      ),
      withThroughputs(record('gateway', { concurrency: 64 }, result(8000, 12, 25)), gateway),
    ];
    const six = computeGoals({
      closed: closed([10000, 10000, 10000, 10000, 10000, 10000], [8000, 8200, 7900, 8100, 8300, 7800]),
      open: [],
    });
    assert.equal(six.peakConcurrency, 64);
    assert.deepEqual(
      six.ratioPerRound.map((ratio) => Math.round(ratio * 100)),
      [80, 82, 79, 81, 83, 78],
    );
    assert.ok(Math.abs(six.ratioInterval!.low - 0.78) < 1e-9 && Math.abs(six.ratioInterval!.high - 0.83) < 1e-9);
    const markdown = renderMarkdown({
      ...results,
      closed: closed([10000, 10000, 10000, 10000, 10000, 10000], [8000, 8200, 7900, 8100, 8300, 7800]),
    });
    assert.match(
      markdown,
      /= \*\*80%\*\* \(goal ≥ 85%: not met, 95% interval of the round-by-round median 78 to 83%\)\. Round by round at 64 callers \(the forwarder's peak\): 80%, 82%, 79%, 81%, 83%, 78%\./,
    );
    const straddles = renderMarkdown({
      ...results,
      closed: closed([10000, 10000, 10000, 10000, 10000, 10000], [8000, 9000, 7900, 8800, 8700, 9100]),
    });
    assert.match(
      straddles,
      /goal ≥ 85%: undecided at this machine's noise, 95% interval of the round-by-round median 79 to 91%/,
    );
    const three = renderMarkdown({ ...results, closed: closed([10000, 10000, 10000], [8000, 8200, 7900]) });
    assert.match(three, /goal ≥ 85%: not met by the point estimate\)\. Round by round at 64 callers/);
  });

  it('takes each figure of several rounds as its own median, and sums their errors', () => {
    const rounds = [
      record('gateway', { rate: 1000 }, { ...result(1000, 1.7, 87), errors: { timeout: 1 } }),
      record('gateway', { rate: 1000 }, result(990, 2.1, 11)),
      record('gateway', { rate: 1000 }, { ...result(1000, 1.6, 39), errors: { timeout: 2 } }),
    ];
    rounds[1]!.processes.worker!.cpuPercent = 80;
    const combined = medianOfRounds(rounds);
    // The round with the median p50 (1.7) has the worst p99; the figure reported is the median p99.
    assert.equal(combined.result.latency.p50, 1.7);
    assert.equal(combined.result.latency.p99, 39);
    assert.equal(combined.result.throughput, 1000);
    assert.deepEqual(combined.result.errors, { timeout: 3 });
    assert.equal(combined.processes.worker!.cpuPercent, 95);
    assert.deepEqual(
      combined.repeats?.map((round) => round.p99),
      [87, 11, 39],
    );
    assert.equal(medianOfRounds([rounds[0]!]), rounds[0]);
    assert.throws(() => medianOfRounds([]));
  });

  it('renders the tables and the goals', () => {
    const markdown = renderMarkdown(results);
    assert.match(markdown, /\| llm-proxy \| 64 \| 3,500 \| 12\.0 \|/);
    assert.match(markdown, /= \*\*88%\*\* \(goal ≥ 85%: met\)/);
    assert.match(
      markdown,
      /p50 \*\*0\.050 ms\*\* \(goal ≤ 0\.1: met by the point estimate; 6 or more rounds give an interval\)/,
    );
    assert.match(markdown, /\| 1,000 req\/s \| bare forwarder \(floor 3\) \| 0\.050 \|/);
  });

  it('lists the top self-time functions and names the .cpuprofile files for a viewer', () => {
    const summary = {
      totalMs: 10,
      idleMs: 5,
      busyMs: 5,
      entries: [{ functionName: 'parse', url: 'zod/lib/types.js', lineNumber: 10, selfMs: 4, percentOfBusy: 80 }],
      buckets: [{ bucket: 'zod', selfMs: 4, percentOfBusy: 80 }],
    };
    const markdown = renderMarkdown({
      ...results,
      profile: { ...summary, files: ['/out/prof/worker/a.cpuprofile', '/out/prof/worker/b.cpuprofile'] },
      bareProfile: { ...summary, files: ['/out/prof/bare/c.cpuprofile'] },
    });
    assert.match(markdown, /### Worker CPU profile: top self time \(5\.00 ms busy of 10\.0 ms sampled\)/);
    assert.match(markdown, /\| `parse` \| zod\/lib\/types\.js:10 \| 4\.00 \| 80\.0% \|/);
    assert.match(
      markdown,
      /Profiles \(summed above\): `\/out\/prof\/worker\/a\.cpuprofile`, `\/out\/prof\/worker\/b\.cpuprofile`; open in https:\/\/www\.speedscope\.app or Chrome DevTools/,
    );
    assert.match(markdown, /Profile: `\/out\/prof\/bare\/c\.cpuprofile`; open in/);
    assert.match(markdown, /\*\*Worker self time by package \/ project folder:\*\* zod 80\.0%/);
  });
});

describe('bench processes', () => {
  it('lines a child prints before its ready line (V8 traces, say) go to its log; the ready line is read', async () => {
    const logDir = mkdtempSync(join(tmpdir(), 'llm-proxy-bench-spawn-'));
    try {
      const script = [
        'process.stdout.write(\'[1234:0x1]  12 ms: pause=0.6 gc=s\\n{"not":"ready"}\\n\');',
        "setTimeout(() => process.stdout.write(JSON.stringify({ ready: true, port: 7 }) + '\\nafter\\n'), 20);",
        'setTimeout(() => {}, 60_000);',
      ].join('\n');
      const { process: child, ready } = await spawnManaged({
        name: 'chatty',
        command: process.execPath,
        args: ['-e', script],
        logDir,
        waitForReadyLine: true,
        readyTimeoutMs: 10_000,
      });
      assert.deepEqual(ready, { ready: true, port: 7 });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await child.stop(2_000);
      const log = readFileSync(join(logDir, 'chatty.log'), 'utf8');
      assert.match(log, /pause=0\.6 gc=s\n\{"not":"ready"\}\n/);
      assert.match(log, /after\n/);
    } finally {
      rmSync(logDir, { recursive: true, force: true });
    }
  });

  it('a child that exits without a ready line is reported with its log', async () => {
    const logDir = mkdtempSync(join(tmpdir(), 'llm-proxy-bench-spawn-'));
    try {
      await assert.rejects(
        spawnManaged({
          name: 'quitter',
          command: process.execPath,
          args: ['-e', "process.stdout.write('no ready here\\n'); process.exit(3)"],
          logDir,
          waitForReadyLine: true,
          readyTimeoutMs: 10_000,
        }),
        /quitter exited \(3\) before it was ready/,
      );
    } finally {
      rmSync(logDir, { recursive: true, force: true });
    }
  });
});

describe('the http section (issue 14)', () => {
  const latency = (p50: number) => ({
    count: 100,
    min: p50,
    mean: p50,
    p50,
    p90: p50,
    p99: p50 * 2,
    p999: p50 * 2,
    max: p50 * 3,
  });
  const point = (
    target: HttpTarget,
    connections: number,
    throughput: number,
    cores: number | null,
    p50: number,
  ): HttpPoint => ({
    target,
    connections,
    throughput,
    errors: 0,
    latency: latency(p50),
    cores,
  });

  it('per core is throughput over the cores used; none without a CPU figure', () => {
    assert.equal(perCore({ throughput: 3_000, cores: 1.5 }), 2_000);
    assert.equal(perCore({ throughput: 3_000, cores: null }), undefined);
    assert.equal(perCore({ throughput: 3_000, cores: 0 }), undefined);
  });

  it('judges both goals from the figures, at the highest connection count both gateways ran', () => {
    const section = {
      points: [
        point('direct', 1, 10_000, null, 0.1),
        point('llm-proxy', 1, 1_500, 1, 0.5),
        point('portkey', 1, 900, 1, 0.9),
        point('llm-proxy', 64, 6_000, 1.2, 8),
        point('portkey', 64, 1_000, 1, 40),
      ],
    };
    const [portkey, latencyGoal] = judgeHttpGoals(section);
    assert.equal(portkey!.met, true);
    assert.match(portkey!.detail, /5000 vs 1000 req\/s per core at 64 connections: 5\.0×/);
    assert.equal(latencyGoal!.met, true);
    assert.match(latencyGoal!.detail, /\+0\.400 ms/);
    section.points[1] = point('llm-proxy', 1, 1_500, 1, 0.7);
    assert.equal(judgeHttpGoals(section)[1]!.met, false);
  });

  it('without Portkey the goal is not judged and the report says why', () => {
    const section = { points: [point('direct', 1, 10_000, null, 0.1)], portkeySkipped: 'not installed' };
    assert.equal(judgeHttpGoals(section)[0]!.met, undefined);
    const markdown = renderHttpSection(section);
    assert.match(markdown, /Portkey: skipped \(not installed\)/);
    assert.match(markdown, /\| direct \| 1 \| 10000 \| – \| – \| 0\.10 \|/);
  });

  it('finds Portkey only where it was installed', () => {
    const missing = portkeyScript(undefined);
    assert.ok('skipped' in missing);
    assert.match(
      renderHttpSection({ points: [], portkeySkipped: missing.skipped }),
      /Portkey: skipped \(install with `npm install @portkey-ai\/gateway` in a scratch folder and pass --portkey-dir\)/,
    );
    assert.ok('skipped' in portkeyScript(tmpdir()));
  });

  it('--only http and --portkey-dir are options', () => {
    const options = parseBenchOptions(['--only', 'http', '--portkey-dir', '/somewhere']);
    assert.deepEqual(options.sections, ['http']);
    assert.equal(options.portkeyDir, '/somewhere');
  });
});

describe('the cache section (issue 18)', () => {
  const figure = (median: number, low: number, high: number) => ({ median, low, high });

  it("--only cache selects it; the report gives each case its ops/s and p50/p99 with the rounds' range", () => {
    assert.deepEqual(parseBenchOptions(['--only', 'cache']).sections, ['cache']);
    const section: CacheSection = {
      rounds: 6,
      roundMs: { realistic: 250, large: 400 },
      natsServer: 'v2.9.10',
      maxPayload: 8 * 1024 * 1024,
      cases: [
        {
          size: 'realistic',
          answerBytes: 2_050,
          store: 'memory LRU',
          operation: 'get, hit',
          opsPerSecond: figure(500_000, 400_000, 600_000),
          p50Us: figure(1.2, 1.1, 1.9),
          p99Us: figure(3.9, 2.2, 11.4),
          ops: 600_000,
        },
        {
          size: 'large',
          answerBytes: 1_060_000,
          store: 'tiered, NATS KV',
          operation: 'get, hit from KV (fills memory)',
          opsPerSecond: figure(24, 16, 40),
          p50Us: figure(37_884, 23_600, 52_600),
          p99Us: figure(56_840, 38_500, 104_700),
          ops: 64,
        },
      ],
      storeErrors: 0,
      seconds: 41,
      skipped: [],
    };
    const markdown = renderCacheSection(section);
    assert.match(markdown, /^## Response cache, store operations/m);
    assert.match(markdown, /6 interleaved rounds of 250 ms \(realistic\), 400 ms \(large\)/);
    assert.match(markdown, /\*\*realistic answer\*\* \(2\.0 KiB of JSON\)/);
    assert.match(
      markdown,
      /\| memory LRU \| get, hit \| 500,000 \(400,000–600,000\) \| 1\.20 µs \(1\.10 µs–1\.90 µs\) \| 3\.90 µs \(2\.20 µs–11\.4 µs\) \| 600,000 \|/,
    );
    assert.match(markdown, /\| get, hit from KV \(fills memory\) \| 24 \(16–40\) \| 37\.9 ms \(23\.6 ms–52\.6 ms\) \|/);
    assert.doesNotMatch(markdown, /Store errors/);
    assert.match(renderCacheSection({ ...section, storeErrors: 3 }), /Store errors while measuring: 3/);
    assert.match(
      renderCacheSection({ ...section, cases: [], skipped: ['no NATS at nats://x'] }),
      /Skipped: no NATS at nats:\/\/x\./,
    );
  });
});
