/**
 * `llm-proxy keys` as an admin runs it (a child process) against a real nats-server: create, list,
 * show, rotate, revoke, and the refusals of bad input. Every output is kept: a key may appear once
 * (where it is made), its SHA-256 never.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { hashKey, KeyStore, newKey, newKeyId, parseKey } from '../src/auth/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { freePort } from './helpers/ports.js';
import { UsageError } from '../src/cli/command.js';
import { parseKeysArguments } from '../src/cli/commands/keys.js';

const BUCKET = 'KEYS_CLI_TEST';
const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-keys-cli-'));
const configPath = join(directory, 'config.yaml');
let nats: NatsServerHandle;
let admin: NatsConnection;
let store: KeyStore;

interface Run {
  args: string[];
  code: number;
  stdout: string;
  stderr: string;
}
/** Every run's output, searched at the end for keys and hashes. */
const runs: Run[] = [];
/** Every key the CLI printed. */
const keys: string[] = [];

before(async () => {
  nats = await startNatsServer();
  writeFileSync(
    configPath,
    [
      'providers: {fake: {type: openai, base_url: "http://127.0.0.1:9"}}',
      'models:',
      '  m-alpha: {provider: fake, physical_name: alpha}',
      '  m-beta: {provider: fake, physical_name: beta}',
      `auth: {mode: keys, keys_bucket: ${BUCKET}}`,
      '',
    ].join('\n'),
  );
  admin = await connect({ servers: nats.url });
  store = await KeyStore.open(admin, BUCKET);
});

after(async () => {
  await admin?.close();
  await nats?.dispose();
  rmSync(directory, { recursive: true, force: true });
});

/** `llm-proxy keys …` with the test's config; NATS from NATS_URL unless the args say --nats. */
function keysCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'keys', ...args],
      { env: { ...process.env, LLM_PROXY_CONFIG: configPath, NATS_URL: nats.url, ...env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const run = {
          args,
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        };
        runs.push(run);
        resolve(run);
      },
    );
  });
}

function ok(run: Run): Run {
  assert.equal(run.code, 0, `keys ${run.args.join(' ')}: ${run.stderr}`);
  return run;
}

/** The key printed on a line of its own. */
function printedKey(run: Run): string {
  const match = /^(llmp_\S+)$/m.exec(run.stdout);
  assert.ok(match, `no key on a line of its own in:\n${run.stdout}`);
  keys.push(match[1] as string);
  return match[1] as string;
}

function near(iso: string, expectedMs: number, toleranceMs = 60_000): void {
  const at = Date.parse(iso);
  assert.ok(Math.abs(at - expectedMs) < toleranceMs, `${iso} is not near ${new Date(expectedMs).toISOString()}`);
}

