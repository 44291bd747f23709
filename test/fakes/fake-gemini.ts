/**
 * A fake Gemini API (Generative Language API): a real HTTP server on 127.0.0.1 speaking Google's
 * wire format, with scripted faults. Self-contained (fake-server.ts routes one fixed chat path and
 * checks a Bearer key; Gemini puts the model and method in the path and takes `x-goog-api-key`).
 *
 * ```ts
 * const fake = await startFakeGemini({ requireApiKey: 'AIza-test' });
 * // config: providers: { gemini: { type: 'gemini', base_url: fake.baseUrl, api_key_env: 'GEMINI_TEST_KEY' } }
 * fake.enqueue(geminiBehaviours.rateLimited('30s'), { kind: 'ok', text: 'hi' });
 * fake.requests[0].body.contents; fake.requests[0].apiKey; fake.requests[0].stream;
 * await fake.close();
 * ```
 *
 * Routes: `POST /v1beta/models/{model}:generateContent` (one GenerateContentResponse) and
 * `:streamGenerateContent?alt=sse` (`data: <GenerateContentResponse>\r\n\r\n` events, no end marker;
 * without `alt=sse`, one JSON array of them). Thought parts come first, then text, then function
 * calls; every event carries usageMetadata (the prompt count, then the totals on the last), the last
 * one the finish reason. `generationConfig.candidateCount` k > 1: k candidates (the i-th's text
 * with ` #i` appended), interleaved across the events, each with its `index`. Errors use Google's body `{"error":{"code","message","status","details"}}`,
 * pretty-printed as Google does.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface GeminiFakeCall {
  name: string;
  args: Record<string, unknown>;
  id?: string;
}

export interface GeminiFakeUsage {
  promptTokenCount: number;
  candidatesTokenCount?: number;
  thoughtsTokenCount?: number;
  cachedContentTokenCount?: number;
}

export interface GeminiReply {
  /** Default `echo: <text of the last user content>`; `null` for none. */
  text?: string | null;
  /** Streaming: the text in these pieces (default one per word). */
  chunks?: string[];
  /** Thought summary text (`thought: true` parts), one event per word when streaming. */
  thoughts?: string;
  functionCalls?: GeminiFakeCall[];
  /** Streaming: one event per function call instead of all in one event. */
  functionCallsApart?: boolean;
  /** Default `STOP`. */
  finishReason?: string;
  finishMessage?: string;
  safetyRatings?: object[];
  /** Default estimated (about four characters a token); `null` for no usageMetadata. */
  usage?: GeminiFakeUsage | null;
  /** Default the model in the path. */
  modelVersion?: string;
  /** Streaming: every event written in slices of a few bytes (inside UTF-8 characters too), setImmediate between. */
  splitWrites?: boolean;
}

export type GeminiBehaviour =
  | ({ kind: 'ok' } & GeminiReply)
  /** `promptFeedback.blockReason`, no candidates. */
  | { kind: 'prompt-blocked'; blockReason?: string; safetyRatings?: object[] }
  /** An HTTP error in Google's shape; `status` defaults from the code (429 RESOURCE_EXHAUSTED…). */
  | {
      kind: 'status';
      code: number;
      status?: string;
      message?: string;
      details?: object[];
      headers?: Record<string, string>;
    }
  /** `afterChunks` events, then an error object as an SSE event (or, `bare`, as plain JSON), then the end. */
  | ({ kind: 'stream-error'; afterChunks: number; code?: number; message?: string; bare?: boolean } & GeminiReply)
  /** `afterChunks` events without a finish reason, then a clean end (a JSON request gets half its body). */
  | ({ kind: 'stream-cut'; afterChunks: number } & GeminiReply);

const STATUS_NAMES: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  429: 'RESOURCE_EXHAUSTED',
  500: 'INTERNAL',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

