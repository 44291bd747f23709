import type { ResolvedConfig } from '../config/load.js';
import type { Provider } from '../providers/types.js';
import { DeploymentRouter, type RouterOptions } from './router.js';
import type { Router } from './types.js';

export type {
  ChatRouter,
  DeploymentHealth,
  RoutedCall,
  RoutedResponse,
  RoutedStream,
  RouteTarget,
  Router,
} from './types.js';
export type { RouterOptions } from './router.js';

/**
 * The router of one worker: logical models to deployments, with retries,
 * fallbacks, cooldowns and deadlines. All config lookups happen here, once.
 */
export function createRouter(
  options: { config: ResolvedConfig; providers: Map<string, Provider> } & Partial<RouterOptions>,
): Router {
  return new DeploymentRouter(options);
}
