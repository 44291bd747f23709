// The page's panels, each drawn whole from the latest snapshot (ui-feed.ts `snapshot()`).
import { gauge, legend, lineChart, PALETTE, sparkline } from './charts.js';
import {
  el,
  fill,
  formatDuration,
  formatInteger,
  formatMs,
  formatPercent,
  formatRate,
  formatTime,
  formatUsd,
  table,
} from './dom.js';

export function renderServices(snapshot) {
  const workers = snapshot.workers ?? [];
  fill('workers-count', `${workers.length} worker${workers.length === 1 ? '' : 's'}`);
  fill(
    'workers',
    table(
      [
        { label: 'worker id', className: 'id', value: (row) => row.id },
        { label: 'version', value: (row) => row.version },
        { label: 'uptime', value: (row) => row.uptime_s, text: (row) => formatDuration(row.uptime_s) },
        {
          label: 'in flight',
          className: 'num in-flight',
          value: (row) => row.in_flight,
          text: (row) => `${row.in_flight} / ${row.max_in_flight}${row.paused ? ' (paused)' : ''}`,
        },
        {
          label: 'requests',
          className: 'num requests',
          value: (row) => row.requests,
          text: (row) => formatInteger(row.requests),
        },
        {
          label: 'errors',
          className: 'num errors',
          value: (row) => row.errors,
          text: (row) => formatInteger(row.errors),
        },
        { label: 'events pending', className: 'num', value: (row) => row.pending_events },
      ],
      workers,
      (row) => row.id,
      'no worker answered $SRV.STATS.llm-proxy',
    ),
  );
  const aggregators = snapshot.aggregators ?? [];
  fill(
    'aggregators',
    table(
      [
        { label: 'aggregator id', className: 'id', value: (row) => row.id },
        { label: 'version', value: (row) => row.version },
        { label: 'uptime', value: (row) => row.uptime_s, text: (row) => formatDuration(row.uptime_s) },
        {
          label: 'queries',
          className: 'num',
          value: (row) => row.requests,
          text: (row) => formatInteger(row.requests),
        },
        { label: 'errors', className: 'num', value: (row) => row.errors },
        { label: 'applied seq', className: 'num', value: (row) => row.applied_seq ?? '-' },
      ],
      aggregators,
      (row) => row.id,
      'no aggregator answered $SRV.STATS.llm-usage',
    ),
  );
}

export function renderTraffic(snapshot) {
  const traffic = snapshot.traffic ?? { models: [], per_second: { requests: [], errors: [] } };
  const models = traffic.models;
  const charted = models.slice(0, PALETTE.length);
  const perMinute = charted.map((model, index) => ({
    name: model.model,
    values: model.per_minute.requests,
    color: PALETTE[index],
  }));
  const errors = models.reduce(
    (sum, model) => sum.map((value, index) => value + (model.per_minute.errors[index] ?? 0)),
    new Array(60).fill(0),
  );
  fill(
    'traffic-charts',
    el(
      'figure',
      {},
      el('figcaption', {}, 'Requests per minute, by model'),
      lineChart({ series: perMinute, format: formatInteger, integer: true, title: 'requests per minute by model' }),
      legend(perMinute),
    ),
    el(
      'figure',
      {},
      el('figcaption', {}, 'p95 latency per minute, by model'),
      lineChart({
        series: charted.map((model, index) => ({
          name: model.model,
          values: model.per_minute.p95_ms,
          color: PALETTE[index],
        })),
        format: formatMs,
        title: 'p95 latency by model',
      }),
    ),
    el(
      'figure',
      {},
      el('figcaption', {}, 'Requests and errors per second, last two minutes'),
      lineChart({
        series: [
          { name: 'requests', values: traffic.per_second.requests, color: PALETTE[0] },
          { name: 'errors', values: traffic.per_second.errors, color: '#ef4444' },
        ],
        format: formatInteger,
        integer: true,
        xLabels: ['-2 min', 'now'],
        title: 'requests and errors per second',
      }),
    ),
    el(
      'figure',
      {},
      el('figcaption', {}, 'Errors per minute'),
      lineChart({
        series: [{ name: 'errors', values: errors, color: '#ef4444' }],
        format: formatInteger,
        integer: true,
      }),
    ),
  );
  fill(
    'traffic-table',
    table(
      [
        { label: 'model', className: 'key', value: (row) => row.model },
        { label: 'req/s (1 min)', className: 'num rps', value: (row) => row.rps, text: (row) => formatRate(row.rps) },
        {
          label: 'requests',
          className: 'num requests',
          value: (row) => row.requests,
          text: (row) => formatInteger(row.requests),
        },
        {
          label: 'errors',
          className: 'num errors',
          value: (row) => row.errors,
          text: (row) => formatInteger(row.errors),
        },
        {
          label: 'error rate',
          className: 'num error-rate',
          value: (row) => row.error_rate,
          text: (row) => formatPercent(row.error_rate),
        },
        { label: 'refused', className: 'num rejected', value: (row) => row.rejected },
        { label: 'p50', className: 'num p50', value: (row) => row.p50_ms, text: (row) => formatMs(row.p50_ms) },
        { label: 'p95', className: 'num p95', value: (row) => row.p95_ms, text: (row) => formatMs(row.p95_ms) },
        { label: 'p99', className: 'num p99', value: (row) => row.p99_ms, text: (row) => formatMs(row.p99_ms) },
        { label: 'last hour', value: () => '', node: (row) => sparkline(row.per_minute.requests) },
      ],
      models,
      (row) => row.model,
      'no request in the last hour',
    ),
  );
}

