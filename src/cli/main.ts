#!/usr/bin/env node
import type { Command } from './command.js';
import { UsageError } from './command.js';

/** The command table: name → module. Loaded lazily so `--help` and small commands start fast. */
const COMMANDS: Record<string, () => Promise<{ command: Command }>> = {
  // worker, chat, models, tail, check-config, dev, limits, usage, aggregator, keys register here.
  chat: () => import('./commands/chat.js'),
  worker: () => import('./commands/worker.js'),
  dev: () => import('./commands/dev.js'),
  models: () => import('./commands/models.js'),
  tail: () => import('./commands/tail.js'),
  'check-config': () => import('./commands/check-config.js'),
  aggregator: () => import('./commands/aggregator.js'),
  sink: () => import('./commands/sink.js'),
  invoice: () => import('./commands/invoice.js'),
  cache: () => import('./commands/cache.js'),
  usage: () => import('./commands/usage.js'),
  limits: () => import('./commands/limits.js'),
  http: () => import('./commands/http.js'),
  keys: () => import('./commands/keys.js'),
  ui: () => import('./commands/ui.js'),
  health: () => import('./commands/health.js'),
};

function printOverview(): void {
  const lines = [
    'llm-proxy: a multi-provider LLM gateway on NATS',
    '',
    'Usage: llm-proxy <command> [options]',
    '',
    'Commands:',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  void Promise.all(
    Object.entries(COMMANDS).map(async ([name, load]) => [name, (await load()).command.summary] as const),
  ).then((rows) => {
    for (const [name, summary] of rows) process.stdout.write(`  ${name.padEnd(14)} ${summary}\n`);
    process.stdout.write('\nRun `llm-proxy <command> --help` for the options of one command.\n');
  });
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    printOverview();
    return 0;
  }
  const load = COMMANDS[name];
  if (load === undefined) {
    process.stderr.write(`llm-proxy: unknown command "${name}". Run \`llm-proxy --help\` for the list.\n`);
    return 2;
  }
  const { command } = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.help.trimEnd()}\n`);
    return 0;
  }
  return command.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`llm-proxy: ${error.message}\n`);
      process.exitCode = 2;
      return;
    }
    process.stderr.write(`llm-proxy: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
