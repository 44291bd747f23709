/**
 * `llm-proxy/client`: what an agent needs to call llm-proxy over NATS.
 * The wire protocol it speaks is in README.md ("Calling llm-proxy from an agent").
 */
export {
  createClient,
  unionModels,
  DEFAULT_FIRST_MESSAGE_TIMEOUT_MS,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_TIMEOUT_MS,
  type AskOptions,
  type CallOptions,
  type ClientOptions,
  type LlmProxyClient,
  type StreamOptions,
} from './client.js';
export type { ChatStream } from './stream.js';
export { LlmProxyError, type LlmProxyErrorOptions } from './errors.js';
export {
  ERROR_CODES,
  ERROR_STATUS,
  ProxyError,
  isErrorReply,
  subjectsFor,
  HEADERS,
  STREAM_MARKS,
  type AttemptRecord,
  type ChatMessage,
  type ChatReply,
  type ChatRequest,
  type ErrorBody,
  type ErrorCode,
  type ErrorReply,
  type FinishReason,
  type RequestMetadata,
  type StreamChunk,
  type Subjects,
  type TokenUsage,
  type ToolCall,
  type ToolCallDelta,
} from '../contract/index.js';
