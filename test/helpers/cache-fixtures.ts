import type { CachedAnswer, CacheKey, JsonValue } from '../../src/cache/index.js';
import type { ChatReply } from '../../src/contract/reply.js';

/** A reply such as a worker caches (issue 18 tests). */
export function reply(content: string, model = 'gpt-test'): ChatReply {
  return {
    content,
    usage: { prompt_tokens: 10, completion_tokens: 20, total_tokens: 30 },
    provider: 'openai',
    model_resolved: 'gpt-test-2025',
    latency_ms: 12,
    model,
    request_id: 'req-1',
    finish_reason: 'stop',
    cost_usd: 0.0012,
    cached: false,
  };
}

export function answer(content: string, storedAt: number, model = 'gpt-test', chunks?: JsonValue[]): CachedAnswer {
  return { stored_at: storedAt, model, reply: reply(content, model), ...(chunks === undefined ? {} : { chunks }) };
}

let counter = 0;
/** A fresh key (a base64url-like hash) for `model`. */
export function key(model = 'gpt-test', hash?: string): CacheKey {
  counter += 1;
  return { model, hash: hash ?? `h${counter}-${Math.random().toString(36).slice(2, 10)}` };
}

/** A logger that records its warnings. */
export function recordingLogger(): {
  warn(fields: object, message: string): void;
  warnings: Array<{ fields: object; message: string }>;
} {
  const warnings: Array<{ fields: object; message: string }> = [];
  return {
    warnings,
    warn(fields, message) {
      warnings.push({ fields, message });
    },
  };
}

/** A 5 MB streamed answer: 5 000 chunks of ~1 KB, as opaque JSON. */
export function bigAnswer(storedAt: number, model = 'gpt-test'): CachedAnswer {
  const chunks: JsonValue[] = [];
  for (let index = 0; index < 5_000; index += 1) {
    chunks.push({ seq: index, delta: { content: `${index}:${'é'.repeat(500)}` } });
  }
  return answer('big', storedAt, model, chunks);
}
