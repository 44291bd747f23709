/**
 * Fake providers for tests: real HTTP servers on 127.0.0.1 speaking OpenAI's
 * and Ollama's wire formats, with scripted faults (see fake-openai.ts for the
 * API and behaviour.ts for the behaviours).
 */
export { startFakeAzureOpenAI, startFakeOpenAI, type FakeOpenAI, type FakeOpenAIOptions } from './fake-openai.js';
export { startFakeOllama, type FakeOllama, type FakeOllamaOptions } from './fake-ollama.js';
export { geminiBehaviours, startFakeGemini, type FakeGemini, type GeminiBehaviour } from './fake-gemini.js';
export { anthropicBehaviours, startFakeAnthropic, type FakeAnthropic } from './fake-anthropic.js';
export {
  fakeBehaviours,
  type FakeBehaviour,
  type FakeBehaviourKind,
  type FakeToolCall,
  type FakeUsage,
  type HugeShape,
  type ReplyShape,
  type StreamQuirk,
} from './behaviour.js';
export type { FakeProvider, FakeProviderOptions, RecordedRequest } from './fake-server.js';
