/**
 * deploy/grafana/llm-proxy.json (a Grafana dashboard) and deploy/prometheus/alerts.yml (Prometheus
 * alerting rules) against what the processes export. promtool is not needed: this is the check.
 *
 * The metric names the exporter produces are derived here from the instruments declared in the
 * source (src/telemetry/metrics.ts, src/aggregator/aggregator-metrics.ts) by the naming rule of
 * @opentelemetry/exporter-prometheus 0.223 (PrometheusSerializer: every character outside
 * [a-zA-Z0-9_] becomes `_`, runs of `_` collapse; a monotonic sum, i.e. a counter or an observable
 * counter, gets `_total`; a histogram is `_bucket`, `_sum`, `_count`; the unit is not in the name),
 * and the rule itself is checked against the real exporter serializing those instruments. Every
 * metric and label name in every PromQL expression of both files must be one of them, so a renamed
 * instrument or attribute fails this test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { parse } from 'yaml';
import { observeAggregator } from '../src/aggregator/aggregator-metrics.js';
import { GatewayMetrics, type GatewayGauges } from '../src/telemetry/metrics.js';
import { REPO_ROOT } from './helpers/worker.js';

const SOURCES = ['src/telemetry/metrics.ts', 'src/aggregator/aggregator-metrics.ts'];
const source = SOURCES.map((path) => readFileSync(join(REPO_ROOT, path), 'utf8')).join('\n');
const dashboard = JSON.parse(readFileSync(join(REPO_ROOT, 'deploy/grafana/llm-proxy.json'), 'utf8')) as Dashboard;
const rules = parse(readFileSync(join(REPO_ROOT, 'deploy/prometheus/alerts.yml'), 'utf8')) as RuleFile;

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: Array<{ refId: string; expr: string; datasource?: { type: string; uid: string } }>;
  panels?: Panel[];
}

interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: unknown; datasource?: { uid: string } }> };
}

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface RuleFile {
  groups: Array<{ name: string; rules: Rule[] }>;
}

// ---------------------------------------------------------------- what the exporter produces

type InstrumentKind =
  | 'Counter'
  | 'UpDownCounter'
  | 'Histogram'
  | 'Gauge'
  | 'ObservableCounter'
  | 'ObservableUpDownCounter'
  | 'ObservableGauge';

/** Every `meter.createX('name', …)` of the sources. */
const instruments = [
  ...source.matchAll(
    /create(Counter|UpDownCounter|Histogram|Gauge|ObservableCounter|ObservableUpDownCounter|ObservableGauge)\(\s*'([^']+)'/g,
  ),
].map((match) => ({ kind: match[1] as InstrumentKind, name: match[2] as string }));

/** The exporter's `sanitizePrometheusMetricName`. */
function sanitize(name: string): string {
  return name.replace(/[^a-z0-9_]/gi, '_').replace(/_{2,}/g, '_');
}

/** The series names the exporter writes for an instrument (the `# TYPE` name first). */
function prometheusNames(instrument: { kind: InstrumentKind; name: string }): string[] {
  const base = sanitize(instrument.name);
  switch (instrument.kind) {
    case 'Counter':
    case 'ObservableCounter':
      return [base.endsWith('_total') ? base : `${base}_total`];
    case 'Histogram':
      return [base, `${base}_bucket`, `${base}_sum`, `${base}_count`];
    default:
      return [base];
  }
}

/**
 * Announced in issue 20, exported by another change: accepted by this name while no instrument of
 * the sources has it; once one does it is checked like the rest, and one created under another
 * name (containing `match`) fails.
 */
const ANNOUNCED = [{ kind: 'ObservableCounter' as const, name: 'llm_proxy.limit.budget_near', match: /budget/ }];

const exported = new Set(instruments.flatMap(prometheusNames));
const pending = ANNOUNCED.filter((announced) => !instruments.some((instrument) => instrument.name === announced.name));
const accepted = new Set([...exported, ...pending.flatMap(prometheusNames)]);

