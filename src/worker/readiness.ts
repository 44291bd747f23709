/**
 * Whether this worker can serve, for `/readyz` (telemetry/process-server.ts): connected to NATS, its
 * usage stream answering, its held usage events below a bound, and some deployment not cooling down.
 * (The system as a whole, seen from the bus, is `llm-proxy health`.)
 */
import { jsOptions } from '../bus/jetstream-domain.js';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Router } from '../router/index.js';
import type { Readiness, ReadinessCheck } from '../telemetry/process-server.js';
import type { UsagePublisher } from '../usage/publisher.js';
import { DEFAULT_MAX_PENDING } from '../health/defaults.js';

/** Usage events held (not yet stored) past which the worker says it is not ready: it keeps serving, but ops should look. */
export const READY_MAX_PENDING_EVENTS = DEFAULT_MAX_PENDING;
const STREAM_CHECK_TIMEOUT_MS = 2_000;

export interface ReadinessParts {
  connection: NatsConnection;
  /** False between a disconnect and the reconnect. */
  natsConnected: () => boolean;
  publisher: UsagePublisher;
  router: Router;
  usageStream: string;
}

async function usageStreamCheck(parts: ReadinessParts): Promise<ReadinessCheck> {
  try {
    const manager = await jetstreamManager(parts.connection, {
      ...jsOptions(parts.connection),
      timeout: STREAM_CHECK_TIMEOUT_MS,
    });
    const info = await manager.streams.info(parts.usageStream);
    return { name: 'usage_stream', ok: true, detail: `${parts.usageStream}: ${info.state.messages} events` };
  } catch (error) {
    return { name: 'usage_stream', ok: false, detail: `${parts.usageStream}: ${(error as Error).message}` };
  }
}

function deploymentsCheck(router: Router): ReadinessCheck {
  const byModel = new Map<string, boolean>();
  for (const deployment of router.health())
    byModel.set(deployment.model, (byModel.get(deployment.model) ?? false) || deployment.state === 'healthy');
  const cooling = [...byModel].filter(([, healthy]) => !healthy).map(([model]) => model);
  const ok = byModel.size === 0 || cooling.length < byModel.size;
  return {
    name: 'deployments',
    ok,
    detail:
      cooling.length === 0
        ? `${byModel.size} models, none cooling down`
        : `every deployment cooling down for: ${cooling.join(', ')}${ok ? '' : ' (all models)'}`,
  };
}

export async function workerReadiness(parts: ReadinessParts): Promise<Readiness> {
  const connected = !parts.connection.isClosed() && parts.natsConnected();
  const pending = parts.publisher.counters.pending;
  const checks: ReadinessCheck[] = [
    {
      name: 'nats',
      ok: connected,
      detail: connected ? `connected to ${parts.connection.getServer()}` : 'not connected',
    },
    connected ? await usageStreamCheck(parts) : { name: 'usage_stream', ok: false, detail: 'not connected to NATS' },
    {
      name: 'usage_events',
      ok: pending < READY_MAX_PENDING_EVENTS,
      detail: `${pending} held for JetStream (not ready at ${READY_MAX_PENDING_EVENTS})`,
    },
    deploymentsCheck(parts.router),
  ];
  return { ready: checks.every((check) => check.ok), checks };
}