test('create, list, show, rotate, revoke: each key printed once, never a hash', async () => {
  // ---- create: one with every setting (JSON), one plain (text), one that expires at once.
  const startedAt = Date.now();
  // A key that has expired already (written as the CLI writes it, to spare a spawn).
  const oldId = (await store.create({ agentId: 'agent:old', expiresInMs: 1 })).record.id;
  const [sofiaRun, bobRun] = await Promise.all([
    keysCli([
      'create',
      '--agent',
      'agent:sofia',
      '--microdao',
      'microdao:7',
      '--models',
      'm-alpha, m-beta',
      '--rpm',
      '30',
      '--tpm',
      '5000',
      '--concurrent',
      '2',
      '--daily-usd',
      '2.5',
      '--monthly-usd',
      '40',
      '--expires',
      '30d',
      '--note',
      'sofia, prod',
      '--json',
    ]),
    keysCli(['create', '--agent', 'agent:bob', '--config', configPath, '--nats', nats.url], { NATS_URL: '' }),
  ]);
  const sofia = JSON.parse(ok(sofiaRun).stdout);
  keys.push(sofia.key);
  const sofiaId: string = sofia.id;
  assert.equal(parseKey(sofia.key), sofiaId);
  assert.deepEqual(
    { ...sofia, key: undefined, created_at: undefined, expires_at: undefined },
    {
      key: undefined,
      id: sofiaId,
      agent_id: 'agent:sofia',
      microdao_id: 'microdao:7',
      models: ['m-alpha', 'm-beta'],
      limits: { rpm: 30, tpm: 5000, concurrent: 2, daily_usd: 2.5, monthly_usd: 40 },
      created_at: undefined,
      expires_at: undefined,
      revoked_at: null,
      note: 'sofia, prod',
      status: 'active',
      grace_until: [],
    },
  );
  near(sofia.expires_at, startedAt + 30 * 86_400_000);
  assert.equal((await store.get(sofiaId))?.hash, hashKey(sofia.key));

  const bobKey = printedKey(ok(bobRun));
  const bobId = parseKey(bobKey) as string;
  assert.ok(bobId);
  assert.match(bobRun.stdout, new RegExp(`^New key ${bobId} for agent:bob:\n\n${bobKey}\n\n`));
  assert.match(bobRun.stdout, /this is the only time the key is shown/);
  assert.match(bobRun.stdout, /^ {2}agent\s+agent:bob$/m);
  assert.match(bobRun.stdout, /^ {2}models\s+all$/m);
  assert.match(bobRun.stdout, /^ {2}expires\s+never$/m);
  assert.equal((await store.get(bobId))?.hash, hashKey(bobKey));

  // ---- list: a table of every key; no key, no hash.
  const table = ok(await keysCli(['list']));
  assert.match(table.stdout, /^3 keys \(bucket KEYS_CLI_TEST at nats:\/\/127\.0\.0\.1:\d+\)$/m);
  assert.match(table.stdout, /^id\s+agent\s+microdao\s+models\s+limits\s+status\s+expires\s+note$/m);
  assert.match(
    table.stdout,
    new RegExp(
      `^${sofiaId}  agent:sofia\\s+microdao:7\\s+m-alpha,m-beta\\s+rpm=30 tpm=5000 concurrent=2 daily_usd=2.5 monthly_usd=40\\s+active\\s+\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ\\s+sofia, prod$`,
      'm',
    ),
  );
  assert.match(table.stdout, new RegExp(`^${bobId}  agent:bob\\s+-\\s+all\\s+-\\s+active\\s+never\\s+-$`, 'm'));
  assert.match(table.stdout, new RegExp(`^${oldId}  agent:old\\s.*\\sexpired\\s`, 'm'));

  // ---- rotate: with the default grace of an hour (text) and with none (JSON).
  const rotatedAt = Date.now();
  const [sofiaRotation, bobRotation] = await Promise.all([
    keysCli(['rotate', sofiaId]),
    keysCli(['rotate', bobId, '--grace', '0', '--json']),
  ]);
  const sofiaKey2 = printedKey(ok(sofiaRotation));
  assert.notEqual(sofiaKey2, sofia.key);
  assert.equal(parseKey(sofiaKey2), sofiaId);
  const until = /The old key stays valid until (\S+) \(grace 1h\)/.exec(sofiaRotation.stdout);
  assert.ok(until, sofiaRotation.stdout);
  near(until[1] as string, rotatedAt + 3_600_000);
  assert.match(sofiaRotation.stdout, /this is the only time the key is shown/);
  const sofiaRecord = await store.get(sofiaId);
  assert.equal(sofiaRecord?.hash, hashKey(sofiaKey2));
  assert.deepEqual(
    sofiaRecord?.previous.map((previous) => previous.hash),
    [hashKey(sofia.key)],
  );

  const bob2 = JSON.parse(ok(bobRotation).stdout);
  keys.push(bob2.key);
  assert.notEqual(bob2.key, bobKey);
  assert.equal(bob2.id, bobId);
  assert.equal(parseKey(bob2.key), bobId);
  assert.equal(bob2.old_key_valid_until, null);
  assert.deepEqual(bob2.grace_until, []);
  const bobRecord = await store.get(bobId);
  assert.equal(bobRecord?.hash, hashKey(bob2.key));
  assert.deepEqual(bobRecord?.previous, []);

  // ---- show: the record, and the old key's grace.
  const shown = ok(await keysCli(['show', sofiaId]));
  assert.match(shown.stdout, new RegExp(`^ {2}id\\s+${sofiaId}$`, 'm'));
  assert.match(shown.stdout, /^ {2}limits\s+rpm=30 tpm=5000 concurrent=2 daily_usd=2\.5 monthly_usd=40$/m);
  assert.match(shown.stdout, /^ {2}status\s+active$/m);
  assert.match(shown.stdout, new RegExp(`^ {2}old key\\s+valid until ${until[1]} \\(rotated out\\)$`, 'm'));
  assert.match(shown.stdout, /^ {2}note\s+sofia, prod$/m);

  // ---- revoke: refused at once, and again changes nothing; a revoked key cannot be rotated.
  const revoked = ok(await keysCli(['revoke', sofiaId]));
  assert.match(revoked.stdout, new RegExp(`^Revoked key ${sofiaId} \\(agent:sofia\\)`));
  assert.match(revoked.stdout, /^ {2}status\s+revoked$/m);
  const [again, sofiaList, rotateRevoked] = await Promise.all([
    keysCli(['revoke', sofiaId]),
    keysCli(['list', '--agent', 'agent:sofia', '--json']),
    keysCli(['rotate', sofiaId]),
  ]);
  assert.match(ok(again).stdout, new RegExp(`^Key ${sofiaId} \\(agent:sofia\\) was already revoked at `));
  const listed = JSON.parse(ok(sofiaList).stdout);
  assert.deepEqual(
    listed.keys.map((key: { id: string }) => key.id),
    [sofiaId],
  );
  const summary = listed.keys[0];
  assert.ok(!('hash' in summary) && !('previous' in summary));
  assert.equal(summary.status, 'revoked');
  near(summary.revoked_at, Date.now());
  assert.deepEqual(summary.grace_until, []);
  assert.equal(rotateRevoked.code, 1);
  assert.match(rotateRevoked.stderr, new RegExp(`key ${sofiaId} is revoked: it cannot be rotated`));

  // ---- no output of any command holds a hash, and each key appears once: where it was made.
  assert.equal(keys.length, 4);
  const everything = runs.map((run) => run.stdout + run.stderr).join('\n');
  for (const key of keys) {
    assert.equal(everything.split(key).length - 1, 1, `key of ${parseKey(key)} printed more than once`);
    assert.ok(!everything.includes(hashKey(key)), `hash of a key of ${parseKey(key)} printed`);
  }
});

