import type { AttemptRecord } from '../contract/reply.js';
import type { ProviderUsage } from '../providers/types.js';

/** The provider's counts on an attempt's record: a side it did not count is left out, not written as 0. */
export function recordUsage(record: AttemptRecord, usage: ProviderUsage): void {
  if (usage.missing !== 'prompt') record.prompt_tokens = usage.promptTokens;
  if (usage.missing !== 'completion') record.completion_tokens = usage.completionTokens;
}
