import type { FastifyInstance } from 'fastify';
import type { BusLink } from './bus-link.js';

const PING_TIMEOUT_MS = 1_000;

/**
 * `GET /healthz`: the process is up (for restarts). `GET /readyz`: it can serve (for load balancers):
 * NATS connected and at least one worker answering `$SRV.PING.llm-proxy`; 503 otherwise, naming
 * what is missing.
 */
export function registerHealthRoutes(app: FastifyInstance, bus: BusLink): void {
  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    if (!bus.connected) return reply.code(503).send({ status: 'not_ready', nats: 'not connected', workers: 'unknown' });
    try {
      const connection = bus.client().connection;
      await connection.request('$SRV.PING.llm-proxy', '', { timeout: PING_TIMEOUT_MS });
      return { status: 'ready', nats: 'connected', workers: 'answering' };
    } catch {
      return reply.code(503).send({
        status: 'not_ready',
        nats: 'connected',
        workers: `no llm-proxy worker answered $SRV.PING within ${PING_TIMEOUT_MS} ms`,
      });
    }
  });
}
