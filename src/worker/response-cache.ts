import { createHash } from 'node:crypto';
import type { ChatReply } from '../contract/reply.js';
import type { ChatRequest } from '../contract/request.js';

/**
 * An in-memory LRU of replies to deterministic requests (per worker; not
 * shared). A request is cacheable when:
 * - it is not streamed, and `cache` is not `"bypass"`;
 * - its output is meant to be reproducible: `temperature: 0` or a `seed`;
 * - it carries no `tools`/`tool_choice` (tool calls drive side effects in
 *   the agent; replaying an old decision is not what it asked for), no
 *   `logprobs`, and `n` is 1.
 * The key is a hash of everything the provider sees (model, messages,
 * sampling parameters, response_format, provider_options); our own fields
 * (metadata, request_id, timeout_ms, cache) are left out, so two agents
 * asking the same question share an entry.
 */
const NOT_IN_KEY = new Set(['metadata', 'request_id', 'timeout_ms', 'cache', 'stream', 'stream_options']);

export function isCacheable(request: ChatRequest): boolean {
  if (request.stream === true || request.cache === 'bypass') return false;
  if (request.temperature !== 0 && request.seed === undefined) return false;
  if (request.tools !== undefined || request.tool_choice !== undefined) return false;
  if (request.logprobs === true) return false;
  return true;
}

export function cacheKey(request: ChatRequest): string {
  const kept: Record<string, unknown> = {};
  for (const key of Object.keys(request).sort()) {
    if (!NOT_IN_KEY.has(key)) kept[key] = (request as Record<string, unknown>)[key];
  }
  return createHash('sha256').update(JSON.stringify(kept)).digest('base64url');
}

interface Entry {
  reply: ChatReply;
  expiresAt: number;
}

export class ResponseCache {
  readonly #entries = new Map<string, Entry>();
  readonly #maxEntries: number;
  readonly #ttlMs: number;

  constructor(settings: { maxEntries: number; ttlMs: number }) {
    this.#maxEntries = settings.maxEntries;
    this.#ttlMs = settings.ttlMs;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: string, now = Date.now()): ChatReply | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    this.#entries.delete(key);
    if (entry.expiresAt <= now) return undefined;
    // Re-inserted to mark it most recently used (a Map keeps insertion order).
    this.#entries.set(key, entry);
    return entry.reply;
  }

  set(key: string, reply: ChatReply, now = Date.now()): void {
    this.#entries.delete(key);
    this.#entries.set(key, { reply, expiresAt: now + this.#ttlMs });
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
  }
}
