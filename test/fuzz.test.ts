/**
 * Issue 12, "Tests": a bounded fuzz test. A few thousand malformed requests (every field, the ids, the
 * body's bytes and the headers), generated from a seed, sent to one in-process worker that requires a
 * secret, over a real nats-server, with the fake OpenAI provider behind it. Every request with a reply
 * subject must get exactly one terminal message with a DESIGN.md error code (never `internal`: a
 * malformed request is the client's fault) or a real answer, every request (reply subject or not) exactly
 * one usage event in LLM_USAGE, attributed as DESIGN.md says; the worker never stalls, never loses its
 * connection and never logs the secret.
 *
 *   FUZZ_SEED=123 node --import tsx --test --test-timeout=300000 test/fuzz.test.ts
 *
 * Environment: FUZZ_SEED (default below; printed), FUZZ_COUNT (default 3000), FUZZ_CONCURRENCY (32),
 * FUZZ_REPLY_TIMEOUT_MS (8000: the longest silence allowed before the terminal message: for a plain request the
 * time to its reply, for a stream the longest gap between its messages, as README tells clients to time streams).
 *
 * The expectations are computed here from the documented rules (DESIGN.md, README, client-ids.ts's
 * comments), not by calling the worker's own checks: `request_id` is 1-128 visible ASCII characters;
 * `agent_id` 1-256 UTF-16 units without control characters or lone surrogates; a body over
 * `worker.max_request_bytes` is refused before it is read (so its ids are not known).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect, type Socket } from 'node:net';
import { connect } from '@nats-io/transport-node';
import { createInbox, headers as createHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { seededRandom } from './helpers/seeded-random.js';
import { startChildWorker, startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

const DEFAULT_SEED = 20_261_127;
const SEED =
  process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== ''
    ? Number(process.env.FUZZ_SEED) >>> 0
    : DEFAULT_SEED;
const COUNT = Number(process.env.FUZZ_COUNT ?? 3_000);
const CONCURRENCY = Number(process.env.FUZZ_CONCURRENCY ?? 32);
const REPLY_TIMEOUT_MS = Number(process.env.FUZZ_REPLY_TIMEOUT_MS ?? 8_000);
/** The final valid request, after the fuzz, must be answered within this (the worker never stalled). */
const FINAL_REPLY_MS = 3_000;

const SECRET = 'fuzz-SECRET-5b1f0c9e7a31';
/** Under the server's max_payload (1 MiB), so that some fuzzed bodies are refused as payload_too_large. */
const MAX_REQUEST_BYTES = 200_000;
const MAX_JSON_DEPTH = 64;
/** Bodies stay under the server's max_payload (1 MiB), headers included. */
const MAX_PUBLISHABLE_BYTES = 1_000_000;

/** DESIGN.md, "Errors". */
const DESIGN_CODES = new Set([
  'invalid_request',
  'unauthorized',
  'budget_exceeded',
  'model_not_found',
  'payload_too_large',
  'rate_limited',
  'internal',
  'upstream_error',
  'no_provider_available',
  'upstream_timeout',
  'cancelled',
]);
const DESIGN_STATUS: Record<string, number> = {
  invalid_request: 400,
  unauthorized: 401,
  budget_exceeded: 402,
  model_not_found: 404,
  payload_too_large: 413,
  rate_limited: 429,
  internal: 500,
  upstream_error: 502,
  no_provider_available: 503,
  upstream_timeout: 504,
  cancelled: 499,
};
/** What a malformed request may be refused with: the client's fault. */
const CLIENT_CODES = new Set(['invalid_request', 'unauthorized', 'model_not_found', 'payload_too_large']);

const USAGE_PREFIX = 'llm.usage.';
const MAX_TOKEN_LENGTH = 128;

// ---------------------------------------------------------------------------------------------------
// JSON with raw pieces (numbers JSON.stringify cannot write, nesting 10,000 deep) and any key name.

class Raw {
  constructor(readonly text: string) {}
}
type Json = null | boolean | number | string | Raw | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

/** Sets a key even when it is `__proto__` (an own property, as JSON.parse makes it). */
function put(object: Obj, key: string, value: Json): void {
  Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
}

function obj(entries: Array<[string, Json]>): Obj {
  const result: Obj = {};
  for (const [key, value] of entries) put(result, key, value);
  return result;
}

function toJson(value: Json): string {
  if (value instanceof Raw) return value.text;
  if (Array.isArray(value)) return `[${value.map(toJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value)
      .map((key) => `${JSON.stringify(key)}:${toJson(value[key]!)}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

function shortText(text: string, max = 120): string {
  const escaped = JSON.stringify(text).slice(1, -1);
  return escaped.length <= max ? escaped : `${escaped.slice(0, max)}…(${text.length} chars)`;
}

function describeValue(value: Json): string {
  if (value instanceof Raw) return `raw:${shortText(value.text, 50)}`;
  return shortText(toJson(value), 60);
}

/** `levels` of nesting as text (objects and arrays alternating, or one kind). */
function deepText(levels: number, kind: 'object' | 'array' | 'mixed'): string {
  if (kind === 'array') return `${'['.repeat(levels)}1${']'.repeat(levels)}`;
  if (kind === 'object') return `${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}`;
  const pairs = Math.ceil(levels / 2);
  return `${'{"a":['.repeat(pairs)}"leaf"${']}'.repeat(pairs)}`;
}

// ---------------------------------------------------------------------------------------------------
// The oracle: what the documented rules say about a body, computed independently of the worker.

const REQUEST_ID_RULE = /^[\x21-\x7e]{1,128}$/;
const UNSAFE_TEXT = /[\p{Cc}\p{Cs}]/u;
const TOKEN_SAFE = /^[A-Za-z0-9_:-]+$/;

interface Oracle {
  tooLarge: boolean;
  parsed: boolean;
  /** Objects/arrays nest deeper than 64 levels. */
  tooDeep: boolean;
  /** A valid client `request_id` in a JSON object body. */
  requestId?: string;
  /** The raw `request_id` field when present and not valid (must never come back). */
  badRequestId?: unknown;
  /** A valid `metadata.agent_id`. */
  agentId?: string;
}

function nestingDepth(value: unknown): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (typeof node !== 'object' || node === null) continue;
    if (depth > deepest) deepest = depth;
    for (const child of Array.isArray(node) ? node : Object.values(node)) stack.push([child, depth + 1]);
  }
  return deepest;
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

function oracleFor(bytes: Uint8Array): Oracle {
  if (bytes.length > MAX_REQUEST_BYTES) return { tooLarge: true, parsed: false, tooDeep: false };
  let body: unknown;
  try {
    // As the worker's NATS client decodes it: U+FFFD for invalid bytes, a leading BOM dropped.
    body = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return { tooLarge: false, parsed: false, tooDeep: false };
  }
  const oracle: Oracle = { tooLarge: false, parsed: true, tooDeep: nestingDepth(body) > MAX_JSON_DEPTH };
  if (!isPlainObject(body)) return oracle;
  if (Object.hasOwn(body, 'request_id')) {
    const requestId = body.request_id;
    if (typeof requestId === 'string' && REQUEST_ID_RULE.test(requestId)) oracle.requestId = requestId;
    else oracle.badRequestId = requestId;
  }
  const metadata = body.metadata;
  if (isPlainObject(metadata) && Object.hasOwn(metadata, 'agent_id')) {
    const agentId = metadata.agent_id;
    if (typeof agentId === 'string' && agentId.length >= 1 && agentId.length <= 256 && !UNSAFE_TEXT.test(agentId))
      oracle.agentId = agentId;
  }
  return oracle;
}

// ---------------------------------------------------------------------------------------------------
// The generator.

/**
 * What a body deserves from a worker that accepted the secret: served, refused (a client-fault code), either, or
 * `gap`: malformed content parts, which the worker once accepted (the fuzz found it): checked in a test of their own below.
 */
type Expect = 'ok' | 'error' | 'any' | 'gap';
const EXPECT_RANK: Record<Expect, number> = { ok: 0, any: 1, gap: 2, error: 3 };
type SecretMode = 'right' | 'wrong' | 'decided-by-reply';

interface FuzzCase {
  n: number;
  labels: string[];
  body: Uint8Array;
  /** Headers through nats.js (null: a message without headers). */
  headers: Array<[string, string]> | null;
  /** A header block written on a raw socket instead (HPUB), for what nats.js would not send. */
  rawHeaderBlock?: Uint8Array;
  reply: boolean;
  secret: SecretMode;
  /** What the body deserves from a worker that accepted the secret. */
  bodyExpect: Expect;
  /** A plain valid request: must be answered `echo: hi`. */
  echo: boolean;
  stream: boolean;
  oracle: Oracle;
}

interface Gen {
  next: () => number;
  int: (low: number, high: number) => number;
  pick: <T>(items: readonly T[]) => T;
  chance: (p: number) => boolean;
}

function generator(seed: number): Gen {
  const next = seededRandom(seed);
  const int = (low: number, high: number) => low + Math.floor(next() * (high - low + 1));
  return { next, int, pick: (items) => items[Math.floor(next() * items.length)]!, chance: (p) => next() < p };
}

const text = (length: number, unit = 'x') => unit.repeat(Math.ceil(length / unit.length)).slice(0, length);
/** A string taking about `bytes` bytes once written as JSON (escapes counted); all stay under the server's 1 MiB. */
function hugeText(g: Gen, unit: string): [string, number] {
  const bytes = g.pick([10_000, 60_000, 150_000, 199_000, 230_000, 400_000, 700_000]);
  const unitBytes = Buffer.byteLength(JSON.stringify(unit)) - 2;
  const value = text(Math.floor((bytes / unitBytes) * unit.length), unit);
  return [value, bytes];
}

