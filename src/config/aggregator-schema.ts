import { z } from 'zod';
import { parseDuration } from './duration.js';

/**
 * The `aggregator` section of config.yaml. Kept in its own file (and not
 * importing schema.ts) so that schema.ts can import it without a cycle.
 */
const duration = z.union([z.number(), z.string()]).transform((value, context) => {
  const parsed = parseDuration(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a positive duration: ${JSON.stringify(value)} (use e.g. 500ms, 30s, 5m, 12h, 30d)`,
    });
    return z.NEVER;
  }
  return parsed;
});

/** A duration, or 0 / "forever" (as 0): how long something is kept. */
const durationOrForever = z.union([z.number(), z.string()]).transform((value, context) => {
  if (value === 0 || value === '0' || value === 'forever') return 0;
  const parsed = parseDuration(value);
  if (parsed === undefined || parsed <= 0) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      message: `not a duration: ${JSON.stringify(value)} (use e.g. 7d, 400d, or 0 / "forever")`,
    });
    return z.NEVER;
  }
  return parsed;
});

/** Durable consumer names and KV key tokens: letters, digits, `_` and `-`. */
const nameToken = z.string().regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"');

export const aggregatorSchema = z
  .object({
    /** Stable id of this aggregator (durable name and snapshot key derive from it); defaults to the host name. */
    instance_id: nameToken.optional(),
    /** Durable consumer on the usage stream; defaults to `llm-usage-<instance_id>`. One per instance. */
    durable_name: nameToken.optional(),
    /** JetStream KV bucket holding the snapshots of every aggregator. */
    snapshot_bucket: nameToken.default('LLM_USAGE_SNAPSHOTS'),
    /** How often the rollups are saved (also on shutdown). */
    snapshot_interval_ms: duration.prefault('60s'),
    /**
     * How long a request id is remembered (in stream time) to drop a second
     * copy of the same event; far longer than the stream's duplicate window.
     */
    dedup_horizon: duration.prefault('24h'),
    /** A durable unused this long is removed by the server (a departed instance). */
    consumer_inactive_threshold: duration.prefault('7d'),
    /**
     * How far back the rollups keep hour resolution (whole UTC days, back from the newest event
     * stored); older usage is kept per day. Memory grows with this window times the cells per hour.
     * "forever" or 0: hours are never folded into days.
     */
    hour_window: durationOrForever.prefault('7d'),
    /**
     * How long usage is kept at all (whole UTC days); older days are dropped, and a query reaching
     * before them is answered from the PostgreSQL usage log when one is configured, else refused as
     * out of range. "forever" or 0: nothing is dropped (memory then grows with history).
     */
    retention: durationOrForever.prefault('400d'),
  })
  .strict();

export type AggregatorConfig = z.infer<typeof aggregatorSchema>;
