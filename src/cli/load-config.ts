import { ConfigError, loadConfigFile, type ResolvedConfig } from '../config/index.js';
import { unknownProviderTypes } from '../providers/registry.js';

/** A config file, checked as the worker will use it: the schema, then the provider types registered. */
export function loadCheckedConfig(path: string): ResolvedConfig {
  const config = loadConfigFile(path);
  const unknown = unknownProviderTypes(config);
  if (unknown.length > 0) throw new ConfigError(config.source, unknown);
  return config;
}
