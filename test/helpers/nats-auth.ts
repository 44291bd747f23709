/**
 * The shipped NATS permissions (deploy/nats/nats-server.conf) under test: role passwords for the
 * server's environment, each role's client environment, certificates made with openssl at test time,
 * an nkey pair, and a way to tell a permissions violation from any other failure.
 *
 * ```ts
 * const passwords = rolePasswords();
 * const nats = await startNatsServer({ include: SHIPPED_NATS_CONF, env: passwords });
 * const worker = await connectToNats({ servers: nats.url, env: roleEnv('worker', passwords) });
 * await expectViolation(agent, 'subscription', 'llm.usage.>', () => agent.subscribe('llm.usage.>'));
 * ```
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nkeys, PermissionViolationError, type NatsConnection } from '@nats-io/nats-core';

export const SHIPPED_NATS_CONF = fileURLToPath(new URL('../../deploy/nats/nats-server.conf', import.meta.url));

/** The users of the shipped file: name, the server's password variable, the inbox prefix they must use. */
export const ROLES = {
  worker: { user: 'worker', passwordEnv: 'NATS_WORKER_PASSWORD', inboxPrefix: '_INBOX.worker' },
  aggregator: { user: 'aggregator', passwordEnv: 'NATS_AGGREGATOR_PASSWORD', inboxPrefix: '_INBOX.aggregator' },
  sink: { user: 'sink', passwordEnv: 'NATS_SINK_PASSWORD', inboxPrefix: '_INBOX.sink' },
  gateway: { user: 'gateway', passwordEnv: 'NATS_GATEWAY_PASSWORD', inboxPrefix: '_INBOX.gateway' },
  ops: { user: 'ops', passwordEnv: 'NATS_OPS_PASSWORD', inboxPrefix: '_INBOX.ops' },
  admin: { user: 'admin', passwordEnv: 'NATS_ADMIN_PASSWORD', inboxPrefix: '_INBOX.admin' },
  sofia: { user: 'agent-sofia', passwordEnv: 'NATS_AGENT_SOFIA_PASSWORD', inboxPrefix: '_INBOX.agent-sofia' },
  helion: { user: 'agent-helion', passwordEnv: 'NATS_AGENT_HELION_PASSWORD', inboxPrefix: '_INBOX.agent-helion' },
} as const;
export type Role = keyof typeof ROLES;

/**
 * A fresh password per role, as the server's environment. nats-server parses a variable's value as a
 * config value (`12345` would be a number): a letter first, then hex.
 */
export function rolePasswords(): Record<string, string> {
  return Object.fromEntries(
    Object.values(ROLES).map((role) => [role.passwordEnv, `p${randomBytes(16).toString('hex')}`]),
  );
}

/** A role's client environment, as a deployment sets it: NATS_USER, NATS_PASSWORD, NATS_INBOX_PREFIX. */
export function roleEnv(role: Role, passwords: Record<string, string>, extra: Record<string, string> = {}) {
  const { user, passwordEnv, inboxPrefix } = ROLES[role];
  return {
    NATS_USER: user,
    NATS_PASSWORD: passwords[passwordEnv] ?? '',
    NATS_INBOX_PREFIX: inboxPrefix,
    ...extra,
  };
}

export interface Certificates {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate, P-256, valid one day. */
export function makeCertificates(dir: string): Certificates {
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) =>
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...newKey,
    '-keyout',
    file('ca-key.pem'),
    '-out',
    file('ca.pem'),
    '-days',
    '1',
    '-subj',
    '/CN=llm-proxy test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  const issue = (name: string, subject: string, extensions: string) => {
    writeFileSync(file(`${name}.ext`), `${extensions}\n`);
    openssl('req', ...newKey, '-keyout', file(`${name}-key.pem`), '-out', file(`${name}.csr`), '-subj', subject);
    openssl(
      'x509',
      '-req',
      '-in',
      file(`${name}.csr`),
      '-CA',
      file('ca.pem'),
      '-CAkey',
      file('ca-key.pem'),
      '-set_serial',
      `0x${randomBytes(8).toString('hex')}`,
      '-days',
      '1',
      '-out',
      file(`${name}.pem`),
      '-extfile',
      file(`${name}.ext`),
    );
  };
  issue(
    'server',
    '/CN=localhost',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth',
  );
  issue('client', '/CN=llm-proxy-test-client', 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth');
  return {
    dir,
    ca: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server-key.pem'),
    clientCert: file('client.pem'),
    clientKey: file('client-key.pem'),
  };
}

