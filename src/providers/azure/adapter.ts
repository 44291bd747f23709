/**
 * Azure OpenAI: OpenAI's chat completions under a deployment,
 * `POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`, the key in
 * `api-key`. The deployment is the model's `physical_name`; everything else is the OpenAI adapter.
 */
import { createOpenAICompatibleProvider } from '../openai/adapter.js';
import type { AuthHeaders } from '../transport/http.js';
import type { Provider, ProviderSettings } from '../types.js';

/** The latest generally available data-plane version when this was written (`api_version` overrides it). */
export const DEFAULT_AZURE_API_VERSION = '2024-10-21';

const azureAuth: AuthHeaders = (apiKey) => ({ 'api-key': apiKey });

export function createAzureProvider(settings: ProviderSettings): Provider {
  const query = `?api-version=${encodeURIComponent(settings.apiVersion ?? DEFAULT_AZURE_API_VERSION)}`;
  return createOpenAICompatibleProvider(settings, {
    chatPath: (deployment) => `/openai/deployments/${encodeURIComponent(deployment)}/chat/completions${query}`,
    auth: azureAuth,
  });
}