/** Values of the wrong type or out of range, for every top-level field: each must be refused. */
const WRONG: Record<string, Json[]> = {
  model: [
    7,
    null,
    true,
    [],
    {},
    ['gpt-test'],
    '',
    text(257),
    'gpt-9000',
    'GPT-TEST',
    ' gpt-test',
    'gpt-test\n',
    '__proto__',
    'constructor',
    'toString',
    'hasOwnProperty',
    '\ud800',
    'gpt-test\u0000',
    '*',
    '>',
    'gpt.test',
  ],
  messages: [
    'hi',
    7,
    null,
    {},
    obj([
      ['role', 'user'],
      ['content', 'hi'],
    ]),
    [],
    true,
    [null],
    [1],
    ['hi'],
    [[]],
  ],
  max_tokens: [
    '10',
    -1,
    0,
    1.5,
    null,
    true,
    [],
    {},
    'NaN',
    'Infinity',
    new Raw('1e309'),
    new Raw('-1e309'),
    new Raw('-0'),
    new Raw('1e-400'),
  ],
  max_completion_tokens: ['10', -5, 0, 2.5, null, false, 'NaN', new Raw('1e309')],
  temperature: [-0.1, 2.5, '0.5', 'NaN', null, [], {}, new Raw('1e309'), true, new Raw('-1e309')],
  top_p: [-1, 1.5, 'x', null, new Raw('1e309')],
  stop: [5, [1], ['a', 'b', 'c', 'd', 'e'], null, {}, [null]],
  seed: [1.5, 'x', null, [], new Raw('-1e309'), 'NaN'],
  n: [129, 0, '1', null, 1.5, -1],
  presence_penalty: [3, -3, 'x', null],
  frequency_penalty: [3, -3, 'x', null, new Raw('1e309')],
  logit_bias: ['x', [], obj([['a', 'b']]), obj([['a', null]]), null, 5],
  logprobs: ['yes', 1, null],
  top_logprobs: [21, -1, 1.5, 'x'],
  user: [5, null, {}, []],
  tools: [
    'x',
    {},
    [{}],
    [obj([['type', 'function']])],
    [
      obj([
        ['type', 'function'],
        ['function', obj([['name', '']])],
      ]),
    ],
    [
      obj([
        ['type', 'func'],
        ['function', obj([['name', 'f']])],
      ]),
    ],
    [null],
    [
      obj([
        ['type', 'function'],
        [
          'function',
          obj([
            ['name', 'f'],
            ['parameters', 'x'],
          ]),
        ],
      ]),
    ],
    null,
  ],
  tool_choice: ['sometimes', {}, obj([['type', 'function']]), 5, null, []],
  parallel_tool_calls: ['yes', 1, null],
  response_format: [obj([['type', 'xml']]), 'json', {}, null, []],
  stream: ['true', 1, null, {}, [], 'false'],
  stream_options: ['x', obj([['include_usage', 'yes']]), null, []],
  reasoning_effort: ['max', '', 5, null],
  metadata: ['x', [], null, 5, true, [obj([['agent_id', 'a']])]],
  timeout_ms: [0, -1, 3_600_001, 1.5, '100', null, new Raw('1e309')],
  cache: ['never', true, null, '', 'AUTO'],
  provider_options: ['x', [], null, 5, true],
};

/** request_id values that are not 1-128 visible ASCII characters. */
const BAD_REQUEST_IDS: Json[] = [
  5,
  null,
  [],
  {},
  true,
  '',
  ' ',
  'a b',
  'a\r\nb',
  'a\nb',
  'a\rb',
  'a\u0000b',
  '\u0000',
  'é',
  '日本語',
  '\ud800',
  '\udfff',
  'a\ud83d',
  'a\ude00',
  text(129),
  text(1_000),
  '\u007f',
  '\t',
  'a\u0085b',
  'a\u00a0b',
  '\ufeffa',
  'a\u2028b',
  '\r\n',
  'a\u001bb',
];

/** Metadata id values (agent_id, microdao_id, channel_id): [value, valid]. */
const ID_VALUES: Array<[Json, boolean]> = [
  ['', false],
  ['\u0001x', false],
  ['a\nb', false],
  ['a\r\nb', false],
  ['a\u0000', false],
  ['\ud800', false],
  ['a\udc00b', false],
  [text(257), false],
  ['€'.repeat(257), false],
  [5, false],
  [null, false],
  [[], false],
  [{}, false],
  ['a\u0085', false],
  ['\u007f', false],
  ['\ufffd', true],
  ['anonymous', true],
  ['unauthenticated', true],
  ['a.b', true],
  ['%', true],
  ['%41', true],
  ['>', true],
  ['*', true],
  ['a b', true],
  [' ', true],
  [text(256), true],
  ['€'.repeat(256), true],
  ['agent:fuzz', true],
  ['agent.fuzz.>', true],
  ['日本', true],
  ['😀', true],
  ['~', true],
  ['__proto__', true],
  ['constructor', true],
  ['a%2Eb', true],
  ['anonymous ', true],
  ['%61nonymous', true],
  ['.', true],
  ['..', true],
  ['agent:fuzz\ufffd', true],
  [text(128, 'ab'), true],
  [text(200, 'a.'), true],
];

/** Mutates `o`; returns what the result deserves, a label, and the top-level field it touched. */
type Mutation = (o: Obj, g: Gen, n: number) => [Expect, string, string];

const FIELD_NAMES = Object.keys(WRONG);

