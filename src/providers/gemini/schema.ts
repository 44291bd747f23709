import { z } from 'zod';

/**
 * Gemini's `GenerateContentResponse` (generateContent, and each `streamGenerateContent` event),
 * limited to the fields we use; Google adds fields freely, and proto3 JSON leaves out zero values,
 * so everything is optional.
 */
const safetyRatingSchema = z.object({
  category: z.string().nullish(),
  probability: z.string().nullish(),
  blocked: z.boolean().nullish(),
});

export type GeminiSafetyRating = z.infer<typeof safetyRatingSchema>;

const partSchema = z.object({
  text: z.string().nullish(),
  // A thought summary (with `thinkingConfig.includeThoughts`).
  thought: z.boolean().nullish(),
  functionCall: z
    .object({
      id: z.string().nullish(),
      name: z.string(),
      args: z.record(z.string(), z.unknown()).nullish(),
    })
    .nullish(),
});

const candidateSchema = z.object({
  // Which of `candidateCount` candidates this is; proto3 JSON leaves out 0. Read leniently (response.ts).
  index: z.number().nullish(),
  content: z.object({ parts: z.array(partSchema).nullish() }).nullish(),
  finishReason: z.string().nullish(),
  finishMessage: z.string().nullish(),
  safetyRatings: z.array(safetyRatingSchema).nullish(),
});

const count = z.number().nonnegative().nullish();

const usageMetadataSchema = z.object({
  promptTokenCount: count,
  candidatesTokenCount: count,
  thoughtsTokenCount: count,
  cachedContentTokenCount: count,
  toolUsePromptTokenCount: count,
});

export type GeminiUsageMetadata = z.infer<typeof usageMetadataSchema>;

export const geminiResponseSchema = z.object({
  candidates: z.array(candidateSchema).nullish(),
  promptFeedback: z
    .object({
      blockReason: z.string().nullish(),
      blockReasonMessage: z.string().nullish(),
      safetyRatings: z.array(safetyRatingSchema).nullish(),
    })
    .nullish(),
  usageMetadata: usageMetadataSchema.nullish(),
  modelVersion: z.string().nullish(),
});

export type GeminiResponse = z.infer<typeof geminiResponseSchema>;
