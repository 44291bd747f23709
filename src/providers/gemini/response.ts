/**
 * Gemini's `GenerateContentResponse` to ours. A streamed event is the same object with the parts
 * produced since the previous one, so one state machine serves both: a whole answer is a stream of
 * one event, folded. With `candidateCount` > 1 (our `n`) every candidate is a choice, known by its
 * `index`: an event may carry several, each with its own parts, finish reason and safety ratings.
 */
import type { ToolCall } from '../../contract/request.js';
import type { FinishReason, ToolCallDelta } from '../../contract/reply.js';
import { malformedResponse } from '../transport/provider-error.js';
import type { GeminiResponse, GeminiSafetyRating, GeminiUsageMetadata } from './schema.js';
import type { ProviderChoice, ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../types.js';

/**
 * Gemini's finish reasons (js-genai `FinishReason`). Output withheld by a filter is
 * `content_filter` (with the reason as `refusal`); a tool call the model got wrong, or a language
 * it does not serve, is `error`: the answer is not complete. `OTHER` and reasons we do not know are
 * `stop`, as for the other providers.
 */
const GEMINI_FINISH_REASONS: Record<string, FinishReason> = {
  STOP: 'stop',
  MAX_TOKENS: 'length',
  SAFETY: 'content_filter',
  RECITATION: 'content_filter',
  BLOCKLIST: 'content_filter',
  PROHIBITED_CONTENT: 'content_filter',
  SPII: 'content_filter',
  IMAGE_SAFETY: 'content_filter',
  IMAGE_PROHIBITED_CONTENT: 'content_filter',
  IMAGE_RECITATION: 'content_filter',
  MALFORMED_FUNCTION_CALL: 'error',
  UNEXPECTED_TOOL_CALL: 'error',
  TOO_MANY_TOOL_CALLS: 'error',
  LANGUAGE: 'error',
};

export function mapGeminiFinishReason(reason: string, hasToolCalls: boolean): FinishReason {
  const mapped = GEMINI_FINISH_REASONS[reason] ?? 'stop';
  // Gemini says STOP after function calls; clients look for `tool_calls`.
  return mapped === 'stop' && hasToolCalls ? 'tool_calls' : mapped;
}

/** `blocked by Gemini: SAFETY (HARM_CATEGORY_…)`: the categories that blocked, else those rated MEDIUM or HIGH. */
export function describeBlock(
  reason: string,
  ratings: ReadonlyArray<GeminiSafetyRating> | null | undefined,
  message?: string | null,
): string {
  const blocked = (ratings ?? []).filter((rating) => rating.blocked === true);
  const flagged =
    blocked.length > 0 ? blocked : (ratings ?? []).filter((r) => /^(HIGH|MEDIUM)$/.test(r.probability ?? ''));
  const categories = flagged.map((rating) => rating.category).filter((category) => typeof category === 'string');
  const text = `blocked by Gemini: ${reason}${categories.length > 0 ? ` (${categories.join(', ')})` : ''}`;
  return message === undefined || message === null || message === '' ? text : `${text}: ${message}`;
}

/**
 * `promptTokenCount` (cached tokens included) plus `toolUsePromptTokenCount` (results of
 * Google-run tools, read as input); the answer is `candidatesTokenCount` plus `thoughtsTokenCount`,
 * both billed as output. A count left out is zero (proto3 JSON omits zeros), but with no prompt
 * count at all the prompt side is marked missing.
 */
export function convertGeminiUsage(usage: GeminiUsageMetadata | null | undefined): ProviderUsage | undefined {
  if (usage === undefined || usage === null) return undefined;
  const completion = (usage.candidatesTokenCount ?? 0) + (usage.thoughtsTokenCount ?? 0);
  if (typeof usage.promptTokenCount !== 'number') {
    return completion > 0 ? { promptTokens: 0, completionTokens: completion, missing: 'prompt' } : undefined;
  }
  const converted: ProviderUsage = {
    promptTokens: usage.promptTokenCount + (usage.toolUsePromptTokenCount ?? 0),
    completionTokens: completion,
  };
  if (typeof usage.cachedContentTokenCount === 'number' && usage.cachedContentTokenCount > 0)
    converted.cachedPromptTokens = usage.cachedContentTokenCount;
  return converted;
}

/** What the converter remembers of one candidate (one choice) between events. */
interface CandidateState {
  /** Its function calls so far: the next one's `index` among its tool-call deltas. */
  toolCallCount: number;
  finished: boolean;
}

/** What the converter remembers between events. */
export interface GeminiStreamState {
  modelSent: boolean;
  /** The choices asked for (`n`): a blocked prompt refuses each of them. */
  choiceCount: number;
  /** Function calls so far, every candidate's: the next `call_<n>` id when Gemini gave none (unique in the answer). */
  callCount: number;
  /** Each candidate's own state, by index. */
  candidates: Map<number, CandidateState>;
  /** Candidate 0 (the first choice) finished: the stream is a complete answer. */
  finished: boolean;
  /** The last usageMetadata seen (each event repeats the totals so far); sent once, at the end. */
  usage: ProviderUsage | undefined;
}

export function createGeminiStreamState(choiceCount = 1): GeminiStreamState {
  return { modelSent: false, choiceCount, callCount: 0, candidates: new Map(), finished: false, usage: undefined };
}

type DeltaEvent = Extract<ProviderStreamEvent, { type: 'delta' }>;
type GeminiCandidate = NonNullable<GeminiResponse['candidates']>[number];

/** Our events name the choice past the first; the first's carry no index. */
const deltaFor = (index: number): DeltaEvent => (index === 0 ? { type: 'delta' } : { type: 'delta', index });
const finishFor = (finishReason: FinishReason, index: number): ProviderStreamEvent =>
  index === 0 ? { type: 'finish', finishReason } : { type: 'finish', finishReason, index };

const isIndex = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0;

/**
 * The index of each candidate of an event: its `index`; without one, 0 when another candidate of the
 * event has one (proto3 JSON leaves out zeros), else its position (a server that numbers none).
 */
function candidateIndexes(candidates: ReadonlyArray<GeminiCandidate>): number[] {
  const numbered = candidates.some((candidate) => isIndex(candidate.index));
  return candidates.map((candidate, position) =>
    isIndex(candidate.index) ? candidate.index : numbered ? 0 : position,
  );
}

/** One candidate of an event: its delta (text, thoughts, whole function calls, a block), then its finish (once). */
function convertCandidate(
  candidate: GeminiCandidate,
  index: number,
  state: GeminiStreamState,
  events: ProviderStreamEvent[],
): void {
  let own = state.candidates.get(index);
  if (own === undefined) {
    own = { toolCallCount: 0, finished: false };
    state.candidates.set(index, own);
  }
  const delta = deltaFor(index);
  let content = '';
  let thoughts = '';
  const toolCalls: ToolCallDelta[] = [];
  for (const part of candidate.content?.parts ?? []) {
    if (part.functionCall !== undefined && part.functionCall !== null) {
      const id = part.functionCall.id ?? `call_${state.callCount}`;
      state.callCount++;
      const args = JSON.stringify(part.functionCall.args ?? {});
      toolCalls.push({
        index: own.toolCallCount++,
        id,
        type: 'function',
        function: { name: part.functionCall.name, arguments: args },
      });
    } else if (typeof part.text === 'string') {
      if (part.thought === true) thoughts += part.text;
      else content += part.text;
    }
  }
  if (content !== '') delta.content = content;
  if (thoughts !== '') delta.reasoningContent = thoughts;
  if (toolCalls.length > 0) delta.toolCalls = toolCalls;
  let finishReason: FinishReason | undefined;
  if (typeof candidate.finishReason === 'string' && candidate.finishReason !== '' && !own.finished) {
    finishReason = mapGeminiFinishReason(candidate.finishReason, own.toolCallCount > 0);
    if (finishReason === 'content_filter')
      delta.refusal = describeBlock(candidate.finishReason, candidate.safetyRatings, candidate.finishMessage);
  }
  if (
    delta.content !== undefined ||
    delta.reasoningContent !== undefined ||
    delta.refusal !== undefined ||
    delta.toolCalls !== undefined
  )
    events.push(delta);
  if (finishReason !== undefined) {
    own.finished = true;
    if (index === 0) state.finished = true;
    events.push(finishFor(finishReason, index));
  }
}

/**
 * One event to ours: model (once), then each candidate's delta and finish, in the event's order
 * (those of candidates past the first carry their index). A blocked prompt (no candidate at all)
 * is a refusal and content_filter for every choice asked for.
 */
export function convertGeminiChunk(chunk: GeminiResponse, state: GeminiStreamState): ProviderStreamEvent[] {
  const events: ProviderStreamEvent[] = [];
  if (!state.modelSent && typeof chunk.modelVersion === 'string' && chunk.modelVersion !== '') {
    state.modelSent = true;
    events.push({ type: 'model', modelResolved: chunk.modelVersion });
  }
  const usage = convertGeminiUsage(chunk.usageMetadata);
  if (usage !== undefined) state.usage = usage;
  const candidates = chunk.candidates ?? [];
  const blockReason = chunk.promptFeedback?.blockReason;
  if (candidates.length === 0 && typeof blockReason === 'string' && blockReason !== '' && !state.finished) {
    const refusal = describeBlock(
      blockReason,
      chunk.promptFeedback?.safetyRatings,
      chunk.promptFeedback?.blockReasonMessage,
    );
    for (let index = 0; index < Math.max(1, state.choiceCount); index++) {
      state.candidates.set(index, { toolCallCount: 0, finished: true });
      events.push({ ...deltaFor(index), refusal }, finishFor('content_filter', index));
    }
    state.finished = true;
  }
  const indexes = candidateIndexes(candidates);
  for (const [position, candidate] of candidates.entries())
    convertCandidate(candidate, indexes[position]!, state, events);
  return events;
}

/** The end of the stream: the last usage reported, if any. */
export function endGeminiStream(state: GeminiStreamState): ProviderStreamEvent[] {
  return state.usage === undefined ? [] : [{ type: 'usage', usage: state.usage }];
}

/** One choice of a whole answer, gathered from its events. */
interface FoldedChoice {
  content: string;
  reasoning: string;
  refusal: string;
  toolCalls: ToolCall[];
  finishReason: FinishReason | undefined;
}

const emptyFold = (): FoldedChoice => ({
  content: '',
  reasoning: '',
  refusal: '',
  toolCalls: [],
  finishReason: undefined,
});

function foldedOutput(folded: FoldedChoice): ProviderChoice {
  const { content, reasoning, refusal, toolCalls } = folded;
  const choice: ProviderChoice = {
    content: content === '' && (toolCalls.length > 0 || refusal !== '') ? null : content,
    // A candidate without a finish reason ended all the same: the answer is whole.
    finishReason: folded.finishReason ?? mapGeminiFinishReason('STOP', toolCalls.length > 0),
  };
  if (toolCalls.length > 0) choice.toolCalls = toolCalls;
  if (reasoning !== '') choice.reasoningContent = reasoning;
  if (refusal !== '') choice.refusal = refusal;
  return choice;
}

/**
 * A whole answer (generateContent): the events of one chunk, folded into one response. Every
 * candidate is a choice, ordered by `index` (its position breaking ties, so that none is lost); the
 * first's fields are the response's own, and `choices` lists them all when there are several.
 */
export function convertGeminiResponse(
  response: GeminiResponse,
  requestedModel: string,
  provider: string,
  choiceCount = 1,
): ProviderResponse {
  const candidates = response.candidates ?? [];
  const indexes = candidateIndexes(candidates);
  const ordered = candidates
    .map((candidate, position) => ({ candidate, index: indexes[position]! }))
    .sort((left, right) => left.index - right.index)
    .map(({ candidate }, position) => ({ ...candidate, index: position }));
  const state = createGeminiStreamState(choiceCount);
  const events = [...convertGeminiChunk({ ...response, candidates: ordered }, state), ...endGeminiStream(state)];
  const folded: FoldedChoice[] = ordered.map(emptyFold);
  let modelResolved = requestedModel;
  for (const event of events) {
    if (event.type === 'model') modelResolved = event.modelResolved;
    if (event.type !== 'delta' && event.type !== 'finish') continue;
    const index = event.index ?? 0;
    while (folded.length <= index) folded.push(emptyFold());
    const choice = folded[index]!;
    if (event.type === 'finish') {
      choice.finishReason = event.finishReason;
      continue;
    }
    choice.content += event.content ?? '';
    choice.reasoning += event.reasoningContent ?? '';
    choice.refusal += event.refusal ?? '';
    for (const call of event.toolCalls ?? []) {
      choice.toolCalls.push({
        id: call.id!,
        type: 'function',
        function: { name: call.function!.name!, arguments: call.function!.arguments! },
      });
    }
  }
  if (folded.length === 0) throw malformedResponse(provider, 'no candidates in response', 200);
  const choices = folded.map(foldedOutput);
  const converted: ProviderResponse = { ...choices[0]!, modelResolved };
  if (choices.length > 1) converted.choices = choices;
  if (state.usage !== undefined) converted.usage = state.usage;
  return converted;
}
