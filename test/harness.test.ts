import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { startNatsServer } from './helpers/nats-server.js';

test('the harness starts, restarts and stops a real nats-server with JetStream', async () => {
  const server = await startNatsServer();
  try {
    const connection = await connect({ servers: server.url });
    assert.equal(connection.info?.jetstream, true);
    await connection.close();
    await server.stop();
    await server.restart();
    const again = await connect({ servers: server.url });
    await again.close();
  } finally {
    await server.dispose();
  }
});

test('the harness refuses a port another nats-server holds instead of using that server', async () => {
  const first = await startNatsServer({ jetstream: false });
  try {
    await assert.rejects(startNatsServer({ port: first.port }), /held by another nats-server|nats-server exited/);
    const connection = await connect({ servers: first.url });
    assert.match(connection.info?.server_name ?? '', /^llm-proxy-test-/);
    await connection.close();
  } finally {
    await first.dispose();
  }
});
