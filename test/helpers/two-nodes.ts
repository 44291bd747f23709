import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import { createClient, type LlmProxyClient } from '../../src/client/index.js';
import type { ConfigInput } from '../../src/config/index.js';
import type { UsageEvent } from '../../src/contract/usage-event.js';
import { startFakeOllama, startFakeOpenAI, type FakeProvider } from '../fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './nats-server.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './worker.js';

/**
 * Two workers with different model sets on one nats-server (issue 19's tests): `cloud` serves gpt-test
 * (an OpenAI fake), `edge` local-test (an Ollama fake); a raw connection that collects every usage
 * event, and a typed client.
 */
export interface TwoNodes {
  nats: NatsServerHandle;
  openai: FakeProvider;
  ollama: FakeProvider;
  cloud: InProcessWorker;
  edge: InProcessWorker;
  raw: NatsConnection;
  client: LlmProxyClient;
  /** Every usage event published, in order. */
  events: UsageEvent[];
  /** Stops the workers (again: stopping is idempotent), then the fakes and the server. */
  close(): Promise<void>;
}

export interface TwoNodesOptions {
  /** The cloud worker's config, given the OpenAI fake's URL (default: `testConfig({ openai })`). */
  cloud?: (openaiUrl: string) => ConfigInput;
  /** The edge worker's config, given the Ollama fake's URL (default: `testConfig({ ollama })`). */
  edge?: (ollamaUrl: string) => ConfigInput;
}

export async function startTwoNodes(options: TwoNodesOptions = {}): Promise<TwoNodes> {
  const nats = await startNatsServer();
  const openai = await startFakeOpenAI();
  const ollama = await startFakeOllama();
  const cloudConfig = options.cloud?.(openai.baseUrl) ?? testConfig({ openai: openai.baseUrl });
  const edgeConfig = options.edge?.(ollama.baseUrl) ?? testConfig({ ollama: ollama.baseUrl });
  const cloud = await startInProcessWorker({ natsUrl: nats.url, config: cloudConfig });
  const edge = await startInProcessWorker({ natsUrl: nats.url, config: edgeConfig });
  const raw = await connect({ servers: nats.url });
  const client = await createClient({ servers: nats.url, idleTimeoutMs: 5_000 });
  const events: UsageEvent[] = [];
  const usage: Subscription = raw.subscribe('llm.usage.>');
  void (async () => {
    for await (const message of usage) events.push(message.json<UsageEvent>());
  })();
  return {
    nats,
    openai,
    ollama,
    cloud,
    edge,
    raw,
    client,
    events,
    async close() {
      usage.unsubscribe();
      await client.close();
      await raw.close();
      await edge.stop();
      await cloud.stop();
      await openai.close();
      await ollama.close();
      await nats.dispose();
    },
  };
}
