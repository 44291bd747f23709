/**
 * Removes secrets from text that came back from a provider (error messages
 * echo what they were sent: OpenAI's 401 repeats part of the key) before it
 * goes into a ProxyError, a log or a reply.
 */
const REDACTED = '[redacted]';

/** Secrets shorter than this are not searched for: they would match ordinary words. */
const MIN_SECRET_LENGTH = 4;

const SECRET_PATTERNS: ReadonlyArray<[RegExp, string]> = [
  // `Bearer <token>` anywhere (an echoed Authorization header).
  [/\bBearer\s+[^\s"',;]+/gi, `Bearer ${REDACTED}`],
  // OpenAI-style keys, whole or masked (`sk-proj-abc…`, `sk-abc***xyz`), and their publishable/restricted kin.
  [/\b(?:sk|pk|rk)-[A-Za-z0-9_*.-]{4,}/g, REDACTED],
  // "Incorrect API key provided: <whatever>": the value after it is a key, whatever it looks like.
  [/(api[ _-]?key(?: provided)?\s*[:=]\s*)[^\s"',;]+/gi, `$1${REDACTED}`],
];

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export function redact(text: string, secrets: ReadonlyArray<string | undefined> = []): string {
  let result = text;
  // Longest first, so that a secret containing another is removed whole.
  const known = secrets
    .filter((secret): secret is string => typeof secret === 'string' && secret.length >= MIN_SECRET_LENGTH)
    .sort((left, right) => right.length - left.length);
  for (const secret of known) result = result.replace(new RegExp(escapeRegExp(secret), 'g'), REDACTED);
  for (const [pattern, replacement] of SECRET_PATTERNS) result = result.replace(pattern, replacement);
  return result;
}
