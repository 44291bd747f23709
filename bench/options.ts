/** Command-line options of `npm run bench` (run.ts). */
import { parseArgs } from 'node:util';
import { TARGETS, type Target } from './load-protocol.js';
import type { BenchLimits } from './bench-config.js';

export const SECTIONS = [
  'closed',
  'open',
  'stream',
  'memory',
  'soak',
  'http',
  'sink',
  'scale',
  'admissions',
  'cache',
] as const;
export type Section = (typeof SECTIONS)[number];

export const LAYOUTS = ['worker-alone', 'split', 'none'] as const;
export type Layout = (typeof LAYOUTS)[number];

export interface BenchOptions {
  quick: boolean;
  sections: Section[];
  targets: Target[];
  durationMs: number;
  warmupMs: number;
  repeat: number;
  concurrencies: number[];
  rates: number[];
  soakSeconds: number;
  soakRate: number;
  streamCount: number;
  inFlight: number;
  workers: number;
  /** The worker's logging.level (production: info). */
  logLevel: string;
  /** The worker's logging.requests (default: the config default, errors). */
  logRequests: 'all' | 'errors' | 'none';
  layout: Layout;
  cpuProf: boolean;
  /** Extra node flags for the processes under test (worker, bare forwarder, echo replier) alike. */
  nodeFlags: string[];
  gatewayVia: 'client' | 'raw';
  /**
   * The worker's limits: off (default), or every dimension on (set out of reach) with this backend;
   * `<backend>+model` with --model-limit (the same limits on every bench model as well).
   */
  limits: BenchLimits;
  /** Distinct agent ids the load generator spreads its requests over. */
  agents: number;
  outDir: string;
  /** Re-render the report of an earlier results.json instead of running. */
  from: string | undefined;
  /** A folder where `npm install @portkey-ai/gateway` ran, for the http section's Portkey column. */
  portkeyDir: string | undefined;
  /** Usage events the sink section copies into PostgreSQL. */
  sinkEvents: number;
  /** Sizes (events) the scale section runs the aggregator at. */
  scaleEvents: number[];
  help: boolean;
}

export const HELP = `npm run bench -- [options]

Runs nats-server, the llm-proxy worker, a fake OpenAI upstream, three floors
(direct HTTP, NATS echo, bare forwarder) and a load generator as separate
processes, and measures them back to back.

Options:
  --quick                 short smoke run (~1 minute)
  --only <sections>       comma list of: ${SECTIONS.join(', ')} (default: all);
                          cache: the response cache's stores in process (memory LRU, and memory + NATS
                          KV on the bench's nats-server): set, hit, miss for a ~2 KB and a ~1 MB answer
  --targets <targets>     comma list of: ${TARGETS.join(', ')} (default: all)
  --duration-ms <n>       length of each measured run (default 5000; quick 1000)
  --warmup-ms <n>         unmeasured warm-up before each run (default 1000; quick 300)
  --repeat <n>            measure each closed/open point n times, interleaved, and report each figure's
                          median (a shared machine's noise hits one round, not one target) (default 1)
  --concurrency <list>    closed-loop concurrencies (default 1,16,64,256; quick 1,64)
  --rates <list>          open-loop request rates per second (default 500,1000,2000,3000; quick 500,1000)
  --soak-seconds <n>      soak length (default 180, "a few minutes"; quick 10)
  --soak-rate <n>         soak request rate per second (default 500)
  --stream-count <n>      streams in the 32-at-once run (default 800, about 5 s; quick 100); the
                          one-at-a-time run does a sixteenth of them (at least 5)
  --in-flight <n>         requests held in flight for the memory section (default 1000)
  --workers <n>           llm-proxy worker processes (default 1)
  --log-level <level>     the worker's logging.level (default info, as in production; warn shows
                          what the per-request info line costs)
  --log-requests <which>  the worker's logging.requests: errors (default, as in production), all (a
                          line per request: shows what an access log costs) or none
  --layout <layout>       CPU pinning: worker-alone (the worker, or the floor under test, alone on
                          core 0; nats-server, load generator and upstream on core 1), split
                          (worker + nats-server on core 0, load generator + upstream on core 1),
                          none (default worker-alone: measured fastest for both llm-proxy and
                          the bare forwarder)
  --gateway-via <how>     client (default: the project's createClient) or raw (pre-encoded
                          nc.request, to tell the client's cost from the worker's)
  --limits <backend>      off (default), memory, nats or redis: the worker runs with every limit
                          (rpm, tpm, concurrent, daily and monthly budgets) on, set out of reach, on
                          that backend, to measure what limiting costs per request
  --model-limit           with --limits: the same limits on every bench model too, one scope shared by
                          every agent (the hot key of issue 21); shown as limits <backend>+model
  --agents <n>            distinct agent ids the requests are spread over (default 1; use 1000 with --limits)
  --cpu-prof              profile the worker and the bare forwarder (node --cpu-prof into
                          <out>/prof/worker, <out>/prof/bare) and print their top self-time functions;
                          open the .cpuprofile files in https://www.speedscope.app or Chrome DevTools
  --node-flags="<flags>" extra node/V8 flags for every process under test (worker, bare forwarder,
                          echo replier) alike, e.g. "--max-semi-space-size=32"
  --portkey-dir <dir>     a scratch folder where \`npm install @portkey-ai/gateway\` ran (default
                          $PORTKEY_DIR): the http section measures Portkey's gateway beside llm-proxy;
                          without it, Portkey is skipped and the report says so
  --sink-events <n>       usage events the sink section copies into PostgreSQL (default 200000; quick
                          20000); PostgreSQL from $LLM_PROXY_BENCH_POSTGRES_URL, else
                          postgres://postgres@127.0.0.1:5432/postgres (skipped when none answers)
  --scale-events <list>   sizes the scale section runs the usage aggregator at (default
                          100000,1000000; quick 20000)
  --out <dir>             results directory (default bench-results)
  --from <results.json>   print the report of an earlier run (runs nothing)
  --help                  this text
`;