const mutations: Array<[number, Mutation]> = [
  // Wrong types and out-of-range values, every field.
  [
    30,
    (o, g) => {
      const field = g.pick(FIELD_NAMES);
      const value = g.pick(WRONG[field]!);
      put(o, field, value);
      return ['error', `${field}=${describeValue(value)}`, field];
    },
  ],
  // request_id: invalid ones.
  [
    10,
    (o, g) => {
      const value = g.pick(BAD_REQUEST_IDS);
      put(o, 'request_id', value);
      return ['error', `request_id=${describeValue(value)}`, 'request_id'];
    },
  ],
  // request_id: odd but valid ones (some shared between requests on purpose).
  [
    4,
    (o, g, n) => {
      const value = g.pick([
        '__proto__',
        'constructor',
        'toString',
        `*${n}`,
        `>${n}`,
        `a.b.${n}`,
        `%00-${n}`,
        `{"x":${n}}`,
        `\\${n}`,
        `"${n}"`,
        `fz-${n}-${text(120 - String(n).length, 'z')}`,
        `~${n}~`,
      ]);
      put(o, 'request_id', value);
      return ['ok', `request_id=${describeValue(value)}`, 'request_id'];
    },
  ],
  // request_id absent.
  [
    2,
    (o) => {
      delete o.request_id;
      return ['ok', 'no request_id', 'request_id'];
    },
  ],
  // metadata ids.
  [
    14,
    (o, g) => {
      const [value, valid] = g.pick(ID_VALUES);
      const key = g.pick(['agent_id', 'agent_id', 'agent_id', 'microdao_id', 'channel_id']);
      const metadata: Obj = isPlainObject(o.metadata) ? { ...(o.metadata as Obj) } : {};
      put(metadata, key, value);
      o.metadata = metadata;
      return [valid ? 'ok' : 'error', `metadata.${key}=${describeValue(value)}`, 'metadata'];
    },
  ],
  // metadata without agent_id, or none at all.
  [
    3,
    (o, g) => {
      if (g.chance(0.5)) {
        delete o.metadata;
        return ['ok', 'no metadata', 'metadata'];
      }
      o.metadata = obj([['microdao_id', 'microdao:fuzz']]);
      return ['ok', 'metadata without agent_id', 'metadata'];
    },
  ],
  // Tags: too many, odd names, odd values.
  [
    8,
    (o, g) => {
      const metadata: Obj = isPlainObject(o.metadata) ? { ...(o.metadata as Obj) } : {};
      o.metadata = metadata;
      const choice = g.int(0, 13);
      switch (choice) {
        case 0:
          for (let index = 0; index < 33; index++) put(metadata, `t${index}`, 'v');
          return ['error', '33 tags', 'metadata'];
        case 1:
          for (let index = 0; index < 32; index++) put(metadata, `t${index}`, 'v');
          return ['ok', '32 tags', 'metadata'];
        case 2:
          for (let index = 0; index < 500; index++) put(metadata, `t${index}`, 'v');
          return ['error', '500 tags', 'metadata'];
        default: {
          const [key, value, valid] = g.pick<[string, Json, boolean]>([
            ['', 'v', false],
            [text(65), 'v', false],
            ['a\nb', 'v', false],
            ['\ud800', 'v', false],
            ['\u0000', 'v', false],
            ['a.b', 'v', true],
            ['__proto__', 'v', true],
            ['constructor', 'v', true],
            ['toString', 'v', true],
            ['😀', 'v', true],
            ['*', 'v', true],
            ['>', 'v', true],
            ['a b', 'v', true],
            [text(64), 'v', true],
            ['hasOwnProperty', 'v', true],
            ['task', text(1_025), false],
            ['task', text(1_024), true],
            ['task', 5, false],
            ['task', null, false],
            ['task', {}, false],
            ['task', '\u0000', false],
            ['task', '', true],
            ['task', '\ud800', false],
            ['task', [], false],
            ['__proto__', obj([['agent_id', 'x']]), false],
            ['x-internal-secret', 'v', true],
            ['password', 'v', true],
          ]);
          put(metadata, key, value);
          return [valid ? 'ok' : 'error', `tag ${shortText(key, 30)}=${describeValue(value)}`, 'metadata'];
        }
      }
    },
  ],
  // messages malformed (and a few odd but valid ones).
  [
    18,
    (o, g) => {
      const cases: Array<[Json, Expect]> = [
        [[obj([['content', 'hi']])], 'error'],
        [
          [
            obj([
              ['role', 'robot'],
              ['content', 'hi'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', ''],
              ['content', 'hi'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'USER'],
              ['content', 'hi'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 5],
              ['content', 'hi'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', null],
              ['content', 'hi'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'tool'],
              ['content', 'x'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'tool'],
              ['content', 'x'],
              ['tool_call_id', 5],
            ]),
          ],
          'error',
        ],
        [[obj([['role', 'user']])], 'error'],
        [
          [
            obj([
              ['role', 'user'],
              ['content', null],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 5],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', {}],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', true],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [{}]],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [obj([['type', '']])]],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [obj([['type', 'text']])]],
            ]),
          ],
          'gap',
        ],
        [
          [
            obj([
              ['role', 'user'],
              [
                'content',
                [
                  obj([
                    ['type', 'text'],
                    ['text', 5],
                  ]),
                ],
              ],
            ]),
          ],
          'gap',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [obj([['type', 'image_url']])]],
            ]),
          ],
          'gap',
        ],
        [
          [
            obj([
              ['role', 'user'],
              [
                'content',
                [
                  obj([
                    ['type', 'image_url'],
                    ['image_url', obj([['url', '']])],
                  ]),
                ],
              ],
            ]),
          ],
          'gap',
        ],
        [
          [
            obj([
              ['role', 'user'],
              [
                'content',
                [
                  obj([
                    ['type', 'image_url'],
                    [
                      'image_url',
                      obj([
                        ['url', 'x'],
                        ['detail', 'ultra'],
                      ]),
                    ],
                  ]),
                ],
              ],
            ]),
          ],
          'gap',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [null]],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', ['hi']],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [[]]],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
              ['name', 5],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'assistant'],
              ['tool_calls', 'x'],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'assistant'],
              ['tool_calls', [{}]],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'assistant'],
              [
                'tool_calls',
                [
                  obj([
                    ['id', '1'],
                    ['type', 'function'],
                    ['function', obj([['name', 'f']])],
                  ]),
                ],
              ],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
              ['reasoning_content', 5],
            ]),
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
            null,
          ],
          'error',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
            obj([
              ['role', 'tool'],
              ['content', 'r'],
            ]),
          ],
          'error',
        ],
        // Odd but valid.
        [
          [
            obj([
              ['role', 'user'],
              [
                'content',
                [
                  obj([
                    ['type', 'text'],
                    ['text', 'hi'],
                  ]),
                ],
              ],
            ]),
          ],
          'ok',
        ],
        [
          [
            obj([
              ['role', 'system'],
              ['content', 's'],
            ]),
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ],
          'ok',
        ],
        [
          [
            obj([
              ['role', 'developer'],
              ['content', 'd'],
            ]),
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ],
          'ok',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
              ['foo', 1],
            ]),
          ],
          'any',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'a\u0000b\ud800c\u001b\r\n'],
            ]),
          ],
          'any',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', [obj([['type', 'custom']])]],
            ]),
          ],
          'any',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', ''],
            ]),
          ],
          'any',
        ],
        [
          Array.from({ length: 300 }, () =>
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ),
          'any',
        ],
        [
          [
            obj([
              ['role', 'user'],
              ['content', 'q'],
            ]),
            obj([
              ['role', 'assistant'],
              ['content', null],
              [
                'tool_calls',
                [
                  obj([
                    ['id', 'c1'],
                    ['type', 'function'],
                    [
                      'function',
                      obj([
                        ['name', 'f'],
                        ['arguments', '{}'],
                      ]),
                    ],
                  ]),
                ],
              ],
            ]),
            obj([
              ['role', 'tool'],
              ['tool_call_id', 'c1'],
              ['content', 'r'],
            ]),
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ],
          'any',
        ],
      ];
      const [value, expect] = g.pick(cases);
      o.messages = value;
      return [expect, `messages=${describeValue(value)}`, 'messages'];
    },
  ],
  // Unknown top-level fields.
  [
    8,
    (o, g) => {
      const key = g.pick([
        'max_token',
        'Model',
        '',
        ' ',
        '__proto__',
        'constructor',
        'toString',
        'hasOwnProperty',
        text(10_000),
        'a\nb',
        '\ud800',
        'stream ',
        'functions',
        'prompt',
        'valueOf',
        'REQUEST_ID',
        'metadata\u0000',
      ]);
      const value = g.pick<Json>([1, 'x', null, {}, obj([['agent_id', 'agent:evil']]), []]);
      put(o, key, value);
      return ['error', `unknown field ${shortText(key, 30)}=${describeValue(value)}`, key];
    },
  ],
  // Nesting: 1,000-10,000 levels (refused), or a few dozen (fine).
  [
    9,
    (o, g) => {
      const levels = g.chance(0.8) ? g.int(1_000, 10_000) : g.int(2, 40);
      const deep = new Raw(deepText(levels, g.pick(['object', 'array', 'mixed'] as const)));
      const where = g.pick([
        'tools',
        'provider_options',
        'metadata',
        'messages',
        'response_format',
        'logit_bias',
        'unknown',
        'tool_choice',
      ]);
      const ok = levels <= 40;
      switch (where) {
        case 'tools':
          o.tools = [
            obj([
              ['type', 'function'],
              [
                'function',
                obj([
                  ['name', 'f'],
                  [
                    'parameters',
                    obj([
                      ['type', 'object'],
                      ['properties', obj([['x', deep]])],
                    ]),
                  ],
                ]),
              ],
            ]),
          ];
          return [ok ? 'any' : 'error', `tools parameters ${levels} deep`, where];
        case 'provider_options':
          o.provider_options = obj([['nested', deep]]);
          return [ok ? 'any' : 'error', `provider_options ${levels} deep`, where];
        case 'metadata':
          o.metadata = obj([
            ['agent_id', 'agent:fuzz'],
            ['deep', deep],
          ]);
          return ['error', `metadata tag ${levels} deep`, where];
        case 'messages':
          o.messages = [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
              ['extra', deep],
            ]),
          ];
          return [ok ? 'any' : 'error', `messages[0].extra ${levels} deep`, where];
        case 'response_format':
          o.response_format = obj([
            ['type', 'json_schema'],
            ['json_schema', deep],
          ]);
          return [ok ? 'any' : 'error', `response_format ${levels} deep`, where];
        case 'logit_bias':
          o.logit_bias = obj([['1', deep]]);
          return ['error', `logit_bias ${levels} deep`, where];
        case 'tool_choice':
          o.tool_choice = obj([
            ['type', 'function'],
            [
              'function',
              obj([
                ['name', 'f'],
                ['x', deep],
              ]),
            ],
          ]);
          return [ok ? 'any' : 'error', `tool_choice ${levels} deep`, where];
        default:
          put(o, 'deep_unknown', deep);
          return ['error', `unknown field ${levels} deep`, 'deep_unknown'];
      }
    },
  ],
  // Huge strings in every kind of place.
  [
    6,
    (o, g) => {
      const unit = g.pick(['x', '€', '\u0000', 'a\n']);
      const [value, length] = hugeText(g, unit);
      const where = g.pick(['content', 'model', 'request_id', 'agent_id', 'unknown', 'tag', 'user', 'stop']);
      switch (where) {
        case 'content':
          o.messages = [
            obj([
              ['role', 'user'],
              ['content', value],
            ]),
          ];
          return ['any', `content of ~${length} bytes of ${shortText(unit)}`, 'messages'];
        case 'model':
          o.model = value;
          return ['error', `model of ~${length} bytes`, 'model'];
        case 'request_id':
          o.request_id = value;
          return ['error', `request_id of ~${length} bytes`, 'request_id'];
        case 'agent_id':
          o.metadata = obj([['agent_id', value]]);
          return ['error', `agent_id of ~${length} bytes`, 'metadata'];
        case 'unknown':
          put(o, value, 1);
          return ['error', `unknown field name of ~${length} bytes`, 'huge_unknown'];
        case 'tag':
          o.metadata = obj([
            ['agent_id', 'agent:fuzz'],
            ['task', value],
          ]);
          return ['error', `tag value of ~${length} bytes`, 'metadata'];
        case 'user':
          o.user = value;
          return ['any', `user of ~${length} bytes`, 'user'];
        default:
          o.stop = [value];
          return ['any', `stop of ~${length} bytes`, 'stop'];
      }
    },
  ],
  // Odd but valid values.
  [
    6,
    (o, g) => {
      const [field, value, expect] = g.pick<[string, Json, Expect]>([
        ['temperature', 0, 'ok'],
        ['temperature', 2, 'ok'],
        ['cache', 'bypass', 'ok'],
        ['cache', 'auto', 'ok'],
        ['max_tokens', 1, 'ok'],
        ['stop', ['a'], 'ok'],
        ['user', 'u', 'ok'],
        ['seed', 0, 'ok'],
        ['n', 1, 'ok'],
        ['n', 3, 'ok'],
        ['response_format', obj([['type', 'json_object']]), 'ok'],
        ['stream_options', obj([['include_usage', true]]), 'ok'],
        ['logit_bias', obj([['50256', -100]]), 'ok'],
        ['timeout_ms', 1, 'any'],
        ['timeout_ms', 60_000, 'ok'],
        ['logprobs', true, 'any'],
        ['tool_choice', 'auto', 'any'],
        ['reasoning_effort', 'low', 'any'],
        ['provider_options', obj([['a', 1]]), 'any'],
        ['top_p', 0, 'ok'],
        ['seed', new Raw('1e308'), 'any'],
        ['max_tokens', new Raw('1e308'), 'any'],
        ['seed', -1, 'ok'],
        ['max_tokens', new Raw('1.0'), 'ok'],
        ['temperature', new Raw('0e5'), 'ok'],
        ['stream', false, 'ok'],
      ]);
      put(o, field, value);
      return [expect, `${field}=${describeValue(value)} (valid)`, field];
    },
  ],
];

const MUTATION_WEIGHT = mutations.reduce((sum, [weight]) => sum + weight, 0);

function pickMutation(g: Gen): Mutation {
  let roll = g.next() * MUTATION_WEIGHT;
  for (const [weight, mutation] of mutations) {
    roll -= weight;
    if (roll < 0) return mutation;
  }
  return mutations[mutations.length - 1]![1];
}

const encoder = new TextEncoder();
const BAD_BYTES: Array<[string, number[]]> = [
  ['ff', [0xff]],
  ['fe ff', [0xfe, 0xff]],
  ['lone continuation 80', [0x80]],
  ['overlong c0 af', [0xc0, 0xaf]],
  ['surrogate ed a0 80', [0xed, 0xa0, 0x80]],
  ['truncated e2 82', [0xe2, 0x82]],
  ['f8 88 80 80 80', [0xf8, 0x88, 0x80, 0x80, 0x80]],
  ['over U+10FFFF f4 90 80 80', [0xf4, 0x90, 0x80, 0x80]],
];

/** Bytes of `template` with every "@@BAD@@" replaced by `bad`. */
function withBadBytes(template: string, bad: number[]): Uint8Array {
  const parts = template.split('@@BAD@@').map((part) => encoder.encode(part));
  const total = parts.reduce((sum, part) => sum + part.length, 0) + bad.length * (parts.length - 1);
  const out = new Uint8Array(total);
  let offset = 0;
  parts.forEach((part, index) => {
    if (index > 0) {
      out.set(bad, offset);
      offset += bad.length;
    }
    out.set(part, offset);
    offset += part.length;
  });
  return out;
}

