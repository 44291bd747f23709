import type { UsageGroupKey } from '../contract/usage-query.js';
import { tableLines } from '../format/table.js';
import type { AggregatedGroup, AggregatedReply, AggregatedTotals } from './query.js';

/**
 * How `llm-proxy usage` prints a reply of `llm.proxy.usage`: a readable
 * table, or CSV for billing exports (one row per group; the totals alone
 * without group_by).
 */

const CSV_COUNTERS = [
  'total_requests',
  'ok',
  'errors',
  'rejected',
  'cancelled',
  'cached',
  'tokens_estimated',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'cost_usd',
  'avg_latency_ms',
  'success_rate',
  // Added after the others, so that an export read by column position keeps its columns.
  'cached_prompt_tokens',
  'saved_usd',
] as const satisfies ReadonlyArray<keyof AggregatedTotals>;

/** Group keys present in a reply, in the order the query asked for them. */
export function groupKeysOf(reply: AggregatedReply): UsageGroupKey[] {
  const first = reply.groups[0];
  return first === undefined ? [] : (Object.keys(first.key) as UsageGroupKey[]);
}

/** Cost with nine decimals: the nano-dollar resolution the aggregator counts in. */
export function formatCostUsd(cost: number): string {
  return cost.toFixed(9);
}

function csvCell(value: string): string {
  // A key such as "=HYPERLINK(…)" must not become a formula when the export is opened in a spreadsheet.
  const safe = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

function csvNumber(name: (typeof CSV_COUNTERS)[number], totals: AggregatedTotals): string {
  const value = totals[name];
  return name === 'cost_usd' || name === 'saved_usd' ? formatCostUsd(value) : String(value);
}

export function formatCsv(reply: AggregatedReply): string {
  const keys = groupKeysOf(reply);
  const lines = [[...keys, ...CSV_COUNTERS].join(',')];
  const rows: Array<{ key: AggregatedGroup['key']; totals: AggregatedTotals }> =
    keys.length === 0 ? [{ key: {}, totals: reply }] : reply.groups.map((group) => ({ key: group.key, totals: group }));
  for (const row of rows) {
    lines.push(
      [
        ...keys.map((key) => csvCell(row.key[key] ?? '')),
        ...CSV_COUNTERS.map((name) => csvNumber(name, row.totals)),
      ].join(','),
    );
  }
  return `${lines.join('\n')}\n`;
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

function percent(rate: number): string {
  return `${(rate * 100).toFixed(2)}%`;
}

function money(cost: number): string {
  return `$${cost.toFixed(6)}`;
}

export interface ReportTitle {
  /** The filters asked for, e.g. `agent agent:sofia, microdao microdao:7`. */
  filters: string;
}

export function formatTable(reply: AggregatedReply, title: ReportTitle): string {
  const range = `${reply.since ?? 'the beginning'} to ${reply.until ?? 'now'} (whole UTC hours)`;
  const lines = [
    `Usage${title.filters === '' ? '' : ` of ${title.filters}`}, ${range}`,
    '',
    `  requests      ${integer.format(reply.total_requests)}  (ok ${integer.format(reply.ok)}, errors ${integer.format(reply.errors)}, rejected ${integer.format(reply.rejected)}, cancelled ${integer.format(reply.cancelled)}; cached ${integer.format(reply.cached)})`,
    `  success rate  ${percent(reply.success_rate)}`,
    `  tokens        ${integer.format(reply.total_tokens)}  (prompt ${integer.format(reply.prompt_tokens)} of which cached ${integer.format(reply.cached_prompt_tokens ?? 0)}, completion ${integer.format(reply.completion_tokens)}; estimated in ${integer.format(reply.tokens_estimated)} requests)`,
    `  cost          ${money(reply.cost_usd)}${(reply.saved_usd ?? 0) > 0 ? `  (cache hits saved ${money(reply.saved_usd)})` : ''}`,
    `  avg latency   ${reply.avg_latency_ms.toFixed(1)} ms`,
  ];
  const keys = groupKeysOf(reply);
  if (keys.length > 0) {
    const header = [
      ...keys.map((key) => key.toUpperCase()),
      'REQUESTS',
      'SUCCESS',
      'PROMPT',
      'COMPLETION',
      'TOTAL TOKENS',
      'COST USD',
      'AVG MS',
    ];
    const rows = reply.groups.map((group) => [
      ...keys.map((key) => group.key[key] ?? ''),
      integer.format(group.total_requests),
      percent(group.success_rate),
      integer.format(group.prompt_tokens),
      integer.format(group.completion_tokens),
      integer.format(group.total_tokens),
      group.cost_usd.toFixed(6),
      group.avg_latency_ms.toFixed(1),
    ]);
    lines.push('', ...tableLines(header, rows, (column) => column >= keys.length).map((line) => `  ${line}`));
  } else if (reply.total_requests === 0) {
    lines.push('', '  (no requests in this range)');
  }
  return `${lines.join('\n')}\n`;
}
