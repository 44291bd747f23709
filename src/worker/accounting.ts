import type { ResolvedConfig, ResolvedModel } from '../config/load.js';
import type { AttemptRecord } from '../contract/reply.js';
import type { ChatRequest, ToolCall } from '../contract/request.js';
import { costUsd, roundUsd } from '../usage/cost.js';
import { estimateCompletionTokens, estimatePromptTokens } from '../usage/tokens.js';
import type { ProviderUsage } from '../providers/types.js';

/** Tokens of one request: the provider's when it reported them, else estimated (and flagged). */
export interface TokenCount {
  promptTokens: number;
  completionTokens: number;
  estimated: boolean;
}

export function countTokens(
  request: ChatRequest,
  usage: ProviderUsage | undefined,
  output: { content?: string | null; reasoningContent?: string | undefined; toolCalls?: ToolCall[] | undefined },
): TokenCount {
  if (usage !== undefined) return { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, estimated: false };
  return { promptTokens: estimatePromptTokens(request), completionTokens: estimateCompletionTokens(output), estimated: true };
}

/**
 * Prices of the logical model a deployment belongs to: a failed attempt is
 * recorded by provider and physical name only, so find the model that routes
 * there (the requested model first, then its fallbacks' order in config).
 */
function modelForAttempt(config: ResolvedConfig, attempt: AttemptRecord, preferred: string | undefined): ResolvedModel | undefined {
  const matches = (model: ResolvedModel) =>
    model.deployments.some((deployment) => deployment.provider === attempt.provider && deployment.physical_name === attempt.model_resolved);
  const first = preferred === undefined ? undefined : config.models.get(preferred);
  if (first !== undefined && matches(first)) return first;
  for (const model of config.models.values()) if (matches(model)) return model;
  return first;
}

/**
 * Cost of a request: the serving model's prices for the tokens of the answer,
 * plus what earlier attempts consumed before failing (a stream cut after some
 * output, a provider that reported usage on an error).
 */
export function requestCost(
  config: ResolvedConfig,
  servingModel: string | undefined,
  tokens: { promptTokens: number; completionTokens: number } | undefined,
  attempts: AttemptRecord[],
  requestedModel: string | undefined,
): number {
  let total = 0;
  if (tokens !== undefined && servingModel !== undefined) total += costUsd(config.models.get(servingModel), tokens.promptTokens, tokens.completionTokens);
  for (const attempt of attempts) {
    if (attempt.error_code === null) continue;
    const prompt = attempt.prompt_tokens ?? 0;
    const completion = attempt.completion_tokens ?? 0;
    if (prompt === 0 && completion === 0) continue;
    total += costUsd(modelForAttempt(config, attempt, requestedModel), prompt, completion);
  }
  return roundUsd(total);
}

/** Moved to the contract: the typed client assembles the same deltas (a stream end that left `tool_calls` out). */
export { ToolCallAssembler } from '../contract/tool-call-assembler.js';
