export {
  startWorker,
  SERVICE_NAME,
  VERSION,
  type Worker,
  type WorkerOptions,
  type WorkerModelsReply,
  type ShutdownReport,
} from './worker.js';
export type { RequestContext, RequestHooks, RequestOutcome } from './hooks.js';
export type { WorkerStats } from './counters.js';
export { isCacheable, cacheKey } from './response-cache.js';
