import { z } from 'zod';
import { parseDuration } from './duration.js';

/**
 * The `usage_sink` section of config.yaml: where `llm-proxy sink postgres` (and `dev`, when a URL is
 * configured) copies every usage event. Its own file, like the aggregator's, so that schema.ts imports
 * it without a cycle.
 */
const nameToken = z.string().regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"');

/** Retention of raw events: a duration such as 400d, or 0 / "forever". */
const retention = z.union([z.number(), z.string()]).transform((value, context) => {
  if (value === 0 || value === 'forever' || value === '0') return 0;
  const parsed = parseDuration(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a retention: ${JSON.stringify(value)} (use e.g. 400d, or 0 / "forever")`,
    });
    return z.NEVER;
  }
  return parsed;
});

/**
 * What is wrong with a usage log URL, or undefined when it is a PostgreSQL URL. The text is never
 * repeated: a mistyped URL may hold a password in a place no redaction recognises.
 */
export function postgresUrlProblem(text: string): string | undefined {
  const expected = 'a postgres:// or postgresql:// URL, e.g. postgres://user:password@host:5432/database';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return `must be ${expected}`;
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') return `must be ${expected}`;
  // A Unix socket is given as ?host=/run/postgresql with no host in the authority.
  if (url.hostname === '' && !url.searchParams.has('host')) return `has no host: it must be ${expected}`;
  return undefined;
}

export const postgresSinkSchema = z
  .object({
    /**
     * `postgres://user:password@host:5432/database`. Prefer leaving it out and setting
     * `LLM_PROXY_POSTGRES_URL` (it wins over this key), so that no password sits in the file.
     */
    url: z
      .string()
      .min(1)
      .superRefine((value, context) => {
        const problem = postgresUrlProblem(value);
        if (problem !== undefined) context.addIssue({ code: z.ZodIssueCode.custom, message: problem });
      })
      .optional(),
    /** Schema of the tables (created when missing). */
    schema: z
      .string()
      .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'must be a lower-case PostgreSQL identifier (letters, digits, "_")')
      .default('public'),
    /** The durable consumer every sink of this database shares (they split the work). */
    durable_name: nameToken.default('llm-usage-sink-postgres'),
    /** Most events per insert (one transaction). */
    batch_size: z.number().int().min(1).max(10_000).default(1_000),
    /** How long raw events are kept (whole months are dropped); 0 or "forever" (default): kept. */
    retention: retention.prefault(0),
    /** Connections per sink process. */
    pool_size: z.number().int().min(1).max(64).default(4),
  })
  .strict();

export const usageSinkSchema = z
  .object({
    postgres: postgresSinkSchema.optional(),
  })
  .strict();

export type PostgresSinkConfig = z.infer<typeof postgresSinkSchema>;
export type UsageSinkConfig = z.infer<typeof usageSinkSchema>;

/** The variable holding the usage log's URL; it wins over `usage_sink.postgres.url`. */
export const POSTGRES_URL_ENV = 'LLM_PROXY_POSTGRES_URL';
