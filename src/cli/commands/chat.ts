/**
 * `llm-proxy chat`: one request through the proxy, from a shell. The reply
 * (or the streamed tokens) goes to stdout and the usage line to stderr, so
 * that `llm-proxy chat "…" > answer.txt` keeps only the answer.
 */
import { text } from 'node:stream/consumers';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import {
  createClient,
  LlmProxyError,
  type ChatReply,
  type ChatRequest,
  type LlmProxyClient,
} from '../../client/index.js';
import { secretFromEnv } from '../../auth/index.js';
import { keyFromEnv, secretHeaders } from '../secret-headers.js';
import type { ModelsReply } from '../../contract/index.js';
import { connectionOptions, DEFAULT_NATS_URL, natsUrlFromEnv } from '../../bus/connect.js';

const help = `Usage: llm-proxy chat [options] "message"
       echo "message" | llm-proxy chat [options]

Sends one chat request to llm-proxy over NATS and prints the reply, then a
usage line (tokens, cost, latency, provider/model) on stderr.

Options:
  --model M          logical model (default: $LLM_PROXY_MODEL, else the first model the workers list)
  --stream           print tokens as they arrive
  --system S         a system message before the user message
  --max-tokens N     max_tokens of the request
  --temperature T    temperature of the request (0 to 2)
  --agent ID         metadata.agent_id (whose usage and limits this is)
  --json             print the reply as JSON (with --stream: one JSON line per chunk, then the reply)
  --timeout-ms N     give up after N ms (default 120000; sent to the worker as timeout_ms)

Environment: NATS_URL (default ${DEFAULT_NATS_URL}), LLM_PROXY_SECRET (sent as X-Internal-Secret),
LLM_PROXY_KEY (a per-agent key, sent as Authorization: Bearer), LLM_PROXY_MODEL; NATS credentials, TLS and inbox prefix: NATS_USER/NATS_PASSWORD, NATS_TOKEN,
NATS_NKEY_SEED, NATS_CREDS, NATS_CA/NATS_CERT/NATS_KEY, NATS_INBOX_PREFIX.
Errors print "error <code> (<status>): <message>" and exit with code 1 (130 on Ctrl-C).

Example:
  llm-proxy chat --model gpt-4.1-mini --stream --agent agent:sofia "Write a haiku about NATS"
`;

interface ChatArguments {
  model: string | undefined;
  stream: boolean;
  system: string | undefined;
  maxTokens: number | undefined;
  temperature: number | undefined;
  agent: string | undefined;
  json: boolean;
  timeoutMs: number | undefined;
  message: string | undefined;
}

function parseChatArguments(argv: string[]): ChatArguments {
  const parsed = parseCommandLine({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      model: { type: 'string' },
      stream: { type: 'boolean', default: false },
      system: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      agent: { type: 'string' },
      json: { type: 'boolean', default: false },
      'timeout-ms': { type: 'string' },
    },
  });
  const { values, positionals } = parsed;
  return {
    model: values.model ?? (process.env.LLM_PROXY_MODEL || undefined),
    stream: values.stream === true,
    system: values.system,
    maxTokens: parseNumberFlag('--max-tokens', values['max-tokens'], isPositiveInteger, 'a positive integer'),
    temperature: parseNumberFlag('--temperature', values.temperature, (n) => n >= 0 && n <= 2, 'a number from 0 to 2'),
    agent: values.agent,
    json: values.json === true,
    timeoutMs: parseNumberFlag('--timeout-ms', values['timeout-ms'], isPositiveInteger, 'a positive integer'),
    message: positionals.length > 0 ? positionals.join(' ') : undefined,
  };
}

async function readMessage(given: string | undefined): Promise<string> {
  if (given !== undefined) return given;
  if (process.stdin.isTTY) throw new UsageError('give the message as an argument or on stdin (see --help)');
  const input = (await text(process.stdin)).trim();
  if (input === '') throw new UsageError('the message read from stdin is empty');
  return input;
}

/** Without --model: the first model a worker lists on `llm.proxy.models`. */
async function firstListedModel(client: LlmProxyClient): Promise<string> {
  let reply: ModelsReply;
  try {
    const message = await client.connection.request(client.subjects.models, '{}', {
      timeout: 5_000,
      headers: secretHeaders(),
    });
    reply = message.json<ModelsReply>();
  } catch {
    throw new UsageError(`--model is required: no worker answered on ${client.subjects.models}`);
  }
  const name = Array.isArray(reply.models) ? reply.models[0]?.name : undefined;
  if (name === undefined) throw new UsageError('--model is required: the workers list no models');
  return name;
}

