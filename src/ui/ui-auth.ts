/**
 * How a browser proves it knows the internal secret, which it cannot send as a header on a page load.
 *
 * **Decision:** a login form. `GET /ui` without a session answers 401 with a form; the form POSTs
 * the secret (`application/x-www-form-urlencoded`, never in a URL) to `/ui/login`, which compares it
 * in constant time and sets a cookie `llmp_ui` = `v1.<expiry>.<HMAC-SHA256 of "v1.<expiry>" under a
 * key derived from the secret>`: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site
 * sends it), `Path=/ui`, `Secure` behind HTTPS, 12 hours. Stateless: every front door and `llm-proxy
 * ui` sharing the secret accepts it; changing the secret ends every session. The cookie is not the
 * secret and does not reveal it. Scripts may send `X-Internal-Secret` (or `Authorization: Bearer`)
 * instead, as on every other route.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { presentedSecret } from '../http/credentials.js';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { SecretCheck } from '../auth/index.js';

export const UI_COOKIE = 'llmp_ui';
export const SESSION_MS = 12 * 3_600_000;
/** A wrong secret is answered this much later: guessing goes slowly. */
export const FAILED_LOGIN_DELAY_MS = 400;

/** Headers of every answer under /ui: no framing, no sniffing, no referrer, nothing from elsewhere. */
export const UI_SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'same-origin',
};

export class UiSessions {
  readonly #check: SecretCheck;
  readonly #key: Buffer | undefined;

  constructor(secret: string | undefined) {
    this.#check = new SecretCheck(secret);
    // A key of its own: a cookie is worth nothing as an X-Internal-Secret anywhere else.
    this.#key =
      secret === undefined || secret === ''
        ? undefined
        : createHmac('sha256', secret).update('llm-proxy ui session key v1').digest();
  }

  /** False when no secret is set: the page is open, like every other route then. */
  get required(): boolean {
    return this.#key !== undefined;
  }

  checkSecret(given: string | undefined): boolean {
    return this.#check.allowsValue(given);
  }

  issue(now: number = Date.now()): string {
    const payload = `v1.${now + SESSION_MS}`;
    return `${payload}.${this.#sign(payload)}`;
  }

  valid(token: string | undefined, now: number = Date.now()): boolean {
    if (this.#key === undefined) return true;
    if (token === undefined) return false;
    const match = /^(v1\.(\d{1,15}))\.([A-Za-z0-9_-]{43})$/.exec(token);
    if (match === null) return false;
    const [, payload = '', expiry = '0', signature = ''] = match;
    const expected = createHash('sha256').update(this.#sign(payload)).digest();
    const given = createHash('sha256').update(signature).digest();
    return timingSafeEqual(expected, given) && Number(expiry) > now && Number(expiry) <= now + SESSION_MS;
  }

  /** The request carries a valid session cookie, or the secret as a header. */
  allows(request: FastifyRequest): boolean {
    if (!this.required) return true;
    if (this.valid(cookieOf(request, UI_COOKIE))) return true;
    const header = presentedSecret(request);
    return header !== undefined && this.#check.allowsValue(header);
  }

  setCookie(reply: FastifyReply, request: FastifyRequest): void {
    reply.header('set-cookie', cookieHeader(this.issue(), SESSION_MS / 1_000, isHttps(request)));
  }

  clearCookie(reply: FastifyReply, request: FastifyRequest): void {
    reply.header('set-cookie', cookieHeader('', 0, isHttps(request)));
  }

  #sign(payload: string): string {
    return createHmac('sha256', this.#key ?? Buffer.alloc(32))
      .update(payload)
      .digest('base64url');
  }
}

function cookieHeader(value: string, maxAgeSeconds: number, secure: boolean): string {
  return `${UI_COOKIE}=${value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${secure ? '; Secure' : ''}`;
}

/** Behind HTTPS (directly, or a proxy saying so): the cookie is then sent over HTTPS only. */
function isHttps(request: FastifyRequest): boolean {
  return request.protocol === 'https' || request.headers['x-forwarded-proto'] === 'https';
}

export function cookieOf(request: FastifyRequest, name: string): string | undefined {
  const header = request.headers.cookie;
  if (typeof header !== 'string') return undefined;
  for (const part of header.split(';')) {
    const equals = part.indexOf('=');
    if (equals !== -1 && part.slice(0, equals).trim() === name) return part.slice(equals + 1).trim();
  }
  return undefined;
}

/**
 * A form posted from another origin is refused (browsers send `Origin` on POST). Without `Origin`
 * (curl, old browsers) the request is let through: the secret itself is what it must prove.
 */
export function sameOrigin(request: FastifyRequest): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) return true;
  try {
    return new URL(origin).host === request.headers.host;
  } catch {
    return false;
  }
}

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);

/** The login form (no script at all; its CSP allows its own inline style only). */
export function loginPage(message: string | undefined): { headers: Record<string, string>; body: string } {
  const notice = message === undefined ? '' : `<p class="error" role="alert">${escapeHtml(message)}</p>`;
  return {
    headers: {
      ...UI_SECURITY_HEADERS,
      'content-security-policy':
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
    },
    body: `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm-proxy operations: sign in</title>
<style>
body{font:15px system-ui,sans-serif;background:#0f172a;color:#e2e8f0;display:grid;place-items:center;min-height:100vh;margin:0}
form{background:#1e293b;padding:2rem;border-radius:10px;min-width:20rem}
h1{font-size:1.2rem;margin:0 0 1rem}label{display:block;margin-bottom:.4rem}
input{width:100%;box-sizing:border-box;padding:.5rem;border-radius:6px;border:1px solid #475569;background:#0f172a;color:inherit}
button{margin-top:1rem;padding:.5rem 1rem;border-radius:6px;border:0;background:#38bdf8;color:#0f172a;font-weight:600}
.error{color:#fca5a5}small{display:block;margin-top:1rem;color:#94a3b8}
</style></head>
<body><form method="post" action="/ui/login">
<h1>llm-proxy operations</h1>${notice}
<label for="secret">Internal secret (LLM_PROXY_SECRET)</label>
<input id="secret" name="secret" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
<small>Sets a session cookie for 12 hours.</small>
</form></body></html>
`,
  };
}
