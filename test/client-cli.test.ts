/**
 * `llm-proxy chat` as a user runs it: a child process with NATS_URL and
 * LLM_PROXY_SECRET in its environment, against a real nats-server and a
 * protocol responder playing the worker.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  connect,
  headers as natsHeaders,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { HEADERS, STREAM_MARKS, subjectsFor, type ChatReply, type ChatRequest } from '../src/contract/index.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const SECRET = 'cli-test-secret';
const subjects = subjectsFor();

let server: NatsServerHandle;
let worker: NatsConnection;

before(async () => {
  server = await startNatsServer({ jetstream: false });
  worker = await connect({ servers: server.url });
});

after(async () => {
  await worker.close();
  await server.dispose();
});

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], options: { stdin?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'chat', ...args], {
      env: { ...process.env, NATS_URL: server.url, LLM_PROXY_SECRET: SECRET, LLM_PROXY_MODEL: '', ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.stdin ?? '');
  });
}

type Body = ChatRequest & { request_id: string };

function reply(body: Body, content: string, extra: Partial<ChatReply> = {}): ChatReply {
  return {
    content,
    usage: { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 },
    provider: 'openai',
    model_resolved: 'gpt-4-1106-preview',
    latency_ms: 321.4,
    model: body.model,
    request_id: body.request_id,
    finish_reason: 'stop',
    cost_usd: 0.00033,
    cached: false,
    ...extra,
  };
}

/** Plays the worker on `llm.proxy.request` for one test. */
async function respond(
  handler: (body: Body, message: Msg) => void,
): Promise<{ seen: Array<{ body: Body; secret: string }>; subscription: Subscription }> {
  const seen: Array<{ body: Body; secret: string }> = [];
  const subscription = worker.subscribe(subjects.request, {
    callback: (_error, message) => {
      const body = message.json<Body>();
      seen.push({ body, secret: message.headers?.get(HEADERS.secret) ?? '' });
      handler(body, message);
    },
  });
  await worker.flush();
  return { seen, subscription };
}

function publishMarked(message: Msg, mark: string, body: unknown): void {
  const headers = natsHeaders();
  headers.set(HEADERS.stream, mark);
  worker.publish(message.reply ?? '', JSON.stringify(body), { headers });
}

