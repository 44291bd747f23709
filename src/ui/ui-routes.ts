/**
 * The operations page's routes (README, "Operations page"), mounted by `llm-proxy ui` and by the HTTP
 * front door:
 *
 * | route | what |
 * |---|---|
 * | `GET /ui` | the page (401 and the login form without a session) |
 * | `POST /ui/login`, `POST /ui/logout` | open and end a session (ui-auth.ts) |
 * | `GET /ui/assets/<file>` | the page's scripts and styles, read once from `assets/` beside this file |
 * | `GET /ui/events?agent=…&model=…&status=…` | SSE: `snapshot` and `events` (ui-feed.ts) |
 *
 * Everything but the login needs a session or the secret. The assets are plain files (no build step):
 * `npm run build` copies `src/ui/assets` to `dist/ui/assets`, found next to this module in both.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/nats-core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from '../telemetry/logger.js';
import { FAILED_LOGIN_DELAY_MS, loginPage, sameOrigin, UI_SECURITY_HEADERS, UiSessions } from './ui-auth.js';
import { MAX_VIEWERS, TAIL_STATUSES, type TailFilter, UiFeed, type UiFeedOptions } from './ui-feed.js';
import type { StandingReader } from './ui-polls.js';

export const ASSETS_DIR = fileURLToPath(new URL('./assets/', import.meta.url));
/** The front door's feed stops this long after the last page closed (nothing polls while nobody looks). */
export const FRONT_DOOR_IDLE_STOP_MS = 15 * 60_000;
const MAX_FILTER_LENGTH = 200;

export interface UiRouteOptions {
  connecting: Promise<NatsConnection>;
  subjectPrefix: string;
  secret: string | undefined;
  logger: Logger;
  standing?: StandingReader | undefined;
  limitsNote?: string | undefined;
  usageStream?: string | undefined;
  intervals?: UiFeedOptions['intervals'];
  /** Subscribe and poll from the start and until close (`llm-proxy ui`); else only while a page is open. */
  alwaysOn?: boolean;
}

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

