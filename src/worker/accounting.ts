import type { ResolvedConfig } from '../config/load.js';
import type { AttemptRecord } from '../contract/reply.js';
import type { ToolCall } from '../contract/request.js';
import { costUsd, roundUsd } from '../usage/cost.js';
import { estimateCompletionTokens } from '../usage/tokens.js';
import type { ProviderUsage } from '../providers/types.js';

/** Tokens of one request: the provider's when it reported them, else estimated (and flagged). */
export interface TokenCount {
  promptTokens: number;
  completionTokens: number;
  estimated: boolean;
  /** Of the prompt tokens, those the provider served from its cache (0 when it said none). */
  cachedPromptTokens?: number;
}

/** What an answer produced, for estimating its tokens when the provider reported none. */
export interface ProducedOutput {
  content?: string | null;
  reasoningContent?: string | undefined;
  refusal?: string | undefined;
  toolCalls?: ToolCall[] | undefined;
  /** Every choice when there are several (`n` > 1): all of them count. */
  choices?: ProducedOutput[] | undefined;
}

/** The completion tokens of what was produced, every choice counted. */
function estimateProduced(output: ProducedOutput): number {
  if (output.choices === undefined || output.choices.length <= 1) return estimateCompletionTokens(output);
  let total = 0;
  for (const choice of output.choices) total += estimateCompletionTokens(choice);
  return total;
}

/**
 * The provider's counts; an estimate of what it did not count (one side, or both when it reported
 * no usage), flagged. `estimatePrompt` is the request record's, which tokenizes the prompt once for
 * limits and accounting together.
 */
export function countTokens(
  usage: ProviderUsage | undefined,
  estimatePrompt: () => number,
  output: ProducedOutput,
): TokenCount {
  if (usage === undefined)
    return { promptTokens: estimatePrompt(), completionTokens: estimateProduced(output), estimated: true };
  switch (usage.missing) {
    case undefined:
      return {
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
        estimated: false,
        ...(usage.cachedPromptTokens !== undefined ? { cachedPromptTokens: usage.cachedPromptTokens } : {}),
      };
    case 'prompt':
      return { promptTokens: estimatePrompt(), completionTokens: usage.completionTokens, estimated: true };
    case 'completion':
      return { promptTokens: usage.promptTokens, completionTokens: estimateProduced(output), estimated: true };
  }
}

/**
 * Cost of a request: the serving model's prices for the tokens of the answer, plus what earlier
 * attempts consumed before failing (a stream cut after some output, a provider that reported usage
 * on an error), each at the prices of the logical model it served.
 */
export function requestCost(
  config: Pick<ResolvedConfig, 'models'>,
  servingModel: string | undefined,
  tokens: { promptTokens: number; completionTokens: number; cachedPromptTokens?: number } | undefined,
  attempts: AttemptRecord[],
): number {
  let total = 0;
  if (tokens !== undefined && servingModel !== undefined)
    total += costUsd(
      config.models.get(servingModel),
      tokens.promptTokens,
      tokens.completionTokens,
      tokens.cachedPromptTokens,
    );
  for (const attempt of attempts) {
    if (attempt.error_code === null) continue;
    const prompt = attempt.prompt_tokens ?? 0;
    const completion = attempt.completion_tokens ?? 0;
    if (prompt === 0 && completion === 0) continue;
    total += costUsd(config.models.get(attempt.model), prompt, completion);
  }
  return roundUsd(total);
}