export function renderDeployments(snapshot) {
  fill(
    'deployments',
    table(
      [
        { label: 'model', className: 'key', value: (row) => row.model },
        { label: 'provider', value: (row) => row.provider },
        { label: 'upstream model', value: (row) => row.physical_name },
        { label: 'weight', className: 'num', value: (row) => row.weight },
        {
          label: 'state',
          className: 'state',
          value: (row) => row.state,
          node: (row) =>
            row.state === 'cooling_down'
              ? el(
                  'span',
                  { className: 'badge bad' },
                  `cooling down until ${formatTime(row.cooldown_until)} (${row.cooling_on} of ${row.workers} workers)`,
                )
              : el('span', { className: 'badge good' }, 'healthy'),
        },
        { label: 'in flight', className: 'num', value: (row) => row.in_flight },
        {
          label: 'latency (EWMA)',
          className: 'num',
          value: (row) => row.ewma_latency_ms,
          text: (row) => formatMs(row.ewma_latency_ms),
        },
        { label: 'recent failures', className: 'num', value: (row) => row.recent_failures },
      ],
      snapshot.deployments ?? [],
      (row) => `${row.model}|${row.provider}|${row.physical_name}`,
      'no worker answered llm.proxy.models',
    ),
  );
}

const DIMENSIONS = {
  rpm: 'requests/minute',
  tpm: 'tokens/minute',
  concurrent: 'concurrent',
  daily_usd: 'USD/day',
  monthly_usd: 'USD/month',
};

const LIMITS_FROM = { workers: 'the workers', local: 'this config' };

const amount = (row, value) => (row.dimension.endsWith('_usd') ? formatUsd(value) : formatInteger(value));

export function renderLimits(snapshot) {
  const limits = snapshot.limits ?? { rows: [], refused: [] };
  fill('limits-note', limits.note ?? '');
  fill(
    'limits',
    table(
      [
        { label: 'agent', className: 'key', value: (row) => row.agent_id },
        { label: 'scope', value: (row) => row.scope },
        { label: 'limit', className: 'dimension', value: (row) => DIMENSIONS[row.dimension] ?? row.dimension },
        { label: 'window', value: (row) => row.window },
        {
          label: 'used',
          className: 'num used',
          value: (row) => row.used,
          text: (row) => `${amount(row, row.used)} of ${amount(row, row.limit)}`,
        },
        { label: '', className: 'ratio', value: (row) => row.ratio, node: (row) => gauge(row.ratio) },
        { label: 'state', className: 'state', value: (row) => (row.over ? 'over' : 'near') },
        {
          label: 'limits from',
          className: 'limits-from',
          value: (row) => LIMITS_FROM[row.limits_from] ?? '',
          node: (row) =>
            el(
              'span',
              { title: row.differs ? "this process's config says otherwise" : '' },
              `${LIMITS_FROM[row.limits_from] ?? ''}${row.differs ? ' (config differs)' : ''}`,
            ),
        },
        {
          label: 'free again in',
          value: (row) => row.resets_in_ms,
          text: (row) => formatDuration(row.resets_in_ms / 1000),
        },
      ],
      limits.rows ?? [],
      (row) => `${row.agent_id}|${row.scope}|${row.dimension}`,
      limits.available ? 'no agent near a limit' : '-',
    ),
  );
  fill(
    'refused',
    table(
      [
        { label: 'agent refused by a limit (last hour)', className: 'key', value: (row) => row.agent_id },
        { label: 'microDAO', value: (row) => row.microdao_id ?? '' },
        { label: 'refusals', className: 'num', value: (row) => row.count },
        { label: 'last', value: (row) => row.last_code },
        { label: 'at', value: (row) => row.last_at, text: (row) => formatTime(row.last_at) },
      ],
      limits.refused ?? [],
      (row) => row.agent_id,
      'no refusal in the last hour',
    ),
  );
}

export function renderProblems(snapshot) {
  const problems = snapshot.problems ?? [];
  const box = document.getElementById('problems');
  if (box === null) return;
  box.hidden = problems.length === 0;
  box.replaceChildren(...problems.map((problem) => el('li', {}, problem)));
}
