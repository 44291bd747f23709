import { roundUsd } from '../contract/rounding.js';

export { roundUsd };

/** Prices are per 1k tokens, as in the seed's config. */
export interface ModelPrices {
  cost_per_1k_prompt: number;
  cost_per_1k_completion: number;
}

export function costUsd(prices: ModelPrices | undefined, promptTokens: number, completionTokens: number): number {
  if (prices === undefined) return 0;
  return roundUsd((promptTokens * prices.cost_per_1k_prompt + completionTokens * prices.cost_per_1k_completion) / 1000);
}
