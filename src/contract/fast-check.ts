import { createRequire } from 'node:module';
import type { Ajv, ValidateFunction } from 'ajv';
import { z } from 'zod';

/**
 * The hot path's schemas (the request, a provider's answer, a stream chunk) as compiled checks that
 * allocate nothing on success: ajv's code for the JSON Schema that zod derives from the zod schema
 * (`z.toJSONSchema`, input side), so each shape is still defined once, in zod. zod's own compiled
 * object check runs every key of a schema, present or not, with a fresh `{ value, issues: [] }` for
 * each, and copies what it accepts; for a request that was the largest single allocation
 * (docs/bench/results.md).
 *
 * The contract: a value the fast check accepts is one zod accepts, and the caller may use the value
 * as it is instead of zod's copy (zod's copy may lack unknown keys of stripping objects; nothing
 * on the hot path reads those). Anything it refuses goes through zod, which names the fields at
 * fault and has the last word. What a JSON Schema cannot say (refinements, transforms) is not
 * checked here: such a schema needs its rule beside the fast check, and the equivalence tests
 * (test/fast-check.test.ts, thousands of generated values through both) fail until it has one.
 * String lengths count code points in both (zod 4.6 and ajv's default alike).
 *
 * Compiled on first use of each schema (tens of ms; the worker and the provider adapters ask for
 * theirs when they are made, so no request waits for it). ajv itself is loaded then too, not when
 * the contract is imported: the client imports the contract and never checks a request. ajv and
 * the compiled code cost a worker some memory, paid once, for less garbage on every request.
 */
const requireModule = createRequire(import.meta.url);
let ajv: Ajv | undefined;
const compiled = new WeakMap<z.ZodType, ValidateFunction>();

export function fastCheck(schema: z.ZodType): (value: unknown) => boolean {
  let validate = compiled.get(schema);
  if (validate === undefined) {
    ajv ??= new (requireModule('ajv') as typeof import('ajv')).Ajv({ logger: false, strict: false, allErrors: false });
    validate = ajv.compile(z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any', target: 'draft-07' }));
    compiled.set(schema, validate);
  }
  return validate;
}
