/**
 * Process RSS and CPU time from /proc (Linux), sampled by the bench while a
 * run is going: `/proc/<pid>/stat` fields 14-15 (utime, stime, in clock
 * ticks) and `VmRSS` from `/proc/<pid>/status`.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface ProcessSample {
  /** performance.now() at the time of reading. */
  atMs: number;
  rssBytes: number;
  /** user + system CPU time since the process started. */
  cpuMs: number;
}

let clockTicksPerSecond: number | undefined;

function clockTicks(): number {
  if (clockTicksPerSecond === undefined) {
    try {
      clockTicksPerSecond =
        Number.parseInt(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim(), 10) || 100;
    } catch {
      clockTicksPerSecond = 100;
    }
  }
  return clockTicksPerSecond;
}

/** utime + stime in ticks from a /proc/<pid>/stat line; the command name may hold spaces and parentheses. */
export function parseStatCpuTicks(statLine: string): number {
  const afterName = statLine.slice(statLine.lastIndexOf(')') + 2).split(' ');
  // afterName[0] is field 3 (state), so field N is afterName[N - 3].
  const userTicks = Number(afterName[14 - 3]);
  const systemTicks = Number(afterName[15 - 3]);
  if (!Number.isFinite(userTicks) || !Number.isFinite(systemTicks)) throw new Error('unreadable /proc stat line');
  return userTicks + systemTicks;
}

export function parseStatusRssBytes(statusText: string): number {
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(statusText);
  if (match === null) throw new Error('no VmRSS in /proc status');
  return Number(match[1]) * 1024;
}

/** One reading, or undefined when the process is gone or /proc is not there. */
export function sampleProcess(pid: number): ProcessSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return {
      atMs: performance.now(),
      rssBytes: parseStatusRssBytes(status),
      cpuMs: (parseStatCpuTicks(stat) / clockTicks()) * 1000,
    };
  } catch {
    return undefined;
  }
}

export interface ProcessUsage {
  /** CPU used over the window as a share of one core (100 = one core busy). */
  cpuPercent: number;
  rssStartBytes: number;
  rssEndBytes: number;
  rssMaxBytes: number;
}

/** CPU share and RSS over a run from the samples taken during it (first and last bound the window). */
export function usageFromSamples(samples: ProcessSample[]): ProcessUsage | undefined {
  const first = samples[0];
  const last = samples[samples.length - 1];
  if (first === undefined || last === undefined) return undefined;
  const wallMs = last.atMs - first.atMs;
  return {
    cpuPercent: wallMs > 0 ? ((last.cpuMs - first.cpuMs) / wallMs) * 100 : Number.NaN,
    rssStartBytes: first.rssBytes,
    rssEndBytes: last.rssBytes,
    rssMaxBytes: samples.reduce((max, sample) => Math.max(max, sample.rssBytes), 0),
  };
}

/** Samples several processes every `intervalMs` until stopped. */
export class ProcessSampler {
  private readonly samples = new Map<string, ProcessSample[]>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly pids: ReadonlyMap<string, number>) {}

  start(intervalMs: number): void {
    this.takeSample();
    this.timer = setInterval(() => this.takeSample(), intervalMs);
  }

  stop(): Map<string, ProcessSample[]> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.takeSample();
    return this.samples;
  }

  private takeSample(): void {
    for (const [name, pid] of this.pids) {
      const sample = sampleProcess(pid);
      if (sample === undefined) continue;
      let list = this.samples.get(name);
      if (list === undefined) {
        list = [];
        this.samples.set(name, list);
      }
      list.push(sample);
    }
  }
}