/** Attribute keys set by the sources (`'gen_ai.request.model': …`), as the exporter writes label names. */
const attributeLabels = new Set(
  [...source.matchAll(/['"]([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)['"]\s*\]?\s*[:=]/g)].map((match) =>
    sanitize(match[1] as string),
  ),
);
/** What every panel's and query's datasource uid is: the dashboard's `datasource` variable. */
const DATASOURCE = `\${datasource}`;
/** Labels that are not attributes: a histogram's bucket bound, the scope, and the scrape's own. */
const OTHER_LABELS = new Set(['le', 'otel_scope_name', 'otel_scope_version', 'instance', 'job']);

// ---------------------------------------------------------------- PromQL, enough to find names

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/** The metric and label names an expression refers to (Grafana's `$variables` and `[ranges]` aside). */
function namesIn(expr: string): { metrics: Set<string>; labels: Set<string> } {
  const metrics = new Set<string>();
  const labels = new Set<string>();
  let text = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  text = text.replace(/\{([^}]*)\}/g, (_whole, matchers: string) => {
    for (const matcher of matchers.split(',')) {
      const name = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/.exec(matcher)?.[1];
      if (name !== undefined) labels.add(name);
      else if (matcher.trim() !== '') throw new Error(`unparsed label matcher "${matcher}" in: ${expr}`);
    }
    return ' ';
  });
  text = text.replace(
    /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g,
    (_whole, _word, list: string) => {
      for (const label of list.split(',')) if (label.trim() !== '') labels.add(label.trim());
      return ' ';
    },
  );
  text = text.replace(/\[[^\]]*\]/g, ' ').replace(/\boffset\s+\S+/g, ' ');
  text = text.replace(/\$\{?\w+\}?/g, ' ').replace(/\b\d+(\.\d+)?(e[+-]?\d+)?\b/gi, ' ');
  for (const match of text.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const word = match[0];
    const after = text.slice((match.index ?? 0) + word.length).trimStart();
    if (after.startsWith('(') || KEYWORDS.has(word.toLowerCase())) continue;
    metrics.add(word);
  }
  return { metrics, labels };
}

function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((panel) => [panel, ...allPanels(panel.panels ?? [])]);
}

const panels = allPanels(dashboard.panels);
const dashboardExprs = panels.flatMap((panel) =>
  (panel.targets ?? []).map((target) => ({ where: `panel "${panel.title}"`, expr: target.expr })),
);
const variableExprs = dashboard.templating.list
  .filter((variable) => variable.type === 'query')
  .map((variable) => {
    const query = typeof variable.query === 'string' ? variable.query : (variable.query as { query: string }).query;
    return { where: `variable $${variable.name}`, query };
  });
const ruleList = rules.groups.flatMap((group) => group.rules);
const ruleExprs = ruleList.map((rule) => ({ where: `rule ${rule.alert ?? rule.record}`, expr: rule.expr }));

// ---------------------------------------------------------------- tests

