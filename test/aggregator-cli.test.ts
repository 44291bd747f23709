import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { CLI_MAIN, runCli } from './helpers/cli-process.js';
import { freePort } from './helpers/ports.js';
import { startNatsServer } from './helpers/nats-server.js';
import { handCompute, makeEvents } from './helpers/usage-events.js';
import { SnapshotStore } from '../src/aggregator/snapshot-store.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { UsageError } from '../src/cli/command.js';
import { parseUsageArguments } from '../src/cli/commands/usage.js';
import { formatEvent } from '../src/cli/commands/tail.js';

/**
 * `llm-proxy aggregator` and `llm-proxy usage` as child processes over a real
 * nats-server: the aggregator is SIGKILLed (no snapshot, no goodbye) and
 * restarted, and loses nothing; SIGTERM saves a last snapshot.
 */

const MAIN = CLI_MAIN;

function startAggregatorProcess(configPath: string, env: Record<string, string>): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', MAIN, 'aggregator', '--config', configPath], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Asks llm.proxy.usage until the totals reach `requests` (bounded: 30 s). */
async function waitForTotal(connection: NatsConnection, requests: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  let seen: unknown;
  while (Date.now() < deadline) {
    try {
      const reply = await connection.request(subjectsFor('llm').usageQuery, '{}', { timeout: 2_000 });
      seen = reply.json<{ total_requests: number }>().total_requests;
      if (seen === requests) return;
    } catch (error) {
      seen = error instanceof Error ? error.message : error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`usage total never reached ${requests} (last: ${String(seen)})`);
}

async function publish(connection: NatsConnection, events: UsageEvent[]): Promise<void> {
  const js = jetstream(connection);
  for (let start = 0; start < events.length; start += 100) {
    await Promise.all(
      events.slice(start, start + 100).map((event) =>
        js.publish(subjectsFor('llm').usageFor(agentToken(event.agent_id)), JSON.stringify(event), {
          msgID: event.request_id,
        }),
      ),
    );
  }
}

test('llm-proxy aggregator survives SIGKILL, llm-proxy usage prints table, JSON and CSV', {
  timeout: 90_000,
}, async () => {
  const server = await startNatsServer();
  const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-aggregator-cli-'));
  const configPath = join(directory, 'config.yaml');
  writeFileSync(
    configPath,
    [
      'providers:',
      '  local: {base_url: "http://127.0.0.1:11434"}',
      'models:',
      '  llama3: {provider: local}',
      'logging: {level: warn}',
      'aggregator: {instance_id: cli, snapshot_interval_ms: 10m, hour_window: forever, retention: forever}',
      '',
    ].join('\n'),
  );
  const metricsPort = await freePort();
  const env = { NATS_URL: server.url, LLM_PROXY_CONFIG: configPath, LLM_PROXY_METRICS_PORT: String(metricsPort) };
  const connection = await connect({ servers: server.url });
  let child: ChildProcess | undefined;
  try {
    await ensureUsageStream(await jetstreamManager(connection), usageStreamSchema.parse({}), 'llm');
    // Some requests came with a per-agent key (its id in the event): one key for every third, none for the rest.
    const KEY = 'Kx7pQ2rS9tUv';
    const events = makeEvents(500).map((event, index) => (index % 3 === 0 ? { ...event, key_id: KEY } : event));

    const none = await runCli(['usage'], env);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no aggregator answers on llm\.proxy\.usage/);

    child = startAggregatorProcess(configPath, env);
    await publish(connection, events.slice(0, 300));
    await waitForTotal(connection, 300);

    // Hard kill: no snapshot was ever taken (interval 10m), so the restart rebuilds from the stream.
    child.kill('SIGKILL');
    await exited(child);
    await publish(connection, events.slice(300, 500));
    child = startAggregatorProcess(configPath, env);
    await waitForTotal(connection, 500);

    // Its own /metrics: caught up (lag 0), the 500 events counted; /readyz says so.
    const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(scrape, /^llm_proxy_aggregator_lag\{[^}]*\} 0$/m);
    assert.match(scrape, /^llm_proxy_aggregator_events_total\{llm_proxy_outcome="counted"[^}]*\} 500$/m);
    const ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
    assert.equal(ready.status, 200, await ready.text());

    const json = await runCli(
      ['usage', '--microdao', 'microdao:7', '--since', '2026-11-24', '--group-by', 'model', '--json'],
      env,
    );
    assert.equal(json.code, 0, json.stderr);
    const expected = handCompute(events, {
      microdao_id: 'microdao:7',
      sinceMs: Date.parse('2026-11-24T00:00:00Z'),
      group_by: ['model'],
    });
    const { cents: _cents, ...exact } = expected;
    assert.deepEqual(JSON.parse(json.stdout), exact);

    const csv = await runCli(['usage', '--group-by', 'agent,day', '--csv'], env);
    assert.equal(csv.code, 0, csv.stderr);
    const byAgentDay = handCompute(events, { group_by: ['agent', 'day'] });
    const lines = csv.stdout.trimEnd().split('\n');
    assert.equal(
      lines[0],
      'agent,day,total_requests,ok,errors,rejected,cancelled,cached,tokens_estimated,prompt_tokens,completion_tokens,total_tokens,cost_usd,avg_latency_ms,success_rate,cached_prompt_tokens,saved_usd',
    );
    assert.equal(lines.length, byAgentDay.groups.length + 1);
    byAgentDay.groups.forEach((group, index) => {
      const cells = (lines[index + 1] as string).split(',');
      assert.equal(cells[0], group.key.agent);
      assert.equal(cells[1], group.key.day);
      assert.equal(Number(cells[2]), group.total_requests);
      assert.equal(Number(cells[11]), group.total_tokens);
      assert.equal(cells[12], group.cost_usd.toFixed(9), 'cost exported to the nano-dollar');
      assert.equal(Number(cells[15]), group.cached_prompt_tokens);
    });

    const table = await runCli(['usage', '--agent', 'agent:sofia', '--group-by', 'provider'], env);
    assert.equal(table.code, 0, table.stderr);
    const sofia = handCompute(events, { agent_id: 'agent:sofia', group_by: ['provider'] });
    assert.match(table.stdout, /^Usage of agent agent:sofia, the beginning to now/);
    assert.match(table.stdout, new RegExp(`requests\\s+${sofia.total_requests.toLocaleString('en-US')}\\b`));
    assert.match(table.stdout, new RegExp(`cost\\s+\\$${sofia.cost_usd.toFixed(6).replace('.', '\\.')}`));
    assert.match(table.stdout, /PROVIDER\s+REQUESTS\s+SUCCESS/);
    for (const group of sofia.groups)
      assert.match(
        table.stdout,
        new RegExp(`\\n\\s+${group.key.provider?.replace(/[()]/g, '\\$&')}\\s+${group.total_requests}\\s`),
      );

    const byKey = await runCli(['usage', '--group-by', 'key', '--json'], env);
    assert.equal(byKey.code, 0, byKey.stderr);
    const totalsOf = (list: UsageEvent[]) => {
      const { cents: _cents, since: _since, until: _until, groups: _groups, ...totals } = handCompute(list, {});
      return totals;
    };
    assert.deepEqual(JSON.parse(byKey.stdout).groups, [
      { key: { key: '(none)' }, ...totalsOf(events.filter((event) => event.key_id === undefined)) },
      { key: { key: KEY }, ...totalsOf(events.filter((event) => event.key_id === KEY)) },
    ]);
    const oneKey = await runCli(['usage', '--key', KEY, '--group-by', 'key,model'], env);
    assert.equal(oneKey.code, 0, oneKey.stderr);
    assert.match(oneKey.stdout, new RegExp(`^Usage of key ${KEY}, the beginning to now`));
    assert.match(oneKey.stdout, /KEY\s+MODEL\s+REQUESTS/);
    const keyed = handCompute(
      events.filter((event) => event.key_id === KEY),
      { group_by: ['model'] },
    );
    for (const group of keyed.groups)
      assert.match(oneKey.stdout, new RegExp(`\\n\\s+${KEY}\\s+${group.key.model}\\s+${group.total_requests}\\s`));

    const bad = await runCli(['usage', '--since', 'last tuesday'], env);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error invalid_request \(400\): since: /);
    const badFlag = await runCli(['usage', '--group-by', 'week'], env);
    assert.equal(badFlag.code, 2);

    // SIGTERM: a last snapshot covering the whole stream, then a clean exit.
    child.kill('SIGTERM');
    assert.equal(await exited(child), 0);
    child = undefined;
    const store = await SnapshotStore.open(connection, 'LLM_USAGE_SNAPSHOTS');
    const manifest = await store.manifest('cli');
    const info = await (await jetstreamManager(connection)).streams.info('LLM_USAGE');
    assert.equal(manifest?.seq, info.state.last_seq);
  } finally {
    if (child !== undefined) {
      child.kill('SIGKILL');
      await exited(child);
    }
    await connection.close();
    await server.dispose();
    rmSync(directory, { recursive: true, force: true });
  }
});

