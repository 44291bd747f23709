import { createHash } from 'node:crypto';
import type { CacheKey } from '../cache/index.js';
import type { ResolvedModel } from '../config/load.js';
import type { ChatRequest } from '../contract/request.js';

/**
 * Which requests the response cache (src/cache: memory in front of the shared store) answers, and
 * under which key. A request is cacheable when:
 * - `cache` is not `"bypass"` (streamed or not: one entry serves both, src/worker/cache-replay.ts);
 * - its output is meant to be reproducible: `temperature: 0` or a `seed`;
 * - it carries no `tools`/`tool_choice` unless `cache` is `"force"` (tool calls drive side effects
 *   in the agent; replaying an old decision is not what it asked for), no
 *   `logprobs`, and `n` is 1.
 * The key is a hash of everything the provider sees (model, messages,
 * sampling parameters, response_format, provider_options); our own fields
 * (metadata, request_id, timeout_ms, cache) are left out, so two agents
 * asking the same question share an entry.
 */
const NOT_IN_KEY = new Set(['metadata', 'request_id', 'timeout_ms', 'cache', 'stream', 'stream_options']);

export function isCacheable(request: ChatRequest): boolean {
  if (request.cache === 'bypass') return false;
  if (request.temperature !== 0 && request.seed === undefined) return false;
  if (request.cache !== 'force' && (request.tools !== undefined || request.tool_choice !== undefined)) return false;
  if (request.logprobs === true) return false;
  return true;
}

/** A hash of what the provider sees (our own fields left out, key order ignored), and of `also` when given. */
export function cacheKey(request: ChatRequest, also?: unknown): string {
  const kept: Record<string, unknown> = {};
  for (const key of Object.keys(request).sort()) {
    if (!NOT_IN_KEY.has(key)) kept[key] = (request as Record<string, unknown>)[key];
  }
  const hash = createHash('sha256').update(JSON.stringify(kept));
  if (also !== undefined) hash.update(JSON.stringify(also));
  return hash.digest('base64url');
}

/**
 * Where a request's answer is cached: its logical model, and a hash of what the provider sees plus
 * the model's deployments (provider, physical name), so that a config change never serves an answer
 * of another model.
 */
export function cacheKeyFor(request: ChatRequest, model: Pick<ResolvedModel, 'deployments'> | undefined): CacheKey {
  const deployments = (model?.deployments ?? []).map((deployment) => [deployment.provider, deployment.physical_name]);
  return { model: request.model, hash: cacheKey(request, deployments) };
}
