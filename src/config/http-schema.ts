import { z } from 'zod';
import { parseDuration, parseSize } from './duration.js';

/**
 * The `http` section of config.yaml: the front door (`llm-proxy http`, and `llm-proxy dev`). Kept in
 * its own file (and not importing schema.ts) so that schema.ts can import it without a cycle.
 */
const positiveDuration = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseDuration(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: 'custom',
      message: `not a positive duration: ${JSON.stringify(value)} (use e.g. 500ms, 30s, 5m)`,
    });
    return z.NEVER;
  }
  return parsed;
});

const positiveSize = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseSize(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: 'custom',
      message: `not a positive size: ${JSON.stringify(value)} (use e.g. 1MiB, 512KB)`,
    });
    return z.NEVER;
  }
  return parsed;
});

export const httpSchema = z
  .object({
    /** Address to listen on; `0.0.0.0` (or `::`) to take connections from other hosts. */
    host: z.string().min(1).default('127.0.0.1'),
    /** The seed's port. */
    port: z.number().int().min(0).max(65_535).default(7007),
    /**
     * Largest request body read; default 8 MiB. A request over the NATS server's max_payload is refused
     * (413) in any case, since it could not be sent on.
     */
    body_limit: positiveSize.optional(),
    /** SSE comment sent while a stream is silent, so that proxies keep the connection open. */
    heartbeat_ms: positiveDuration.prefault('15s'),
    /** Longest wait for a client's request headers (slow-loris clients are cut off). */
    headers_timeout_ms: positiveDuration.prefault('10s'),
    /** Longest wait for a client's whole request (headers and body); not the answer, which a stream may take long to send. */
    request_timeout_ms: positiveDuration.prefault('30s'),
    /** An idle keep-alive connection is closed after this (longer than the usual load balancer's 60 s). */
    keep_alive_timeout_ms: positiveDuration.prefault('65s'),
  })
  .strict();

export type HttpConfig = z.infer<typeof httpSchema>;
