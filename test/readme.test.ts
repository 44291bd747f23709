/**
 * README stays true: its configuration example is a valid config file, the
 * repo's config.yaml loads, and every CLI command has its row in README.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { loadConfigFile, parseConfigText } from '../src/config/index.js';
import { REPO_ROOT } from './helpers/worker.js';

const readme = readFileSync(new URL('README.md', `file://${REPO_ROOT}`), 'utf8');

test("README's configuration example validates, with every section present", () => {
  const match = /## Configuration[\s\S]*?```yaml\n([\s\S]*?)```/.exec(readme);
  assert.ok(match, 'README has a yaml block under "## Configuration"');
  const config = parseConfigText(match[1]!, 'README.md', {});
  for (const section of ['routing', 'limits', 'worker', 'nats', 'cache', 'logging', 'aggregator'] as const) {
    assert.ok(config[section] !== undefined, section);
  }
  assert.equal(config.providers.get('local')?.type, 'ollama');
  assert.equal(config.models.get('llama-70b')?.deployments.length, 2);
});

test("the repo's config.yaml loads and carries OpenAI, DeepSeek (chat and reasoner) and a local Ollama model", () => {
  const config = loadConfigFile(`${REPO_ROOT}config.yaml`, {});
  for (const model of ['gpt-4.1-mini', 'deepseek-chat', 'deepseek-reasoner', 'llama3.2'])
    assert.ok(config.models.has(model), model);
  assert.equal(config.providers.get('local')?.type, 'ollama');
});

test('every CLI command is in README with an example', () => {
  const commands = readdirSync(`${REPO_ROOT}src/cli/commands`)
    .filter((file) => file.endsWith('.ts') && !file.endsWith('.test.ts'))
    .map((file) => file.replace(/\.ts$/, ''));
  assert.ok(commands.length >= 9);
  for (const command of commands) {
    assert.match(
      readme,
      new RegExp(`\\| \`${command}\` \\|[^\\n]*\\| \`[^\`]*llm-proxy ${command}\\b[^\`]*\` \\|`),
      command,
    );
  }
  assert.match(readme, /npm test/);
});
