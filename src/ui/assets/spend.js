// The spending panel: tokens and cost today and this month per model, microDAO and agent (the top
// spenders), as the aggregators count them (`llm.proxy.usage`).
import { bars } from './charts.js';
import { el, fill, formatInteger, formatUsd, table } from './dom.js';

const spendColumns = (label) => [
  { label, className: 'key', value: (row) => row.key },
  {
    label: 'requests',
    className: 'num requests',
    value: (row) => row.requests,
    text: (row) => formatInteger(row.requests),
  },
  { label: 'errors', className: 'num errors', value: (row) => row.errors },
  {
    label: 'prompt',
    className: 'num prompt',
    value: (row) => row.prompt_tokens,
    text: (row) => formatInteger(row.prompt_tokens),
  },
  {
    label: 'completion',
    className: 'num completion',
    value: (row) => row.completion_tokens,
    text: (row) => formatInteger(row.completion_tokens),
  },
  {
    label: 'tokens',
    className: 'num tokens',
    value: (row) => row.total_tokens,
    text: (row) => formatInteger(row.total_tokens),
  },
  { label: 'cost', className: 'num cost', value: (row) => row.cost_usd, text: (row) => formatUsd(row.cost_usd) },
];

function spendPeriod(id, title, period) {
  const totals = period.totals;
  fill(
    id,
    el(
      'p',
      { className: 'totals' },
      el('strong', {}, title),
      ' ',
      el('span', { className: 'total-requests' }, `${formatInteger(totals.requests)} requests`),
      ' · ',
      el('span', { className: 'total-tokens' }, `${formatInteger(totals.total_tokens)} tokens`),
      ' · ',
      el('span', { className: 'total-cost' }, formatUsd(totals.cost_usd)),
    ),
    el('h3', {}, 'By model'),
    el(
      'div',
      { className: 'spend-models' },
      table(spendColumns('model'), period.models, (row) => row.key),
    ),
    el('h3', {}, 'Top microDAOs by cost'),
    bars(period.microdaos.map((row) => ({ label: row.key, value: row.cost_usd, text: formatUsd(row.cost_usd) }))),
    el(
      'div',
      { className: 'spend-microdaos' },
      table(spendColumns('microDAO'), period.microdaos, (row) => row.key),
    ),
    el('h3', {}, 'Top agents by cost'),
    bars(period.agents.map((row) => ({ label: row.key, value: row.cost_usd, text: formatUsd(row.cost_usd) }))),
    el(
      'div',
      { className: 'spend-agents' },
      table(spendColumns('agent'), period.agents, (row) => row.key),
    ),
  );
}

export function renderSpend(snapshot) {
  const spend = snapshot.spend;
  if (spend === null || spend === undefined) {
    fill('spend-today', el('p', { className: 'empty' }, 'waiting for the aggregators (llm.proxy.usage)…'));
    fill('spend-month');
    return;
  }
  spendPeriod('spend-today', `Today (UTC, since ${spend.today.since.slice(0, 10)})`, spend.today);
  spendPeriod('spend-month', `This month (since ${spend.month.since.slice(0, 10)})`, spend.month);
}