describe('llm-proxy chat', () => {
  test('prints the reply on stdout and the usage line on stderr; flags become request fields', async () => {
    const responder = await respond((body, message) => {
      message.respond(JSON.stringify(reply(body, 'Hello from the fake worker')));
    });
    try {
      const result = await runCli([
        '--model',
        'gpt-4.1-mini',
        '--system',
        'be brief',
        '--max-tokens',
        '50',
        '--temperature',
        '0.3',
        '--agent',
        'agent:sofia',
        '--timeout-ms',
        '8000',
        'Hi',
        'there',
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout, 'Hello from the fake worker\n');
      assert.match(
        result.stderr,
        /tokens 12 prompt \+ 7 completion = 19 · cost \$0\.000330 · latency 321 ms · openai\/gpt-4-1106-preview/,
      );
      const [seen] = responder.seen;
      assert.ok(seen !== undefined);
      assert.equal(seen.secret, SECRET);
      assert.equal(seen.body.model, 'gpt-4.1-mini');
      assert.deepEqual(seen.body.messages, [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'Hi there' },
      ]);
      assert.equal(seen.body.max_tokens, 50);
      assert.equal(seen.body.temperature, 0.3);
      assert.equal(seen.body.metadata?.agent_id, 'agent:sofia');
      assert.equal(seen.body.timeout_ms, 7_200);
      assert.ok(!result.stderr.includes(SECRET) && !result.stdout.includes(SECRET));
    } finally {
      responder.subscription.unsubscribe();
    }
  });

  test('--stream prints the tokens as they arrive, then the usage line; the message can come on stdin', async () => {
    const responder = await respond((body, message) => {
      const pieces = ['Streamed ', 'tokens ', 'here.'];
      for (const [seq, delta] of pieces.entries()) publishMarked(message, STREAM_MARKS.chunk, { seq, delta });
      publishMarked(message, STREAM_MARKS.end, {
        ...reply(body, pieces.join(''), { tokens_estimated: true }),
        done: true,
        ttft_ms: 42,
      });
    });
    try {
      const result = await runCli(['--stream', '--model', 'm'], { stdin: 'from stdin\n' });
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout, 'Streamed tokens here.\n');
      assert.match(result.stderr, /= 19 \(estimated\) · .* · ttft 42 ms · openai\/gpt-4-1106-preview/);
      assert.equal(responder.seen[0]?.body.stream, true);
      assert.deepEqual(responder.seen[0]?.body.messages, [{ role: 'user', content: 'from stdin' }]);
    } finally {
      responder.subscription.unsubscribe();
    }
  });

  test('an error prints "error <code> (<status>): <message>" and exits 1; --json prints the error body too', async () => {
    const responder = await respond((body, message) => {
      const headers = natsHeaders();
      headers.set(HEADERS.serviceError, 'model "nope" is not configured');
      headers.set(HEADERS.serviceErrorCode, '404');
      const error = {
        code: 'model_not_found',
        status: 404,
        message: 'model "nope" is not configured',
        retryable: false,
        request_id: body.request_id,
      };
      message.respond(JSON.stringify({ error }), { headers });
    });
    try {
      const result = await runCli(['--model', 'nope', '--json', 'hi']);
      assert.equal(result.code, 1);
      assert.equal(result.stderr, 'error model_not_found (404): model "nope" is not configured\n');
      assert.equal(JSON.parse(result.stdout).error.code, 'model_not_found');
    } finally {
      responder.subscription.unsubscribe();
    }
    const nobody = await runCli(['--model', 'm', '--stream', 'hi']);
    assert.equal(nobody.code, 1);
    assert.match(
      nobody.stderr,
      /^error no_provider_available \(503\): no worker is listening on llm\.proxy\.request\n$/,
    );
  });

  test('without --model, the first model the workers list is used; bad flags exit 2', async () => {
    const models = worker.subscribe(subjects.models, {
      callback: (_error, message) => {
        message.respond(JSON.stringify({ models: [{ name: 'listed-model' }], worker_id: 'w1' }));
      },
    });
    const responder = await respond((body, message) => {
      message.respond(JSON.stringify(reply(body, `model was ${body.model}`)));
    });
    try {
      const result = await runCli(['--json', 'hi']);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(JSON.parse(result.stdout).content, 'model was listed-model');
      const bad = await runCli(['--temperature', 'hot', 'hi']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--temperature must be a number from 0 to 2, got "hot"/);
    } finally {
      models.unsubscribe();
      responder.subscription.unsubscribe();
    }
  });
  test('Ctrl-C during --stream cancels the request (a cancel message names it) and exits 130', async () => {
    const cancels: string[] = [];
    const cancelSubscription = worker.subscribe(subjects.cancel, {
      callback: (_error, message) => {
        cancels.push(message.json<{ request_id: string }>().request_id);
      },
    });
    const responder = await respond((_body, message) => {
      publishMarked(message, STREAM_MARKS.chunk, { seq: 0, delta: 'first words' });
    });
    try {
      const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'chat', '--stream', '--model', 'm', 'hi'], {
        env: { ...process.env, NATS_URL: server.url, LLM_PROXY_SECRET: SECRET },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
      const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await new Promise<void>((resolve) =>
        child.stdout.on('data', (data: Buffer) => {
          stdout += data.toString();
          if (stdout.includes('first words')) resolve();
        }),
      );
      child.kill('SIGINT');
      const code = await exited;
      clearTimeout(killer);
      // The cancel left the child before it exited; give the bus a bounded moment to deliver it.
      for (let wait = 0; wait < 50 && cancels.length === 0; wait += 1)
        await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(code, 130, stderr);
      assert.match(stderr, /^error cancelled \(499\): cancelled by the client\n$/);
      assert.deepEqual(cancels, [responder.seen[0]?.body.request_id]);
    } finally {
      cancelSubscription.unsubscribe();
      responder.subscription.unsubscribe();
    }
  });
});
