/**
 * Floor 2: a bare NATS echo replier, its own process. It answers every request
 * with the bytes it got, so its round trip is what NATS request/reply alone
 * costs on this machine. `node .bench-build/bench/echo-replier.js --nats-url URL [--subject S]`.
 */
import { connect } from '@nats-io/transport-node';
import { parseArgs } from 'node:util';
import { BENCH_SUBJECTS } from './bench-config.js';

const { values } = parseArgs({
  options: { 'nats-url': { type: 'string' }, subject: { type: 'string', default: BENCH_SUBJECTS.echo } },
});
const connection = await connect({ servers: values['nats-url'] ?? 'nats://127.0.0.1:4222', noAsyncTraces: true });
connection.subscribe(values.subject!, {
  queue: 'bench-echo',
  callback: (error, message) => {
    if (error === null) message.respond(message.data);
  },
});
await connection.flush();
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
const stop = (): void => {
  void connection.drain().finally(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