/** The asset files by name, read once: a request can only name one of these, never a path. */
export function loadAssets(directory: string = ASSETS_DIR): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const name of readdirSync(directory)) {
    const type = TYPES[extname(name)];
    if (type === undefined || !/^[a-z0-9][a-z0-9.-]*$/.test(name)) continue;
    const body = readFileSync(join(directory, name));
    assets.set(name, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` });
  }
  if (!assets.has('index.html')) throw new Error(`the operations page's files are missing from ${directory}`);
  return assets;
}

function sendAsset(request: FastifyRequest, reply: FastifyReply, asset: Asset): FastifyReply {
  void reply.headers({ ...UI_SECURITY_HEADERS, 'cache-control': 'no-cache', etag: asset.etag });
  if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send();
  return reply.type(asset.type).send(asset.body);
}

function refuse(reply: FastifyReply, json: boolean): FastifyReply {
  if (json) {
    return reply
      .code(401)
      .headers(UI_SECURITY_HEADERS)
      .send({ error: { code: 'unauthorized', message: 'sign in at /ui, or send X-Internal-Secret', status: 401 } });
  }
  const page = loginPage(undefined);
  return reply.code(401).headers(page.headers).send(page.body);
}

/** The tail's filter from the query string; an unknown status or an overlong value is a 400. */
function filterOf(query: Record<string, unknown>): TailFilter | string {
  const filter: TailFilter = {};
  for (const field of ['agent', 'model', 'status'] as const) {
    const value = query[field];
    if (value === undefined || value === '') continue;
    if (typeof value !== 'string' || value.length > MAX_FILTER_LENGTH)
      return `${field}: one value, at most 200 characters`;
    if (field === 'status' && !TAIL_STATUSES.includes(value)) return `status: one of ${TAIL_STATUSES.join(', ')}`;
    filter[field] = value;
  }
  return filter;
}

/** Mounts the page on `app` (in a plugin of its own: its form parser stays its own). Returns the feed. */
export function registerUiRoutes(app: FastifyInstance, options: UiRouteOptions): UiFeed {
  const sessions = new UiSessions(options.secret);
  let assets = new Map<string, Asset>();
  try {
    assets = loadAssets();
  } catch (error) {
    // The front door serves its APIs without the page; `llm-proxy ui` checks first and refuses to start.
    options.logger.error({ err: error }, 'the operations page cannot be served: its files are missing');
  }
  const feed = new UiFeed({
    connecting: options.connecting,
    subjectPrefix: options.subjectPrefix,
    secret: options.secret,
    logger: options.logger,
    standing: options.standing,
    limitsNote:
      options.limitsNote ??
      (options.standing === undefined
        ? 'this process does not read the limits store: `llm-proxy ui --config …` shows each agent’s standing'
        : undefined),
    usageStream: options.usageStream,
    intervals: options.intervals,
    idleStopMs: options.alwaysOn === true ? undefined : FRONT_DOOR_IDLE_STOP_MS,
  });
  if (options.alwaysOn === true) feed.start();
  if (!sessions.required)
    options.logger.warn('LLM_PROXY_SECRET is not set: the operations page at /ui is open to anyone who reaches it');

  void app.register(async (scope) => {
    scope.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string', bodyLimit: 4_096 },
      (_request, body, done) => done(null, Object.fromEntries(new URLSearchParams(String(body)))),
    );
    // Open pages end before the server waits for its connections to close.
    scope.addHook('preClose', async () => feed.close());

    scope.get('/ui/', (_request, reply) => reply.redirect('/ui', 301));

    scope.get('/ui', (request, reply) => {
      if (!sessions.allows(request)) return refuse(reply, false);
      const page = assets.get('index.html');
      if (page === undefined)
        return reply.code(500).headers(UI_SECURITY_HEADERS).send(`the page's files are missing from ${ASSETS_DIR}`);
      return sendAsset(request, reply.header('cache-control', 'no-store'), page);
    });

    scope.post('/ui/login', async (request, reply) => {
      const secret = (request.body as Record<string, unknown> | undefined)?.secret;
      if (!sameOrigin(request)) return reply.code(403).headers(UI_SECURITY_HEADERS).send('cross-origin login refused');
      if (!sessions.required || (typeof secret === 'string' && sessions.checkSecret(secret))) {
        if (sessions.required) sessions.setCookie(reply, request);
        return reply.code(303).header('location', '/ui').send();
      }
      await new Promise((resolve) => setTimeout(resolve, FAILED_LOGIN_DELAY_MS));
      const page = loginPage('That is not the secret.');
      return reply.code(401).headers(page.headers).send(page.body);
    });

    scope.post('/ui/logout', (request, reply) => {
      if (!sameOrigin(request)) return reply.code(403).headers(UI_SECURITY_HEADERS).send('cross-origin logout refused');
      sessions.clearCookie(reply, request);
      return reply.code(303).header('location', '/ui').send();
    });

    scope.get('/ui/assets/:name', (request, reply) => {
      if (!sessions.allows(request)) return refuse(reply, true);
      const asset = assets.get((request.params as { name: string }).name);
      if (asset === undefined || asset === assets.get('index.html'))
        return reply
          .code(404)
          .headers(UI_SECURITY_HEADERS)
          .send({ error: { code: 'not_found', status: 404 } });
      return sendAsset(request, reply, asset);
    });

    // No HEAD: a stream is not something to ask the headers of.
    scope.get('/ui/events', { exposeHeadRoute: false }, (request, reply) => {
      if (!sessions.allows(request)) return refuse(reply, true);
      const filter = filterOf(request.query as Record<string, unknown>);
      if (typeof filter === 'string')
        return reply
          .code(400)
          .headers(UI_SECURITY_HEADERS)
          .send({ error: { code: 'invalid_request', message: filter, status: 400 } });
      if (feed.viewers >= MAX_VIEWERS)
        return reply
          .code(503)
          .headers({ ...UI_SECURITY_HEADERS, 'retry-after': '10' })
          .send({ error: { code: 'unavailable', message: `${MAX_VIEWERS} pages are open already`, status: 503 } });
      void reply.hijack();
      // Refused only while the process is closing.
      if (!feed.attach(reply.raw, filter, UI_SECURITY_HEADERS)) reply.raw.writeHead(503).end();
    });
  });
  return feed;
}