test('usage --key and --group-by key become key_id and group_by; a whole key is refused without being echoed', () => {
  assert.deepEqual(parseUsageArguments(['--key', 'Kx7pQ2rS9tUv', '--group-by', 'agent,key'], {}).query, {
    key_id: 'Kx7pQ2rS9tUv',
    group_by: ['agent', 'key'],
  });
  const refused = (value: string): string => {
    try {
      parseUsageArguments(['--key', value], {});
    } catch (error) {
      assert.ok(error instanceof UsageError, value);
      assert.ok(!error.message.includes(value), `${value} is not echoed`);
      return error.message;
    }
    assert.fail(`--key ${value} was accepted`);
  };
  assert.match(
    refused('llmp_Kx7pQ2rS9tUv_0123456789abcdefghijABCDEFGHIJ0123456789abcdef'),
    /^--key takes the key id .*not the key itself$/,
  );
  assert.match(refused('Kx7pQ2rS9tU'), /^--key: a key id is 12 letters and digits$/);
  assert.match(refused('Kx7pQ2rS9tUv!'), /^--key: a key id is 12 letters and digits$/);
});

test('tail shows the key id of an event that has one', () => {
  const event: UsageEvent = makeEvents(1)[0] as UsageEvent;
  assert.doesNotMatch(formatEvent(event), /key:/);
  const line = formatEvent({ ...event, agent_id: 'agent:sofia', key_id: 'Kx7pQ2rS9tUv' });
  assert.match(line, / {2}agent:sofia {2}key:Kx7pQ2rS9tUv {2}\d+\+\d+~? tok {2}/);
});
