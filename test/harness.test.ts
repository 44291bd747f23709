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
