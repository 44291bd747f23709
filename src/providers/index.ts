/** Provider adapters: the registry, the adapters, and the helpers other layers may reuse. */
export {
  createProviders,
  createPool,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  type ProviderSet,
} from './registry.js';
export { createOpenAICompatibleProvider } from './openai-compatible.js';
export { createOllamaProvider } from './ollama.js';
export { redact } from './redact.js';
export { parseRetryAfterMs } from './retry-after.js';
export { isContextLengthMessage } from './provider-error.js';
export type * from './types.js';