/** Whole bodies that are not a request object: [label, bytes, expect]. */
function wholeBody(g: Gen, n: number): [string, Uint8Array, Expect] {
  const valid = `{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"request_id":"fz-${n}","metadata":{"agent_id":"agent:fuzz"}}`;
  const choice = g.int(0, 11);
  if (choice <= 3) {
    const body = g.pick([
      '',
      ' ',
      '\n',
      '{',
      '}',
      'hello',
      '{"model":',
      'null',
      '0',
      '123',
      '-1',
      '"str"',
      'true',
      'false',
      '[]',
      '[1,2]',
      '[{}]',
      '{}',
      '{"model":"gpt-test"}',
      "{'model':'gpt-test'}",
      '{"model":"gpt-test",}',
      'NaN',
      'Infinity',
      '1e309',
      '{"a":1}/*c*/',
      '\u0000',
      '{"model":"gpt-test"}{"x":1}',
      `${valid}x`,
      `${valid}${valid}`,
      `[${valid}]`,
      valid.replace('"hi"', '"h\ti"'),
      valid.replace('"hi"', '"h\u0001i"'),
      valid.replace('fz-', 'fz-\n'),
      valid.slice(0, 40),
      `{"request_id":"fz-${n}","metadata":{"agent_id":"agent:fuzz"}}`,
      '{"__proto__":{"model":"gpt-test"}}',
      '{"constructor":{"prototype":{}}}',
    ]);
    return [`body=${shortText(body, 60)}`, encoder.encode(body), 'error'];
  }
  if (choice <= 5) {
    const [name, bad] = g.pick(BAD_BYTES);
    const where = g.int(0, 6);
    const templates: Array<[string, Expect]> = [
      ['@@BAD@@', 'error'],
      [`@@BAD@@${valid}`, 'error'],
      [valid.replace(`fz-${n}`, `fz-${n}@@BAD@@`), 'error'],
      [valid.replace('agent:fuzz', 'agent:fuzz@@BAD@@'), 'ok'],
      [valid.replace('"hi"', '"hi@@BAD@@"'), 'any'],
      [valid.replace('gpt-test', 'gpt-test@@BAD@@'), 'error'],
      [valid.replace('"model"', '"mo@@BAD@@del"'), 'error'],
    ];
    const [template, expect] = templates[where]!;
    return [
      `invalid UTF-8 (${name}) at ${['body', 'start', 'request_id', 'agent_id', 'content', 'model', 'key'][where]}`,
      withBadBytes(template, bad),
      expect,
    ];
  }
  if (choice === 6) {
    // A UTF-8 BOM (the decoder drops it) or UTF-16.
    if (g.chance(0.5)) return ['BOM + valid JSON', new Uint8Array([0xef, 0xbb, 0xbf, ...encoder.encode(valid)]), 'any'];
    return ['UTF-16LE body', new Uint8Array(Buffer.from(valid, 'utf16le')), 'error'];
  }
  if (choice === 7) {
    // Duplicate keys: the last one counts in JSON.parse.
    const body = g.chance(0.5)
      ? valid.replace('"request_id"', '"request_id":"a\\nb","request_id"')
      : valid.replace(`"fz-${n}"`, `"fz-${n}","request_id":"bad id\\u0000"`);
    return ['duplicate request_id keys', encoder.encode(body), body.includes('bad id') ? 'error' : 'ok'];
  }
  if (choice === 8) {
    const levels = g.int(1_000, 10_000);
    return [`body an array ${levels} deep`, encoder.encode(deepText(levels, 'array')), 'error'];
  }
  if (choice === 9) {
    const body = g.chance(0.5) ? `${valid}\n \t` : ` \n${valid}`;
    return ['whitespace around valid JSON', encoder.encode(body), 'ok'];
  }
  if (choice === 10) {
    const [value, length] = hugeText(g, 'z');
    return [`body of ${length} bytes not JSON`, encoder.encode(value), 'error'];
  }
  return ['a JSON string of 100k', encoder.encode(JSON.stringify(text(100_000))), 'error'];
}

const WRONG_SECRETS = [
  'wrong',
  `${SECRET}x`,
  SECRET.slice(0, -1),
  SECRET.toUpperCase(),
  text(5_000),
  '日本',
  [...SECRET].reverse().join(''),
  '',
  `x${SECRET}`,
];
const GARBAGE_TRACEPARENTS = [
  'garbage',
  '00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-zzzzzzzzzzzzzzzz-01',
  '00-00000000000000000000000000000000-0000000000000000-01',
  'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
  '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz',
  text(8_000, '0-'),
  '☃☃☃',
  '-',
  '00--',
  `00-${SECRET}-x-01`.replace(SECRET, 'deadbeef'),
  '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
  '\u0000\u0001',
];

/** Headers for nats.js: [headers, secret mode, label]. `mixed` ones need a valid body to tell what happened. */
function pickHeaders(g: Gen): [Array<[string, string]> | null, SecretMode, string, boolean] {
  const roll = g.next();
  let headers: Array<[string, string]> | null;
  let mode: SecretMode = 'right';
  let label: string;
  let mixed = false;
  if (roll < 0.79) {
    headers = [['X-Internal-Secret', SECRET]];
    label = 'secret';
  } else if (roll < 0.82) {
    headers = [['x-internal-secret', SECRET]];
    label = 'secret as x-internal-secret';
  } else if (roll < 0.84) {
    headers = [['X-INTERNAL-SECRET', SECRET]];
    label = 'secret as X-INTERNAL-SECRET';
  } else if (roll < 0.86) {
    headers = [
      ['X-Internal-Secret', SECRET],
      ['X-Internal-Secret', SECRET],
    ];
    label = 'secret twice';
  } else if (roll < 0.87) {
    headers = [
      ['X-Internal-Secret', SECRET],
      ['x-internal-secret', SECRET],
    ];
    label = 'secret under two spellings';
  } else if (roll < 0.91) {
    headers = g.chance(0.5) ? null : [['X-Other', 'x']];
    mode = 'wrong';
    label = 'no secret';
  } else if (roll < 0.95) {
    const wrong = g.pick(WRONG_SECRETS);
    headers = [[g.pick(['X-Internal-Secret', 'x-internal-secret']), wrong]];
    mode = 'wrong';
    label = `wrong secret ${shortText(wrong, 20)}`;
  } else if (roll < 0.97) {
    const name = g.pick([
      'X-Internal-Secrets',
      'X_Internal_Secret',
      'Internal-Secret',
      'X-Internal-Secret-',
      'XInternalSecret',
      'Authorization',
    ]);
    headers = [[name, SECRET]];
    mode = 'wrong';
    label = `secret under the wrong name ${name}`;
  } else {
    const wrong = g.pick(WRONG_SECRETS.filter((value) => value !== ''));
    headers = g.pick<Array<[string, string]>>([
      [
        ['X-Internal-Secret', wrong],
        ['X-Internal-Secret', SECRET],
      ],
      [
        ['X-Internal-Secret', SECRET],
        ['X-Internal-Secret', wrong],
      ],
      [
        ['X-Internal-Secret', wrong],
        ['x-internal-secret', SECRET],
      ],
      [
        ['x-internal-secret', SECRET],
        ['X-Internal-Secret', wrong],
      ],
      [
        ['X-Internal-Secret', ''],
        ['x-internal-secret', SECRET],
      ],
    ]);
    mode = 'decided-by-reply';
    mixed = true;
    label = `mixed secrets ${headers.map(([name, value]) => `${name}:${value === SECRET ? 'right' : shortText(value, 12)}`).join(',')}`;
  }
  if (g.chance(0.12)) {
    const extra = g.pick<Array<[string, string]>>([
      [['traceparent', g.pick(GARBAGE_TRACEPARENTS)]],
      [
        ['traceparent', g.pick(GARBAGE_TRACEPARENTS)],
        ['traceparent', g.pick(GARBAGE_TRACEPARENTS)],
      ],
      [
        ['tracestate', g.pick(['=', ',,,', text(4_000, 'a=b,'), '☃=☃'])],
        ['traceparent', g.pick(GARBAGE_TRACEPARENTS)],
      ],
      [['Nats-Msg-Id', 'fz-dup']],
      [['LLM-Stream', 'end']],
      [
        ['Nats-Service-Error-Code', '500'],
        ['Nats-Service-Error', 'x'],
      ],
      [['Authorization', 'Bearer sk-fuzz-garbage-0000000000']],
      [['Status', '503']],
      [['X-Long', text(8_000)]],
      [['X-Unicode', '日本語 ☃ \ud83d\ude00']],
      [['Nats-Expected-Stream', 'LLM_USAGE']],
    ]);
    headers = [...(headers ?? []), ...extra];
    label += ` + ${extra.map(([name, value]) => `${name}:${shortText(value, 16)}`).join(',')}`;
  }
  return [headers, mode, label, mixed];
}

/** Header blocks nats.js would not write, for a raw HPUB; each with the secret somewhere, so the reply tells. */
function rawHeaderBlock(g: Gen): [string, Uint8Array] {
  const blocks: Array<[string, string | Uint8Array]> = [
    ['status 503 line', `NATS/1.0 503\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`],
    ['status 503 no responders, no secret', 'NATS/1.0 503\r\n\r\n'],
    ['idle heartbeat status, no secret', 'NATS/1.0 100 Idle Heartbeat\r\n\r\n'],
    ['no space after colon', `NATS/1.0\r\nx-internal-secret:${SECRET}\r\n\r\n`],
    ['padded value', `NATS/1.0\r\nX-Internal-Secret:    ${SECRET}   \r\n\r\n`],
    ['a line without colon', `NATS/1.0\r\ngarbage-line-without-colon\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`],
    ['a nameless header', `NATS/1.0\r\n: nameless\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`],
    ['empty header block', 'NATS/1.0\r\n\r\n'],
    [
      'invalid UTF-8 in the secret value',
      withBadBytes(`NATS/1.0\r\nX-Internal-Secret: ${SECRET}@@BAD@@\r\n\r\n`, [0xff]),
    ],
    [
      'invalid UTF-8 traceparent',
      withBadBytes(`NATS/1.0\r\ntraceparent: @@BAD@@\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`, [0xfe, 0xff]),
    ],
    ['secret twice on raw lines', `NATS/1.0\r\nX-Internal-Secret: ${SECRET}\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`],
    ['status line garbage', `NATS/1.0 abc def\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`],
    ['tab-separated value', `NATS/1.0\r\nX-Internal-Secret:\t${SECRET}\r\n\r\n`],
  ];
  const [label, block] = g.pick(blocks);
  return [`raw HPUB: ${label}`, typeof block === 'string' ? encoder.encode(block) : block];
}

/**
 * Header blocks the server passes on but the worker's NATS client (nats.js MsgHdrsImpl.decode) throws on when
 * `msg.headers` is first read: a header name with a character outside 33-126 (a space, a tab, a non-ASCII or
 * invalid UTF-8 byte), a value with a bare CR or LF. Any client can send them, without the secret.
 * Sent in a test of their own (after the fuzz's checks): before the fix they left the worker with a request in flight forever.
 */
