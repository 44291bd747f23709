import { createInbox, type Msg, type NatsConnection } from '@nats-io/nats-core';

type Body = Record<string, unknown>;

export interface RawStream {
  /** The chunk messages, parsed, in order (heartbeats left out). */
  chunks: Body[];
  /** The terminal message (the reply or the error), or undefined when none came in time. */
  terminal: Body | undefined;
  /** Its `LLM-Stream` mark (`end`, `error`, or '' for an unmarked answer). */
  mark: string | undefined;
}

/**
 * Sends `request` as a stream on `subject` and reads its messages the raw way (no typed client), as a
 * hostile or foreign client would. `onChunk` returning 'stop' unsubscribes right there (a client that
 * goes away).
 */
export async function readRawStream(
  connection: NatsConnection,
  subject: string,
  request: Body,
  onChunk?: (chunk: Body, seen: number) => unknown,
  timeoutMs = 10_000,
): Promise<RawStream> {
  const inbox = createInbox();
  const subscription = connection.subscribe(inbox);
  const timer = setTimeout(() => subscription.unsubscribe(), timeoutMs);
  const result: RawStream = { chunks: [], terminal: undefined, mark: undefined };
  connection.publish(subject, JSON.stringify({ ...request, stream: true }), { reply: inbox });
  for await (const message of subscription as AsyncIterable<Msg>) {
    const mark = message.headers?.get('LLM-Stream') ?? '';
    if (mark === 'heartbeat') continue;
    if (mark === 'chunk') {
      const chunk = message.json<Body>();
      result.chunks.push(chunk);
      if (onChunk?.(chunk, result.chunks.length) === 'stop') break;
      continue;
    }
    result.terminal = message.json<Body>();
    result.mark = mark;
    break;
  }
  clearTimeout(timer);
  subscription.unsubscribe();
  return result;
}
