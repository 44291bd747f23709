/** Query parameters whose values are credentials (`?key=…` as Gemini takes it, `?api_key=…`, tokens, signatures). */
const SECRET_PARAMETER = /key|token|secret|password|passwd|auth|signature|sig$/i;
const MASK = '***';

/**
 * A URL fit to print: the password of its user info (or a user name standing alone, often a
 * token) and the values of credential-looking query parameters are masked
 * (`https://user:***@host/v1?key=***`). Text that is not a URL is returned as
 * it is, minus anything between `://` and `@`.
 */
export function redactUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return text.replace(/:\/\/[^/@\s]*@/, `://${MASK}@`);
  }
  // `user:password@host` without a scheme parses as scheme "user:": no authority, so mask what precedes the @.
  if (url.host === '' && text.includes('@')) return text.replace(/^[^@]*@/, `${MASK}@`);
  if (url.password !== '') url.password = MASK;
  // A user name alone is often a token (`https://<token>@host`).
  else if (url.username !== '') url.username = MASK;
  for (const name of [...url.searchParams.keys()]) if (SECRET_PARAMETER.test(name)) url.searchParams.set(name, MASK);
  return url.toString().replaceAll(encodeURIComponent(MASK), MASK);
}
