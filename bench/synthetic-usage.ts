/**
 * The synthetic usage load of the bench's `sink` and `scale` sections: valid usage events spread over
 * 10,000 agents (each in one of 300 microDAOs), 8 models and 90 days back from `now`, cheap and
 * deterministic, published into a usage stream of the section's own.
 */
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';

const DAY = 86_400_000;
const MODELS = [
  'gpt-4.1-mini',
  'gpt-4.1',
  'deepseek-chat',
  'deepseek-reasoner',
  'llama3.2',
  'claude-sonnet',
  'gemini-flash',
  'qwen',
];

/** Event `index` of the load (ids prefixed by `tag`, so that two sections' events never meet). */
export function syntheticEvent(index: number, now: number, tag: string): UsageEvent {
  const agent = (index * 7_919) % 10_000;
  const prompt = 50 + ((index * 31) % 2_000);
  const status = index % 25 === 0 ? 'error' : 'ok';
  const completion = status === 'ok' ? (index * 104_729) % 800 : 0;
  const model = MODELS[index % MODELS.length] as string;
  return {
    v: 1,
    request_id: `${tag}-${index}`,
    event_id: `${tag}-ev-${index}`,
    ts: new Date(now - ((index * 2_654_435_761) % (90 * DAY))).toISOString(),
    agent_id: `agent:${agent}`,
    microdao_id: `microdao:${agent % 300}`,
    channel_id: 'bench',
    model,
    provider: index % 2 === 0 ? 'openai' : 'deepseek',
    model_resolved: model,
    status,
    error_code: status === 'ok' ? null : 'upstream_error',
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    tokens_estimated: false,
    cost_usd: (prompt * 0.0004 + completion * 0.0016) / 1000,
    latency_ms: 200 + (index % 3_000),
    ttft_ms: null,
    stream: false,
    cached: false,
    attempts: 1,
    worker_id: `bench-worker-${index % 4}`,
  };
}

/** Publishes `count` events of the load under `prefix` (1,000 in flight); returns events a second. */
export async function publishSynthetic(
  connection: NatsConnection,
  prefix: string,
  count: number,
  tag: string,
): Promise<number> {
  const js = jetstream(connection);
  const subjects = subjectsFor(prefix);
  const now = Date.now();
  const started = performance.now();
  for (let start = 0; start < count; start += 1_000) {
    const batch: Promise<unknown>[] = [];
    for (let index = start; index < Math.min(start + 1_000, count); index += 1) {
      const event = syntheticEvent(index, now, tag);
      batch.push(js.publish(subjects.usageFor(agentToken(event.agent_id)), JSON.stringify(event)));
    }
    await Promise.all(batch);
  }
  return count / ((performance.now() - started) / 1000);
}
