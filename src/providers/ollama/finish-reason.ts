import type { FinishReason } from '../../contract/reply.js';

/**
 * Ollama's `done_reason` to ours. Ollama says `stop` after a tool call, so
 * the presence of tool calls decides `tool_calls`. `load`/`unload` answer
 * requests that only (un)loaded the model.
 */
const OLLAMA_DONE_REASONS: Record<string, FinishReason> = {
  stop: 'stop',
  length: 'length',
  load: 'stop',
  unload: 'stop',
};

export function mapOllamaFinishReason(doneReason: string | null | undefined, hasToolCalls: boolean): FinishReason {
  const mapped = doneReason === null || doneReason === undefined ? 'stop' : (OLLAMA_DONE_REASONS[doneReason] ?? 'stop');
  return mapped === 'stop' && hasToolCalls ? 'tool_calls' : mapped;
}
