import assert from 'node:assert/strict';
import type { UsageEvent } from '../../src/contract/usage-event.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Exactly one usage event for each of `ids` among `events` (a list a subscription to `llm.usage.>` keeps
 * filling): waits up to 8 s for all of them, then 300 ms more for any second copy, and asserts.
 */
export async function eventsOnce(events: readonly UsageEvent[], ids: string[]): Promise<UsageEvent[]> {
  for (let waited = 0; waited < 8_000; waited += 25) {
    if (ids.every((id) => events.some((event) => event.request_id === id))) break;
    await sleep(25);
  }
  await sleep(300);
  return ids.map((id) => {
    const all = events.filter((event) => event.request_id === id);
    assert.equal(all.length, 1, `exactly one usage event for ${id}: ${JSON.stringify(all)}`);
    return all[0]!;
  });
}
