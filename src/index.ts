/**
 * llm-proxy as a library: run a worker inside your own process, or reuse the
 * wire contract. Agents that only call the proxy want `llm-proxy/client`.
 *
 * ```ts
 * import { loadConfigFile, startWorker } from 'llm-proxy';
 * const worker = await startWorker({ config: loadConfigFile('config.yaml') }); // NATS_URL, LLM_PROXY_SECRET from env
 * process.once('SIGTERM', () => void worker.stop());
 * ```
 */
export {
  startWorker,
  SERVICE_NAME,
  VERSION,
  type Worker,
  type WorkerOptions,
  type WorkerModelsReply,
  type ShutdownReport,
  type RequestContext,
  type RequestHooks,
  type RequestOutcome,
  type WorkerStats,
} from './worker/index.js';
export {
  loadConfigFile,
  parseConfigText,
  resolveConfig,
  ConfigError,
  type ResolvedConfig,
  type ConfigInput,
} from './config/index.js';
export {
  connectToNats,
  connectionOptions,
  natsUrlFromEnv,
  DEFAULT_NATS_URL,
  type ConnectionSettings,
} from './bus/connect.js';
export { createLogger, type Logger } from './telemetry/logger.js';
export {
  UsagePublisher,
  buildUsageEvent,
  estimatePromptTokens,
  estimateCompletionTokens,
  costUsd,
} from './usage/index.js';
export * from './contract/index.js';