test('the naming rule is the exporter’s: the real Prometheus exporter writes exactly these names for the instruments', async () => {
  assert.ok(instruments.length >= 15, `found only ${instruments.length} instruments in ${SOURCES.join(', ')}`);
  const exporter = new PrometheusExporter({ preventServerStart: true });
  const meterProvider = new MeterProvider({ readers: [exporter] });
  const metrics = new GatewayMetrics({
    meterProvider,
    models: new Map([['gpt-test', { deployments: [{ provider: 'openai', physical_name: 'gpt-4o-mini' }] }]]),
  });
  // Getters the gauges gain later (another change's) answer with a plausible record.
  const known: Partial<Record<keyof GatewayGauges, unknown>> = {
    inFlight: () => 2,
    usageEvents: () => ({ pending: 1, failedAttempts: 1, dropped: 0, deadLettered: 0 }),
    limitRefusals: () => ({ 'agent:rpm': 3 }),
    deployments: () => [{ model: 'gpt-test', provider: 'openai', deployment: 'gpt-4o-mini', coolingDown: true }],
    cache: () => ({
      memory: { backend: 'memory', hits: 2, misses: 1, errors: 0, skipped_too_large: 0, entries: 1, bytes: 900 },
      shared: { backend: 'nats', hits: 0, misses: 1, errors: 1, skipped_too_large: 0 },
    }),
  };
  const gauges = new Proxy(known, {
    get: (target, key: string) =>
      key in target ? target[key as keyof GatewayGauges] : () => ({ 'agent:daily_usd': 1 }),
  }) as unknown as GatewayGauges;
  metrics.observe(gauges);
  observeAggregator({ lag: async () => 5, stats: () => ({ events: 1, duplicates: 0, invalid: 0 }) }, meterProvider);
  metrics.recordRequest({
    model: 'gpt-test',
    provider: 'openai',
    status: 'ok',
    errorCode: undefined,
    stream: true,
    cached: true,
    latencyMs: 120,
    ttftMs: 40,
    promptTokens: 10,
    completionTokens: 5,
    costUsd: 0.001,
    agentId: null,
    attempts: [
      { model: 'gpt-test', provider: 'openai', modelResolved: 'gpt-4o-mini', errorCode: null, latencyMs: 100 },
    ],
  });
  metrics.streamOpened();
  metrics.reconnected();
  const { resourceMetrics } = await exporter.collect();
  const text = new PrometheusSerializer().serialize(resourceMetrics);
  await meterProvider.shutdown();

  const typed = new Map(
    [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((match) => [match[1] as string, match[2] as string]),
  );
  typed.delete('target_info');
  for (const [name, type] of typed) {
    assert.ok(exported.has(name), `the exporter wrote ${name} (${type}), which the rule here does not derive`);
  }
  // Every kind of instrument was serialized at least once, so the rule is checked for each.
  const kindsSeen = new Set(
    instruments.filter((instrument) => typed.has(prometheusNames(instrument)[0] as string)).map((i) => i.kind),
  );
  for (const kind of ['Counter', 'UpDownCounter', 'Histogram', 'ObservableCounter', 'ObservableGauge'] as const)
    assert.ok(kindsSeen.has(kind), `no ${kind} was serialized: ${[...typed.keys()].join(', ')}`);
  // The concrete facts the files rely on.
  assert.equal(typed.get('gen_ai_server_request_duration'), 'histogram');
  assert.match(text, /^gen_ai_server_request_duration_bucket\{.*le="\+Inf"/m);
  assert.equal(typed.get('llm_proxy_usage_events_failed_total'), 'counter', 'an observable counter gets _total');
  assert.equal(typed.get('llm_proxy_streams_open'), 'gauge', 'an up-down counter is a gauge without _total');
  assert.doesNotMatch(text, /^[^#\n]*_seconds/m, 'units are not part of the names (no _seconds)');
  assert.match(text, /llm_proxy_stream="true"/, 'a boolean attribute is the string "true"');
  assert.match(text, /otel_scope_name="llm-proxy"/, 'every series carries the scope');
  assert.match(text, /^target_info\{/m);
});

test('every metric and label in the dashboard and the alert rules is one the exporter produces', (context) => {
  for (const announced of ANNOUNCED) {
    const renamed = instruments.find(
      (instrument) => announced.match.test(instrument.name) && instrument.name !== announced.name,
    );
    assert.equal(renamed, undefined, `${announced.name} was announced, but the source creates ${renamed?.name}`);
    if (pending.includes(announced))
      context.diagnostic(`${announced.name} is not in ${SOURCES[0]} yet: its name is accepted as announced`);
  }
  const used = new Set<string>();
  const unknown: string[] = [];
  for (const { where, expr } of [...dashboardExprs, ...ruleExprs]) {
    assert.equal(typeof expr, 'string', `${where} has no expr`);
    const { metrics, labels } = namesIn(expr);
    assert.ok(metrics.size > 0, `${where}: no metric in ${expr}`);
    for (const metric of metrics) {
      used.add(metric);
      if (!accepted.has(metric)) unknown.push(`${where}: metric ${metric}`);
    }
    for (const label of labels)
      if (!attributeLabels.has(label) && !OTHER_LABELS.has(label)) unknown.push(`${where}: label ${label}`);
  }
  for (const { where, query } of variableExprs) {
    const match = /^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$/.exec(query);
    assert.ok(match, `${where}: ${query}`);
    if (!accepted.has(match[1] as string)) unknown.push(`${where}: metric ${match[1]}`);
    if (!attributeLabels.has(match[2] as string)) unknown.push(`${where}: label ${match[2]}`);
  }
  assert.deepEqual(unknown, [], `not produced by the exporter:\n${unknown.join('\n')}`);
  // The parser finds what it should (a regression guard for namesIn itself).
  assert.deepEqual(
    namesIn('sum by (a, le) (rate(x_bucket{b="1", c=~"$m"}[$__rate_interval])) / on(d) y offset 1h > 0.5 or vector(0)'),
    { metrics: new Set(['x_bucket', 'y']), labels: new Set(['b', 'c', 'a', 'le', 'd']) },
  );
  // Instruments on neither the dashboard nor a rule are reported (not failed: adding an instrument is another change's).
  const missing = instruments
    .filter((instrument) => !prometheusNames(instrument).some((name) => used.has(name)))
    .map((instrument) => instrument.name);
  if (missing.length > 0) context.diagnostic(`not on the dashboard nor in a rule: ${missing.join(', ')}`);
});

test('alert rules: each has alert, expr, labels.severity and annotations.summary; `for` where a condition must last', () => {
  assert.ok(rules.groups.length > 0);
  const groupNames = rules.groups.map((group) => group.name);
  assert.equal(new Set(groupNames).size, groupNames.length, 'group names are unique');
  /** Alerts that fire at once: an event (a lost usage event, a budget reaching 90%) is the news. */
  const immediate = new Set(['LlmProxyUsageEventsLost', 'LlmProxyBudgetNearlySpent']);
  for (const rule of ruleList) {
    const name = rule.alert ?? '(no alert)';
    assert.equal(typeof rule.alert, 'string', `a rule without alert: ${JSON.stringify(rule)}`);
    assert.match(name, /^[A-Za-z][A-Za-z0-9]*$/);
    assert.equal(typeof rule.expr, 'string', `${name}: expr`);
    assert.match(rule.labels?.severity ?? '', /^(critical|warning|info)$/, `${name}: labels.severity`);
    assert.ok((rule.annotations?.summary ?? '').length > 0, `${name}: annotations.summary`);
    assert.ok((rule.annotations?.description ?? '').length > 0, `${name}: annotations.description`);
    const allowed = new Set(['alert', 'expr', 'for', 'keep_firing_for', 'labels', 'annotations']);
    for (const key of Object.keys(rule)) assert.ok(allowed.has(key), `${name}: unknown field ${key}`);
    if (immediate.has(name)) assert.equal(rule.for, undefined, `${name} fires at once`);
    else assert.match(rule.for ?? '', /^\d+[smh]$/, `${name}: for`);
  }
  const alerts = ruleList.map((rule) => rule.alert);
  assert.equal(new Set(alerts).size, alerts.length, 'alert names are unique');
  assert.deepEqual(alerts.sort(), [
    'LlmProxyAggregatorLag',
    'LlmProxyAllDeploymentsCoolingDown',
    'LlmProxyBudgetNearlySpent',
    'LlmProxyHighErrorRate',
    'LlmProxyHighLatencyP99',
    'LlmProxySlowFirstTokenP99',
    'LlmProxyUsageEventsLost',
    'LlmProxyUsageEventsPending',
  ]);
  const byName = new Map(ruleList.map((rule) => [rule.alert, rule]));
  assert.match(byName.get('LlmProxyHighErrorRate')?.expr ?? '', /> 0\.05/);
  assert.equal(byName.get('LlmProxyHighErrorRate')?.for, '5m');
  assert.match(
    byName.get('LlmProxyAllDeploymentsCoolingDown')?.expr ?? '',
    /^min by \(gen_ai_request_model\) \(llm_proxy_deployments_cooling_down\) == 1$/,
  );
  assert.match(byName.get('LlmProxyUsageEventsPending')?.expr ?? '', /llm_proxy_usage_events_pending > 100/);
  assert.match(byName.get('LlmProxyUsageEventsLost')?.expr ?? '', /dead_lettered/);
  assert.match(byName.get('LlmProxyAggregatorLag')?.expr ?? '', /llm_proxy_aggregator_lag > 1000/);
  assert.equal(byName.get('LlmProxyAggregatorLag')?.for, '10m');
  assert.match(byName.get('LlmProxyBudgetNearlySpent')?.expr ?? '', /increase\(llm_proxy_limit_budget_near_total/);
});

test('the dashboard: a Prometheus datasource variable used by every panel, a model variable, the panels asked for', () => {
  assert.match(dashboard.uid, /^[A-Za-z0-9_-]{1,40}$/);
  assert.equal(dashboard.title, 'llm-proxy');
  assert.equal(typeof dashboard.schemaVersion, 'number');
  const variables = new Map(dashboard.templating.list.map((variable) => [variable.name, variable]));
  assert.deepEqual(
    [variables.get('datasource')?.type, variables.get('datasource')?.query],
    ['datasource', 'prometheus'],
  );
  assert.equal(variables.get('model')?.type, 'query');
  assert.equal(variables.get('model')?.datasource?.uid, DATASOURCE);

  const ids = panels.map((panel) => panel.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  for (const panel of panels) {
    const { x, w, h } = panel.gridPos;
    assert.ok(x >= 0 && w > 0 && h > 0 && x + w <= 24, `panel "${panel.title}" fits the 24 columns`);
    if (panel.type === 'row') continue;
    assert.equal(panel.datasource?.uid, DATASOURCE, `panel "${panel.title}" uses the datasource variable`);
    assert.ok((panel.targets ?? []).length > 0, `panel "${panel.title}" has queries`);
    for (const target of panel.targets ?? []) {
      assert.match(target.refId, /^[A-Z]$/);
      assert.equal(target.datasource?.uid, DATASOURCE);
    }
  }
  // Panels in one row do not overlap.
  const cells = new Set<string>();
  for (const panel of panels) {
    for (let row = panel.gridPos.y; row < panel.gridPos.y + panel.gridPos.h; row += 1)
      for (let column = panel.gridPos.x; column < panel.gridPos.x + panel.gridPos.w; column += 1) {
        const cell = `${row}:${column}`;
        assert.ok(!cells.has(cell), `panel "${panel.title}" overlaps another at ${cell}`);
        cells.add(cell);
      }
  }
  const exprOf = (title: RegExp) =>
    panels
      .filter((panel) => title.test(panel.title))
      .flatMap((panel) => (panel.targets ?? []).map((target) => target.expr))
      .join('\n');
  const asked: Array<[RegExp, RegExp]> = [
    [/^Requests\/s by model and status$/, /sum by \(gen_ai_request_model, llm_proxy_status\)/],
    [/^Error rate by model$/, /llm_proxy_status="error"/],
    [
      /^Request duration p50 \/ p95 \/ p99/,
      /histogram_quantile\(0\.99, sum by \(gen_ai_request_model, le\) \(rate\(gen_ai_server_request_duration_bucket/,
    ],
    [/^Time to first token p50/, /histogram_quantile\(0\.5, .*gen_ai_server_time_to_first_token_bucket/],
    [/^Upstream attempt latency/, /gen_ai_response_model, le\) \(rate\(gen_ai_client_operation_duration_bucket/],
    [/^Tokens\/s in and out$/, /gen_ai_token_type/],
    [/^Cost per hour by model$/, /\* 3600/],
    [/^Cost today/, /increase\(llm_proxy_cost_total/],
    [/^In flight and streams open$/, /llm_proxy_streams_open/],
    [/^Cache hit ratio$/, /llm_proxy_cache_hits_total/],
    [/^Limit refusals/, /llm_proxy_limit_scope, llm_proxy_limit_dimension/],
    [/^Deployments cooling down$/, /llm_proxy_deployments_cooling_down/],
    [/^Usage events pending and failed$/, /llm_proxy_usage_events_failed_total/],
    [/^NATS reconnects$/, /llm_proxy_nats_reconnects_total/],
    [/^Aggregator lag$/, /llm_proxy_aggregator_lag/],
  ];
  for (const [title, expr] of asked) assert.match(exprOf(title), expr, `a panel ${title} with ${expr}`);
});