export const geminiBehaviours = {
  /** 429 with a RetryInfo detail (Gemini sends no Retry-After header). */
  rateLimited(retryDelay = '30s'): GeminiBehaviour {
    return {
      kind: 'status',
      code: 429,
      message: 'You exceeded your current quota, please check your plan and billing details.',
      details: [
        {
          '@type': 'type.googleapis.com/google.rpc.QuotaFailure',
          violations: [{ quotaId: 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier' }],
        },
        { '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay },
      ],
    };
  },
  serverError(): GeminiBehaviour {
    return { kind: 'status', code: 500, message: 'An internal error has occurred. Please retry or report.' };
  },
  unavailable(): GeminiBehaviour {
    return { kind: 'status', code: 503, message: 'The model is overloaded. Please try again later.' };
  },
  badRequest(message = 'Invalid JSON payload received.'): GeminiBehaviour {
    return { kind: 'status', code: 400, message };
  },
  safetyBlocked(category = 'HARM_CATEGORY_DANGEROUS_CONTENT'): GeminiBehaviour {
    const ratings = ['HARM_CATEGORY_HATE_SPEECH', 'HARM_CATEGORY_HARASSMENT', category].map((name) =>
      name === category
        ? { category: name, probability: 'HIGH', blocked: true }
        : { category: name, probability: 'NEGLIGIBLE' },
    );
    return { kind: 'ok', text: null, finishReason: 'SAFETY', safetyRatings: ratings };
  },
  promptBlocked(blockReason = 'SAFETY'): GeminiBehaviour {
    return {
      kind: 'prompt-blocked',
      blockReason,
      safetyRatings: [{ category: 'HARM_CATEGORY_SEXUALLY_EXPLICIT', probability: 'HIGH', blocked: true }],
    };
  },
} as const;

export interface GeminiRecordedRequest {
  method: string;
  /** Path and query as received, e.g. `/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`. */
  path: string;
  model: string | undefined;
  stream: boolean;
  headers: IncomingHttpHeaders;
  /** The `x-goog-api-key` header as received. */
  apiKey: string | undefined;
  body: any;
  behaviour: GeminiBehaviour['kind'] | undefined;
}

export interface FakeGeminiOptions {
  /** When set, a request without this `x-goog-api-key` is refused as Google does (403 without a key, 400 with a wrong one). */
  requireApiKey?: string;
  defaultBehaviour?: GeminiBehaviour;
}

export interface FakeGemini {
  /** `http://127.0.0.1:<port>/v1beta`: what goes in config `base_url`. */
  readonly baseUrl: string;
  readonly requests: GeminiRecordedRequest[];
  /** The generateContent / streamGenerateContent requests. */
  readonly chatRequests: GeminiRecordedRequest[];
  enqueue(...behaviours: GeminiBehaviour[]): void;
  setDefault(behaviour: GeminiBehaviour): void;
  close(): Promise<void>;
}

function googleError(code: number, message: string, status?: string, details?: object[]): string {
  const error = { code, message, status: status ?? STATUS_NAMES[code] ?? 'UNKNOWN', ...(details ? { details } : {}) };
  return JSON.stringify({ error }, null, 2);
}

function lastUserText(body: any): string {
  const contents: any[] = Array.isArray(body?.contents) ? body.contents : [];
  const user = contents.filter((content) => content?.role === 'user').at(-1);
  return (user?.parts ?? []).map((part: any) => (typeof part?.text === 'string' ? part.text : '')).join('');
}

const tokens = (text: string): number => Math.ceil(text.length / 4);
const words = (text: string): string[] => text.match(/\S+\s*|\s+/g) ?? [];

/**
 * The events of a reply: event j carries the j-th part group of every candidate that has one, with
 * its `index` (candidate i ≥ 1 says the text with ` #i` appended); the last event has the totals.
 */
function buildFrames(reply: GeminiReply, body: any, model: string): object[] {
  const text = reply.text === undefined ? `echo: ${lastUserText(body)}` : (reply.text ?? '');
  const asked = body?.generationConfig?.candidateCount;
  const k = typeof asked === 'number' && asked > 1 ? Math.floor(asked) : 1;
  const suffixes = Array.from({ length: k }, (_, i) => (i === 0 || text === '' ? '' : ` #${i}`));
  const calls = reply.functionCalls ?? [];
  const prompt = reply.usage?.promptTokenCount ?? tokens(JSON.stringify(body?.contents ?? ''));
  const output =
    reply.usage?.candidatesTokenCount ?? tokens(suffixes.map((end) => text + end + JSON.stringify(calls)).join(''));
  const groups = suffixes.map((suffix): object[][] => [
    ...words(reply.thoughts ?? '').map((piece) => [{ text: piece, thought: true }]),
    ...[...(reply.chunks ?? words(text)), ...(suffix === '' ? [] : [suffix])].map((piece) => [{ text: piece }]),
    ...(reply.functionCallsApart ? calls.map((call) => [call]) : calls.length > 0 ? [calls] : []).map((group) =>
      group.map((call) => ({ functionCall: call.id ? call : { name: call.name, args: call.args } })),
    ),
  ]);
  const count = Math.max(1, ...groups.map((own) => own.length));
  const candidate = (own: object[][], index: number, at: number): object => {
    const parts = own[at];
    const built: Record<string, unknown> = parts ? { content: { parts, role: 'model' }, index } : { index };
    if (at >= own.length - 1) {
      built.finishReason = reply.finishReason ?? 'STOP';
      if (reply.finishMessage !== undefined) built.finishMessage = reply.finishMessage;
      if (reply.safetyRatings !== undefined) built.safetyRatings = reply.safetyRatings;
    }
    return built;
  };
  const sum = prompt + output + (reply.usage?.thoughtsTokenCount ?? 0);
  const totals = { ...reply.usage, promptTokenCount: prompt, candidatesTokenCount: output, totalTokenCount: sum };
  return Array.from({ length: count }, (_, at) => {
    const last = at === count - 1;
    const usageMetadata = last ? totals : { promptTokenCount: prompt, totalTokenCount: prompt };
    return {
      // A candidate without parts at all comes once, in the last event, with its finish reason.
      candidates: groups.flatMap((own, index) =>
        at < own.length || (own.length === 0 && last) ? [candidate(own, index, at)] : [],
      ),
      ...(reply.usage === null ? {} : { usageMetadata }),
      modelVersion: reply.modelVersion ?? model,
      responseId: 'fake-gemini-response',
    };
  });
}

/** One JSON answer: every part of every event gathered by candidate, each candidate as its last event left it. */
function wholeAnswer(frames: object[]): object {
  const last = frames.at(-1) as any;
  if (last.candidates === undefined) return last;
  const gathered = new Map<number, { candidate: any; parts: object[] }>();
  for (const candidate of frames.flatMap((frame: any) => frame.candidates)) {
    const parts = [...(gathered.get(candidate.index)?.parts ?? []), ...(candidate.content?.parts ?? [])];
    gathered.set(candidate.index, { candidate, parts });
  }
  const candidates = [...gathered.values()].map(({ candidate, parts }) => ({
    ...candidate,
    ...(parts.length > 0 ? { content: { parts, role: 'model' } } : {}),
  }));
  return { ...last, candidates };
}

const SLICES = [1, 3, 2, 7, 5, 11, 4, 1, 2];

async function write(response: ServerResponse, text: string, split: boolean): Promise<void> {
  const bytes = Buffer.from(text, 'utf8');
  if (!split) {
    response.write(bytes);
    return;
  }
  for (let offset = 0, index = 0; offset < bytes.length && !response.destroyed; index++) {
    const size = SLICES[index % SLICES.length]!;
    response.write(bytes.subarray(offset, offset + size));
    offset += size;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** What Google answers a request without a key (403) and one with a key it does not know (400). */
const NO_KEY =
  "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";
const KEY_INVALID = {
  '@type': 'type.googleapis.com/google.rpc.ErrorInfo',
  reason: 'API_KEY_INVALID',
  domain: 'googleapis.com',
  metadata: { service: 'generativelanguage.googleapis.com' },
};

function sendError(
  response: ServerResponse,
  code: number,
  message: string,
  extra: Partial<StatusBehaviour> = {},
): void {
  response.writeHead(code, { 'content-type': 'application/json; charset=UTF-8', ...(extra.headers ?? {}) });
  response.end(googleError(code, message, extra.status, extra.details));
}

type StatusBehaviour = Extract<GeminiBehaviour, { kind: 'status' }>;

/** Answers a generate request that passed the key check. */
async function reply(
  response: ServerResponse,
  record: GeminiRecordedRequest,
  sse: boolean,
  behaviour: GeminiBehaviour,
) {
  if (behaviour.kind === 'status')
    return sendError(response, behaviour.code, behaviour.message ?? `fake error ${behaviour.code}`, behaviour);
  const frames =
    behaviour.kind === 'prompt-blocked'
      ? [
          {
            promptFeedback: { blockReason: behaviour.blockReason ?? 'SAFETY', safetyRatings: behaviour.safetyRatings },
            usageMetadata: { promptTokenCount: 8, totalTokenCount: 8 },
            modelVersion: record.model,
          },
        ]
      : buildFrames(behaviour, record.body, record.model!);
  const cutAt =
    behaviour.kind === 'stream-error' || behaviour.kind === 'stream-cut' ? behaviour.afterChunks : undefined;
  const failure = behaviour.kind === 'stream-error' ? behaviour : undefined;
  const error = googleError(failure?.code ?? 500, failure?.message ?? 'Internal error encountered.');
  if (!sse) {
    if (failure !== undefined)
      return sendError(response, failure.code ?? 500, failure.message ?? 'Internal error encountered.');
    const answer = JSON.stringify(record.stream ? frames : wholeAnswer(frames));
    response.writeHead(200, { 'content-type': 'application/json; charset=UTF-8' });
    return response.end(cutAt === undefined ? answer : answer.slice(0, answer.length / 2));
  }
  response.writeHead(200, { 'content-type': 'text/event-stream', 'content-disposition': 'attachment' });
  const split = 'splitWrites' in behaviour && behaviour.splitWrites === true;
  const sent =
    cutAt === undefined
      ? frames
      : frames.slice(0, cutAt).map((frame: any) => ({
          ...frame,
          candidates: frame.candidates?.map(({ finishReason: _cut, ...rest }: any) => rest),
        }));
  for (const frame of sent) await write(response, `data: ${JSON.stringify(frame)}\r\n\r\n`, split);
  if (failure !== undefined)
    await write(response, failure.bare ? error : `data: ${JSON.stringify(JSON.parse(error))}\r\n\r\n`, split);
  response.end();
}

export async function startFakeGemini(options: FakeGeminiOptions = {}): Promise<FakeGemini> {
  const requests: GeminiRecordedRequest[] = [];
  const queue: GeminiBehaviour[] = [];
  let defaultBehaviour: GeminiBehaviour = options.defaultBehaviour ?? { kind: 'ok' };
  const sockets = new Set<Socket>();

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const pieces: Buffer[] = [];
    for await (const piece of request) pieces.push(piece as Buffer);
    const path = request.url ?? '/';
    const route = /^\/v1beta\/models\/([^/:?]+):(generateContent|streamGenerateContent)(?:\?(.*))?$/.exec(path);
    const record: GeminiRecordedRequest = {
      method: request.method ?? 'GET',
      path,
      model: route === null ? undefined : decodeURIComponent(route[1]!),
      stream: route?.[2] === 'streamGenerateContent',
      headers: request.headers,
      apiKey: request.headers['x-goog-api-key'] as string | undefined,
      body: undefined,
      behaviour: undefined,
    };
    try {
      record.body = JSON.parse(Buffer.concat(pieces).toString('utf8'));
    } catch {
      // Recorded as undefined.
    }
    requests.push(record);
    if (route === null || request.method !== 'POST')
      return sendError(response, 404, `no route for ${request.method} ${path}`);
    if (options.requireApiKey !== undefined && record.apiKey !== options.requireApiKey) {
      if (record.apiKey === undefined) return sendError(response, 403, NO_KEY);
      return sendError(response, 400, 'API key not valid. Please pass a valid API key.', { details: [KEY_INVALID] });
    }
    const behaviour = queue.shift() ?? defaultBehaviour;
    record.behaviour = behaviour.kind;
    await reply(response, record, record.stream && /(^|&)alt=sse(&|$)/.test(route[3] ?? ''), behaviour);
  }

  const server = createServer((request, response) => {
    handle(request, response).catch(() => response.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    baseUrl: `http://127.0.0.1:${port}/v1beta`,
    requests,
    get chatRequests() {
      return requests.filter((record) => record.model !== undefined);
    },
    enqueue: (...behaviours) => void queue.push(...behaviours),
    setDefault: (behaviour) => {
      defaultBehaviour = behaviour;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
