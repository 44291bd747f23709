import { roundUsd } from '../contract/rounding.js';

export { roundUsd };

/** Prices are per 1k tokens, as in the seed's config. */
export interface ModelPrices {
  cost_per_1k_prompt: number;
  cost_per_1k_completion: number;
  /** Prompt tokens from the provider's cache; unset: the prompt price. */
  cost_per_1k_cached_prompt?: number | undefined;
}

/** `cachedPromptTokens` are part of `promptTokens`, priced at the cached price when the model has one. */
export function costUsd(
  prices: ModelPrices | undefined,
  promptTokens: number,
  completionTokens: number,
  cachedPromptTokens = 0,
): number {
  if (prices === undefined) return 0;
  const cached = Math.min(Math.max(0, cachedPromptTokens), promptTokens);
  const cachedPrice = prices.cost_per_1k_cached_prompt ?? prices.cost_per_1k_prompt;
  return roundUsd(
    ((promptTokens - cached) * prices.cost_per_1k_prompt +
      cached * cachedPrice +
      completionTokens * prices.cost_per_1k_completion) /
      1000,
  );
}
