/**
 * A long-running process's own small HTTP server: `GET /metrics` (Prometheus), `GET /healthz` (the
 * process is up: for restarts) and `GET /readyz` (it can serve: for load balancers and container
 * health checks; 503 naming what is wrong). node:http, not fastify: three fixed routes, no body.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { PrometheusExporter } from '@opentelemetry/exporter-prometheus';

export interface ReadinessCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface Readiness {
  ready: boolean;
  checks: ReadinessCheck[];
}

export interface ProcessServerOptions {
  host: string;
  port: number;
  prometheus: PrometheusExporter;
  ready: () => Promise<Readiness>;
}

export interface ProcessServer {
  readonly url: string;
  close(): Promise<void>;
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  response.end(text);
}

/** Listens on host:port (0: a free port); rejects when the port cannot be had (the caller decides). */
export function startProcessServer(options: ProcessServerOptions): Promise<ProcessServer> {
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      sendJson(response, 405, { error: 'method not allowed' });
      return;
    }
    if (path === '/metrics') {
      options.prometheus.getMetricsRequestHandler(request, response);
      return;
    }
    if (path === '/healthz') {
      sendJson(response, 200, { status: 'ok' });
      return;
    }
    if (path === '/readyz') {
      options.ready().then(
        (readiness) =>
          sendJson(response, readiness.ready ? 200 : 503, {
            status: readiness.ready ? 'ready' : 'not_ready',
            ...readiness,
          }),
        (error: unknown) =>
          sendJson(response, 503, {
            status: 'not_ready',
            ready: false,
            checks: [{ name: 'readiness', ok: false, detail: String(error) }],
          }),
      );
      return;
    }
    sendJson(response, 404, { error: 'not found: /metrics, /healthz, /readyz' });
  });
  // Scrapes and probes are short; a client that holds a socket open must not keep the process from stopping.
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      const address = server.address() as AddressInfo;
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      resolve({
        url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${address.port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}
