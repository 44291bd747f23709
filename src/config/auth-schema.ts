import { z } from 'zod';

/**
 * The `auth` section of config.yaml: who may call, and how the caller is known (issue 15).
 * - `secret` (default): `X-Internal-Secret` when `LLM_PROXY_SECRET` is set; `metadata` says who the agent is.
 * - `keys`: every request carries a per-agent key (`Authorization: Bearer llmp_…`); the key says who the
 *   agent and microDAO are. The shared secret is not enough for a request (it still lists models and cancels).
 * - `mixed`: a request with a key is known by it; one without needs the secret, as in `secret`.
 */
export const AUTH_MODES = ['secret', 'keys', 'mixed'] as const;
export type AuthMode = (typeof AUTH_MODES)[number];

export const authSchema = z
  .object({
    mode: z.enum(AUTH_MODES).default('secret'),
    /** JetStream KV bucket of the keys (written by `llm-proxy keys`, watched by every worker). */
    keys_bucket: z
      .string()
      .regex(/^[A-Za-z0-9_-]+$/, 'may only contain letters, digits, "_" and "-"')
      .default('LLM_KEYS'),
    /** How long a request waits for an unreadable key store before it is refused (fail closed). */
    key_store_wait_ms: z.number().int().nonnegative().default(2_000),
  })
  .strict();

export type AuthConfig = z.infer<typeof authSchema>;