test('bad input exits 2 and stores nothing; an unknown key or an unreachable store exits 1', async () => {
  const known = (await store.create({ agentId: 'agent:known' })).record.id;
  const closedPort = await freePort();
  const noJetStream = await startNatsServer({ jetstream: false });
  try {
    const cases: Array<{ args: string[]; code: number; message: RegExp; env?: NodeJS.ProcessEnv }> = [
      {
        args: ['create', '--agent', 'agent:x', '--models', 'm-alpha,m-gamma'],
        code: 2,
        message: /^llm-proxy: --models: unknown model "m-gamma" \(\S+config\.yaml has m-alpha, m-beta\)$/m,
      },
      {
        args: ['create', '--agent', 'agent:x', '--rpm', '0'],
        code: 2,
        message: /^llm-proxy: --rpm must be a positive integer, got "0"$/m,
      },
      {
        args: ['show', 'not-a-key-id'],
        code: 2,
        message: /^llm-proxy: "not-a-key-id" is not a key id \(12 letters and digits/m,
      },
      { args: ['show', 'AAAAAAAAAAAA'], code: 1, message: /^error: no key AAAAAAAAAAAA \(bucket KEYS_CLI_TEST at /m },
      { args: ['revoke', 'AAAAAAAAAAAA'], code: 1, message: /^error: no key AAAAAAAAAAAA$/m },
      {
        args: ['list', '--nats', `nats://127.0.0.1:${closedPort}`],
        code: 1,
        message: new RegExp(`^error: cannot connect to NATS at nats://127\\.0\\.0\\.1:${closedPort}: `, 'm'),
      },
      {
        args: ['list'],
        env: { NATS_URL: noJetStream.url },
        code: 1,
        message: /^error: cannot open the key store \(bucket KEYS_CLI_TEST at .*is JetStream enabled/m,
      },
    ];
    const [help, ...results] = await Promise.all([
      keysCli(['--help']),
      ...cases.map((one) => keysCli(one.args, one.env)),
    ]);
    assert.equal(ok(help).stdout.split('\n')[0], 'Usage: llm-proxy keys <create|list|show|revoke|rotate> [options]');
    assert.match(help.stdout, /rotate ID \[--grace D\]/);
    assert.match(help.stdout, /Examples:\n {2}llm-proxy keys create --agent agent:sofia/);
    cases.forEach((one, index) => {
      const result = results[index] as Run;
      const label = `keys ${one.args.join(' ')}`;
      assert.equal(result.code, one.code, `${label}: exit ${result.code}\n${result.stdout}${result.stderr}`);
      assert.match(result.stderr, one.message, label);
      assert.equal(result.stdout, '', label);
    });
    // Nothing was written by the refused commands.
    const stored = await store.list();
    assert.deepEqual(
      stored.filter((record) => record.agent_id === 'agent:x'),
      [],
    );
    assert.equal((await store.get(known))?.revoked_at, null);
    assert.deepEqual((await store.get(known))?.previous, []);
  } finally {
    await noJetStream.dispose();
  }
});

test('argument checks (in process: the same code the CLI runs before it connects)', () => {
  const env = { LLM_PROXY_CONFIG: configPath };
  const refused = (args: string[], message: RegExp) =>
    assert.throws(
      () => parseKeysArguments(args, env),
      (error: unknown) => {
        assert.ok(error instanceof UsageError, `${args.join(' ')}: ${String(error)}`);
        assert.match(error.message, message, args.join(' '));
        return true;
      },
    );
  refused(['create', '--agent', 'agent:x', '--tpm', '1.5'], /--tpm must be a positive integer, got "1\.5"/);
  refused(['create', '--agent', 'agent:x', '--concurrent', 'many'], /--concurrent must be a positive integer/);
  refused(
    ['create', '--agent', 'agent:x', '--daily-usd=-1'],
    /--daily-usd must be a number of USD, 0 or more, got "-1"/,
  );
  refused(['create', '--agent', 'agent:x', '--monthly-usd', ''], /--monthly-usd must be a number of USD/);
  refused(['create', '--agent', 'agent:\u0007x'], /--agent must be 1-256 characters without control characters/);
  refused(['create', '--agent', `agent:${'x'.repeat(251)}`], /--agent must be 1-256 characters/);
  refused(['create', '--agent', ''], /--agent must be 1-256 characters/);
  refused(['create', '--agent', 'agent:x', '--microdao', 'microdao:\n7'], /--microdao must be 1-256 characters/);
  refused(['create', '--microdao', 'microdao:7'], /--agent is required/);
  refused(['create', '--agent', 'agent:x', '--models', ' , '], /--models needs at least one model/);
  refused(['create', '--agent', 'agent:x', '--expires', '30'], /--expires must be a duration such as 90s/);
  refused(['create', '--agent', 'agent:x', '--expires', '0'], /--expires must be a duration/);
  refused(['create', '--agent', 'agent:x', '--expires', '9999999d'], /--expires 9999999d ends after the year 9999/);
  refused(['create', '--agent', 'agent:x', '--note', 'two\nlines'], /--note must be at most 1000 characters/);
  refused(['create', '--agent', 'agent:x', 'extra'], /Unexpected argument 'extra'/);
  refused(['list', '--agent', 'agent:x', '--rpm', '3'], /Unknown option '--rpm'/);
  refused(['show'], /keys show needs a key id/);
  refused(['show', 'AAAAAAAAAAAA', 'BBBBBBBBBBBB'], /keys show takes one key id/);
  refused(['rotate', 'AAAAAAAAAAAA', '--grace', 'soon'], /--grace must be a duration such as .*, got "soon"/);
  refused(['rotate', 'AAAAAAAAAAAA', '--grace', '-1h'], /--grace/);
  refused([], /keys needs a command: create, list, show, revoke, rotate/);
  refused(['frob'], /keys: unknown command "frob"/);
  // A whole key where its id belongs: named by its id, the key not echoed.
  const aKey = newKey(newKeyId());
  assert.throws(
    () => parseKeysArguments(['revoke', aKey], env),
    (error: Error) =>
      error.message ===
      `that is a key, not a key id: its id is ${parseKey(aKey)} (llm-proxy keys revoke ${parseKey(aKey)})`,
  );

  const create = parseKeysArguments(
    ['create', '--agent', 'agent:x', '--models', 'm-beta,m-alpha,m-beta', '--daily-usd', '0', '--expires', '12h'],
    env,
  );
  assert.equal(create.subcommand, 'create');
  if (create.subcommand === 'create') {
    assert.deepEqual(create.models, ['m-beta', 'm-alpha']);
    assert.deepEqual(create.limits, { daily_usd: 0 });
    assert.deepEqual(create.expires, { text: '12h', ms: 43_200_000 });
    assert.equal(create.configPath, configPath);
  }
  const rotate = parseKeysArguments(['rotate', 'AAAAAAAAAAAA'], env);
  assert.deepEqual(rotate.subcommand === 'rotate' && rotate.grace, { text: '1h', ms: 3_600_000 });
  const rotateNow = parseKeysArguments(['rotate', 'AAAAAAAAAAAA', '--grace', '0'], env);
  assert.deepEqual(rotateNow.subcommand === 'rotate' && rotateNow.grace, { text: '0', ms: 0 });
});
