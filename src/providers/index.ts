/** Provider adapters: the registry, the adapters, and the helpers other layers may reuse. */
export {
  createProviders,
  createPool,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  PROVIDER_ADAPTERS,
  unknownProviderTypes,
  type ProviderSet,
} from './registry.js';
export { createOpenAICompatibleProvider } from './openai/adapter.js';
export { createAzureProvider } from './azure/adapter.js';
export { createAnthropicProvider } from './anthropic/adapter.js';
export { createGeminiProvider } from './gemini/adapter.js';
export { createOllamaProvider } from './ollama/adapter.js';
export { redact } from './transport/redact.js';
export { parseRetryAfterMs } from './transport/retry-after.js';
export { isContextLengthMessage } from './transport/provider-error.js';
export type * from './types.js';
