import type { ChatReply, ChatRequest, LlmProxyClient, StreamChunk } from '../../src/client/index.js';

/** The reply to a request through the typed client: `chat`, or a stream read to its end (its chunks into `chunks`). */
export async function answerWith(
  client: LlmProxyClient,
  request: ChatRequest,
  chunks: StreamChunk[] = [],
): Promise<ChatReply> {
  if (request.stream !== true) return client.chat(request);
  const stream = client.stream(request);
  for await (const chunk of stream) chunks.push(chunk);
  return stream.final;
}
