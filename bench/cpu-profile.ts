/**
 * Reads a V8 `.cpuprofile` (what `node --cpu-prof` writes) and sums self time
 * per function (name + script + line), so the bench can print where the
 * worker spends its CPU. The call tree and flame graph are left to a viewer
 * (speedscope, Chrome DevTools), which opens the same file.
 */

export interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber?: number };
  hitCount?: number;
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface SelfTimeEntry {
  functionName: string;
  url: string;
  lineNumber: number;
  selfMs: number;
  /** Share of the sampled time, idle excluded. */
  percentOfBusy: number;
}

export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  busyMs: number;
  entries: SelfTimeEntry[];
  /** Self time per package or project folder (see `bucketOf`), largest first. */
  buckets: Array<{ bucket: string; selfMs: number; percentOfBusy: number }>;
}

/**
 * Where a function lives, coarsely: the npm package (`@nats-io/nats-core`, `pino`),
 * the project folder (`llm-proxy/worker`), `node` for Node's own JavaScript, and
 * for native frames their V8 name (GC, program) or `native` (syscalls and builtins).
 */
export function bucketOf(functionName: string, url: string): string {
  if (url === '')
    return functionName === '(garbage collector)' || functionName === '(program)' ? functionName : 'native';
  const withoutScheme = url.replace(/^file:\/\//, '');
  const nodeModules = withoutScheme.lastIndexOf('/node_modules/');
  if (nodeModules >= 0) {
    const parts = withoutScheme.slice(nodeModules + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  if (withoutScheme.startsWith('node:')) return 'node';
  const project = projectPath(withoutScheme);
  if (project !== undefined) return `llm-proxy/${project.split('/')[0]}`;
  return 'other';
}

/**
 * Builds of the project's own code: `dist/` (src, what the worker runs) and `.bench-build/` (the
 * bench and its copy of the src files it imports, what the floors and the load generator run).
 */
const BUILD_DIRS = ['/dist/', '/.bench-build/src/', '/.bench-build/'] as const;

/** A script's path inside the project's sources (`worker/request-handler.js`, `bench/bare-forwarder.js`), if it is one of ours. */
function projectPath(path: string): string | undefined {
  for (const dir of BUILD_DIRS) {
    const at = path.lastIndexOf(dir);
    if (at >= 0) return path.slice(at + dir.length);
  }
  return undefined;
}

const IDLE = '(idle)';

/** Makes node_modules and build paths short enough to read in a table. */
export function shortenUrl(url: string): string {
  const withoutScheme = url.replace(/^file:\/\//, '');
  const nodeModules = withoutScheme.lastIndexOf('/node_modules/');
  if (nodeModules >= 0) return withoutScheme.slice(nodeModules + '/node_modules/'.length);
  for (const dir of BUILD_DIRS) {
    const at = withoutScheme.lastIndexOf(dir);
    if (at >= 0) return withoutScheme.slice(at + 1);
  }
  return withoutScheme;
}

/**
 * Self time of each node of the profile's call tree, in µs. Time comes from
 * `samples`/`timeDeltas` (each delta is the time up to that sample, charged to
 * the sampled node); profiles without them fall back to hit counts spread
 * evenly over the profile's duration.
 */
function selfMicrosByNode(profile: CpuProfile): Map<number, number> {
  const selfMicros = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  if (samples.length > 0 && deltas.length === samples.length) {
    // Charge each interval to the sample that ends it, except the first (its delta precedes any sample).
    for (let index = 0; index < samples.length; index++) {
      const nodeId = samples[index]!;
      const delta = index + 1 < deltas.length ? deltas[index + 1]! : 0;
      selfMicros.set(nodeId, (selfMicros.get(nodeId) ?? 0) + Math.max(0, delta));
    }
  } else {
    const totalHits = profile.nodes.reduce((sum, node) => sum + (node.hitCount ?? 0), 0);
    const perHit = totalHits === 0 ? 0 : (profile.endTime - profile.startTime) / totalHits;
    for (const node of profile.nodes) selfMicros.set(node.id, (node.hitCount ?? 0) * perHit);
  }
  return selfMicros;
}

/** Self time per function (the `top` largest) and per package / project folder. */
export function summarizeProfile(profile: CpuProfile, top = 15): ProfileSummary {
  const selfMicrosByNodeId = selfMicrosByNode(profile);

  const byFunction = new Map<string, { functionName: string; url: string; lineNumber: number; micros: number }>();
  let totalMicros = 0;
  let idleMicros = 0;
  for (const node of profile.nodes) {
    const micros = selfMicrosByNodeId.get(node.id) ?? 0;
    if (micros === 0) continue;
    totalMicros += micros;
    const functionName = node.callFrame.functionName === '' ? '(anonymous)' : node.callFrame.functionName;
    if (functionName === IDLE) idleMicros += micros;
    const key = `${functionName}\u0000${node.callFrame.url}\u0000${node.callFrame.lineNumber}`;
    const entry = byFunction.get(key);
    if (entry === undefined) {
      byFunction.set(key, { functionName, url: node.callFrame.url, lineNumber: node.callFrame.lineNumber, micros });
    } else {
      entry.micros += micros;
    }
  }
  const busyMicros = totalMicros - idleMicros;
  const bucketMicros = new Map<string, number>();
  for (const entry of byFunction.values()) {
    if (entry.functionName === IDLE) continue;
    const bucket = bucketOf(entry.functionName, entry.url);
    bucketMicros.set(bucket, (bucketMicros.get(bucket) ?? 0) + entry.micros);
  }
  const buckets = [...bucketMicros.entries()]
    .sort((left, right) => right[1] - left[1] || left[0].localeCompare(right[0]))
    .map(([bucket, micros]) => ({
      bucket,
      selfMs: micros / 1000,
      percentOfBusy: busyMicros === 0 ? 0 : (micros / busyMicros) * 100,
    }));
  const entries = [...byFunction.values()]
    .filter((entry) => entry.functionName !== IDLE)
    .sort((left, right) => right.micros - left.micros || left.functionName.localeCompare(right.functionName))
    .slice(0, top)
    .map((entry) => ({
      functionName: entry.functionName,
      url: shortenUrl(entry.url),
      // V8 line numbers are zero-based.
      lineNumber: entry.lineNumber + 1,
      selfMs: entry.micros / 1000,
      percentOfBusy: busyMicros === 0 ? 0 : (entry.micros / busyMicros) * 100,
    }));
  return { totalMs: totalMicros / 1000, idleMs: idleMicros / 1000, busyMs: busyMicros / 1000, entries, buckets };
}

/** Sums several profiles (one per worker process) into one summary. */
export function mergeProfiles(profiles: CpuProfile[]): CpuProfile {
  const nodes: CpuProfileNode[] = [];
  const samples: number[] = [];
  const timeDeltas: number[] = [];
  let offset = 0;
  let startTime = Number.POSITIVE_INFINITY;
  let endTime = 0;
  for (const profile of profiles) {
    const maxId = profile.nodes.reduce((max, node) => Math.max(max, node.id), 0);
    for (const node of profile.nodes)
      nodes.push({ ...node, id: node.id + offset, children: node.children?.map((child) => child + offset) });
    const profileSamples = profile.samples ?? [];
    const profileDeltas = profile.timeDeltas ?? [];
    // Each profile's first delta precedes its samples; keep the pairing by pushing a zero delta in front.
    for (let index = 0; index < profileSamples.length; index++) {
      samples.push(profileSamples[index]! + offset);
      timeDeltas.push(index === 0 ? 0 : (profileDeltas[index] ?? 0));
    }
    startTime = Math.min(startTime, profile.startTime);
    endTime = Math.max(endTime, profile.endTime);
    offset += maxId + 1;
  }
  return { nodes, samples, timeDeltas, startTime: Number.isFinite(startTime) ? startTime : 0, endTime };
}
