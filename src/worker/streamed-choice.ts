import type { ChoiceLogprobs, FinishReason, TokenLogprob } from '../contract/reply.js';
import { ToolCallAssembler } from '../contract/tool-call-assembler.js';
import type { ProviderChoice, ProviderStreamEvent } from '../providers/types.js';

type DeltaEvent = Extract<ProviderStreamEvent, { type: 'delta' }>;

/** One choice of a relayed stream, put together from its deltas for the terminal reply and the accounting. */
export class StreamedChoice {
  content = '';
  reasoning = '';
  refusal = '';
  readonly toolCalls = new ToolCallAssembler();
  finishReason: FinishReason | undefined;
  #logprobs: TokenLogprob[] | undefined;
  #refusalLogprobs: TokenLogprob[] | undefined;

  add(event: DeltaEvent): void {
    if (event.content !== undefined) this.content += event.content;
    if (event.reasoningContent !== undefined) this.reasoning += event.reasoningContent;
    if (event.refusal !== undefined) this.refusal += event.refusal;
    if (event.toolCalls !== undefined && event.toolCalls.length > 0) this.toolCalls.add(event.toolCalls);
    const logprobs = event.logprobs;
    if (logprobs !== undefined) {
      if (logprobs.content != null) (this.#logprobs ??= []).push(...logprobs.content);
      if (logprobs.refusal != null) (this.#refusalLogprobs ??= []).push(...logprobs.refusal);
    }
  }

  /** What the choice produced; `finishReason` defaults for a choice cut short (the caller checks the first). */
  output(): ProviderChoice {
    const calls = this.toolCalls.size > 0 ? this.toolCalls.calls() : undefined;
    const choice: ProviderChoice = {
      // Nothing but tool calls or a refusal: `content` is null, as in OpenAI's (and the one-reply path's) answer.
      content: this.content === '' && (calls !== undefined || this.refusal !== '') ? null : this.content,
      finishReason: this.finishReason ?? 'error',
    };
    if (calls !== undefined) choice.toolCalls = calls;
    if (this.reasoning !== '') choice.reasoningContent = this.reasoning;
    if (this.refusal !== '') choice.refusal = this.refusal;
    if (this.#logprobs !== undefined || this.#refusalLogprobs !== undefined) {
      const logprobs: ChoiceLogprobs = { content: this.#logprobs ?? null };
      if (this.#refusalLogprobs !== undefined) logprobs.refusal = this.#refusalLogprobs;
      choice.logprobs = logprobs;
    }
    return choice;
  }
}