function formatUsage(reply: ChatReply): string {
  const usage = reply.usage;
  const parts: string[] = [];
  if (usage !== undefined) {
    const estimated = reply.tokens_estimated === true ? ' (estimated)' : '';
    parts.push(
      `tokens ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens}${estimated}`,
    );
  }
  if (typeof reply.cost_usd === 'number') parts.push(`cost $${reply.cost_usd.toFixed(6)}`);
  if (typeof reply.latency_ms === 'number') parts.push(`latency ${Math.round(reply.latency_ms)} ms`);
  if (typeof reply.ttft_ms === 'number') parts.push(`ttft ${Math.round(reply.ttft_ms)} ms`);
  parts.push(`${reply.provider}/${reply.model_resolved}`);
  if (reply.cached === true) parts.push('cached');
  return parts.join(' · ');
}

function buildRequest(model: string, message: string, options: ChatArguments): ChatRequest {
  const messages: ChatRequest['messages'] = [];
  if (options.system !== undefined) messages.push({ role: 'system', content: options.system });
  messages.push({ role: 'user', content: message });
  const request: ChatRequest = { model, messages };
  if (options.maxTokens !== undefined) request.max_tokens = options.maxTokens;
  if (options.temperature !== undefined) request.temperature = options.temperature;
  if (options.agent !== undefined) request.metadata = { agent_id: options.agent };
  return request;
}

async function printStream(
  client: LlmProxyClient,
  request: ChatRequest,
  json: boolean,
  signal: AbortSignal,
): Promise<ChatReply> {
  const stream = client.stream(request, { signal });
  let endsWithNewline = true;
  try {
    for await (const chunk of stream) {
      if (json) {
        process.stdout.write(`${JSON.stringify(chunk)}\n`);
        continue;
      }
      // Reasoning goes to stderr: visible while it thinks, kept out of the answer.
      if (chunk.reasoning_delta !== undefined) process.stderr.write(chunk.reasoning_delta);
      if (chunk.delta !== '') {
        process.stdout.write(chunk.delta);
        endsWithNewline = chunk.delta.endsWith('\n');
      }
    }
  } catch (error) {
    // The error line must not be glued to a half-printed answer.
    if (!endsWithNewline) process.stdout.write('\n');
    throw error;
  }
  const reply = await stream.final;
  if (json) process.stdout.write(`${JSON.stringify(reply)}\n`);
  else {
    if (reply.tool_calls !== undefined)
      process.stdout.write((endsWithNewline ? '' : '\n') + JSON.stringify(reply.tool_calls, null, 2));
    process.stdout.write('\n');
  }
  return reply;
}

function printReply(reply: ChatReply, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(reply)}\n`);
    return;
  }
  if (reply.reasoning_content !== undefined) process.stderr.write(`${reply.reasoning_content}\n`);
  if (reply.content !== null && reply.content !== '')
    process.stdout.write(reply.content + (reply.content.endsWith('\n') ? '' : '\n'));
  if (reply.tool_calls !== undefined) process.stdout.write(`${JSON.stringify(reply.tool_calls, null, 2)}\n`);
}

async function run(argv: string[]): Promise<number> {
  const options = parseChatArguments(argv);
  const message = await readMessage(options.message);
  const servers = natsUrlFromEnv();
  const secret = secretFromEnv(process.env);
  const apiKey = keyFromEnv(process.env);

  let client: LlmProxyClient;
  try {
    // Credentials, TLS and inbox prefix from the usual NATS_* variables (bus/connect.ts); no waiting
    // for a server that is not there, and nats.js's default reconnect budget, as before.
    const { servers: serverList, name: _name, ...connectOptions } = connectionOptions({ servers });
    client = await createClient({
      servers: serverList ?? servers,
      name: 'llm-proxy-chat',
      connectOptions: { ...connectOptions, waitOnFirstConnect: false, maxReconnectAttempts: 10 },
      ...(secret !== undefined ? { secret } : {}),
      ...(apiKey !== undefined ? { apiKey } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
  } catch (error) {
    process.stderr.write(
      `error cannot connect to NATS at ${servers}: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  }

  const controller = new AbortController();
  let interrupted = false;
  const onInterrupt = () => {
    interrupted = true;
    controller.abort();
  };
  process.once('SIGINT', onInterrupt);
  try {
    const model = options.model ?? (await firstListedModel(client));
    const request = buildRequest(model, message, options);
    const reply = options.stream
      ? await printStream(client, request, options.json, controller.signal)
      : await client.chat(request, { signal: controller.signal });
    if (!options.stream) printReply(reply, options.json);
    if (!options.json) process.stderr.write(`${formatUsage(reply)}\n`);
    return 0;
  } catch (error) {
    if (!(error instanceof LlmProxyError)) throw error;
    if (options.json) process.stdout.write(`${JSON.stringify({ error: error.toJSON() })}\n`);
    process.stderr.write(`error ${error.code} (${error.status}): ${error.message}\n`);
    return interrupted ? 130 : 1;
  } finally {
    process.removeListener('SIGINT', onInterrupt);
    await client.close();
  }
}

export const command: Command = {
  name: 'chat',
  summary: 'send one chat request (optionally streamed) and print the reply and its usage',
  help,
  run,
};
