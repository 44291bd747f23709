import type { z } from 'zod';
import { fastCheck } from '../../contract/fast-check.js';
import { providerSecrets } from './http.js';
import { errorFromStreamPayload, malformedResponse } from './provider-error.js';
import type { ProviderSettings } from '../types.js';

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((issue) => `${issue.path.map(String).join('.') || '(root)'}: ${issue.message}`)
    .join('; ');
}

function isErrorPayload(value: unknown): value is { error: unknown } {
  return typeof value === 'object' && value !== null && 'error' in value && (value as { error: unknown }).error != null;
}

/**
 * A decoded body (or stream event) the provider sent with status 200: its own
 * `{"error": …}` object is its error (some compatible servers answer errors
 * that way, and every provider does mid-stream); anything else that does not
 * match the schema is a malformed response. A payload the fast check accepts
 * (contract/fast-check.ts) is returned as it is; zod checks the rest and names
 * what is wrong.
 */
export function parseProviderPayload<Output>(
  settings: ProviderSettings,
  json: unknown,
  schema: z.ZodType<Output>,
  what: string,
  isError = false,
): Output {
  if (isError || isErrorPayload(json)) throw errorFromStreamPayload(settings.name, json, providerSecrets(settings));
  if (fastCheck(schema)(json)) return json as Output;
  const parsed = schema.safeParse(json);
  if (!parsed.success)
    throw malformedResponse(settings.name, `unexpected ${what} (${describeIssues(parsed.error)})`, 200);
  return parsed.data;
}