const UNDECODABLE_HEADER_BLOCKS: Array<[string, Uint8Array]> = [
  ['a header name with a space', encoder.encode(`NATS/1.0\r\nX Internal Secret: ${SECRET}\r\n\r\n`)],
  ['a bare LF in a header value', encoder.encode(`NATS/1.0\r\nX-Internal-Secret: ${SECRET}\nLLM-Stream: end\r\n\r\n`)],
  [
    'a bare CR in a header value',
    encoder.encode(`NATS/1.0\r\ntraceparent: a\rb\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`),
  ],
  ['a non-ASCII header name', encoder.encode(`NATS/1.0\r\nÜber: x\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`)],
  ['a tab in a header name', encoder.encode(`NATS/1.0\r\nX\tY: v\r\nX-Internal-Secret: ${SECRET}\r\n\r\n`)],
  ['an invalid UTF-8 byte in a header name, no secret', withBadBytes('NATS/1.0\r\nX-@@BAD@@: v\r\n\r\n', [0xff])],
];

function generateCases(seed: number, count: number): FuzzCase[] {
  const g = generator(seed);
  const cases: FuzzCase[] = [];
  for (let n = 0; n < count; n++) {
    const labels: string[] = [];
    let bodyExpect: Expect;
    let body: Uint8Array;
    let echo = false;
    let stream = false;
    const kind = g.next();
    let [headers, secret, headerLabel, mixed] = pickHeaders(g);
    let rawBlock: Uint8Array | undefined;
    let reply = g.next() >= 0.05;
    if (kind < 0.03) {
      // Odd headers written on a raw socket; a plain valid body so that the reply tells what the worker made of them.
      const [label, block] = rawHeaderBlock(g);
      rawBlock = block;
      headers = null;
      secret = 'decided-by-reply';
      headerLabel = label;
      mixed = true;
      reply = true;
    }
    if (kind < 0.09 || (mixed && reply)) {
      const o = obj([
        ['model', 'gpt-test'],
        [
          'messages',
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ],
        ],
        ['request_id', `fz-${n}`],
        ['metadata', obj([['agent_id', 'agent:fuzz']])],
      ]);
      if (g.chance(0.15)) {
        o.stream = true;
        stream = true;
      }
      labels.push(stream ? 'valid (stream)' : 'valid');
      body = encoder.encode(toJson(o));
      bodyExpect = 'ok';
      echo = true;
    } else if (kind < 0.19) {
      const [label, bytes, expect] = wholeBody(g, n);
      labels.push(label);
      body = bytes;
      bodyExpect = expect;
    } else {
      let o = obj([
        ['model', 'gpt-test'],
        [
          'messages',
          [
            obj([
              ['role', 'user'],
              ['content', 'hi'],
            ]),
          ],
        ],
        ['request_id', `fz-${n}`],
        ['metadata', obj([['agent_id', 'agent:fuzz']])],
      ]);
      if (g.chance(0.12)) o.stream = true;
      bodyExpect = 'ok';
      const mutationCount = g.chance(0.75) ? 1 : g.int(2, 3);
      // Each mutation on a field of its own, so that what each one deserves still holds at the end.
      const touched = new Set<string>();
      for (let tries = 0; touched.size < mutationCount && tries < 20; tries++) {
        const trial = obj(Object.keys(o).map((key): [string, Json] => [key, o[key]!]));
        const [expect, label, field] = pickMutation(g)(trial, g, n);
        // Two huge values together would not fit the server's max_payload (nats.js refuses to publish them).
        if (touched.has(field) || Buffer.byteLength(toJson(trial)) > MAX_PUBLISHABLE_BYTES) continue;
        touched.add(field);
        o = trial;
        if (EXPECT_RANK[expect] > EXPECT_RANK[bodyExpect]) bodyExpect = expect;
        labels.push(label);
      }
      stream = o.stream === true;
      if (stream) labels.push('stream: true');
      body = encoder.encode(toJson(o));
    }
    if (mixed && !reply && rawBlock === undefined) {
      // Without a reply nothing tells how mixed headers were read: send the secret plainly instead.
      headers = [['X-Internal-Secret', SECRET]];
      secret = 'right';
      headerLabel = 'secret';
    }
    labels.push(headerLabel);
    if (!reply) labels.push('no reply subject');
    cases.push({
      n,
      labels,
      body,
      headers,
      ...(rawBlock !== undefined ? { rawHeaderBlock: rawBlock } : {}),
      reply,
      secret,
      bodyExpect,
      echo,
      stream,
      oracle: oracleFor(body),
    });
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------------
// A raw NATS client socket: HPUB with header blocks that nats.js would not write.

class RawPublisher {
  readonly errors: string[] = [];
  #socket: Socket;
  #buffer = '';
  #pongs: Array<() => void> = [];
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer += chunk.toString('latin1');
      let end: number;
      while ((end = this.#buffer.indexOf('\r\n')) >= 0) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        if (line === 'PING') socket.write('PONG\r\n');
        else if (line === 'PONG') this.#pongs.shift()?.();
        else if (line.startsWith('-ERR')) this.errors.push(line);
      }
    });
    socket.on('close', () => {
      this.#closed = true;
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  static async connect(port: number): Promise<RawPublisher> {
    const socket = netConnect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.once('data', () => resolve());
    });
    const publisher = new RawPublisher(socket);
    socket.write(
      `CONNECT ${JSON.stringify({ verbose: false, pedantic: false, headers: true, no_responders: true, protocol: 1, lang: 'raw-fuzz', version: '0' })}\r\n`,
    );
    await publisher.ping();
    return publisher;
  }

  hpub(subject: string, reply: string | undefined, headerBlock: Uint8Array, body: Uint8Array): void {
    const total = headerBlock.length + body.length;
    const head = `HPUB ${subject}${reply === undefined ? '' : ` ${reply}`} ${headerBlock.length} ${total}\r\n`;
    this.#socket.write(Buffer.concat([Buffer.from(head), headerBlock, body, Buffer.from('\r\n')]));
  }

  ping(timeoutMs = 5_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no PONG from nats-server on the raw socket')), timeoutMs);
      this.#pongs.push(() => {
        clearTimeout(timer);
        resolve();
      });
      this.#socket.write('PING\r\n');
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------------
// Sending and collecting.

interface Terminal {
  mark: string | undefined;
  statusCode: number;
  text: string;
  body: any;
  headers: Record<string, string[]>;
}

interface Outcome {
  sentAt: number;
  latencyMs?: number;
  terminal?: Terminal;
  /** Messages after the terminal one (must stay 0). */
  extra: Array<{ mark: string | undefined; text: string }>;
  chunks: Array<{ seq: unknown; delta: unknown }>;
  heartbeats: number;
  timedOut: boolean;
  publishError?: string;
  resolve?: () => void;
  /** A chunk or heartbeat came: the stream is alive (the timeout is an idle timeout, as README tells clients). */
  touch?: () => void;
}

function headerRecord(headers: MsgHdrs | undefined): Record<string, string[]> {
  const record: Record<string, string[]> = {};
  if (headers === undefined) return record;
  for (const key of headers.keys()) record[key] = headers.values(key);
  return record;
}

type StoredEvent = UsageEvent & { subject: string; msgId: string | undefined };

async function readAllEvents(connection: NatsConnection, count: number): Promise<StoredEvent[]> {
  const js = jetstream(connection);
  const consumer = await js.consumers.get('LLM_USAGE');
  const events: StoredEvent[] = [];
  while (events.length < count) {
    const batch = await consumer.fetch({ max_messages: Math.min(500, count - events.length), expires: 3_000 });
    let got = 0;
    for await (const message of batch) {
      got++;
      events.push({
        ...(message.json() as UsageEvent),
        subject: message.subject,
        msgId: message.headers?.get('Nats-Msg-Id') || undefined,
      });
    }
    if (got === 0) break;
  }
  return events;
}

const describeCase = (c: FuzzCase) =>
  `#${c.n} [${c.labels.join(' | ')}] body=${shortText(new TextDecoder().decode(c.body.subarray(0, 300)), 160)}`;

// ---------------------------------------------------------------------------------------------------