/** Server lines requiring TLS with a client certificate signed by the test CA (mutual TLS). */
export function mutualTlsConfig(certificates: Certificates): string {
  return [
    'tls {',
    `  cert_file: "${certificates.serverCert}"`,
    `  key_file: "${certificates.serverKey}"`,
    `  ca_file: "${certificates.ca}"`,
    '  verify: true',
    '  timeout: 2',
    '}',
  ].join('\n');
}

/** A user nkey pair: the public key for the server's config, the seed for NATS_NKEY_SEED. */
export function userNkey(): { publicKey: string; seed: string } {
  const pair = nkeys.createUser();
  return { publicKey: pair.getPublicKey(), seed: new TextDecoder().decode(pair.getSeed()) };
}

/**
 * The shipped file with one role switched to an nkey login, as deploy/nats/README.md tells: its
 * `user: …, password: …` replaced by `nkey: <public key>`, permissions unchanged. Written to `dir`.
 */
export function shippedConfWithNkey(role: Role, publicKey: string, dir: string): string {
  const { user, passwordEnv } = ROLES[role];
  const login = `user: ${user}, password: $${passwordEnv}`;
  const shipped = readFileSync(SHIPPED_NATS_CONF, 'utf8');
  const lines = shipped.split('\n').filter((line) => line.includes(login) && !line.trimStart().startsWith('#'));
  if (lines.length !== 1)
    throw new Error(`expected one "${login}" line in ${SHIPPED_NATS_CONF}, found ${lines.length}`);
  const path = join(dir, `nats-server.${role}-nkey.conf`);
  writeFileSync(path, shipped.replace(login, `nkey: ${publicKey}`));
  return path;
}

/**
 * Runs `act` and resolves with the permissions violation the server reports for `operation` on
 * `subject` (nats.js v3 reports it as an `error` status of the connection; a request is also rejected
 * with it, a subscription closed with it). Fails after `timeoutMs` without one.
 */
export async function expectViolation(
  connection: NatsConnection,
  operation: 'publish' | 'subscription',
  subject: string,
  act: () => unknown,
  timeoutMs = 3_000,
): Promise<PermissionViolationError> {
  const statuses = connection.status();
  let timer: NodeJS.Timeout | undefined;
  const seen = (async () => {
    for await (const status of statuses) {
      if (
        status.type === 'error' &&
        status.error instanceof PermissionViolationError &&
        status.error.operation === operation &&
        status.error.subject === subject
      )
        return status.error;
    }
    throw new Error('the connection closed without a permissions violation');
  })();
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no permissions violation for ${operation} to "${subject}" within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    const outcome = act();
    // A refused request rejects: that is expected here, the status above is the proof.
    if (outcome instanceof Promise) outcome.catch(() => undefined);
    await connection.flush();
    return await Promise.race([seen, timeout]);
  } finally {
    clearTimeout(timer);
    // nats.js's status iterator can be stopped, though its type does not say so.
    (statuses as { stop?: () => void }).stop?.();
  }
}

/**
 * For `assert.rejects`: the error is the server's permissions violation on `subject` (a request
 * refused so comes as nats.js's RequestError with the violation as its cause).
 */
export function violationOn(subject: string): (error: unknown) => boolean {
  return (error) => {
    for (let cause = error; cause instanceof Error; cause = cause.cause) {
      if (cause instanceof PermissionViolationError) {
        assert.equal(cause.subject, subject);
        return true;
      }
    }
    assert.fail(`expected a permissions violation on ${subject}, got ${String(error)}`);
  };
}
