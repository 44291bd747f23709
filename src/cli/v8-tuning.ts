/**
 * V8 settings for a long-running worker process, applied by `llm-proxy worker`
 * and `llm-proxy dev` (not by the library: a process-wide switch is the
 * process owner's call).
 *
 * Allocation-site pretenuring is off. V8 watches which allocation sites make
 * objects that survive young-generation collections and, past a threshold,
 * allocates everything from those sites straight into the old generation.
 * LLM calls are long (seconds), so a burst of them teaches V8 that the request
 * path's objects live long; the decision sticks, and afterwards every request,
 * fast ones included, fills the old generation with short-lived garbage: more
 * GC, more RSS and more CPU per request, for good. With pretenuring off, such a
 * burst changes nothing, and a steady load of long requests costs the same as
 * with it on (the measurements are in docs/bench/results.md).
 *
 * Set `--allocation-site-pretenuring` (or its `--no-` form) yourself, on the
 * node command line or in NODE_OPTIONS, and your choice is kept.
 */
import { setFlagsFromString } from 'node:v8';

const PRETENURING_FLAG = 'allocation-site-pretenuring';

/** Whether the operator chose the pretenuring setting on the command line or in NODE_OPTIONS. */
export function pretenuringChosenByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  const flags = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)];
  return flags.some((flag) => flag.replace(/_/g, '-').includes(PRETENURING_FLAG));
}

/** What a worker sets (the benchmark gives its floors the same). */
export const WORKER_V8_FLAGS: readonly string[] = [`--no-${PRETENURING_FLAG}`];

/** Returns the flags it set (none when the operator chose already). */
export function tuneV8ForWorker(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string | undefined = process.env.NODE_OPTIONS,
  setFlags: (flag: string) => void = setFlagsFromString,
): string[] {
  if (pretenuringChosenByOperator(execArgv, nodeOptions)) return [];
  for (const flag of WORKER_V8_FLAGS) setFlags(flag);
  return [...WORKER_V8_FLAGS];
}
