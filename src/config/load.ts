import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import {
  configSchema,
  type Config,
  type DeploymentConfig,
  type ModelConfig,
  type ProviderConfig,
  type ProviderType,
} from './schema.js';

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`${source} is not valid:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** A provider as the rest of the program sees it: its type settled and its key read from the environment. */
export interface ResolvedProvider extends Omit<ProviderConfig, 'type'> {
  name: string;
  type: ProviderType;
  /** Read from `api_key_env`; never logged, never put in a reply or event. */
  apiKey: string | undefined;
}

export interface ResolvedModel extends Omit<ModelConfig, 'deployments' | 'provider' | 'physical_name'> {
  name: string;
  deployments: Array<DeploymentConfig>;
}

export interface ResolvedConfig extends Omit<Config, 'providers' | 'models'> {
  providers: Map<string, ResolvedProvider>;
  models: Map<string, ResolvedModel>;
  /** Where the file was read from, for messages. */
  source: string;
}

/**
 * A provider without `type` is Ollama when its URL looks like Ollama's
 * (port 11434, or "ollama" in the host name) and OpenAI-compatible otherwise;
 * so the seed's `local: {base_url: "http://localhost:11434"}` talks to Ollama.
 */
export function inferProviderType(baseUrl: string): ProviderType {
  const url = new URL(baseUrl);
  if (url.port === '11434' || url.hostname.includes('ollama')) return 'ollama';
  return 'openai';
}

function formatIssue(issue: z.ZodIssue): string {
  const path = issue.path.join('.');
  if (issue.code === z.ZodIssueCode.unrecognized_keys) {
    return `${path === '' ? '(top level)' : path}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((key) => `"${key}"`).join(', ')}`;
  }
  return `${path === '' ? '(top level)' : path}: ${issue.message}`;
}

/** Validate an already-decoded document; every problem is listed by path. */
export function resolveConfig(
  document: unknown,
  source = 'config',
  env: NodeJS.ProcessEnv = process.env,
): ResolvedConfig {
  const result = configSchema.safeParse(document ?? {});
  if (!result.success) throw new ConfigError(source, result.error.issues.map(formatIssue));
  const config = result.data;

  const providers = new Map<string, ResolvedProvider>();
  for (const [name, provider] of Object.entries(config.providers)) {
    const { type, ...rest } = provider;
    const apiKey = provider.api_key_env === undefined ? undefined : env[provider.api_key_env] || undefined;
    providers.set(name, { ...rest, name, type: type ?? inferProviderType(provider.base_url), apiKey });
  }

  const models = new Map<string, ResolvedModel>();
  for (const [name, model] of Object.entries(config.models)) {
    const { deployments, provider, physical_name, ...rest } = model;
    const resolvedDeployments: DeploymentConfig[] = deployments ?? [
      { provider: provider as string, physical_name: physical_name ?? name, weight: 1 },
    ];
    models.set(name, { ...rest, name, deployments: resolvedDeployments });
  }

  const { providers: _providers, models: _models, ...rest } = config;
  return { ...rest, providers, models, source };
}

/** Parse YAML text; YAML syntax errors are reported with line and column. */
export function parseConfigText(text: string, source = 'config', env: NodeJS.ProcessEnv = process.env): ResolvedConfig {
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new ConfigError(
      source,
      document.errors.map((error) => error.message.split('\n')[0] ?? error.message),
    );
  }
  return resolveConfig(document.toJS(), source, env);
}

export const DEFAULT_CONFIG_PATH = 'config.yaml';

export function configPathFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.LLM_PROXY_CONFIG || DEFAULT_CONFIG_PATH;
}

export function loadConfigFile(
  path: string = configPathFromEnv(),
  env: NodeJS.ProcessEnv = process.env,
): ResolvedConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(path, [`cannot read the file: ${(error as NodeJS.ErrnoException).code ?? String(error)}`]);
  }
  return parseConfigText(text, path, env);
}

/** Providers whose `api_key_env` names a variable that is not set: a warning at start, an error at call time. */
export function missingApiKeys(config: ResolvedConfig): Array<{ provider: string; env: string }> {
  const missing: Array<{ provider: string; env: string }> = [];
  for (const provider of config.providers.values()) {
    if (provider.api_key_env !== undefined && provider.apiKey === undefined)
      missing.push({ provider: provider.name, env: provider.api_key_env });
  }
  return missing;
}