function parseNodeFlags(text: string | undefined): string[] {
  const flags = (text ?? '').split(/\s+/).filter((flag) => flag !== '');
  const bad = flags.find((flag) => !flag.startsWith('--'));
  if (bad !== undefined) throw new Error(`--node-flags wants flags that start with "--", got "${bad}"`);
  return flags;
}

function parseList(text: string, name: string): number[] {
  const values = text.split(',').map((part) => Number(part.trim()));
  if (values.length === 0 || values.some((value) => !Number.isFinite(value) || value <= 0)) {
    throw new Error(`--${name} wants a comma list of positive numbers, got "${text}"`);
  }
  return values;
}

function parsePositive(text: string | undefined, name: string, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} wants a positive number, got "${text}"`);
  return value;
}

function parseNames<T extends string>(text: string | undefined, allowed: readonly T[], name: string): T[] {
  if (text === undefined) return [...allowed];
  const names = text
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '');
  for (const entry of names) {
    if (!(allowed as readonly string[]).includes(entry))
      throw new Error(`--${name}: unknown "${entry}" (choose from ${allowed.join(', ')})`);
  }
  return names as T[];
}

export function parseBenchOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      targets: { type: 'string' },
      'duration-ms': { type: 'string' },
      'warmup-ms': { type: 'string' },
      repeat: { type: 'string' },
      concurrency: { type: 'string' },
      rates: { type: 'string' },
      'soak-seconds': { type: 'string' },
      'soak-rate': { type: 'string' },
      'stream-count': { type: 'string' },
      'in-flight': { type: 'string' },
      workers: { type: 'string' },
      'log-level': { type: 'string' },
      'log-requests': { type: 'string' },
      layout: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      'node-flags': { type: 'string' },
      'gateway-via': { type: 'string' },
      limits: { type: 'string' },
      'model-limit': { type: 'boolean', default: false },
      agents: { type: 'string' },
      out: { type: 'string' },
      from: { type: 'string' },
      'portkey-dir': { type: 'string' },
      'sink-events': { type: 'string' },
      'scale-events': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  const quick = values.quick === true;
  const layout = values.layout ?? 'worker-alone';
  if (!(LAYOUTS as readonly string[]).includes(layout))
    throw new Error(`--layout: unknown "${layout}" (choose from ${LAYOUTS.join(', ')})`);
  const outDir = values.out ?? 'bench-results';
  const gatewayVia = values['gateway-via'] ?? 'client';
  const logLevel = values['log-level'] ?? 'info';
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel))
    throw new Error(`--log-level: unknown "${logLevel}"`);
  if (gatewayVia !== 'client' && gatewayVia !== 'raw')
    throw new Error(`--gateway-via: unknown "${gatewayVia}" (choose from client, raw)`);
  const logRequests = values['log-requests'] ?? 'errors';
  if (logRequests !== 'all' && logRequests !== 'errors' && logRequests !== 'none')
    throw new Error(`--log-requests: unknown "${logRequests}" (choose from all, errors, none)`);
  const limits = values.limits ?? 'off';
  if (!['off', 'memory', 'nats', 'redis'].includes(limits))
    throw new Error(`--limits: unknown "${limits}" (choose from off, memory, nats, redis)`);
  if (values['model-limit'] === true && limits === 'off') throw new Error('--model-limit needs --limits <backend>');
  return {
    quick,
    sections: parseNames(values.only, SECTIONS, 'only'),
    targets: parseNames(values.targets, TARGETS, 'targets'),
    durationMs: parsePositive(values['duration-ms'], 'duration-ms', quick ? 1_000 : 5_000),
    warmupMs: values['warmup-ms'] === '0' ? 0 : parsePositive(values['warmup-ms'], 'warmup-ms', quick ? 300 : 1_000),
    repeat: Math.round(parsePositive(values.repeat, 'repeat', 1)),
    concurrencies:
      values.concurrency === undefined
        ? quick
          ? [1, 64]
          : [1, 16, 64, 256]
        : parseList(values.concurrency, 'concurrency'),
    rates:
      values.rates === undefined ? (quick ? [500, 1000] : [500, 1000, 2000, 3000]) : parseList(values.rates, 'rates'),
    soakSeconds: parsePositive(values['soak-seconds'], 'soak-seconds', quick ? 10 : 180),
    soakRate: parsePositive(values['soak-rate'], 'soak-rate', 500),
    streamCount: parsePositive(values['stream-count'], 'stream-count', quick ? 100 : 800),
    inFlight: parsePositive(values['in-flight'], 'in-flight', 1_000),
    workers: parsePositive(values.workers, 'workers', 1),
    logLevel,
    logRequests,
    layout: layout as Layout,
    cpuProf: values['cpu-prof'] === true,
    nodeFlags: parseNodeFlags(values['node-flags']),
    gatewayVia,
    limits: (values['model-limit'] === true ? `${limits}+model` : limits) as BenchLimits,
    agents: Math.round(parsePositive(values.agents, 'agents', 1)),
    outDir,
    from: values.from,
    portkeyDir: values['portkey-dir'] ?? process.env.PORTKEY_DIR,
    sinkEvents: Math.round(parsePositive(values['sink-events'], 'sink-events', quick ? 20_000 : 200_000)),
    scaleEvents:
      values['scale-events'] === undefined
        ? quick
          ? [20_000]
          : [100_000, 1_000_000]
        : parseList(values['scale-events'], 'scale-events'),
    help: values.help === true,
  };
}