describe(`fuzz: ${COUNT} malformed requests (seed ${SEED})`, () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let worker: InProcessWorker;
  let client: NatsConnection;
  let raw: RawPublisher;
  const connectionEvents: string[] = [];
  let cases: FuzzCase[] = [];
  let outcomes: Outcome[] = [];
  let events: StoredEvent[] = [];
  let streamCount = 0;
  let statsRequests = 0;
  let sendMs = 0;
  let finalReply: { ms: number; body: any } | undefined;
  let finalError: unknown;
  const FINAL_ID = 'fz-final';

  before(async () => {
    const started = Date.now();
    console.log(
      `fuzz seed ${SEED} (set FUZZ_SEED to repeat or change it), ${COUNT} requests, ${CONCURRENCY} in flight`,
    );
    cases = generateCases(SEED, COUNT);
    const generatedAt = Date.now();
    nats = await startNatsServer();
    openai = await startFakeOpenAI();
    worker = await startInProcessWorker({
      natsUrl: nats.url,
      env: { LLM_PROXY_SECRET: SECRET },
      config: testConfig({ openai: openai.baseUrl }, { worker: { max_request_bytes: MAX_REQUEST_BYTES } }),
    });
    void (async () => {
      for await (const status of worker.worker.connection.status()) {
        if (
          status.type === 'disconnect' ||
          status.type === 'reconnect' ||
          status.type === 'reconnecting' ||
          status.type === 'error' ||
          status.type === 'close'
        ) {
          connectionEvents.push(status.type);
        }
      }
    })().catch(() => undefined);
    client = await connect({ servers: nats.url });
    raw = await RawPublisher.connect(nats.port);

    const inboxPrefix = createInbox();
    outcomes = cases.map(() => ({ sentAt: 0, extra: [], chunks: [], heartbeats: 0, timedOut: false }));
    client.subscribe(`${inboxPrefix}.>`, {
      callback: (error, message: Msg) => {
        if (error !== null) return;
        const n = Number(message.subject.slice(inboxPrefix.length + 1));
        const outcome = outcomes[n];
        if (outcome === undefined) return;
        const mark = message.headers?.get('LLM-Stream') || undefined;
        const messageText = message.string();
        if (outcome.terminal !== undefined || outcome.timedOut) {
          outcome.extra.push({ mark, text: messageText.slice(0, 200) });
          return;
        }
        // Heartbeats and some chunks come as requests (the worker probing): never answer them.
        if (mark === 'heartbeat') {
          outcome.heartbeats++;
          outcome.touch?.();
          return;
        }
        if (mark === 'chunk') {
          outcome.touch?.();
          try {
            const chunk = JSON.parse(messageText) as { seq: unknown; delta: unknown };
            outcome.chunks.push({ seq: chunk.seq, delta: chunk.delta });
          } catch {
            outcome.chunks.push({ seq: 'unparseable', delta: messageText.slice(0, 100) });
          }
          return;
        }
        let body: any;
        try {
          body = JSON.parse(messageText);
        } catch {
          body = undefined;
        }
        outcome.terminal = {
          mark,
          statusCode: message.headers?.code ?? 0,
          text: messageText,
          body,
          headers: headerRecord(message.headers),
        };
        outcome.latencyMs = Date.now() - outcome.sentAt;
        outcome.resolve?.();
      },
    });
    await client.flush();

    const sendOne = async (c: FuzzCase): Promise<void> => {
      const outcome = outcomes[c.n]!;
      const replySubject = c.reply ? `${inboxPrefix}.${c.n}` : undefined;
      const done = c.reply
        ? new Promise<void>((resolve) => {
            let timer: NodeJS.Timeout | undefined;
            const arm = () => {
              clearTimeout(timer);
              timer = setTimeout(() => {
                outcome.timedOut = true;
                resolve();
              }, REPLY_TIMEOUT_MS);
            };
            arm();
            outcome.touch = arm;
            outcome.resolve = () => {
              clearTimeout(timer);
              resolve();
            };
          })
        : Promise.resolve();
      outcome.sentAt = Date.now();
      try {
        if (c.rawHeaderBlock !== undefined) {
          raw.hpub('llm.proxy.request', replySubject, c.rawHeaderBlock, c.body);
        } else {
          let headers: MsgHdrs | undefined;
          if (c.headers !== null) {
            headers = createHeaders();
            for (const [name, value] of c.headers) headers.append(name, value);
          }
          client.publish('llm.proxy.request', c.body, {
            ...(replySubject !== undefined ? { reply: replySubject } : {}),
            ...(headers !== undefined ? { headers } : {}),
          });
        }
      } catch (error) {
        outcome.publishError = String(error);
        outcome.resolve?.();
      }
      await done;
    };

    const sendStarted = Date.now();
    const startupMs = sendStarted - generatedAt;
    let nextIndex = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (nextIndex < cases.length) {
          const c = cases[nextIndex++]!;
          await sendOne(c);
        }
      }),
    );
    sendMs = Date.now() - sendStarted;
    await raw.ping();

    // The worker never stalled: a plain valid request right after the storm is answered at once.
    const finalHeaders = createHeaders();
    finalHeaders.set('X-Internal-Secret', SECRET);
    const finalStarted = Date.now();
    try {
      const reply = await client.request(
        'llm.proxy.request',
        JSON.stringify({
          model: 'gpt-test',
          messages: [{ role: 'user', content: 'hi' }],
          request_id: FINAL_ID,
          metadata: { agent_id: 'agent:fuzz' },
        }),
        { timeout: 10_000, headers: finalHeaders },
      );
      finalReply = { ms: Date.now() - finalStarted, body: reply.json() };
    } catch (error) {
      finalError = error;
    }

    // Late messages on any inbox (a second terminal message, a chunk after the end) show up here.
    await new Promise((resolve) => setTimeout(resolve, 500));

    // Every event: wait until the worker has none pending and the stream holds at least one per request.
    const expected = cases.length + 1;
    const manager = await jetstreamManager(client);
    const deadline = Date.now() + 30_000;
    for (;;) {
      streamCount = (await manager.streams.info('LLM_USAGE')).state.messages;
      if ((streamCount >= expected && worker.worker.stats().usage_events.pending === 0) || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // A doubled event would arrive late: give it a moment.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    streamCount = (await manager.streams.info('LLM_USAGE')).state.messages;
    statsRequests = worker.worker.stats().requests;
    const eventsWaitMs = Date.now() - sendStarted - sendMs;
    events = await readAllEvents(client, streamCount);
    const latencies = outcomes
      .filter((outcome) => outcome.latencyMs !== undefined)
      .map((outcome) => outcome.latencyMs!)
      .sort((a, b) => a - b);
    const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
    console.log(
      `fuzz: sent ${cases.length} requests in ${sendMs} ms (${cases.filter((c) => !c.reply).length} without a reply subject, ${cases.filter((c) => c.rawHeaderBlock !== undefined).length} raw HPUB, ` +
        `${cases.filter((c) => c.stream).length} stream: true, ${cases.filter((c) => c.echo).length} plain valid); reply latency p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms; ` +
        `final request ${finalReply?.ms ?? 'none'} ms; ${streamCount} events; generation ${generatedAt - started} ms, startup ${startupMs} ms, ` +
        `waiting for events ${eventsWaitMs} ms, total ${Date.now() - started} ms`,
    );
    const codes: Record<string, number> = {};
    for (const outcome of outcomes) {
      if (outcome.terminal === undefined) continue;
      const code: string = outcome.terminal.body?.error?.code ?? 'ok';
      codes[code] = (codes[code] ?? 0) + 1;
    }
    console.log(`fuzz: answers by code ${JSON.stringify(codes)}`);
    const slowest = cases
      .filter((c) => outcomes[c.n]!.latencyMs !== undefined)
      .sort((a, b) => outcomes[b.n]!.latencyMs! - outcomes[a.n]!.latencyMs!)
      .slice(0, 3);
    console.log(
      `fuzz: slowest: ${slowest.map((c) => `${outcomes[c.n]!.latencyMs} ms ${describeCase(c).slice(0, 160)}`).join(' ;; ')}`,
    );
  });

  after(async () => {
    raw?.close();
    await client?.close();
    // Short: should the header-block test fail again, a request may stay "in flight" forever (then stop waits this + 5 s).
    await worker?.stop({ drainTimeoutMs: 500 });
    await openai?.close();
    await nats?.dispose();
  });

  /** Code of a terminal message: the error's, or undefined for a reply. */
  const codeOf = (outcome: Outcome): string | undefined => outcome.terminal?.body?.error?.code;
  const isError = (outcome: Outcome) =>
    outcome.terminal?.body !== undefined &&
    typeof outcome.terminal.body === 'object' &&
    outcome.terminal.body !== null &&
    'error' in outcome.terminal.body;

  /** Whether the worker took the request as coming from someone with the secret. */
  const authenticated = (c: FuzzCase): boolean => {
    if (c.secret === 'right') return true;
    if (c.secret === 'wrong') return false;
    return codeOf(outcomes[c.n]!) !== 'unauthorized';
  };

  test('every request with a reply subject gets exactly one terminal message, within the timeout', () => {
    const problems: string[] = [];
    for (const c of cases) {
      const outcome = outcomes[c.n]!;
      if (outcome.publishError !== undefined)
        problems.push(`could not publish ${describeCase(c)}: ${outcome.publishError}`);
      if (!c.reply) continue;
      if (outcome.terminal === undefined) {
        problems.push(
          `SILENCE (nothing for ${REPLY_TIMEOUT_MS} ms and no terminal message; ${outcome.chunks.length} chunks, ${outcome.heartbeats} heartbeats before): ${describeCase(c)}`,
        );
        continue;
      }
      if (outcome.terminal.statusCode === 503 && outcome.terminal.text === '')
        problems.push(`no responders: ${describeCase(c)}`);
      if (outcome.extra.length > 0)
        problems.push(
          `${outcome.extra.length} message(s) after the terminal one (${JSON.stringify(outcome.extra.slice(0, 2))}): ${describeCase(c)}`,
        );
      if (
        outcome.terminal.body === undefined ||
        typeof outcome.terminal.body !== 'object' ||
        outcome.terminal.body === null
      ) {
        problems.push(
          `terminal message is not a JSON object (${shortText(outcome.terminal.text, 100)}): ${describeCase(c)}`,
        );
      }
      if (!c.stream && (outcome.chunks.length > 0 || outcome.heartbeats > 0))
        problems.push(`chunks on a request without stream: true: ${describeCase(c)}`);
      if (outcome.terminal.mark !== undefined && !['end', 'error'].includes(outcome.terminal.mark))
        problems.push(`odd LLM-Stream mark ${outcome.terminal.mark}: ${describeCase(c)}`);
    }
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.slice(0, 40).join('\n')}`);
  });

  test('every error is coded as DESIGN.md says; none is `internal`', () => {
    const problems: string[] = [];
    const internal: string[] = [];
    for (const c of cases) {
      const outcome = outcomes[c.n]!;
      if (outcome.terminal === undefined || !isError(outcome)) continue;
      const error = outcome.terminal.body.error;
      if (error === null || typeof error !== 'object') {
        problems.push(`error is not an object: ${describeCase(c)}`);
        continue;
      }
      if (!DESIGN_CODES.has(error.code))
        problems.push(`unknown code ${JSON.stringify(error.code)}: ${describeCase(c)}`);
      if (error.status !== DESIGN_STATUS[error.code])
        problems.push(`status ${error.status} for ${error.code}: ${describeCase(c)}`);
      if (typeof error.message !== 'string' || error.message === '') problems.push(`no message: ${describeCase(c)}`);
      if (outcome.terminal.headers['Nats-Service-Error-Code']?.[0] !== String(error.status))
        problems.push(
          `Nats-Service-Error-Code ${JSON.stringify(outcome.terminal.headers['Nats-Service-Error-Code'])} for ${error.code}: ${describeCase(c)}`,
        );
      if (c.stream && outcome.terminal.mark !== undefined && outcome.terminal.mark !== 'error')
        problems.push(`an error marked ${outcome.terminal.mark}: ${describeCase(c)}`);
      if (error.code === 'internal') internal.push(`${describeCase(c)} → ${shortText(error.message, 200)}`);
    }
    assert.deepEqual(
      internal,
      [],
      `BUG: ${internal.length} malformed inputs were answered \`internal\` (the client's fault, not a bug of ours):\n${internal.slice(0, 40).join('\n')}`,
    );
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.slice(0, 40).join('\n')}`);
  });

  test("each request gets what its input deserves (refused by the client's fault, or served)", () => {
    const problems: string[] = [];
    for (const c of cases) {
      const outcome = outcomes[c.n]!;
      if (!c.reply || outcome.terminal === undefined) continue;
      const code = codeOf(outcome);
      const served = !isError(outcome);
      const body = outcome.terminal.body;
      const fail = (why: string) =>
        problems.push(
          `${why} (got ${served ? 'a reply' : code}${served ? '' : `: ${shortText(String(body?.error?.message), 160)}`}): ${describeCase(c)}`,
        );
      if (c.oracle.tooLarge) {
        if (code !== 'payload_too_large') fail('over max_request_bytes: payload_too_large expected');
        continue;
      }
      if (c.secret === 'wrong') {
        if (served) fail('served without the secret');
        else if (code !== 'unauthorized' && code !== 'invalid_request')
          fail('no secret: unauthorized (or invalid_request for an unreadable body) expected');
        else if (c.bodyExpect === 'ok' && code !== 'unauthorized')
          fail('a valid body without the secret: unauthorized expected');
        continue;
      }
      if (c.secret === 'decided-by-reply' && code !== undefined && code !== 'unauthorized') {
        fail('a valid body with odd secret headers: served or unauthorized expected');
        continue;
      }
      if (c.secret === 'decided-by-reply' && code === 'unauthorized') continue;
      if (c.bodyExpect === 'error') {
        if (served) fail('a malformed body was served');
        else if (!CLIENT_CODES.has(code!)) fail('a malformed body: a client-fault code expected');
      } else if (c.bodyExpect === 'ok') {
        if (!served) fail('a valid body was refused');
      }
      if (served) {
        if (typeof body.content !== 'string' && body.content !== null) fail('a reply without content');
        if (c.stream && (outcome.terminal.mark !== 'end' || body.done !== true))
          fail('a stream did not end with LLM-Stream: end and done: true');
        if (c.echo) {
          if (body.content !== 'echo: hi') fail(`content ${JSON.stringify(body.content)} instead of "echo: hi"`);
          if (body.request_id !== `fz-${c.n}`) fail(`request_id ${JSON.stringify(body.request_id)}`);
          if (c.stream) {
            const seqs = outcome.chunks.map((chunk) => chunk.seq);
            if (!seqs.every((seq, index) => seq === index)) fail(`chunk seqs ${JSON.stringify(seqs)}`);
            if (outcome.chunks.map((chunk) => chunk.delta).join('') !== body.content)
              fail('chunks do not add up to the content');
          }
        }
      }
    }
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.slice(0, 40).join('\n')}`);
  });

  test("replies name the client's request_id when it was valid, never an invalid one", () => {
    const problems: string[] = [];
    for (const c of cases) {
      const outcome = outcomes[c.n]!;
      if (outcome.terminal === undefined || c.oracle.tooLarge || c.oracle.tooDeep) continue;
      const body = outcome.terminal.body;
      const replyId: unknown = isError(outcome) ? body.error.request_id : body?.request_id;
      if (typeof replyId !== 'string' || !REQUEST_ID_RULE.test(replyId)) {
        problems.push(
          `reply request_id ${shortText(JSON.stringify(replyId) ?? 'undefined', 60)} is not 1-128 visible ASCII: ${describeCase(c)}`,
        );
        continue;
      }
      if (c.oracle.requestId !== undefined && replyId !== c.oracle.requestId)
        problems.push(`reply request_id ${replyId}, the client's was ${c.oracle.requestId}: ${describeCase(c)}`);
    }
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.slice(0, 40).join('\n')}`);
  });

  test('LLM_USAGE holds exactly one event per request (no-reply ones included), each with its own event_id', () => {
    const expected = cases.length + 1;
    assert.equal(statsRequests, expected, `the worker counted ${statsRequests} requests; ${expected} were sent`);
    assert.equal(streamCount, expected, `LLM_USAGE holds ${streamCount} events; ${expected} requests were sent`);
    assert.equal(events.length, expected, `read ${events.length} events`);
    const eventIds = new Set(events.map((event) => event.event_id));
    assert.equal(eventIds.size, events.length, 'every event has its own event_id');
    assert.ok(
      events.every((event) => typeof event.event_id === 'string' && event.event_id.length > 0),
      'every event has an event_id',
    );
    assert.ok(
      events.every((event) => event.msgId === event.event_id),
      'each event is published with Nats-Msg-Id = event_id',
    );
    const usage = worker.worker.stats().usage_events;
    assert.equal(usage.pending, 0);
    assert.equal(usage.dropped, 0);
    assert.equal(usage.dead_lettered, 0);
  });

  test('events: subjects bounded, codes never internal, the same code as the reply, attributed as DESIGN.md says', () => {
    const problems: string[] = [];
    for (const event of events) {
      const token = event.subject.slice(USAGE_PREFIX.length);
      if (
        !event.subject.startsWith(USAGE_PREFIX) ||
        token.length === 0 ||
        token.length > MAX_TOKEN_LENGTH ||
        !/^[A-Za-z0-9_:%~-]+$/.test(token)
      ) {
        problems.push(`event subject ${shortText(event.subject, 200)} (${token.length} characters after the prefix)`);
      }
      if (event.error_code === 'internal')
        problems.push(`event with error_code internal: request_id ${event.request_id}`);
      if (event.error_code !== null && !DESIGN_CODES.has(event.error_code))
        problems.push(`event with error_code ${event.error_code}`);
      if ((event.error_code === null) !== (event.status === 'ok'))
        problems.push(`event status ${event.status} with error_code ${event.error_code}`);
    }
    const byRequestId = new Map<string, StoredEvent[]>();
    for (const event of events)
      byRequestId.set(event.request_id, [...(byRequestId.get(event.request_id) ?? []), event]);
    const clientIdUses = new Map<string, number>();
    for (const c of cases)
      if (c.oracle.requestId !== undefined)
        clientIdUses.set(c.oracle.requestId, (clientIdUses.get(c.oracle.requestId) ?? 0) + 1);

    let matched = 0;
    for (const c of cases) {
      const outcome = outcomes[c.n]!;
      const replyId: unknown =
        outcome.terminal === undefined
          ? undefined
          : isError(outcome)
            ? outcome.terminal.body.error.request_id
            : outcome.terminal.body?.request_id;
      let key: string | undefined;
      if (
        c.oracle.requestId !== undefined &&
        !c.oracle.tooLarge &&
        !c.oracle.tooDeep &&
        clientIdUses.get(c.oracle.requestId) === 1
      )
        key = c.oracle.requestId;
      else if (typeof replyId === 'string' && !clientIdUses.has(replyId)) key = replyId;
      if (key === undefined) continue;
      const found = byRequestId.get(key) ?? [];
      if (found.length !== 1) {
        problems.push(`${found.length} events with request_id ${key}: ${describeCase(c)}`);
        continue;
      }
      matched++;
      const event = found[0]!;
      if (c.reply && outcome.terminal !== undefined) {
        const code = codeOf(outcome) ?? null;
        if (event.error_code !== code)
          problems.push(`event error_code ${event.error_code}, reply ${code}: ${describeCase(c)}`);
      } else if (!c.reply && (event.error_code === null || event.error_code === 'internal')) {
        problems.push(`a request without a reply subject has event error_code ${event.error_code}: ${describeCase(c)}`);
      }
      if (!authenticated(c)) {
        if (event.subject !== `${USAGE_PREFIX}unauthenticated` || event.agent_id !== null)
          problems.push(
            `no secret, but the event is on ${event.subject} with agent_id ${event.agent_id}: ${describeCase(c)}`,
          );
        continue;
      }
      if (event.subject === `${USAGE_PREFIX}unauthenticated`) {
        problems.push(`with the secret, but the event is on llm.usage.unauthenticated: ${describeCase(c)}`);
        continue;
      }
      if (c.oracle.tooDeep) continue; // Checked on its own below.
      const agentId = c.oracle.tooLarge ? undefined : c.oracle.agentId;
      if (agentId === undefined) {
        if (event.subject !== `${USAGE_PREFIX}anonymous` || event.agent_id !== null)
          problems.push(
            `no valid agent id, but the event is on ${event.subject} with agent_id ${JSON.stringify(event.agent_id)}: ${describeCase(c)}`,
          );
      } else {
        if (event.agent_id !== agentId)
          problems.push(
            `event agent_id ${shortText(String(event.agent_id), 40)}, the request's was ${shortText(agentId, 40)}: ${describeCase(c)}`,
          );
        if (event.subject === `${USAGE_PREFIX}anonymous`)
          problems.push(`a valid agent id, but the event is on llm.usage.anonymous: ${describeCase(c)}`);
        if (
          TOKEN_SAFE.test(agentId) &&
          agentId !== 'anonymous' &&
          agentId !== 'unauthenticated' &&
          agentId.length <= MAX_TOKEN_LENGTH &&
          event.subject !== `${USAGE_PREFIX}${agentId}`
        ) {
          problems.push(`event on ${event.subject}, expected ${USAGE_PREFIX}${agentId}: ${describeCase(c)}`);
        }
      }
    }
    // Client ids used more than once (`__proto__`, `constructor`…): as many events as requests.
    for (const [requestId, uses] of clientIdUses) {
      const sent = cases.filter((c) => c.oracle.requestId === requestId && !c.oracle.tooLarge).length;
      if (uses > 1 && (byRequestId.get(requestId)?.length ?? 0) !== sent)
        problems.push(
          `${byRequestId.get(requestId)?.length ?? 0} events with request_id ${requestId}, ${sent} requests carried it`,
        );
    }
    // The subjects no event may land on unless it should: counted over every request.
    const unauthenticatedExpected = cases.filter((c) => !authenticated(c)).length;
    const unauthenticatedSeen = events.filter((event) => event.subject === `${USAGE_PREFIX}unauthenticated`).length;
    if (unauthenticatedSeen !== unauthenticatedExpected)
      problems.push(
        `${unauthenticatedSeen} events on llm.usage.unauthenticated, ${unauthenticatedExpected} requests without the secret`,
      );
    const anonymousAtLeast = cases.filter(
      (c) => authenticated(c) && (c.oracle.tooLarge || c.oracle.agentId === undefined),
    ).length;
    const anonymousDeep = cases.filter(
      (c) => authenticated(c) && !c.oracle.tooLarge && c.oracle.tooDeep && c.oracle.agentId !== undefined,
    ).length;
    const anonymousSeen = events.filter((event) => event.subject === `${USAGE_PREFIX}anonymous`).length;
    if (anonymousSeen < anonymousAtLeast || anonymousSeen > anonymousAtLeast + anonymousDeep) {
      problems.push(
        `${anonymousSeen} events on llm.usage.anonymous; ${anonymousAtLeast} requests with the secret had no valid agent id (+ up to ${anonymousDeep} too-deep bodies, see below)`,
      );
    }
    assert.ok(matched > cases.length * 0.8, `only ${matched} events matched to their requests`);
    assert.deepEqual(problems, [], `${problems.length} problems:\n${problems.slice(0, 40).join('\n')}`);
  });

  test('a body refused for nesting deeper than 64 levels keeps its valid request_id and agent_id in the reply and the event', () => {
    // DESIGN.md: request_id is the client's correlation id; the event of a request with a valid client request_id
    // carries it, and only a request without a valid agent id lands on llm.usage.anonymous. (Found by this test:
    // the worker used to refuse deep bodies before reading the ids, so their events went to llm.usage.anonymous
    // under a worker-made id.)
    const problems: string[] = [];
    const byRequestId = new Map<string, StoredEvent[]>();
    for (const event of events)
      byRequestId.set(event.request_id, [...(byRequestId.get(event.request_id) ?? []), event]);
    const clientIdUses = new Map<string, number>();
    for (const c of cases)
      if (c.oracle.requestId !== undefined)
        clientIdUses.set(c.oracle.requestId, (clientIdUses.get(c.oracle.requestId) ?? 0) + 1);
    for (const c of cases) {
      if (!c.oracle.tooDeep || c.oracle.tooLarge || c.oracle.requestId === undefined) continue;
      const outcome = outcomes[c.n]!;
      const replyId: unknown =
        outcome.terminal === undefined
          ? undefined
          : isError(outcome)
            ? outcome.terminal.body.error.request_id
            : outcome.terminal.body?.request_id;
      if (c.reply && replyId !== c.oracle.requestId)
        problems.push(`reply request_id ${String(replyId)} instead of ${c.oracle.requestId}: ${describeCase(c)}`);
      if (clientIdUses.get(c.oracle.requestId) !== 1) continue; // A shared id (`constructor`…): counted with the others.
      const found = byRequestId.get(c.oracle.requestId) ?? [];
      if (found.length !== 1)
        problems.push(`${found.length} events with request_id ${c.oracle.requestId}: ${describeCase(c)}`);
      else if (authenticated(c) && c.oracle.agentId !== undefined && found[0]!.agent_id !== c.oracle.agentId) {
        problems.push(
          `event on ${found[0]!.subject} with agent_id ${found[0]!.agent_id}, the request's was ${c.oracle.agentId}: ${describeCase(c)}`,
        );
      }
    }
    assert.deepEqual(
      problems,
      [],
      `${problems.length} too-deep requests lost their ids:\n${problems.slice(0, 20).join('\n')}`,
    );
  });

  test("the worker's connection was never closed or reconnected, and it logged no error", () => {
    assert.equal(worker.worker.connection.isClosed(), false);
    assert.deepEqual(connectionEvents, [], "status events of the worker's connection");
    const records = worker.logs.records();
    const connectionLines = records.filter((record) =>
      /disconnected from NATS|reconnected to NATS|NATS connection error|slow consumer/.test(String(record.msg)),
    );
    assert.deepEqual(connectionLines, []);
    const errorLines = records.filter((record) => Number(record.level) >= 50);
    assert.deepEqual(
      errorLines.map((record) => JSON.stringify(record).slice(0, 400)),
      [],
      'error-level log lines',
    );
    assert.equal(raw.closed, false, 'the raw client socket is still open');
    assert.deepEqual(raw.errors, [], 'the server answered no -ERR to the raw client');
  });

  test('the secret is in no log line, event, reply or reply header', () => {
    const replies = outcomes
      .map(
        (outcome) =>
          `${outcome.terminal?.text ?? ''}${JSON.stringify(outcome.terminal?.headers ?? {})}${outcome.extra.map((extra) => extra.text).join('')}`,
      )
      .join('\n');
    const logText = worker.logs.text();
    assert.ok(worker.logs.lines.length > 100, 'the worker logged the refusals');
    for (const [where, haystack] of [
      ['logs', logText],
      ['events', JSON.stringify(events)],
      ['replies', replies],
    ] as const) {
      assert.ok(!haystack.includes(SECRET), `the secret appears in the ${where}`);
      assert.ok(!haystack.includes(SECRET.slice(0, -1)), `most of the secret appears in the ${where}`);
      assert.ok(!haystack.includes(SECRET.toUpperCase()), `the upper-cased secret appears in the ${where}`);
    }
  });

  test('a valid request after the fuzz is answered promptly (the worker never stalled)', () => {
    assert.equal(finalError, undefined, `the final request failed: ${String(finalError)}`);
    assert.equal(finalReply?.body.content, 'echo: hi', JSON.stringify(finalReply?.body));
    assert.ok(finalReply!.ms < FINAL_REPLY_MS, `answered in ${finalReply!.ms} ms`);
    assert.equal(worker.worker.stats().in_flight, 0, 'requests still in flight after every one was answered');
  });

  test('malformed text / image_url content parts are refused as invalid_request', () => {
    // `{"type":"text"}` without text, `{"type":"text","text":5}`, `{"type":"image_url"}` without image_url, an
    // empty url, `detail: "ultra"`: not OpenAI content parts, yet they pass validation (request.ts: the catch-all
    // `otherPart` of the union takes any object with a `type` string) and go to the provider.
    const accepted: string[] = [];
    for (const c of cases) {
      if (c.bodyExpect !== 'gap' || !c.reply || c.secret !== 'right' || c.oracle.tooLarge) continue;
      const outcome = outcomes[c.n]!;
      if (outcome.terminal !== undefined && codeOf(outcome) !== 'invalid_request')
        accepted.push(`${isError(outcome) ? codeOf(outcome) : 'served'}: ${describeCase(c)}`);
    }
    assert.deepEqual(
      accepted,
      [],
      `BUG: ${accepted.length} requests with malformed content parts were not refused:\n${accepted.slice(0, 10).join('\n')}`,
    );
  });

  test('a request whose header block nats.js cannot decode still gets one reply (invalid_request) and one event', async () => {
    // Found by this test (now fixed: src/auth/secret.ts readHeaders). Reproduce by hand (any NATS client, no secret), e.g. over telnet:
    //   HPUB llm.proxy.request _INBOX.x 34 36\r\nNATS/1.0\r\nX Internal Secret: s\r\n\r\n{}\r\n
    // nats.js decodes headers lazily; `msg.headers` throws (InvalidArgumentError: 'header' ' ' is not a valid
    // character in a header name / values cannot contain \r or \n); before the fix, inside RequestPipeline.handle before
    // its try: no reply, no usage event, an unhandled rejection, and `in_flight` never came down again.
    const manager = await jetstreamManager(client);
    const eventsBefore = (await manager.streams.info('LLM_USAGE')).state.messages;
    const requestsBefore = worker.worker.stats().requests;
    const inbox = createInbox();
    const replies = new Map<number, string>();
    const subscription = client.subscribe(`${inbox}.>`, {
      callback: (_error, message) => {
        replies.set(Number(message.subject.slice(inbox.length + 1)), message.string());
      },
    });
    await client.flush();
    UNDECODABLE_HEADER_BLOCKS.forEach(([, block], index) => {
      const body = JSON.stringify({
        model: 'gpt-test',
        messages: [{ role: 'user', content: 'hi' }],
        request_id: `fz-undecodable-${index}`,
        metadata: { agent_id: 'agent:fuzz' },
      });
      raw.hpub('llm.proxy.request', `${inbox}.${index}`, block, encoder.encode(body));
    });
    await raw.ping();
    const deadline = Date.now() + 3_000;
    while (replies.size < UNDECODABLE_HEADER_BLOCKS.length && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50));
    await new Promise((resolve) => setTimeout(resolve, 300));
    subscription.unsubscribe();
    const eventsAfter = (await manager.streams.info('LLM_USAGE')).state.messages;
    const stats = worker.worker.stats();
    const problems: string[] = [];
    UNDECODABLE_HEADER_BLOCKS.forEach(([label], index) => {
      if (!replies.has(index)) problems.push(`no reply within 3 s: ${label}`);
    });
    assert.equal(stats.requests - requestsBefore, UNDECODABLE_HEADER_BLOCKS.length, 'each reached the worker');
    if (eventsAfter - eventsBefore !== UNDECODABLE_HEADER_BLOCKS.length)
      problems.push(`${eventsAfter - eventsBefore} usage events for ${UNDECODABLE_HEADER_BLOCKS.length} requests`);
    if (stats.in_flight !== 0)
      problems.push(`in_flight stays ${stats.in_flight} (at max_in_flight the worker stops taking requests for good)`);
    assert.deepEqual(problems, [], `BUG: header blocks nats.js cannot decode:\n${problems.join('\n')}`);
  });

  test('an undecodable header block neither kills a CLI worker (llm.proxy.request) nor makes it deaf (llm.proxy.cancel)', async () => {
    // The same root cause through the real CLI (`llm-proxy worker`, no unhandledRejection handler): before the fix, on
    // the request subject the rejection ended the process (exit code 1); on llm.proxy.cancel (every worker listens, no queue group)
    // the callback throws inside nats.js's read loop ("reader closed InvalidArgumentError…" on stdout) and the worker
    // reads nothing more from NATS until a ping timeout (server/client defaults: minutes), its requests black-holed.
    const [, block] = UNDECODABLE_HEADER_BLOCKS[0]!;
    const validBody = JSON.stringify({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'hi' }],
      metadata: { agent_id: 'agent:fuzz' },
    });
    const problems: string[] = [];
    const runOne = async (subject: 'llm.proxy.request' | 'llm.proxy.cancel') => {
      const server = await startNatsServer();
      const child = await startChildWorker({
        natsUrl: server.url,
        config: testConfig({ openai: openai.baseUrl }),
        env: { LLM_PROXY_SECRET: SECRET },
      });
      const connection = await connect({ servers: server.url });
      const hostile = await RawPublisher.connect(server.port);
      try {
        hostile.hpub(
          subject,
          '_INBOX.fuzz-undecodable',
          block,
          encoder.encode(subject === 'llm.proxy.cancel' ? '{"request_id":"x"}' : validBody),
        );
        await hostile.ping();
        await new Promise((resolve) => setTimeout(resolve, 1_000));
        if (child.process.exitCode !== null) {
          problems.push(
            `${subject}: the worker process exited with code ${child.process.exitCode}: ${
              child
                .stderr()
                .split('\n')
                .find((line) => /^\w*Error\b/.test(line)) ?? ''
            }`,
          );
        }
        const readerClosed = child.lines.find((line) => line.includes('reader closed'));
        if (readerClosed !== undefined) problems.push(`${subject}: the worker printed "${readerClosed.slice(0, 160)}"`);
        const headers = createHeaders();
        headers.set('X-Internal-Secret', SECRET);
        try {
          const reply = await connection.request('llm.proxy.request', validBody, { timeout: 3_000, headers });
          const body = reply.json() as { content?: unknown };
          if (body.content !== 'echo: hi')
            problems.push(`${subject}: a valid request afterwards got ${reply.string().slice(0, 160)}`);
        } catch (error) {
          problems.push(`${subject}: a valid request afterwards failed: ${String(error)}`);
        }
      } finally {
        hostile.close();
        await connection.close();
        await child.dispose();
        await server.dispose();
      }
    };
    await Promise.all([runOne('llm.proxy.request'), runOne('llm.proxy.cancel')]);
    assert.deepEqual(problems, [], `BUG: ${problems.length} problems:\n${problems.join('\n')}`);
  });
});
