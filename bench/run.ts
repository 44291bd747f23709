/**
 * `npm run bench`: starts every part as its own process (nats-server, the
 * llm-proxy worker, the fake upstream, the floors, the load generator),
 * measures them back to back, and writes the Markdown report (stdout and
 * <out>/results.md) and the raw results (<out>/results.json).
 * See options.ts for the flags.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus as cpuList, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WORKER_V8_FLAGS } from '../src/cli/v8-tuning.js';
import { subjectsFor } from '../src/contract/subjects.js';
import { BENCH_MODELS, bareForwarderRoutes, benchRequestBody, buildWorkerConfig } from './bench-config.js';
import { runHttpSection } from './http-section.js';
import { runSinkSection } from './sink-section.js';
import { runScaleSection } from './scale-section.js';
import { runAdmissionsSection } from './admissions-section.js';
import { runCacheSection } from './cache-section.js';
import { mergeProfiles, summarizeProfile, type CpuProfile } from './cpu-profile.js';
import type { FromLoadGenerator, LoadJob, LoadResult, Target, ToLoadGenerator } from './load-protocol.js';
import { parseBenchOptions, HELP, type BenchOptions, type Layout } from './options.js';
import {
  ProcessSampler,
  sampleProcess,
  usageFromSamples,
  type ProcessSample,
  type ProcessUsage,
} from './proc-stats.js';
import { spawnManaged, startNatsServer, tasksetAvailable, type ManagedProcess } from './processes.js';
import {
  medianOfRounds,
  renderMarkdown,
  type BenchResults,
  type MemoryRecord,
  type RunRecord,
  type SoakRecord,
} from './report.js';
import { linearSlope } from './stats.js';

/** Where this script was built to (`.bench-build/bench`, see bench/tsconfig.json): the helper processes' scripts are beside it. */
const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..', '..');
/** The worker under test is the project's own build (`npm run build`), started as in production. */
const cliMain = join(repoRoot, 'dist', 'cli', 'main.js');

type Role = 'nats-server' | 'worker' | 'echo' | 'bare' | 'load' | 'upstream';

function layoutCpus(layout: Layout): Record<Role, string | undefined> {
  if (layout === 'split') return { 'nats-server': '0', worker: '0', echo: '0', bare: '0', load: '1', upstream: '1' };
  if (layout === 'worker-alone')
    return { 'nats-server': '1', worker: '0', echo: '0', bare: '0', load: '1', upstream: '1' };
  return {
    'nats-server': undefined,
    worker: undefined,
    echo: undefined,
    bare: undefined,
    load: undefined,
    upstream: undefined,
  };
}

function log(line: string): void {
  process.stderr.write(`[bench] ${line}\n`);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Without `npm run build` there is no worker to start; the floors can still be measured. */
function workerAvailable(): boolean {
  return existsSync(cliMain);
}

class LoadGenerator {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(result: LoadResult): void; reject(error: Error): void }>();

  constructor(readonly managed: ManagedProcess) {
    managed.child.on('message', (message: FromLoadGenerator) => {
      if (message.type === 'ready') return;
      const waiter = this.waiting.get(message.id);
      if (waiter === undefined) return;
      this.waiting.delete(message.id);
      if (message.type === 'result') waiter.resolve(message.result);
      else waiter.reject(new Error(`load generator: ${message.message}`));
    });
    managed.child.once('exit', (code) => {
      for (const waiter of this.waiting.values()) waiter.reject(new Error(`load generator exited (${code})`));
      this.waiting.clear();
    });
  }

  run(job: LoadJob): Promise<LoadResult> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const message: ToLoadGenerator = { type: 'job', id, job };
      this.managed.child.send(message);
    });
  }

  async stop(): Promise<void> {
    if (this.managed.child.connected) this.managed.child.send({ type: 'stop' } satisfies ToLoadGenerator);
    await this.managed.stop(5_000);
  }
}

async function waitForWorker(connection: NatsConnection, timeoutMs: number): Promise<void> {
  const subjects = subjectsFor();
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      await connection.request(subjects.models, '{}', { timeout: 1_000 });
      return;
    } catch (error) {
      lastError = error;
      await delay(200);
    }
  }
  throw new Error(`the worker did not answer on ${subjects.models}: ${String(lastError)}`);
}

