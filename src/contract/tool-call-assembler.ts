import type { ToolCallDelta } from './reply.js';
import type { ToolCall } from './request.js';

/**
 * Assembles OpenAI-shaped tool-call deltas (by index) into whole tool calls.
 * Shared by the worker (the terminal reply of a stream) and the typed client
 * (a terminal reply that left `tool_calls` out: it rebuilds them from the
 * chunks), so that both read the same deltas the same way.
 */
export class ToolCallAssembler {
  readonly #calls = new Map<number, { id: string; name: string; arguments: string }>();

  add(deltas: ToolCallDelta[]): void {
    for (const delta of deltas) {
      const call = this.#calls.get(delta.index) ?? { id: '', name: '', arguments: '' };
      if (delta.id !== undefined && delta.id !== '') call.id = delta.id;
      if (delta.function?.name !== undefined) call.name += delta.function.name;
      if (delta.function?.arguments !== undefined) call.arguments += delta.function.arguments;
      this.#calls.set(delta.index, call);
    }
  }

  get size(): number {
    return this.#calls.size;
  }

  calls(): ToolCall[] {
    return [...this.#calls.entries()]
      .sort(([left], [right]) => left - right)
      .map(([index, call]) => ({
        id: call.id === '' ? `call_${index}` : call.id,
        type: 'function' as const,
        function: { name: call.name, arguments: call.arguments },
      }));
  }
}
