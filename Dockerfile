# syntax=docker/dockerfile:1
# The llm-proxy worker image. Build: docker build -t llm-proxy .
# Run:   docker run --rm -e NATS_URL=nats://nats:4222 -e OPENAI_API_KEY llm-proxy
# (the image holds the repo's config.yaml; mount your own at /app/config.yaml or set LLM_PROXY_CONFIG)

# Node 26, the Active LTS line since October 2026 (the code still runs on 20, which the tests use).
FROM node:26-slim AS build
WORKDIR /app
# Dependencies first: this layer is reused until package*.json change.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:26-slim
ENV NODE_ENV=production \
    LLM_PROXY_CONFIG=/app/config.yaml \
    NATS_URL=nats://nats:4222
WORKDIR /app
# Files stay owned by root and read-only to the runtime user.
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json config.yaml ./
# The one directory the worker writes: usage events the server can never take (nats.usage_stream.dead_letter_file).
RUN mkdir -p /app/.llm-proxy && chown node:node /app/.llm-proxy
# The base image's unprivileged user.
USER node
# The worker's own readiness (/readyz on its metrics port, telemetry.worker_port, 9464 by default:
# NATS, its usage stream, held usage events, deployments), fetched by the CLI with Node's fetch: the
# image has no curl or wget. Exit 0 on 200, 1 otherwise; the body lands in `docker inspect`.
# The aggregator (9465) and the front door (7007) run this image too: compose gives them their own URL.
# A worker with another port (LLM_PROXY_METRICS_PORT, telemetry.worker_port) needs its own healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["node", "/app/dist/cli/main.js", "health", "--url", "http://127.0.0.1:9464/readyz", "--timeout", "4s"]
# Exec form: node is PID 1 and receives SIGTERM itself (the worker drains, then exits 0).
# Give it time: `docker stop -t 40` / compose stop_grace_period ≥ worker.drain_timeout_ms + a few seconds.
CMD ["node", "dist/cli/main.js", "worker"]