interface Fleet {
  nats: ManagedProcess & { url: string; version: string };
  upstream: ManagedProcess;
  upstreamOrigin: string;
  echo?: ManagedProcess;
  bare?: ManagedProcess;
  workers: ManagedProcess[];
  load: LoadGenerator;
  gatewayClient: string;
  connection: NatsConnection;
}

async function startFleet(
  options: BenchOptions,
  targets: Target[],
  cpus: Record<Role, string | undefined>,
): Promise<Fleet> {
  const logDir = join(options.outDir, 'logs');
  const env = benchEnv();
  const node = process.execPath;
  const started: ManagedProcess[] = [];
  try {
    const nats = await startNatsServer({ cpus: cpus['nats-server'], logDir });
    started.push(nats);
    log(`nats-server ${nats.url} (${nats.version})`);
    const upstreamStart = await spawnManaged({
      name: 'upstream',
      command: node,
      args: [join(benchDir, 'upstream.js')],
      cpus: cpus.upstream,
      logDir,
      env,
      waitForReadyLine: true,
    });
    started.push(upstreamStart.process);
    const upstreamOrigin = `http://127.0.0.1:${String(upstreamStart.ready.port)}`;
    log(`fake upstream ${upstreamOrigin}`);
    let echo: ManagedProcess | undefined;
    if (targets.includes('echo')) {
      echo = (
        await spawnManaged({
          name: 'echo',
          command: node,
          args: [...WORKER_V8_FLAGS, ...options.nodeFlags, join(benchDir, 'echo-replier.js'), '--nats-url', nats.url],
          cpus: cpus.echo,
          logDir,
          env,
          waitForReadyLine: true,
        })
      ).process;
      started.push(echo);
    }
    let bare: ManagedProcess | undefined;
    if (targets.includes('bare')) {
      bare = (
        await spawnManaged({
          name: 'bare',
          command: node,
          // Profiled too with --cpu-prof: what the worker does beyond it is the price of its features.
          // The floors get the V8 settings `llm-proxy worker` gives itself, so both run alike.
          args: [
            ...WORKER_V8_FLAGS,
            ...options.nodeFlags,
            ...(options.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${resolve(options.outDir, 'prof', 'bare')}`] : []),
            join(benchDir, 'bare-forwarder.js'),
            '--nats-url',
            nats.url,
            '--upstream',
            upstreamOrigin,
            ...bareForwarderRoutes(),
          ],
          cpus: cpus.bare,
          logDir,
          env,
          waitForReadyLine: true,
        })
      ).process;
      started.push(bare);
    }
    const connection = await connect({ servers: nats.url, noAsyncTraces: true });
    const workers: ManagedProcess[] = [];
    if (targets.includes('gateway')) {
      const configPath = resolve(options.outDir, 'worker-config.yaml');
      writeFileSync(
        configPath,
        buildWorkerConfig({
          upstreamOrigin,
          maxInFlight: Math.max(2_048, options.inFlight * 2),
          logLevel: options.logLevel,
          logRequests: options.logRequests,
          limits: options.limits,
        }),
      );
      const profileArgs = options.cpuProf
        ? ['--cpu-prof', `--cpu-prof-dir=${resolve(options.outDir, 'prof', 'worker')}`]
        : [];
      for (let index = 0; index < options.workers; index++) {
        const worker = (
          await spawnManaged({
            name: `worker-${index}`,
            command: node,
            args: [...options.nodeFlags, ...profileArgs, cliMain, 'worker'],
            cpus: cpus.worker,
            logDir,
            env: { ...env, LLM_PROXY_CONFIG: configPath, NATS_URL: nats.url },
          })
        ).process;
        started.push(worker);
        workers.push(worker);
        worker.child.once('exit', (code, signal) => {
          if (!stopping) log(`worker-${index} exited (${code ?? signal}); see ${logDir}/worker-${index}.log`);
        });
      }
      await waitForWorker(connection, 30_000);
      log(`${workers.length} worker(s) ready (config ${configPath})`);
    }
    const loadStart = await spawnManaged({
      name: 'load',
      command: node,
      args: [
        join(benchDir, 'load.js'),
        '--nats-url',
        nats.url,
        '--upstream',
        upstreamOrigin,
        '--gateway-via',
        options.gatewayVia,
        '--agents',
        String(options.agents),
      ],
      cpus: cpus.load,
      logDir,
      env,
      ipc: true,
    });
    started.push(loadStart.process);
    const gatewayClient = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('load generator did not start')), 20_000);
      loadStart.process.child.on('message', (message: FromLoadGenerator) => {
        if (message.type !== 'ready') return;
        clearTimeout(timer);
        resolve(message.client);
      });
      loadStart.process.child.once('exit', (code) =>
        reject(new Error(`load generator exited (${code}), see ${logDir}/load.log`)),
      );
    });
    return {
      nats,
      upstream: upstreamStart.process,
      upstreamOrigin,
      echo,
      bare,
      workers,
      load: new LoadGenerator(loadStart.process),
      gatewayClient,
      connection,
    };
  } catch (error) {
    stopping = true;
    for (const managed of started.reverse()) await managed.stop(3_000);
    throw error;
  }
}

let stopping = false;

/** The environment of every process the bench starts. */
function benchEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production' };
  // The bench's worker (and front door) run without an internal secret: the floors have none either.
  delete env.LLM_PROXY_SECRET;
  return env;
}

async function stopFleet(fleet: Fleet): Promise<void> {
  stopping = true;
  await fleet.load.stop();
  await fleet.connection.close();
  // Workers first, with time to drain and write their CPU profile.
  await Promise.all(fleet.workers.map((worker) => worker.stop(20_000)));
  await Promise.all([fleet.bare?.stop(5_000), fleet.echo?.stop(5_000), fleet.upstream.stop(5_000)]);
  await fleet.nats.stop(5_000);
}

function processPids(fleet: Fleet): Map<string, number> {
  const pids = new Map<string, number>([
    ['nats-server', fleet.nats.pid],
    ['upstream', fleet.upstream.pid],
    ['load', fleet.load.managed.pid],
  ]);
  if (fleet.echo !== undefined) pids.set('echo', fleet.echo.pid);
  if (fleet.bare !== undefined) pids.set('bare', fleet.bare.pid);
  for (const [index, worker] of fleet.workers.entries()) pids.set(`worker-${index}`, worker.pid);
  return pids;
}

/** Per-process usage, plus `worker` as the sum of all workers (CPU and RSS). */
function usageByRole(samples: Map<string, ProcessSample[]>): Record<string, ProcessUsage> {
  const usage: Record<string, ProcessUsage> = {};
  for (const [name, list] of samples) {
    const entry = usageFromSamples(list);
    if (entry !== undefined) usage[name] = entry;
  }
  const workers = Object.entries(usage).filter(([name]) => name.startsWith('worker-'));
  if (workers.length > 0) {
    usage.worker = workers
      .map(([, entry]) => entry)
      .reduce((sum, entry) => ({
        cpuPercent: sum.cpuPercent + entry.cpuPercent,
        rssStartBytes: sum.rssStartBytes + entry.rssStartBytes,
        rssEndBytes: sum.rssEndBytes + entry.rssEndBytes,
        rssMaxBytes: sum.rssMaxBytes + entry.rssMaxBytes,
      }));
  }
  return usage;
}

async function measure(
  fleet: Fleet,
  job: LoadJob,
  intervalMs = 250,
): Promise<{ result: LoadResult; processes: Record<string, ProcessUsage>; samples: Map<string, ProcessSample[]> }> {
  const sampler = new ProcessSampler(processPids(fleet));
  sampler.start(intervalMs);
  try {
    const result = await fleet.load.run(job);
    const samples = sampler.stop();
    return { result, processes: usageByRole(samples), samples };
  } catch (error) {
    sampler.stop();
    throw error;
  }
}

function describe(result: LoadResult): string {
  const ms = (value: number | null | undefined): string => (typeof value === 'number' ? value.toFixed(3) : '–');
  const errors = Object.values(result.errors).reduce((sum, count) => sum + count, 0);
  return `${Math.round(result.throughput)} req/s, p50 ${ms(result.latency.p50)} ms, p99 ${ms(result.latency.p99)} ms${errors > 0 ? `, ${errors} errors ${JSON.stringify(result.errors)}` : ''}`;
}

/** A few calls per target before measuring anything: a wrong answer stops the bench rather than skewing it. */
async function checkTargets(fleet: Fleet, targets: Target[]): Promise<void> {
  for (const target of targets) {
    const result = await fleet.load.run({ kind: 'burst', target, model: 'fast', count: 5, timeoutMs: 10_000 });
    if (result.ok !== 5) throw new Error(`target ${target} failed its check: ${JSON.stringify(result.errors)}`);
  }
}

/**
 * Measures each point `repeat` times, the rounds interleaved (every target once per
 * round) so that a burst of outside load hurts one round rather than one target;
 * each reported figure is the median of that figure over the rounds.
 */
async function runPoints(
  fleet: Fleet,
  options: BenchOptions,
  targets: Target[],
  points: Array<{ job: (target: Target) => LoadJob; label: string; fields: Pick<RunRecord, 'concurrency' | 'rate'> }>,
): Promise<RunRecord[]> {
  const records: RunRecord[] = [];
  for (const point of points) {
    const rounds = new Map<Target, RunRecord[]>();
    for (let round = 0; round < options.repeat; round++) {
      for (const target of targets) {
        const job = point.job(target);
        if (options.warmupMs > 0) await fleet.load.run({ ...job, durationMs: options.warmupMs } as LoadJob);
        const { result, processes } = await measure(fleet, job);
        log(
          `${point.label} ${target}${options.repeat > 1 ? ` (round ${round + 1}/${options.repeat})` : ''}: ${describe(result)}`,
        );
        const list = rounds.get(target) ?? [];
        list.push({ target, model: BENCH_MODELS.fast.name, ...point.fields, result, processes });
        rounds.set(target, list);
      }
    }
    for (const target of targets) {
      const list = rounds.get(target) ?? [];
      if (list.length > 0) records.push(medianOfRounds(list));
    }
  }
  return records;
}

function runClosed(fleet: Fleet, options: BenchOptions, targets: Target[]): Promise<RunRecord[]> {
  return runPoints(
    fleet,
    options,
    targets,
    options.concurrencies.map((concurrency) => ({
      label: `closed c=${concurrency}`,
      fields: { concurrency },
      job: (target) => ({
        kind: 'closed',
        target,
        model: 'fast',
        concurrency,
        durationMs: options.durationMs,
        warmupMs: 0,
      }),
    })),
  );
}

function runOpen(fleet: Fleet, options: BenchOptions, targets: Target[]): Promise<RunRecord[]> {
  return runPoints(
    fleet,
    options,
    targets,
    options.rates.map((rate) => ({
      label: `open ${rate}/s`,
      fields: { rate },
      job: (target) => ({ kind: 'open', target, model: 'fast', rate, durationMs: options.durationMs, warmupMs: 0 }),
    })),
  );
}

async function runStreams(fleet: Fleet, options: BenchOptions, targets: Target[]): Promise<RunRecord[]> {
  const records: RunRecord[] = [];
  const streamTargets = targets.filter(
    (target): target is 'direct' | 'gateway' => target === 'direct' || target === 'gateway',
  );
  // One at a time shows the bare cost per chunk; 32 at once shows it under load. The 32-at-once run
  // lasts about as long as the other sections' (800 streams of 0.2 s): a short one mostly measures
  // the worker warming up (docs/bench/results.md).
  for (const [concurrency, count] of [
    [1, Math.max(5, Math.round(options.streamCount / 16))],
    [32, options.streamCount],
  ] as const) {
    for (const target of streamTargets) {
      const { result, processes } = await measure(fleet, {
        kind: 'stream',
        target,
        model: 'stream',
        count,
        concurrency,
      });
      log(
        `stream ${target} c=${concurrency}: TTFT p50 ${result.ttft?.p50.toFixed(3)} ms, gap p99 ${result.chunkGap?.p99.toFixed(3)} ms, errors ${JSON.stringify(result.errors)}`,
      );
      records.push({ target, model: BENCH_MODELS.stream.name, concurrency, result, processes });
    }
  }
  return records;
}

function servingPid(fleet: Fleet, target: Target): number | undefined {
  if (target === 'gateway') return fleet.workers[0]?.pid;
  if (target === 'bare') return fleet.bare?.pid;
  return undefined;
}

async function runMemory(fleet: Fleet, options: BenchOptions, targets: Target[]): Promise<MemoryRecord[]> {
  const records: MemoryRecord[] = [];
  for (const target of targets.filter((entry) => entry === 'bare' || entry === 'gateway')) {
    const pid = servingPid(fleet, target);
    if (pid === undefined) continue;
    await delay(1_000);
    const idle = sampleProcess(pid)?.rssBytes ?? Number.NaN;
    const { result, samples } = await measure(
      fleet,
      { kind: 'burst', target, model: 'slow', count: options.inFlight, timeoutMs: 60_000 },
      100,
    );
    const name = target === 'gateway' ? 'worker-0' : 'bare';
    const peak = (samples.get(name) ?? []).reduce((max, sample) => Math.max(max, sample.rssBytes), 0);
    await delay(1_000);
    const after = sampleProcess(pid)?.rssBytes ?? Number.NaN;
    log(
      `memory ${target}: idle ${(idle / 2 ** 20).toFixed(1)} MiB, peak ${(peak / 2 ** 20).toFixed(1)} MiB with ${options.inFlight} in flight, ${describe(result)}`,
    );
    records.push({
      target,
      inFlight: options.inFlight,
      rssIdleBytes: idle,
      rssPeakBytes: peak,
      rssAfterBytes: after,
      result,
    });
  }
  return records;
}

async function runSoak(fleet: Fleet, options: BenchOptions): Promise<SoakRecord | undefined> {
  if (fleet.workers.length === 0) return undefined;
  log(`soak: ${options.soakSeconds} s at ${options.soakRate} req/s with 5% upstream errors`);
  const { result, samples } = await measure(
    fleet,
    {
      kind: 'open',
      target: 'gateway',
      model: 'flaky',
      rate: options.soakRate,
      durationMs: options.soakSeconds * 1000,
      warmupMs: 0,
    },
    1_000,
  );
  const series = samples.get('worker-0') ?? [];
  const start = series[0]?.atMs ?? 0;
  const points = series.map((sample) => ({ x: (sample.atMs - start) / 60_000, y: sample.rssBytes / 2 ** 20 }));
  const secondHalf = points.slice(Math.floor(points.length / 2));
  const record: SoakRecord = {
    seconds: options.soakSeconds,
    rate: options.soakRate,
    errorRate: 0.05,
    result,
    rssStartBytes: series[0]?.rssBytes ?? Number.NaN,
    rssEndBytes: series[series.length - 1]?.rssBytes ?? Number.NaN,
    rssMaxBytes: series.reduce((max, sample) => Math.max(max, sample.rssBytes), 0),
    rssSlopeMiBPerMinute: linearSlope(secondHalf),
    rssSeries: series.map((sample) => [Math.round((sample.atMs - start) / 100) / 10, sample.rssBytes]),
  };
  log(
    `soak: ${describe(result)}; RSS ${(record.rssStartBytes / 2 ** 20).toFixed(1)} → ${(record.rssEndBytes / 2 ** 20).toFixed(1)} MiB`,
  );
  return record;
}

function readProfiles(directory: string): { profile: CpuProfile; files: string[] } | undefined {
  if (!existsSync(directory)) return undefined;
  const files = readdirSync(directory).filter((file) => file.endsWith('.cpuprofile'));
  if (files.length === 0) return undefined;
  const profiles = files.map((file) => JSON.parse(readFileSync(join(directory, file), 'utf8')) as CpuProfile);
  return {
    profile: profiles.length === 1 ? profiles[0]! : mergeProfiles(profiles),
    files: files.map((file) => join(directory, file)),
  };
}

/** `--from results.json`: the report of an earlier run, without running anything. */
function renderFrom(path: string): number {
  const results = JSON.parse(readFileSync(path, 'utf8')) as BenchResults;
  process.stdout.write(renderMarkdown(results));
  return 0;
}

async function main(): Promise<number> {
  let options: BenchOptions;
  try {
    options = parseBenchOptions(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n\n${HELP}`);
    return 2;
  }
  if (options.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (options.from !== undefined) return renderFrom(options.from);
  let targets = options.targets;
  if (targets.includes('gateway') && !workerAvailable()) {
    log(`the worker is not built (no ${cliMain}; run npm run build): measuring the floors only`);
    targets = targets.filter((target) => target !== 'gateway');
  }
  const canPin = options.layout !== 'none' && cpuList().length >= 2 && tasksetAvailable();
  const layoutName: Layout = canPin ? options.layout : 'none';
  const cpus = layoutCpus(layoutName);
  mkdirSync(options.outDir, { recursive: true });
  const profileDir = resolve(options.outDir, 'prof');
  rmSync(profileDir, { recursive: true, force: true });
  if (options.cpuProf) mkdirSync(profileDir, { recursive: true });
  log(
    `layout ${layoutName}: ${Object.entries(cpus)
      .map(([role, cpu]) => `${role}→${cpu ?? 'any'}`)
      .join(', ')}`,
  );

  const startedAt = new Date().toISOString();
  const fleet = await startFleet(options, targets, cpus);
  const results: BenchResults = {
    startedAt,
    finishedAt: '',
    machine: {
      cpus: cpuList().length,
      cpuModel: cpuList()[0]?.model.trim() ?? 'unknown',
      node: process.version,
      natsServer: fleet.nats.version,
      memoryGiB: totalmem() / 2 ** 30,
    },
    layout: {
      name: layoutName,
      pinned: canPin,
      cpus: Object.fromEntries(Object.entries(cpus).map(([role, cpu]) => [role, cpu ?? 'any'])),
    },
    options: { ...options },
    gatewayClient: fleet.gatewayClient,
    closed: [],
    open: [],
    stream: [],
    memory: [],
  };
  let failure: unknown;
  try {
    await checkTargets(fleet, targets);
    // Memory first, while the worker's heap has only seen the checks: its baseline is then a fresh worker's.
    if (options.sections.includes('memory')) results.memory = await runMemory(fleet, options, targets);
    if (options.sections.includes('closed')) results.closed = await runClosed(fleet, options, targets);
    if (options.sections.includes('open')) results.open = await runOpen(fleet, options, targets);
    if (options.sections.includes('stream')) results.stream = await runStreams(fleet, options, targets);
    if (options.sections.includes('soak') && targets.includes('gateway')) results.soak = await runSoak(fleet, options);
    if (options.sections.includes('http') && fleet.workers.length > 0)
      results.http = await runHttpSection({
        cliMain,
        natsUrl: fleet.nats.url,
        natsPid: fleet.nats.pid,
        workerPids: fleet.workers.map((worker) => worker.pid),
        upstreamOrigin: fleet.upstreamOrigin,
        configPath: resolve(options.outDir, 'worker-config.yaml'),
        body: benchRequestBody(BENCH_MODELS.fast.name),
        logDir: join(options.outDir, 'logs'),
        env: benchEnv(),
        connections: [1, 16, 64],
        // Autocannon's runs: ~5 s each, 2 s with --quick (its 1 s default is too short for a steady rate).
        durationMs: options.quick ? Math.max(options.durationMs, 2_000) : options.durationMs,
        warmupMs: options.warmupMs,
        portkeyDir: options.portkeyDir,
        log,
      });
    if (options.sections.includes('sink') && workerAvailable())
      results.sink = await runSinkSection({
        cliMain,
        natsUrl: fleet.nats.url,
        events: options.sinkEvents,
        logDir: join(options.outDir, 'logs'),
        env: benchEnv(),
        log,
      });
    if (options.sections.includes('admissions'))
      results.admissions = await runAdmissionsSection({ natsUrl: fleet.nats.url, durationMs: options.durationMs, log });
    if (options.sections.includes('cache'))
      results.cache = await runCacheSection({
        natsUrl: fleet.nats.url,
        natsVersion: fleet.nats.version,
        quick: options.quick,
        log,
      });
    if (options.sections.includes('scale') && workerAvailable())
      results.scale = await runScaleSection({
        cliMain,
        natsUrl: fleet.nats.url,
        sizes: options.scaleEvents,
        logDir: join(options.outDir, 'logs'),
        env: benchEnv(),
        log,
      });
  } catch (error) {
    failure = error;
  } finally {
    await stopFleet(fleet);
  }
  results.finishedAt = new Date().toISOString();
  if (options.cpuProf) {
    const workerProfiles = readProfiles(join(profileDir, 'worker'));
    if (workerProfiles === undefined)
      log(`no .cpuprofile in ${profileDir}/worker: did the worker exit cleanly on SIGTERM?`);
    else results.profile = { ...summarizeProfile(workerProfiles.profile, 15), files: workerProfiles.files };
    const bareProfiles = readProfiles(join(profileDir, 'bare'));
    if (bareProfiles !== undefined)
      results.bareProfile = { ...summarizeProfile(bareProfiles.profile, 10), files: bareProfiles.files };
  }
  const markdown = renderMarkdown(results);
  writeFileSync(join(options.outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(options.outDir, 'results.md'), markdown);
  process.stdout.write(markdown);
  log(`results in ${join(options.outDir, 'results.json')}`);
  if (failure !== undefined) {
    log(`stopped early: ${failure instanceof Error ? (failure.stack ?? failure.message) : String(failure)}`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
