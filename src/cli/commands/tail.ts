/** `llm-proxy tail`: print usage events as they are published. */
import type { Command } from '../command.js';
import { parseCommandLine } from '../command.js';
import { agentToken, subjectsFor } from '../../contract/subjects.js';
import type { UsageEvent } from '../../contract/usage-event.js';
import { connectForCommand } from './models.js';

const help = `Usage: llm-proxy tail [--agent ID] [--json] [--nats URL] [--config FILE]

Prints every usage event as it is published (a live NATS subscription on
llm.usage.>, or llm.usage.<agent> with --agent), one line each:
  time  status  model  provider/model_resolved  agent  [key:ID]  tokens  cost  latency  request id
(key:ID: the id of the per-agent key the request came with, when it came with one)
Stops on Ctrl-C. Past events are in the LLM_USAGE stream (see the aggregator).

Options:
  --agent ID      only this agent's events (use "unauthenticated" for refused requests,
                  "anonymous" for requests without metadata.agent_id)
  --json          one JSON event per line, as published
  --nats URL      NATS server (default: $NATS_URL, else nats://127.0.0.1:4222)
  --config FILE   read the subject prefix and NATS credentials from this config file

Example:
  llm-proxy tail --agent agent:sofia
`;

export function formatEvent(event: UsageEvent): string {
  const agent =
    event.agent_id ??
    (event.claimed_agent_id !== undefined ? `unauthenticated(${event.claimed_agent_id})` : 'anonymous');
  const status = event.status === 'ok' ? 'ok' : `${event.status}:${event.error_code ?? '?'}`;
  const tokens = `${event.prompt_tokens}+${event.completion_tokens}${event.tokens_estimated ? '~' : ''} tok`;
  const flags = [event.stream ? 'stream' : '', event.cached ? 'cached' : ''].filter((flag) => flag !== '').join(',');
  return [
    event.ts,
    status.padEnd(10),
    (event.model ?? '-').padEnd(16),
    `${event.provider ?? '-'}/${event.model_resolved ?? '-'}`,
    agent,
    event.key_id === undefined ? '' : `key:${event.key_id}`,
    tokens,
    `$${event.cost_usd.toFixed(6)}`,
    `${Math.round(event.latency_ms)} ms`,
    event.request_id,
    flags,
  ]
    .filter((part) => part !== '')
    .join('  ');
}

export const command: Command = {
  name: 'tail',
  summary: 'print usage events as they arrive (--agent X to filter)',
  help,
  async run(argv) {
    const { values } = parseCommandLine({
      args: argv,
      options: {
        agent: { type: 'string' },
        json: { type: 'boolean', default: false },
        nats: { type: 'string' },
        config: { type: 'string' },
      },
      allowPositionals: false,
    });
    const { connection, prefix } = await connectForCommand(values);
    const subjects = subjectsFor(prefix);
    const subject = values.agent === undefined ? subjects.usageAll : subjects.usageFor(agentToken(values.agent));
    const subscription = connection.subscribe(subject);
    const stop = () => subscription.unsubscribe();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    process.stderr.write(`llm-proxy tail: listening on ${subject} (Ctrl-C to stop)\n`);
    for await (const message of subscription) {
      let event: UsageEvent;
      try {
        event = message.json() as UsageEvent;
      } catch {
        continue;
      }
      process.stdout.write(values.json ? `${JSON.stringify(event)}\n` : `${formatEvent(event)}\n`);
    }
    await connection.close();
    return 0;
  },
};
